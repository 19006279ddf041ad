//! The channel policy: which channels a token (or no token) grants.
//!
//! Patterns come from three places:
//! - `auth.channels`, templates with `{claim}` placeholders (`user:{sub}`,
//!   `team:{teams}`), expanded once per token: a list claim gives one
//!   pattern per item, a missing claim gives none. Templates without a
//!   placeholder are compiled once, at start ([`Policy::fixed`]);
//! - the `auth.channels_claim` claim of the token: patterns the token's
//!   issuer grants;
//! - `auth.anonymous_channels`, for clients without a token.
//!
//! Invariants:
//! - a claim value never widens a pattern: glob characters in it are
//!   escaped, so `sub = "*"` grants `user:*` literally, not every user;
//! - a pattern without glob characters is an exact match (a hash lookup),
//!   so the common case costs no glob at subscribe time;
//! - a token expands to at most [`MAX_GRANTS`] patterns; more refuses the
//!   token rather than silently granting a subset.

use std::collections::HashSet;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde_json::{Map, Value};

/// Most patterns one token may expand to.
pub const MAX_GRANTS: usize = 1024;

/// Whether `pattern` uses glob syntax (`*`, `?`, `[...]`, `{a,b}`).
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', ']', '{', '}'])
}

fn compile(pattern: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map_err(|e| e.kind().to_string())
}

/// A valid glob (or plain channel name).
pub fn check_glob(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("empty pattern".into());
    }
    compile(pattern).map(|_| ())
}

/// Channel patterns: exact names and globs.
#[derive(Debug, Default)]
pub struct Grants {
    exact: HashSet<String>,
    globs: Option<GlobSet>,
}

impl Grants {
    /// Compile `patterns` (exact names and globs).
    pub fn new<I, S>(patterns: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut builder = GrantsBuilder::default();
        for p in patterns {
            builder.pattern(p.into())?;
        }
        builder.build()
    }

    pub fn allows(&self, channel: &str) -> bool {
        self.exact.contains(channel) || self.globs.as_ref().is_some_and(|g| g.is_match(channel))
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_none()
    }
}

#[derive(Debug, Default)]
struct GrantsBuilder {
    exact: HashSet<String>,
    globs: Option<GlobSetBuilder>,
    count: usize,
}

impl GrantsBuilder {
    fn pattern(&mut self, pattern: String) -> Result<(), String> {
        self.count += 1;
        if self.count > MAX_GRANTS {
            return Err(format!("more than {MAX_GRANTS} channel patterns"));
        }
        if is_glob(&pattern) {
            let glob = compile(&pattern).map_err(|e| format!("`{pattern}`: {e}"))?;
            self.globs.get_or_insert_with(GlobSetBuilder::new).add(glob);
        } else {
            self.exact.insert(pattern);
        }
        Ok(())
    }

    fn build(self) -> Result<Grants, String> {
        let globs = match self.globs {
            Some(b) => Some(b.build().map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Grants {
            exact: self.exact,
            globs,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Claim(String),
}

/// One `auth.channels` entry: literal text (which may hold globs) and
/// `{claim}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// A literal part holds glob characters: expansions are globs.
    glob: bool,
}

impl Template {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        let mut parts = Vec::new();
        let mut rest = pattern;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err("`}` without `{`: braces only surround a claim name".into());
            }
            let after = &rest[open + 1..];
            let close = after
                .find(['{', '}'])
                .filter(|&i| after[i..].starts_with('}'))
                .ok_or("`{` without `}`: write `{claim}`")?;
            let name = &after[..close];
            if name.is_empty() {
                return Err("`{}` names no claim".into());
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            parts.push(Part::Claim(name.to_string()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        let glob = parts
            .iter()
            .any(|p| matches!(p, Part::Literal(l) if is_glob(l)));
        let template = Self { parts, glob };
        if glob {
            // Check the glob syntax with a stand-in for each claim.
            let sample = template.render(&vec!["x"; template.placeholders()]);
            compile(&sample)?;
        }
        Ok(template)
    }

    fn placeholders(&self) -> usize {
        self.parts
            .iter()
            .filter(|p| matches!(p, Part::Claim(_)))
            .count()
    }

    /// The pattern with `values` in the placeholders, in order.
    fn render(&self, values: &[&str]) -> String {
        let mut values = values.iter();
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Claim(_) => {
                    let v = values.next().copied().unwrap_or_default();
                    if self.glob {
                        out.push_str(&globset::escape(v));
                    } else {
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }

    /// Every pattern this template gives for `claims`, into `out`.
    fn expand(&self, claims: &Map<String, Value>, out: &mut GrantsBuilder) -> Result<(), String> {
        let mut choices: Vec<Vec<String>> = Vec::new();
        for part in &self.parts {
            if let Part::Claim(name) = part {
                let values = claim_values(claims.get(name));
                if values.is_empty() {
                    return Ok(()); // a missing claim grants nothing here
                }
                choices.push(values);
            }
        }
        // The cartesian product of the placeholders' values, bounded by
        // MAX_GRANTS through `out`.
        let mut index = vec![0usize; choices.len()];
        loop {
            let values: Vec<&str> = index
                .iter()
                .zip(&choices)
                .map(|(&i, c)| c[i].as_str())
                .collect();
            let pattern = self.render(&values);
            if self.glob {
                // Claim values were escaped by `render`.
                out.pattern(pattern)?;
            } else {
                out.exact_pattern(pattern)?;
            }
            // Next combination, odometer style.
            let mut k = choices.len();
            loop {
                if k == 0 {
                    return Ok(());
                }
                k -= 1;
                index[k] += 1;
                if index[k] < choices[k].len() {
                    break;
                }
                index[k] = 0;
            }
        }
    }
}

impl GrantsBuilder {
    /// An exact channel name: never read as a glob, whatever it holds.
    fn exact_pattern(&mut self, channel: String) -> Result<(), String> {
        self.count += 1;
        if self.count > MAX_GRANTS {
            return Err(format!("more than {MAX_GRANTS} channel patterns"));
        }
        self.exact.insert(channel);
        Ok(())
    }
}

/// A claim's values as text: a string, an integer, or each of those in a
/// list. Other values (objects, booleans, empty strings) give nothing.
fn claim_values(value: Option<&Value>) -> Vec<String> {
    fn one(v: &Value) -> Option<String> {
        match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// The compiled `auth.channels`, `auth.channels_claim` and
/// `auth.anonymous_channels`.
#[derive(Debug)]
pub struct Policy {
    templates: Vec<Template>,
    /// Templates without placeholders: the same for every token.
    fixed: std::sync::Arc<Grants>,
    channels_claim: Option<String>,
    anonymous: std::sync::Arc<Grants>,
}

impl Policy {
    pub fn new(
        channels: &[String],
        channels_claim: Option<&str>,
        anonymous: &[String],
    ) -> Result<Self, String> {
        let mut templates = Vec::new();
        let mut fixed = Vec::new();
        for pattern in channels {
            let t = Template::parse(pattern).map_err(|e| format!("`{pattern}`: {e}"))?;
            if t.placeholders() == 0 {
                fixed.push(pattern.clone());
            } else {
                templates.push(t);
            }
        }
        Ok(Self {
            templates,
            fixed: std::sync::Arc::new(Grants::new(fixed)?),
            channels_claim: channels_claim.map(str::to_string),
            anonymous: std::sync::Arc::new(Grants::new(anonymous.iter().cloned())?),
        })
    }

    /// What every authenticated client may subscribe to, whatever its
    /// claims.
    pub fn fixed(&self) -> std::sync::Arc<Grants> {
        self.fixed.clone()
    }

    /// What clients without a token may subscribe to.
    pub fn anonymous(&self) -> std::sync::Arc<Grants> {
        self.anonymous.clone()
    }

    /// The patterns a token's claims grant beyond [`Self::fixed`].
    pub fn grants_for(&self, claims: &Map<String, Value>) -> Result<Grants, String> {
        let mut out = GrantsBuilder::default();
        for t in &self.templates {
            t.expand(claims, &mut out)?;
        }
        if let Some(name) = &self.channels_claim {
            match claims.get(name) {
                None | Some(Value::Null) => {}
                Some(Value::String(p)) => out.pattern(p.clone())?,
                Some(Value::Array(items)) => {
                    for item in items {
                        let Value::String(p) = item else {
                            return Err(format!("claim `{name}` holds a non-string"));
                        };
                        out.pattern(p.clone())?;
                    }
                }
                Some(_) => {
                    return Err(format!("claim `{name}` must be a list of channel patterns"));
                }
            }
        }
        out.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("an object"),
        }
    }

    fn policy(channels: &[&str], claim: Option<&str>) -> Policy {
        let channels: Vec<String> = channels.iter().map(|s| s.to_string()).collect();
        Policy::new(&channels, claim, &[]).expect("policy")
    }

    fn allows(p: &Policy, c: &Map<String, Value>, channel: &str) -> bool {
        p.fixed().allows(channel) || p.grants_for(c).expect("grants").allows(channel)
    }

    #[test]
    fn sub_placeholder_grants_own_channel_only() {
        let p = policy(&["user:{sub}", "broadcast"], None);
        let c = claims(json!({"sub": "42"}));
        assert!(allows(&p, &c, "user:42"));
        assert!(allows(&p, &c, "broadcast"));
        assert!(!allows(&p, &c, "user:43"));
        assert!(!allows(&p, &c, "user:42x"));
        assert!(!allows(&p, &c, "user:"));
    }

    #[test]
    fn list_claims_expand_to_each_item_and_numbers_count() {
        let p = policy(&["team:{teams}", "org:{org}:team:{teams}"], None);
        let c = claims(json!({"teams": ["a", 7, true, ""], "org": 3}));
        for ok in ["team:a", "team:7", "org:3:team:a", "org:3:team:7"] {
            assert!(allows(&p, &c, ok), "{ok}");
        }
        for no in ["team:true", "team:", "org:3:team:true", "team:b"] {
            assert!(!allows(&p, &c, no), "{no}");
        }
    }

    #[test]
    fn a_missing_claim_grants_nothing() {
        let p = policy(&["team:{teams}"], None);
        let g = p.grants_for(&claims(json!({"sub": "1"}))).expect("grants");
        assert!(g.is_empty());
    }

    #[test]
    fn claim_values_cannot_widen_a_glob_or_exact_pattern() {
        let p = policy(&["user:{sub}", "room:{sub}:*"], None);
        let c = claims(json!({"sub": "*"}));
        assert!(allows(&p, &c, "user:*"));
        assert!(!allows(&p, &c, "user:42"));
        assert!(allows(&p, &c, "room:*:chat"));
        assert!(!allows(&p, &c, "room:7:chat"));
        let c = claims(json!({"sub": "[0-9]"}));
        assert!(!allows(&p, &c, "room:5:chat"));
        assert!(allows(&p, &c, "room:[0-9]:chat"));
    }

    #[test]
    fn fixed_globs_and_the_channels_claim() {
        let p = policy(&["ticker:*"], Some("channels"));
        let c = claims(json!({"channels": ["team:7:*", "news"]}));
        assert!(allows(&p, &c, "ticker:AAPL"));
        assert!(allows(&p, &c, "team:7:general"));
        assert!(allows(&p, &c, "news"));
        assert!(!allows(&p, &c, "team:8:general"));
        assert!(!allows(&p, &c, "newsroom"));
        let bad = claims(json!({"channels": {"a": 1}}));
        assert!(p.grants_for(&bad).is_err());
        let bad = claims(json!({"channels": ["ok", 5]}));
        assert!(p.grants_for(&bad).is_err());
        let bad = claims(json!({"channels": ["news:["]}));
        assert!(p.grants_for(&bad).is_err());
    }

    #[test]
    fn too_many_patterns_refuse_the_token() {
        let p = policy(&["a:{x}:{y}"], None);
        let items: Vec<u32> = (0..40).collect();
        let c = claims(json!({"x": items, "y": items}));
        let err = p.grants_for(&c).expect_err("1600 patterns");
        assert!(err.contains("1024"), "{err}");
        let c = claims(json!({"x": [1, 2], "y": [3, 4]}));
        let g = p.grants_for(&c).expect("4 patterns");
        for ok in ["a:1:3", "a:1:4", "a:2:3", "a:2:4"] {
            assert!(g.allows(ok), "{ok}");
        }
    }

    #[test]
    fn templates_parse_placeholders_and_refuse_stray_braces() {
        let t = Template::parse("user:{sub}").expect("ok");
        assert_eq!(
            t.parts,
            [Part::Literal("user:".into()), Part::Claim("sub".into())]
        );
        let t = Template::parse("{https://example.com/teams}").expect("namespaced claim");
        assert_eq!(t.parts, [Part::Claim("https://example.com/teams".into())]);
        for bad in ["", "a{", "a}", "{}", "a{b{c}}", "x:[", "{a}{"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn anonymous_grants() {
        let p = Policy::new(&[], None, &["public:*".into(), "status".into()]).expect("policy");
        assert!(p.anonymous().allows("public:news"));
        assert!(p.anonymous().allows("status"));
        assert!(!p.anonymous().allows("user:1"));
        assert!(!p.fixed().allows("public:news"));
    }
}
