//! Authentication against a real herald on 127.0.0.1 with real WebSocket
//! clients and real tokens: jsonwebtoken-minted, for keys generated here
//! (HMAC, RSA 2048, P-256, Ed25519), checked at connect, on subscribe,
//! on refresh and at expiry; a JWKS server run by the test.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::auth::{
    JwksServer, KeyFiles, SECRET, connect_bearer, hs256, hs256_with, jwt, key, now, token_for,
};
use common::{Client, Herald, Next, offsets, unique};
use herald::auth::mint::KeyKind;
use herald::auth::{AuthConfig, AuthMode};
use serde_json::{Value, json};

fn event(channel: &str, n: usize) -> Value {
    json!({ "type": "t", "channel": channel, "title": format!("n{n}") })
}

/// The close code of a session that must be refused right after the
/// upgrade.
async fn refused(h: &Herald, query: &str) -> (Option<u16>, String) {
    let mut client = h.connect(query).await;
    match client.next().await {
        Next::Closed(code, reason) => (code, reason),
        Next::Frame(f) => panic!("expected a refusal, got {f}"),
    }
}

#[tokio::test]
async fn a_token_of_each_key_family_connects_to_its_own_channel() {
    let files = KeyFiles::new();
    let (rsa, p256, ed) = (
        key(KeyKind::Rsa2048),
        key(KeyKind::P256),
        key(KeyKind::Ed25519),
    );
    let paths = vec![
        files.public("rs.pem", &rsa),
        files.public("ec.pem", &p256),
        files.public("ed.pem", &ed),
    ];
    let h = Herald::start_with(move |c| {
        jwt(c);
        c.auth.public_key_files = paths;
    })
    .await;
    let claims = |sub: &str| json!({ "sub": sub, "exp": now() + 300 });
    let tokens = [
        ("hs", hs256(&claims("hs"))),
        ("rs", rsa.sign(&claims("rs"), None, None).unwrap()),
        (
            "ps",
            rsa.sign(&claims("ps"), Some(jsonwebtoken::Algorithm::PS256), None)
                .unwrap(),
        ),
        ("es", p256.sign(&claims("es"), None, None).unwrap()),
        ("ed", ed.sign(&claims("ed"), None, None).unwrap()),
    ];
    for (sub, token) in &tokens {
        // With no channel named: user:{sub}, then the default broadcast.
        let (mut client, first) = h.subscribe(&format!("token={token}")).await;
        assert_eq!(first["channel"], format!("user:{sub}"));
        assert_eq!(
            client.next_of_type("subscribed").await["channel"],
            "broadcast"
        );
        h.publish("t", &event(&format!("user:{sub}"), 0)).await;
        let n = client.next_of_type("notification").await;
        assert_eq!(n["channel"], format!("user:{sub}"));
    }
    // The header works as well as the query.
    let mut client = connect_bearer(&h.ws_url("channel=user:hs"), &tokens[0].1).await;
    assert_eq!(
        client.next_of_type("subscribed").await["channel"],
        "user:hs"
    );
    h.stop().await;
}

#[tokio::test]
async fn bad_tokens_close_with_4001_and_expired_ones_with_4010() {
    let files = KeyFiles::new();
    let rsa = key(KeyKind::Rsa2048);
    let rsa_path = files.public("rs.pem", &rsa);
    let h = Herald::start_with(move |c| {
        jwt(c);
        c.auth.public_key_files = vec![rsa_path];
        c.auth.issuer = Some("https://idp.test".into());
        c.auth.audience = Some("herald".into());
    })
    .await;
    let good =
        json!({ "sub": "a", "exp": now() + 300, "iss": "https://idp.test", "aud": "herald" });
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    let cases = [
        ("no token", String::new()),
        ("garbage", "not.a.jwt".to_string()),
        ("alg none", unsigned),
        (
            "HS256 signed with the RSA public key PEM",
            hs256_with(rsa.public_pem().as_bytes(), &good),
        ),
        (
            "another secret",
            hs256_with(b"not-the-configured-secret-0123456789", &good),
        ),
        ("wrong iss", hs256(&with("iss", json!("https://evil.test")))),
        ("wrong aud", hs256(&with("aud", json!("other")))),
        ("nbf ahead", hs256(&with("nbf", json!(now() + 3600)))),
        (
            "no sub",
            hs256(&json!({ "exp": now() + 300, "iss": "https://idp.test", "aud": "herald" })),
        ),
    ];
    for (what, token) in &cases {
        let query = if token.is_empty() {
            String::new()
        } else {
            format!("token={token}")
        };
        let (code, reason) = refused(&h, &query).await;
        assert_eq!(code, Some(4001), "{what}: {reason}");
    }
    // The valid token passes (the cases above fail for their own reason).
    h.subscribe(&format!("token={}", hs256(&good))).await;
    let (code, reason) = refused(
        &h,
        &format!("token={}", hs256(&with("exp", json!(now() - 120)))),
    )
    .await;
    assert_eq!(code, Some(4010), "{reason}");
    let metrics = h.get("/metrics").await.1;
    assert!(
        metrics.contains("herald_auth_rejections_total{surface=\"connect\",reason=\"invalid\"}"),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_user_reads_its_own_channel_only() {
    let h = Herald::start_with(jwt).await;
    let alice = token_for("alice", 300, json!({}));
    // Asking for someone else's channel at connect: 4003.
    let (code, reason) = refused(&h, &format!("token={alice}&channel=user:bob")).await;
    assert_eq!(code, Some(4003), "{reason}");
    assert!(reason.contains("user:bob"), "{reason}");
    let (mut client, subscribed) = h
        .subscribe(&format!("token={alice}&channel=user:alice"))
        .await;
    assert_eq!(subscribed["channel"], "user:alice");
    // By frame: a forbidden error, and the session stays open.
    client
        .send_json(&json!({"type": "subscribe", "channel": "user:bob"}))
        .await;
    let error = client.next_of_type("error").await;
    assert_eq!(
        (error["code"].as_str(), error["channel"].as_str()),
        (Some("forbidden"), Some("user:bob"))
    );
    h.publish("t", &event("user:bob", 1)).await;
    h.publish("t", &event("user:alice", 2)).await;
    let n = client.next_of_type("notification").await;
    assert_eq!(
        (n["channel"].as_str(), n["title"].as_str()),
        (Some("user:alice"), Some("n2"))
    );
    client.assert_quiet(Duration::from_millis(300)).await;
    h.stop().await;
}

#[tokio::test]
async fn list_claims_the_channels_claim_and_anonymous_channels() {
    let h = Herald::start_with(|c| {
        jwt(c);
        c.auth.channels = vec!["user:{sub}".into(), "team:{teams}".into()];
        c.auth.channels_claim = Some("channels".into());
        c.auth.anonymous_channels = vec!["public:*".into()];
    })
    .await;
    let token = token_for(
        "u1",
        300,
        json!({ "teams": ["red", 7], "channels": ["room:9:*"] }),
    );
    for ok in ["team:red", "team:7", "room:9:lobby", "user:u1"] {
        h.subscribe(&format!("token={token}&channel={ok}")).await;
    }
    for no in ["team:blue", "room:8:lobby", "public:news"] {
        assert_eq!(
            refused(&h, &format!("token={token}&channel={no}")).await.0,
            Some(4003),
            "{no}"
        );
    }
    // Without a token: the anonymous channels only; no default channel is
    // granted, so an anonymous session with no channel joins none.
    let (_, subscribed) = h.subscribe("channel=public:news").await;
    assert_eq!(subscribed["channel"], "public:news");
    assert_eq!(refused(&h, "channel=user:u1").await.0, Some(4003));
    let mut client = h.connect("").await;
    client.assert_quiet(Duration::from_millis(300)).await;
    client
        .send_json(&json!({"type": "subscribe", "channel": "team:red"}))
        .await;
    assert_eq!(client.next_of_type("error").await["code"], "forbidden");
    h.stop().await;
}

#[tokio::test]
async fn defaults_false_joins_nothing_until_subscribed() {
    let h = Herald::start_with(jwt).await;
    let token = token_for("d", 300, json!({}));
    let mut client = h.connect(&format!("token={token}&defaults=false")).await;
    client.assert_quiet(Duration::from_millis(300)).await;
    client
        .send_json(&json!({"type": "subscribe", "channel": "user:d"}))
        .await;
    assert_eq!(client.next_of_type("subscribed").await["channel"], "user:d");
    h.stop().await;
}

#[tokio::test]
async fn a_token_expiring_mid_session_closes_it_with_4010() {
    let h = Herald::start_with(|c| {
        jwt(c);
        c.auth.leeway_secs = 0;
    })
    .await;
    let exp = now() + 2;
    let token = common::auth::hs256(&json!({ "sub": "x", "exp": exp }));
    let (mut client, _) = h.subscribe(&format!("token={token}&channel=user:x")).await;
    let code = client.close_code().await;
    assert_eq!(code, Some(4010));
    // Not before exp (whole seconds: the close comes at or after it).
    assert!(now() >= exp, "closed before exp");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_before_exp_keeps_the_session_with_no_gap() {
    let h = Herald::start_with(|c| {
        jwt(c);
        c.auth.leeway_secs = 0;
    })
    .await;
    let channel = "user:r";
    let first_exp = now() + 3;
    let token = hs256(&json!({ "sub": "r", "exp": first_exp }));
    let (mut client, _) = h
        .subscribe(&format!("token={token}&channel={channel}"))
        .await;
    // A producer posting all along, across the first token's exp.
    let base = h.base.clone();
    let producer = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut n = 0;
        while now() <= first_exp + 1 {
            let res = http
                .post(format!("{base}/events/t"))
                .json(&event("user:r", n))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = hs256(&json!({ "sub": "r", "exp": now() + 300 }));
    client
        .send_json(&json!({"type": "refresh", "token": fresh}))
        .await;
    let mut frames = Vec::new();
    let refreshed = loop {
        let f = client.frame().await;
        if f["type"] == "refreshed" {
            break f;
        }
        frames.push(f);
    };
    assert!(
        refreshed["expires_at"].as_u64().unwrap() >= now() + 290,
        "{refreshed}"
    );
    let posted = producer.await.unwrap();
    assert!(now() > first_exp, "the first token has expired by now");
    while frames.len() < posted {
        frames.push(client.next_of_type("notification").await);
    }
    // Every notification, in order, none twice: no gap across the refresh.
    let want: Vec<u64> = (1..=posted as u64).collect();
    assert_eq!(offsets(&frames), want);
    client.send_json(&json!({"type": "ping"})).await;
    assert_eq!(client.next_of_type("pong").await["type"], "pong");
    h.stop().await;
}

#[tokio::test]
async fn a_refresh_that_drops_a_channel_or_changes_sub() {
    let h = Herald::start_with(|c| {
        jwt(c);
        c.auth.channels_claim = Some("channels".into());
    })
    .await;
    let room = unique("room");
    let token = token_for("s", 300, json!({ "channels": [room] }));
    let mut client = h
        .connect(&format!("token={token}&channel=user:s&channel={room}"))
        .await;
    client.next_of_type("subscribed").await;
    client.next_of_type("subscribed").await;
    let narrower = token_for("s", 300, json!({}));
    client
        .send_json(&json!({"type": "refresh", "token": narrower}))
        .await;
    client.next_of_type("refreshed").await;
    let error = client.next_of_type("error").await;
    assert_eq!(
        (error["code"].as_str(), error["channel"].as_str()),
        (Some("forbidden"), Some(room.as_str()))
    );
    h.publish("t", &event(&room, 1)).await;
    h.publish("t", &event("user:s", 2)).await;
    assert_eq!(
        client.next_of_type("notification").await["channel"],
        "user:s"
    );
    // Another sub: 4001.
    let other = token_for("t", 300, json!({}));
    client
        .send_json(&json!({"type": "refresh", "token": other}))
        .await;
    assert_eq!(client.close_code().await, Some(4001));
    h.stop().await;
}

/// JWT authentication with `jwks` as the only keys.
fn jwks_auth(
    jwks: &JwksServer,
    cooldown_secs: u64,
    refresh_secs: u64,
) -> impl FnOnce(&mut herald::config::Config) {
    let url = jwks.url.clone();
    move |c| {
        c.auth = AuthConfig {
            mode: AuthMode::Jwt,
            jwks_url: Some(url),
            jwks_cooldown_secs: cooldown_secs,
            jwks_refresh_secs: refresh_secs,
            ..AuthConfig::default()
        };
    }
}

#[tokio::test]
async fn jwks_key_rotation_without_restart_and_an_outage() {
    let (k1, k2) = (key(KeyKind::P256), key(KeyKind::Ed25519));
    let jwks = JwksServer::start(vec![k1.jwk("k1").unwrap()]).await;
    let h = Herald::start_with(jwks_auth(&jwks, 0, 300)).await;
    let claims = json!({ "sub": "j", "exp": now() + 300 });
    let t1 = k1.sign(&claims, None, Some("k1")).unwrap();
    h.subscribe(&format!("token={t1}")).await;
    assert_eq!(jwks.hits(), 1);
    // The identity provider rotates to k2: the first token naming k2 makes
    // herald fetch the set again; no restart.
    jwks.replace(vec![k2.jwk("k2").unwrap()]);
    let t2 = k2.sign(&claims, None, Some("k2")).unwrap();
    h.subscribe(&format!("token={t2}")).await;
    assert_eq!(jwks.hits(), 2);
    // A token naming k2 but signed by another key: a bad signature.
    let impostor = key(KeyKind::Ed25519)
        .sign(&claims, None, Some("k2"))
        .unwrap();
    let (code, reason) = refused(&h, &format!("token={impostor}")).await;
    assert_eq!(code, Some(4001));
    assert!(reason.contains("bad signature"), "{reason}");
    // k1 left the set: its tokens are refused.
    assert_eq!(refused(&h, &format!("token={t1}")).await.0, Some(4001));
    // The provider goes down: k2 keeps working, an unknown kid is refused.
    jwks.stop().await;
    h.subscribe(&format!("token={t2}")).await;
    let k3 = key(KeyKind::P256);
    let t3 = k3.sign(&claims, None, Some("k3")).unwrap();
    let (code, reason) = refused(&h, &format!("token={t3}")).await;
    assert_eq!(code, Some(4001));
    assert!(reason.contains("unknown key id"), "{reason}");
    h.stop().await;
}

/// Mutation caught: `/readyz` ignoring authentication (200 while no token
/// can be checked because the only keys are a JWKS never fetched).
#[tokio::test]
async fn a_jwks_never_fetched_is_not_ready_until_it_is() {
    let k1 = key(KeyKind::P256);
    let jwks = JwksServer::start(vec![k1.jwk("k1").unwrap()]).await;
    jwks.set_failing(true);
    let h = Herald::start_with(jwks_auth(&jwks, 0, 3)).await;
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["auth"]["ready"], false, "{body}");
    let detail = body["auth"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("JWKS was never fetched"), "{body}");
    let t1 = k1
        .sign(&json!({ "sub": "j", "exp": now() + 300 }), None, Some("k1"))
        .unwrap();
    assert_eq!(refused(&h, &format!("token={t1}")).await.0, Some(4001));
    // The provider comes back: the background retry fetches the set and
    // herald turns ready without a restart.
    jwks.set_failing(false);
    h.wait_ready(200, Duration::from_secs(20))
        .await
        .expect("ready once the JWKS is fetched");
    h.subscribe(&format!("token={t1}")).await;
    h.stop().await;
}

#[tokio::test]
async fn unknown_kids_fetch_the_jwks_at_most_once_per_cooldown() {
    let k1 = key(KeyKind::P256);
    let jwks = JwksServer::start(vec![k1.jwk("k1").unwrap()]).await;
    let h = Herald::start_with(jwks_auth(&jwks, 3600, 300)).await;
    for i in 0..5 {
        let t = k1
            .sign(
                &json!({"sub": "a", "exp": now() + 60}),
                None,
                Some(&format!("made-up-{i}")),
            )
            .unwrap();
        assert_eq!(refused(&h, &format!("token={t}")).await.0, Some(4001));
    }
    assert_eq!(jwks.hits(), 1, "only the fetch at start");
    h.stop().await;
}

/// The default configuration's HTTP source.
fn http_source(c: &mut herald::config::Config) -> &mut herald::source::http::HttpSourceConfig {
    let herald::source::SourceConfig::Http(http) = &mut c.sources[0] else {
        panic!("the default HTTP source");
    };
    http
}

/// POST an event to `topic` with `key` (or none); the status.
async fn post_with_key(h: &Herald, topic: &str, key: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new()
        .post(format!("{}/events/{topic}", h.base))
        .json(&event("broadcast", 1));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn producers_need_a_key_limited_keys_their_topics() {
    let (open, limited) = (
        herald::auth::api_keys::new_key().unwrap(),
        herald::auth::api_keys::new_key().unwrap(),
    );
    let files = KeyFiles::new();
    let keyfile = files.file(
        "producers",
        &format!(
            "# the shop\n{} orders.*\n",
            herald::auth::api_keys::digest(&limited)
        ),
    );
    let digest = herald::auth::api_keys::digest(&open);
    let h = Herald::start_with(move |c| {
        jwt(c);
        let http = http_source(c);
        http.api_keys = vec![herald::auth::api_keys::ApiKeyEntry {
            digest,
            topics: vec![],
        }];
        http.api_keys_file = Some(keyfile);
    })
    .await;
    assert_eq!(post_with_key(&h, "orders.eu", None).await, 401);
    assert_eq!(
        post_with_key(&h, "orders.eu", Some("hrld_not-a-key")).await,
        403
    );
    assert_eq!(post_with_key(&h, "billing", Some(&limited)).await, 403);
    assert_eq!(post_with_key(&h, "orders.eu", Some(&limited)).await, 202);
    assert_eq!(post_with_key(&h, "billing", Some(&open)).await, 202);
    h.stop().await;
}

/// A key revoked or added in `api_keys_file` takes effect without a
/// restart; a broken file is rejected and the keys in use stay. Mutations
/// caught: keys read only at start; a reload that applies an unparsable
/// file (every producer refused, or the source left open).
#[tokio::test]
async fn the_api_key_file_reloads_on_change_and_a_broken_one_is_rejected() {
    let [first, second] = [(); 2].map(|()| herald::auth::api_keys::new_key().unwrap());
    let files = KeyFiles::new();
    let digest = herald::auth::api_keys::digest;
    let keyfile = files.file("producers", &format!("{}\n", digest(&first)));
    let path = keyfile.clone();
    let h = Herald::start_with(move |c| http_source(c).api_keys_file = Some(path)).await;
    // Replace the file the way config management does: write, then rename.
    let replace = |text: String| {
        let tmp = keyfile.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &keyfile).unwrap();
    };
    assert_eq!(post_with_key(&h, "orders", Some(&first)).await, 202);
    assert_eq!(post_with_key(&h, "orders", Some(&second)).await, 403);

    replace(format!("# rotated\n{}\n", digest(&second)));
    let ok = r#"herald_api_keys_reloads_total{result="ok"}"#;
    assert_eq!(
        h.wait_metric(ok, 1.0).await,
        1.0,
        "no reload after the change"
    );
    assert_eq!(post_with_key(&h, "orders", Some(&second)).await, 202);
    assert_eq!(
        post_with_key(&h, "orders", Some(&first)).await,
        403,
        "the revoked key still works"
    );

    replace("sha256:not-hex\n".into());
    let rejected = r#"herald_api_keys_reloads_total{result="rejected"}"#;
    assert_eq!(h.wait_metric(rejected, 1.0).await, 1.0, "not reported");
    assert_eq!(
        post_with_key(&h, "orders", Some(&second)).await,
        202,
        "the keys in use stay"
    );
    assert_eq!(post_with_key(&h, "orders", Some(&first)).await, 403);
    h.stop().await;
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token_and_move_to_the_admin_listener() {
    const ADMIN: &str = "admin-token-for-the-tests-42";
    let h = Herald::start_with(|c| {
        c.admin.token = Some(herald::auth::Secret::new(ADMIN));
    })
    .await;
    let http = reqwest::Client::new();
    let get = |base: String, path: &str, token: Option<&str>| {
        let mut req = http.get(format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for path in ["/metrics", "/readyz"] {
        assert_eq!(get(h.base.clone(), path, None).await, 401, "{path}");
        assert_eq!(
            get(h.base.clone(), path, Some("wrong-token-wrong")).await,
            403,
            "{path}"
        );
        assert_eq!(get(h.base.clone(), path, Some(ADMIN)).await, 200, "{path}");
    }
    assert_eq!(get(h.base.clone(), "/healthz", None).await, 200);
    h.stop().await;

    let h = Herald::start_with(|c| {
        c.admin.token = Some(herald::auth::Secret::new(ADMIN));
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = format!("http://{}", h.running().admin_addr().unwrap());
    assert_eq!(get(h.base.clone(), "/metrics", Some(ADMIN)).await, 404);
    assert_eq!(get(h.base.clone(), "/readyz", Some(ADMIN)).await, 404);
    assert_eq!(get(h.base.clone(), "/healthz", None).await, 200);
    assert_eq!(get(admin.clone(), "/metrics", None).await, 401);
    assert_eq!(get(admin.clone(), "/metrics", Some(ADMIN)).await, 200);
    assert_eq!(get(admin.clone(), "/readyz", Some(ADMIN)).await, 200);
    assert_eq!(get(admin.clone(), "/healthz", None).await, 200);
    h.stop().await;
}

#[tokio::test]
async fn a_client_resumes_on_another_node_with_the_same_token() {
    use common::redis_server::{Prefix, SHARED_URL};
    let prefix = Prefix::shared();
    let node = |prefix: String| {
        Herald::start_with(move |c| {
            jwt(c);
            c.store.kind = herald::config::StoreKind::Redis;
            c.store.url = Some(SHARED_URL.into());
            c.store.key_prefix = Some(prefix);
        })
    };
    let a = node(prefix.to_string()).await;
    let b = node(prefix.to_string()).await;
    let sub = unique("n");
    let channel = format!("user:{sub}");
    let token = token_for(&sub, 300, json!({}));
    let (mut client, _) = a
        .subscribe(&format!("token={token}&channel={channel}"))
        .await;
    a.publish("t", &event(&channel, 1)).await;
    let last = client.next_of_type("notification").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    drop(client);
    a.publish("t", &event(&channel, 2)).await;
    a.publish("t", &event(&channel, 3)).await;
    let mut client: Client = b
        .connect(&format!("token={token}&channel={channel}&last_id={last}"))
        .await;
    let replayed = client.notifications(2).await;
    assert_eq!(offsets(&replayed), [2, 3]);
    assert_eq!(client.next_of_type("subscribed").await["recovered"], true);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_secret_from_a_file_and_herald_token_minting() {
    let files = KeyFiles::new();
    let secret_file = files.file("secret", &format!("{SECRET}\n"));
    let config = AuthConfig {
        mode: AuthMode::Jwt,
        hmac_secret_file: Some(secret_file),
        channels_claim: Some("channels".into()),
        ..AuthConfig::default()
    };
    let minted = herald::auth::mint::mint(
        &config,
        &herald::auth::mint::MintRequest {
            sub: "m".into(),
            channels: vec!["room:*".into()],
            claims: vec![],
            ttl_secs: 60,
            alg: jsonwebtoken::Algorithm::HS256,
        },
    )
    .unwrap();
    let h = Herald::start_with(move |c| c.auth = config).await;
    let (_, subscribed) = h.subscribe(&format!("token={minted}&channel=room:1")).await;
    assert_eq!(subscribed["channel"], "room:1");
    h.stop().await;
}
