//! herald: a message-queue consumer bridge.
//!
//! Backends publish domain events to Kafka, RabbitMQ or `POST /events`;
//! herald maps each event through operator-edited rules into notifications,
//! appends them to a per-channel log (offset, epoch, dedupe) and pushes them
//! over WebSockets. A client that reconnects with its last id receives
//! exactly what it missed, in order, then the live stream.
//!
//! # Layout
//! The pipeline, in the order an event travels:
//! - [`source`]: where events come from (`http`; one file per kind), and the
//!   [`source::Source`] trait;
//! - [`event`]: the event and its source position ([`event::Meta`]);
//! - [`pipeline`]: Event → rules → log, shared by every source;
//! - [`rules`]: compile a rules file once, evaluate events purely;
//! - [`store`]: the per-channel log, the [`store::Store`] trait and its
//!   kinds (memory, disk, redis);
//! - [`delivery`]: the hub (fan-out), sessions (replay, live, heartbeat),
//!   the WebSocket and Server-Sent Events gateways, the history API and
//!   the protocol;
//!
//! Around it:
//! - [`auth`]: tokens (JWT, JWKS), the channel policy every gateway asks,
//!   producers' API keys, the admin token;
//! - [`app`]: wiring, start-up and ordered shutdown;
//! - [`server`]: the HTTP accept loop;
//! - [`edge`]: what every connection and request passes first (Origin and
//!   Host checks, limits);
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/admin/*` (rules
//!   versions, recorded events, explain);
//! - [`recorder`]: the last events and what became of them;
//! - [`config`]: defaults → TOML file → `HERALD_*` environment;
//! - [`metrics`]: every counter in one place;
//! - [`tls`]: TLS on the listeners, certificates reloaded on change;
//! - [`watch`]: noticing file changes (rules, certificates);
//! - [`clock`]: wall-clock helpers;
//! - [`throttle`]: detail log lines sampled per key under a flood;
//! - [`tail`]: `herald tail`, a small client for trying herald.

pub mod admin;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod edge;
pub mod event;
pub mod metrics;
pub mod pipeline;
pub mod recorder;
pub mod rules;
pub mod server;
pub mod source;
pub mod store;
pub mod tail;
pub mod throttle;
pub mod tls;
pub mod watch;
