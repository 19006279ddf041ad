//! The writer task: everything queued (see [`crate::store::group`]) goes
//! to Redis as one call of the append script; the appends are answered
//! after Redis replied, and a failed call fails what is queued behind it.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::reply::parse_appended;
use super::{APPEND, MAX_GROUP, NOTIFY_MAX_LEN, Settings};
use crate::store::group::{self, Item, Request};
use crate::store::{Appended, StoreError, new_epoch};

/// The writer task: one script call per group of queued appends.
pub(super) async fn write(
    mut rx: group::Receiver,
    mut conn: ConnectionManager,
    settings: Arc<Settings>,
) {
    let script = Script::new(APPEND);
    while let Some(items) = rx.next_group(MAX_GROUP).await {
        let mut appends = Vec::new();
        let mut close = None;
        for item in items {
            match item {
                Item::Append(r) => appends.push(r),
                // Retention by age runs outside the queue for Redis.
                Item::Trim { reply, .. } => {
                    let _ = reply.send(Ok(0));
                }
                Item::Close(done) => close = Some(done),
            }
        }
        if !appends.is_empty() && !commit(&script, &mut conn, &settings, appends).await {
            let error = StoreError::Unavailable("redis: an earlier append failed".into());
            for item in rx.fail_queued_appends(&error) {
                match item {
                    Item::Trim { reply, .. } => {
                        let _ = reply.send(Ok(0));
                    }
                    Item::Close(done) => close = Some(done),
                    Item::Append(_) => {}
                }
            }
        }
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
}

pub(super) async fn commit(
    script: &Script,
    conn: &mut ConnectionManager,
    settings: &Settings,
    appends: Vec<Request>,
) -> bool {
    let keys = &settings.keys;
    let mut invocation = script.prepare_invoke();
    invocation
        .key(keys.notify())
        .key(keys.heads())
        .key(keys.fresh())
        .arg(appends.first().map_or(0, |r| r.at_ms))
        .arg(settings.max_per_channel)
        .arg(settings.dedupe_window)
        .arg(NOTIFY_MAX_LEN)
        .arg(new_epoch());
    let mut count = 0;
    for request in &appends {
        for n in &request.batch {
            invocation
                .key(keys.meta(&n.channel))
                .key(keys.log(&n.channel))
                .key(keys.dedupe(&n.channel))
                .arg(&n.channel)
                .arg(&n.dedupe_key)
                .arg(&n.fields)
                .arg(n.provenance.as_deref().unwrap_or_default());
            count += 1;
        }
    }
    let reply: Result<Value, _> = invocation.invoke_async(conn).await;
    let results = reply
        .map_err(|e| e.to_string())
        .and_then(|v| parse_appended(v, count));
    match results {
        Ok(results) => {
            let new = results.iter().filter(|(_, dup)| !dup).count();
            settings.metrics.store_committed(new);
            let mut results = results.into_iter();
            for request in appends {
                let answer = request
                    .batch
                    .iter()
                    .zip(results.by_ref())
                    .map(|(n, (offset, duplicate))| Appended {
                        channel: n.channel.as_str().into(),
                        offset,
                        duplicate,
                    })
                    .collect();
                let _ = request.reply.send(Ok(answer));
            }
            true
        }
        Err(e) => {
            settings.metrics.store_error("append");
            let channel = appends
                .first()
                .and_then(|r| r.batch.first())
                .map(|n| n.channel.clone())
                .unwrap_or_default();
            tracing::warn!(
                appends = appends.len(),
                notifications = count,
                channel,
                error = %e,
                "redis store append failed; appends not acknowledged"
            );
            let error = StoreError::Unavailable(format!("redis: {e}"));
            for request in appends {
                request.fail(&error);
            }
            false
        }
    }
}
