//! Wiring: builds the pipeline from the configuration, starts it, and owns
//! the ordered shutdown.
//!
//! Shutdown order (each step bounded by `server.shutdown_timeout_ms`):
//! 1. sources stop consuming and finish their in-flight appends, then
//!    acknowledge them at their brokers; the HTTP server stops accepting and
//!    lets running ingest requests finish;
//! 2. sessions are closed with 1001 (going away: reconnect with last ids);
//! 3. the store is flushed and closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::admin::AdminToken;
use crate::auth::{Auth, AuthError, AuthMode};
use crate::config::Config;
use crate::delivery::hub::Hub;
use crate::delivery::session::SessionContext;
use crate::delivery::ws::{self, Gateway};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::rules::RulesError;
use crate::rules::versions::Versions;
use crate::source::{Build, Readiness, SourceConfig, SourceContext, SourceError};
use crate::store::{OpenError, Store};
use crate::tls::Certificates;

/// Why herald could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Every problem, one per line, each naming the file and line.
    #[error("{0}")]
    Rules(#[from] RulesError),
    /// Keys, secrets or key files named by `[auth]`, `[admin]` or a source.
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Store(#[from] OpenError),
    /// `[server.tls]` / `[admin.tls]` files.
    #[error("{key}: {source}")]
    Tls {
        key: &'static str,
        source: crate::tls::TlsError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// Exit status: 2 for configuration problems (config, rules, source
    /// and store settings), 1 for the environment (the port is taken, the
    /// disk store is held by another process).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Rules(_)
            | StartError::Auth(_)
            | StartError::Source(SourceError::Config { .. } | SourceError::Auth(_))
            | StartError::Store(OpenError::Config(_))
            | StartError::Tls { .. } => 2,
            _ => 1,
        }
    }
}

/// A started herald.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    pub metrics: Arc<Metrics>,
    pub pipeline: Arc<Pipeline>,
    pub readiness: Readiness,
    pub versions: Arc<Versions>,
}

impl Running {
    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the admin listener, when `[admin] listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// A token that starts the ordered shutdown when cancelled.
    pub fn stopper(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Shut down in order and wait for it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Wait until something cancels the stopper and shutdown completes.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Build and start everything `config` describes.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()).with_provenance(
        crate::delivery::protocol::Provenance::when(config.delivery.provenance),
    ));
    let version_store =
        crate::rules::versions::store::open(&config.store).map_err(OpenError::Config)?;
    let (rules, rules_text) =
        crate::rules::versions::initial(config.rules.path.as_deref(), &*version_store).await?;
    let store = crate::store::open(&config.store, hub.clone(), metrics.clone()).await?;
    metrics.rules_loaded(true);
    tracing::info!(
        origin = rules.origin(),
        rules = rules.len(),
        version = rules.content_id(),
        "rules loaded"
    );
    let pipeline = Arc::new(
        Pipeline::new(
            rules,
            store.clone(),
            metrics.clone(),
            config.rules.max_notification_bytes,
        )
        .with_recorder(crate::recorder::Recorder::new(&config.recorder)),
    );
    let versions = Versions::start(
        version_store,
        pipeline.clone(),
        config.rules.path.clone(),
        rules_text,
    )
    .await;

    let readiness = Readiness::default();
    let mut sources = Vec::new();
    let mut source_routes = Vec::new();
    for (index, source_config) in config.sources.iter().enumerate() {
        let name = source_name(&config.sources, index);
        let source = source_config.build(&Build {
            index,
            name: &name,
            hints: store.hints(),
            pipeline: &pipeline,
        })?;
        source_routes.extend(source.routes());
        sources.push((name, source));
    }

    let stop = CancellationToken::new();
    let auth = Auth::start(&config.auth, stop.clone()).await?;
    auth.warn_ungranted(&config.delivery.default_channels);
    let admin_token = Arc::new(AdminToken::load(&config.admin)?);
    warn_if_exposed(&config, admin_token.is_set());

    let tls = load_tls(config.server.tls.as_ref(), "server.tls")?;
    let admin_tls = load_tls(config.admin.tls.as_ref(), "admin.tls")?;
    let addr = config.server.listen;
    let listener = crate::server::bind(addr, config.server.send_buffer_bytes)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let admin_listener = match config.admin.listen {
        Some(admin) => {
            let l = crate::server::bind(admin, 0)
                .await
                .map_err(|source| StartError::Bind {
                    addr: admin,
                    source,
                })?;
            let bound = l.local_addr().map_err(|source| StartError::Bind {
                addr: admin,
                source,
            })?;
            Some((l, bound))
        }
        None => None,
    };

    let sources_stop = CancellationToken::new();
    let http_stop = CancellationToken::new();
    let sessions_stop = CancellationToken::new();
    let source_tasks = TaskTracker::new();
    for (name, source) in sources {
        readiness.register(&name);
        let ctx = SourceContext {
            name: name.clone(),
            pipeline: pipeline.clone(),
            shutdown: sources_stop.clone(),
            readiness: readiness.clone(),
        };
        source_tasks.spawn(async move {
            if let Err(e) = source.run(ctx.clone()).await {
                ctx.set_ready(false, e.to_string());
                tracing::error!(source = %name, error = %e, "source stopped");
            }
        });
    }
    source_tasks.close();

    let gateway = Arc::new(Gateway {
        shared: Arc::new(SessionContext {
            hub,
            store: store.clone(),
            metrics: metrics.clone(),
            config: config.delivery.clone(),
            auth,
            shutdown: sessions_stop.clone(),
        }),
        connections: Arc::new(Semaphore::new(config.server.max_connections)),
        max_notification_bytes: config.rules.max_notification_bytes,
        sessions: TaskTracker::new(),
        streams_stop: http_stop.clone(),
    });
    let admin = crate::admin::routes(
        crate::admin::Admin {
            readiness: readiness.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            versions: versions.clone(),
            recorder: pipeline.recorder().cloned(),
            auth: gateway.shared.auth.clone(),
        },
        admin_token.clone(),
    );
    let (public_admin, admin_router) = match admin_listener {
        Some(_) => (None, Some(admin.merge(crate::admin::health_routes()))),
        None => (Some(admin), None),
    };
    let router = router(&gateway, public_admin, source_routes);
    let router = edge_checks(router, addr, &config, &metrics);
    let admin_router = admin_router.map(|r| match admin_listener.as_ref() {
        Some((_, bound)) => edge_checks(r, *bound, &config, &metrics),
        None => r,
    });

    let drain = Duration::from_millis(config.server.shutdown_timeout_ms);
    let server = tokio::spawn(crate::server::serve(
        listener,
        router,
        http_stop.clone(),
        listener_edge(&config, &metrics, tls.clone()),
    ));
    let (admin_server, admin_addr) = match (admin_listener, admin_router) {
        (Some((listener, bound)), Some(router)) => {
            tracing::info!(addr = %bound, "admin endpoints listening");
            // Caps of its own: a flood on the public listener leaves
            // /metrics and /readyz reachable.
            let task = tokio::spawn(crate::server::serve(
                listener,
                router,
                http_stop.clone(),
                listener_edge(&config, &metrics, admin_tls.clone()),
            ));
            (Some(task), Some(bound))
        }
        _ => (None, None),
    };
    let maintenance = spawn_maintenance(store.clone(), config.store.max_age_secs, stop.clone());
    let watcher = match (&config.rules.path, config.rules.watch) {
        (Some(path), true) => Some(crate::rules::watch::spawn(
            path.clone(),
            versions.clone(),
            stop.clone(),
        )),
        _ => None,
    };
    let follower = versions.spawn_follower(stop.clone());
    let mut reloads = Vec::new();
    for (certificates, listener) in [(&tls, "server"), (&admin_tls, "admin")] {
        if let Some(c) = certificates {
            reloads.push(c.spawn_reload(listener, metrics.clone(), stop.clone()));
        }
    }
    tracing::info!(
        %addr,
        tls = tls.is_some(),
        store = config.store.kind.as_str(),
        "herald listening"
    );

    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            tracing::info!("shutting down");
            sources_stop.cancel();
            http_stop.cancel();
            if tokio::time::timeout(drain, source_tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("sources still running at shutdown");
            }
            let _ = server.await;
            if let Some(admin) = admin_server {
                let _ = admin.await;
            }
            sessions_stop.cancel();
            gateway.sessions.close();
            if tokio::time::timeout(drain, gateway.sessions.wait())
                .await
                .is_err()
            {
                tracing::warn!("sessions still open at shutdown");
            }
            let _ = maintenance.await;
            for r in reloads {
                let _ = r.await;
            }
            if let Some(w) = watcher {
                let _ = w.await;
            }
            if let Some(f) = follower {
                let _ = f.await;
            }
            if let Err(e) = store.close().await {
                tracing::error!(error = %e, "store close failed");
            }
            tracing::info!("shutdown complete");
        }
    });
    Ok(Running {
        addr,
        admin_addr,
        stop,
        task,
        metrics,
        pipeline,
        readiness,
        versions,
    })
}

/// `http`, or `kafka-2` when several sources share a kind.
fn source_name(sources: &[SourceConfig], index: usize) -> String {
    let kind = sources[index].kind();
    if sources.iter().filter(|s| s.kind() == kind).count() > 1 {
        format!("{kind}-{index}")
    } else {
        kind.to_string()
    }
}

/// The public listener's routes; `admin` when the admin surface is not on
/// a listener of its own; the sources' routes (`POST /events/{topic}`).
fn router(gateway: &Arc<Gateway>, admin: Option<Router>, sources: Vec<Router>) -> Router {
    let mut router = Router::new()
        .route("/", get(|| async { Html(crate::delivery::DEMO_PAGE) }))
        .route("/client.js", get(crate::delivery::client_js))
        .route(
            "/notifications",
            get(ws::upgrade).with_state(gateway.clone()),
        )
        .route(
            "/channels/{channel}/notifications",
            get(crate::delivery::history::notifications).with_state(gateway.shared.clone()),
        )
        .merge(crate::admin::health_routes());
    if let Some(admin) = admin {
        router = router.merge(admin);
    }
    for routes in sources {
        router = router.merge(routes);
    }
    router
}

/// A listener's connection caps and timeouts.
fn listener_edge(
    config: &Config,
    metrics: &Arc<Metrics>,
    tls: Option<Arc<Certificates>>,
) -> crate::server::Edge {
    let server = &config.server;
    crate::server::Edge {
        limits: crate::edge::limits::Limits::new(
            server.max_http_connections,
            server.max_connections_per_ip,
            server.connect_rate_per_ip,
            metrics.edge.clone(),
        ),
        header_timeout: Duration::from_millis(server.handshake_timeout_ms),
        drain: Duration::from_millis(server.shutdown_timeout_ms),
        tls,
    }
}

/// The certificate pair of `[key]`, when set.
fn load_tls(
    config: Option<&crate::tls::TlsConfig>,
    key: &'static str,
) -> Result<Option<Arc<Certificates>>, StartError> {
    config
        .map(|c| Certificates::load(c).map_err(|source| StartError::Tls { key, source }))
        .transpose()
}

/// Wrap `router` (all its routes) in the edge's checks for a listener
/// bound to `addr`: caps and request deadlines, then Origin and Host. The
/// lists were checked by `Config::validate`.
fn edge_checks(
    router: Router,
    addr: SocketAddr,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Router {
    let server = &config.server;
    let policy = crate::edge::origin::Policy::new(
        addr,
        server.allowed_origins.as_deref(),
        server.allowed_hosts.as_deref(),
    )
    .unwrap_or_else(|problem| {
        // Unreachable after validation; refuse every origin rather than
        // run without the check.
        tracing::error!(problem, "server.allowed_origins / allowed_hosts");
        crate::edge::origin::Policy::new(addr, Some(&[]), Some(&[]))
            .expect("empty lists always compile")
    });
    let request_timeout = Duration::from_millis(server.request_timeout_ms);
    router
        .layer(axum::middleware::from_fn_with_state(
            (Arc::new(policy), metrics.edge.clone()),
            crate::edge::origin::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            (request_timeout, metrics.edge.clone()),
            crate::edge::limits::guard,
        ))
}

/// Say at start what is open to whoever reaches the listener.
fn warn_if_exposed(config: &Config, admin_token: bool) {
    let listen = config.server.listen;
    if config.auth.mode == AuthMode::None {
        tracing::warn!(
            %listen,
            "authentication is OFF: any client can subscribe to any channel; \
             keep herald on a private address or set auth.mode = \"jwt\""
        );
    }
    let admin_public = config.admin.listen.is_none();
    if admin_public && !admin_token && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "/metrics and /readyz are public on a non-loopback address; \
             set admin.token or admin.listen"
        );
    }
}

/// Trim expired notifications in the background, off the append path.
fn spawn_maintenance(
    store: Arc<dyn Store>,
    max_age_secs: u64,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if max_age_secs == 0 {
            return;
        }
        // Check often enough that entries outlive the limit by at most ~10 %.
        let every = Duration::from_secs((max_age_secs / 10).clamp(1, 60));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match store.trim_expired(crate::clock::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(trimmed = n, "retention trimmed expired notifications"),
                Err(e) => tracing::warn!(error = %e, "retention pass failed"),
            }
        }
    })
}
