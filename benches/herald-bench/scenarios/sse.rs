//! sse-fanout: the fanout workload with the clients reading Server-Sent
//! Events, beside the same clients on WebSockets in the same run (herald
//! only: the comparison is between herald's two transports). Server CPU per
//! delivery of SSE over WebSocket, target ≤ 1.5.

use anyhow::Result;

use super::{fanout, runs};
use crate::Opts;
use crate::report::{Limit, Report};
use crate::server::Kind;

const NAME: &str = "sse-fanout";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    let counts = opts
        .clients
        .clone()
        .unwrap_or(if opts.quick { vec![20] } else { vec![1000] });
    let deliveries = opts
        .deliveries
        .unwrap_or(if opts.quick { 2_000 } else { 1_000_000 });
    let payload = 100;
    for &c in &counts {
        for (transport, sse) in [("websocket", false), ("sse", true)] {
            let case = format!("clients={c} transport={transport}");
            runs(opts, report, NAME, &case, &[Kind::Herald], |kind| {
                fanout::measure(opts, kind, c, payload, deliveries, sse)
            })
            .await?;
        }
    }
    let key = "cpu_us_per_delivery";
    let per = |transport: &str| {
        report.median(
            NAME,
            &format!("clients=1000 transport={transport}"),
            "herald",
            key,
        )
    };
    let ratio = match (per("sse"), per("websocket")) {
        (Some(s), Some(w)) if w > 0.0 => Some(s / w),
        _ => None,
    };
    report.target(
        "sse-fanout: server CPU per delivery at 1000 clients, SSE/WebSocket",
        ratio,
        Limit::AtMost(1.5),
    );
    Ok(())
}
