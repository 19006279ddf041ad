//! Parsing a rules file into JSON while remembering where each value was.
//!
//! Rules are validated against `schemas/rules.schema.json` and compiled from
//! a `serde_json::Value`; diagnostics then need the source line of a JSON
//! pointer such as `/rules/2/emit/title`. YAML goes through saphyr's marked
//! loader (anchors and aliases are resolved by it, with its expansion
//! budget), TOML through `toml_edit`'s spanned document.

use std::collections::HashMap;

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};
use serde_json::{Map, Number, Value};

/// The text format of a rules file, chosen by extension (`.toml` is TOML,
/// everything else YAML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Yaml,
    Toml,
}

impl Format {
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("toml") => Format::Toml,
            _ => Format::Yaml,
        }
    }
}

/// A parsed document: its value and the 1-based line of every JSON pointer.
#[derive(Debug, Default)]
pub(crate) struct Document {
    pub(crate) value: Value,
    lines: HashMap<String, usize>,
}

/// A syntax error, with its 1-based line when the parser knows it.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub line: Option<usize>,
    pub message: String,
}

impl Document {
    pub(crate) fn parse(text: &str, format: Format) -> Result<Self, SyntaxError> {
        match format {
            Format::Yaml => parse_yaml(text),
            Format::Toml => parse_toml(text),
        }
    }

    /// The line of `pointer`, or of its nearest ancestor that has one.
    pub(crate) fn line_of(&self, pointer: &str) -> Option<usize> {
        let mut p = pointer;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return None,
            }
        }
    }
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The JSON pointer of a path of keys (`["sources", "0", "kind"]` →
/// `/sources/0/kind`), for [`Document::line_of`].
pub(crate) fn pointer<S: AsRef<str>>(segments: &[S]) -> String {
    segments
        .iter()
        .map(|s| format!("/{}", escape(s.as_ref())))
        .collect()
}

fn parse_yaml(text: &str) -> Result<Document, SyntaxError> {
    let docs = MarkedYamlOwned::load_from_str(text).map_err(|e| SyntaxError {
        line: Some(e.marker().line()),
        message: e.info().to_string(),
    })?;
    let mut doc = Document::default();
    match docs.len() {
        0 => {
            doc.value = Value::Null;
            Ok(doc)
        }
        1 => {
            doc.value = yaml_to_json(&docs[0], String::new(), &mut doc.lines)?;
            Ok(doc)
        }
        _ => Err(SyntaxError {
            line: Some(docs[1].span.start.line()),
            message: "a rules file holds one YAML document".into(),
        }),
    }
}

fn yaml_to_json(
    node: &MarkedYamlOwned,
    pointer: String,
    lines: &mut HashMap<String, usize>,
) -> Result<Value, SyntaxError> {
    let line = node.span.start.line();
    let bad = |message: String| SyntaxError {
        line: Some(line),
        message,
    };
    let value = match &node.data {
        YamlDataOwned::Value(scalar) => scalar_to_json(scalar).ok_or_else(|| {
            bad("a number that is not finite cannot be represented in JSON".into())
        })?,
        YamlDataOwned::Representation(text, _, _) => Value::String(text.clone()),
        YamlDataOwned::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(yaml_to_json(item, format!("{pointer}/{i}"), lines)?);
            }
            Value::Array(out)
        }
        YamlDataOwned::Mapping(map) => {
            let mut out = Map::new();
            for (key_node, item) in map {
                let key = match &key_node.data {
                    YamlDataOwned::Value(ScalarOwned::String(s)) => s.clone(),
                    YamlDataOwned::Value(other) => match scalar_to_json(other) {
                        Some(Value::String(s)) => s,
                        Some(v) => v.to_string(),
                        None => return Err(bad("unsupported mapping key".into())),
                    },
                    _ => {
                        return Err(SyntaxError {
                            line: Some(key_node.span.start.line()),
                            message: "mapping keys must be plain scalars".into(),
                        });
                    }
                };
                let child = format!("{pointer}/{}", escape(&key));
                // A key's own line is where operators look, not its value's.
                lines.insert(child.clone(), key_node.span.start.line());
                let v = yaml_to_json(item, child, lines)?;
                out.insert(key, v);
            }
            Value::Object(out)
        }
        YamlDataOwned::Tagged(_, inner) => return yaml_to_json(inner, pointer, lines),
        YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => {
            return Err(bad("unresolvable YAML alias or value".into()));
        }
    };
    lines.entry(pointer).or_insert(line);
    Ok(value)
}

fn scalar_to_json(scalar: &ScalarOwned) -> Option<Value> {
    Some(match scalar {
        ScalarOwned::Null => Value::Null,
        ScalarOwned::Boolean(b) => Value::Bool(*b),
        ScalarOwned::Integer(i) => Value::Number((*i).into()),
        ScalarOwned::FloatingPoint(f) => Value::Number(Number::from_f64(f.into_inner())?),
        ScalarOwned::String(s) => Value::String(s.clone()),
    })
}

fn parse_toml(text: &str) -> Result<Document, SyntaxError> {
    let parsed = toml_edit::Document::parse(text).map_err(|e| SyntaxError {
        line: e.span().map(|s| line_at(text, s.start)),
        message: e.message().to_string(),
    })?;
    let mut doc = Document::default();
    let mut lines = HashMap::new();
    doc.value = toml_table(parsed.as_table(), String::new(), text, &mut lines);
    doc.lines = lines;
    Ok(doc)
}

fn line_at(text: &str, byte: usize) -> usize {
    text.as_bytes()[..byte.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn toml_table(
    table: &dyn toml_edit::TableLike,
    pointer: String,
    text: &str,
    lines: &mut HashMap<String, usize>,
) -> Value {
    let mut out = Map::new();
    for (key, item) in table.iter() {
        let child = format!("{pointer}/{}", escape(key));
        let span = table
            .key(key)
            .and_then(|k| k.span())
            .or_else(|| item.span());
        if let Some(span) = span {
            lines.insert(child.clone(), line_at(text, span.start));
        }
        out.insert(key.to_string(), toml_item(item, child, text, lines));
    }
    Value::Object(out)
}

fn toml_item(
    item: &toml_edit::Item,
    pointer: String,
    text: &str,
    lines: &mut HashMap<String, usize>,
) -> Value {
    match item {
        toml_edit::Item::None => Value::Null,
        toml_edit::Item::Value(v) => toml_value(v, pointer, text, lines),
        toml_edit::Item::Table(t) => toml_table(t, pointer, text, lines),
        toml_edit::Item::ArrayOfTables(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, t)| {
                    let child = format!("{pointer}/{i}");
                    if let Some(span) = t.span() {
                        lines.insert(child.clone(), line_at(text, span.start));
                    }
                    toml_table(t, child, text, lines)
                })
                .collect(),
        ),
    }
}

fn toml_value(
    value: &toml_edit::Value,
    pointer: String,
    text: &str,
    lines: &mut HashMap<String, usize>,
) -> Value {
    use toml_edit::Value as V;
    match value {
        V::String(s) => Value::String(s.value().clone()),
        V::Integer(i) => Value::Number((*i.value()).into()),
        V::Float(f) => Number::from_f64(*f.value()).map_or(Value::Null, Value::Number),
        V::Boolean(b) => Value::Bool(*b.value()),
        V::Datetime(d) => Value::String(d.value().to_string()),
        V::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, v)| {
                    let child = format!("{pointer}/{i}");
                    if let Some(span) = v.span() {
                        lines.insert(child.clone(), line_at(text, span.start));
                    }
                    toml_value(v, child, text, lines)
                })
                .collect(),
        ),
        V::InlineTable(t) => toml_table(t, pointer, text, lines),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_lines_follow_keys() {
        let text = "rules:\n  - id: a\n    emit:\n      channel: x\n      title: \"{{ oops\"\n";
        let doc = Document::parse(text, Format::Yaml).expect("parses");
        assert_eq!(doc.line_of("/rules/0/id"), Some(2));
        assert_eq!(doc.line_of("/rules/0/emit/title"), Some(5));
        // Unknown pointers fall back to their nearest known ancestor.
        assert_eq!(doc.line_of("/rules/0/emit/nope"), Some(3));
        assert_eq!(doc.value["rules"][0]["emit"]["channel"], "x");
    }

    #[test]
    fn yaml_aliases_are_expanded() {
        let text = "base: &b { channel: x }\nrules:\n  - id: a\n    emit: *b\n";
        let doc = Document::parse(text, Format::Yaml).expect("parses");
        assert_eq!(doc.value["rules"][0]["emit"]["channel"], "x");
    }

    #[test]
    fn yaml_syntax_error_has_a_line() {
        let err = Document::parse("rules:\n  - id: [a\n", Format::Yaml).expect_err("bad");
        assert!(err.line.is_some());
    }

    #[test]
    fn toml_lines_follow_keys() {
        let text = "[[rules]]\nid = \"a\"\n[rules.emit]\nchannel = \"x\"\ntitle = \"t\"\n";
        let doc = Document::parse(text, Format::Toml).expect("parses");
        assert_eq!(doc.value["rules"][0]["emit"]["title"], "t");
        assert_eq!(doc.line_of("/rules/0/id"), Some(2));
        assert_eq!(doc.line_of("/rules/0/emit/title"), Some(5));
    }

    #[test]
    fn toml_syntax_error_has_a_line() {
        let err = Document::parse("[[rules]]\nid = \n", Format::Toml).expect_err("bad");
        assert_eq!(err.line, Some(2));
    }
}
