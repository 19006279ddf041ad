//! Delivery: from the log to clients.
//!
//! - [`hub`]: channel → live sessions, fan-out of shared frames;
//! - [`session`]: one client's subscriptions, replay and live stream;
//! - [`ws`]: the WebSocket gateway at `GET /notifications`;
//! - [`sse`]: Server-Sent Events on the same path (`Accept:
//!   text/event-stream`), a session over an SSE body;
//! - [`history`]: the history API, `GET /channels/{channel}/notifications`;
//! - [`refusal`]: how the HTTP gateways refuse (status + close code);
//! - [`protocol`]: frames, error codes and close codes;
//! - `demo.html`: the page served at `/`;
//! - the browser client served at `/client.js`: the committed build of
//!   `clients/js/` (CI rebuilds it and fails when it differs).

pub mod history;
pub mod hub;
pub mod protocol;
pub mod refusal;
pub mod session;
pub mod sse;
pub mod ws;

/// The demo page served at `/`.
pub const DEMO_PAGE: &str = include_str!("demo.html");

/// The browser client (ES module) served at `/client.js`.
pub const CLIENT_JS: &str = include_str!("../../clients/js/dist/herald.min.js");

/// `GET /client.js`. Its URL has no version in it, so caches keep it for
/// minutes, not days: pages pick up a new herald's client soon after an
/// upgrade.
pub async fn client_js() -> impl axum::response::IntoResponse {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CLIENT_JS,
    )
}
