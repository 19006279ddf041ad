//! The `herald` binary with authentication: the safe-default refusal to
//! serve unauthenticated off loopback, tokens kept out of the logs,
//! `herald keys`, `herald token` and `herald tail --token`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::auth::{SECRET, jwt, now, token_for};
use common::lines::Lines;
use common::process::Process;
use common::{Herald, unique};
use serde_json::json;

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

#[test]
fn serving_unauthenticated_off_loopback_is_refused_unless_allowed() {
    let out = herald()
        .arg("serve")
        .env("HERALD_SERVER__LISTEN", "0.0.0.0:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.listen",
        "auth.mode",
        "auth.allow_anonymous",
        "api_keys",
    ] {
        assert!(err.contains(key), "{key} not named: {err}");
    }
    // With JWT on but an HTTP source without keys: still refused, for the
    // producers.
    let out = herald()
        .arg("serve")
        .env("HERALD_SERVER__LISTEN", "0.0.0.0:0")
        .env("HERALD_AUTH__MODE", "jwt")
        .env("HERALD_AUTH__HMAC_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api_keys") && !err.contains("auth.mode = \"none\""),
        "{err}"
    );

    // Explicitly allowed: it serves (on all interfaces, on a port it picks
    // and names in its log; the test talks to it over loopback only).
    let mut child = herald()
        .arg("serve")
        .env("HERALD_SERVER__LISTEN", "0.0.0.0:0")
        .env("HERALD_AUTH__ALLOW_ANONYMOUS", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = Lines::new(child.stderr.take().unwrap());
    let port = log.listening_port();
    let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(up, "herald did not serve with auth.allow_anonymous = true");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let mut p = Process::start(&format!(
        "[log]\nlevel = \"debug\"\n[auth]\nmode = \"jwt\"\nhmac_secret = \"{SECRET}\"\n"
    ));
    let valid = token_for("logged", 300, json!({}));
    let expired = token_for("logged", 0, json!({"exp": now() - 600}));
    let forged = common::auth::hs256_with(
        b"forged-secret-forged-secret-forged!",
        &json!({"sub": "x", "exp": now() + 60}),
    );
    let (mut client, _) = {
        let mut c =
            common::Client::connect(&p.ws_url(&format!("token={valid}&channel=user:logged"))).await;
        let s = c.next_of_type("subscribed").await;
        (c, s)
    };
    client
        .send_json(&json!({"type": "refresh", "token": valid}))
        .await;
    client.next_of_type("refreshed").await;
    for bad in [&expired, &forged] {
        let mut c = common::Client::connect(&p.ws_url(&format!("token={bad}"))).await;
        assert!(matches!(
            c.next().await,
            common::Next::Closed(Some(4001 | 4010), _)
        ));
    }
    client
        .send_json(&json!({"type": "refresh", "token": forged}))
        .await;
    assert_eq!(client.close_code().await, Some(4001));
    p.stop();
    let log = p.log();
    assert!(
        log.contains("session refused"),
        "the refusals are logged: {log}"
    );
    for token in [&valid, &expired, &forged] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token reached the log:\n{log}");
    }
    assert!(!log.contains(SECRET), "the secret reached the log");
}

#[test]
fn keys_new_prints_a_key_and_its_digest() {
    let out = herald().args(["keys", "new"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim();
    let digest = text
        .lines()
        .find_map(|l| l.strip_prefix("digest:"))
        .unwrap()
        .trim();
    assert_eq!(digest, herald::auth::api_keys::digest(key));
    let mut child = herald()
        .args(["keys", "digest"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), digest);
}

#[tokio::test]
async fn herald_token_and_tail_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"jwt\"\nhmac_secret = \"{SECRET}\"\nchannels_claim = \"channels\"\n"
        ),
    )
    .unwrap();
    let room = unique("room");
    let out = herald()
        .args([
            "token",
            "--sub",
            "tailer",
            "--ttl",
            "300",
            "--channel",
            &room,
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3);

    let h = Herald::start_with(|c| {
        jwt(c);
        c.auth.channels_claim = Some("channels".into());
    })
    .await;
    let url = h.ws_url("");
    let tail = {
        let (url, token, room) = (url.clone(), token.clone(), room.clone());
        tokio::task::spawn_blocking(move || {
            herald()
                .args(["tail", "-n", "1", "--url", &url, "--channel", &room])
                .env("HERALD_TOKEN", token)
                .output()
                .unwrap()
        })
    };
    // Publish until tail has subscribed and printed it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tail.is_finished() {
        assert!(Instant::now() < deadline, "herald tail printed nothing");
        h.publish("t", &json!({"channel": room, "title": "for tail"}))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = tail.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("for tail"));

    // An expired token: tail stops with the close code, no reconnect loop.
    let expired = common::auth::hs256(&json!({"sub": "tailer", "exp": now() - 600}));
    let out = tokio::task::spawn_blocking(move || {
        herald()
            .args(["tail", "--url", &url, "--token", &expired])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("4010"));
    h.stop().await;

    // No secret in the configuration: herald token explains, exit 2.
    let out = herald().args(["token", "--sub", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.hmac_secret"));
}
