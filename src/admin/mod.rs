//! Operations endpoints: `/healthz` (always public) and the admin surface,
//! `/readyz` (the store and every source), `/metrics` and `/admin/*` (the
//! rules lifecycle, [`rules`]), guarded by the admin token when one is set
//! and served on `[admin] listen` when that is set.

pub mod client;
mod events;
mod rules;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::auth::admin::AdminToken;
use crate::metrics::Metrics;
use crate::rules::versions::Versions;
use crate::source::Readiness;
use crate::store::Store;

/// What the admin endpoints read and act on.
#[derive(Debug, Clone)]
pub struct Admin {
    pub readiness: Readiness,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub versions: Arc<Versions>,
    /// The traffic recorder, when on.
    pub recorder: Option<Arc<crate::recorder::Recorder>>,
    /// Client authentication: not ready while it cannot check any token.
    pub auth: Arc<crate::auth::Auth>,
}

/// `/healthz`: on every listener, never behind a token (load balancers and
/// liveness probes).
pub fn health_routes() -> Router {
    Router::new().route("/healthz", get(healthz))
}

/// The admin surface, behind `token` when it is set.
pub fn routes(admin: Admin, token: Arc<AdminToken>) -> Router {
    let guarded = token.is_set();
    let metrics = admin.metrics.clone();
    let router = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(rules::routes())
        .merge(events::routes())
        .with_state(admin);
    if !guarded {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(
        (token, metrics),
        guard,
    ))
}

/// The admin token check, counted when it refuses.
async fn guard(
    State((token, metrics)): State<(Arc<AdminToken>, Arc<Metrics>)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match token.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(status) => {
            let reason = if status == StatusCode::UNAUTHORIZED {
                "missing_token"
            } else {
                "wrong_token"
            };
            metrics.auth_rejected("admin", reason);
            crate::auth::admin::refusal(status)
        }
    }
}

/// The process is up and serving HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the store, every source and client authentication are ready,
/// else 503; the body says which is not, and why.
async fn readyz(State(admin): State<Admin>) -> Response {
    let (sources_ready, sources) = admin.readiness.snapshot();
    let part = |r: Result<(), String>| match r {
        Ok(()) => json!({ "ready": true }),
        Err(detail) => json!({ "ready": false, "detail": detail }),
    };
    let store = part(admin.store.readiness());
    let auth = part(admin.auth.readiness());
    let ready = sources_ready && store["ready"] == true && auth["ready"] == true;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({ "ready": ready, "store": store, "auth": auth, "sources": sources })),
    )
        .into_response()
}

async fn metrics_text(State(admin): State<Admin>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.render(),
    )
        .into_response()
}
