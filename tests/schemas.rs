//! The JSON Schemas under `schemas/` describe what herald really reads and
//! writes: the example files validate, the built-in defaults validate, and
//! frames captured from a running server validate.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::Herald;
use herald::config::Config;
use herald::delivery::protocol::CloseCode;
use herald::source::SourceConfig;
use herald::source::amqp::{AmqpBinding, AmqpSourceConfig};
use herald::source::nats::NatsSourceConfig;
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(rel)).unwrap())
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Resolves `https://herald.dev/schemas/X` to `schemas/X`, offline.
struct Local;

impl jsonschema::Retrieve for Local {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.as_str().rsplit('/').next().unwrap_or_default();
        Ok(load(&format!("schemas/{name}")))
    }
}

fn validator(rel: &str) -> jsonschema::Validator {
    jsonschema::options()
        .with_retriever(Local)
        .build(&load(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not validate: {errors:#?}\n{instance}"
    );
}

fn toml_file(rel: &str) -> Value {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    toml::from_str(&text).unwrap()
}

#[test]
fn example_configs_and_defaults_match_the_config_schema() {
    let v = validator("schemas/config.schema.json");
    assert_valid(
        &v,
        &toml_file("examples/herald.toml"),
        "examples/herald.toml",
    );
    assert_valid(
        &v,
        &serde_json::to_value(Config::default()).unwrap(),
        "Config::default()",
    );
    assert!(
        !v.is_valid(&json!({"server": {"listn": "x"}})),
        "unknown keys are invalid"
    );
    // The example config also loads in herald itself.
    let config = Config::load(Some(&root().join("examples/herald.toml")));
    assert!(config.is_ok(), "{:?}", config.err());
}

#[test]
fn amqp_source_configs_match_the_config_schema() {
    let v = validator("schemas/config.schema.json");
    let mut amqp = AmqpSourceConfig::new("amqp://guest:guest@localhost:5672/%2f", "herald");
    amqp.dead_letter_exchange = Some("herald.dead-letter".into());
    amqp.bindings.push(AmqpBinding {
        exchange: "events".into(),
        routing_key: "orders.#".into(),
    });
    let mut config = Config::default();
    config.sources.push(SourceConfig::Amqp(amqp));
    assert_valid(
        &v,
        &serde_json::to_value(&config).unwrap(),
        "a config with an AMQP source",
    );
    let minimal: Value =
        toml::from_str("[[sources]]\nkind = \"amqp\"\nurl = \"amqp://localhost\"\nqueue = \"q\"\n")
            .unwrap();
    assert_valid(&v, &minimal, "a minimal AMQP source");
    let reserved = json!({"sources": [{"kind": "amqp", "url": "amqp://h", "queue": "amq.q"}]});
    assert!(!v.is_valid(&reserved), "amq. queue names are reserved");
    let typo =
        json!({"sources": [{"kind": "amqp", "url": "amqp://h", "queue": "q", "prefech": 1}]});
    assert!(!v.is_valid(&typo), "unknown keys are invalid");
}

#[test]
fn a_nats_source_matches_the_config_schema_and_loads() {
    let v = validator("schemas/config.schema.json");
    let text = r#"
[[sources]]
kind = "nats"
url = "tls://nats-1:4222"
stream = "EVENTS"
subjects = ["orders.>", "billing.*"]
durable = "herald"
ack_wait_ms = 10000
max_ack_pending = 64
dead_letter_subject = "herald.dead-letter"
creds_file = "/etc/herald/nats.creds"
tls_ca_file = "/etc/herald/ca.pem"
"#;
    let doc: Value = toml::from_str(text).unwrap();
    assert_valid(&v, &doc, "a NATS source");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(Some(&path));
    assert!(config.is_ok(), "{:?}", config.err());
    let mut config = Config::default();
    config
        .sources
        .push(SourceConfig::Nats(NatsSourceConfig::new(
            "nats://localhost:4222",
            "EVENTS",
        )));
    assert_valid(
        &v,
        &serde_json::to_value(&config).unwrap(),
        "a config with a NATS source at its defaults",
    );
    let typo =
        json!({"sources": [{"kind": "nats", "url": "nats://h", "stream": "S", "durabel": "x"}]});
    assert!(!v.is_valid(&typo), "unknown keys are invalid");
    let dotted = json!({"sources": [{"kind": "nats", "url": "nats://h", "stream": "a.b"}]});
    assert!(!v.is_valid(&dotted), "stream names have no dots");
}

#[test]
fn a_kafka_source_matches_the_config_schema_and_loads() {
    let v = validator("schemas/config.schema.json");
    let text = r#"
[[sources]]
kind = "kafka"
brokers = "kafka-1:9092,kafka-2:9092"
topics = ["orders", "billing"]
group_id = "herald"
dead_letter_topic = "herald.dead-letter"
max_message_bytes = 65536
max_in_flight = 64
[sources.properties]
"auto.offset.reset" = "earliest"
"#;
    let doc: Value = toml::from_str(text).unwrap();
    assert_valid(&v, &doc, "a kafka source");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(Some(&path));
    assert!(config.is_ok(), "{:?}", config.err());
    let reserved: Value = toml::from_str(
        "[[sources]]\nkind = \"kafka\"\nbrokers = \"k:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\n\
         [sources.properties]\n\"group.id\" = \"x\"\n",
    )
    .unwrap();
    assert!(!v.is_valid(&reserved), "herald owns group.id");
}

#[test]
fn example_rules_match_the_rules_schema() {
    let v = validator("schemas/rules.schema.json");
    let doc: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("examples/rules.yaml")).unwrap(),
    )
    .unwrap();
    assert_valid(&v, &doc, "examples/rules.yaml");
    let builtin: Value = serde_yaml_ng::from_str(herald::rules::DEFAULT_RULES).unwrap();
    assert_valid(&v, &builtin, "the built-in rules");
}

#[test]
fn client_frames_match_the_client_frame_schema() {
    let v = validator("schemas/client-frame.schema.json");
    for frame in [
        json!({"type": "subscribe", "channel": "user:1"}),
        json!({"type": "subscribe", "channel": "user:1", "last_id": "ab-3"}),
        json!({"type": "subscribe", "channel": "user:1", "rewind": 20}),
        json!({"type": "unsubscribe", "channel": "user:1"}),
        json!({"type": "ping"}),
        json!({"type": "refresh", "token": "a.b.c"}),
    ] {
        assert_valid(&v, &frame, "client frame");
    }
    assert!(!v.is_valid(&json!({"type": "refresh"})));
    assert!(!v.is_valid(&json!({"type": "subscribe"})));
    assert!(!v.is_valid(&json!({"type": "subscribe", "channel": "a", "rewind": -1})));
}

#[test]
fn close_codes_document_every_code_herald_sends() {
    let table = load("schemas/close-codes.json");
    let documented: Vec<(u64, String)> = table
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["code"].as_u64().unwrap(),
                c["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for code in CloseCode::ALL {
        assert!(
            documented.contains(&(u64::from(code.code()), code.reason().to_string())),
            "{} ({}) is not in schemas/close-codes.json",
            code.code(),
            code.reason()
        );
    }
    assert_eq!(documented.len(), CloseCode::ALL.len());
}

#[tokio::test]
async fn frames_from_a_running_server_match_the_server_frame_schema() {
    let frames = validator("schemas/server-frame.schema.json");
    let notification = validator("schemas/notification.schema.json");
    let h = Herald::start().await;
    let (mut client, subscribed) = h.subscribe("channel=user:7").await;
    assert_valid(&frames, &subscribed, "subscribed");
    h.publish(
        "t",
        &json!({"user_id": 7, "type": "x", "title": "t", "data": {"k": [1]}}),
    )
    .await;
    let n = client.next_of_type("notification").await;
    assert_valid(&frames, &n, "notification");
    assert_valid(&notification, &n, "notification");
    client.send_json(&json!({"type": "ping"})).await;
    assert_valid(&frames, &client.next_of_type("pong").await, "pong");
    client.send_text("nope").await;
    assert_valid(&frames, &client.next_of_type("error").await, "error");
    client
        .send_json(&json!({"type": "subscribe", "channel": "c2", "last_id": "junk"}))
        .await;
    assert_valid(&frames, &client.next_of_type("error").await, "error");
    assert_valid(
        &frames,
        &client.next_of_type("subscribed").await,
        "subscribed",
    );
    h.stop().await;
}

#[test]
fn store_kinds_and_their_keys_agree_between_schema_and_config() {
    let v = validator("schemas/config.schema.json");
    for (store, ok) in [
        (json!({}), true),
        (json!({"kind": "memory"}), true),
        (json!({"kind": "disk", "path": "/var/lib/herald"}), true),
        (
            json!({"kind": "redis", "url": "redis://127.0.0.1:6379"}),
            true,
        ),
        (
            json!({"kind": "redis", "url": "rediss://r:6380/2", "key_prefix": "app1:"}),
            true,
        ),
        (json!({"kind": "disk"}), false),
        (json!({"path": "/x"}), false),
        (json!({"kind": "memory", "url": "redis://x"}), false),
        (json!({"kind": "redis"}), false),
        (json!({"kind": "redis", "url": "http://x"}), false),
        (
            json!({"kind": "redis", "url": "redis://x", "path": "/x"}),
            false,
        ),
        (
            json!({"kind": "disk", "path": "/x", "key_prefix": "p"}),
            false,
        ),
        (
            json!({"kind": "redis", "url": "redis://x", "key_prefix": "a b"}),
            false,
        ),
        (json!({"kind": "cassandra"}), false),
    ] {
        let config = json!({ "store": store });
        assert_eq!(v.is_valid(&config), ok, "schema: {config}");
        let loaded: Result<Config, _> = serde_json::from_value(config.clone());
        let valid = loaded.is_ok_and(|c| c.validate().is_ok());
        assert_eq!(valid, ok, "herald: {config}");
    }
}

/// With authentication on: `refreshed` and `forbidden` from a running
/// server, and the `[auth]` / `[admin]` / `api_keys` configuration.
#[tokio::test]
async fn auth_frames_and_config_match_the_schemas() {
    let frames = validator("schemas/server-frame.schema.json");
    let h = Herald::start_with(|c| {
        common::auth::jwt(c);
        c.auth.channels_claim = Some("channels".into());
    })
    .await;
    let token = common::auth::token_for("s", 300, json!({"channels": ["room:1"]}));
    let (mut client, _) = h.subscribe(&format!("token={token}&channel=room:1")).await;
    client
        .send_json(&json!({"type": "subscribe", "channel": "user:other"}))
        .await;
    assert_valid(&frames, &client.next_of_type("error").await, "forbidden");
    let narrower = common::auth::token_for("s", 300, json!({}));
    client
        .send_json(&json!({"type": "refresh", "token": narrower}))
        .await;
    assert_valid(
        &frames,
        &client.next_of_type("refreshed").await,
        "refreshed",
    );
    assert_valid(
        &frames,
        &client.next_of_type("error").await,
        "forbidden after refresh",
    );
    h.stop().await;

    let v = validator("schemas/config.schema.json");
    let digest = herald::auth::api_keys::digest("k");
    let config = json!({
        "auth": {"mode": "jwt", "hmac_secret": common::auth::SECRET, "channels": ["user:{sub}"],
                 "algorithms": ["HS256", "ES256"], "jwks_url": "https://idp.example/jwks.json"},
        "admin": {"token": "0123456789abcdef", "listen": "127.0.0.1:9090"},
        "sources": [{"kind": "http", "api_keys": [digest, {"digest": digest, "topics": ["orders.*"]}]}]
    });
    assert_valid(&v, &config, "auth config");
    assert!(!v.is_valid(&json!({"auth": {"algorithms": ["none"]}})));
    assert!(!v.is_valid(&json!({"auth": {"mode": "jwt", "secret": "x"}})));
    assert!(!v.is_valid(&json!({"sources": [{"kind": "http", "api_keys": ["md5:00"]}]})));
}

/// History API answers and refusals from a running server match
/// `history.schema.json` and `refusal.schema.json`.
#[tokio::test]
async fn history_answers_and_refusals_match_their_schemas() {
    let history = validator("schemas/history.schema.json");
    let refusal = validator("schemas/refusal.schema.json");
    let h = Herald::start_with(common::auth::jwt).await;
    let token = common::auth::token_for("s", 300, json!({}));
    h.publish("t", &json!({"user_id": "s", "type": "x", "title": "t"}))
        .await;
    let get = |path: String, token: Option<String>| {
        let base = h.base.clone();
        async move {
            let mut req = reqwest::Client::new().get(format!("{base}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    for path in ["", "?limit=1", "?after=abc-0", "?before=abc-9"] {
        let (status, body) = get(
            format!("/channels/user:s/notifications{path}"),
            Some(token.clone()),
        )
        .await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_valid(&history, &body, "history answer");
    }
    for (path, token) in [
        (
            "/channels/user:s/notifications?limit=0",
            Some(token.clone()),
        ),
        ("/channels/user:s/notifications", None),
        ("/channels/user:x/notifications", Some(token.clone())),
    ] {
        let (status, body) = get(path.into(), token).await;
        assert!(status >= 400, "{path}");
        assert_valid(&refusal, &body, "refusal");
    }
    h.stop().await;
}

/// Both schemas name every source kind herald knows, and no other: a kind
/// added to the list in `event.rs` without its schema entries fails here.
#[test]
fn the_schemas_list_every_source_kind() {
    let mut kinds: Vec<&str> = herald::event::SourceKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    kinds.sort_unstable();
    let names = |v: &Value| {
        let mut names: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        names.sort_unstable();
        names
    };
    let config = load("schemas/config.schema.json");
    assert_eq!(
        names(&config["$defs"]["source"]["properties"]["kind"]["enum"]),
        kinds
    );
    assert_eq!(
        config["$defs"]["source"]["oneOf"].as_array().unwrap().len(),
        kinds.len()
    );
    let rules = load("schemas/rules.schema.json");
    let rule = &rules["$defs"]["rule"]["properties"];
    assert_eq!(names(&rule["match"]["properties"]["source"]["enum"]), kinds);
}
