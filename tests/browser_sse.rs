//! Server-Sent Events, rewind and the history API in real Chromium:
//! tests/browser/sse.mjs against two heralds started here, one without
//! authentication (25 notifications kept per channel, for paging across
//! the retention boundary) and one with JWT authentication.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_rewind_and_history_in_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test.sh (or scripts/browser.sh) first"
    );
    let open = common::Herald::start_with(|c| c.store.max_per_channel = 25).await;
    let jwt = common::Herald::start_with(|c| {
        common::auth::jwt(c);
        c.auth.leeway_secs = 0;
    })
    .await;
    let (url, jwt_url) = (open.base.clone(), jwt.base.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("sse.mjs")
            .current_dir(&dir)
            .env("HERALD_URL", url)
            .env("HERALD_JWT_URL", jwt_url)
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
        "browser SSE tests failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("browser-sse: 7 passed, 0 failed"),
        "{stdout}"
    );
    open.stop().await;
    jwt.stop().await;
}
