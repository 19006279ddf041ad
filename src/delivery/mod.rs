//! Delivery: from the log to clients.
//!
//! - [`hub`]: channel → live sessions, fan-out of shared frames;
//! - [`session`]: one client's subscriptions, replay and live stream;
//! - [`ws`]: the WebSocket gateway at `GET /notifications`;
//! - [`protocol`]: frames, error codes and close codes;
//! - `demo.html`: the page served at `/`.

pub mod hub;
pub mod protocol;
pub mod session;
pub mod ws;

/// The demo page served at `/`.
pub const DEMO_PAGE: &str = include_str!("demo.html");
