//! `Origin` and `Host` checks, on every request before its route.
//!
//! Browsers open WebSockets across sites without CORS, so a page on
//! `evil.example` could open herald's socket in a user's browser (with the
//! user's network position and, where a token travels in a cookie-set
//! query, the user's identity). And a page whose name an attacker re-points
//! at 127.0.0.1 (DNS rebinding) reaches a herald listening there with
//! `Host: evil.example`. The answers:
//!
//! - a request whose `Origin` is not allowed gets **403** before any
//!   upgrade, whatever its route (WebSocket, SSE, POST, history), except
//!   `/healthz`. Always allowed: no `Origin` (curl, services, a page's own
//!   navigation) and the same origin as the request's `Host`. Added by
//!   `server.allowed_origins`, or when it is unset the loopback origins
//!   (`http(s)://localhost`, `127.0.0.1`, `[::1]`, any port); `"*"` allows
//!   every origin. `Origin: null` (sandboxed frames, `file://` pages) is
//!   allowed only when listed as `"null"`;
//! - a request whose `Host` is not allowed gets **421** (misdirected).
//!   `server.allowed_hosts`, or when it is unset: on a loopback listener
//!   `localhost`, `127.0.0.1` and `[::1]` (any port), on any other listener
//!   every host. `/healthz` is exempt (probes name the pod's address) and
//!   so is a request without `Host` (HTTP/1.0; browsers always send one).
//!
//! Entries of both lists are globs matched without case (`https://*.example.com`,
//! `http://localhost:*`, `*.internal`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde_json::json;

use super::EdgeMetrics;

/// Host names a loopback listener answers to by default.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The compiled `allowed_origins` / `allowed_hosts`.
#[derive(Debug, Clone)]
pub struct Policy {
    origins: Allow,
    hosts: Allow,
}

#[derive(Debug, Clone)]
enum Allow {
    /// `"*"`, or hosts on a non-loopback listener by default.
    Any,
    /// Origins: the loopback ones. Hosts: the loopback names.
    Loopback,
    List(GlobSet),
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = GlobBuilder::new(p)
            .case_insensitive(true)
            .build()
            .map_err(|e| format!("{p:?}: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

/// Check an `allowed_origins` entry: `*`, `null`, or `scheme://host[:port]`
/// (globs allowed) without a path.
pub fn check_origin_pattern(p: &str) -> Result<(), String> {
    if p == "*" || p == "null" {
        return Ok(());
    }
    let Some((scheme, rest)) = p.split_once("://") else {
        return Err(format!(
            "{p:?} is not an origin: write scheme://host[:port] (https://app.example.com), \"*\" or \"null\""
        ));
    };
    if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "{p:?} is not an origin: scheme://host[:port], without a path or a trailing /"
        ));
    }
    globs(&[p.to_string()]).map(|_| ())
}

/// Check an `allowed_hosts` entry: a host name or address (globs allowed),
/// without a port.
pub fn check_host_pattern(p: &str) -> Result<(), String> {
    let without_brackets = p.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if p.is_empty() || p.contains('/') || (without_brackets.is_none() && p.contains(':')) {
        return Err(format!(
            "{p:?} is not a host name: write the name without scheme or port (app.example.com, \"[::1]\", \"*.internal\")"
        ));
    }
    globs(&[p.to_string()]).map(|_| ())
}

impl Policy {
    /// The policy of a listener on `listen`.
    pub fn new(
        listen: SocketAddr,
        allowed_origins: Option<&[String]>,
        allowed_hosts: Option<&[String]>,
    ) -> Result<Self, String> {
        let origins = match allowed_origins {
            None => Allow::Loopback,
            Some(list) if list.iter().any(|o| o == "*") => Allow::Any,
            Some(list) => Allow::List(globs(list)?),
        };
        let hosts = match allowed_hosts {
            None if listen.ip().is_loopback() => Allow::Loopback,
            None => Allow::Any,
            Some(list) if list.iter().any(|h| h == "*") => Allow::Any,
            Some(list) => Allow::List(globs(list)?),
        };
        Ok(Self { origins, hosts })
    }

    /// Whether a request with these headers may go on; the refusal (status,
    /// metric reason, message) when not.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str, String)> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if let Some(host) = host {
            let name = split_host(host).0;
            if !self.host_allowed(&name) {
                return Err((
                    StatusCode::MISDIRECTED_REQUEST,
                    "host",
                    format!("host {name:?} is not served here; see server.allowed_hosts"),
                ));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !self.origin_allowed(origin, host) {
                return Err((
                    StatusCode::FORBIDDEN,
                    "origin",
                    format!("origin {origin:?} is not allowed; see server.allowed_origins"),
                ));
            }
        }
        Ok(())
    }

    fn host_allowed(&self, name: &str) -> bool {
        match &self.hosts {
            Allow::Any => true,
            Allow::Loopback => LOOPBACK_HOSTS.contains(&name),
            Allow::List(set) => set.is_match(name),
        }
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim();
        if matches!(self.origins, Allow::Any) {
            return true;
        }
        if origin == "null" {
            return matches!(&self.origins, Allow::List(set) if set.is_match("null"));
        }
        let Ok(url) = url::Url::parse(origin) else {
            return false;
        };
        let Some(origin_host) = url.host_str() else {
            return false;
        };
        let origin_host = origin_host.to_ascii_lowercase();
        if let Some(host) = host {
            let (name, port) = split_host(host);
            let port = port.or(url.port_or_known_default());
            if name == origin_host && port == url.port_or_known_default() {
                return true;
            }
        }
        match &self.origins {
            Allow::Any => true,
            Allow::Loopback => {
                matches!(url.scheme(), "http" | "https")
                    && LOOPBACK_HOSTS.contains(&origin_host.as_str())
            }
            // Matched on the origin as browsers serialize it (no trailing
            // slash, default port omitted).
            Allow::List(set) => set.is_match(url.origin().ascii_serialization()),
        }
    }
}

/// `host[:port]` → the host in lower case (IPv6 in brackets, without a
/// trailing dot) and the port.
fn split_host(host: &str) -> (String, Option<u16>) {
    let host = host.trim();
    let (name, port) = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => (&host[..=end], host[end + 1..].strip_prefix(':')),
            None => (host, None),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    (name, port.and_then(|p| p.parse().ok()))
}

/// The middleware: refuse what [`Policy::check`] refuses, before the route.
pub async fn guard(
    State((policy, metrics)): State<(Arc<Policy>, EdgeMetrics)>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    match policy.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err((status, reason, message)) => {
            metrics.refused(reason);
            tracing::debug!(status = status.as_u16(), reason, message, "request refused");
            (status, axum::Json(json!({ "error": message }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(header::HOST, host.parse().expect("header"));
        }
        if let Some(origin) = origin {
            h.insert(header::ORIGIN, origin.parse().expect("header"));
        }
        h
    }

    fn loopback() -> Policy {
        Policy::new("127.0.0.1:8080".parse().expect("addr"), None, None).expect("policy")
    }

    fn status(p: &Policy, host: Option<&str>, origin: Option<&str>) -> u16 {
        match p.check(&headers(host, origin)) {
            Ok(()) => 200,
            Err((s, _, _)) => s.as_u16(),
        }
    }

    #[test]
    fn defaults_allow_loopback_origins_same_origin_and_no_origin() {
        let p = loopback();
        let h = Some("127.0.0.1:8080");
        assert_eq!(status(&p, h, None), 200);
        for origin in [
            "http://127.0.0.1:8080",
            "http://localhost:3000",
            "http://[::1]:5173",
            "https://localhost",
        ] {
            assert_eq!(status(&p, h, Some(origin)), 200, "{origin}");
        }
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1.evil.example",
            "garbage",
            "",
        ] {
            assert_eq!(status(&p, h, Some(origin)), 403, "{origin}");
        }
    }

    #[test]
    fn loopback_listeners_answer_loopback_names_only() {
        let p = loopback();
        for host in ["localhost:8080", "127.0.0.1", "[::1]:1", "LOCALHOST.:9"] {
            assert_eq!(status(&p, Some(host), None), 200, "{host}");
        }
        for host in ["evil.example", "evil.example:8080", "127.0.0.2:8080"] {
            assert_eq!(status(&p, Some(host), None), 421, "{host}");
        }
        // A rebinding page is its own origin: the Host check stops it.
        assert_eq!(
            status(
                &p,
                Some("evil.example:8080"),
                Some("http://evil.example:8080")
            ),
            421
        );
        let open = Policy::new("0.0.0.0:8080".parse().expect("addr"), None, None).expect("p");
        assert_eq!(status(&open, Some("herald.example.com"), None), 200);
    }

    #[test]
    fn configured_lists_replace_the_defaults_same_origin_stays() {
        let origins = vec!["https://*.example.com".to_string(), "null".to_string()];
        let hosts = vec!["herald.example.com".to_string()];
        let p = Policy::new(
            "0.0.0.0:443".parse().expect("addr"),
            Some(&origins),
            Some(&hosts),
        )
        .expect("policy");
        let h = Some("herald.example.com");
        assert_eq!(status(&p, h, Some("https://app.example.com")), 200);
        assert_eq!(status(&p, h, Some("https://APP.example.com:443")), 200);
        assert_eq!(status(&p, h, Some("null")), 200);
        assert_eq!(status(&p, h, Some("https://herald.example.com")), 200);
        assert_eq!(status(&p, h, Some("http://localhost:3000")), 403);
        assert_eq!(status(&p, h, Some("https://example.com.evil.org")), 403);
        assert_eq!(status(&p, Some("localhost"), None), 421);
        let any = vec!["*".to_string()];
        let p = Policy::new("127.0.0.1:1".parse().expect("addr"), Some(&any), Some(&any))
            .expect("policy");
        assert_eq!(
            status(&p, Some("x.example"), Some("http://evil.example")),
            200
        );
    }

    #[test]
    fn patterns_are_checked() {
        assert!(check_origin_pattern("https://app.example.com").is_ok());
        assert!(check_origin_pattern("http://localhost:*").is_ok());
        assert!(check_origin_pattern("app.example.com").is_err());
        assert!(check_origin_pattern("https://app.example.com/").is_err());
        assert!(check_host_pattern("*.internal").is_ok());
        assert!(check_host_pattern("[::1]").is_ok());
        assert!(check_host_pattern("app.example.com:443").is_err());
        assert!(check_host_pattern("https://x").is_err());
    }
}
