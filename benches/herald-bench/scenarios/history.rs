//! history: one reader paging through a channel's retained history with
//! `GET /channels/{channel}/notifications` (limit 1000), forwards with
//! `after` and backwards with `before`. Notifications/s served and server
//! CPU per notification; every page is checked to be contiguous and the
//! whole history read exactly once per pass.

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::{Meter, deadline, runs, unique};
use crate::Opts;
use crate::produce::{Producer, Route};
use crate::report::{Figures, Report};
use crate::server::{Kind, Server};

const NAME: &str = "history";
const LIMIT: usize = 1000;

#[derive(Deserialize)]
struct Page {
    notifications: Vec<Note>,
    position: String,
    recovered: bool,
    more: bool,
}

#[derive(Deserialize)]
struct Note {
    offset: u64,
}

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    // The memory store keeps 10 000 per channel by default.
    let events = opts
        .events
        .unwrap_or(if opts.quick { 2_000 } else { 10_000 })
        .min(10_000);
    let passes = if opts.quick { 2 } else { 20 };
    for direction in ["after", "before"] {
        let case = format!("events={events} limit={LIMIT} direction={direction}");
        runs(opts, report, NAME, &case, &[Kind::Herald], |kind| {
            measure(opts, kind, events, passes, direction == "after")
        })
        .await?;
    }
    Ok(())
}

async fn measure(
    opts: &Opts,
    kind: Kind,
    events: u64,
    passes: usize,
    forward: bool,
) -> Result<Figures> {
    let server = Server::start(kind, opts, &[])?;
    let channel = unique("history");
    let end = deadline(opts);
    let mut producer = Producer::new(
        &server.http_base(),
        "bench",
        Route::Channel(channel.clone()),
        100,
    )?;
    producer.flood(0..events, 100, 4, None, end).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/channels/{channel}/notifications", server.http_base());
    let get = |query: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let res = http.get(format!("{url}?{query}")).send().await?;
            if !res.status().is_success() {
                bail!("GET {url}?{query}: {}", res.status());
            }
            res.json::<Page>().await.context("a history page")
        }
    };
    let head = get("limit=1".into()).await?;
    let epoch = head
        .position
        .rsplit_once('-')
        .map(|(e, _)| e.to_string())
        .context("a position")?;
    let meter = Meter::start(&server);
    let (mut served, mut pages) = (0u64, 0u64);
    for _ in 0..passes {
        let mut cursor = if forward {
            format!("{epoch}-0")
        } else {
            format!("{epoch}-{}", events + 1)
        };
        let mut seen = Vec::with_capacity(events as usize);
        loop {
            let dir = if forward { "after" } else { "before" };
            let page = get(format!("{dir}={cursor}&limit={LIMIT}")).await?;
            pages += 1;
            if !page.recovered {
                bail!("{dir}={cursor}: recovered: false");
            }
            let offsets: Vec<u64> = page.notifications.iter().map(|n| n.offset).collect();
            if offsets.windows(2).any(|w| w[1] != w[0] + 1) {
                bail!("{dir}={cursor}: a page with a hole: {offsets:?}");
            }
            served += offsets.len() as u64;
            seen.extend(offsets);
            cursor = page.position;
            if !page.more {
                break;
            }
        }
        seen.sort_unstable();
        if seen != (1..=events).collect::<Vec<_>>() {
            bail!("a pass did not read offsets 1..={events} exactly once");
        }
    }
    let m = meter.stop(&server);
    let mut f = Figures::new();
    f.insert("notifications_per_s", served as f64 / m.secs);
    f.insert("pages_per_s", pages as f64 / m.secs);
    m.cpu_figures(&mut f, "cpu_us_per_notification", served as f64);
    f.insert("seconds", m.secs);
    server.stop();
    Ok(f)
}
