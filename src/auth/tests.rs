//! Tokens minted with jsonwebtoken for keys generated here (RSA 2048,
//! P-256, P-384, Ed25519, an HMAC secret), checked by [`Auth`].

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::mint::{KeyKind, SigningKey};
use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 600 })
}

fn hs(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret).expect("key");
    encode(&Header::new(alg), claims, &key).expect("token")
}

fn jwt_config() -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        hmac_secret: Some(Secret::new(SECRET)),
        ..AuthConfig::default()
    }
}

async fn auth(config: &AuthConfig) -> Arc<Auth> {
    Auth::start(config, CancellationToken::new())
        .await
        .expect("auth starts")
}

/// PEM files of public keys in a temporary directory.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("dir"),
        }
    }

    fn write(&self, name: &str, key: &SigningKey) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, key.public_pem()).expect("write");
        path
    }
}

fn invalid(r: Result<Principal, Rejection>) -> String {
    match r {
        Err(Rejection::Invalid(why)) => why.into_owned(),
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

#[tokio::test]
async fn each_algorithm_family_verifies_with_its_key() {
    let keys = Keys::new();
    let rsa = SigningKey::generate(KeyKind::Rsa2048).expect("rsa");
    let p256 = SigningKey::generate(KeyKind::P256).expect("p256");
    let p384 = SigningKey::generate(KeyKind::P384).expect("p384");
    let ed = SigningKey::generate(KeyKind::Ed25519).expect("ed");
    let config = AuthConfig {
        public_key_files: vec![
            keys.write("rs.pem", &rsa),
            keys.write("p256.pem", &p256),
            keys.write("p384.pem", &p384),
            keys.write("ed.pem", &ed),
        ],
        ..jwt_config()
    };
    let auth = auth(&config).await;
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = hs(alg, SECRET.as_bytes(), &claims("h"));
        let p = auth.authenticate(Some(&token)).await.expect("valid HMAC");
        assert_eq!(p.sub(), Some("h"), "{alg:?}");
    }
    for (key, alg) in [
        (&rsa, Algorithm::RS256),
        (&rsa, Algorithm::RS512),
        (&rsa, Algorithm::PS256),
        (&p256, Algorithm::ES256),
        (&p384, Algorithm::ES384),
        (&ed, Algorithm::EdDSA),
    ] {
        let token = key.sign(&claims("a"), Some(alg), None).expect("signs");
        let p = auth.authenticate(Some(&token)).await;
        assert_eq!(p.expect("valid").sub(), Some("a"), "{alg:?}");
    }
    // Another key of the same kind is not a configured key.
    let stranger = SigningKey::generate(KeyKind::P256).expect("p256");
    let token = stranger.sign(&claims("a"), None, None).expect("signs");
    assert_eq!(
        invalid(auth.authenticate(Some(&token)).await),
        "bad signature"
    );
    let token = hs(
        Algorithm::HS256,
        b"another-secret-of-32-bytes-or-more!!",
        &claims("a"),
    );
    assert_eq!(
        invalid(auth.authenticate(Some(&token)).await),
        "bad signature"
    );
}

#[tokio::test]
async fn alg_none_is_never_accepted() {
    let auth = auth(&jwt_config()).await;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(v).expect("json"))
    };
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "typ": "JWT"})),
            b64(&claims("a"))
        );
        let why = invalid(auth.authenticate(Some(&token)).await);
        assert!(why.contains("not allowed") && why.contains(alg), "{why}");
    }
    for garbage in ["", "a.b", "a.b.c", "x.y.z.w", "....", "ey.ey.ey"] {
        let r = auth.authenticate(Some(garbage)).await;
        // An empty token is no token: refused as missing.
        assert!(r.is_err(), "{garbage:?}");
    }
}

#[tokio::test]
async fn an_hmac_token_signed_with_the_rsa_public_key_is_refused() {
    let keys = Keys::new();
    let rsa = SigningKey::generate(KeyKind::Rsa2048).expect("rsa");
    let pem = rsa.public_pem().as_bytes().to_vec();
    let forged = hs(Algorithm::HS256, &pem, &claims("mallory"));
    // RSA key only: HS256 is not an algorithm its keys support.
    let rsa_only = AuthConfig {
        hmac_secret: None,
        public_key_files: vec![keys.write("rs.pem", &rsa)],
        ..jwt_config()
    };
    let why = invalid(auth(&rsa_only).await.authenticate(Some(&forged)).await);
    assert!(
        why.contains("HS256") && why.contains("not allowed"),
        "{why}"
    );
    // Even when HS256 is allowed (an HMAC secret is configured too), HS256
    // is checked with the secret only, never with the RSA key.
    let both = AuthConfig {
        public_key_files: vec![keys.write("rs.pem", &rsa)],
        ..jwt_config()
    };
    let why = invalid(auth(&both).await.authenticate(Some(&forged)).await);
    assert_eq!(why, "bad signature");
    // The DER bytes and the trimmed PEM fail the same way.
    let trimmed = hs(
        Algorithm::HS256,
        rsa.public_pem().trim().as_bytes(),
        &claims("m"),
    );
    assert_eq!(
        invalid(auth(&both).await.authenticate(Some(&trimmed)).await),
        "bad signature"
    );
}

#[tokio::test]
async fn claims_are_checked_issuer_audience_nbf_exp_sub() {
    let config = AuthConfig {
        issuer: Some("https://idp.test".into()),
        audience: Some("herald".into()),
        leeway_secs: 5,
        ..jwt_config()
    };
    let auth = auth(&config).await;
    let t = now();
    let good =
        json!({"sub": "u", "exp": t + 60, "iss": "https://idp.test", "aud": ["x", "herald"]});
    let token = |c: &Value| hs(Algorithm::HS256, SECRET.as_bytes(), c);
    auth.authenticate(Some(&token(&good))).await.expect("valid");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        token(&c)
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().expect("object").remove(k);
        token(&c)
    };
    assert!(
        invalid(
            auth.authenticate(Some(&with("iss", json!("https://evil"))))
                .await
        )
        .contains("iss")
    );
    assert!(invalid(auth.authenticate(Some(&with("aud", json!("other")))).await).contains("aud"));
    assert!(invalid(auth.authenticate(Some(&without("aud"))).await).contains("aud"));
    assert!(invalid(auth.authenticate(Some(&without("iss"))).await).contains("iss"));
    assert!(invalid(auth.authenticate(Some(&with("nbf", json!(t + 120)))).await).contains("nbf"));
    // nbf within the leeway is fine.
    auth.authenticate(Some(&with("nbf", json!(t + 2))))
        .await
        .expect("leeway");
    assert!(invalid(auth.authenticate(Some(&without("sub"))).await).contains("sub"));
    assert!(invalid(auth.authenticate(Some(&with("sub", json!(42)))).await).contains("sub"));
    assert!(invalid(auth.authenticate(Some(&without("exp"))).await).contains("exp"));
    let expired = with("exp", json!(t - 10));
    assert_eq!(
        auth.authenticate(Some(&expired)).await.err(),
        Some(Rejection::Expired)
    );
    // Expired but within the leeway: still valid.
    auth.authenticate(Some(&with("exp", json!(t - 2))))
        .await
        .expect("leeway");
    // An expired token with a bad signature is a bad token, not an expired one.
    let forged = hs(
        Algorithm::HS256,
        b"not-the-secret-not-the-secret-!!!",
        &json!({"sub": "u", "exp": t - 100}),
    );
    assert_eq!(
        invalid(auth.authenticate(Some(&forged)).await),
        "bad signature"
    );
}

#[tokio::test]
async fn tokens_without_exp_only_when_allowed() {
    let open_ended = json!({"sub": "svc"});
    let token = hs(Algorithm::HS256, SECRET.as_bytes(), &open_ended);
    let strict = auth(&jwt_config()).await;
    assert!(invalid(strict.authenticate(Some(&token)).await).contains("exp"));
    let lax = auth(&AuthConfig {
        require_exp: false,
        ..jwt_config()
    })
    .await;
    let p = lax.authenticate(Some(&token)).await.expect("valid");
    assert_eq!(p.expires_at(), None);
    assert_eq!(p.closes_at(), None);
}

#[tokio::test]
async fn the_allowlist_limits_algorithms_and_keys() {
    let config = AuthConfig {
        algorithms: vec![Algorithm::HS512],
        ..jwt_config()
    };
    let auth = auth(&config).await;
    let t256 = hs(Algorithm::HS256, SECRET.as_bytes(), &claims("a"));
    assert!(invalid(auth.authenticate(Some(&t256)).await).contains("HS256"));
    let t512 = hs(Algorithm::HS512, SECRET.as_bytes(), &claims("a"));
    auth.authenticate(Some(&t512)).await.expect("allowed");
}

#[tokio::test]
async fn bad_key_files_are_configuration_errors() {
    let keys = Keys::new();
    let rsa = SigningKey::generate(KeyKind::Rsa2048).expect("rsa");
    let private = keys.dir.path().join("private.pem");
    std::fs::write(&private, rsa.private_pem()).expect("write");
    let junk = keys.dir.path().join("junk.pem");
    std::fs::write(&junk, "hello").expect("write");
    for (path, says) in [
        (private, "private key"),
        (junk, "not a PEM"),
        (keys.dir.path().join("missing.pem"), "cannot read"),
    ] {
        let config = AuthConfig {
            public_key_files: vec![path],
            ..jwt_config()
        };
        let err = Auth::start(&config, CancellationToken::new())
            .await
            .expect_err("refused");
        assert_eq!(err.key, "auth.public_key_files");
        assert!(err.problem.contains(says), "{}", err.problem);
    }
    // A key no allowed algorithm can use.
    let config = AuthConfig {
        public_key_files: vec![keys.write("rs.pem", &rsa)],
        algorithms: vec![Algorithm::HS256],
        ..jwt_config()
    };
    let err = Auth::start(&config, CancellationToken::new())
        .await
        .expect_err("refused");
    assert!(err.problem.contains("none of which"), "{}", err.problem);
}

#[tokio::test]
async fn principals_check_channels_and_pick_defaults() {
    let config = AuthConfig {
        channels: vec![
            "user:{sub}".into(),
            "team:{teams}".into(),
            "broadcast".into(),
        ],
        channels_claim: Some("channels".into()),
        ..jwt_config()
    };
    let auth = auth(&config).await;
    let c = json!({"sub": "42", "exp": now() + 60, "teams": [7, "x"], "channels": ["room:7:*"]});
    let p = auth
        .authenticate(Some(&hs(Algorithm::HS256, SECRET.as_bytes(), &c)))
        .await
        .expect("valid");
    for ok in ["user:42", "team:7", "team:x", "broadcast", "room:7:lobby"] {
        assert!(p.check(ok).is_ok(), "{ok}");
    }
    for no in ["user:43", "team:8", "room:8:lobby", "news"] {
        assert!(p.check(no).is_err(), "{no}");
    }
    let defaults = p.default_channels(&["broadcast".into(), "news".into()]);
    assert_eq!(defaults, ["user:42", "broadcast"]);
    assert_eq!(p.closes_at(), p.expires_at().map(|e| e + 30));

    // No token, no anonymous channels: refused.
    assert_eq!(
        auth.authenticate(None).await.err(),
        Some(Rejection::Missing)
    );
    assert_eq!(
        auth.authenticate(Some("")).await.err(),
        Some(Rejection::Missing)
    );
    // Anonymous channels.
    let anon = super::Auth::start(
        &AuthConfig {
            anonymous_channels: vec!["public:*".into()],
            ..jwt_config()
        },
        CancellationToken::new(),
    )
    .await
    .expect("starts");
    let p = anon.authenticate(None).await.expect("anonymous");
    assert_eq!(p.sub(), None);
    assert!(p.check("public:news").is_ok());
    assert!(p.check("user:1").is_err());
    assert_eq!(
        p.default_channels(&["broadcast".into(), "public:x".into()]),
        ["public:x"]
    );

    // Authentication off: everything, no identity.
    let open = Auth::disabled();
    let p = open.authenticate(Some("anything")).await.expect("open");
    assert!(p.check("user:1").is_ok());
    assert_eq!(p.default_channels(&["broadcast".into()]), ["broadcast"]);
}

#[tokio::test]
async fn refresh_keeps_the_subject() {
    let auth = auth(&jwt_config()).await;
    let token = |sub: &str| hs(Algorithm::HS256, SECRET.as_bytes(), &claims(sub));
    let current = auth.authenticate(Some(&token("a"))).await.expect("valid");
    let next = auth.refresh(&current, &token("a")).await.expect("same sub");
    assert_eq!(next.sub(), Some("a"));
    assert_eq!(
        auth.refresh(&current, &token("b")).await.err(),
        Some(Rejection::OtherSubject)
    );
    let expired = hs(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "a", "exp": now() - 100}),
    );
    assert_eq!(
        auth.refresh(&current, &expired).await.err(),
        Some(Rejection::Expired)
    );
    assert!(matches!(
        auth.refresh(&current, "x.y.z").await,
        Err(Rejection::Invalid(_))
    ));
    let open = Auth::disabled();
    assert_eq!(
        open.refresh(&Principal::open(), &token("a")).await.err(),
        Some(Rejection::Disabled)
    );
}

#[test]
fn tokens_come_from_the_query_or_the_header_and_are_redacted() {
    use axum::http::HeaderValue;
    let mut headers = HeaderMap::new();
    assert_eq!(client_token(Some("channel=a"), &headers), None);
    assert_eq!(
        client_token(Some("channel=a&token=q.q.q"), &headers).as_deref(),
        Some("q.q.q")
    );
    headers.insert("authorization", HeaderValue::from_static("Bearer h.h.h"));
    assert_eq!(
        client_token(Some("channel=a"), &headers).as_deref(),
        Some("h.h.h")
    );
    assert_eq!(
        client_token(Some("token=q"), &headers).as_deref(),
        Some("q")
    );
    assert_eq!(
        redact_query("channel=a&token=secret.jwt&last_id=e-1&tok%65n=x"),
        "channel=a&token=REDACTED&last_id=e-1&token=REDACTED"
    );
}

fn jwks_config(url: &str) -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        jwks_url: Some(url.into()),
        jwks_cooldown_secs: 0,
        ..AuthConfig::default()
    }
}

// Rotation, outages and the cooldown against a JWKS server: tests/auth.rs.

#[tokio::test]
async fn a_jwks_down_at_start_does_not_stop_herald() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    drop(listener);
    let auth = auth(&jwks_config(&url)).await;
    let status = auth.jwks_status().expect("jwks");
    assert!(!status.fetched_once);
    let key = SigningKey::generate(KeyKind::P256).expect("p256");
    let t = key.sign(&claims("a"), None, Some("k1")).expect("token");
    assert_eq!(invalid(auth.authenticate(Some(&t)).await), "unknown key id");
}
