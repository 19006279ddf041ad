//! Sessions with authentication on: real HS256 tokens, paused time for
//! the expiry (the tokens' `exp` is on the wall clock; the session turns
//! the time left into a runtime deadline, which paused time skips to).

use serde_json::{Value, json};

use super::*;
use crate::auth::{AuthConfig, AuthMode, Secret};

const SECRET: &str = "session-tests-secret-0123456789abcdef";

fn token(sub: &str, ttl_secs: u64, channels: &[&str]) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + ttl_secs;
    let claims = json!({ "sub": sub, "exp": exp, "channels": channels });
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

async fn auth_fixture(leeway_secs: u64) -> (Fixture, Arc<Auth>) {
    let config = AuthConfig {
        mode: AuthMode::Jwt,
        hmac_secret: Some(Secret::new(SECRET)),
        leeway_secs,
        channels: vec!["user:{sub}".into()],
        channels_claim: Some("channels".into()),
        ..AuthConfig::default()
    };
    let auth = Auth::start(&config, CancellationToken::new())
        .await
        .unwrap();
    let f = fixture(DeliveryConfig::default());
    let shared = Arc::new(SessionContext {
        hub: f.shared.hub.clone(),
        store: f.store.clone(),
        metrics: f.shared.metrics.clone(),
        config: DeliveryConfig::default(),
        auth: auth.clone(),
        shutdown: CancellationToken::new(),
    });
    (
        Fixture {
            shared,
            store: f.store,
        },
        auth,
    )
}

fn on(channel: &str) -> Vec<Subscription> {
    vec![Subscription {
        channel: channel.into(),
        last_id: None,
        rewind: None,
    }]
}

fn notify(channel: &str, key: &str) -> NewNotification {
    NewNotification {
        channel: channel.into(),
        dedupe_key: key.into(),
        fields: format!("\"title\":{key:?}"),
        provenance: None,
    }
}

/// The next JSON frame, or the close code; pings and pongs skipped. Gives
/// up after 10 minutes (of paused time, which pings would otherwise keep
/// advancing forever when a close never comes).
async fn next(client: &mut WebSocketStream<DuplexStream>) -> Result<Value, Option<u16>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let msg = tokio::time::timeout_at(deadline, client.next())
            .await
            .expect("a frame or a close within 10 minutes");
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code.into())),
            Some(Ok(_)) => {}
            _ => return Err(None),
        }
    }
}

async fn send(client: &mut WebSocketStream<DuplexStream>, frame: Value) {
    client
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_session_closes_with_4010_at_exp_plus_leeway() {
    let (f, auth) = auth_fixture(5).await;
    let principal = auth.authenticate(Some(&token("a", 10, &[]))).await.unwrap();
    let (server, mut client) = pair().await;
    let started = tokio::time::Instant::now();
    let session = tokio::spawn(run(server, f.shared.clone(), on("user:a"), principal));
    assert_eq!(next(&mut client).await.unwrap()["type"], "subscribed");
    assert_eq!(next(&mut client).await, Err(Some(4010)));
    assert_eq!(session.await.unwrap(), "token_expired");
    let elapsed = started.elapsed().as_secs_f64();
    // exp is a whole second: 10 s (less the part of a second already
    // gone) plus the 5 s leeway.
    assert!((14.0..=15.0).contains(&elapsed), "closed after {elapsed} s");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_moves_the_deadline_and_notifications_keep_flowing() {
    let (f, auth) = auth_fixture(0).await;
    let principal = auth.authenticate(Some(&token("a", 10, &[]))).await.unwrap();
    let (server, mut client) = pair().await;
    let started = tokio::time::Instant::now();
    let session = tokio::spawn(run(server, f.shared.clone(), on("user:a"), principal));
    assert_eq!(next(&mut client).await.unwrap()["type"], "subscribed");
    tokio::time::sleep(Duration::from_secs(5)).await;
    send(
        &mut client,
        json!({"type": "refresh", "token": token("a", 100, &[])}),
    )
    .await;
    let refreshed = next(&mut client).await.unwrap();
    assert_eq!(refreshed["type"], "refreshed");
    let expected = jsonwebtoken::get_current_timestamp() + 100;
    let at = refreshed["expires_at"].as_u64().unwrap();
    assert!(at + 1 >= expected && at <= expected, "{refreshed}");
    // Past the first token's exp: still open, still delivering.
    tokio::time::sleep(Duration::from_secs(20)).await;
    f.store.append(vec![notify("user:a", "n1")]).await.unwrap();
    let n = next(&mut client).await.unwrap();
    assert_eq!(
        (n["type"].as_str(), n["offset"].as_u64()),
        (Some("notification"), Some(1))
    );
    // Then the second token's exp closes it.
    assert_eq!(next(&mut client).await, Err(Some(4010)));
    assert_eq!(session.await.unwrap(), "token_expired");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        (103.0..=106.0).contains(&elapsed),
        "closed after {elapsed} s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_for_another_sub_or_a_bad_token_closes_with_4001() {
    let (f, auth) = auth_fixture(0).await;
    for bad in [token("b", 100, &[]), "not.a.token".to_string()] {
        let principal = auth
            .authenticate(Some(&token("a", 100, &[])))
            .await
            .unwrap();
        let (server, mut client) = pair().await;
        let session = tokio::spawn(run(server, f.shared.clone(), on("user:a"), principal));
        assert_eq!(next(&mut client).await.unwrap()["type"], "subscribed");
        send(&mut client, json!({"type": "refresh", "token": bad})).await;
        assert_eq!(next(&mut client).await, Err(Some(4001)));
        assert_eq!(session.await.unwrap(), "auth_failed");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_drops_a_channel_ends_that_subscription() {
    let (f, auth) = auth_fixture(0).await;
    let principal = auth
        .authenticate(Some(&token("a", 100, &["room:1"])))
        .await
        .unwrap();
    let (server, mut client) = pair().await;
    let requests = [on("user:a"), on("room:1")].concat();
    tokio::spawn(run(server, f.shared.clone(), requests, principal));
    for _ in 0..2 {
        assert_eq!(next(&mut client).await.unwrap()["type"], "subscribed");
    }
    send(
        &mut client,
        json!({"type": "refresh", "token": token("a", 100, &[])}),
    )
    .await;
    assert_eq!(next(&mut client).await.unwrap()["type"], "refreshed");
    let error = next(&mut client).await.unwrap();
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["channel"], "room:1");
    assert_eq!(f.shared.hub.subscribers("room:1"), 0);
    // room:1 is no longer delivered; user:a is.
    f.store
        .append(vec![notify("room:1", "r"), notify("user:a", "u")])
        .await
        .unwrap();
    let n = next(&mut client).await.unwrap();
    assert_eq!(n["channel"], "user:a");
    // And it cannot be subscribed to again.
    send(
        &mut client,
        json!({"type": "subscribe", "channel": "room:1"}),
    )
    .await;
    let again = next(&mut client).await.unwrap();
    assert_eq!(
        (again["code"].as_str(), again["channel"].as_str()),
        (Some("forbidden"), Some("room:1"))
    );
}

#[tokio::test]
async fn a_forbidden_subscribe_gets_an_error_and_the_session_stays_open() {
    let (f, auth) = auth_fixture(0).await;
    let principal = auth
        .authenticate(Some(&token("a", 100, &[])))
        .await
        .unwrap();
    let (server, mut client) = pair().await;
    tokio::spawn(run(server, f.shared.clone(), on("user:a"), principal));
    assert_eq!(next(&mut client).await.unwrap()["type"], "subscribed");
    send(
        &mut client,
        json!({"type": "subscribe", "channel": "user:b"}),
    )
    .await;
    let error = next(&mut client).await.unwrap();
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["channel"], "user:b");
    assert_eq!(f.shared.hub.subscribers("user:b"), 0);
    send(&mut client, json!({"type": "ping"})).await;
    assert_eq!(next(&mut client).await.unwrap()["type"], "pong");
}

#[tokio::test]
async fn refresh_without_authentication_is_a_bad_frame() {
    let f = fixture(DeliveryConfig::default());
    let (server, mut client) = pair().await;
    tokio::spawn(run(server, f.shared.clone(), on("c"), Principal::open()));
    assert_eq!(next(&mut client).await.unwrap()["type"], "subscribed");
    send(&mut client, json!({"type": "refresh", "token": "x.y.z"})).await;
    let error = next(&mut client).await.unwrap();
    assert_eq!(error["code"], "bad_frame");
    send(&mut client, json!({"type": "ping"})).await;
    assert_eq!(next(&mut client).await.unwrap()["type"], "pong");
}
