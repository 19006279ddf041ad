//! The disk store against a real herald process: kill -9 mid-stream and
//! restart on the same path, retention, and a disk that refuses writes.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::crash::{HttpProducer, Run, Scenario};
use common::process::Process;
use common::{Client, epoch_of, ids, unique};
use serde_json::{Value, json};

fn disk_config(dir: &std::path::Path, store: &str) -> String {
    format!(
        "[store]\nkind = \"disk\"\npath = {:?}\n{store}\n[delivery]\nqueue_capacity = 4096\n",
        dir.join("log").display().to_string()
    )
}

async fn post(p: &Process, body: &Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/events/t", p.base()))
        .json(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn publish(p: &Process, channel: &str, n: usize) {
    let (status, answer) = post(p, &json!({"channel": channel, "title": format!("n{n}")})).await;
    assert_eq!(status, 202, "{answer}");
}

/// Subscribe with `last_id`; the frames up to and including `subscribed`.
async fn resume(p: &Process, channel: &str, last_id: Option<&str>) -> (Client, Vec<Value>, Value) {
    let query = match last_id {
        Some(id) => format!("channel={channel}&last_id={id}"),
        None => format!("channel={channel}"),
    };
    let mut client = Client::connect(&p.ws_url(&query)).await;
    let mut replayed = Vec::new();
    loop {
        let frame = client.frame().await;
        if frame["type"] == "subscribed" {
            return (client, replayed, frame);
        }
        assert_eq!(frame["type"], "notification", "{frame}");
        replayed.push(frame);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_duplicates_nothing() {
    let mut herald = Process::start_with(|dir| disk_config(dir, ""));
    let producer = Arc::new(HttpProducer::new(vec![herald.base()]));
    let scenario = Scenario {
        channels: 4,
        per_channel: 750,
        batch: 5,
        within: Duration::from_secs(120),
    };
    let run = Run::start(
        &scenario,
        &unique("user"),
        producer.clone(),
        vec![format!("ws://127.0.0.1:{}/notifications", herald.port)],
    )
    .await;
    for fraction in [0.2, 0.5, 0.8] {
        run.wait_produced(fraction).await;
        herald.kill9();
        tokio::time::sleep(Duration::from_millis(200)).await;
        herald.restart();
    }
    let report = run.finish().await;
    eprintln!(
        "produced {}, client reconnects {}, producer retries {}",
        report.produced,
        report.reconnects(),
        producer.retries.load(std::sync::atomic::Ordering::Relaxed)
    );
    report.assert_exactly_once(&herald.log());
    assert_eq!(report.produced, scenario.total());
    assert!(report.reconnects() >= 3 * scenario.channels, "{report:?}");
    // The last run committed what was produced after the last restart:
    // counted (fails when commits are not).
    let metrics = herald.metrics().await;
    let commits = common::metric_value(&metrics, "herald_store_commits_total");
    let sizes = common::metric_value(&metrics, "herald_store_commit_size_count");
    assert!(commits > 0.0, "{metrics}");
    assert_eq!(sizes, commits, "one size per commit: {metrics}");
    herald.stop();
}

#[tokio::test]
async fn epoch_offsets_and_frames_are_identical_after_kill_9() {
    let mut herald = Process::start_with(|dir| disk_config(dir, ""));
    let channel = unique("user");
    for n in 0..5 {
        publish(&herald, &channel, n).await;
    }
    let (_, before, subscribed) = resume(&herald, &channel, Some("x-0")).await;
    assert_eq!(subscribed["recovered"], false, "x is not the epoch");
    let (_, before_all, _) = {
        let epoch = epoch_of(subscribed["position"].as_str().unwrap());
        resume(&herald, &channel, Some(&format!("{epoch}-0"))).await
    };
    assert!(before.is_empty());
    assert_eq!(before_all.len(), 5);
    let last = before_all[4]["id"].as_str().unwrap().to_string();

    herald.kill9();
    herald.restart();
    let (_, replayed, subscribed) = resume(&herald, &channel, Some(&last)).await;
    assert!(replayed.is_empty());
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(subscribed["position"], last.as_str());
    let first = before_all[0]["id"].as_str().unwrap();
    let (mut client, after_all, subscribed) = resume(&herald, &channel, Some(first)).await;
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(ids(&after_all), ids(&before_all[1..]));
    assert_eq!(after_all, before_all[1..], "the same frames, byte for byte");
    // The log goes on from the same offset in the same epoch.
    publish(&herald, &channel, 5).await;
    let next = client.next_of_type("notification").await;
    assert_eq!(next["id"], format!("{}-6", epoch_of(&last)));
    herald.stop();
}

#[tokio::test]
async fn retention_by_count_is_kept_across_restarts_and_trimmed_history_is_not_recovered() {
    let mut herald = Process::start_with(|dir| disk_config(dir, "max_per_channel = 5"));
    let channel = unique("user");
    for n in 0..8 {
        publish(&herald, &channel, n).await;
    }
    let (_, _, head) = resume(&herald, &channel, None).await;
    let epoch = epoch_of(head["position"].as_str().unwrap());
    assert_eq!(head["position"], format!("{epoch}-8"));
    herald.stop();
    herald.restart();
    // Offsets 4..=8 are retained: resuming after 3 is exact, after 2 is not.
    let (_, replayed, ok) = resume(&herald, &channel, Some(&format!("{epoch}-3"))).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(common::offsets(&replayed), [4, 5, 6, 7, 8]);
    let (_, replayed, gap) = resume(&herald, &channel, Some(&format!("{epoch}-2"))).await;
    assert_eq!(gap["recovered"], false, "{gap}");
    assert!(replayed.is_empty());
    assert_eq!(gap["position"], format!("{epoch}-8"));
    herald.stop();
}

#[tokio::test]
async fn retention_by_age_trims_in_the_background() {
    let herald = Process::start_with(|dir| disk_config(dir, "max_age_secs = 1"));
    let channel = unique("user");
    for n in 0..3 {
        publish(&herald, &channel, n).await;
    }
    let (_, replayed, head) = resume(&herald, &channel, None).await;
    assert!(replayed.is_empty());
    let epoch = epoch_of(head["position"].as_str().unwrap());
    let from_start = format!("{epoch}-0");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, replayed, answer) = resume(&herald, &channel, Some(&from_start)).await;
        if answer["recovered"] == false {
            assert!(replayed.is_empty());
            assert_eq!(answer["position"], format!("{epoch}-3"));
            break;
        }
        assert!(Instant::now() < deadline, "nothing expired: {answer}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Counted once removed (the disk store also counts what retention by
    // count removes; none here).
    assert!(herald.wait_metric("herald_store_trimmed_total", 3.0).await >= 3.0);
    // Appends go on in the same epoch after everything expired.
    publish(&herald, &channel, 3).await;
    let (_, replayed, answer) = resume(&herald, &channel, Some(&format!("{epoch}-3"))).await;
    assert_eq!(answer["recovered"], true);
    assert_eq!(common::offsets(&replayed), [4]);
}

/// A disk that refuses writes (a file-size limit: EFBIG), then is fixed
/// while herald runs (the limit raised with `prlimit`): herald answers 503
/// and keeps serving meanwhile, then appends again without a restart (the
/// writer reopens the database), and live clients get what follows.
/// Everything acknowledged is in the log, in order, across a kill -9, and
/// nothing refused. Fails if the store stays failed once the disk is fixed
/// ("never reopen").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_refuses_writes_gets_503_then_recovers_in_place() {
    let mut herald = Process::start_with(|dir| disk_config(dir, ""));
    let channel = unique("user");
    publish(&herald, &channel, 0).await;
    herald.stop();
    let file = herald.path("log").join(herald::store::disk::FILE_NAME);
    let size_kib = std::fs::metadata(&file).unwrap().len() / 1024;
    // Writes that would grow the database past ~2 MiB more fail (EFBIG).
    herald.file_size_limit_kib = Some(size_kib + 2048);
    herald.restart();
    let (mut live, _, _) = resume(&herald, &channel, None).await;
    let big = "x".repeat(200 * 1024);
    let post_big = |n: usize| {
        let herald = &herald;
        let body = json!({"channel": channel, "title": format!("n{n}"), "body": big});
        async move {
            let (status, answer) = post(herald, &body).await;
            assert!(matches!(status, 202 | 503), "unexpected {status}: {answer}");
            status == 202
        }
    };
    let mut acknowledged = vec!["n0".to_string()];
    let mut refused = 0;
    let mut n = 1;
    while refused < 3 {
        assert!(n < 200, "the file size limit was never reached");
        if post_big(n).await {
            acknowledged.push(format!("n{n}"));
        } else {
            refused += 1;
        }
        n += 1;
    }
    let (status, _) = reqwest::get(format!("{}/healthz", herald.base()))
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 200, "herald keeps running");
    assert!(
        herald
            .metric(r#"herald_store_errors_total{op="append"}"#)
            .await
            >= 1.0
    );
    assert!(herald.log().contains("disk store commit failed"));

    // The disk is fixed: appends go through again, in the same process.
    let lifted = std::process::Command::new("prlimit")
        .args(["--pid", &herald.pid().to_string(), "--fsize=unlimited"])
        .status()
        .unwrap();
    assert!(lifted.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "appends still refused:\n{}",
            herald.log()
        );
        let ok = post_big(n).await;
        n += 1;
        if ok {
            acknowledged.push(format!("n{}", n - 1));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        assert!(post_big(n).await, "refused after the recovery");
        acknowledged.push(format!("n{n}"));
        n += 1;
    }
    // The live client saw everything acknowledged, in order.
    let seen = live.notifications(acknowledged.len() - 1).await;
    let titles: Vec<&str> = seen.iter().map(|f| f["title"].as_str().unwrap()).collect();
    assert_eq!(titles, acknowledged[1..]);
    assert_eq!(
        common::offsets(&seen),
        (2..=acknowledged.len() as u64).collect::<Vec<_>>(),
        "the offsets go on without a hole"
    );

    herald.kill9();
    herald.file_size_limit_kib = None;
    herald.restart();
    let (_, head, answer) = resume(&herald, &channel, None).await;
    assert!(head.is_empty());
    let epoch = epoch_of(answer["position"].as_str().unwrap());
    let (_, replayed, answer) = resume(&herald, &channel, Some(&format!("{epoch}-0"))).await;
    assert_eq!(answer["recovered"], true);
    // Everything acknowledged is there, in order, and nothing refused.
    let titles: Vec<&str> = replayed
        .iter()
        .map(|f| f["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, acknowledged);
    publish(&herald, &channel, 999).await;
    herald.stop();
}
