//! Rules: the operator-edited mapping from events to notifications.
//!
//! A rules file (YAML or TOML, schema `schemas/rules.schema.json`) is
//! compiled once per version into [`Rules`]; evaluating an event is then a
//! pure function `Event -> Evaluation` with no I/O.
//!
//! Invariants:
//! - every rule whose `match` and `when` accept an event emits; rules never
//!   suppress each other;
//! - a rule that fails for one event (missing field, bad template, a channel
//!   that renders empty) drops only that notification and is reported in
//!   [`Evaluation::failures`]; the other rules still run;
//! - evaluation is bounded: templates run with a fuel limit, so a rule cannot
//!   stall the pipeline;
//! - a version that does not compile is rejected whole with one
//!   [`Diagnostic`] per problem (rule id, field, line); the caller keeps the
//!   previous version.

mod compile;
pub(crate) mod document;
mod eval;
mod explain;
pub mod preview;
pub mod versions;
pub mod watch;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

pub use compile::Diagnostic;
pub use document::Format;
pub use eval::{Evaluation, Rendered, RuleFailure};
pub use explain::{Check, FieldTrace, ItemTrace, RuleTrace, WhenTrace};

/// The built-in rules used when no rules file is configured.
pub const DEFAULT_RULES: &str = include_str!("default.yaml");

/// A compiled rules version.
#[derive(Debug)]
pub struct Rules {
    compiled: compile::Compiled,
    origin: Arc<str>,
    count: usize,
    content_id: Arc<str>,
}

/// A short id of a rules text: 12 hex digits of its XXH3 hash. Two texts
/// with the same bytes share it, so it tells whether a file really changed
/// (the watcher compares it, not file events) and names a version in logs.
pub fn content_id(text: &str) -> String {
    format!("{:012x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()) >> 16)
}

/// A rules version that did not compile.
#[derive(Debug)]
pub struct RulesError {
    /// The file (or `built-in`).
    pub origin: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:", self.origin)?;
            d.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for RulesError {}

impl Rules {
    /// The built-in default rule.
    pub fn builtin() -> Self {
        #[allow(clippy::expect_used)]
        Self::parse(DEFAULT_RULES, Format::Yaml, "built-in").expect("the built-in rules compile")
    }

    /// Read and compile a rules file; the format follows the extension.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = Self::read(path)?;
        Self::parse(&text, Format::from_path(path), &path.display().to_string())
    }

    /// The text of a rules file, or why it cannot be read.
    pub fn read(path: &Path) -> Result<String, RulesError> {
        std::fs::read_to_string(path).map_err(|e| RulesError {
            origin: path.display().to_string(),
            diagnostics: vec![Diagnostic::file(format!("cannot read the file: {e}"))],
        })
    }

    /// Compile rules from text. `origin` names them in diagnostics and logs.
    pub fn parse(text: &str, format: Format, origin: &str) -> Result<Self, RulesError> {
        let (compiled, count) =
            compile::compile(text, format).map_err(|diagnostics| RulesError {
                origin: origin.to_string(),
                diagnostics,
            })?;
        Ok(Self {
            compiled,
            origin: origin.into(),
            count,
            content_id: content_id(text).into(),
        })
    }

    /// Map one event to notifications. Pure: no I/O, bounded work.
    pub fn evaluate(&self, event: &crate::event::Event) -> Evaluation {
        eval::evaluate(&self.compiled, event)
    }

    /// Each rule's part in evaluating `event`, in order (for explain;
    /// slower than [`Rules::evaluate`], every field is rendered).
    pub fn explain(&self, event: &crate::event::Event) -> Vec<RuleTrace> {
        explain::explain(&self.compiled, event)
    }

    /// The ids of the rules whose `match` and `when` accept `event`.
    pub fn matching(&self, event: &crate::event::Event) -> Vec<Arc<str>> {
        explain::matching(&self.compiled, event)
    }

    /// Where this version came from (a path or `built-in`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The [`content_id`] of the text this version was compiled from.
    pub fn content_id(&self) -> &str {
        &self.content_id
    }

    /// The rule ids, in evaluation order.
    pub fn rule_ids(&self) -> Vec<String> {
        self.compiled
            .rules(|rules| rules.iter().map(|r| r.id.to_string()).collect())
    }

    /// The content id, shared (what a recorded event keeps).
    pub fn version(&self) -> &Arc<str> {
        &self.content_id
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Notification priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            "urgent" => Some(Priority::Urgent),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
