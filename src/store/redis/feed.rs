//! The live feed: every node follows the `notify` stream and publishes
//! what it reads to its own hub, in stream (commit) order; and the check,
//! once per process, that Redis keeps what herald acknowledged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};
use tokio_util::sync::CancellationToken;

use super::reply::{live_entry, stream_entries, stream_id};
use super::{FEED_BLOCK_MS, FEED_COUNT, Settings};
use crate::store::Publish;

/// The live feed: follow the `notify` stream and publish to the local hub,
/// reconnecting until stopped.
pub(super) async fn feed(
    client: Client,
    settings: Arc<Settings>,
    hub: Arc<dyn Publish>,
    stop: CancellationToken,
) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_millis(FEED_BLOCK_MS + 5000)));
    let mut cursor: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            c = client.get_multiplexed_async_connection_with_config(&config) => c,
        };
        let error = match connected {
            Ok(mut conn) => {
                if failing {
                    tracing::info!("redis live feed reconnected");
                    failing = false;
                }
                backoff = Duration::from_millis(100);
                match follow(&mut conn, &settings, &*hub, &mut cursor, &stop).await {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        settings.metrics.store_error("feed");
        settings.set_problem(Some(format!("redis at {}: {error}", settings.addr)));
        if !failing {
            tracing::warn!(
                redis = %settings.addr,
                error = %error,
                cursor = cursor.as_deref().unwrap_or("none"),
                "redis live feed lost; reconnecting"
            );
            failing = true;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Read the feed from `cursor` on until stopped (`Ok`) or the connection
/// fails.
pub(super) async fn follow(
    conn: &mut MultiplexedConnection,
    settings: &Settings,
    hub: &dyn Publish,
    cursor: &mut Option<String>,
    stop: &CancellationToken,
) -> redis::RedisResult<()> {
    let notify = settings.keys.notify();
    let newest: Value = redis::cmd("XREVRANGE")
        .arg(&notify)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let newest = stream_entries(&newest).first().map(|e| e.id.clone());
    *cursor = match (cursor.take(), newest) {
        // First start: only what is appended from now on (no session could
        // subscribe before: reads fail until `feeding`).
        (None, newest) => Some(newest.unwrap_or_else(|| "0-0".into())),
        // The stream is gone or older than our position: Redis lost data
        // and started a new stream; read all of it.
        (Some(_), None) => Some("0-0".into()),
        (Some(at), Some(newest)) if stream_id(&newest) < stream_id(&at) => {
            tracing::warn!(cursor = %at, newest = %newest, "redis live feed restarted from scratch (Redis lost data)");
            Some("0-0".into())
        }
        (Some(at), Some(_)) => Some(at),
    };
    if !settings.persistence_checked.load(Ordering::Acquire)
        && check_persistence(conn, &settings.addr).await
    {
        settings.persistence_checked.store(true, Ordering::Release);
    }
    // The fresh epoch exists before any read (reads write nothing), so a
    // position read from a missing channel can resume into its creation.
    redis::cmd("SET")
        .arg(settings.keys.fresh())
        .arg(crate::store::new_epoch())
        .arg("NX")
        .query_async::<()>(conn)
        .await?;
    settings.feeding.store(true, Ordering::Release);
    settings.set_problem(None);
    let mut channel_names: std::collections::HashMap<String, Arc<str>> =
        std::collections::HashMap::new();
    loop {
        let from = cursor.clone().unwrap_or_else(|| "0-0".into());
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(FEED_COUNT)
            .arg("BLOCK")
            .arg(FEED_BLOCK_MS)
            .arg("STREAMS")
            .arg(&notify)
            .arg(from);
        let read = xread.query_async::<Value>(conn);
        let reply = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = read => r?,
        };
        let Value::Array(streams) = reply else {
            continue; // nil: nothing new within the block time
        };
        for stream in streams {
            let Value::Array(pair) = stream else { continue };
            let Some(entries) = pair.get(1) else { continue };
            for entry in stream_entries(entries) {
                if channel_names.len() > 10_000 {
                    channel_names.clear();
                }
                match live_entry(&entry, &mut channel_names) {
                    Some(d) => hub.publish(&Arc::new(d)),
                    None => {
                        tracing::warn!(id = %entry.id, "redis live feed entry malformed; skipped")
                    }
                }
                *cursor = Some(entry.id);
            }
        }
    }
}

/// Warn once when Redis does not keep every acknowledged append (README,
/// "Redis settings herald needs": `appendonly yes`, `appendfsync
/// always`), naming the settings and what is at risk. herald still
/// starts: the operator may accept the risk. A Redis that refuses `CONFIG`
/// (managed services often rename it) cannot be checked; that is said at
/// info level and is not an error. Returns whether the check is done (not
/// cut short by a lost connection).
pub(super) async fn check_persistence(conn: &mut MultiplexedConnection, addr: &str) -> bool {
    let reply: redis::RedisResult<std::collections::HashMap<String, String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(conn)
        .await;
    let settings = match reply {
        Ok(settings) => settings,
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => return false,
        Err(e) => {
            tracing::info!(
                redis = addr,
                error = %e,
                "cannot read the redis persistence settings (CONFIG GET refused); \
                 no loss needs appendonly yes and appendfsync always"
            );
            return true;
        }
    };
    let get = |key: &str| settings.get(key).map_or("unknown", String::as_str);
    if let Some(risk) = persistence_risk(get("appendonly"), get("appendfsync")) {
        tracing::warn!(
            redis = addr,
            appendonly = get("appendonly"),
            appendfsync = get("appendfsync"),
            at_risk = risk,
            "redis may lose notifications herald acknowledged; set appendonly yes and \
             appendfsync always for no loss"
        );
    }
    true
}

/// What a Redis with these settings can lose of what herald acknowledged;
/// `None` when nothing.
pub(super) fn persistence_risk(appendonly: &str, appendfsync: &str) -> Option<&'static str> {
    if appendonly != "yes" {
        return Some(
            "a Redis restart loses history and dedupe keys written since its last \
             snapshot (all of them without snapshots): clients get recovered: false, \
             redelivered events append again",
        );
    }
    match appendfsync {
        "always" => None,
        "everysec" => Some(
            "a Redis crash or power loss can lose about the last second of \
             acknowledged notifications",
        ),
        _ => Some(
            "a Redis crash or power loss can lose the acknowledged notifications the \
             operating system had not yet written",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_appendonly_with_fsync_always_risks_nothing() {
        assert_eq!(persistence_risk("yes", "always"), None);
        assert!(persistence_risk("no", "always").is_some_and(|r| r.contains("restart")));
        assert!(persistence_risk("yes", "everysec").is_some_and(|r| r.contains("second")));
        assert!(persistence_risk("yes", "no").is_some());
        assert!(persistence_risk("unknown", "unknown").is_some());
    }
}
