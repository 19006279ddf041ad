//! Operations endpoints: `/healthz`, `/readyz` (the store and every
//! source), `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::metrics::Metrics;
use crate::source::Readiness;
use crate::store::Store;

#[derive(Debug, Clone)]
struct Admin {
    readiness: Readiness,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

pub fn routes(readiness: Readiness, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Admin {
            readiness,
            store,
            metrics,
        })
}

/// The process is up and serving HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the store and every source are ready, else 503; the body
/// says which is not, and why.
async fn readyz(State(admin): State<Admin>) -> Response {
    let (sources_ready, sources) = admin.readiness.snapshot();
    let store = match admin.store.readiness() {
        Ok(()) => json!({ "ready": true }),
        Err(detail) => json!({ "ready": false, "detail": detail }),
    };
    let ready = sources_ready && store["ready"] == true;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({ "ready": ready, "store": store, "sources": sources })),
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
