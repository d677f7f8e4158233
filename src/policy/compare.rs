//! How argument values compare: the way a lenient server reads them (numeric strings are
//! numbers, "true" is true), with [`Truth::Unknown`] when a value cannot be compared at all.

use serde_json::{Number, Value};
use std::cmp::Ordering;

/// Three-valued result of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    /// The value cannot be compared (an object where a number is expected, a path with NUL).
    Unknown,
}

impl Truth {
    pub(crate) fn from_bool(b: bool) -> Truth {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }
    pub(crate) fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

pub(crate) fn any_of(results: impl Iterator<Item = Truth>) -> Truth {
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

pub(crate) fn text_test(actual: &Value, f: impl Fn(&str) -> bool) -> Truth {
    match as_text(actual) {
        Some(t) => Truth::from_bool(f(&t)),
        None => Truth::Unknown,
    }
}

/// Scalars as the text a server would see; lists and mappings have none.
pub(crate) fn as_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

/// Equality as a lenient server reads the argument: against a number, numeric strings count;
/// against a boolean, the usual spellings of true and false count.
pub(crate) fn lenient_eq(actual: &Value, expected: &Value) -> Truth {
    match expected {
        Value::Number(n) => match lenient_num(actual) {
            Some(a) => match a.cmp(&Num::from_json(n)) {
                Some(o) => Truth::from_bool(o == Ordering::Equal),
                None => Truth::Unknown,
            },
            None => match actual {
                // A string with no digit in any script and no `inf`/`nan` is no number to any
                // reader; one like "٩" is 9 to Python's int() though not to ours: unknown.
                Value::String(s) if !could_be_number(s) => Truth::False,
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

/// Whether some server's number parser might read `s` as a number we could not: it holds a
/// numeric character of any script, or spells infinity or NaN.
fn could_be_number(s: &str) -> bool {
    let lower = s.to_lowercase();
    s.chars().any(char::is_numeric) || lower.contains("inf") || lower.contains("nan")
}

/// A boolean as Python-side validators accept it.
pub(crate) fn lenient_bool(v: &Value) -> Option<bool> {
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

pub(crate) fn lenient_num(v: &Value) -> Option<Num> {
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
    pub(crate) fn from_json(n: &Number) -> Num {
        if let Some(i) = n.as_i64() {
            Num::Int(i.into())
        } else if let Some(u) = n.as_u64() {
            Num::Int(u.into())
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }
    }

    pub(crate) fn cmp(&self, other: &Num) -> Option<Ordering> {
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
pub(crate) fn parse_num(s: &str) -> Option<Num> {
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
pub(crate) fn is_normal(p: &str) -> bool {
    p == "/" || p[1..].split('/').all(|seg| !matches!(seg, "" | "." | ".."))
}

pub(crate) fn is_within(path: &str, dir: &str) -> bool {
    if dir == "/" {
        return true;
    }
    path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_agrees_with_normalisation() {
        for p in [
            "/", "/a", "/a/b", "/a//b", "/a/./b", "/a/../b", "/a/", "/a/.", "/..", "/a/.b",
            "/a/..b",
        ] {
            assert_eq!(is_normal(p), normalize_path(p).as_deref() == Some(p), "{p}");
        }
    }
}
