//! The `herald` binary: exit statuses and output of `rules check`, `rules
//! test`, configuration and start-up errors, log colour, `tail`, and
//! `serve` with SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::lines::{LINE_TIMEOUT, Lines};
use common::process::Process;
use common::redis_server::{Prefix, SHARED_URL};
use common::unique;

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn rules_check_accepts_the_example() {
    let (code, out, _) = run(herald()
        .args(["rules", "check"])
        .arg(root().join("examples/rules.yaml")));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok, 5 rules"), "{out}");
}

#[test]
fn rules_check_reports_every_problem_with_rule_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "bad.yaml",
        "rules:\n  - id: a\n    emit:\n      channel: x\n      titel: typo\n  - id: b\n    when: \"event.x ==\"\n    emit: { channel: y }\n",
    );
    let (code, out, _) = run(herald().args(["rules", "check"]).arg(&file));
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let f = file.display();
    assert!(
        lines[0].starts_with(&format!("{f}:5: rule `a`: field `emit.titel`:")),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!("{f}:7: rule `b`: field `when`:")),
        "{out}"
    );
}

#[test]
fn rules_check_of_a_missing_or_empty_file() {
    let (code, _, err) = run(herald().args(["rules", "check", "/nonexistent/rules.yaml"]));
    assert_eq!(code, 2, "a file that cannot be read is bad input");
    assert!(err.contains("cannot read"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let empty = write(&dir, "empty.yaml", "");
    let (code, out, _) = run(herald().args(["rules", "check"]).arg(&empty));
    assert_eq!(code, 1);
    assert!(out.contains("empty.yaml: the file is empty"), "{out}");
}

#[test]
fn rules_test_prints_one_json_object_per_notification() {
    let (code, out, err) = run(herald()
        .args(["rules", "test"])
        .arg(root().join("examples/rules.yaml"))
        .arg("--event")
        .arg(root().join("examples/events/order-shipped.json"))
        .args(["--source", "kafka", "--topic", "orders"]));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["channel"], "user:42");
    assert_eq!(lines[1]["channel"], "user:1337");
    assert_eq!(lines[0]["title"], "Order A-10023 has shipped");
    assert_eq!(lines[0]["rule"], "order-shipped");
    // Another source: the order rules do not match, and it says so.
    let (code, out, err) = run(herald()
        .args(["rules", "test"])
        .arg(root().join("examples/rules.yaml"))
        .arg("--event")
        .arg(root().join("examples/events/order-shipped.json"))
        .args(["--source", "amqp", "--topic", "orders"]));
    assert_eq!((code, out.as_str()), (0, ""));
    assert_eq!(err, "no rule matched (source=amqp, topic=orders)\n");
}

#[test]
fn rules_test_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        &dir,
        "r.yaml",
        "rules:\n  - id: r\n    emit: { channel: c, title: \"{{ event.name }}\" }\n",
    );
    let ok = write(&dir, "ok.json", r#"{"name": "x"}"#);
    let failing = write(&dir, "failing.json", r#"{"other": 1}"#);
    let broken = write(&dir, "broken.json", "{nope");
    let (code, out, _) = run(herald()
        .args(["rules", "test"])
        .arg(&rules)
        .arg("--event")
        .arg(&ok));
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1);
    let (code, out, err) = run(herald()
        .args(["rules", "test"])
        .arg(&rules)
        .arg("--event")
        .arg(&failing));
    assert_eq!(code, 1, "a rule failed at run time");
    assert_eq!(out, "");
    assert!(err.contains("rule `r`: field `emit.title`"), "{err}");
    let (code, _, err) = run(herald()
        .args(["rules", "test"])
        .arg(&rules)
        .arg("--event")
        .arg(&broken));
    assert_eq!(code, 2, "the event file is not JSON");
    assert!(err.contains("broken.json: not JSON"), "{err}");
    for (name, text, problem) in [
        ("empty.json", " \n", "the file is empty"),
        ("list.json", r#"[{"name": "x"}]"#, "not a JSON object"),
        ("number.json", "42", "not a JSON object"),
    ] {
        let event = write(&dir, name, text);
        let (code, _, err) = run(herald()
            .args(["rules", "test"])
            .arg(&rules)
            .arg("--event")
            .arg(&event));
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains(&format!("{name}: {problem}")), "{err}");
    }
    let (code, _, err) = run(herald()
        .args(["rules", "test"])
        .arg(&rules)
        .args(["--event", "nosuch.json"]));
    assert_eq!(code, 2);
    assert!(err.contains("nosuch.json: cannot read the file"), "{err}");
    assert!(
        !err.contains("JSON"),
        "a missing file is not bad JSON: {err}"
    );
    let invalid = write(&dir, "invalid.yaml", "rules:\n  - id: r\n    emit: {}\n");
    let (code, _, err) = run(herald()
        .args(["rules", "test"])
        .arg(&invalid)
        .arg("--event")
        .arg(&ok));
    assert_eq!(code, 2, "rules that do not compile cannot be tried: {err}");
    let (code, _, _) = run(herald()
        .args(["rules", "test"])
        .arg(&rules)
        .args(["--event", "x.json", "--source", "nats"]));
    assert_eq!(code, 2, "clap rejects an unknown source");
}

/// The file and line, the key as the docs write it, the closest known key.
#[test]
fn a_config_with_an_unknown_key_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "typo.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_conections = 5\n",
    );
    let (code, _, err) = run(herald().args(["serve", "--config"]).arg(&file));
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        format!(
            "herald: {}:3: unknown key `server.max_conections`; \
             did you mean `server.max_connections`?\n",
            file.display()
        )
    );
}

#[test]
fn a_config_with_a_bad_value_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "herald.toml",
        "[delivery]\nqueue_capacity = \"many\"\n",
    );
    let (code, _, err) = run(herald().args(["serve", "--config"]).arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue_capacity"), "{err}");
    let file = write(&dir, "zero.toml", "[store]\nmax_per_channel = 0\n");
    let (code, _, err) = run(herald().args(["serve", "--config"]).arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("store.max_per_channel") && err.contains("zero.toml"),
        "{err}"
    );
    let (code, _, err) = run(herald().env("HERALD_SERVER__LISTEN", "nowhere"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("herald: HERALD_SERVER__LISTEN: `server.listen`"),
        "{err}"
    );
    let (code, _, err) = run(herald().env("HERALD_SERVER__LISTEN", "localhost:18303"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a host name is not accepted"), "{err}");
    assert!(err.contains("127.0.0.1:18303"), "{err}");
}

/// A `store.tls_ca_file` that is missing or holds no certificate stops
/// the start, naming the key and the file (a certificate Redis presents
/// that does not verify does not: tests/redis_tls.rs).
#[test]
fn an_unusable_redis_ca_file_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let config = format!(
        "[store]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:1\"\ntls_ca_file = \"{}\"\n",
        ca.display()
    );
    let file = write(&dir, "herald.toml", &config);
    let (code, _, err) = run(herald().args(["serve", "--config"]).arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("store.tls_ca_file") && err.contains("ca.pem"),
        "{err}"
    );
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let (code, _, err) = run(herald().args(["serve", "--config"]).arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no CERTIFICATE block"), "{err}");
}

/// Printed once, as plain text (it was an ERROR log line and the same text
/// again).
#[test]
fn invalid_rules_at_start_exit_2_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(&dir, "rules.yaml", "rules:\n  - id: a\n    emit: {}\n");
    let (code, _, err) = run(herald()
        .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .env("HERALD_RULES__PATH", &rules));
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.matches("rule `a`").count(), 1, "{err}");
    assert!(
        err.contains(&format!("herald: {}:3: rule `a`", rules.display())),
        "{err}"
    );
    // With JSON logs, one JSON record instead.
    let (code, _, err) = run(herald()
        .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .env("HERALD_LOG__FORMAT", "json")
        .env("HERALD_RULES__PATH", &rules));
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.matches("rule `a`").count(), 1, "{err}");
    let last: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR", "{err}");
}

/// The table in `--help` and the README: 1 for the environment (an address
/// in use, a disk store another herald holds), 2 for bad usage or input.
#[test]
fn exit_statuses() {
    let (code, out, _) = run(herald().arg("--help"));
    assert_eq!(code, 0);
    assert!(out.contains("Exit status:"), "{out}");
    for status in ["  0  ", "  1  ", "  2  "] {
        assert!(out.contains(status), "{out}");
    }
    let (code, _, _) = run(herald().arg("--no-such-option"));
    assert_eq!(code, 2);

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(herald().env("HERALD_SERVER__LISTEN", &addr));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("herald: cannot listen on {addr}")),
        "{err}"
    );
    assert_eq!(err.matches("cannot listen").count(), 1, "said once: {err}");

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let holder = herald_listening(|c| {
        c.env("HERALD_STORE__KIND", "disk")
            .env("HERALD_STORE__PATH", &store);
    });
    let (code, _, err) = run(herald()
        .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .env("HERALD_STORE__KIND", "disk")
        .env("HERALD_STORE__PATH", &store));
    assert_eq!(code, 1, "the database is held by the other herald: {err}");
    assert!(err.contains("herald: store:"), "{err}");
    assert!(holder.0.stop().success());
}

/// Colour codes only for a terminal: none when stderr is a pipe, and none
/// on a terminal with NO_COLOR set. `script` gives herald a terminal; a
/// taken port makes it log a warning and exit at once.
#[test]
fn log_colour_only_on_a_terminal_without_no_color() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(herald()
        .env_remove("NO_COLOR")
        .env("HERALD_SERVER__LISTEN", &addr));
    assert_eq!(code, 1);
    assert!(err.contains("authentication is OFF"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "no escape codes into a pipe: {err:?}"
    );

    let on_a_terminal = |no_color: Option<&str>| {
        let mut cmd = Command::new("script");
        cmd.args(["-qec", env!("CARGO_BIN_EXE_herald"), "/dev/null"])
            .env("HERALD_SERVER__LISTEN", &addr)
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let (code, out, _) = run(&mut cmd);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("authentication is OFF"), "{out}");
        out
    };
    assert!(
        on_a_terminal(None).contains("\u{1b}["),
        "colour on a terminal"
    );
    let plain = on_a_terminal(Some("1"));
    assert!(!plain.contains('\u{1b}'), "NO_COLOR: {plain:?}");
}

/// `herald` (no arguments: serve on the defaults) on 127.0.0.1:0, once it
/// listens; its log.
fn spawn_serve() -> (Serving, u16, Lines) {
    herald_listening(|_| {})
}

/// A running `herald serve`, killed if a test fails before stopping it.
struct Serving(Option<std::process::Child>);

impl Serving {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then wait (within `LINE_TIMEOUT`) for the exit.
    fn stop(mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.exit_status()
    }

    /// Wait (within `LINE_TIMEOUT`) for the exit.
    fn exit_status(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("herald still running {LINE_TIMEOUT:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `herald` set up by `edit`, on 127.0.0.1:0, once it logged `herald
/// listening`: the port comes from that line, so no free port is picked
/// ahead and lost to another process. Its log (stderr).
fn herald_listening(edit: impl FnOnce(&mut Command)) -> (Serving, u16, Lines) {
    let mut cmd = herald();
    cmd.env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    edit(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut log = Lines::new(child.stderr.take().unwrap());
    let serving = Serving(Some(child));
    let port = log.listening_port();
    (serving, port, log)
}

/// `herald tail` of the herald on `port`, its stdout piped.
fn tail_of(port: u16) -> Command {
    let mut tail = herald();
    tail.args(["tail", "--url"])
        .arg(format!("ws://127.0.0.1:{port}/notifications"))
        .stdout(Stdio::piped());
    tail
}

/// `/metrics` of the herald on `port`, through curl.
fn metrics(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `herald` with no arguments serves; SIGTERM shuts it down cleanly.
#[test]
fn serve_starts_on_defaults_and_stops_on_sigterm() {
    let (serving, _, log) = spawn_serve();
    let status = serving.stop();
    let log = log.rest();
    assert!(status.success(), "exit status {status:?}:\n{log}");
    assert!(log.contains("authentication is OFF"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
}

/// `herald tail` of the herald on `port` with `args`, its stdout read line
/// by line (and its stderr, when `stderr`).
fn spawn_tail(port: u16, args: &[&str], stderr: bool) -> (Serving, Lines, Option<Lines>) {
    let mut tail = tail_of(port)
        .args(args)
        .stderr(if stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap();
    let out = Lines::new(tail.stdout.take().unwrap());
    let err = tail.stderr.take().map(Lines::new);
    (Serving(Some(tail)), out, err)
}

/// The README tour: `herald`, `herald tail --channel user:42`, and a curl
/// POST; the notification reaches the tail.
#[test]
fn readme_tour_with_tail_and_curl() {
    let (server, port, _log) = spawn_serve();
    let (mut tail, mut lines, _) = spawn_tail(port, &["--channel", "user:42", "-n", "1"], false);
    let subscribed = lines.json();
    assert_eq!(subscribed["type"], "subscribed");
    let curl = Command::new("curl")
        .args(["-s", "-X", "POST", &format!("localhost:{port}/events/orders")])
        .args(["-H", "content-type: application/json"])
        .args(["-d", r#"{"type":"order.shipped","user_id":42,"title":"Your order shipped","body":"Arriving Friday"}"#])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&curl.stdout).contains(r#""notifications":1"#));
    let n = lines.json();
    assert_eq!(n["type"], "notification");
    assert_eq!(n["channel"], "user:42");
    assert_eq!(n["title"], "Your order shipped");
    assert!(tail.exit_status().success());
    // `-n 1` closes the WebSocket properly: a normal close, not a
    // protocol error (the session ends just after the tail exits).
    let closed = r#"herald_sessions_closed_total{reason="client_closed"} 1"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = metrics(port);
    while !text.contains(closed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        text = metrics(port);
    }
    assert!(text.contains(closed), "{text}");
    assert!(!text.contains(r#"reason="protocol_error""#), "{text}");
    assert!(!text.contains(r#"reason="dropped""#), "{text}");
    server.stop();
}

/// A server going away reads as a close code and its reason, not a Rust
/// value.
#[test]
fn tail_says_why_the_server_closed() {
    let (server, port, _log) = spawn_serve();
    let (_tail, mut out, err) = spawn_tail(port, &[], true);
    let subscribed = out.next();
    assert!(subscribed.contains("\"subscribed\""), "{subscribed}");
    server.stop();
    let line = err.unwrap().next();
    assert_eq!(
        line,
        "herald tail: the server closed the connection \
         (1001 going_away: server shutting down); reconnecting"
    );
}

/// `herald tail --last-id` starts after that id, and when its connection
/// ends (its herald stopped) reconnects by itself with the last id it
/// printed. Two nodes on one Redis log: while the tail's node is down,
/// events are posted to the other, so the only way the tail gets them is
/// the replay after its last id; then one more arrives live. Fails if the
/// tail ignores `--last-id`, or reconnects without its last id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_starts_after_last_id_and_resumes_after_a_reconnect() {
    let prefix = Prefix::shared();
    let config =
        format!("[store]\nkind = \"redis\"\nurl = \"{SHARED_URL}\"\nkey_prefix = \"{prefix}\"\n");
    let mut a = Process::start(&config);
    let b = Process::start(&config);
    let channel = unique("user");
    let post = |node: &Process, title: &str| {
        let url = format!("{}/events/t", node.base());
        let body = serde_json::json!({"channel": channel, "title": title});
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 202);
        }
    };
    let mut probe = common::Client::connect(&a.ws_url(&format!("channel={channel}"))).await;
    let position = probe.next_of_type("subscribed").await["position"]
        .as_str()
        .unwrap()
        .to_string();
    let epoch = common::epoch_of(&position);
    for title in ["n0", "n1", "n2"] {
        post(&a, title).await;
    }

    let last_id = format!("{epoch}-1");
    let args = ["--channel", &channel, "--last-id", &last_id, "-n", "5"];
    let (mut tail, mut out, _) = spawn_tail(a.port, &args, false);
    let mut frame = || {
        let f = out.json();
        match f["type"].as_str() {
            Some("notification") => f["title"].as_str().unwrap().to_string(),
            Some("subscribed") => format!("subscribed {} {}", f["replayed"], f["recovered"]),
            _ => panic!("unexpected frame {f}"),
        }
    };
    assert_eq!(
        [frame(), frame(), frame()],
        ["n1", "n2", "subscribed 2 true"]
    );

    a.stop();
    post(&b, "n3").await;
    post(&b, "n4").await;
    a.restart();
    assert_eq!(
        [frame(), frame(), frame()],
        ["n3", "n4", "subscribed 2 true"]
    );
    post(&a, "n5").await;
    assert_eq!(frame(), "n5");
    assert!(tail.exit_status().success());
}
