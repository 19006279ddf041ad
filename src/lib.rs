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
//! - [`source`]: where events come from, the [`source::Source`] trait and
//!   its kinds (`http`, `amqp`, `kafka`, `nats`; a module each, named once
//!   in the list of kinds in `event.rs`);
//! - [`event`]: the event and its source position ([`event::Meta`]);
//! - [`pipeline`]: Event → rules → log entries, shared by every source;
//! - [`rules`]: compile a rules file once, evaluate events purely;
//! - [`store`]: the per-channel log, the [`store::Store`] trait and its
//!   kinds (memory, disk, redis); it hands committed entries to a
//!   [`store::Publish`] it owns;
//! - [`delivery`]: the hub (fan-out; the store's publisher), sessions
//!   (replay, live, heartbeat), the WebSocket and Server-Sent Events
//!   gateways, the history API and the protocol (every frame's JSON, the
//!   notification frame included);
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
//! - [`channel`]: the channel-name check rules, config and delivery share;
//! - [`clock`]: wall-clock helpers; [`sync`]: poison-tolerant locks;
//! - [`throttle`]: detail log lines sampled per key under a flood;
//! - [`tail`]: `herald tail`, a small client for trying herald.
//!
//! # Which way layers point
//! `source` → `pipeline` → `rules`, `store`; `delivery` → `store`;
//! `config` gathers every module's settings; `app` wires them all. A lower
//! layer that must call up owns a small trait the upper one implements
//! ([`store::Publish`], implemented by the hub;
//! [`rules::versions::Live`], implemented by the pipeline). No two modules import each other:
//! `cargo test --test layers` draws the graph of `crate::` references
//! between the top-level modules and fails on a cycle, naming it.
//! `docs/architecture.md` has the picture and each trait's implementors.

pub mod admin;
pub mod app;
pub mod auth;
pub mod channel;
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
pub mod sync;
pub mod tail;
pub mod throttle;
pub mod tls;
pub mod watch;
