//! The HTTP source: `POST /events/{topic}` with one JSON object or an array
//! of them.
//!
//! With `api_keys` (or `api_keys_file`), a request needs `Authorization:
//! Bearer <key>`: 401 without one, 403 with a key no digest matches or
//! limited to other topics (checked before the body is parsed).
//!
//! The answer is 202 only once every notification the events produced is
//! appended (durably, for the store in use): a producer that got 202 can
//! forget the events. 400 for a body that is not JSON or not objects, 413
//! above `max_body_bytes`, 503 when the log is unavailable (retry).
//!
//! Retried requests: the default dedupe key comes from the request, so a
//! retry appends again unless the producer sends an `Idempotency-Key`
//! header; with it, event `i` of the request is `http:<topic>:<key>:<i>`
//! and a retry appends nothing new. A request's events keep their order:
//! they share one [`Fence`], so after one fails (503) none after it
//! commits ahead of the retry.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Build, Settings, Source, SourceContext, SourceError};
use crate::auth::AuthError;
use crate::auth::api_keys::{ApiKeyEntry, ApiKeys};
use crate::edge::limits::Connection;
use crate::event::{Event, Meta, SourceKind};
use crate::pipeline::{Pipeline, Rejection};
use crate::store::Fence;

const MAX_TOPIC_LEN: usize = 249;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSourceConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most events in one request (an array); more get 413.
    pub max_events_per_request: usize,
    /// Producers' keys, as digests (`herald keys new` makes one); a key may
    /// be limited to topic globs. With keys, a request needs
    /// `Authorization: Bearer <key>`: 401 without, 403 with another key.
    pub api_keys: Vec<ApiKeyEntry>,
    /// A file of key digests, one per line (optionally followed by topic
    /// globs), read at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<PathBuf>,
}

impl Default for HttpSourceConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_events_per_request: 10_000,
            api_keys: Vec::new(),
            api_keys_file: None,
        }
    }
}

impl Settings for HttpSourceConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        if self.max_body_bytes == 0 {
            return Err(("max_body_bytes".into(), "must be greater than 0".into()));
        }
        if self.max_events_per_request == 0 {
            return Err((
                "max_events_per_request".into(),
                "must be greater than 0".into(),
            ));
        }
        for (i, key) in self.api_keys.iter().enumerate() {
            key.validate().map_err(|p| (format!("api_keys[{i}]"), p))?;
        }
        Ok(())
    }

    /// Loads the producers' keys: a key file that cannot be read, or a
    /// bad line in it, stops start-up naming the key.
    fn build(&self, build: &Build<'_>) -> Result<Box<dyn Source>, SourceError> {
        let keys = self.load_api_keys().map_err(|(key, problem)| AuthError {
            key: format!("sources[{}].{key}", build.index),
            problem,
        })?;
        let keys = keys.map(Arc::new);
        Ok(Box::new(HttpSource {
            routes: routes(self, build.pipeline.clone(), keys.clone()),
            keys,
        }))
    }
}

impl HttpSourceConfig {
    /// Whether producers need a key.
    pub fn has_api_keys(&self) -> bool {
        !self.api_keys.is_empty() || self.api_keys_file.is_some()
    }
}

/// Events submitted between two yields to the runtime: rules and appends
/// run synchronously, and a large array must not hold a worker thread.
const YIELD_EVERY: usize = 64;

impl HttpSourceConfig {
    /// The producers' keys (`api_keys` and the lines of `api_keys_file`);
    /// `None` when there are none and the source is open.
    pub fn load_api_keys(&self) -> Result<Option<ApiKeys>, (String, String)> {
        ApiKeys::load(&self.api_keys, self.api_keys_file.as_deref())
            .map_err(|problem| ("api_keys_file".into(), problem))
    }
}

/// The HTTP source's routes, mounted on the main server. With `keys`, a
/// request needs one of them.
fn routes(
    config: &HttpSourceConfig,
    pipeline: Arc<Pipeline>,
    keys: Option<Arc<ApiKeys>>,
) -> Router {
    Router::new()
        .route("/events/{topic}", post(ingest))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(Ingest {
            pipeline,
            keys,
            max_body_bytes: config.max_body_bytes,
            max_events: config.max_events_per_request,
        })
}

/// The HTTP source: its route is served by the main HTTP server, so
/// running it means being ready while the server is, and following
/// `api_keys_file` (until the sources stop).
#[derive(Debug)]
pub struct HttpSource {
    routes: Router,
    keys: Option<Arc<ApiKeys>>,
}

impl Source for HttpSource {
    fn routes(&self) -> Option<Router> {
        Some(self.routes.clone())
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        async move {
            if let Some(keys) = &self.keys {
                keys.spawn_reload(ctx.pipeline.metrics().clone(), ctx.shutdown.clone());
            }
            ctx.set_ready(true, "serving POST /events/{topic}");
            ctx.shutdown.cancelled().await;
            Ok(())
        }
        .boxed()
    }
}

#[derive(Debug, Clone)]
struct Ingest {
    pipeline: Arc<Pipeline>,
    keys: Option<Arc<ApiKeys>>,
    max_body_bytes: usize,
    max_events: usize,
}

/// Whether reading a body failed on its size limit.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn ingest(
    State(ingest): State<Ingest>,
    Path(topic): Path<String>,
    connection: Option<Extension<Connection>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let pipeline = &ingest.pipeline;
    if let Some(keys) = &ingest.keys
        && let Err(refused) = keys.check(&headers, &topic)
    {
        pipeline.metrics().auth_rejected("ingest", refused.label());
        return error(refused.status(), refused.message());
    }
    if topic.len() > MAX_TOPIC_LEN || topic.chars().any(char::is_control) {
        return error(
            StatusCode::BAD_REQUEST,
            "topic must be at most 249 characters with no control characters",
        );
    }
    let request = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(key)) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_LEN => {
            format!("key:{key}")
        }
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 200 visible ASCII characters",
            );
        }
        None => format!("req:{:016x}", fastrand::u64(..)),
    };
    // The topic's length keeps `topic` + `key` unambiguous (both may
    // contain `:`), so two producers' keys never collide.
    let position = format!("http:{}:{topic}:{request}", topic.len());
    // What provenance shows, and what the answer names so a producer can
    // find its events: the Idempotency-Key as given, else the generated id.
    let request_id = request
        .strip_prefix("key:")
        .or_else(|| request.strip_prefix("req:"))
        .unwrap_or(&request)
        .to_string();
    // A Content-Length over the limit is answered before the body is read
    // (the connection then lingers, so the client reads the 413); a longer
    // chunked body when the limit is reached.
    let announced_over = crate::edge::limits::content_length_over(
        &headers,
        ingest.max_body_bytes,
        connection.as_ref().map(|c| &c.0),
    );
    let body = if announced_over {
        Err(None)
    } else {
        axum::body::to_bytes(body, ingest.max_body_bytes)
            .await
            .map_err(Some)
    };
    let body = match body {
        Ok(body) => body,
        Err(e) if e.as_ref().is_none_or(is_length_limit) => {
            let detail = format!("body larger than {} bytes", ingest.max_body_bytes);
            pipeline.reject("http", &position, Rejection::TooLarge, &detail);
            let mut response = error(StatusCode::PAYLOAD_TOO_LARGE, detail);
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return response;
        }
        // Cut off (the request deadline) or reset by the client.
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };
    let payloads = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => vec![Value::Object(o)],
        Ok(Value::Array(items)) => {
            if let Some(i) = items.iter().position(|v| !v.is_object()) {
                let detail = format!("element {i} of the array is not a JSON object");
                pipeline.reject("http", &position, Rejection::InvalidJson, &detail);
                return error(StatusCode::BAD_REQUEST, detail);
            }
            if items.len() > ingest.max_events {
                let detail = format!(
                    "{} events in one request; at most {}",
                    items.len(),
                    ingest.max_events
                );
                pipeline.reject("http", &position, Rejection::TooLarge, &detail);
                return error(StatusCode::PAYLOAD_TOO_LARGE, detail);
            }
            items
        }
        Ok(_) => {
            let detail = "expected a JSON object or an array of objects";
            pipeline.reject("http", &position, Rejection::InvalidJson, detail);
            return error(StatusCode::BAD_REQUEST, detail);
        }
        Err(e) => {
            let detail = format!("invalid JSON: {e}");
            pipeline.reject("http", &position, Rejection::InvalidJson, &detail);
            return error(StatusCode::BAD_REQUEST, detail);
        }
    };
    let visible: BTreeMap<String, String> = headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "authorization" | "cookie"))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let count = payloads.len();
    // Submit in order first (that fixes the order in the log), then wait.
    // One fence for the request: if one event's append fails, none after
    // it commits, and the client's retry appends them in order.
    let fence = Arc::new(Fence::default());
    let mut pending = Vec::with_capacity(count);
    for (i, payload) in payloads.into_iter().enumerate() {
        if i > 0 && i % YIELD_EVERY == 0 {
            tokio::task::yield_now().await;
        }
        let mut meta = Meta::new(SourceKind::Http, topic.clone(), format!("{position}:{i}"))
            .with_locator(format!("http:{topic}/{request_id}#{i}"));
        meta.headers = visible.clone();
        pending.push(pipeline.submit(&Event { payload, meta }, Some(&fence)));
    }
    let mut totals = (0, 0, 0);
    let mut first_failure = None;
    for p in pending {
        match p.await {
            Ok(mut done) => {
                totals.0 += done.appended;
                totals.1 += done.duplicates;
                totals.2 += done.failures.len();
                if first_failure.is_none() && !done.failures.is_empty() {
                    first_failure = Some(done.failures.swap_remove(0));
                }
            }
            Err(e) => {
                // The store's error text is for the operator, not the
                // producer: the log has it, the answer says what to do.
                tracing::warn!(topic, error = %e, "ingest failed: store unavailable");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the log is unavailable; retry later",
                );
            }
        }
    }
    if let Some(first) = first_failure {
        // One line per request, whatever the number of failures (the
        // per-rule lines are sampled).
        tracing::warn!(
            topic,
            events = count,
            failed_rules = totals.2,
            rule = %first.rule,
            field = %first.field,
            error = %first.message,
            "ingest request: rules failed; first failure shown"
        );
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "events": count,
            "notifications": totals.0,
            "duplicates": totals.1,
            "failed_rules": totals.2,
            "request_id": request_id,
        })),
    )
        .into_response()
}
