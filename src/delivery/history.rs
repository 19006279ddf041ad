//! The history API: `GET /channels/{channel}/notifications`.
//!
//! - `?after=<id>&limit=N`: the notifications after `id`, oldest first
//!   (catching up, paging forward);
//! - `?before=<id>&limit=N`: the `N` just before `id`, oldest first
//!   (an inbox scrolling back);
//! - neither: the newest `N`, oldest first.
//!
//! The answer is `{"notifications":[…],"position":"<id>","recovered":bool,
//! "more":bool}`. Each notification is the very frame a WebSocket carries.
//! `position` is the id to pass next in the same direction: the newest
//! returned for `after`, the oldest returned otherwise (when nothing is
//! returned, where the read stood). `more` says whether the log holds more
//! in that direction now. `limit` is 1–1000, 100 by default.
//!
//! Honest gaps, as on a WebSocket: an id of another epoch, one ahead of the
//! channel's head, or one whose neighbours were trimmed gives
//! `recovered: false`, and then the page starts where history does: the
//! oldest retained for `after`, the newest for `before`. A channel nobody
//! wrote to is an empty page in the current epoch (`<epoch>-0`).
//!
//! Authorization is the subscription's: the token (`token` query or
//! `Authorization: Bearer`) through [`crate::auth::Auth::authenticate`],
//! the channel through [`crate::auth::Principal::check`]; refusals are
//! the JSON of [`super::refusal`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};

use super::protocol::{NotificationFrame, Provenance};
use super::refusal::{self, Refusal};
use super::session::SessionContext;
use crate::store::{Entry, Page, Store, StoreError, parse_id};

/// Notifications per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// Where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// The newest notifications.
    Newest,
    /// After this (epoch, offset).
    After(String, u64),
    /// Before this (epoch, offset).
    Before(String, u64),
}

/// A parsed history query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub direction: Direction,
    pub limit: usize,
}

impl HistoryQuery {
    /// Parse `after`, `before` and `limit`; other parameters (`token`) are
    /// not this function's business.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let pairs: Vec<(String, String)> = match query {
            Some(q) => {
                serde_urlencoded::from_str(q).map_err(|e| format!("malformed query: {e}"))?
            }
            None => Vec::new(),
        };
        let mut direction = Direction::Newest;
        let mut limit = DEFAULT_LIMIT;
        for (key, value) in pairs {
            let position = |value: &str| {
                parse_id(value)
                    .map(|(epoch, offset)| (epoch.to_string(), offset))
                    .ok_or_else(|| {
                        format!("{key} must be a notification id, <epoch>-<offset>, not {value:?}")
                    })
            };
            match key.as_str() {
                "after" | "before" if direction != Direction::Newest => {
                    return Err("give after or before, not both".into());
                }
                "after" => {
                    let (epoch, offset) = position(&value)?;
                    direction = Direction::After(epoch, offset);
                }
                "before" => {
                    let (epoch, offset) = position(&value)?;
                    direction = Direction::Before(epoch, offset);
                }
                "limit" => {
                    limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            format!(
                                "limit must be a whole number from 1 to {MAX_LIMIT}, not {value:?}"
                            )
                        })?;
                }
                _ => {}
            }
        }
        Ok(Self { direction, limit })
    }
}

/// One page of the answer.
#[derive(Debug)]
pub struct Answer {
    pub entries: Vec<Arc<Entry>>,
    pub position: String,
    pub recovered: bool,
    pub more: bool,
}

impl Answer {
    /// The JSON body; the notification frames are spliced in as they are.
    pub fn to_json(&self) -> String {
        let frames: usize = self
            .entries
            .iter()
            .map(|d| d.fields.len() + d.provenance.as_ref().map_or(0, |p| p.len() + 16) + 160)
            .sum();
        let mut body = String::with_capacity(frames + 96);
        body.push_str("{\"notifications\":[");
        for (i, d) in self.entries.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            // The history API is for people tracing a notification: it
            // always says where each came from.
            body.push_str(&NotificationFrame::text(d, Provenance::Include));
        }
        body.push_str("],\"position\":");
        body.push_str(&serde_json::to_string(&self.position).unwrap_or_default());
        body.push_str(if self.recovered {
            ",\"recovered\":true"
        } else {
            ",\"recovered\":false"
        });
        body.push_str(if self.more {
            ",\"more\":true}"
        } else {
            ",\"more\":false}"
        });
        body
    }
}

/// Read one page of `channel` as `query` asks.
pub async fn read(
    store: &dyn Store,
    channel: &str,
    query: &HistoryQuery,
) -> Result<Answer, StoreError> {
    let limit = query.limit;
    match &query.direction {
        Direction::After(epoch, after) => {
            let page = store.read_after(channel, *after, limit).await?;
            let recovered = **epoch == *page.epoch
                && *after <= page.last
                && after + 1 >= page.first
                && page.entries.first().is_none_or(|d| d.offset == after + 1);
            if recovered {
                return Ok(forward(page, *after, true));
            }
            // From the oldest retained: everything there is to read.
            let page = store.read_after(channel, 0, limit).await?;
            let start = page.first.saturating_sub(1);
            Ok(forward(page, start, false))
        }
        Direction::Before(epoch, before) => {
            let page = store.read_before(channel, *before, limit).await?;
            let same_epoch = **epoch == *page.epoch;
            let trimmed = *before > 1 && before - 1 < page.first && before - 1 <= page.last;
            let recovered = same_epoch && *before <= page.last + 1 && !trimmed;
            if same_epoch {
                let end = (*before).min(page.last + 1);
                return Ok(backward(page, end, recovered));
            }
            let page = store.read_before(channel, u64::MAX, limit).await?;
            let end = page.last + 1;
            Ok(backward(page, end, false))
        }
        Direction::Newest => {
            let page = store.read_before(channel, u64::MAX, limit).await?;
            let end = page.last + 1;
            Ok(backward(page, end, true))
        }
    }
}

/// A page read forwards from `after`.
fn forward(page: Page, after: u64, recovered: bool) -> Answer {
    let newest = page.entries.last().map_or(after, |d| d.offset);
    Answer {
        position: format!("{}-{newest}", page.epoch),
        more: newest < page.last,
        recovered,
        entries: page.entries,
    }
}

/// A page read backwards from `end` (exclusive).
fn backward(page: Page, end: u64, recovered: bool) -> Answer {
    let oldest = page.entries.first().map_or(end, |d| d.offset);
    let oldest = if page.last == 0 { 0 } else { oldest };
    Answer {
        position: format!("{}-{oldest}", page.epoch),
        more: oldest > page.first,
        recovered,
        entries: page.entries,
    }
}

/// `GET /channels/{channel}/notifications`.
pub async fn notifications(
    State(shared): State<Arc<SessionContext>>,
    Path(channel): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let metrics = &shared.metrics;
    match serve(&shared, &channel, uri.query(), &headers).await {
        Ok(answer) => {
            metrics.history_read("ok", answer.entries.len());
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                answer.to_json(),
            )
                .into_response()
        }
        Err(refusal) => {
            metrics.history_read(refusal.label(), 0);
            refusal.into_response()
        }
    }
}

async fn serve(
    shared: &SessionContext,
    channel: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Answer, Refusal> {
    let metrics = &shared.metrics;
    crate::channel::check(channel).map_err(Refusal::bad_request)?;
    let history = HistoryQuery::parse(query).map_err(Refusal::bad_request)?;
    let principal = refusal::authenticate(&shared.auth, metrics, "history", query, headers).await?;
    refusal::authorize(&principal, metrics, "history", channel)?;
    read(shared.store.as_ref(), channel, &history)
        .await
        .map_err(|e| {
            tracing::warn!(channel, error = %e, "history read failed");
            Refusal::unavailable("the log is unavailable; retry")
        })
}

#[cfg(test)]
mod tests;
