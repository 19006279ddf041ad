//! herald's browser client (`/client.js`, built from `clients/js/`) in real
//! Chromium: tests/browser/client.mjs against two herald processes started
//! here, one on the disk store and one on the memory store (with a small
//! send buffer and queue, so a page that stops reading is evicted soon).
//! The script asks for restarts on its stdout ("control: restart disk") and
//! waits for "ok" on its stdin: herald is killed with SIGKILL and started
//! again on the same port and files.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::process::Process;

#[test]
fn client_in_chromium_resumes_across_restarts_drops_and_tabs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test.sh (or scripts/browser.sh) first"
    );
    let mut disk = Process::start_with(|d| {
        format!(
            "[store]\nkind = \"disk\"\npath = {:?}\n",
            d.join("log").display().to_string()
        )
    });
    let mut memory = Process::start(
        "[store]\nkind = \"memory\"\n[server]\nsend_buffer_bytes = 8192\n\
         [delivery]\nqueue_capacity = 32\nping_interval_ms = 2000\npong_timeout_ms = 2000\n",
    );
    let mut node = Command::new("node")
        .arg("client.mjs")
        .current_dir(&dir)
        .env("HERALD_DISK_URL", disk.base())
        .env("HERALD_MEMORY_URL", memory.base())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut answers = node.stdin.take().unwrap();
    let mut out = String::new();
    for line in BufReader::new(node.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(command) = line.strip_prefix("control: ") {
            let answer = match command {
                "restart disk" => {
                    disk.kill9();
                    disk.restart();
                    "ok"
                }
                "restart memory" => {
                    memory.kill9();
                    memory.restart();
                    "ok"
                }
                _ => "unknown command",
            };
            writeln!(answers, "{answer}").unwrap();
        }
        out.push_str(&line);
        out.push('\n');
    }
    let status = node.wait().unwrap();
    print!("{out}");
    assert!(
        status.success(),
        "browser client tests failed:\n{out}\n--- disk herald log:\n{}\n--- memory herald log:\n{}",
        tail(&disk.log()),
        tail(&memory.log())
    );
    assert!(out.contains("7 passed, 0 failed"), "{out}");
}

/// The last lines of a log, enough to see why a test failed.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test]
async fn client_js_is_served_as_a_module_with_a_short_cache() {
    let h = common::Herald::start().await;
    let res = reqwest::get(format!("{}/client.js", h.base)).await.unwrap();
    assert_eq!(res.status(), 200);
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), "text/javascript; charset=utf-8");
    assert_eq!(header("cache-control"), "public, max-age=300");
    let body = res.text().await.unwrap();
    let built = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/dist/herald.min.js"),
    )
    .unwrap();
    assert_eq!(body, built, "/client.js is the committed build");
    assert!(body.contains("export{"), "an ES module exporting connect");
    h.stop().await;
}
