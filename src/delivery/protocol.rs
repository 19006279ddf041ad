//! The client protocol, v1 (schemas: `schemas/client-frame.schema.json`,
//! `schemas/server-frame.schema.json`, `schemas/close-codes.json`).
//!
//! Server → client: one JSON object per text frame, with a `type`:
//! `notification` (a [`NotificationFrame`], serialized once per log entry
//! and shared by every session that sends it), `subscribed`, `error`,
//! `pong`, `refreshed`.
//! Client → server: `subscribe`, `unsubscribe`, `ping`, `refresh`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::store::Entry;

/// A `notification` frame ready to write. The hub encodes each committed
/// entry once and shares the frame (a reference count) with every
/// subscriber; a replay encodes what it reads.
///
/// The entry's provenance is added as a `provenance` member only when
/// asked ([`Provenance::Include`]): live and replayed frames carry it when
/// `delivery.provenance` is on, the history API always.
#[derive(Debug)]
pub struct NotificationFrame {
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
    /// The whole frame: `{"type":"notification","id":…,"channel":…,
    /// "offset":…,"epoch":…,"time":…,` then the entry's fields.
    pub text: Utf8Bytes,
}

/// Whether a notification frame carries the entry's `provenance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provenance {
    /// Clients are not burdened with it (the default).
    #[default]
    Omit,
    /// `"provenance":{"rule":…,"rules_version":…,"source":…}` when the
    /// entry has one (entries stored before herald kept it have none).
    Include,
}

impl Provenance {
    /// [`Provenance::Include`] when `on` (`delivery.provenance`).
    pub fn when(on: bool) -> Self {
        if on { Self::Include } else { Self::Omit }
    }
}

impl NotificationFrame {
    pub fn encode(entry: &Entry, provenance: Provenance) -> Self {
        Self {
            channel: entry.channel.clone(),
            epoch: entry.epoch.clone(),
            offset: entry.offset,
            text: Self::text(entry, provenance),
        }
    }

    /// Only the frame's text (a replay writes it and keeps nothing else).
    pub fn text(entry: &Entry, provenance: Provenance) -> Utf8Bytes {
        let time = crate::clock::rfc3339_ms(entry.at_ms);
        let offset = entry.offset.to_string();
        let epoch = &*entry.epoch;
        let provenance = match provenance {
            Provenance::Include => entry.provenance.as_deref(),
            Provenance::Omit => None,
        };
        let mut frame = String::with_capacity(
            110 + 2 * (epoch.len() + offset.len())
                + entry.channel.len()
                + entry.fields.len()
                + provenance.map_or(0, str::len),
        );
        frame.push_str("{\"type\":\"notification\",\"id\":\"");
        frame.push_str(epoch);
        frame.push('-');
        frame.push_str(&offset);
        frame.push_str("\",\"channel\":");
        push_json_string(&mut frame, &entry.channel);
        frame.push_str(",\"offset\":");
        frame.push_str(&offset);
        frame.push_str(",\"epoch\":\"");
        frame.push_str(epoch);
        frame.push_str("\",\"time\":\"");
        frame.push_str(&time);
        frame.push('"');
        if !entry.fields.is_empty() {
            frame.push(',');
            frame.push_str(&entry.fields);
        }
        if let Some(p) = provenance {
            frame.push_str(",\"provenance\":");
            frame.push_str(p);
        }
        frame.push('}');
        Utf8Bytes::from(frame)
    }
}

/// Append `s` as a JSON string. Channel names rarely need escaping (no
/// whitespace or control characters are allowed), so the common case is a
/// copy between quotes.
fn push_json_string(out: &mut String, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Close codes herald sends. What a client should do is in
/// `schemas/close-codes.json` and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The client closed; nothing to do.
    Normal = 1000,
    /// Server shutting down: reconnect (to any node) with the last ids.
    GoingAway = 1001,
    /// The client broke the WebSocket protocol itself.
    ProtocolError = 1002,
    /// Policy violation (e.g. a forbidden origin).
    Policy = 1008,
    /// A client message was larger than `delivery.max_message_bytes`.
    TooBig = 1009,
    /// Unexpected server error: reconnect with back-off.
    InternalError = 1011,
    /// Too many connections: retry later with back-off.
    Overloaded = 1013,
    /// Bad request at connect (e.g. a malformed query).
    BadRequest = 4000,
    /// Authentication failed: do not retry with the same token.
    AuthFailed = 4001,
    /// Authenticated but not allowed.
    Forbidden = 4003,
    /// Too slow: the outbound queue overflowed. Reconnect at once with the
    /// last ids; nothing is lost.
    TooSlow = 4008,
    /// No pong to the server's ping in time: reconnect.
    HeartbeatMissed = 4009,
    /// The token expired: refresh it, then reconnect.
    TokenExpired = 4010,
}

impl CloseCode {
    /// Every close code herald sends.
    pub const ALL: [CloseCode; 13] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::InternalError,
        CloseCode::Overloaded,
        CloseCode::BadRequest,
        CloseCode::AuthFailed,
        CloseCode::Forbidden,
        CloseCode::TooSlow,
        CloseCode::HeartbeatMissed,
        CloseCode::TokenExpired,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    /// Label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::Policy => "policy",
            CloseCode::TooBig => "too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::Overloaded => "overloaded",
            CloseCode::BadRequest => "bad_request",
            CloseCode::AuthFailed => "auth_failed",
            CloseCode::Forbidden => "forbidden",
            CloseCode::TooSlow => "too_slow",
            CloseCode::HeartbeatMissed => "heartbeat_missed",
            CloseCode::TokenExpired => "token_expired",
        }
    }
}

/// `text` cut to fit a close frame's reason (123 bytes), on a character
/// boundary.
pub fn close_reason(mut text: String) -> String {
    let mut cut = text.len().min(120);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    Subscribe {
        channel: String,
        #[serde(default)]
        last_id: Option<String>,
        /// Without `last_id`: replay the last `rewind` retained
        /// notifications, then live.
        #[serde(default)]
        rewind: Option<u64>,
    },
    Unsubscribe {
        channel: String,
    },
    Ping,
    /// A new token for the live session (its `Debug` form is redacted).
    Refresh {
        token: crate::auth::Secret,
    },
}

/// Error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `type`, a missing field, binary data.
    BadFrame,
    /// The channel name is not valid.
    BadChannel,
    /// `last_id` is not `<epoch>-<offset>`.
    BadLastId,
    /// More channels than `delivery.max_subscriptions`.
    TooManySubscriptions,
    /// Unsubscribe from a channel the session is not subscribed to.
    NotSubscribed,
    /// The store could not be read; the subscription was not made.
    Unavailable,
    /// The token does not grant the channel (a `subscribe`), or no longer
    /// does (after a `refresh`, the subscription ended).
    Forbidden,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::BadLastId => "bad_last_id",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// A server frame other than `notification` (which the log serializes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Subscribed {
        channel: &'a str,
        /// Notifications sent as replay before this frame.
        replayed: u64,
        /// False when the requested history could not be replayed in full
        /// (another epoch, or trimmed): the client has a gap and should
        /// refresh its state by other means.
        recovered: bool,
        /// Id of the last notification the client has now (`<epoch>-0`
        /// for an empty channel); the `last_id` to resume from.
        position: String,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    },
    Pong,
    /// The answer to `refresh`: the session now lives until this token's
    /// `exp` (unix seconds; null for a token without one).
    Refreshed {
        expires_at: Option<u64>,
    },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"subscribe","channel":"a","last_id":"e-1"}"#)
                .expect("subscribe");
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                channel: "a".into(),
                last_id: Some("e-1".into()),
                rewind: None,
            }
        );
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"ping"}"#).expect("ping"),
            ClientFrame::Ping
        );
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"refresh","token":"a.b.c"}"#).expect("refresh");
        assert_eq!(
            f,
            ClientFrame::Refresh {
                token: crate::auth::Secret::new("a.b.c")
            }
        );
        assert!(!format!("{f:?}").contains("a.b.c"), "the token is redacted");
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"refresh"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"subscribe"}"#).is_err());
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"subscribe","channel":"a","rewind":20}"#)
                .expect("rewind");
        assert!(matches!(
            f,
            ClientFrame::Subscribe {
                rewind: Some(20),
                ..
            }
        ));
        for bad in [r#""rewind":-1"#, r#""rewind":1.5"#, r#""rewind":"20""#] {
            let text = format!(r#"{{"type":"subscribe","channel":"a",{bad}}}"#);
            assert!(
                serde_json::from_str::<ClientFrame>(&text).is_err(),
                "{text}"
            );
        }
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"dance"}"#).is_err());
    }

    fn entry(channel: &str, fields: &str) -> Entry {
        Entry {
            channel: channel.into(),
            epoch: "e1".into(),
            offset: 7,
            at_ms: 1_700_000_000_000,
            fields: fields.into(),
            provenance: Some(
                r#"{"rule":"r1","rules_version":"v1","source":"kafka:orders/2@1834"}"#.into(),
            ),
        }
    }

    #[test]
    fn notification_frame_is_one_json_object() {
        let f = NotificationFrame::encode(&entry("user:1", "\"title\":\"t\""), Provenance::Omit);
        let v: serde_json::Value = serde_json::from_str(&f.text).expect("json");
        assert!(v.get("provenance").is_none(), "not sent unless asked");
        assert_eq!(v["type"], "notification");
        assert_eq!(v["id"], "e1-7");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["epoch"], "e1");
        assert_eq!(v["channel"], "user:1");
        assert_eq!(v["title"], "t");
        assert_eq!(v["time"], "2023-11-14T22:13:20Z");
        let bare = NotificationFrame::encode(&entry("c", ""), Provenance::Omit);
        assert!(serde_json::from_str::<serde_json::Value>(&bare.text).is_ok());
    }

    #[test]
    fn provenance_is_a_member_when_included_and_absent_for_old_entries() {
        let with = NotificationFrame::text(&entry("c", "\"title\":\"t\""), Provenance::Include);
        let v: serde_json::Value = serde_json::from_str(&with).expect("json");
        assert_eq!(v["provenance"]["rule"], "r1");
        assert_eq!(v["provenance"]["rules_version"], "v1");
        assert_eq!(v["provenance"]["source"], "kafka:orders/2@1834");
        assert_eq!(v["title"], "t");
        let bare = NotificationFrame::text(&entry("c", ""), Provenance::Include);
        let v: serde_json::Value = serde_json::from_str(&bare).expect("json");
        assert_eq!(v["provenance"]["rule"], "r1");
        let mut old = entry("c", "\"title\":\"t\"");
        old.provenance = None;
        let v: serde_json::Value =
            serde_json::from_str(&NotificationFrame::text(&old, Provenance::Include))
                .expect("json");
        assert!(v.get("provenance").is_none(), "{v}");
    }

    #[test]
    fn channel_names_are_escaped_in_frames() {
        for channel in ["a\"b", "a\\b", "ünï:ok"] {
            let f = NotificationFrame::encode(&entry(channel, ""), Provenance::Omit);
            let v: serde_json::Value = serde_json::from_str(&f.text).expect("json");
            assert_eq!(v["channel"], channel);
        }
    }

    #[test]
    fn server_frames_serialize_with_type() {
        let f = ServerFrame::Subscribed {
            channel: "c",
            replayed: 2,
            recovered: true,
            position: "e-2".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&f.to_json()).expect("json");
        assert_eq!(v["type"], "subscribed");
        assert_eq!(v["position"], "e-2");
        let e = ServerFrame::Error {
            code: ErrorCode::BadFrame,
            message: "m",
            channel: None,
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"bad_frame","message":"m"}"#
        );
        let r = ServerFrame::Refreshed {
            expires_at: Some(17),
        };
        assert_eq!(r.to_json(), r#"{"type":"refreshed","expires_at":17}"#);
        let r = ServerFrame::Refreshed { expires_at: None };
        assert_eq!(r.to_json(), r#"{"type":"refreshed","expires_at":null}"#);
    }
}
