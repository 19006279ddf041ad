//! The WebSocket gateway: `GET /notifications`.
//!
//! The HTTP upgrade is answered here and the upgraded connection is wrapped
//! in tokio-tungstenite with deliberate buffers: a 1 KiB read buffer (the
//! default costs ~128 KiB per idle connection, and it is allocated up front), a write buffer that lets
//! queued frames go out with one flush, a bounded write backlog, and explicit
//! message and frame size limits.
//!
//! Over the connection limit the upgrade still succeeds and the session is
//! closed at once with 1013: browsers cannot read the status of a refused
//! handshake, but they do see a close code.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_util::task::TaskTracker;

use super::protocol::CloseCode;
use super::session::{self, Request as Subscription, Shared};

/// State of the gateway route.
#[derive(Debug)]
pub struct Gateway {
    pub shared: Arc<Shared>,
    pub connections: Arc<Semaphore>,
    pub sessions: TaskTracker,
    /// `rules.max_notification_bytes`: the write buffer must hold one.
    pub max_notification_bytes: usize,
}

impl Gateway {
    fn ws_config(&self) -> WebSocketConfig {
        let c = &self.shared.config;
        WebSocketConfig::default()
            .read_buffer_size(c.read_buffer_bytes)
            .write_buffer_size(c.write_buffer_bytes)
            // Backlog beyond this fails the write: the session ends rather
            // than buffering without bound for a client that stopped reading.
            // It must still take the largest notification (plus framing) on
            // top of a full write buffer, or that notification could never
            // be sent to anyone.
            .max_write_buffer_size(c.write_buffer_bytes * 2 + self.max_notification_bytes + 4096)
            .max_message_size(Some(c.max_message_bytes))
            .max_frame_size(Some(c.max_message_bytes))
    }
}

/// Parse the connect query into the initial subscriptions.
/// `channel` may repeat; `last_id` resumes the first (primary) channel;
/// `token` is reserved for authentication.
pub fn initial_subscriptions(
    query: Option<&str>,
    default_channels: &[String],
    max_subscriptions: usize,
) -> Result<Vec<Subscription>, String> {
    let pairs: Vec<(String, String)> = match query {
        Some(q) => serde_urlencoded::from_str(q).map_err(|e| format!("malformed query: {e}"))?,
        None => Vec::new(),
    };
    let mut channels = Vec::new();
    let mut seen = HashSet::new();
    let mut last_id = None;
    for (key, value) in pairs {
        match key.as_str() {
            "channel" if seen.insert(value.clone()) => {
                if channels.len() == max_subscriptions {
                    return Err(format!(
                        "more than {max_subscriptions} channels in the query"
                    ));
                }
                channels.push(value);
            }
            "last_id" => last_id = Some(value).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
    if channels.is_empty() {
        channels = default_channels.to_vec();
    }
    Ok(channels
        .into_iter()
        .enumerate()
        .map(|(i, channel)| Subscription {
            channel,
            last_id: if i == 0 { last_id.clone() } else { None },
        })
        .collect())
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

/// `GET /notifications`.
pub async fn upgrade(State(gw): State<Arc<Gateway>>, mut req: Request) -> Response {
    let headers = req.headers();
    if !header_has(headers, header::UPGRADE, "websocket")
        || !header_has(headers, header::CONNECTION, "upgrade")
    {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket; connect with a WebSocket client\n",
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut r = plain(StatusCode::BAD_REQUEST, "unsupported WebSocket version\n");
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let requests = initial_subscriptions(
        req.uri().query(),
        &gw.shared.config.default_channels,
        gw.shared.config.max_subscriptions,
    );
    let on_upgrade = hyper::upgrade::on(&mut req);
    let permit = gw.connections.clone().try_acquire_owned().ok();
    let config = gw.ws_config();
    let shared = gw.shared.clone();
    gw.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let refusal = match (&permit, &requests) {
            (None, _) => Some((
                CloseCode::Overloaded,
                "too many connections; retry later".to_string(),
            )),
            (_, Err(problem)) => Some((CloseCode::BadRequest, problem.clone())),
            _ => None,
        };
        if let Some((code, reason)) = refusal {
            shared.metrics.session_closed(code.reason());
            tracing::info!(code = code.code(), reason, "session refused");
            // A close reason must fit in a control frame (123 bytes).
            let mut reason = reason;
            let mut cut = reason.len().min(120);
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            let frame = CloseFrame {
                code: code.code().into(),
                reason: reason.into(),
            };
            let _ = ws.send(Message::Close(Some(frame))).await;
            return;
        }
        let requests = requests.unwrap_or_default();
        session::run(ws, shared, requests).await;
        drop(permit);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        vec!["broadcast".into()]
    }

    #[test]
    fn no_query_uses_default_channels() {
        let subs = initial_subscriptions(None, &defaults(), 4).expect("ok");
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].channel, "broadcast");
        assert_eq!(subs[0].last_id, None);
    }

    #[test]
    fn last_id_applies_to_the_first_channel() {
        let subs = initial_subscriptions(
            Some("channel=user%3A1&channel=team:2&last_id=e-5&channel=user:1"),
            &defaults(),
            4,
        )
        .expect("ok");
        let got: Vec<_> = subs
            .iter()
            .map(|s| (s.channel.as_str(), s.last_id.as_deref()))
            .collect();
        assert_eq!(got, [("user:1", Some("e-5")), ("team:2", None)]);
    }

    #[test]
    fn too_many_channels_is_a_bad_request() {
        let err = initial_subscriptions(
            Some("channel=a&channel=b&channel=a&channel=c"),
            &defaults(),
            2,
        )
        .expect_err("three distinct channels, two allowed");
        assert!(err.contains("more than 2"), "{err}");
        let ok = initial_subscriptions(Some("channel=a&channel=b&channel=a"), &defaults(), 2);
        assert_eq!(ok.expect("duplicates count once").len(), 2);
    }

    #[test]
    fn last_id_without_channel_resumes_the_default() {
        let subs = initial_subscriptions(Some("last_id=e-3"), &defaults(), 4).expect("ok");
        assert_eq!(subs[0].channel, "broadcast");
        assert_eq!(subs[0].last_id.as_deref(), Some("e-3"));
    }
}
