//! Sources: where events come from.
//!
//! A source turns broker messages (or HTTP requests) into [`Event`]s, hands
//! each to [`Pipeline::submit`] in its order, and acknowledges at the broker
//! only after the returned future resolves.
//!
//! A source kind is one module here (a file or a folder) and one line in
//! the list of kinds (`source_kinds!` in `event.rs`), which makes both
//! [`SourceKind`] and [`SourceConfig`]. The module gives:
//! - its settings (the `[[sources]]` entry, `deny_unknown_fields`)
//!   implementing [`Settings`]: the checks serde cannot express, and
//!   `build`, which makes the runnable source;
//! - the runnable source implementing [`Source`]: `run`, and, when it
//!   serves requests on the main HTTP server, `routes`;
//! - its own metrics, if any: families `herald_<kind>_*` it asks
//!   [`Metrics::family`](crate::metrics::Metrics::family) for (registered
//!   once, shared by every source of the kind, labelled by source name).
//!
//! Adding a kind changes nothing else in `src/`.
//!
//! [`Event`]: crate::event::Event

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::auth::AuthError;
use crate::event::SourceKind;
use crate::pipeline::Pipeline;
use crate::store::Hints;

/// Makes the source modules and [`SourceConfig`] from the list of kinds.
macro_rules! source_config {
    ($($(#[$doc:meta])* $variant:ident $name:literal $module:ident :: $settings:ident,)*) => {
        $(pub mod $module;)*

        /// One `[[sources]]` entry; `kind` picks the settings.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub enum SourceConfig {
            $($(#[$doc])* #[serde(rename = $name)] $variant($module::$settings),)*
        }

        impl SourceConfig {
            pub fn kind(&self) -> SourceKind {
                match self {
                    $(SourceConfig::$variant(_) => SourceKind::$variant,)*
                }
            }

            fn settings(&self) -> &dyn Settings {
                match self {
                    $(SourceConfig::$variant(c) => c,)*
                }
            }
        }
    };
}
crate::event::source_kinds!(source_config);

impl SourceConfig {
    pub fn default_http() -> Self {
        SourceConfig::Http(http::HttpSourceConfig::default())
    }

    pub fn is_http(&self) -> bool {
        self.http().is_some()
    }

    /// The HTTP source's settings, when this is one.
    pub fn http(&self) -> Option<&http::HttpSourceConfig> {
        if let SourceConfig::Http(c) = self {
            Some(c)
        } else {
            None
        }
    }

    /// Checks serde cannot express: the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.settings().validate()
    }

    /// Build the runnable source.
    pub fn build(&self, build: &Build<'_>) -> Result<Box<dyn Source>, SourceError> {
        self.settings().build(build)
    }
}

/// The settings of one source kind: its `[[sources]]` entry.
pub trait Settings {
    /// Checks serde cannot express: the offending key (within the entry)
    /// and why.
    fn validate(&self) -> Result<(), (String, String)>;

    /// The runnable source. Fails with [`SourceError::Config`] when its
    /// client rejects the settings, [`SourceError::Auth`] when a key file
    /// it names is unusable.
    fn build(&self, build: &Build<'_>) -> Result<Box<dyn Source>, SourceError>;
}

/// What building a source gets.
#[derive(Debug)]
pub struct Build<'a> {
    /// Its position in `[[sources]]`, for keys in errors
    /// (`sources[<index>].<key>`).
    pub index: usize,
    /// Its unique name, for logs, readiness and metrics.
    pub name: &'a str,
    /// The node's store's hints (some defaults depend on them).
    pub hints: Hints,
    pub pipeline: &'a Arc<Pipeline>,
}

/// A running source. `run` consumes until `ctx.shutdown` is cancelled, then
/// finishes its in-flight appends, acknowledges them and returns.
pub trait Source: Send + 'static {
    /// Routes it serves on the main HTTP server, merged in before the
    /// server listens. None by default.
    fn routes(&self) -> Option<Router> {
        None
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>>;
}

/// What a running source gets.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Unique name, for logs, readiness and metrics.
    pub name: String,
    pub pipeline: Arc<Pipeline>,
    pub shutdown: CancellationToken,
    pub readiness: Readiness,
}

impl SourceContext {
    /// Report whether this source is connected to its broker.
    pub fn set_ready(&self, ready: bool, detail: impl Into<String>) {
        self.readiness.set(&self.name, ready, detail.into());
    }
}

/// A source that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Its configuration is unusable (a bad property, a bad URL): retrying
    /// cannot help.
    #[error("source {source_name}: configuration: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    /// It failed while running.
    #[error("source {source_name}: {message}")]
    Failed {
        source_name: String,
        message: String,
    },
    /// A key or key file it names is unusable: retrying cannot help.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Per-source connection state, shown at `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<BTreeMap<String, SourceState>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceState {
    pub ready: bool,
    pub detail: String,
}

impl Readiness {
    /// Register a source as not yet connected.
    pub fn register(&self, name: &str) {
        self.set(name, false, "starting".into());
    }

    pub fn set(&self, name: &str, ready: bool, detail: String) {
        crate::sync::lock(&self.inner).insert(name.to_string(), SourceState { ready, detail });
    }

    /// Every source's state, and whether all are ready.
    pub fn snapshot(&self) -> (bool, BTreeMap<String, SourceState>) {
        let states = crate::sync::lock(&self.inner).clone();
        (states.values().all(|s| s.ready), states)
    }
}
