//! RabbitMQ helpers: the broker at `AMQP_URL` (`scripts/test.sh` starts a
//! local one when none answers) and cleanup of what a test declared.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};

/// The broker tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A `[[sources]]` table for herald: consume `queue` at `url`, bound to
/// `exchange` with `routing_key`, `prefetch` deliveries in flight.
pub fn source_toml(
    url: &str,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    prefetch: u16,
) -> String {
    format!(
        r#"[[sources]]
kind = "amqp"
url = "{url}"
queue = "{queue}"
prefetch = {prefetch}
bindings = [{{ exchange = "{exchange}", routing_key = "{routing_key}" }}]
"#
    )
}

/// Queues and exchanges a test created; deleted on drop, even on panic.
#[derive(Default)]
pub struct Created {
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
}

impl Drop for Created {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        if queues.is_empty() && exchanges.is_empty() {
            return;
        }
        // A runtime of its own: this may run while a test's runtime unwinds.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(conn) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                else {
                    return;
                };
                for q in queues {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                for e in exchanges {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "cleanup".into()).await;
            });
        })
        .join();
    }
}
