//! `[[sources]] kind = "amqp"`: the settings and the checks serde cannot
//! express.

use lapin::uri::AMQPUri;
use serde::{Deserialize, Serialize};

use crate::source::{Build, Settings, Source, SourceError};

/// AMQP names (queues, exchanges, routing keys) are short strings.
const MAX_NAME_BYTES: usize = 255;

/// `[[sources]] kind = "amqp"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    /// `amqp://user:password@host:5672/%2f` (`amqps://` for TLS).
    pub url: String,
    /// The durable queue herald declares and consumes.
    pub queue: String,
    /// Bindings declared at every (re)connect.
    #[serde(default)]
    pub bindings: Vec<AmqpBinding>,
    /// Unacknowledged deliveries in flight (`basic.qos`).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Exchange that receives poison messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_exchange: Option<String>,
    /// Larger message bodies are poison (`too_large`).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Bound of one connection attempt (TCP, TLS, handshake, declarations).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest pause between reconnection attempts.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

/// One queue binding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpBinding {
    pub exchange: String,
    pub routing_key: String,
}

fn default_prefetch() -> u16 {
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

impl AmqpSourceConfig {
    /// A config with every optional key at its default.
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            queue: queue.into(),
            bindings: Vec::new(),
            prefetch: default_prefetch(),
            dead_letter_exchange: None,
            max_message_bytes: default_max_message_bytes(),
            connect_timeout_ms: default_connect_timeout_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
        }
    }
}

impl Settings for AmqpSourceConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        parse_url(&self.url).map_err(|e| ("url".to_string(), e))?;
        check_name("queue", &self.queue)?;
        if self.queue.starts_with("amq.") {
            return Err((
                "queue".into(),
                "names starting with \"amq.\" are reserved by the broker".into(),
            ));
        }
        for (i, b) in self.bindings.iter().enumerate() {
            check_name(&format!("bindings[{i}].exchange"), &b.exchange)?;
            if b.routing_key.len() > MAX_NAME_BYTES {
                return Err((
                    format!("bindings[{i}].routing_key"),
                    format!("at most {MAX_NAME_BYTES} bytes"),
                ));
            }
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            check_name("dead_letter_exchange", dlx)?;
        }
        let positive = [
            ("prefetch", self.prefetch as u64),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("reconnect_max_ms", self.reconnect_max_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        Ok(())
    }

    fn build(&self, _: &Build<'_>) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(super::AmqpSource::new(self.clone())))
    }
}

impl AmqpSourceConfig {
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
}

fn check_name(key: &str, name: &str) -> Result<(), (String, String)> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err((key.into(), format!("must be 1 to {MAX_NAME_BYTES} bytes")));
    }
    Ok(())
}

/// Parse an AMQP URL. The error never repeats the URL (it holds a password).
pub(super) fn parse_url(raw: &str) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = raw
        .parse()
        .map_err(|e: String| format!("not an AMQP URL: {}", e.replace(raw, "<url>")))?;
    // amq-protocol-uri only reads domain names and falls back to
    // "localhost" for an IP address; take the host from the URL itself.
    if let Ok(u) = url::Url::parse(raw) {
        match u.host() {
            Some(url::Host::Ipv4(ip)) => uri.authority.host = ip.to_string(),
            Some(url::Host::Ipv6(ip)) => uri.authority.host = ip.to_string(),
            _ => {}
        }
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AmqpSourceConfig {
        AmqpSourceConfig::new("amqp://guest:secret@127.0.0.1:5672/%2f", "herald")
    }

    #[test]
    fn validation_names_the_key() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.url = "http://guest:secret@x/".into();
        let (key, problem) = c.validate().unwrap_err();
        assert_eq!(key, "url");
        assert!(!problem.contains("secret"), "{problem}");
        let mut c = config();
        c.url = "not a url with secret".into();
        let (_, problem) = c.validate().unwrap_err();
        assert!(!problem.contains("secret"), "{problem}");
        let mut c = config();
        c.queue = String::new();
        assert_eq!(c.validate().unwrap_err().0, "queue");
        c.queue = "amq.mine".into();
        assert_eq!(c.validate().unwrap_err().0, "queue");
        let mut c = config();
        c.bindings.push(AmqpBinding {
            exchange: String::new(),
            routing_key: "#".into(),
        });
        assert_eq!(c.validate().unwrap_err().0, "bindings[0].exchange");
        let mut c = config();
        c.prefetch = 0;
        assert_eq!(c.validate().unwrap_err().0, "prefetch");
    }

    #[test]
    fn ip_hosts_are_kept_and_the_endpoint_hides_the_password() {
        let uri = parse_url("amqp://u:p@10.1.2.3:5673/%2f").unwrap();
        assert_eq!(uri.authority.host, "10.1.2.3");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(parse_url("amqp://[::1]/v").unwrap().authority.host, "::1");
        assert_eq!(
            parse_url("amqp://rabbit/").unwrap().authority.host,
            "rabbit"
        );
        let endpoint = config().endpoint();
        assert!(!endpoint.contains("secret"), "{endpoint}");
        assert!(endpoint.contains("127.0.0.1:5672"), "{endpoint}");
    }
}
