//! Producers' API keys for `POST /events/{topic}`.
//!
//! herald stores digests (`sha256:<hex>`), never keys: a leaked
//! configuration does not leak a key. A request presents the key as
//! `Authorization: Bearer <key>`; its SHA-256 is compared with every
//! configured digest in constant time (all of them, always, so the time
//! taken says nothing about which digest came close). A key may be limited
//! to topic globs.
//!
//! `api_keys_file` holds one key per line: the digest, then optionally the
//! topic globs it is limited to, separated by spaces; `#` starts a comment.
//! The file is watched: a change of its content replaces the keys (a key
//! added or revoked without a restart). A file that no longer parses, or
//! lists no key, is rejected and the keys in use stay — a reload never
//! opens a source that had keys.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use aws_lc_rs::{constant_time, digest as sha};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::watch::Changes;

/// Prefix of keys made by `herald keys new`, so secret scanners and people
/// can tell what a leaked string is.
pub const KEY_PREFIX: &str = "hrld_";
const DIGEST_PREFIX: &str = "sha256:";

/// One configured key: its digest and the topics it may post to (empty:
/// every topic). In TOML a plain digest string, or
/// `{ digest = "sha256:…", topics = ["orders.*"] }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyEntry {
    pub digest: String,
    pub topics: Vec<String>,
}

impl ApiKeyEntry {
    /// The digest and topic globs are well formed.
    pub fn validate(&self) -> Result<(), String> {
        parse_digest(&self.digest)?;
        topic_globs(&self.topics)?;
        Ok(())
    }
}

impl Serialize for ApiKeyEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.topics.is_empty() {
            return s.serialize_str(&self.digest);
        }
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("digest", &self.digest)?;
        map.serialize_entry("topics", &self.topics)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for ApiKeyEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = ApiKeyEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a digest \"sha256:<hex>\" or { digest = \"sha256:<hex>\", topics = [...] }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ApiKeyEntry, E> {
                Ok(ApiKeyEntry {
                    digest: v.to_string(),
                    topics: Vec::new(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ApiKeyEntry, A::Error> {
                let mut digest = None;
                let mut topics = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "digest" => digest = Some(map.next_value::<String>()?),
                        "topics" => topics = Some(map.next_value::<Vec<String>>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["digest", "topics"]));
                        }
                    }
                }
                Ok(ApiKeyEntry {
                    digest: digest.ok_or_else(|| de::Error::missing_field("digest"))?,
                    topics: topics.unwrap_or_default(),
                })
            }
        }
        d.deserialize_any(EntryVisitor)
    }
}

/// `sha256:<64 hex digits>` as bytes.
pub fn parse_digest(text: &str) -> Result<[u8; 32], String> {
    let hex = text
        .strip_prefix(DIGEST_PREFIX)
        .ok_or("a digest starts with `sha256:` (`herald keys digest` prints one)")?;
    if hex.len() != 64 {
        return Err("a sha256 digest has 64 hex digits".into());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "a sha256 digest has 64 hex digits")?;
    }
    Ok(out)
}

/// The digest of `key`, as configured: `sha256:<hex>`.
pub fn digest(key: &str) -> String {
    let d = sha::digest(&sha::SHA256, key.as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{DIGEST_PREFIX}{hex}")
}

/// A fresh random key: 32 bytes from the system's CSPRNG.
pub fn new_key() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "the system's random source failed")?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn topic_globs(topics: &[String]) -> Result<Option<GlobSet>, String> {
    if topics.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for t in topics {
        let glob = GlobBuilder::new(t)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("topic `{t}`: {}", e.kind()))?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|e| e.to_string())
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    /// No `Authorization: Bearer` header: 401.
    Missing,
    /// A key no digest matches: 403.
    Unknown,
    /// A known key limited to other topics: 403.
    Topic,
}

impl KeyRejection {
    pub fn status(self) -> StatusCode {
        match self {
            KeyRejection::Missing => StatusCode::UNAUTHORIZED,
            KeyRejection::Unknown | KeyRejection::Topic => StatusCode::FORBIDDEN,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            KeyRejection::Missing => "an API key is required: Authorization: Bearer <key>",
            KeyRejection::Unknown => "unknown API key",
            KeyRejection::Topic => "this API key may not post to this topic",
        }
    }

    /// A label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            KeyRejection::Missing => "missing_key",
            KeyRejection::Unknown => "unknown_key",
            KeyRejection::Topic => "topic_not_allowed",
        }
    }
}

#[derive(Debug)]
struct Key {
    digest: [u8; 32],
    topics: Option<GlobSet>,
}

/// The keys one HTTP source accepts.
#[derive(Debug)]
pub struct ApiKeys {
    /// The keys in use: `entries` plus the file's lines as last loaded.
    keys: ArcSwap<Vec<Key>>,
    /// The keys written in the configuration (they never change).
    entries: Vec<ApiKeyEntry>,
    file: Option<PathBuf>,
    /// The file's content last tried, so a touch without a change does
    /// nothing.
    last_text: std::sync::Mutex<Option<String>>,
}

impl ApiKeys {
    /// The keys of `entries` and `file`; `None` when there are none (the
    /// source is open).
    pub fn load(entries: &[ApiKeyEntry], file: Option<&Path>) -> Result<Option<Self>, String> {
        let text = file.map(read_file).transpose()?;
        if text.is_none() && entries.is_empty() {
            return Ok(None);
        }
        let keys = build(entries, file.zip(text.as_deref()))?;
        Ok(Some(Self {
            keys: ArcSwap::from_pointee(keys),
            entries: entries.to_vec(),
            file: file.map(Path::to_path_buf),
            last_text: std::sync::Mutex::new(text),
        }))
    }

    /// Read the file again and put its keys in use when its content
    /// changed and is valid. `Ok(true)` when new keys went live.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let text = read_file(path)?;
        {
            let mut last = crate::sync::lock(&self.last_text);
            if last.as_deref() == Some(text.as_str()) {
                return Ok(false);
            }
            *last = Some(text.clone());
        }
        let keys = build(&self.entries, Some((path, &text)))?;
        self.keys.store(Arc::new(keys));
        Ok(true)
    }

    /// Reload on every change of the file until `stop` (nothing to do
    /// without a file).
    pub fn spawn_reload(self: &Arc<Self>, metrics: Arc<Metrics>, stop: CancellationToken) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let mut changes = match Changes::watch(&[path.as_path()]) {
                Ok(changes) => changes,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot watch the API key file; key reload disabled");
                    return;
                }
            };
            while changes.next(&stop).await.is_some() {
                match this.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics.api_keys_loaded(true);
                        tracing::info!(file = %path.display(), keys = this.len(), "API keys reloaded");
                    }
                    Err(problem) => {
                        metrics.api_keys_loaded(false);
                        tracing::error!(%problem, "API key file rejected; the keys in use stay");
                    }
                }
            }
        });
    }

    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.load().is_empty()
    }

    /// May the request with `headers` post to `topic`?
    pub fn check(&self, headers: &HeaderMap, topic: &str) -> Result<(), KeyRejection> {
        let key = super::bearer(headers).ok_or(KeyRejection::Missing)?;
        let presented = sha::digest(&sha::SHA256, key.as_bytes());
        let keys = self.keys.load();
        let mut matched: Option<&Key> = None;
        for k in keys.iter() {
            let equal =
                constant_time::verify_slices_are_equal(presented.as_ref(), &k.digest).is_ok();
            if equal && matched.is_none() {
                matched = Some(k);
            }
        }
        let key = matched.ok_or(KeyRejection::Unknown)?;
        match &key.topics {
            Some(globs) if !globs.is_match(topic) => Err(KeyRejection::Topic),
            _ => Ok(()),
        }
    }
}

fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The keys of `entries` plus those of a key file's text.
fn build(entries: &[ApiKeyEntry], file: Option<(&Path, &str)>) -> Result<Vec<Key>, String> {
    let mut all = entries.to_vec();
    if let Some((path, text)) = file {
        all.extend(
            parse_file(text).map_err(|(line, p)| format!("{}:{line}: {p}", path.display()))?,
        );
        if all.len() == entries.len() {
            return Err(format!("{} lists no key", path.display()));
        }
    }
    all.iter()
        .map(|e| {
            Ok(Key {
                digest: parse_digest(&e.digest)?,
                topics: topic_globs(&e.topics)?,
            })
        })
        .collect()
}

/// The entries of an `api_keys_file`, or the line number and problem.
fn parse_file(text: &str) -> Result<Vec<ApiKeyEntry>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let digest = words.next().unwrap_or_default().to_string();
        let entry = ApiKeyEntry {
            digest,
            topics: words.map(str::to_string).collect(),
        };
        entry.validate().map_err(|p| (i + 1, p))?;
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(auth).expect("header"),
        );
        h
    }

    #[test]
    fn new_keys_are_random_and_their_digest_checks() {
        let a = new_key().expect("key");
        let b = new_key().expect("key");
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() > 40, "{a}");
        let d = digest(&a);
        assert_eq!(d.len(), 7 + 64);
        parse_digest(&d).expect("well formed");
        // A known vector: sha256("abc").
        assert_eq!(
            digest("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_are_checked_by_digest_and_topic() {
        let (open, limited) = (new_key().expect("k"), new_key().expect("k"));
        let keys = ApiKeys::load(
            &[
                ApiKeyEntry {
                    digest: digest(&open),
                    topics: vec![],
                },
                ApiKeyEntry {
                    digest: digest(&limited),
                    topics: vec!["orders.*".into()],
                },
            ],
            None,
        )
        .expect("loads")
        .expect("some keys");
        assert_eq!(
            keys.check(&HeaderMap::new(), "t"),
            Err(KeyRejection::Missing)
        );
        assert_eq!(
            keys.check(&headers("Basic x"), "t"),
            Err(KeyRejection::Missing)
        );
        assert_eq!(
            keys.check(&headers("Bearer nope"), "t"),
            Err(KeyRejection::Unknown)
        );
        // The digest itself is not a key.
        let as_key = format!("Bearer {}", digest(&open));
        assert_eq!(
            keys.check(&headers(&as_key), "t"),
            Err(KeyRejection::Unknown)
        );
        assert_eq!(
            keys.check(&headers(&format!("Bearer {open}")), "any"),
            Ok(())
        );
        let limited = format!("bearer  {limited} ");
        assert_eq!(keys.check(&headers(&limited), "orders.eu"), Ok(()));
        assert_eq!(
            keys.check(&headers(&limited), "billing"),
            Err(KeyRejection::Topic)
        );
    }

    #[test]
    fn no_keys_means_open_and_bad_entries_are_named() {
        assert!(ApiKeys::load(&[], None).expect("ok").is_none());
        for bad in ["abc", "sha256:12", &format!("sha256:{}", "g".repeat(64))] {
            let e = ApiKeyEntry {
                digest: bad.to_string(),
                topics: vec![],
            };
            assert!(e.validate().is_err(), "{bad}");
        }
        let e = ApiKeyEntry {
            digest: digest("k"),
            topics: vec!["a[".into()],
        };
        assert!(e.validate().expect_err("bad glob").contains("a["));
    }

    #[test]
    fn the_key_file_format() {
        let k = new_key().expect("k");
        let text = format!(
            "# producers\n\n{}  orders.* billing # the shop\n{}\n",
            digest(&k),
            digest("other")
        );
        let entries = parse_file(&text).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].topics, ["orders.*", "billing"]);
        assert!(entries[1].topics.is_empty());
        let err = parse_file("sha256:xyz\n").expect_err("bad digest");
        assert_eq!(err.0, 1);
    }

    #[test]
    fn entries_read_from_toml_as_strings_or_tables() {
        #[derive(Deserialize)]
        struct Doc {
            api_keys: Vec<ApiKeyEntry>,
        }
        let d = digest("k");
        let doc: Doc = toml::from_str(&format!(
            "api_keys = [\"{d}\", {{ digest = \"{d}\", topics = [\"a.*\"] }}]"
        ))
        .expect("parses");
        assert_eq!(doc.api_keys[0].topics.len(), 0);
        assert_eq!(doc.api_keys[1].topics, ["a.*"]);
        let err =
            toml::from_str::<Doc>(&format!("api_keys = [{{ digest = \"{d}\", topic = [] }}]"))
                .err()
                .expect("unknown field");
        assert!(err.to_string().contains("topic"), "{err}");
    }
}
