//! The RabbitMQ source when something around it fails, against the test
//! broker (`AMQP_URL`): a dead-letter publish the broker refuses, a
//! dead-letter exchange that routes nowhere, a store that stalls (nothing
//! acknowledged ahead of it), wrong credentials and an unreachable broker
//! fixed while herald runs. Queues, exchanges and users are the test's own
//! and deleted afterwards, also when it fails; `rabbitmqctl` manages the
//! users (`RABBITMQCTL` overrides it).
#![allow(clippy::unwrap_used)]

mod common;

use common::amqp::{Broker, Relay, User, amqp_url, source};
use common::process::Process;
use common::redis_server::{self, RedisServer};
use common::{Client, Herald, WAIT, unique};
use herald::config::StoreKind;
use herald::source::SourceConfig;
use herald::source::amqp::AmqpSourceConfig;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{Value, json};

/// Event `seq` of `channel` for the built-in rule.
fn event(channel: &str, seq: u64) -> Value {
    json!({"channel": channel, "title": format!("n{seq}")})
}

/// herald in this process consuming `amqp` (built-in rule), once ready,
/// and a client subscribed to a fresh channel.
async fn start(amqp: AmqpSourceConfig) -> (Herald, String, Client) {
    let h = Herald::start_with(|c| c.sources = vec![SourceConfig::Amqp(amqp)]).await;
    h.wait_ready(200, WAIT).await.unwrap();
    let channel = unique("c");
    let (client, _) = h.subscribe(&format!("channel={channel}")).await;
    (h, channel, client)
}

/// The text of header `name` of a message taken from a queue.
fn header(m: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    let headers = m.delivery.properties.headers().clone()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Publish `poison` (routing key `orders.bad`), then event 1 of
/// `channel`, which `client` must receive: the poison did not block the
/// queue.
async fn poison_then_event(
    broker: &Broker,
    exchange: &str,
    poison: &[u8],
    channel: &str,
    client: &mut Client,
) {
    let props = BasicProperties::default();
    assert!(broker.publish(exchange, "orders.bad", poison, props).await);
    broker
        .publish_json(exchange, "orders.good", &event(channel, 1))
        .await;
    assert_eq!(client.next_of_type("notification").await["title"], "n1");
}

/// When the broker refuses herald's dead-letter copy (a nack), the poison
/// message is rejected without requeue, so the broker dead-letters it
/// itself through the queue's `x-dead-letter-exchange`, without herald's
/// reason headers. Both land in the dead-letter exchange's only queue,
/// which refuses every publish (`x-max-length` 0, `reject-publish-dlx`)
/// and passes each message it refuses on to a queue that keeps it: there
/// are then exactly two, herald's refused copy and the original. Fails if
/// herald requeues the original (it loops) or acknowledges it (it is
/// lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dead_letter_copy_is_rejected_to_the_brokers_dead_lettering() {
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let exchange = broker.exchange_name("x");
    let dlx = broker.exchange_name("dlx");
    let refused = broker.exchange_name("refused");
    let refuses = broker.queue_name("refuses");
    let keeps = broker.queue_name("keeps");
    broker.declare_exchange(&dlx, ExchangeKind::Fanout).await;
    broker
        .declare_exchange(&refused, ExchangeKind::Fanout)
        .await;
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish-dlx".into()),
    );
    full.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(refused.as_str().into()),
    );
    broker.try_declare(&refuses, full).await.unwrap();
    broker.bind(&refuses, &dlx, "", FieldTable::default()).await;
    broker.declare_bound_queue(&keeps, &refused, "").await;

    let mut amqp = source(&queue, &[(&exchange, "#")]);
    amqp.dead_letter_exchange = Some(dlx.clone());
    let (h, channel, mut client) = start(amqp).await;
    poison_then_event(&broker, &exchange, b"{not json", &channel, &mut client).await;
    let rejected = r#"herald_amqp_poison_total{source="amqp",outcome="rejected"}"#;
    assert_eq!(h.wait_metric(rejected, 1.0).await, 1.0);
    let settled = r#"herald_amqp_settled_total{source="amqp"}"#;
    assert_eq!(h.wait_metric(settled, 2.0).await, 2.0);

    let dead = broker.take(&keeps, 2).await;
    let reasons: Vec<Option<String>> = dead.iter().map(|m| header(m, "x-herald-reason")).collect();
    assert_eq!(
        reasons,
        [Some("invalid_json".to_string()), None],
        "herald's refused copy, then the broker's own dead letter"
    );
    for m in &dead {
        assert_eq!(m.delivery.data, b"{not json");
        assert_eq!(m.delivery.routing_key.as_str(), "orders.bad");
    }
    h.stop().await;
    assert_eq!(broker.ready(&queue).await, 0, "not requeued");
    assert_eq!(broker.ready(&keeps).await, 0, "dead-lettered once");
}

/// A dead-letter exchange that routes the copy to no queue (herald
/// declares a missing one, unbound): the outcome is `unroutable`, herald
/// warns, and the original is acknowledged all the same. Fails if the
/// broker's return is ignored (counted as dead-lettered, no warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_exchange_routing_nowhere_is_counted_and_warned_about() {
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let exchange = broker.exchange_name("x");
    let dlx = broker.exchange_name("dlx-unbound");
    let mut herald = Process::start(&format!(
        r##"[[sources]]
kind = "amqp"
url = "{}"
queue = "{queue}"
dead_letter_exchange = "{dlx}"
bindings = [{{ exchange = "{exchange}", routing_key = "#" }}]
"##,
        amqp_url()
    ));
    assert!(herald.wait_ready(200, WAIT).await, "{}", herald.log());
    let channel = unique("c");
    let mut client = Client::connect(&herald.ws_url(&format!("channel={channel}"))).await;
    client.next_of_type("subscribed").await;
    poison_then_event(&broker, &exchange, b"[1, 2]", &channel, &mut client).await;
    let unroutable = r#"herald_amqp_poison_total{source="amqp",outcome="unroutable"}"#;
    assert_eq!(herald.wait_metric(unroutable, 1.0).await, 1.0);
    let dead_lettered = r#"herald_amqp_poison_total{source="amqp",outcome="dead_lettered"}"#;
    assert_eq!(herald.metric(dead_lettered).await, 0.0);
    let settled = r#"herald_amqp_settled_total{source="amqp"}"#;
    assert_eq!(herald.wait_metric(settled, 2.0).await, 2.0);
    herald.stop();
    let log = herald.log();
    assert!(
        log.contains("dead-letter exchange routed the message to no queue"),
        "{log}"
    );
    assert_eq!(broker.ready(&queue).await, 0, "acknowledged");
}

/// While the store does not answer (its Redis frozen), herald takes every
/// delivery up to its prefetch and acknowledges none of them: nothing is
/// acknowledged ahead of its append. Once the store answers, every
/// delivery is acknowledged with a few `basic.ack`s with `multiple` (one
/// per group of appends the store commits), not one per delivery. Redis is
/// frozen for the few steps in between (milliseconds; herald gives Redis
/// 5 s). Fails if herald acknowledges a delivery before its append ("ack
/// on receipt"), or without `multiple`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_wait_for_the_appends_and_cover_many_deliveries() {
    const N: u64 = 50;
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let exchange = broker.exchange_name("x");
    let redis = RedisServer::start(false);
    let prefix = redis_server::prefix();
    let amqp = source(&queue, &[(&exchange, "#")]);
    let h = Herald::start_with(|c| {
        c.store.kind = StoreKind::Redis;
        c.store.url = Some(redis.url());
        c.store.key_prefix = Some(prefix.clone());
        c.sources = vec![SourceConfig::Amqp(amqp)];
    })
    .await;
    h.wait_ready(200, WAIT).await.unwrap();
    let channel = unique("c");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    broker
        .publish_json(&exchange, "orders.0", &event(&channel, 0))
        .await;
    assert_eq!(client.next_of_type("notification").await["title"], "n0");
    let settled = r#"herald_amqp_settled_total{source="amqp"}"#;
    let frames = r#"herald_amqp_ack_frames_total{source="amqp"}"#;
    let taken = r#"herald_events_total{source="amqp"}"#;
    assert_eq!(h.wait_metric(settled, 1.0).await, 1.0);
    assert_eq!(h.metric(frames).await, 1.0);

    redis.freeze();
    for seq in 1..=N {
        broker
            .publish_json(&exchange, "orders.n", &event(&channel, seq))
            .await;
    }
    let all_taken = h.wait_metric(taken, (N + 1) as f64).await;
    let (settled_frozen, frames_frozen) = (h.metric(settled).await, h.metric(frames).await);
    redis.thaw();
    assert_eq!(all_taken, (N + 1) as f64, "herald took every delivery");
    assert_eq!(
        (settled_frozen, frames_frozen),
        (1.0, 1.0),
        "nothing acknowledged while the appends were pending"
    );

    let titles: Vec<String> = client
        .notifications(N as usize)
        .await
        .iter()
        .map(|f| f["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles, (1..=N).map(|s| format!("n{s}")).collect::<Vec<_>>());
    assert_eq!(h.wait_metric(settled, (N + 1) as f64).await, (N + 1) as f64);
    let after = h.metric(frames).await - 1.0;
    assert!(
        after >= 1.0 && after <= (N / 5) as f64,
        "{N} deliveries acknowledged with {after} basic.ack frames"
    );
    h.stop().await;
    assert_eq!(broker.ready(&queue).await, 0);
}

/// Wrong credentials, then an unreachable broker: `/readyz` answers 503
/// with the reason and `herald_amqp_connected` is 0 meanwhile; each time
/// the problem is fixed (the password changed to the one herald has, the
/// broker reachable again) herald connects by itself, turns ready, and
/// consumes. The test's own user (rabbitmqctl), a relay that can refuse
/// connections, back-off capped at 500 ms. Fails if herald gives up
/// retrying, or reports ready while disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_again_once_credentials_and_broker_are_fixed() {
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let exchange = broker.exchange_name("x");
    let user = User::create("first-password");
    let relay = Relay::start().await;
    let mut amqp = source(&queue, &[(&exchange, "#")]);
    amqp.url = user.url(&relay.url(), "second-password");
    amqp.reconnect_max_ms = 500;
    let h = Herald::start_with(|c| c.sources = vec![SourceConfig::Amqp(amqp)]).await;
    let connected = r#"herald_amqp_connected{source="amqp"}"#;
    let failures = r#"herald_amqp_connection_failures_total{source="amqp"}"#;

    let not_ready = |why: &'static str| {
        let h = &h;
        async move {
            h.wait_metric(failures, 1.0).await;
            let body = h.wait_ready(503, WAIT).await.unwrap();
            let state: Value = serde_json::from_str(&body).unwrap();
            let detail = state["sources"]["amqp"]["detail"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(detail.starts_with("disconnected"), "{why}: {body}");
            assert!(!detail.contains("second-password"), "{body}");
            assert_eq!(h.metric(connected).await, 0.0, "{why}");
            detail
        }
    };
    let consumes = |seq: u64| {
        let (h, broker, exchange) = (&h, &broker, &exchange);
        async move {
            h.wait_ready(200, WAIT).await.unwrap();
            assert_eq!(h.metric(connected).await, 1.0);
            let channel = unique("c");
            let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
            broker
                .publish_json(exchange, "orders.n", &event(&channel, seq))
                .await;
            assert_eq!(
                client.next_of_type("notification").await["title"],
                format!("n{seq}")
            );
        }
    };

    let refused = not_ready("wrong password").await;
    assert!(
        refused.contains("ACCESS_REFUSED") || refused.to_lowercase().contains("auth"),
        "{refused}"
    );
    user.change_password("second-password");
    consumes(1).await;

    let failed_before = h.metric(failures).await;
    relay.set_down(true).await;
    h.wait_metric(failures, failed_before + 1.0).await;
    not_ready("broker unreachable").await;
    relay.set_down(false).await;
    consumes(2).await;
    h.stop().await;
}
