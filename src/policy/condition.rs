//! Conditions on tool arguments: `{path: args.files[*].name, op: path_within, value: /workspace}`.
//!
//! Values are compared the way a lenient server reads them (numeric strings are numbers, "true"
//! is true), because the server, not the sidecar, runs the call. When a value cannot be compared
//! at all the answer is [`Truth::Unknown`], and the caller turns that into the unsafe outcome:
//! a `deny_if` condition holds and a `require` condition fails.

use regex::Regex;
use serde_json::{Number, Value};
use std::cmp::Ordering;

/// Every operator, in the order the docs list them.
pub const OPS: &[&str] = &[
    "eq",
    "neq",
    "in",
    "not_in",
    "contains",
    "prefix",
    "suffix",
    "regex",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
    "not_exists",
    "path_within",
];

/// Longest regex source accepted, and the most memory one compiled regex may take.
pub const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Three-valued result of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    /// The value cannot be compared (an object where a number is expected, a path with NUL).
    Unknown,
}

impl Truth {
    fn from_bool(b: bool) -> Truth {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }
    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

/// One step of an argument path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    Each,
}

/// Parses `args.a.b[0][*]` or `args["key.with.dots"]`. The path must start at `args`.
pub fn parse_path(text: &str) -> Result<Vec<Step>, String> {
    let rest = text
        .strip_prefix("args")
        .ok_or_else(|| format!("path {text:?} must start with \"args\""))?;
    let b = rest.as_bytes();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end] != b'.' && b[end] != b'[' {
                    end += 1;
                }
                if end == start {
                    return Err(format!(
                        "path {text:?} has an empty key at byte {}",
                        4 + start
                    ));
                }
                steps.push(Step::Key(rest[start..end].to_owned()));
                i = end;
            }
            b'[' => {
                let close = rest[i..]
                    .find(']')
                    .map(|c| i + c)
                    .ok_or_else(|| format!("path {text:?} has an unclosed '['"))?;
                let inner = &rest[i + 1..close];
                if inner == "*" {
                    steps.push(Step::Each);
                    i = close + 1;
                } else if inner.starts_with('"') {
                    // A quoted key may itself hold ']', so read it as a JSON string.
                    let mut de = serde_json::Deserializer::from_str(&rest[i + 1..]).into_iter();
                    let key: String = match de.next() {
                        Some(Ok(Value::String(s))) => s,
                        _ => return Err(format!("path {text:?} has a malformed quoted key")),
                    };
                    let after = i + 1 + de.byte_offset();
                    if b.get(after) != Some(&b']') {
                        return Err(format!("path {text:?}: expected ']' after a quoted key"));
                    }
                    steps.push(Step::Key(key));
                    i = after + 1;
                } else if !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_digit()) {
                    let n = inner
                        .parse()
                        .map_err(|_| format!("path {text:?}: index {inner} is too large"))?;
                    steps.push(Step::Index(n));
                    i = close + 1;
                } else {
                    return Err(format!(
                        "path {text:?}: [{inner}] is not an index, [*] or a quoted key"
                    ));
                }
            }
            _ => return Err(format!("path {text:?}: expected '.' or '[' after \"args\"")),
        }
    }
    Ok(steps)
}

/// Collects the values a path reaches. A step into the wrong kind of value (a key on a list,
/// `[*]` on a string) reaches nothing; `null` counts as absent.
pub fn resolve<'v>(steps: &[Step], v: &'v Value, out: &mut Vec<&'v Value>) {
    let Some((step, rest)) = steps.split_first() else {
        if !v.is_null() {
            out.push(v);
        }
        return;
    };
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => {
            if let Some(child) = m.get(k) {
                resolve(rest, child, out);
            }
        }
        (Step::Index(i), Value::Array(a)) => {
            if let Some(child) = a.get(*i) {
                resolve(rest, child, out);
            }
        }
        (Step::Each, Value::Array(a)) => {
            for child in a {
                resolve(rest, child, out);
            }
        }
        _ => {}
    }
}

/// The one value a path without `[*]` reaches, if any (`null` counts as absent).
pub fn resolve_one<'v>(steps: &[Step], mut v: &'v Value) -> Option<&'v Value> {
    for step in steps {
        v = match (step, v) {
            (Step::Key(k), Value::Object(m)) => m.get(k)?,
            (Step::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    (!v.is_null()).then_some(v)
}

/// A compiled operator with its operand.
#[derive(Debug, Clone)]
pub enum Matcher {
    Eq(Value),
    Neq(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Contains(Value),
    Prefix(String),
    Suffix(String),
    Regex(Regex),
    Compare(Ordering, bool, Num),
    Exists,
    NotExists,
    PathWithin(String),
}

impl Matcher {
    /// Compiles `op` with its `value` (`None` when the field was absent).
    pub fn compile(op: &str, value: Option<&Value>) -> Result<Matcher, String> {
        let needs_value = !matches!(op, "exists" | "not_exists");
        let value = match (needs_value, value) {
            (true, None) => return Err(format!("operator {op:?} needs a value")),
            (false, Some(_)) => return Err(format!("operator {op:?} takes no value")),
            (_, v) => v,
        };
        let scalar = |v: &Value| -> Result<Value, String> {
            match v {
                Value::Null => Err("null never matches: use not_exists for an absent or null \
                                    argument"
                    .into()),
                other => Ok(other.clone()),
            }
        };
        let text = |v: &Value| -> Result<String, String> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => Err(format!("operator {op:?} needs a string value")),
            }
        };
        let list = |v: &Value| -> Result<Vec<Value>, String> {
            match v {
                Value::Array(items) if !items.is_empty() => items.iter().map(scalar).collect(),
                _ => Err(format!("operator {op:?} needs a non-empty list value")),
            }
        };
        let number = |v: &Value| -> Result<Num, String> {
            match v {
                Value::Number(n) => Ok(Num::from_json(n)),
                _ => Err(format!("operator {op:?} needs a number value")),
            }
        };
        Ok(match (op, value) {
            ("eq", Some(v)) => Matcher::Eq(scalar(v)?),
            ("neq", Some(v)) => Matcher::Neq(scalar(v)?),
            ("in", Some(v)) => Matcher::In(list(v)?),
            ("not_in", Some(v)) => Matcher::NotIn(list(v)?),
            ("contains", Some(v)) => Matcher::Contains(scalar(v)?),
            ("prefix", Some(v)) => Matcher::Prefix(text(v)?),
            ("suffix", Some(v)) => Matcher::Suffix(text(v)?),
            ("regex", Some(v)) => {
                let src = text(v)?;
                if src.len() > MAX_REGEX_LEN {
                    return Err(format!("regex is longer than {MAX_REGEX_LEN} bytes"));
                }
                let re = regex::RegexBuilder::new(&src)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("invalid regex: {}", regex_error(&e)))?;
                Matcher::Regex(re)
            }
            ("gt", Some(v)) => Matcher::Compare(Ordering::Greater, false, number(v)?),
            ("gte", Some(v)) => Matcher::Compare(Ordering::Greater, true, number(v)?),
            ("lt", Some(v)) => Matcher::Compare(Ordering::Less, false, number(v)?),
            ("lte", Some(v)) => Matcher::Compare(Ordering::Less, true, number(v)?),
            ("exists", None) => Matcher::Exists,
            ("not_exists", None) => Matcher::NotExists,
            ("path_within", Some(v)) => {
                let dir = text(v)?;
                match normalize_path(&dir) {
                    Some(n) if n.starts_with('/') => Matcher::PathWithin(n),
                    _ => return Err("path_within needs an absolute directory".into()),
                }
            }
            _ => {
                return Err(format!(
                    "unknown operator {op:?} (expected one of: {})",
                    OPS.join(", ")
                ))
            }
        })
    }

    /// Whether the operator tests presence rather than values.
    pub fn is_presence(&self) -> bool {
        matches!(self, Matcher::Exists | Matcher::NotExists)
    }

    /// Presence test over every value the path reached.
    pub fn test_presence(&self, found: usize) -> Truth {
        match self {
            Matcher::NotExists => Truth::from_bool(found == 0),
            _ => Truth::from_bool(found > 0),
        }
    }

    /// Tests one value the path reached.
    pub fn test(&self, actual: &Value) -> Truth {
        match self {
            Matcher::Eq(e) => lenient_eq(actual, e),
            Matcher::Neq(e) => lenient_eq(actual, e).not(),
            Matcher::In(list) => any_of(list.iter().map(|e| lenient_eq(actual, e))),
            Matcher::NotIn(list) => any_of(list.iter().map(|e| lenient_eq(actual, e))).not(),
            Matcher::Contains(e) => match actual {
                Value::Array(items) => any_of(items.iter().map(|a| lenient_eq(a, e))),
                _ => match (as_text(actual), as_text(e)) {
                    (Some(a), Some(e)) => Truth::from_bool(a.contains(e.as_ref())),
                    _ => Truth::Unknown,
                },
            },
            Matcher::Prefix(p) => text_test(actual, |a| a.starts_with(p.as_str())),
            Matcher::Suffix(s) => text_test(actual, |a| a.ends_with(s.as_str())),
            Matcher::Regex(re) => text_test(actual, |a| re.is_match(a)),
            Matcher::Compare(ord, or_equal, e) => match lenient_num(actual) {
                Some(a) => match a.cmp(e) {
                    Some(o) => Truth::from_bool(o == *ord || (*or_equal && o == Ordering::Equal)),
                    None => Truth::Unknown,
                },
                None => Truth::Unknown,
            },
            Matcher::Exists | Matcher::NotExists => self.test_presence(1),
            Matcher::PathWithin(dir) => match actual {
                Value::String(p) if !p.contains('\0') && p.starts_with('/') => {
                    if is_normal(p) {
                        Truth::from_bool(is_within(p, dir))
                    } else {
                        match normalize_path(p) {
                            Some(n) => Truth::from_bool(is_within(&n, dir)),
                            None => Truth::Unknown,
                        }
                    }
                }
                _ => Truth::Unknown,
            },
        }
    }

    /// A short human description, used in "argument validation failed" reasons.
    pub fn describe(&self, path: &str) -> String {
        let show = |v: &Value| v.to_string();
        match self {
            Matcher::Eq(v) => format!("{path} must equal {}", show(v)),
            Matcher::Neq(v) => format!("{path} must not equal {}", show(v)),
            Matcher::In(l) => format!("{path} must be one of {}", show(&Value::Array(l.clone()))),
            Matcher::NotIn(l) => {
                format!(
                    "{path} must not be one of {}",
                    show(&Value::Array(l.clone()))
                )
            }
            Matcher::Contains(v) => format!("{path} must contain {}", show(v)),
            Matcher::Prefix(p) => format!("{path} must start with {p:?}"),
            Matcher::Suffix(s) => format!("{path} must end with {s:?}"),
            Matcher::Regex(r) => format!("{path} must match /{}/", r.as_str()),
            Matcher::Compare(ord, eq, n) => {
                let op = match (ord, eq) {
                    (Ordering::Greater, false) => ">",
                    (Ordering::Greater, true) => ">=",
                    (_, false) => "<",
                    (_, true) => "<=",
                };
                format!("{path} must be {op} {n}")
            }
            Matcher::Exists => format!("{path} is required"),
            Matcher::NotExists => format!("{path} must not be given"),
            Matcher::PathWithin(d) => format!("{path} must be a path within {d}"),
        }
    }
}

/// The regex crate's syntax errors draw a caret diagram over several lines; keep the message.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    match text.lines().find_map(|l| l.strip_prefix("error: ")) {
        Some(msg) => msg.to_owned(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

fn any_of(results: impl Iterator<Item = Truth>) -> Truth {
    let mut unknown = false;
    for r in results {
        match r {
            Truth::True => return Truth::True,
            Truth::Unknown => unknown = true,
            Truth::False => {}
        }
    }
    if unknown {
        Truth::Unknown
    } else {
        Truth::False
    }
}

fn text_test(actual: &Value, f: impl Fn(&str) -> bool) -> Truth {
    match as_text(actual) {
        Some(t) => Truth::from_bool(f(&t)),
        None => Truth::Unknown,
    }
}

/// Scalars as the text a server would see; lists and mappings have none.
fn as_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

/// Equality as a lenient server reads the argument: against a number, numeric strings count;
/// against a boolean, the usual spellings of true and false count.
fn lenient_eq(actual: &Value, expected: &Value) -> Truth {
    match expected {
        Value::Number(n) => match lenient_num(actual) {
            Some(a) => match a.cmp(&Num::from_json(n)) {
                Some(o) => Truth::from_bool(o == Ordering::Equal),
                None => Truth::Unknown,
            },
            None => match actual {
                Value::String(_) => Truth::False,
                _ => Truth::Unknown,
            },
        },
        Value::Bool(b) => match lenient_bool(actual) {
            Some(a) => Truth::from_bool(a == *b),
            None => Truth::Unknown,
        },
        Value::String(s) => match actual {
            Value::String(a) => Truth::from_bool(a == s),
            Value::Number(n) => match parse_num(s) {
                Some(e) => Truth::from_bool(Num::from_json(n).cmp(&e) == Some(Ordering::Equal)),
                None => Truth::False,
            },
            Value::Bool(a) => match lenient_bool(expected) {
                Some(e) => Truth::from_bool(*a == e),
                None => Truth::False,
            },
            _ => Truth::Unknown,
        },
        // Lists and mappings compare structurally.
        other => Truth::from_bool(actual == other),
    }
}

/// A boolean as Python-side validators accept it.
fn lenient_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "y" | "on" | "t" => Some(true),
            "false" | "0" | "no" | "n" | "off" | "f" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn lenient_num(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => Some(Num::from_json(n)),
        Value::String(s) => parse_num(s),
        _ => None,
    }
}

/// A number compared exactly when both sides are integers, as floats otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn from_json(n: &Number) -> Num {
        if let Some(i) = n.as_i64() {
            Num::Int(i.into())
        } else if let Some(u) = n.as_u64() {
            Num::Int(u.into())
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }
    }

    fn cmp(&self, other: &Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }

    fn as_f64(&self) -> f64 {
        match self {
            Num::Int(i) => *i as f64,
            Num::Float(f) => *f,
        }
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Num::Int(i) => write!(f, "{i}"),
            Num::Float(x) => write!(f, "{x}"),
        }
    }
}

/// A numeric string as Python's `int()`/`float()` read it: surrounding whitespace, a sign,
/// `_` between digits, exponents, `inf`. NaN cannot be compared, so it is no number.
fn parse_num(s: &str) -> Option<Num> {
    let t = s.trim();
    if t.is_empty() || t.len() > 64 {
        return None;
    }
    let b = t.as_bytes();
    // Underscores only between two digits, as Python allows.
    for (i, &c) in b.iter().enumerate() {
        if c == b'_'
            && !(i > 0 && b[i - 1].is_ascii_digit() && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            return None;
        }
    }
    let cleaned: String = t.chars().filter(|&c| c != '_').collect();
    if let Ok(i) = cleaned.parse::<i128>() {
        return Some(Num::Int(i));
    }
    match cleaned.parse::<f64>() {
        Ok(f) if !f.is_nan() => Some(Num::Float(f)),
        _ => None,
    }
}

/// Lexical normalisation of an absolute or relative path: drops `.`, resolves `..` (never above
/// the root), folds repeated `/`. `None` for a path holding NUL.
pub fn normalize_path(p: &str) -> Option<String> {
    if p.contains('\0') {
        return None;
    }
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    Some(if absolute {
        format!("/{joined}")
    } else {
        joined
    })
}

/// Already normal: no empty, `.` or `..` segment after the leading `/`, no trailing `/`.
fn is_normal(p: &str) -> bool {
    p == "/" || p[1..].split('/').all(|seg| !matches!(seg, "" | "." | ".."))
}

fn is_within(path: &str, dir: &str) -> bool {
    if dir == "/" {
        return true;
    }
    path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(op: &str, v: Value) -> Matcher {
        Matcher::compile(op, Some(&v)).unwrap()
    }

    #[test]
    fn paths_parse_keys_indexes_stars_and_quoted_keys() {
        use Step::*;
        assert_eq!(parse_path("args").unwrap(), vec![]);
        assert_eq!(
            parse_path("args.files[0].name").unwrap(),
            vec![Key("files".into()), Index(0), Key("name".into())]
        );
        assert_eq!(
            parse_path("args.files[*]").unwrap(),
            vec![Key("files".into()), Each]
        );
        assert_eq!(
            parse_path(r#"args["a.b]"].c"#).unwrap(),
            vec![Key("a.b]".into()), Key("c".into())]
        );
        for bad in [
            "arg.x",
            "args.",
            "args..x",
            "args[",
            "args[x]",
            "args[-1]",
            "argsx",
            "args[\"a\"",
        ] {
            assert!(parse_path(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn resolve_follows_structure_and_skips_nulls() {
        let v = json!({"files": [{"n": "a"}, {"n": null}, {"n": "c"}], "s": "x"});
        let mut out = Vec::new();
        resolve(&parse_path("args.files[*].n").unwrap(), &v, &mut out);
        assert_eq!(out, vec![&json!("a"), &json!("c")]);
        out.clear();
        resolve(&parse_path("args.s[*]").unwrap(), &v, &mut out);
        assert!(out.is_empty(), "[*] on a string reaches nothing");
        out.clear();
        resolve(&parse_path("args.files[2].n").unwrap(), &v, &mut out);
        assert_eq!(out, vec![&json!("c")]);
    }

    #[test]
    fn eq_and_neq_read_values_leniently() {
        assert_eq!(m("eq", json!(9)).test(&json!(9)), Truth::True);
        assert_eq!(m("eq", json!(9)).test(&json!("9")), Truth::True);
        assert_eq!(m("eq", json!(9)).test(&json!(" 9 ")), Truth::True);
        assert_eq!(m("eq", json!(9)).test(&json!(9.0)), Truth::True);
        assert_eq!(m("eq", json!(9)).test(&json!("nine")), Truth::False);
        assert_eq!(m("eq", json!(9)).test(&json!({"n": 9})), Truth::Unknown);
        assert_eq!(m("eq", json!(true)).test(&json!("true")), Truth::True);
        assert_eq!(m("eq", json!(true)).test(&json!("False")), Truth::False);
        assert_eq!(m("eq", json!(true)).test(&json!(1)), Truth::True);
        assert_eq!(m("eq", json!(true)).test(&json!([true])), Truth::Unknown);
        assert_eq!(m("eq", json!("9")).test(&json!(9)), Truth::True);
        assert_eq!(m("eq", json!("abc")).test(&json!("abc")), Truth::True);
        assert_eq!(m("eq", json!({"a": 1})).test(&json!({"a": 1})), Truth::True);
        assert_eq!(m("neq", json!("abc")).test(&json!("abd")), Truth::True);
        assert_eq!(m("neq", json!(9)).test(&json!("9")), Truth::False);
        assert_eq!(
            m("neq", json!(9)).test(&json!([])),
            Truth::Unknown,
            "neq never flips unknown"
        );
        assert!(Matcher::compile("eq", Some(&Value::Null)).is_err());
    }

    #[test]
    fn in_and_not_in() {
        let inm = m("in", json!(["a", 2]));
        assert_eq!(inm.test(&json!("a")), Truth::True);
        assert_eq!(inm.test(&json!("2")), Truth::True);
        assert_eq!(inm.test(&json!("b")), Truth::False);
        assert_eq!(inm.test(&json!({})), Truth::Unknown);
        assert_eq!(m("not_in", json!(["a"])).test(&json!("b")), Truth::True);
        assert_eq!(m("not_in", json!(["a"])).test(&json!("a")), Truth::False);
        assert!(Matcher::compile("in", Some(&json!([]))).is_err());
        assert!(Matcher::compile("in", Some(&json!("a"))).is_err());
    }

    #[test]
    fn string_operators() {
        assert_eq!(
            m("contains", json!("rm -rf")).test(&json!("x; rm -rf /")),
            Truth::True
        );
        assert_eq!(
            m("contains", json!("rm -rf")).test(&json!("ls")),
            Truth::False
        );
        assert_eq!(
            m("contains", json!("b")).test(&json!(["a", "b"])),
            Truth::True
        );
        assert_eq!(
            m("contains", json!("b")).test(&json!({"b": 1})),
            Truth::Unknown
        );
        assert_eq!(
            m("prefix", json!("/etc")).test(&json!("/etc/passwd")),
            Truth::True
        );
        assert_eq!(m("suffix", json!(".py")).test(&json!("a.py")), Truth::True);
        assert_eq!(
            m("suffix", json!(".py")).test(&json!(["a.py"])),
            Truth::Unknown
        );
        assert_eq!(m("prefix", json!("12")).test(&json!(123)), Truth::True);
        assert_eq!(
            m("regex", json!("^[a-z]+$")).test(&json!("abc")),
            Truth::True
        );
        assert_eq!(
            m("regex", json!("^[a-z]+$")).test(&json!("ab1")),
            Truth::False
        );
        assert_eq!(
            m("regex", json!("^[a-z]+$")).test(&json!({})),
            Truth::Unknown
        );
        let e = Matcher::compile("regex", Some(&json!("(unclosed"))).unwrap_err();
        assert!(e.starts_with("invalid regex"), "{e}");
    }

    #[test]
    fn numeric_comparisons() {
        assert_eq!(m("gt", json!(100)).test(&json!(101)), Truth::True);
        assert_eq!(m("gt", json!(100)).test(&json!(100)), Truth::False);
        assert_eq!(m("gte", json!(100)).test(&json!(100)), Truth::True);
        assert_eq!(m("lt", json!(100)).test(&json!("99")), Truth::True);
        assert_eq!(m("lte", json!(100)).test(&json!("1_00")), Truth::True);
        assert_eq!(m("gt", json!(100)).test(&json!("1e3")), Truth::True);
        assert_eq!(m("gt", json!(100)).test(&json!("inf")), Truth::True);
        assert_eq!(m("gt", json!(100)).test(&json!("nan")), Truth::Unknown);
        assert_eq!(m("gt", json!(100)).test(&json!("lots")), Truth::Unknown);
        assert_eq!(m("gt", json!(100)).test(&json!(true)), Truth::Unknown);
        assert_eq!(
            m("gt", json!(100)).test(&json!({"v": 1000})),
            Truth::Unknown
        );
        assert_eq!(m("gt", json!(1.5)).test(&json!(2)), Truth::True);
        // Integers beyond f64 precision still compare exactly.
        assert_eq!(
            m("gt", json!(9007199254740992u64)).test(&json!("9007199254740993")),
            Truth::True
        );
        assert!(Matcher::compile("gt", Some(&json!("100"))).is_err());
    }

    #[test]
    fn presence_operators() {
        assert!(Matcher::compile("exists", None).unwrap().is_presence());
        assert_eq!(Matcher::Exists.test_presence(0), Truth::False);
        assert_eq!(Matcher::NotExists.test_presence(0), Truth::True);
        assert!(Matcher::compile("exists", Some(&json!(1))).is_err());
        assert!(Matcher::compile("eq", None).is_err());
    }

    #[test]
    fn the_fast_path_agrees_with_normalisation() {
        for p in [
            "/", "/a", "/a/b", "/a//b", "/a/./b", "/a/../b", "/a/", "/a/.", "/..", "/a/.b",
            "/a/..b",
        ] {
            assert_eq!(is_normal(p), normalize_path(p).as_deref() == Some(p), "{p}");
        }
    }

    #[test]
    fn path_within_normalises_and_fails_closed() {
        let w = m("path_within", json!("/workspace/"));
        assert_eq!(w.test(&json!("/workspace/a.txt")), Truth::True);
        assert_eq!(w.test(&json!("/workspace")), Truth::True);
        assert_eq!(w.test(&json!("/workspace//x/./y")), Truth::True);
        assert_eq!(w.test(&json!("/workspace/../etc/passwd")), Truth::False);
        assert_eq!(w.test(&json!("/workspace2/x")), Truth::False);
        assert_eq!(w.test(&json!("/../../workspace/x")), Truth::True);
        assert_eq!(w.test(&json!("/workspace/a\u{0}b")), Truth::Unknown);
        assert_eq!(
            w.test(&json!("a.txt")),
            Truth::Unknown,
            "relative paths cannot be placed"
        );
        assert_eq!(w.test(&json!(7)), Truth::Unknown);
        assert!(Matcher::compile("path_within", Some(&json!("rel/dir"))).is_err());
        assert_eq!(
            m("path_within", json!("/")).test(&json!("/anything")),
            Truth::True
        );
    }

    #[test]
    fn unknown_operator_lists_the_known_ones() {
        let e = Matcher::compile("startswith", Some(&json!("x"))).unwrap_err();
        assert!(
            e.contains("unknown operator \"startswith\"") && e.contains("path_within"),
            "{e}"
        );
    }
}
