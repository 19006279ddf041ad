//! The HTTP edge: what every connection and request passes before a route
//! sees it.
//!
//! - [`origin`]: the `Origin` and `Host` checks (cross-site WebSocket
//!   hijacking, DNS rebinding), answered 403 / 421 before any upgrade;
//! - [`limits`]: connection caps (total, per address, rate per address)
//!   and request deadlines (408, early 413 with a lingering close);
//!
//! The accept loop itself is [`crate::server`]; it asks this module.
//!
//! Every refusal here is counted in `herald_http_refused_total{reason}`
//! and answered with a status and a short body that names the problem and
//! the setting, never an internal error text.

pub mod limits;
pub mod origin;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The edge's counters (`herald_http_*`).
/// Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct EdgeMetrics {
    /// Requests and connections refused at the edge, by reason (`origin`,
    /// `host`, `connections`, `connections_per_ip`, `rate`, `timeout`,
    /// `too_large`).
    pub refused: Family<Labels, Counter>,
    /// Accepted connections open now (HTTP and WebSocket), every listener.
    pub connections: Gauge,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: Counter,
    /// Certificate reloads, by result (`ok`, `rejected`).
    pub tls_reloads: Family<Labels, Counter>,
}

impl EdgeMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("http");
        r.register(
            "refused",
            "Requests and connections refused before a route, by reason",
            m.refused.clone(),
        );
        r.register(
            "connections",
            "Accepted connections open now, HTTP and WebSocket",
            m.connections.clone(),
        );
        let tls = registry.sub_registry_with_prefix("tls");
        tls.register(
            "handshake_failures",
            "TLS handshakes that failed or timed out",
            m.tls_handshake_failures.clone(),
        );
        tls.register(
            "reloads",
            "Certificate reloads, by result",
            m.tls_reloads.clone(),
        );
        m
    }

    pub fn tls_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.tls_reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }
}
