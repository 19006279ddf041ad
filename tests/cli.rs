//! The `herald` binary: exit codes and output of `rules check`, `rules
//! test`, configuration errors, and `serve` with SIGTERM.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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
fn rules_check_of_a_missing_file_fails() {
    let (code, out, _) = run(herald().args(["rules", "check", "/nonexistent/rules.yaml"]));
    assert_eq!(code, 1);
    assert!(out.contains("cannot read"), "{out}");
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
    // Another source: the order rules do not match.
    let (code, out, _) = run(herald()
        .args(["rules", "test"])
        .arg(root().join("examples/rules.yaml"))
        .arg("--event")
        .arg(root().join("examples/events/order-shipped.json"))
        .args(["--source", "amqp", "--topic", "orders"]));
    assert_eq!((code, out.as_str()), (0, ""));
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
    assert!(err.contains("broken.json"), "{err}");
    let (code, _, _) = run(herald()
        .args(["rules", "test"])
        .arg(&rules)
        .args(["--event", "x.json", "--source", "nats"]));
    assert_eq!(code, 2, "clap rejects an unknown source");
}

#[test]
fn a_config_with_an_unknown_key_exits_2_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "herald.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n",
    );
    let (code, _, err) = run(herald().args(["serve", "--config"]).arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("lisen"), "{err}");
    assert!(err.contains("herald.toml"), "{err}");
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
    assert!(err.to_lowercase().contains("listen"), "{err}");
}

#[test]
fn invalid_rules_at_start_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(&dir, "rules.yaml", "rules:\n  - id: a\n    emit: {}\n");
    let (code, _, err) = run(herald()
        .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .env("HERALD_RULES__PATH", &rules));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rule `a`"), "{err}");
}

/// `herald` (no arguments: serve on the defaults) on a free port, once it
/// accepts connections.
fn spawn_serve(stderr: Stdio) -> (std::process::Child, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = herald()
        .env("HERALD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "herald did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// `herald` with no arguments serves; SIGTERM shuts it down cleanly.
#[test]
fn serve_starts_on_defaults_and_stops_on_sigterm() {
    let (child, _) = spawn_serve(Stdio::piped());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit status {:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("authentication is OFF"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
}

/// The README tour: `herald`, `herald tail --channel user:42`, and a curl
/// POST; the notification reaches the tail.
#[test]
fn readme_tour_with_tail_and_curl() {
    use std::io::{BufRead, BufReader};
    let (mut server, port) = spawn_serve(Stdio::null());
    let mut tail = herald()
        .args([
            "tail",
            "--url",
            &format!("ws://127.0.0.1:{port}/notifications"),
        ])
        .args(["--channel", "user:42", "-n", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let subscribed: serde_json::Value =
        serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(subscribed["type"], "subscribed");
    let curl = Command::new("curl")
        .args(["-s", "-X", "POST", &format!("localhost:{port}/events/orders")])
        .args(["-H", "content-type: application/json"])
        .args(["-d", r#"{"type":"order.shipped","user_id":42,"title":"Your order shipped","body":"Arriving Friday"}"#])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&curl.stdout).contains(r#""notifications":1"#));
    let n: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(n["type"], "notification");
    assert_eq!(n["channel"], "user:42");
    assert_eq!(n["title"], "Your order shipped");
    assert!(tail.wait().unwrap().success());
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
}
