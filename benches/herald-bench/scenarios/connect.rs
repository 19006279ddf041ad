//! connect-rate: new sessions per second and server CPU per handshake,
//! without a token and with HS256, RS256, ES256 and EdDSA tokens. Each
//! client opens a WebSocket with its token, waits for `subscribed` and
//! drops the connection; herald verifies the token's signature and claims
//! and checks the channel at every handshake. A forged token must be
//! refused with 4001 (correctness, checked once per case).

use anyhow::{Result, bail};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::{Meter, clients, deadline, herald_servers, runs, unique};
use crate::Opts;
use crate::client::Got;
use crate::report::{Figures, Report};
use crate::server::{Kind, Server, Setup};
use crate::tokens::{Alg, auth};

const NAME: &str = "connect-rate";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    if opts.peer {
        report.note("connect-rate: herald only; the ws peer has no authentication");
    }
    let n = opts
        .clients
        .as_ref()
        .and_then(|c| c.first().copied())
        .unwrap_or(if opts.quick { 200 } else { 5000 });
    for alg in Alg::EACH {
        let case = format!("token={} handshakes={n}", alg.name());
        // With --tls, every handshake also pays for TLS on herald-wss.
        runs(opts, report, NAME, &case, &herald_servers(opts), |kind| {
            measure(opts, kind, alg, n)
        })
        .await?;
    }
    Ok(())
}

async fn measure(opts: &Opts, kind: Kind, alg: Alg, n: usize) -> Result<Figures> {
    let bench_auth = auth(alg)?;
    // This scenario chooses the authentication itself, whatever --token says.
    let setup = Setup {
        env: match &bench_auth {
            Some(a) => a.env.clone(),
            None => vec![("HERALD_AUTH__MODE", "none".to_string())],
        },
        ..Setup::default()
    };
    let server = Server::start_with(kind, opts, &setup)?;
    let channel = unique("connect");
    let end = deadline(opts);
    let mut list = clients(n, server.addr, opts, 1024, |_| channel.clone());
    // A token per client: herald checks a signature at every handshake
    // (it remembers tokens it verified, so one shared token would measure
    // that memory, not the check).
    for (i, c) in list.iter_mut().enumerate() {
        c.dial.token = bench_auth.as_ref().map(|a| a.token(i)).transpose()?;
    }
    let meter = Meter::start(&server);
    let started = Instant::now();
    let done: Vec<Result<()>> = futures_util::stream::iter(list)
        .map(|mut c| async move {
            tokio::time::timeout_at(end, async {
                c.connect().await?;
                c.until_subscribed().await?;
                c.drop_connection();
                Ok::<_, anyhow::Error>(())
            })
            .await
            .map_err(|_| anyhow::anyhow!("handshake timed out"))?
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let m = meter.stop(&server);
    for r in done {
        r?;
    }
    if let Some(a) = &bench_auth {
        // A token signed by no configured key: refused, never subscribed.
        let mut forged = clients(1, server.addr, opts, 1024, |_| channel.clone());
        let mut token = a.token(0)?.to_string();
        token.push_str("AA");
        forged[0].dial.token = Some(token.into());
        forged[0].connect().await?;
        match forged[0].next().await? {
            Got::Closed(Some(4001)) => {}
            other => bail!(
                "a forged {} token was not refused with 4001: {other:?}",
                alg.name()
            ),
        }
    }
    let mut f = Figures::new();
    f.insert("handshakes_per_s", n as f64 / secs);
    m.cpu_figures(&mut f, "server_cpu_us_per_handshake", n as f64);
    server.stop();
    Ok(f)
}
