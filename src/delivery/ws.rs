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
//! handshake, but they do see a close code. The same holds for refusals by
//! authentication: the token (`token` query parameter or `Authorization:
//! Bearer`) is checked before the upgrade completes, and a refused session
//! is closed right after it with 4001 (bad token), 4010 (expired) or 4003
//! (a channel of the query the token does not grant). The connection limit
//! is checked first, so an overloaded server spends no CPU on signatures.

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
use super::session::{self, SessionContext, Subscription};
use crate::auth::Principal;

/// State of the gateway route.
#[derive(Debug)]
pub struct Gateway {
    pub shared: Arc<SessionContext>,
    pub connections: Arc<Semaphore>,
    pub sessions: TaskTracker,
    /// `rules.max_notification_bytes`: the write buffer must hold one.
    pub max_notification_bytes: usize,
    /// Cancelled when the HTTP listener stops. Server-Sent Events streams
    /// are HTTP responses the listener's drain waits for, so they end
    /// (1001) then, not with the upgraded sessions after it.
    pub streams_stop: tokio_util::sync::CancellationToken,
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

/// What the connect query asks for (the token is read separately, by
/// [`crate::auth::client_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectQuery {
    /// `channel`, repeatable, in order, without duplicates.
    pub channels: Vec<String>,
    /// Resumes the first channel.
    pub last_id: Option<String>,
    /// The last N of every channel without a `last_id`.
    pub rewind: Option<u64>,
    /// `defaults=false`: join no default channel when none is named.
    pub defaults: bool,
}

impl ConnectQuery {
    /// Parse the query. At most `max_subscriptions` distinct channels.
    pub fn parse(query: Option<&str>, max_subscriptions: usize) -> Result<Self, String> {
        let pairs: Vec<(String, String)> = match query {
            Some(q) => {
                serde_urlencoded::from_str(q).map_err(|e| format!("malformed query: {e}"))?
            }
            None => Vec::new(),
        };
        let mut channels = Vec::new();
        let mut seen = HashSet::new();
        let mut last_id = None;
        let mut rewind = None;
        let mut defaults = true;
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
                "rewind" if !value.is_empty() => {
                    rewind =
                        Some(value.parse().map_err(|_| {
                            format!("rewind must be a whole number, not {value:?}")
                        })?);
                }
                "defaults" => {
                    defaults = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err("defaults must be true or false".into()),
                    }
                }
                _ => {}
            }
        }
        Ok(Self {
            channels,
            last_id,
            rewind,
            defaults,
        })
    }

    /// The subscriptions to make for `principal`: the channels named, else
    /// its default channels (`user:{sub}` and `default_channels`, those it
    /// is granted) unless `defaults=false`. A named channel the principal
    /// may not subscribe to is an error naming it (close 4003); a
    /// malformed name is left to the session, which answers `bad_channel`.
    pub fn subscriptions(
        self,
        principal: &Principal,
        default_channels: &[String],
    ) -> Result<Vec<Subscription>, String> {
        for channel in &self.channels {
            if crate::channel::check(channel).is_err() {
                continue;
            }
            if let Err(why) = principal.check(channel) {
                return Err(format!("channel {channel}: {why}"));
            }
        }
        let channels = match (self.channels.is_empty(), self.defaults) {
            (false, _) => self.channels,
            (true, true) => principal.default_channels(default_channels),
            (true, false) => Vec::new(),
        };
        let last_id = self.last_id;
        let rewind = self.rewind;
        Ok(channels
            .into_iter()
            .enumerate()
            .map(|(i, channel)| Subscription {
                channel,
                last_id: if i == 0 { last_id.clone() } else { None },
                rewind,
            })
            .collect())
    }
}

/// Why a session is refused right after the upgrade.
type Refusal = (CloseCode, String);

/// Check the connection limit, the query and the token, in that order;
/// the session's principal and subscriptions, or the refusal.
async fn admit(
    gw: &Gateway,
    query: Option<&str>,
    headers: &HeaderMap,
    permit: bool,
) -> Result<(Principal, Vec<Subscription>), Refusal> {
    let config = &gw.shared.config;
    let metrics = &gw.shared.metrics;
    if !permit {
        return Err((
            CloseCode::Overloaded,
            "too many connections; retry later".into(),
        ));
    }
    // Tokens never reach the logs: the query is logged redacted.
    tracing::debug!(
        query = %query.map(crate::auth::redact_query).unwrap_or_default(),
        "WebSocket connect"
    );
    let connect = ConnectQuery::parse(query, config.max_subscriptions)
        .map_err(|problem| (CloseCode::BadRequest, problem))?;
    let token = crate::auth::client_token(query, headers);
    let principal = gw
        .shared
        .auth
        .authenticate(token.as_deref())
        .await
        .map_err(|rejection| {
            metrics.auth_rejected("connect", rejection.label());
            let code = if rejection.is_expired() {
                CloseCode::TokenExpired
            } else {
                CloseCode::AuthFailed
            };
            (code, rejection.to_string())
        })?;
    let subscriptions = connect
        .subscriptions(&principal, &config.default_channels)
        .map_err(|why| {
            metrics.auth_rejected("connect", "forbidden");
            (CloseCode::Forbidden, why)
        })?;
    Ok((principal, subscriptions))
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
        if super::sse::wants_event_stream(headers) {
            return super::sse::serve(gw, req).await;
        }
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket, or Server-Sent Events with \
             Accept: text/event-stream\n",
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
    // A connection over a per-address limit is answered here, as the
    // session limit is: upgraded, then closed with 1013.
    let limited = req
        .extensions()
        .get::<crate::edge::limits::Connection>()
        .is_some_and(|c| c.limited.is_some());
    let permit = if limited {
        None
    } else {
        gw.connections.clone().try_acquire_owned().ok()
    };
    let admitted = admit(&gw, req.uri().query(), req.headers(), permit.is_some()).await;
    let on_upgrade = hyper::upgrade::on(&mut req);
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
        let (principal, subscriptions) = match admitted {
            Ok(admitted) => admitted,
            Err((code, reason)) => {
                shared.metrics.session_closed(code.reason());
                tracing::info!(code = code.code(), reason, "session refused");
                let frame = CloseFrame {
                    code: code.code().into(),
                    reason: super::protocol::close_reason(reason).into(),
                };
                let _ = ws.send(Message::Close(Some(frame))).await;
                return;
            }
        };
        session::run(ws, shared, subscriptions, principal).await;
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

    fn subscriptions(query: Option<&str>, max: usize) -> Result<Vec<Subscription>, String> {
        ConnectQuery::parse(query, max)?.subscriptions(&Principal::open(), &defaults())
    }

    #[test]
    fn no_query_uses_default_channels() {
        let subs = subscriptions(None, 4).expect("ok");
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].channel, "broadcast");
        assert_eq!(subs[0].last_id, None);
    }

    #[test]
    fn defaults_false_joins_nothing_unless_channels_are_named() {
        assert!(
            subscriptions(Some("defaults=false"), 4)
                .expect("ok")
                .is_empty()
        );
        let subs = subscriptions(Some("defaults=false&channel=a"), 4).expect("ok");
        assert_eq!(subs[0].channel, "a");
        assert_eq!(
            subscriptions(Some("defaults=true"), 4).expect("ok").len(),
            1
        );
        let err = subscriptions(Some("defaults=no"), 4).expect_err("bad value");
        assert!(err.contains("defaults"), "{err}");
    }

    #[test]
    fn last_id_applies_to_the_first_channel() {
        let subs = subscriptions(
            Some("channel=user%3A1&channel=team:2&last_id=e-5&channel=user:1&token=x"),
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
        let err = subscriptions(Some("channel=a&channel=b&channel=a&channel=c"), 2)
            .expect_err("three distinct channels, two allowed");
        assert!(err.contains("more than 2"), "{err}");
        let ok = subscriptions(Some("channel=a&channel=b&channel=a"), 2);
        assert_eq!(ok.expect("duplicates count once").len(), 2);
    }

    #[test]
    fn last_id_without_channel_resumes_the_default() {
        let subs = subscriptions(Some("last_id=e-3"), 4).expect("ok");
        assert_eq!(subs[0].channel, "broadcast");
        assert_eq!(subs[0].last_id.as_deref(), Some("e-3"));
    }
}
