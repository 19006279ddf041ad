//! `herald tail`: a minimal WebSocket client that prints every frame it
//! receives as one JSON line, for trying herald and for scripts. It resumes
//! with the last id it saw when the connection drops.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// What to connect to.
#[derive(Debug, Clone)]
pub struct Tail {
    /// `ws://host:port/notifications`.
    pub url: String,
    pub channels: Vec<String>,
    pub last_id: Option<String>,
    /// Stop after this many notifications (0: never).
    pub count: usize,
}

/// Connect, print frames, reconnect with the last id until `count`
/// notifications were printed. Errors only when the first connect fails.
pub async fn run(tail: Tail) -> Result<(), String> {
    let mut last_id = tail.last_id.clone();
    let mut printed = 0usize;
    let mut first = true;
    loop {
        let url = url_with(&tail.url, &tail.channels, last_id.as_deref());
        let mut ws = match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => ws,
            Err(e) if first => return Err(format!("cannot connect to {url}: {e}")),
            Err(e) => {
                eprintln!("herald tail: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        first = false;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(text)) => {
                    println!("{text}");
                    let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if frame["type"] == "notification" {
                        if frame["channel"].as_str() == primary(&tail.channels) {
                            last_id = frame["id"].as_str().map(str::to_string);
                        }
                        printed += 1;
                        if tail.count > 0 && printed >= tail.count {
                            return Ok(());
                        }
                    }
                }
                Ok(Message::Close(frame)) => {
                    eprintln!("herald tail: closed {frame:?}; reconnecting");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("herald tail: {e}; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn primary(channels: &[String]) -> Option<&str> {
    Some(channels.first().map_or("broadcast", String::as_str))
}

fn url_with(base: &str, channels: &[String], last_id: Option<&str>) -> String {
    let mut query: Vec<(&str, &str)> = channels.iter().map(|c| ("channel", c.as_str())).collect();
    if let Some(id) = last_id {
        query.push(("last_id", id));
    }
    if query.is_empty() {
        return base.to_string();
    }
    let encoded = serde_urlencoded::to_string(&query).unwrap_or_default();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{encoded}")
}
