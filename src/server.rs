//! The HTTP accept loop.
//!
//! hyper's HTTP/1 server with upgrades, driven directly rather than through
//! `axum::serve`, for what a bridge needs: connection caps checked at
//! accept ([`crate::edge::limits`]), a time limit on the request head
//! (slow-loris handshakes), accept errors that back off instead of spinning
//! or ending the server (EMFILE at the open-files cap), and a graceful stop
//! that lets in-flight requests (ingest waiting for its append) finish
//! within the drain time and then drops them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::edge::limits::{Admission, Limits, Tracked};
use crate::tls::Certificates;

/// Accept queue length asked of the kernel (which caps it at
/// `net.core.somaxconn`, 4096 by default).
const ACCEPT_BACKLOG: u32 = 4096;

/// Bind the listener with a deep accept queue. std and tokio ask for 128:
/// when thousands of clients reconnect at once (a reconnect storm after a
/// network blip) the queue overflows, the kernel drops their SYNs, and
/// each of those clients waits a 1 s retransmission before it is accepted.
///
/// A `send_buffer` other than 0 is set on the listener, before `listen`:
/// accepted sockets inherit it (and with it, autotuning switched off), so
/// every connection's kernel send buffer is bounded from its first byte.
pub async fn bind(addr: SocketAddr, send_buffer: usize) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if send_buffer > 0 {
        let bytes = u32::try_from(send_buffer).unwrap_or(u32::MAX);
        socket.set_send_buffer_size(bytes)?;
    }
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// A connection's byte stream, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// How a listener treats its connections.
#[derive(Debug, Clone)]
pub struct Edge {
    pub limits: Arc<Limits>,
    /// Time a client has to send a request head.
    pub header_timeout: Duration,
    /// Time shutdown waits for requests in flight; then they are dropped.
    pub drain: Duration,
    /// TLS (`https`, `wss`) with this listener's certificate.
    pub tls: Option<Arc<Certificates>>,
}

/// Serve `router` on `listener` until `stop` is cancelled, then wait up to
/// `drain` for in-flight requests and drop those still running (a stalled
/// upload never holds the shutdown). Upgraded WebSocket connections are
/// owned by their sessions and not waited for here.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken, edge: Edge) {
    let connections = TaskTracker::new();
    let force = CancellationToken::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                // Usually EMFILE/ENFILE: wait for sockets to close rather
                // than spin; the listener stays open.
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (ticket, limited) = match edge.limits.admit(peer.ip()) {
            Admission::Admitted(ticket) => (ticket, None),
            Admission::Limited(ticket, limit) => (ticket, Some(limit)),
            // Closed before a byte is read: the cheapest refusal.
            Admission::Refused => continue,
        };
        let _ = stream.set_nodelay(true);
        let (io, connection) = Tracked::new(stream, ticket, peer, limited);
        let service = TowerToHyperService::new(router.clone().map_request(
            move |req: hyper::Request<Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(connection.clone());
                req
            },
        ));
        let stop = stop.clone();
        let force = force.clone();
        let header_timeout = edge.header_timeout;
        let acceptor = edge.tls.as_ref().map(|c| c.acceptor());
        let metrics = edge.limits.metrics().clone();
        connections.spawn(async move {
            let io: Box<dyn Stream> = match acceptor {
                None => Box::new(io),
                // The handshake has the request head's time limit.
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => Box::new(tls),
                        Ok(Err(e)) => {
                            metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.cancelled() => {
                    // Finish the request in flight, then close; an
                    // upgraded connection has already left hyper.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = conn => result,
                        // Past the drain: dropped with its socket.
                        () = force.cancelled() => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(edge.drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_ms = edge.drain.as_millis() as u64,
            open = connections.len(),
            "HTTP requests still running at shutdown; closing them"
        );
        force.cancel();
        connections.wait().await;
    }
}
