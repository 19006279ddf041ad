//! `herald tail`: a minimal WebSocket client that prints every frame it
//! receives as one JSON line, for trying herald and for scripts.
//!
//! It keeps the last id of every channel it has seen (from notifications and
//! from `subscribed` positions) and, when the connection drops, reconnects
//! and resumes each channel from its own last id. When it stops (`--count`
//! reached, or Ctrl-C) it closes the WebSocket with 1000, so the server
//! counts a normal close, not a dropped connection.
//! A token is sent as `Authorization: Bearer` (it stays out of URLs); a
//! close that reconnecting cannot fix (4000, 4001, 4003, 4010, 1008, 1009)
//! ends `tail` with an error.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::delivery::protocol::CloseCode;

/// How long a closing tail waits for the server's close reply.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What to connect to.
#[derive(Debug, Clone)]
pub struct Tail {
    /// `ws://host:port/notifications`.
    pub url: String,
    /// Channels to follow; empty means the server's default channels.
    pub channels: Vec<String>,
    /// Resume the first channel after this id.
    pub last_id: Option<String>,
    /// Stop after this many notifications (0: never).
    pub count: usize,
    /// A JWT, when the server has authentication on.
    pub token: Option<String>,
}

/// Close codes after which reconnecting the same way cannot help.
const FINAL: [u16; 6] = [1008, 1009, 4000, 4001, 4003, 4010];

/// Connect, print frames, reconnect with the last ids until `count`
/// notifications were printed or Ctrl-C. Errors only when the first
/// connect fails.
pub async fn run(tail: Tail) -> Result<(), String> {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    // Channels in subscription order, learnt from `subscribed` frames when
    // the server chose them.
    let mut channels = tail.channels.clone();
    let mut last_ids: HashMap<String, String> = HashMap::new();
    if let (Some(first), Some(id)) = (channels.first(), &tail.last_id) {
        last_ids.insert(first.clone(), id.clone());
    }
    let mut printed = 0usize;
    let mut first_attempt = true;
    // Said once per outage, not at every retry.
    let mut retrying = false;
    loop {
        let url = match channels.first() {
            Some(primary) => url_with(&tail.url, primary, last_ids.get(primary)),
            // Server defaults, first connection only.
            None => url_without_channel(&tail.url, tail.last_id.as_deref()),
        };
        let mut request = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => return Err(format!("{url}: {e}")),
        };
        if let Some(token) = &tail.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| "the token is not a valid header value".to_string())?;
            request.headers_mut().insert("authorization", value);
        }
        let mut ws = match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => ws,
            Err(e) if first_attempt => return Err(format!("cannot connect to {url}: {e}")),
            Err(e) => {
                if !retrying {
                    eprintln!("herald tail: cannot connect to {url}: {e}; retrying every second");
                    retrying = true;
                }
                tokio::select! {
                    _ = &mut interrupted => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        first_attempt = false;
        if retrying {
            eprintln!("herald tail: reconnected");
            retrying = false;
        }
        // The other channels resume with their own last ids.
        for channel in channels.iter().skip(1) {
            let mut frame = json!({ "type": "subscribe", "channel": channel });
            if let Some(id) = last_ids.get(channel) {
                frame["last_id"] = json!(id);
            }
            if let Err(e) = ws.send(Message::Text(frame.to_string().into())).await {
                eprintln!("herald tail: cannot subscribe to {channel}: {e}");
            }
        }
        loop {
            let msg = tokio::select! {
                msg = ws.next() => msg,
                _ = &mut interrupted => {
                    close(&mut ws).await;
                    return Ok(());
                }
            };
            let Some(msg) = msg else {
                eprintln!("herald tail: the connection ended; reconnecting");
                break;
            };
            match msg {
                Ok(Message::Text(text)) => {
                    println!("{text}");
                    let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                    let (Some(kind), Some(channel)) =
                        (frame["type"].as_str(), frame["channel"].as_str())
                    else {
                        continue;
                    };
                    let id = match kind {
                        "notification" => frame["id"].as_str(),
                        "subscribed" => frame["position"].as_str(),
                        _ => None,
                    };
                    if let Some(id) = id {
                        if !channels.iter().any(|c| c == channel) {
                            channels.push(channel.to_string());
                        }
                        last_ids.insert(channel.to_string(), id.to_string());
                    }
                    if kind == "notification" {
                        printed += 1;
                        if tail.count > 0 && printed >= tail.count {
                            close(&mut ws).await;
                            return Ok(());
                        }
                    }
                }
                Ok(Message::Close(frame)) => {
                    let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                    if FINAL.contains(&code) {
                        let hint = match code {
                            4010 => " (get a new token: herald token --sub ...)",
                            4001 => " (check the token)",
                            _ => "",
                        };
                        return Err(format!(
                            "the server closed the connection ({}){hint}",
                            describe_close(frame.as_ref())
                        ));
                    }
                    eprintln!(
                        "herald tail: the server closed the connection ({}); reconnecting",
                        describe_close(frame.as_ref())
                    );
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("herald tail: connection lost: {e}; reconnecting");
                    break;
                }
            }
        }
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Close with 1000 and wait (briefly) for the server's reply, so the
/// server sees a normal close.
async fn close<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// `1001 going_away: server shutting down`, for a person.
fn describe_close(frame: Option<&CloseFrame>) -> String {
    let Some(frame) = frame else {
        return "no close code".into();
    };
    let code = u16::from(frame.code);
    let name = CloseCode::ALL
        .iter()
        .find(|c| c.code() == code)
        .map_or(String::new(), |c| format!(" {}", c.reason()));
    if frame.reason.is_empty() {
        format!("{code}{name}")
    } else {
        format!("{code}{name}: {}", frame.reason)
    }
}

fn url_with(base: &str, channel: &str, last_id: Option<&String>) -> String {
    let mut query = vec![("channel", channel)];
    if let Some(id) = last_id {
        query.push(("last_id", id.as_str()));
    }
    join(base, &query)
}

fn url_without_channel(base: &str, last_id: Option<&str>) -> String {
    match last_id {
        Some(id) => join(base, &[("last_id", id)]),
        None => base.to_string(),
    }
}

fn join(base: &str, query: &[(&str, &str)]) -> String {
    let encoded = serde_urlencoded::to_string(query).unwrap_or_default();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames_read_as_code_name_and_reason() {
        let frame = CloseFrame {
            code: 1001.into(),
            reason: "server shutting down".into(),
        };
        assert_eq!(
            describe_close(Some(&frame)),
            "1001 going_away: server shutting down"
        );
        let bare = CloseFrame {
            code: 4999.into(),
            reason: "".into(),
        };
        assert_eq!(describe_close(Some(&bare)), "4999");
        assert_eq!(describe_close(None), "no close code");
    }
}
