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
