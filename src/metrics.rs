//! Every count herald keeps, in one place, exposed at `/metrics` in the
//! Prometheus text format.
//!
//! One typed failure gives one log line (at its site) and one increment
//! here. Hot-path counters that would bounce a cache line per delivery are
//! added in batches by their owner (a session adds per flush).
//!
//! A source kind's own counters (`herald_<kind>_*`) are not listed here:
//! the source asks [`Metrics::family`] for them, which registers each on
//! first use, so adding a source kind does not touch this file.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

/// Label pairs of a metric family's member.
pub type Labels = Vec<(&'static str, String)>;

/// herald's counters, gauges and histograms.
#[derive(Debug)]
pub struct Metrics {
    /// Behind a lock only for [`Metrics::family`]; the hot paths hold
    /// their metrics directly.
    registry: Mutex<Registry>,
    /// The families registered by [`Metrics::family`], by full name.
    families: Mutex<HashMap<String, Box<dyn Any + Send + Sync>>>,
    /// Events handed to the pipeline, by source.
    pub events: Family<Labels, Counter>,
    /// Events not turned into notifications, by source and reason.
    pub events_rejected: Family<Labels, Counter>,
    /// Rule failures at run time, by rule.
    pub rule_failures: Family<Labels, Counter>,
    pub notifications_appended: Counter,
    pub notifications_duplicate: Counter,
    /// Append latency (rules excluded), seconds.
    pub append_seconds: Histogram,
    /// Notifications queued to sessions by the hub.
    pub fanout_queued: Counter,
    /// Notification frames written to clients (live and replayed).
    pub deliveries: Counter,
    /// Notifications sent as replay after a `last_id`.
    pub replayed: Counter,
    /// Subscriptions, by `recovered`.
    pub subscriptions: Family<Labels, Counter>,
    pub sessions: Gauge,
    /// Closed sessions, by reason.
    pub sessions_closed: Family<Labels, Counter>,
    /// Client protocol errors, by error code.
    pub client_errors: Family<Labels, Counter>,
    /// Refused credentials and channels, by surface (`connect`, `refresh`,
    /// `subscribe`, `ingest`, `admin`) and reason.
    pub auth_rejections: Family<Labels, Counter>,
    /// History API requests, by outcome (`ok` or the refusal's reason).
    pub history_requests: Family<Labels, Counter>,
    /// Notifications served by the history API.
    pub history_notifications: Counter,
    /// Rules versions loaded, by result (`ok`, `rejected`).
    pub rules_reloads: Family<Labels, Counter>,
    /// `api_keys_file` reloads after a change, by result (`ok`, `rejected`).
    pub api_keys_reloads: Family<Labels, Counter>,
    /// Rules versions made live, by version id and origin (`api`,
    /// `rollback`, `store` (activated by another node), `built-in` or the
    /// file's path).
    pub rules_activations: Family<Labels, Counter>,
    /// Poison events written to a dead-letter destination, by source and
    /// reason.
    pub dead_lettered: Family<Labels, Counter>,
    /// Failures inside a source (consume, commit, dead letter, store), by
    /// source and error.
    pub source_errors: Family<Labels, Counter>,
    /// Durable commits of the disk and Redis stores (one fsync or one Redis
    /// round trip each).
    pub store_commits: Counter,
    /// Notifications per durable commit: how well group commit batches.
    pub store_commit_size: Histogram,
    /// Store operations that failed, by operation (`append`, `read`,
    /// `trim`, `feed`).
    pub store_errors: Family<Labels, Counter>,
    /// Notifications removed by retention (count, size and age).
    pub store_trimmed: Counter,
    /// Channels the store holds (memory and disk stores).
    pub store_channels: Gauge,
    /// Channels dropped whole, by reason (`idle`, `max_channels`).
    pub store_channels_dropped: Family<Labels, Counter>,
    /// The HTTP edge's counters (`herald_http_*`).
    pub edge: crate::edge::EdgeMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let events = Family::<Labels, Counter>::default();
        let events_rejected = Family::<Labels, Counter>::default();
        let rule_failures = Family::<Labels, Counter>::default();
        let notifications_appended = Counter::default();
        let notifications_duplicate = Counter::default();
        let append_seconds = Histogram::new(exponential_buckets(0.000_01, 4.0, 10));
        let fanout_queued = Counter::default();
        let deliveries = Counter::default();
        let replayed = Counter::default();
        let subscriptions = Family::<Labels, Counter>::default();
        let sessions = Gauge::default();
        let sessions_closed = Family::<Labels, Counter>::default();
        let client_errors = Family::<Labels, Counter>::default();
        let auth_rejections = Family::<Labels, Counter>::default();
        let rules_reloads = Family::<Labels, Counter>::default();
        let api_keys_reloads = Family::<Labels, Counter>::default();
        let rules_activations = Family::<Labels, Counter>::default();
        let history_requests = Family::<Labels, Counter>::default();
        let history_notifications = Counter::default();
        let store_commits = Counter::default();
        let store_commit_size = Histogram::new(exponential_buckets(1.0, 4.0, 8));
        let store_errors = Family::<Labels, Counter>::default();
        let store_trimmed = Counter::default();
        let store_channels = Gauge::default();
        let store_channels_dropped = Family::<Labels, Counter>::default();
        let dead_lettered = Family::<Labels, Counter>::default();
        let source_errors = Family::<Labels, Counter>::default();
        registry.register("events", "Events received, by source", events.clone());
        registry.register(
            "events_rejected",
            "Events that produced no notification, by source and reason",
            events_rejected.clone(),
        );
        registry.register(
            "rule_failures",
            "Rule evaluations that failed at run time, by rule",
            rule_failures.clone(),
        );
        registry.register(
            "notifications_appended",
            "Notifications appended to the log",
            notifications_appended.clone(),
        );
        registry.register(
            "notifications_duplicate",
            "Notifications dropped as duplicates by dedupe key",
            notifications_duplicate.clone(),
        );
        registry.register(
            "append_seconds",
            "Time to append one event's notifications durably",
            append_seconds.clone(),
        );
        registry.register(
            "fanout_queued",
            "Notifications queued to live sessions",
            fanout_queued.clone(),
        );
        registry.register(
            "deliveries",
            "Notification frames written to clients",
            deliveries.clone(),
        );
        registry.register(
            "replayed",
            "Notifications replayed after a last_id",
            replayed.clone(),
        );
        registry.register(
            "subscriptions",
            "Subscriptions confirmed, by recovered",
            subscriptions.clone(),
        );
        registry.register("sessions", "Open client sessions", sessions.clone());
        registry.register(
            "sessions_closed",
            "Client sessions closed, by reason",
            sessions_closed.clone(),
        );
        registry.register(
            "client_errors",
            "Client protocol errors, by code",
            client_errors.clone(),
        );
        registry.register(
            "auth_rejections",
            "Refused tokens, API keys, admin tokens and channels, by surface and reason",
            auth_rejections.clone(),
        );
        registry.register(
            "history_requests",
            "History API requests, by outcome",
            history_requests.clone(),
        );
        registry.register(
            "history_notifications",
            "Notifications served by the history API",
            history_notifications.clone(),
        );
        registry.register(
            "rules_reloads",
            "Rules versions loaded, by result",
            rules_reloads.clone(),
        );
        registry.register(
            "api_keys_reloads",
            "Producer key files reloaded after a change, by result",
            api_keys_reloads.clone(),
        );
        registry.register(
            "rules_activations",
            "Rules versions made live, by version id and origin",
            rules_activations.clone(),
        );
        registry.register(
            "dead_lettered",
            "Poison events written to a dead-letter destination, by source and reason",
            dead_lettered.clone(),
        );
        registry.register(
            "source_errors",
            "Failures inside a source (consume, commit, dead_letter, store, client), by source and error",
            source_errors.clone(),
        );
        registry.register(
            "store_commits",
            "Durable commits of the disk or Redis store",
            store_commits.clone(),
        );
        registry.register(
            "store_commit_size",
            "Notifications per durable commit (group commit)",
            store_commit_size.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed, by operation",
            store_errors.clone(),
        );
        registry.register(
            "store_trimmed",
            "Notifications removed by retention",
            store_trimmed.clone(),
        );
        registry.register(
            "store_channels",
            "Channels the store holds (memory and disk stores)",
            store_channels.clone(),
        );
        registry.register(
            "store_channels_dropped",
            "Channels dropped whole by the store, by reason (idle, max_channels)",
            store_channels_dropped.clone(),
        );
        let edge = crate::edge::EdgeMetrics::register(&mut registry);
        Self {
            registry: Mutex::new(registry),
            families: Mutex::new(HashMap::new()),
            events,
            events_rejected,
            rule_failures,
            notifications_appended,
            notifications_duplicate,
            append_seconds,
            fanout_queued,
            deliveries,
            replayed,
            subscriptions,
            sessions,
            sessions_closed,
            client_errors,
            auth_rejections,
            rules_reloads,
            api_keys_reloads,
            rules_activations,
            history_requests,
            history_notifications,
            store_commits,
            store_commit_size,
            store_errors,
            store_trimmed,
            store_channels,
            store_channels_dropped,
            edge,
            dead_lettered,
            source_errors,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &crate::sync::lock(&self.registry));
        out
    }

    pub fn event(&self, source: &str) {
        self.events
            .get_or_create(&vec![("source", source.to_string())])
            .inc();
    }

    pub fn rejected(&self, source: &str, reason: &'static str) {
        self.events_rejected
            .get_or_create(&vec![
                ("source", source.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    pub fn rule_failed(&self, rule: &str) {
        self.rule_failures
            .get_or_create(&vec![("rule", rule.to_string())])
            .inc();
    }

    pub fn session_closed(&self, reason: &'static str) {
        self.sessions_closed
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn auth_rejected(&self, surface: &'static str, reason: &'static str) {
        self.auth_rejections
            .get_or_create(&vec![
                ("surface", surface.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    /// One history API request and the notifications it served.
    pub fn history_read(&self, outcome: &'static str, notifications: usize) {
        self.history_requests
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
        self.history_notifications.inc_by(notifications as u64);
    }

    pub fn client_error(&self, code: &'static str) {
        self.client_errors
            .get_or_create(&vec![("code", code.to_string())])
            .inc();
    }

    pub fn subscribed(&self, recovered: bool) {
        self.subscriptions
            .get_or_create(&vec![("recovered", recovered.to_string())])
            .inc();
    }

    pub fn store_error(&self, op: &'static str) {
        self.store_errors
            .get_or_create(&vec![("op", op.to_string())])
            .inc();
    }

    /// One durable commit of `notifications` new notifications.
    pub fn store_committed(&self, notifications: usize) {
        self.store_commits.inc();
        self.store_commit_size.observe(notifications as f64);
    }

    pub fn rules_loaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.rules_reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    pub fn api_keys_loaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.api_keys_reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    pub fn rules_activated(&self, version: &str, origin: &str) {
        self.rules_activations
            .get_or_create(&vec![
                ("version", version.to_string()),
                ("origin", origin.to_string()),
            ])
            .inc();
    }

    pub fn dead_lettered(&self, source: &str, reason: &'static str) {
        self.dead_lettered
            .get_or_create(&vec![
                ("source", source.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    pub fn source_error(&self, source: &str, error: &'static str) {
        self.source_errors
            .get_or_create(&vec![
                ("source", source.to_string()),
                ("error", error.to_string()),
            ])
            .inc();
    }

    /// The metric family `herald_<prefix>_<name>` of one part of herald (a
    /// source kind: `amqp`, `kafka`), registered with `help` on first call
    /// and the same family after, so every source of a kind shares it and
    /// labels its members by source name.
    ///
    /// One name is one type: asking for a registered name as another type
    /// is a bug; it logs an error and returns an unregistered family, so
    /// the counts go nowhere rather than herald stopping.
    pub fn family<M>(&self, prefix: &str, name: &str, help: &str) -> M
    where
        M: Metric + Clone + Default,
    {
        let full = format!("{prefix}_{name}");
        let mut families = crate::sync::lock(&self.families);
        if let Some(known) = families.get(&full) {
            return match known.downcast_ref::<M>() {
                Some(m) => m.clone(),
                None => {
                    tracing::error!(metric = %full, "metric family asked for as another type");
                    M::default()
                }
            };
        }
        let metric = M::default();
        crate::sync::lock(&self.registry).register(full.clone(), help, metric.clone());
        families.insert(full, Box::new(metric.clone()));
        metric
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_is_registered_once_and_shared() {
        let metrics = Metrics::new();
        let a: Family<Labels, Counter> = metrics.family("kind", "things", "Things, by source");
        let b: Family<Labels, Counter> = metrics.family("kind", "things", "Things, by source");
        a.get_or_create(&vec![("source", "one".into())]).inc();
        b.get_or_create(&vec![("source", "one".into())]).inc();
        let text = metrics.render();
        assert_eq!(
            text.matches("# HELP herald_kind_things Things").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains(r#"herald_kind_things_total{source="one"} 2"#),
            "{text}"
        );
        // Another type under a known name counts nowhere, and does not panic.
        let other: Family<Labels, Gauge> = metrics.family("kind", "things", "x");
        other.get_or_create(&vec![("source", "one".into())]).set(7);
        assert!(!metrics.render().contains("} 7"));
    }
}
