//! Server-Sent Events clients: the stream a client reads instead of a
//! WebSocket (`GET /notifications` with `Accept: text/event-stream`), for
//! the SSE fan-out scenario. Each event's `data` is the frame a WebSocket
//! would carry; `event: close` carries the close code.

use anyhow::{Context, Result, bail};

use crate::client::Dial;

/// An open event stream.
#[derive(Debug)]
pub(crate) struct SseStream {
    res: reqwest::Response,
    buf: Vec<u8>,
    /// Bytes of `buf` already parsed.
    pos: usize,
}

/// What one read produced.
#[derive(Debug)]
pub(crate) enum SseRead {
    /// A `message` event's data: one JSON frame.
    Data(String),
    /// `event: close` with its code, or the stream ended (None).
    Closed(Option<u16>),
}

/// Open `/notifications?{query}` as an event stream from `d.bind`.
pub(crate) async fn dial(d: &Dial, query: &str) -> Result<SseStream> {
    let http = reqwest::Client::builder()
        .local_address(d.bind)
        .tcp_nodelay(true)
        .build()
        .context("HTTP client")?;
    let url = match &d.token {
        Some(t) => format!("http://{}/notifications?{query}&token={t}", d.server),
        None => format!("http://{}/notifications?{query}", d.server),
    };
    let res = http
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !res.status().is_success() {
        bail!("GET {url}: {}", res.status());
    }
    Ok(SseStream {
        res,
        buf: Vec::with_capacity(64 * 1024),
        pos: 0,
    })
}

impl SseStream {
    /// The next data event or the end; comments and `retry:` are skipped.
    pub(crate) async fn read(&mut self) -> Result<SseRead> {
        loop {
            if let Some(end) = find_blank_line(&self.buf[self.pos..]) {
                let block = std::str::from_utf8(&self.buf[self.pos..self.pos + end])
                    .context("an event stream is UTF-8")?;
                self.pos += end + 2;
                let mut event = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_string());
                    }
                }
                match (event.as_deref(), data) {
                    (Some("close"), Some(d)) => {
                        let v: serde_json::Value = serde_json::from_str(&d)?;
                        let code = v["code"].as_u64().and_then(|c| u16::try_from(c).ok());
                        return Ok(SseRead::Closed(code));
                    }
                    (None, Some(d)) => return Ok(SseRead::Data(d)),
                    _ => continue,
                }
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            match self.res.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) | Err(_) => return Ok(SseRead::Closed(None)),
            }
        }
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\n\n")
}
