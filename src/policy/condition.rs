//! Conditions on tool arguments: `{path: args.files[*].name, op: path_within, value: /workspace}`.
//!
//! Values are compared the way a lenient server reads them (numeric strings are numbers, "true"
//! is true), because the server, not the sidecar, runs the call. When a value cannot be compared
//! at all the answer is [`Truth::Unknown`], and the caller turns that into the unsafe outcome:
//! a `deny_if` condition holds and a `require` condition fails.

pub use super::argpath::{parse_path, resolve, resolve_one, Step};
use super::compare::{any_of, as_text, is_normal, is_within, lenient_eq, lenient_num, text_test};
pub use super::compare::{normalize_path, Num, Truth};
pub use super::prune::resolve_lenient;
use regex::Regex;
use serde_json::Value;
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
            (_, v) => v.map(|v| Operand { op, v }),
        };
        Ok(match (op, value) {
            ("eq", Some(v)) => Matcher::Eq(v.scalar()?),
            ("neq", Some(v)) => Matcher::Neq(v.scalar()?),
            ("in", Some(v)) => Matcher::In(v.list()?),
            ("not_in", Some(v)) => Matcher::NotIn(v.list()?),
            ("contains", Some(v)) => Matcher::Contains(v.scalar()?),
            ("prefix", Some(v)) => Matcher::Prefix(v.text()?),
            ("suffix", Some(v)) => Matcher::Suffix(v.text()?),
            ("regex", Some(v)) => Matcher::Regex(compile_regex(&v.text()?)?),
            ("gt", Some(v)) => Matcher::Compare(Ordering::Greater, false, v.number()?),
            ("gte", Some(v)) => Matcher::Compare(Ordering::Greater, true, v.number()?),
            ("lt", Some(v)) => Matcher::Compare(Ordering::Less, false, v.number()?),
            ("lte", Some(v)) => Matcher::Compare(Ordering::Less, true, v.number()?),
            ("exists", None) => Matcher::Exists,
            ("not_exists", None) => Matcher::NotExists,
            ("path_within", Some(v)) => match normalize_path(&v.text()?) {
                Some(n) if n.starts_with('/') => Matcher::PathWithin(n),
                _ => return Err("path_within needs an absolute directory".into()),
            },
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

/// A condition's operand, read as its operator needs it.
struct Operand<'a> {
    op: &'a str,
    v: &'a Value,
}

impl Operand<'_> {
    /// Any value but null (which never matches).
    fn scalar(&self) -> Result<Value, String> {
        match self.v {
            Value::Null => {
                Err("null never matches: use not_exists for an absent or null argument".into())
            }
            other => Ok(other.clone()),
        }
    }

    /// A string; a number or a boolean as its text.
    fn text(&self) -> Result<String, String> {
        match self.v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(format!("operator {:?} needs a string value", self.op)),
        }
    }

    /// A non-empty list of values that are not null.
    fn list(&self) -> Result<Vec<Value>, String> {
        match self.v {
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|v| Operand { op: self.op, v }.scalar())
                .collect(),
            _ => Err(format!(
                "operator {:?} needs a non-empty list value",
                self.op
            )),
        }
    }

    fn number(&self) -> Result<Num, String> {
        match self.v {
            Value::Number(n) => Ok(Num::from_json(n)),
            _ => Err(format!("operator {:?} needs a number value", self.op)),
        }
    }
}

/// A `regex` operand: bounded in length and in compiled size.
fn compile_regex(src: &str) -> Result<regex::Regex, String> {
    if src.len() > MAX_REGEX_LEN {
        return Err(format!("regex is longer than {MAX_REGEX_LEN} bytes"));
    }
    regex::RegexBuilder::new(src)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex: {}", regex_error(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(op: &str, v: Value) -> Matcher {
        Matcher::compile(op, Some(&v)).unwrap()
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
