//! The Redis store over TLS (`rediss://`): a redis-server of the test's own
//! that speaks TLS only, with a certificate signed by a CA the test
//! generates. herald trusts that CA through `store.tls_ca_file`; a herald
//! without it refuses the certificate, says so, and stays up, not ready.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::process::Process;
use common::redis_server::{self, RedisServer};
use common::tls::Ca;
use common::{Herald, unique};
use herald::config::StoreKind;
use serde_json::{Value, json};

/// With the CA: ready, and an event posted over HTTP reaches a WebSocket
/// client through the TLS Redis. Without it: 503 naming the store, a log
/// line naming the certificate problem, and `/healthz` still answering.
/// Mutation: dropping `tls_ca_file` from the client fails the first part;
/// `Client::open` for `rediss://` without the TLS feature fails at start.
#[tokio::test]
async fn rediss_with_a_private_ca_carries_events_and_refuses_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("herald redis test CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = ca.leaf("redis").install(dir.path());
    let redis = RedisServer::start_tls(&cert, &key, &ca_file);
    let url = redis.tls_url();

    let prefix = redis_server::prefix();
    let h = {
        let (url, prefix, ca_file) = (url.clone(), prefix.clone(), ca_file.clone());
        Herald::start_with(move |c| {
            c.store.kind = StoreKind::Redis;
            c.store.url = Some(url);
            c.store.key_prefix = Some(prefix);
            c.store.tls_ca_file = Some(ca_file);
        })
        .await
    };
    let body = h.wait_ready(200, Duration::from_secs(20)).await.unwrap();
    assert!(body.contains("\"ready\":true"), "{body}");
    let channel = unique("user");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    h.publish("t", &json!({"channel": channel, "title": "over tls"}))
        .await;
    let got = client.notifications(1).await;
    assert_eq!(got[0]["title"], "over tls", "{got:?}");
    assert_eq!(got[0]["channel"], channel.as_str(), "{got:?}");

    // The same Redis, no CA file: the system roots do not know the test CA.
    let other = Process::start(&format!(
        "[store]\nkind = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n"
    ));
    let http = reqwest::Client::new();
    let readyz = http
        .get(format!("{}/readyz", other.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status().as_u16(), 503);
    let readyz: Value = readyz.json().await.unwrap();
    assert_eq!(readyz["store"]["ready"], false, "{readyz}");
    let detail = readyz["store"]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("127.0.0.1:{}", redis.port)),
        "{readyz}"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    while !other.log().to_lowercase().contains("certificate") {
        assert!(
            Instant::now() < deadline,
            "no certificate error logged:\n{}",
            other.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthz = http
        .get(format!("{}/healthz", other.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status().as_u16(), 200, "still up");
    assert!(
        other.wait_ready(503, Duration::from_secs(5)).await,
        "still not ready"
    );
    h.stop().await;
}
