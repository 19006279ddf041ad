//! Configuration problems told so a person can act on them: where (the
//! file and line, or the environment variable), which key in the dotted
//! form the docs use (`server.listen`, `sources[0].kind`), what is wrong,
//! and for a misspelt key or value the closest known one.
//!
//! figment's own messages are not shown as they are: they prefix keys with
//! its internal profile (`default.server.listen`), name Rust types
//! (`expected usize`) and give no line.

use std::path::Path;

use figment::Figment;
use figment::error::{Actual, Kind};

use crate::rules::document::{Document, pointer};

/// Where the configuration came from, for locating a key.
pub(super) struct Sources<'a> {
    pub figment: &'a Figment,
    /// The file and its parsed text (with the line of every key).
    pub file: Option<(&'a Path, &'a Document)>,
}

/// The environment prefix; `__` separates nested keys.
const ENV_PREFIX: &str = "HERALD_";

impl Sources<'_> {
    /// One line per problem figment found.
    pub(super) fn describe_load(&self, error: figment::Error) -> Vec<String> {
        error.into_iter().map(|e| self.describe_one(&e)).collect()
    }

    /// A problem [`Config::validate`](super::Config::validate) found in
    /// `key` (`store.url`, `sources[0].topics`).
    pub(super) fn describe_invalid(&self, key: &str, problem: &str) -> String {
        let segments = split_key(key);
        let from_env = self
            .figment
            .find_metadata(&segments.join("."))
            .is_some_and(is_env);
        let place = if from_env {
            Place::Env(&segments)
        } else {
            Place::File(&segments)
        };
        format!("{}`{key}`: {problem}", self.locate(place))
    }

    fn describe_one(&self, e: &figment::Error) -> String {
        let mut path: Vec<String> = e.path.clone();
        // For an unknown field serde names the table it is in (always for
        // a `[[sources]]` entry), sometimes the field too.
        if let Kind::UnknownField(field, _) = &e.kind
            && path.last() != Some(field)
        {
            path.push(field.clone());
        }
        let key = dotted(&path);
        let env = e.metadata.as_ref().is_some_and(is_env);
        let place = if env {
            Place::Env(&path)
        } else {
            Place::File(&path)
        };
        let message = match &e.kind {
            Kind::UnknownField(field, expected) => {
                let parent = &path[..path.len().saturating_sub(1)];
                let hint = match closest(field, expected) {
                    Some(best) => {
                        let mut known = parent.to_vec();
                        known.push(best.to_string());
                        if env {
                            format!("; did you mean {}?", env_name(&known))
                        } else {
                            format!("; did you mean `{}`?", dotted(&known))
                        }
                    }
                    None if expected.is_empty() => String::new(),
                    None => format!("; known keys here: {}", listed(expected, "`")),
                };
                format!("unknown key `{key}`{hint}")
            }
            Kind::UnknownVariant(value, expected) => {
                let hint = match closest(value, expected) {
                    Some(best) => format!("did you mean \"{best}\"? "),
                    None => String::new(),
                };
                format!(
                    "`{key}`: unknown value \"{value}\"; {hint}(one of {})",
                    listed(expected, "\"")
                )
            }
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                format!(
                    "`{key}`: expected {}, found {}",
                    expectation(expected),
                    found(actual)
                )
            }
            Kind::MissingField(field) => {
                let mut required = path.clone();
                required.push(field.to_string());
                format!("`{}` is required", dotted(&required))
            }
            Kind::DuplicateField(field) => format!("`{key}.{field}` is set twice"),
            Kind::Message(message) if key == "server.listen" => {
                format!("`{key}`: {}", self.listen_problem(message))
            }
            other => format!("`{key}`: {other}"),
        };
        format!("{}{message}", self.locate(place))
    }

    /// `server.listen` takes an IP address and a port; say so, with the
    /// address to use instead of a host name.
    fn listen_problem(&self, message: &str) -> String {
        let value = self
            .figment
            .find_value("server.listen")
            .ok()
            .and_then(|v| v.as_str().map(str::to_string));
        let Some(value) = value else {
            return message.to_string();
        };
        let port = value
            .rsplit_once(':')
            .map(|(_, p)| p)
            .filter(|p| p.parse::<u16>().is_ok());
        match port {
            Some(port) => format!(
                "\"{value}\" is not an IP address and port; a host name is not accepted \
                 (use 127.0.0.1:{port} for this machine only, 0.0.0.0:{port} for every interface)"
            ),
            None => format!(
                "\"{value}\" is not an IP address and port, such as 127.0.0.1:8080 \
                 (a host name is not accepted)"
            ),
        }
    }

    /// `FILE:LINE: `, `FILE: `, `HERALD_X__Y: ` or nothing.
    fn locate(&self, place: Place<'_>) -> String {
        match place {
            Place::Env(path) => format!("{}: ", env_name(path)),
            Place::File(path) => match self.file {
                Some((file, doc)) if !path.is_empty() => match doc.line_of(&pointer(path)) {
                    Some(line) => format!("{}:{line}: ", file.display()),
                    None => String::new(),
                },
                Some((file, _)) => format!("{}: ", file.display()),
                None => String::new(),
            },
        }
    }
}

/// Where a key's value came from.
enum Place<'a> {
    Env(&'a [String]),
    File(&'a [String]),
}

fn is_env(metadata: &figment::Metadata) -> bool {
    metadata.source.is_none() && metadata.name.contains("environment")
}

/// `HERALD_SERVER__LISTEN` for `["server", "listen"]`.
fn env_name(path: &[String]) -> String {
    let upper: Vec<String> = path.iter().map(|s| s.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", upper.join("__"))
}

/// `sources[0].kind` for `["sources", "0", "kind"]`.
fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if !out.is_empty() && segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        if segment.contains('.') {
            out.push_str(&format!("\"{segment}\""));
        } else {
            out.push_str(segment);
        }
    }
    out
}

/// The inverse of [`dotted`]: `sources[0].properties."a.b"` →
/// `["sources", "0", "properties", "a.b"]`.
fn split_key(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in key.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' | '[' | ']' if !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The known name closest to a misspelt one, when it is close enough to be
/// what was meant: a few letters off (`max_conections`), or cut short or
/// run on (`max_body`, `listen_addr`).
fn closest<'a>(wrong: &str, known: &[&'a str]) -> Option<&'a str> {
    let wrong = wrong.to_ascii_lowercase();
    let typo = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&wrong, k), *k))
        .filter(|(distance, k)| *distance <= (k.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k);
    typo.or_else(|| {
        let mut affixed = known
            .iter()
            .filter(|k| wrong.len() >= 3 && (k.starts_with(&wrong) || wrong.starts_with(*k)));
        match (affixed.next(), affixed.next()) {
            (Some(only), None) => Some(*only),
            _ => None,
        }
    })
}

fn listed(names: &[&str], quote: &str) -> String {
    names
        .iter()
        .map(|n| format!("{quote}{n}{quote}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// serde's expectation in words: `usize` is a Rust type, not something a
/// person wrote.
fn expectation(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a sequence" => "a list".into(),
        "a map" | "map" => "a table".into(),
        "socket address" => "an IP address and port, such as \"127.0.0.1:8080\"".into(),
        "path string" => "a path".into(),
        other if other.starts_with("struct ") => "a table".into(),
        other => other.to_string(),
    }
}

fn found(actual: &Actual) -> String {
    match actual {
        Actual::Bool(b) => format!("{b}"),
        Actual::Unsigned(n) => format!("{n}"),
        Actual::Signed(n) => format!("{n}"),
        Actual::Float(f) => format!("{f}"),
        Actual::Char(c) => format!("\"{c}\""),
        Actual::Str(s) => format!("the text \"{s}\""),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        Actual::Unit | Actual::Option => "nothing".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_as_the_docs_write_them() {
        let path: Vec<String> = ["sources", "0", "properties", "a.b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(dotted(&path), "sources[0].properties.\"a.b\"");
        assert_eq!(split_key(&dotted(&path)), path);
        assert_eq!(
            env_name(&["server".into(), "max_connections".into()]),
            "HERALD_SERVER__MAX_CONNECTIONS"
        );
    }

    #[test]
    fn the_closest_known_name_is_suggested_only_when_close() {
        let known = ["listen", "max_connections", "handshake_timeout_ms"];
        assert_eq!(closest("max_conections", &known), Some("max_connections"));
        assert_eq!(closest("lisen", &known), Some("listen"));
        assert_eq!(closest("LISTN", &known), Some("listen"));
        assert_eq!(closest("port", &known), None);
        assert_eq!(closest("listen_addr", &known), Some("listen"));
        assert_eq!(
            closest("max_body", &["max_body_bytes", "max_events_per_request"]),
            Some("max_body_bytes")
        );
        assert_eq!(
            closest("max", &["max_connections", "max_subscriptions"]),
            None,
            "not one of several"
        );
        assert_eq!(closest("kafak", &["http", "amqp", "kafka"]), Some("kafka"));
    }
}
