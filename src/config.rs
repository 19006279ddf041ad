//! Configuration: built-in defaults → TOML file → `HERALD_*` environment.
//!
//! Invariants:
//! - every struct denies unknown fields, so a misspelt key is an error that
//!   names the key instead of a silently ignored setting;
//! - [`Config::validate`] runs after extraction and rejects combinations serde
//!   cannot express (a disk store without a path, a zero-sized queue, ...);
//! - the environment uses `__` for nesting: `HERALD_SERVER__LISTEN=127.0.0.1:9000`.
//!
//! Durations are integers with their unit in the key (`ping_interval_ms`), so
//! they read the same in TOML and in an environment variable.
//!
//! Errors name the file and line (or the environment variable), the key as
//! the docs write it, and the closest known key for a misspelt one (see
//! [`error`]).

mod error;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::{AdminConfig, AuthConfig};
use crate::rules::Format as RulesFormat;
use crate::source::SourceConfig;
pub use crate::store::config::{DEFAULT_KEY_PREFIX, StoreConfig, StoreKind};

/// The whole configuration of one herald process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub rules: RulesConfig,
    pub store: StoreConfig,
    pub delivery: DeliveryConfig,
    /// Clients' tokens and the channel policy.
    pub auth: AuthConfig,
    /// The admin token and listener.
    pub admin: AdminConfig,
    /// The traffic recorder behind `/admin/events` and explain.
    pub recorder: crate::recorder::RecorderConfig,
    /// Event sources. A file that lists `[[sources]]` replaces the default
    /// (one HTTP source); it does not add to it.
    pub sources: Vec<SourceConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            log: LogConfig::default(),
            rules: RulesConfig::default(),
            store: StoreConfig::default(),
            delivery: DeliveryConfig::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            recorder: crate::recorder::RecorderConfig::default(),
            sources: vec![SourceConfig::default_http()],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP server (WebSocket, ingest, health, demo page).
    pub listen: SocketAddr,
    /// Most WebSocket sessions at once; one more is accepted and closed with
    /// 1013 (try again later) so browsers see a reason.
    pub max_connections: usize,
    /// Time a client has to send its HTTP request head.
    pub handshake_timeout_ms: u64,
    /// Time graceful shutdown waits for in-flight work before giving up.
    pub shutdown_timeout_ms: u64,
    /// Kernel send buffer (`SO_SNDBUF`) of every accepted connection, in
    /// bytes; 0 leaves it to the kernel's autotuning. Bounded, so that a
    /// client that stopped reading backs up into its session queue within
    /// seconds and is closed with 4008, instead of hiding for minutes in a
    /// send buffer autotuned to megabytes.
    pub send_buffer_bytes: usize,
    /// Time a request has to send its body after its head; slower ones
    /// are answered 408 and closed.
    pub request_timeout_ms: u64,
    /// Most accepted connections at once, HTTP and WebSocket together;
    /// more are closed at once. Keep it under the open-files limit.
    pub max_http_connections: usize,
    /// Most connections from one IP address; more are answered 429 (HTTP)
    /// or closed with 1013 (WebSocket). 0: no limit.
    pub max_connections_per_ip: usize,
    /// New connections per second from one IP address (a token bucket with
    /// one second of burst); faster ones get 429 / 1013. 0: no limit.
    pub connect_rate_per_ip: u32,
    /// TLS (`https`, `wss`): PEM certificate chain and key, reloaded when
    /// the files change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Origins (`scheme://host[:port]`, globs allowed, `"*"` for all,
    /// `"null"` for `file://` pages) whose browsers may connect, besides
    /// the same origin. Unset: the loopback origins. See `edge::origin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
    /// Host names (globs allowed, `"*"` for all) requests may name. Unset:
    /// `localhost`, `127.0.0.1`, `[::1]` on a loopback listener, any
    /// elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            // Linux doubles it (bookkeeping): 256 KiB of socket memory, a
            // throughput cap of ~2.5 MB/s per client at 100 ms round trip.
            send_buffer_bytes: 128 * 1024,
            tls: None,
            request_timeout_ms: 30_000,
            max_http_connections: 20_000,
            max_connections_per_ip: 1000,
            connect_rate_per_ip: 0,
            allowed_origins: None,
            allowed_hosts: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `herald=debug,warn`). `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// YAML or TOML rules file. Without one the built-in default rule applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Reload the file when it changes; an invalid version is rejected and
    /// the previous one stays live.
    pub watch: bool,
    /// Largest notification (its serialized title, body, data...) a rule
    /// may produce; a larger one fails that rule for that event.
    pub max_notification_bytes: usize,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            path: None,
            watch: true,
            max_notification_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Channels a session joins when it names none (`user:{sub}` is added
    /// when the client is authenticated).
    pub default_channels: Vec<String>,
    /// Bounded outbound queue per session, in frames. On overflow the
    /// session is closed with 4008 (too slow).
    pub queue_capacity: usize,
    /// Interval of server WebSocket pings.
    pub ping_interval_ms: u64,
    /// A session whose pong has not arrived this long after a ping is closed
    /// with 4009.
    pub pong_timeout_ms: u64,
    /// Interval of the comment heartbeat on a Server-Sent Events stream
    /// (proxies close idle responses; clients watch for bytes).
    pub sse_heartbeat_ms: u64,
    /// The `retry:` hint of a Server-Sent Events stream: how long a browser's
    /// `EventSource` waits before it reconnects.
    pub sse_retry_ms: u64,
    /// Largest client message (and frame) accepted; larger ones close the
    /// session with 1009.
    pub max_message_bytes: usize,
    /// Most channels one session may subscribe to.
    pub max_subscriptions: usize,
    /// Notifications read from the store per replay page.
    pub replay_page: usize,
    /// Socket write buffer before a flush; frames queued together are
    /// written with one flush.
    pub write_buffer_bytes: usize,
    /// Read buffer per connection, allocated up front. Small, because most
    /// sessions are idle; tungstenite grows it for a larger message.
    pub read_buffer_bytes: usize,
    /// Notification frames (WebSocket and SSE, live and replayed) carry a
    /// `provenance` object: the rule, the rules version and the source
    /// position that produced them. Off by default, so clients are not
    /// sent what they do not use; the history API and explain always show
    /// it.
    pub provenance: bool,
}

impl ServerConfig {
    /// The origin and host lists.
    fn validate(&self) -> Result<(), (String, String)> {
        use crate::edge::origin::{check_host_pattern, check_origin_pattern};
        let lists = [
            (
                "server.allowed_origins",
                &self.allowed_origins,
                check_origin_pattern as fn(&str) -> Result<(), String>,
            ),
            (
                "server.allowed_hosts",
                &self.allowed_hosts,
                check_host_pattern,
            ),
        ];
        for (key, list, check) in lists {
            for (i, entry) in list.iter().flatten().enumerate() {
                check(entry).map_err(|problem| (format!("{key}[{i}]"), problem))?;
            }
        }
        Ok(())
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            default_channels: vec!["broadcast".into()],
            queue_capacity: 1024,
            ping_interval_ms: 25_000,
            pong_timeout_ms: 20_000,
            sse_heartbeat_ms: 15_000,
            sse_retry_ms: 3_000,
            max_message_bytes: 64 * 1024,
            max_subscriptions: 64,
            replay_page: 1000,
            write_buffer_bytes: 16 * 1024,
            // Allocated up front for every session (most are idle, and
            // client messages are tiny): 4 KiB here cost 3 KiB more per
            // idle connection than 1 KiB (BENCHMARKS.md, idle-memory).
            read_buffer_bytes: 1024,
            provenance: false,
        }
    }
}

/// A configuration that could not be loaded; its message names the file,
/// the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0}: not found")]
    Missing(PathBuf),
    #[error("configuration file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// One line per problem: `FILE:LINE: ` or `HERALD_...: `, then the key
    /// and what is wrong with it.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl Config {
    /// Load defaults, then `file` (when given), then `HERALD_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let mut document = None;
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            // Parsed here too, for the line of every key in messages.
            let parsed = crate::rules::document::Document::parse(&text, RulesFormat::Toml)
                .map_err(|e| {
                    let line = e.line.map(|l| format!(":{l}")).unwrap_or_default();
                    ConfigError::Invalid(vec![format!(
                        "{}{line}: TOML syntax: {}",
                        path.display(),
                        e.message.trim_end()
                    )])
                })?;
            document = Some(parsed);
            figment = figment.merge(Toml::string(&text));
        }
        figment = figment.merge(Env::prefixed("HERALD_").split("__"));
        let sources = error::Sources {
            figment: &figment,
            file: file.zip(document.as_ref()),
        };
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(sources.describe_load(e)))?;
        config.validate().map_err(|(key, problem)| {
            ConfigError::Invalid(vec![sources.describe_invalid(&key, &problem)])
        })?;
        Ok(config)
    }

    /// Checks serde cannot express. Returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let positive = [
            ("server.max_connections", self.server.max_connections),
            (
                "server.max_http_connections",
                self.server.max_http_connections,
            ),
            (
                "server.request_timeout_ms",
                usize::try_from(self.server.request_timeout_ms).unwrap_or(usize::MAX),
            ),
            (
                "rules.max_notification_bytes",
                self.rules.max_notification_bytes,
            ),
            ("store.max_per_channel", self.store.max_per_channel),
            ("store.dedupe_window", self.store.dedupe_window),
            ("delivery.queue_capacity", self.delivery.queue_capacity),
            (
                "delivery.max_message_bytes",
                self.delivery.max_message_bytes,
            ),
            (
                "delivery.max_subscriptions",
                self.delivery.max_subscriptions,
            ),
            ("delivery.replay_page", self.delivery.replay_page),
            (
                "delivery.read_buffer_bytes",
                self.delivery.read_buffer_bytes,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        let send_buffer = self.server.send_buffer_bytes;
        if send_buffer != 0 && !(4096..=(1 << 30)).contains(&send_buffer) {
            return Err((
                "server.send_buffer_bytes".into(),
                "0 (the kernel's autotuning) or 4096 to 1073741824 bytes".into(),
            ));
        }
        if self.delivery.ping_interval_ms == 0 || self.delivery.pong_timeout_ms == 0 {
            return Err((
                "delivery.ping_interval_ms".into(),
                "ping interval and pong timeout must be greater than 0".into(),
            ));
        }
        if self.delivery.sse_heartbeat_ms == 0 {
            return Err((
                "delivery.sse_heartbeat_ms".into(),
                "must be greater than 0".into(),
            ));
        }
        self.server.validate()?;
        self.store.validate()?;
        for channel in &self.delivery.default_channels {
            if let Err(problem) = crate::channel::check(channel) {
                return Err(("delivery.default_channels".into(), problem.to_string()));
            }
        }
        if self.sources.iter().filter(|s| s.is_http()).count() > 1 {
            return Err((
                "sources".into(),
                "at most one source of kind \"http\" (it serves POST /events/{topic})".into(),
            ));
        }
        for (i, source) in self.sources.iter().enumerate() {
            source
                .validate()
                .map_err(|(key, problem)| (format!("sources[{i}].{key}"), problem))?;
        }
        self.auth.validate()?;
        self.admin.validate(self.server.listen)?;
        let open_ingest = self
            .sources
            .iter()
            .filter_map(SourceConfig::http)
            .any(|http| !http.has_api_keys());
        crate::auth::config::check_exposure(self.server.listen, &self.auth, open_ingest)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    fn load_err(file: Option<&str>) -> String {
        match Config::load(file.map(Path::new)) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_serve_http_on_localhost_8080() {
        Jail::expect_with(|_| {
            let config = Config::load(None).expect("defaults load");
            assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(config.store.kind, StoreKind::Memory);
            assert_eq!(config.sources.len(), 1);
            assert!(config.sources[0].is_http());
            assert!(config.rules.path.is_none());
            Ok(())
        });
    }

    #[test]
    fn file_then_environment_override() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "herald.toml",
                "[server]\nlisten = \"127.0.0.1:9000\"\n[store]\nmax_per_channel = 5\n",
            )?;
            jail.set_env("HERALD_STORE__MAX_PER_CHANNEL", "7");
            let config = Config::load(Some(Path::new("herald.toml"))).expect("loads");
            assert_eq!(config.server.listen.port(), 9000);
            assert_eq!(config.store.max_per_channel, 7);
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "herald.toml",
                "[server]\nlisten_addr = \"127.0.0.1:9000\"\n",
            )?;
            let err = load_err(Some("herald.toml"));
            assert!(err.contains("listen_addr"), "{err}");
            assert!(err.contains("herald.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_environment_key_is_named() {
        Jail::expect_with(|jail| {
            jail.set_env("HERALD_SERVER__LISTN", "127.0.0.1:1");
            let err = load_err(None);
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_value_names_key() {
        Jail::expect_with(|jail| {
            jail.create_file("herald.toml", "[server]\nlisten = \"not an address\"\n")?;
            let err = load_err(Some("herald.toml"));
            assert!(err.contains("listen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_tiny_send_buffer_is_rejected_and_zero_means_the_kernels() {
        Jail::expect_with(|jail| {
            jail.create_file("herald.toml", "[server]\nsend_buffer_bytes = 100\n")?;
            let err = load_err(Some("herald.toml"));
            assert!(err.contains("server.send_buffer_bytes"), "{err}");
            jail.create_file("zero.toml", "[server]\nsend_buffer_bytes = 0\n")?;
            let config = Config::load(Some(Path::new("zero.toml"))).expect("0 is valid");
            assert_eq!(config.server.send_buffer_bytes, 0);
            Ok(())
        });
    }

    #[test]
    fn zero_queue_is_rejected() {
        Jail::expect_with(|jail| {
            jail.create_file("herald.toml", "[delivery]\nqueue_capacity = 0\n")?;
            let err = load_err(Some("herald.toml"));
            assert!(err.contains("delivery.queue_capacity"), "{err}");
            assert!(err.contains("herald.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn sources_replace_the_default_list() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "herald.toml",
                "[[sources]]\nkind = \"http\"\nmax_body_bytes = 10\n",
            )?;
            let config = Config::load(Some(Path::new("herald.toml"))).expect("loads");
            assert_eq!(config.sources.len(), 1);
            Ok(())
        });
    }

    #[test]
    fn store_keys_belong_to_their_kind() {
        Jail::expect_with(|jail| {
            for (toml, key) in [
                ("[store]\nkind = \"disk\"\n", "store.path"),
                ("[store]\npath = \"/tmp/x\"\n", "store.path"),
                ("[store]\nkind = \"redis\"\n", "store.url"),
                (
                    "[store]\nkind = \"redis\"\nurl = \"http://x\"\n",
                    "store.url",
                ),
                (
                    "[store]\nkind = \"disk\"\npath = \"d\"\nurl = \"redis://x\"\n",
                    "store.url",
                ),
                (
                    "[store]\nkind = \"redis\"\nurl = \"redis://x\"\npath = \"d\"\n",
                    "store.path",
                ),
                ("[store]\nkey_prefix = \"p:\"\n", "store.key_prefix"),
                ("[store]\ntls_ca_file = \"ca.pem\"\n", "store.tls_ca_file"),
                (
                    "[store]\nkind = \"redis\"\nurl = \"redis://x\"\ntls_ca_file = \"ca.pem\"\n",
                    "store.tls_ca_file",
                ),
                (
                    "[store]\nkind = \"redis\"\nurl = \"redis://x\"\nkey_prefix = \"a b\"\n",
                    "store.key_prefix",
                ),
            ] {
                jail.create_file("herald.toml", toml)?;
                let err = load_err(Some("herald.toml"));
                assert!(err.contains(key), "{toml}: {err}");
            }
            jail.create_file(
                "herald.toml",
                "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n",
            )?;
            let config = Config::load(Some(Path::new("herald.toml"))).expect("loads");
            assert_eq!(config.store.key_prefix(), "herald:");
            jail.set_env("HERALD_STORE__KIND", "disk");
            jail.set_env("HERALD_STORE__PATH", "/var/lib/herald");
            jail.create_file("herald.toml", "")?;
            let config = Config::load(Some(Path::new("herald.toml"))).expect("loads");
            assert_eq!(config.store.kind, StoreKind::Disk);
            Ok(())
        });
    }

    #[test]
    fn kafka_sources_load_and_misspelt_keys_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "herald.toml",
                "[[sources]]\nkind = \"kafka\"\nbrokers = \"k:9092\"\ntopics = [\"orders\"]\n\
                 group_id = \"herald\"\ndead_letter_topic = \"dead\"\n\
                 [sources.properties]\n\"auto.offset.reset\" = \"earliest\"\n",
            )?;
            let config = Config::load(Some(Path::new("herald.toml"))).expect("loads");
            let SourceConfig::Kafka(kafka) = &config.sources[0] else {
                panic!("a kafka source");
            };
            assert_eq!(kafka.topics, ["orders"]);
            assert_eq!(kafka.max_message_bytes, 1024 * 1024);
            assert_eq!(kafka.properties["auto.offset.reset"], "earliest");

            jail.create_file(
                "typo.toml",
                "[[sources]]\nkind = \"kafka\"\nbrokers = \"k:9092\"\ntopics = [\"o\"]\n\
                 group_id = \"g\"\ndeadletter_topic = \"d\"\n",
            )?;
            let err = load_err(Some("typo.toml"));
            assert!(err.contains("deadletter_topic"), "{err}");

            jail.create_file(
                "loop.toml",
                "[[sources]]\nkind = \"kafka\"\nbrokers = \"k:9092\"\ntopics = [\"o\"]\n\
                 group_id = \"g\"\ndead_letter_topic = \"o\"\n",
            )?;
            let err = load_err(Some("loop.toml"));
            assert!(err.contains("sources[0].dead_letter_topic"), "{err}");
            Ok(())
        });
    }

    /// Each message: where (file and line, or the variable), the key as
    /// the docs write it, what is wrong, the closest known key; never
    /// figment's internal `default.` profile or a Rust type name.
    #[test]
    fn errors_give_the_line_the_key_and_a_suggestion() {
        Jail::expect_with(|jail| {
            for (toml, want) in [
                (
                    "[server]\nlisten = \"127.0.0.1:1\"\nmax_conections = 5\n",
                    "herald.toml:3: unknown key `server.max_conections`; \
                     did you mean `server.max_connections`?",
                ),
                (
                    "[server]\nlisten = \"localhost:18303\"\n",
                    "herald.toml:2: `server.listen`: \"localhost:18303\" is not an IP address \
                     and port; a host name is not accepted (use 127.0.0.1:18303 for this \
                     machine only, 0.0.0.0:18303 for every interface)",
                ),
                (
                    "\n[delivery]\nqueue_capacity = \"many\"\n",
                    "herald.toml:3: `delivery.queue_capacity`: expected a whole number, \
                     0 or more, found the text \"many\"",
                ),
                (
                    "[[sources]]\nkind = \"kafak\"\n",
                    &format!(
                        "herald.toml:2: `sources[0].kind`: unknown value \"kafak\"; \
                         did you mean \"kafka\"? (one of {})",
                        crate::event::SourceKind::ALL
                            .iter()
                            .map(|k| format!("{:?}", k.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                (
                    "[[sources]]\nkind = \"http\"\n\nmax_body = 3\n",
                    "herald.toml:4: unknown key `sources[0].max_body`; \
                     did you mean `sources[0].max_body_bytes`?",
                ),
                (
                    "[serve]\nlisten = \"127.0.0.1:1\"\n",
                    "herald.toml:1: unknown key `serve`; did you mean `server`?",
                ),
                (
                    "[store]\nkind = \"redis\"\n",
                    "herald.toml:1: `store.url`: required by kind = \"redis\": redis://host:port",
                ),
                ("[server\nlisten = 1\n", "herald.toml:1: TOML syntax: "),
            ] {
                jail.create_file("herald.toml", toml)?;
                let err = load_err(Some("herald.toml"));
                assert!(err.starts_with(want), "{toml}\n got: {err}\nwant: {want}");
                assert!(!err.contains("default."), "{err}");
            }
            Ok(())
        });
    }

    #[test]
    fn environment_errors_name_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("HERALD_SERVER__MAX_CONECTIONS", "3");
            assert_eq!(
                load_err(None),
                "HERALD_SERVER__MAX_CONECTIONS: unknown key `server.max_conections`; \
                 did you mean HERALD_SERVER__MAX_CONNECTIONS?"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("herald.toml", "[store]\nkind = \"memory\"\n")?;
            jail.set_env("HERALD_STORE__PATH", "/tmp/x");
            let err = load_err(Some("herald.toml"));
            assert!(
                err.starts_with("HERALD_STORE__PATH: `store.path`: only used by"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        Jail::expect_with(|_| {
            let err = load_err(Some("nope.toml"));
            assert!(err.contains("nope.toml"), "{err}");
            Ok(())
        });
    }
}
