//! How the HTTP gateways (Server-Sent Events, the history API) refuse a
//! request: an HTTP status and a JSON body carrying the close code a
//! WebSocket would have been closed with, so one client handles both:
//! `{"code": 4003, "error": "channel user:7: not granted by your token"}`.
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | 4000 | a malformed query (bad id, limit, channel name) |
//! | 401 | 4001 | no token where one is required, a bad token |
//! | 401 | 4010 | an expired token: refresh it, then retry |
//! | 403 | 4003 | a channel the token does not grant |
//! | 503 | 1013 | too many connections, or the log unavailable: retry later |
//!
//! Token checks go through [`crate::auth::Auth::authenticate`] and channel
//! checks through [`Principal::check`], the same calls the WebSocket
//! gateway makes.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::protocol::CloseCode;
use crate::auth::{Auth, Principal};
use crate::metrics::Metrics;

/// A refused request: status, close code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: CloseCode,
    pub error: String,
}

impl Refusal {
    pub fn bad_request(error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: CloseCode::BadRequest,
            error: error.into(),
        }
    }

    pub fn unavailable(error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: CloseCode::Overloaded,
            error: error.into(),
        }
    }

    /// A label for metrics.
    pub fn label(&self) -> &'static str {
        self.code.reason()
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code.code(), "error": self.error });
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        response
    }
}

/// Who is asking: the token of `query` or `Authorization: Bearer`,
/// checked as at a WebSocket connect. `surface` labels the metric.
pub async fn authenticate(
    auth: &Auth,
    metrics: &Metrics,
    surface: &'static str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Principal, Refusal> {
    let token = crate::auth::client_token(query, headers);
    auth.authenticate(token.as_deref())
        .await
        .map_err(|rejection| {
            metrics.auth_rejected(surface, rejection.label());
            Refusal {
                status: StatusCode::UNAUTHORIZED,
                code: if rejection.is_expired() {
                    CloseCode::TokenExpired
                } else {
                    CloseCode::AuthFailed
                },
                error: rejection.to_string(),
            }
        })
}

/// Whether `principal` may read `channel` (403, 4003 if not).
pub fn authorize(
    principal: &Principal,
    metrics: &Metrics,
    surface: &'static str,
    channel: &str,
) -> Result<(), Refusal> {
    principal.check(channel).map_err(|why| {
        metrics.auth_rejected(surface, "forbidden");
        Refusal {
            status: StatusCode::FORBIDDEN,
            code: CloseCode::Forbidden,
            error: format!("channel {channel}: {why}"),
        }
    })
}
