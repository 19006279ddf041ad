//! The event: what a source hands to the pipeline.
//!
//! An event is the producer's JSON payload plus [`Meta`], where it came from.
//! `Meta::position` identifies the event at its source (topic, partition,
//! offset; or an HTTP request and index) and is the root of the default
//! dedupe key, so a redelivered event maps to the same keys and appends
//! nothing new. Its format is therefore frozen: changing it would make a
//! redelivery after an upgrade append again. `Meta::locator` says the same
//! for people (`kafka:orders/2@1834`) and is what a notification's
//! [`Provenance`] shows; it is free to change.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The one list of source kinds, in the order they are documented: for
/// each, its doc line, its variant, its name (`kind = "..."` in
/// `[[sources]]`, `match.source` in rules) and the settings of its
/// `[[sources]]` entry (a type in [`crate::source`], which implements
/// `source::Settings`). [`SourceKind`] is made from it here and
/// `source::SourceConfig` in `source/mod.rs`: adding a source kind is its
/// module under `src/source/` plus one line here.
///
/// `source_kinds!(then)` expands to `then! { ... }` with the list.
macro_rules! source_kinds {
    ($then:ident) => {
        $then! {
            /// `POST /events/{topic}` on the main HTTP server.
            Http "http" http::HttpSourceConfig,
            /// A RabbitMQ queue (AMQP 0-9-1).
            Amqp "amqp" amqp::AmqpSourceConfig,
            /// A Kafka consumer-group member.
            Kafka "kafka" kafka::KafkaSourceConfig,
            /// A durable pull consumer on a NATS JetStream stream.
            Nats "nats" nats::NatsSourceConfig,
        }
    };
}
pub(crate) use source_kinds;

macro_rules! source_kind_enum {
    ($($(#[$doc:meta])* $variant:ident $name:literal $settings:ty,)*) => {
        /// The kind of source an event came from; `match.source` in rules.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum SourceKind {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl SourceKind {
            /// Every kind, in the list's order.
            pub const ALL: &'static [SourceKind] = &[$(SourceKind::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(SourceKind::$variant => $name,)*
                }
            }
        }
    };
}
source_kinds!(source_kind_enum);

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown source kind {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// Where an event came from, as rules see it under `meta`. Fields a source
/// does not have are `null` (so `meta.partition is none` works in rules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub source: SourceKind,
    /// HTTP path topic, Kafka topic, or AMQP routing key.
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// Producer timestamp (RFC 3339) when the source carries one.
    pub timestamp: Option<String>,
    /// When herald received the event (RFC 3339).
    pub received_at: String,
    pub exchange: Option<String>,
    pub message_id: Option<String>,
    pub redelivered: Option<bool>,
    /// Stable identity of the event at its source; the root of default
    /// dedupe keys. Not shown to rules.
    #[serde(skip)]
    pub position: String,
    /// Where the event sits at its source, for people:
    /// `kafka:<topic>/<partition>@<offset>`, `amqp:<queue>/<message id>`
    /// (`…/xxh3:<hash>` without one), `http:<topic>/<request id>#<index>`,
    /// `nats:<stream>/<sequence>`. Not a dedupe root; not shown to rules.
    /// Empty when a source has none to give ([`Meta::locator`] then falls
    /// back to `position`).
    #[serde(skip)]
    pub locator: String,
}

impl Meta {
    /// Meta with only the fields every source has.
    pub fn new(source: SourceKind, topic: impl Into<String>, position: impl Into<String>) -> Self {
        Self {
            source,
            topic: topic.into(),
            partition: None,
            offset: None,
            key: None,
            headers: BTreeMap::new(),
            timestamp: None,
            received_at: crate::clock::now_rfc3339(),
            exchange: None,
            message_id: None,
            redelivered: None,
            position: position.into(),
            locator: String::new(),
        }
    }

    /// Set [`Meta::locator`].
    pub fn with_locator(mut self, locator: String) -> Self {
        self.locator = locator;
        self
    }

    /// The event's locator, or its position when the source gave none.
    pub fn locator(&self) -> &str {
        if self.locator.is_empty() {
            &self.position
        } else {
            &self.locator
        }
    }
}

/// Where a stored notification came from: the rule that rendered it, the
/// rules version that rule belonged to, and its event's
/// [`Meta::locator`]. Serialized once per notification by the pipeline;
/// the store keeps the text and frames splice it in as `provenance`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Provenance<'a> {
    pub rule: &'a str,
    pub rules_version: &'a str,
    pub source: &'a str,
}

impl Provenance<'_> {
    /// The JSON object, as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// One source event.
#[derive(Debug, Clone)]
pub struct Event {
    pub payload: serde_json::Value,
    pub meta: Meta,
}

impl Event {
    /// The event's `type` field, shown as `event` in notifications; the topic
    /// when the payload has none.
    pub fn event_type(&self) -> &str {
        self.payload
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or(&self.meta.topic)
    }
}
