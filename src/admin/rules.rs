//! `/admin/rules`: the active rules version, its history, activation and
//! rollback (see [`crate::rules::versions`]).
//!
//! - `GET /admin/rules`: the mode (`file` or `api`), the live version with
//!   its text, the active id in the store and the history, newest first;
//! - `PUT /admin/rules`: the body is a rules file (YAML, or TOML with a
//!   `Content-Type` naming toml or `?format=toml`); 200 with the record
//!   (`activated: false` when that content is already live), 422 with one
//!   diagnostic per problem (the live version stays), 409 when rules come
//!   from a file, 503 when the version store cannot record it;
//! - `POST /admin/rules/rollback[?to=<id>]`: make version `to` (default:
//!   the live version's previous) live again; 404 for an id not kept;
//! - `POST /admin/rules/preview[?channel=&limit=&cursor=]`: the body is a
//!   candidate rules file; 422 with diagnostics when it does not compile,
//!   else the summary of evaluating the live and the candidate version
//!   over every recorded event and the first `limit` (100) events with
//!   differences (those after recorder id `cursor`; `next_cursor` continues),
//!   only those concerning `channel` when given. Works in either mode:
//!   previewing a file edit before saving it is the point.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::Admin;
use crate::rules::preview::Sample;
use crate::rules::versions::{API, ActivateError, StoredText};
use crate::rules::{Format, Rules};

/// The rules playground (`/admin/`): one page, no build step.
const PLAYGROUND: &str = include_str!("playground.html");

pub(super) fn routes() -> Router<Admin> {
    Router::new()
        .route(
            "/admin/",
            get(|| async { axum::response::Html(PLAYGROUND) }),
        )
        .route("/admin/rules", get(show).put(activate))
        .route("/admin/rules/rollback", post(rollback))
        .route("/admin/rules/preview", post(preview))
}

async fn show(State(admin): State<Admin>) -> Response {
    let versions = &admin.versions;
    let rules = versions.rules();
    let live = versions.live_text();
    let mut body = json!({
        "mode": if versions.file().is_some() { "file" } else { "api" },
        "file": versions.file().map(|p| p.display().to_string()),
        "live": {
            "id": rules.content_id(),
            "origin": rules.origin(),
            "rules": rules.rule_ids(),
            "format": live.format,
            "text": live.text,
        },
    });
    match versions.history().await {
        Ok(history) => {
            body["active"] = json!(history.active);
            body["history"] = json!(history.records);
            axum::Json(body).into_response()
        }
        Err(e) => {
            body["error"] = json!(e.to_string());
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatQuery {
    format: Option<String>,
}

/// A rules text from a request: the body, in the format `?format=` names,
/// else the `Content-Type` (one naming toml), else YAML. The error is the
/// 400 answer's message.
pub(super) fn candidate(
    format: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<StoredText, String> {
    let format = match format.map(str::to_ascii_lowercase).as_deref() {
        Some("toml") => Format::Toml,
        Some("yaml" | "yml") => Format::Yaml,
        Some(other) => return Err(format!("format {other:?}: expected yaml or toml")),
        None => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if content_type.to_ascii_lowercase().contains("toml") {
                Format::Toml
            } else {
                Format::Yaml
            }
        }
    };
    let text = std::str::from_utf8(body).map_err(|_| "the rules text is not UTF-8".to_string())?;
    Ok(StoredText {
        format,
        text: text.to_string(),
    })
}

async fn activate(
    State(admin): State<Admin>,
    Query(query): Query<FormatQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = match candidate(query.format.as_deref(), &headers, &body) {
        Ok(t) => t,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match admin.versions.activate(text, API).await {
        Ok(Some(record)) => {
            axum::Json(json!({ "activated": true, "version": record })).into_response()
        }
        Ok(None) => axum::Json(json!({
            "activated": false,
            "version": { "id": admin.versions.rules().content_id() },
        }))
        .into_response(),
        Err(e) => refused(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackQuery {
    to: Option<String>,
}

async fn rollback(State(admin): State<Admin>, Query(query): Query<RollbackQuery>) -> Response {
    match admin.versions.rollback(query.to.as_deref()).await {
        Ok(record) => axum::Json(json!({ "activated": true, "version": record })).into_response(),
        Err(e) => refused(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewQuery {
    format: Option<String>,
    channel: Option<String>,
    limit: Option<usize>,
    cursor: Option<u64>,
}

async fn preview(
    State(admin): State<Admin>,
    Query(q): Query<PreviewQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = match candidate(q.format.as_deref(), &headers, &body) {
        Ok(t) => t,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let candidate = match Rules::parse(&text.text, text.format, "candidate") {
        Ok(r) => r,
        Err(e) => return refused(ActivateError::Invalid(e)),
    };
    let samples: Vec<Sample> = match &admin.recorder {
        Some(recorder) => recorder
            .list(None, usize::MAX, |_| true)
            .iter()
            .map(|e| Sample {
                id: e.id(),
                event: e.view().to_event(),
            })
            .collect(),
        None => Vec::new(),
    };
    let live = admin.versions.rules();
    let live_id = live.content_id().to_string();
    // Evaluating thousands of events twice is CPU work: off the runtime.
    let evaluated = tokio::task::spawn_blocking(move || {
        (
            crate::rules::preview::preview(&live, &candidate, &samples),
            candidate,
        )
    })
    .await;
    let Ok((mut result, candidate)) = evaluated else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the preview failed");
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let cursor = q.cursor.unwrap_or(0);
    let mut differences: Vec<_> = std::mem::take(&mut result.differences)
        .into_iter()
        .filter(|d| d.id > cursor)
        .filter(|d| {
            q.channel
                .as_deref()
                .is_none_or(|c| d.changes.iter().any(|x| x.channel() == Some(c)))
        })
        .collect();
    let next_cursor = (differences.len() > limit).then(|| differences[limit - 1].id);
    differences.truncate(limit);
    axum::Json(json!({
        "active": live_id,
        "candidate": { "id": candidate.content_id(), "rules": candidate.rule_ids() },
        "recorder": admin.recorder.is_some(),
        "summary": result.summary,
        "differences": differences,
        "next_cursor": next_cursor,
    }))
    .into_response()
}

/// The answer to an activation that did not happen.
fn refused(e: ActivateError) -> Response {
    match e {
        ActivateError::Invalid(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "error": "the rules do not compile; the live version stays",
                "diagnostics": e.diagnostics,
            })),
        )
            .into_response(),
        ActivateError::FileMode(_) => error(StatusCode::CONFLICT, &e.to_string()),
        ActivateError::UnknownVersion(_) | ActivateError::NoPrevious => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        ActivateError::Store(_) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}
