//! The output of a child process (herald, `herald tail`), line by line with
//! a deadline for each: a missing line fails the test instead of hanging
//! it.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

/// Bound of every wait for a line of output.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// The lines a child writes to one of its pipes, read by a thread of their
/// own so that a test waits for each with a deadline (a missing line fails
/// the test instead of hanging it).
pub struct Lines {
    rx: mpsc::Receiver<String>,
    /// Everything read so far.
    seen: Vec<String>,
}

impl Lines {
    pub fn new(pipe: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line; panics after `LINE_TIMEOUT` or at the end of output.
    pub fn next(&mut self) -> String {
        match self.rx.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(e) => panic!(
                "no line within {LINE_TIMEOUT:?} ({e}); so far:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// The next line, parsed as JSON.
    pub fn json(&mut self) -> serde_json::Value {
        let line = self.next();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The port of the address in herald's `herald listening` line (read
    /// up to it): a herald told to listen on port 0 says where it does.
    pub fn listening_port(&mut self) -> u16 {
        loop {
            let line = without_colour(&self.next());
            if !line.contains("herald listening") {
                continue;
            }
            // `addr=127.0.0.1:PORT` or `addr=0.0.0.0:PORT`.
            let port = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("addr="))
                .and_then(|addr| addr.rsplit_once(':'))
                .and_then(|(_, port)| port.parse().ok());
            return port.unwrap_or_else(|| panic!("no address in {line}"));
        }
    }

    /// Lines up to the end of output (the child exited).
    pub fn rest(mut self) -> String {
        while let Ok(line) = self.rx.recv_timeout(LINE_TIMEOUT) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

/// `line` without ANSI escape sequences (a log on a terminal has colour).
fn without_colour(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then a final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
