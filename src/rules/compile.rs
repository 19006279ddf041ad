//! Compiling a rules file: parse, validate against the schema, then compile
//! every expression and template once.
//!
//! The compiled templates and expressions borrow the minijinja environment
//! that owns them, so the two live together in a self-referential cell.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, LazyLock};

use globset::{Glob, GlobMatcher};
use minijinja::{AutoEscape, Environment, Expression, Template, UndefinedBehavior};
use serde_json::Value;

use super::Priority;
use super::document::{Document, Format};
use crate::event::SourceKind;

/// Work one template or expression may do for one event. Generous for any
/// real rule, small enough that a runaway loop ends in milliseconds.
const FUEL: u64 = 200_000;

static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(include_str!("../../schemas/rules.schema.json"))
        .unwrap_or_else(|e| panic!("schemas/rules.schema.json is not JSON: {e}"));
    jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("schemas/rules.schema.json is not a valid schema: {e}"))
});

/// One problem in a rules file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// The rule's id (or `#index` when it has none yet).
    pub rule: Option<String>,
    /// Dotted field inside the rule (`emit.title`), or a top-level path.
    pub field: String,
    /// 1-based line in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    pub(super) fn file(message: String) -> Self {
        Self {
            rule: None,
            field: String::new(),
            line: None,
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    /// `LINE: rule `id`: field `emit.title`: message` (the caller prefixes the file).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "{line}:")?;
        }
        if let Some(rule) = &self.rule {
            write!(f, " rule `{rule}`:")?;
        }
        if !self.field.is_empty() {
            write!(f, " field `{}`:", self.field)?;
        }
        write!(f, " {}", self.message)
    }
}

/// The two minijinja environments a rules version is compiled in.
///
/// Output (templates, `for_each`, data expressions) is semi-strict: printing
/// or iterating a missing field is an error, so a notification is never sent
/// with a silently empty title or channel. Conditions (`when`) are
/// chainable: a missing field, or a field of one, is undefined and compares
/// false, so `event.type == "x" and event.total > 100` is simply false for
/// events that lack those fields instead of failing the rule.
#[derive(Debug)]
pub(super) struct Envs {
    output: Environment<'static>,
    conditions: Environment<'static>,
}

fn environment(undefined: UndefinedBehavior) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(undefined);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(64);
    env
}

self_cell::self_cell!(
    /// minijinja environments and the rules compiled against them.
    pub(super) struct Compiled {
        owner: Envs,
        #[not_covariant]
        dependent: RuleSet,
    }
    impl {Debug}
);

impl Compiled {
    pub(super) fn rules<R>(&self, f: impl for<'a> FnOnce(&'a [Rule<'a>]) -> R) -> R {
        self.with_dependent(|_, set| f(&set.rules))
    }
}

#[derive(Debug)]
pub(super) struct RuleSet<'env> {
    rules: Vec<Rule<'env>>,
}

#[derive(Debug)]
pub(super) struct Rule<'env> {
    pub id: Arc<str>,
    pub source: Option<SourceKind>,
    pub topic: Option<GlobMatcher>,
    pub when: Condition<'env>,
    /// The `when` expression as written (shown by explain).
    pub when_text: Option<String>,
    pub for_each: Option<Expression<'env, 'static>>,
    pub channel: Text<'env>,
    pub title: Option<Text<'env>>,
    pub body: Option<Text<'env>>,
    pub data: Option<Data<'env>>,
    pub priority: PriorityTemplate<'env>,
    pub dedupe_key: Option<Text<'env>>,
}

#[derive(Debug)]
pub(super) enum Condition<'env> {
    Always,
    Never,
    Expr(Expression<'env, 'static>),
}

/// A string field: literal text, or a template.
#[derive(Debug)]
pub(super) enum Text<'env> {
    Literal(String),
    Template(Template<'env, 'env>),
}

#[derive(Debug)]
pub(super) enum PriorityTemplate<'env> {
    Fixed(Priority),
    Template(Template<'env, 'env>),
}

/// The `data` field: any JSON whose strings may be templates.
#[derive(Debug)]
pub(super) enum Data<'env> {
    Literal(Value),
    Text(Text<'env>),
    /// A string that is exactly `{{ expr }}`: keeps the value's JSON type.
    Expr(Expression<'env, 'static>),
    Array(Vec<Data<'env>>),
    Object(Vec<(String, Data<'env>)>),
}

/// Parse, validate and compile. Returns every problem found, not only the first.
pub(super) fn compile(text: &str, format: Format) -> Result<(Compiled, usize), Vec<Diagnostic>> {
    let doc = Document::parse(text, format).map_err(|e| {
        vec![Diagnostic {
            rule: None,
            field: String::new(),
            line: e.line,
            message: format!("syntax error: {}", e.message),
        }]
    })?;
    // An empty file (or one of comments only) parses to null or `{}`; the
    // schema would say "null is not of type object", which names nothing
    // the author wrote.
    let empty = match &doc.value {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if empty {
        return Err(vec![Diagnostic::file(
            "the file is empty: expected `rules:` with a list of rules".into(),
        )]);
    }
    // Schema problems do not stop compilation: `rules check` should show
    // every problem at once. Compilation reads the document loosely, so a
    // malformed rule only adds problems the schema did not already name.
    let schema_problems = validate(&doc);
    let specs = doc.value["rules"].as_array().cloned().unwrap_or_default();

    let mut env = environment(UndefinedBehavior::SemiStrict);

    // Pass 1: templates go into the environment (it owns their source).
    let mut problems = schema_problems;
    let mut ids = HashSet::new();
    for (i, spec) in specs.iter().enumerate() {
        let ctx = RuleCtx::new(&doc, i, spec);
        if !ids.insert(ctx.id.clone()) {
            problems.push(ctx.diag("id", format!("duplicate rule id `{}`", ctx.id)));
        }
        let emit = &spec["emit"];
        for field in ["channel", "title", "body", "dedupe_key", "priority"] {
            if let Some(src) = emit[field].as_str().filter(|s| is_template(s))
                && let Err(e) = env.add_template_owned(ctx.name(field), src.to_string())
            {
                problems.push(ctx.diag(&format!("emit.{field}"), describe(&e)));
            }
        }
        add_data_templates(&mut env, &ctx, &emit["data"], "data", &mut problems);
    }
    // Pass 2: compile expressions and look the templates up, borrowing env.
    let count = specs.len();
    let envs = Envs {
        output: env,
        conditions: environment(UndefinedBehavior::Chainable),
    };
    let compiled = Compiled::try_new(envs, |envs| {
        let mut rules = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let ctx = RuleCtx::new(&doc, i, spec);
            match compile_rule(envs, &ctx, spec) {
                Ok(rule) => rules.push(rule),
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() {
            Ok(RuleSet { rules })
        } else {
            Err(tidy(problems))
        }
    })?;
    Ok((compiled, count))
}

/// Names and locates one rule's diagnostics.
struct RuleCtx<'d> {
    doc: &'d Document,
    index: usize,
    id: String,
}

impl<'d> RuleCtx<'d> {
    fn new(doc: &'d Document, index: usize, spec: &Value) -> Self {
        let id = spec["id"]
            .as_str()
            .map_or_else(|| format!("#{index}"), str::to_string);
        Self { doc, index, id }
    }

    /// Template name in the environment; also what minijinja errors mention.
    fn name(&self, field: &str) -> String {
        // The index keeps names unique even across rules whose ids and data
        // keys contain dots; data keys are escaped by `data_path`.
        format!("{}#{}:{field}", self.id, self.index)
    }

    /// A diagnostic for `field`, dotted below the rule (`emit.title`).
    fn diag(&self, field: &str, message: String) -> Diagnostic {
        let pointer = format!("/rules/{}/{}", self.index, field.replace('.', "/"));
        Diagnostic {
            rule: Some(self.id.clone()),
            field: field.to_string(),
            line: self.doc.line_of(&pointer),
            message,
        }
    }
}

fn validate(doc: &Document) -> Vec<Diagnostic> {
    SCHEMA
        .iter_errors(&doc.value)
        .map(|error| {
            let mut pointer = error.instance_path().as_str().to_string();
            if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
                error.kind()
                && let Some(key) = unexpected.first()
            {
                pointer = format!("{pointer}/{key}");
            }
            let segments: Vec<&str> = pointer.split('/').skip(1).collect();
            let (rule, field) = match segments.as_slice() {
                ["rules", index, rest @ ..] => {
                    let rule = index.parse::<usize>().ok().map(|i| {
                        doc.value["rules"][i]["id"]
                            .as_str()
                            .map_or_else(|| format!("#{i}"), str::to_string)
                    });
                    (rule, rest.join("."))
                }
                other => (None, other.join(".")),
            };
            Diagnostic {
                rule,
                field,
                line: doc.line_of(&pointer),
                message: error.to_string(),
            }
        })
        .collect()
}

/// `path.key`, with `~` and `.` in the key escaped so that nested keys and
/// keys containing dots never name the same place.
fn data_path(path: &str, key: &str) -> String {
    format!("{path}.{}", key.replace('~', "~0").replace('.', "~1"))
}

/// Text without template syntax is used as is, with no engine involved.
fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// `{{ expr }}` and nothing else: the data value keeps the expression's type.
fn whole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

fn add_data_templates(
    env: &mut Environment<'static>,
    ctx: &RuleCtx<'_>,
    value: &Value,
    path: &str,
    problems: &mut Vec<Diagnostic>,
) {
    match value {
        Value::String(s) if is_template(s) && whole_expression(s).is_none() => {
            if let Err(e) = env.add_template_owned(ctx.name(path), s.clone()) {
                problems.push(ctx.diag(&format!("emit.{path}"), describe(&e)));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                add_data_templates(env, ctx, item, &format!("{path}.{i}"), problems);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                add_data_templates(env, ctx, item, &data_path(path, k), problems);
            }
        }
        _ => {}
    }
}

fn compile_rule<'env>(
    envs: &'env Envs,
    ctx: &RuleCtx<'_>,
    spec: &Value,
) -> Result<Rule<'env>, Vec<Diagnostic>> {
    let env = &envs.output;
    let mut problems = Vec::new();
    let matcher = &spec["match"];
    let source = matcher["source"].as_str().and_then(|s| s.parse().ok());
    let topic = matcher["topic"].as_str().and_then(|t| match Glob::new(t) {
        Ok(glob) => Some(glob.compile_matcher()),
        Err(e) => {
            problems.push(ctx.diag("match.topic", format!("invalid glob: {e}")));
            None
        }
    });
    let mut expr = |env: &'env Environment<'static>, field: &str, src: &str| match env
        .compile_expression_owned(src.to_string())
    {
        Ok(e) => Some(e),
        Err(e) => {
            problems.push(ctx.diag(field, describe(&e)));
            None
        }
    };
    let when = match &spec["when"] {
        Value::Bool(true) | Value::Null => Condition::Always,
        Value::Bool(false) => Condition::Never,
        Value::String(s) => {
            expr(&envs.conditions, "when", s).map_or(Condition::Never, Condition::Expr)
        }
        _ => Condition::Never,
    };
    let for_each = spec["for_each"]
        .as_str()
        .and_then(|s| expr(env, "for_each", s));
    let emit = &spec["emit"];
    let text = |field: &str| -> Option<Text<'env>> {
        let src = emit[field].as_str()?;
        Some(if is_template(src) {
            placeholder_or(env.get_template(&ctx.name(field)).ok().map(Text::Template))
        } else {
            Text::Literal(src.to_string())
        })
    };
    let channel = text("channel");
    let title = text("title");
    let body = text("body");
    let dedupe_key = text("dedupe_key");
    let priority = match emit["priority"].as_str() {
        None => PriorityTemplate::Fixed(Priority::Normal),
        Some(src) if is_template(src) => env.get_template(&ctx.name("priority")).map_or(
            PriorityTemplate::Fixed(Priority::Normal),
            PriorityTemplate::Template,
        ),
        Some(src) => match Priority::parse(src) {
            Some(p) => PriorityTemplate::Fixed(p),
            None => {
                problems.push(ctx.diag(
                    "emit.priority",
                    format!("`{src}` is not a priority (low, normal, high, urgent)"),
                ));
                PriorityTemplate::Fixed(Priority::Normal)
            }
        },
    };
    let data = emit
        .get("data")
        .map(|v| compile_data(env, ctx, v, "data", &mut problems));
    if !problems.is_empty() {
        return Err(problems);
    }
    let Some(channel) = channel else {
        return Err(vec![ctx.diag("emit.channel", "missing".into())]);
    };
    Ok(Rule {
        id: ctx.id.as_str().into(),
        source,
        topic,
        when,
        when_text: spec["when"].as_str().map(str::to_string),
        for_each,
        channel,
        title,
        body,
        data,
        priority,
        dedupe_key,
    })
}

fn compile_data<'env>(
    env: &'env Environment<'static>,
    ctx: &RuleCtx<'_>,
    value: &Value,
    path: &str,
    problems: &mut Vec<Diagnostic>,
) -> Data<'env> {
    match value {
        Value::String(s) if is_template(s) => {
            if let Some(src) = whole_expression(s) {
                match env.compile_expression_owned(src.to_string()) {
                    Ok(e) => Data::Expr(e),
                    Err(e) => {
                        problems.push(ctx.diag(&format!("emit.{path}"), describe(&e)));
                        Data::Literal(Value::Null)
                    }
                }
            } else {
                Data::Text(placeholder_or(
                    env.get_template(&ctx.name(path)).ok().map(Text::Template),
                ))
            }
        }
        Value::Array(items) => Data::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| compile_data(env, ctx, v, &format!("{path}.{i}"), problems))
                .collect(),
        ),
        Value::Object(map) => Data::Object(
            map.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        compile_data(env, ctx, v, &data_path(path, k), problems),
                    )
                })
                .collect(),
        ),
        other => Data::Literal(other.clone()),
    }
}

/// In line order, without a second report of a field the schema already
/// named (or of a field inside it).
fn tidy(problems: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::with_capacity(problems.len());
    for d in problems {
        let covered = out.iter().any(|o| {
            o.rule == d.rule
                && (o.field == d.field
                    || o.field.is_empty()
                    || d.field.starts_with(&format!("{}.", o.field)))
        });
        if !covered {
            out.push(d);
        }
    }
    out.sort_by_key(|d| d.line);
    out
}

/// A template that pass 1 could not add was reported there; pass 2 keeps
/// going with a placeholder so every other problem is reported too (the
/// version is rejected either way).
fn placeholder_or(text: Option<Text<'_>>) -> Text<'_> {
    text.unwrap_or_else(|| Text::Literal(String::new()))
}

/// A minijinja error in one line, for a person: what went wrong, the
/// expression at fault when minijinja knows it, and the line for a
/// template of several lines. minijinja's own text ends with the name it
/// was given (`ticker#3:channel:1`, `<expression>:1`), which is internal:
/// the caller already names the rule and field.
pub(super) fn describe(e: &minijinja::Error) -> String {
    let mut msg = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    let source = e.template_source().unwrap_or_default();
    if let Some(at) = e.range().and_then(|r| source.get(r)) {
        let at = at.trim();
        let quoted = format!("`{at}`");
        if !at.is_empty() && at.len() <= 80 && at != source.trim() && !msg.contains(&quoted) {
            msg.push_str(&format!(" at {quoted}"));
        }
    }
    if let Some(line) = e.line().filter(|_| source.contains('\n')) {
        msg.push_str(&format!(" (line {line} of the template)"));
    }
    let mut inner = std::error::Error::source(e);
    while let Some(cause) = inner {
        msg.push_str(": ");
        match cause.downcast_ref::<minijinja::Error>() {
            Some(m) => msg.push_str(&describe(m)),
            None => msg.push_str(&cause.to_string()),
        }
        inner = cause.source();
    }
    msg
}
