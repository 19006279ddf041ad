//! The demo page and the seed article's snippet in a real browser: Debian's
//! Chromium driven by playwright-core (tests/browser/run.mjs) against a
//! herald started here. `scripts/test.sh` installs Chromium and the npm
//! packages first (`scripts/browser.sh`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_snippet_and_demo_page_work_in_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test.sh (or scripts/browser.sh) first"
    );
    let h = common::Herald::start().await;
    let url = h.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("run.mjs")
            .current_dir(&dir)
            .env("HERALD_URL", url)
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser tests failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
    h.stop().await;
}

/// A page that mints its own tokens with WebCrypto (tests/browser/auth.mjs):
/// it receives its own user's notifications only and survives a refresh
/// on the live socket past its first token's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_with_a_token_gets_its_own_notifications_and_survives_a_refresh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test.sh (or scripts/browser.sh) first"
    );
    let h = common::Herald::start_with(|c| {
        common::auth::jwt(c);
        c.auth.leeway_secs = 0;
    })
    .await;
    let url = h.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("auth.mjs")
            .current_dir(&dir)
            .env("HERALD_URL", url)
            .env("HERALD_JWT_SECRET", common::auth::SECRET)
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser auth test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("browser-auth: 1 passed, 0 failed"),
        "{stdout}"
    );
    h.stop().await;
}

/// The rules playground (tests/browser/playground.mjs): a diagnostic at
/// its line, the diff on a recorded event, and an activation a connected
/// client sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_playground_previews_and_activates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test.sh (or scripts/browser.sh) first"
    );
    let h = common::Herald::start().await;
    let channel = common::unique("playground");
    h.publish(
        "t",
        &serde_json::json!({"channel": channel, "title": "before"}),
    )
    .await;
    let url = h.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("playground.mjs")
            .current_dir(&dir)
            .env("HERALD_URL", url)
            .env("HERALD_CHANNEL", channel)
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "playground test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("playground: 1 passed, 0 failed"),
        "{stdout}"
    );
    h.stop().await;
}
