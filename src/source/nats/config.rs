//! `[[sources]] kind = "nats"`: the settings, the checks serde cannot
//! express, and what they become for async-nats (connection options, the
//! durable consumer's configuration).

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use serde::{Deserialize, Serialize};

use super::NatsError;
use crate::source::{Build, Settings, Source, SourceError};

/// `[[sources]] kind = "nats"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// `nats://host:4222` (`tls://` for TLS); user and password may be in it.
    pub url: String,
    /// The JetStream stream to consume (it must exist).
    pub stream: String,
    /// Filter subjects (wildcards allowed); empty: the whole stream.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The durable pull consumer herald creates or updates on the stream.
    #[serde(default = "default_durable")]
    pub durable: String,
    /// Time JetStream waits for an acknowledgement before redelivering.
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Messages delivered and not yet acknowledged, at most.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: u32,
    /// Subject that receives poison messages (a stream must capture it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_subject: Option<String>,
    /// Larger message payloads are poison (`too_large`).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Bound of one connection attempt (and of a dead-letter publish).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest pause between reconnection attempts.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// User and password (or put them in `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Token authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A `.creds` file (user JWT and NKey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// PEM CA certificates the server's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Refuse a connection without TLS (implied by `tls://` and the files).
    #[serde(default)]
    pub tls_required: bool,
}

fn default_durable() -> String {
    "herald".into()
}
fn default_ack_wait_ms() -> u64 {
    30_000
}
fn default_max_ack_pending() -> u32 {
    256
}
fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}

impl NatsSourceConfig {
    /// A config with every optional key at its default.
    pub fn new(url: impl Into<String>, stream: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: stream.into(),
            subjects: Vec::new(),
            durable: default_durable(),
            ack_wait_ms: default_ack_wait_ms(),
            max_ack_pending: default_max_ack_pending(),
            dead_letter_subject: None,
            max_message_bytes: default_max_message_bytes(),
            connect_timeout_ms: default_connect_timeout_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            user: None,
            password: None,
            token: None,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
        }
    }
}

impl Settings for NatsSourceConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, problem: &str| Err((key.to_string(), problem.to_string()));
        parse_url(&self.url).map_err(|e| ("url".to_string(), e))?;
        check_name("stream", &self.stream)?;
        check_name("durable", &self.durable)?;
        for (i, s) in self.subjects.iter().enumerate() {
            check_subject(&format!("subjects[{i}]"), s, true)?;
        }
        if let Some(dl) = &self.dead_letter_subject {
            check_subject("dead_letter_subject", dl, false)?;
            if self.subjects.iter().any(|f| subject_matches(f, dl)) {
                return err(
                    "dead_letter_subject",
                    "is selected by `subjects`: poison would come back to herald",
                );
            }
        }
        let positive = [
            ("ack_wait_ms", self.ack_wait_ms),
            ("max_ack_pending", u64::from(self.max_ack_pending)),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("reconnect_max_ms", self.reconnect_max_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return err(key, "must be greater than 0");
            }
        }
        if self.user.is_some() != self.password.is_some() {
            let key = if self.user.is_some() {
                "password"
            } else {
                "user"
            };
            return err(key, "`user` and `password` go together");
        }
        let methods = [
            self.user.is_some(),
            self.token.is_some(),
            self.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return err(
                "token",
                "choose one of `user`/`password`, `token` and `creds_file`",
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let key = if self.tls_cert_file.is_some() {
                "tls_key_file"
            } else {
                "tls_cert_file"
            };
            return err(key, "`tls_cert_file` and `tls_key_file` go together");
        }
        Ok(())
    }

    fn build(&self, _: &Build<'_>) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(super::NatsSource::new(self.clone())))
    }
}

impl NatsSourceConfig {
    /// The URL without its password, for logs and `/readyz`.
    pub fn endpoint(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut u) => {
                let _ = u.set_password(None);
                u.to_string()
            }
            Err(_) => "<invalid url>".into(),
        }
    }

    /// Connection options: name, credentials, TLS. Fails on a creds file
    /// that cannot be read.
    pub(super) async fn connect_options(&self) -> Result<async_nats::ConnectOptions, NatsError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("herald:{}", self.durable))
            .connection_timeout(Duration::from_millis(self.connect_timeout_ms))
            .request_timeout(Some(Duration::from_millis(self.connect_timeout_ms)))
            // A lost connection ends the session; herald reconnects itself.
            .max_reconnects(1)
            .ignore_discovered_servers();
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &self.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| NatsError::Credentials(path.display().to_string(), e))?;
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let tls = self.tls_required
            || self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.url.starts_with("tls://");
        Ok(options.require_tls(tls))
    }

    /// The durable pull consumer's settings.
    pub(super) fn consumer_config(&self) -> pull::Config {
        let mut config = pull::Config {
            durable_name: Some(self.durable.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_millis(self.ack_wait_ms),
            max_ack_pending: i64::from(self.max_ack_pending),
            ..pull::Config::default()
        };
        match self.subjects.as_slice() {
            [] => {}
            [one] => config.filter_subject = one.clone(),
            many => config.filter_subjects = many.to_vec(),
        }
        config
    }

    /// Whether the consumer receives messages on `subject`.
    pub(super) fn selects(&self, subject: &str) -> bool {
        self.subjects.is_empty() || self.subjects.iter().any(|f| subject_matches(f, subject))
    }
}

/// Stream and consumer names: no whitespace, `.`, `*`, `>` or path
/// separators (JetStream uses them in API subjects and file names).
fn check_name(key: &str, name: &str) -> Result<(), (String, String)> {
    let bad = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\');
    if name.is_empty() || name.len() > 255 || name.contains(bad) {
        return Err((
            key.into(),
            "must be 1 to 255 bytes without whitespace, '.', '*', '>', '/' or '\\'".into(),
        ));
    }
    Ok(())
}

/// A subject: dot-separated non-empty tokens without whitespace; with
/// `wildcards`, a token may be `*`, and the last one `>`.
fn check_subject(key: &str, subject: &str, wildcards: bool) -> Result<(), (String, String)> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    for (i, token) in tokens.iter().enumerate() {
        let problem = if token.is_empty() || token.contains(char::is_whitespace) {
            Some("has an empty token or whitespace")
        } else if !wildcards && (*token == "*" || *token == ">") {
            Some("must not contain wildcards")
        } else if *token == ">" && i != last {
            Some("may use '>' only as its last token")
        } else if token.len() > 1 && token.contains(['*', '>']) {
            Some("may use '*' and '>' only as whole tokens")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err((key.into(), format!("{subject:?} {problem}")));
        }
    }
    Ok(())
}

/// Whether the subject filter `filter` selects the literal `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for f in filter.split('.') {
        match (f, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(s)) if f == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Parse a NATS URL. The error never repeats the URL (it may hold a
/// password).
fn parse_url(raw: &str) -> Result<ServerAddr, String> {
    let scheme = raw.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("nats" | "tls")) {
        return Err("expected nats://host:port or tls://host:port".into());
    }
    raw.parse::<ServerAddr>()
        .map_err(|e| format!("not a NATS URL: {}", e.to_string().replace(raw, "<url>")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NatsSourceConfig {
        NatsSourceConfig::new("nats://herald:secret@127.0.0.1:4222", "EVENTS")
    }

    #[test]
    fn validation_names_the_key() {
        assert!(config().validate().is_ok());
        let key = |edit: fn(&mut NatsSourceConfig)| {
            let mut c = config();
            edit(&mut c);
            c.validate().unwrap_err().0
        };
        assert_eq!(key(|c| c.url = "http://x:1".into()), "url");
        assert_eq!(key(|c| c.stream = "a.b".into()), "stream");
        assert_eq!(key(|c| c.durable = "has space".into()), "durable");
        assert_eq!(key(|c| c.subjects = vec!["a..b".into()]), "subjects[0]");
        assert_eq!(key(|c| c.subjects = vec!["a.>.b".into()]), "subjects[0]");
        assert_eq!(key(|c| c.subjects = vec!["a.b*".into()]), "subjects[0]");
        assert_eq!(
            key(|c| c.dead_letter_subject = Some("dl.*".into())),
            "dead_letter_subject"
        );
        assert_eq!(
            key(|c| {
                c.subjects = vec!["orders.>".into()];
                c.dead_letter_subject = Some("orders.dead".into());
            }),
            "dead_letter_subject"
        );
        assert_eq!(key(|c| c.max_ack_pending = 0), "max_ack_pending");
        assert_eq!(key(|c| c.user = Some("u".into())), "password");
        assert_eq!(
            key(|c| {
                c.token = Some("t".into());
                c.creds_file = Some("x.creds".into());
            }),
            "token"
        );
        assert_eq!(
            key(|c| c.tls_cert_file = Some("c.pem".into())),
            "tls_key_file"
        );
        let mut c = config();
        c.url = "nats://u:secret@[bad".into();
        let (_, problem) = c.validate().unwrap_err();
        assert!(!problem.contains("secret"), "{problem}");
        let endpoint = config().endpoint();
        assert!(!endpoint.contains("secret"), "{endpoint}");
        assert!(endpoint.contains("127.0.0.1:4222"), "{endpoint}");
    }

    #[test]
    fn filters_match_like_the_server() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches(">", "x"));
        let mut c = config();
        assert!(c.selects("anything"));
        c.subjects = vec!["a.*".into(), "b.>".into()];
        assert!(c.selects("a.x") && c.selects("b.x.y") && !c.selects("c.x"));
    }

    #[test]
    fn one_subject_is_a_filter_several_are_filters() {
        let mut c = config();
        assert!(c.consumer_config().filter_subject.is_empty());
        c.subjects = vec!["a.>".into()];
        assert_eq!(c.consumer_config().filter_subject, "a.>");
        c.subjects = vec!["a.>".into(), "b".into()];
        let consumer = c.consumer_config();
        assert!(consumer.filter_subject.is_empty());
        assert_eq!(consumer.filter_subjects, vec!["a.>", "b"]);
        assert_eq!(consumer.ack_policy, AckPolicy::Explicit);
        assert_eq!(consumer.max_ack_pending, 256);
    }
}
