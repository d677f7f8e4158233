//! A reader over a JSON value that records every problem with its field path and goes on, so a
//! user sees all the errors of a policy at once rather than one per attempt.

use serde_json::{Map, Value};
use std::fmt;

/// One problem in a policy, at a field path such as `tools.write_file.deny_if[0].conditions[1].op`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one policy document, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<FieldError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A field path under construction. Keys that are not plain identifiers are quoted
/// (`tools["delete.*"]`), so a path always names one field unambiguously.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root(prefix: &str) -> FieldPath {
        FieldPath(prefix.to_owned())
    }

    pub fn key(&self, key: &str) -> FieldPath {
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*' | '?'));
        let mut s = self.0.clone();
        if plain {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(key);
        } else {
            s.push('[');
            s.push_str(
                &serde_json::to_string(key)
                    .expect("serialising a value built in memory cannot fail"),
            );
            s.push(']');
        }
        FieldPath(s)
    }

    pub fn index(&self, i: usize) -> FieldPath {
        FieldPath(format!("{}[{i}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Collects errors while a document is read.
#[derive(Debug, Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.0.clone(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result<T>(self, value: T) -> Result<T, PolicyErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(PolicyErrors(self.0))
        }
    }
}

/// Names a JSON value's type the way users write it.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A field of an object, with the names it may be spelled with. The first spelling is the
/// policy file's (snake_case), the second, if any, the McpPolicy spec's (camelCase).
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub names: &'static [&'static str],
}

impl Field {
    pub const fn new(names: &'static [&'static str]) -> Field {
        Field { names }
    }

    pub fn canonical(&self) -> &'static str {
        self.names[0]
    }
}

/// Reads the fields of one object, reporting unknown fields when done.
pub struct Obj<'a> {
    map: &'a Map<String, Value>,
    pub path: FieldPath,
    allowed: &'static [Field],
    /// More allowed fields (an McpPolicy spec's placement fields beside the policy's own).
    extra: &'static [Field],
}

impl<'a> Obj<'a> {
    /// `None` (with an error recorded) when `v` is not a mapping. `null` reads as an empty mapping,
    /// since YAML writes an empty rule as `tool_name:`.
    pub fn new(
        v: &'a Value,
        path: FieldPath,
        allowed: &'static [Field],
        errs: &mut Errors,
    ) -> Option<Obj<'a>> {
        Obj::with_extra(v, path, allowed, &[], errs)
    }

    /// Like [`Obj::new`], allowing the fields of `extra` too.
    pub fn with_extra(
        v: &'a Value,
        path: FieldPath,
        allowed: &'static [Field],
        extra: &'static [Field],
        errs: &mut Errors,
    ) -> Option<Obj<'a>> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let map = match v {
            Value::Object(m) => m,
            Value::Null => EMPTY.get_or_init(Map::new),
            other => {
                errs.push(&path, format!("expected a mapping, found {}", kind(other)));
                return None;
            }
        };
        let obj = Obj {
            map,
            path,
            allowed,
            extra,
        };
        obj.check_unknown(errs);
        Some(obj)
    }

    fn check_unknown(&self, errs: &mut Errors) {
        for key in self.map.keys() {
            let known = self.allowed.iter().chain(self.extra);
            if !known.clone().any(|f| f.names.contains(&key.as_str())) {
                let expected: Vec<&str> = known.map(|f| f.canonical()).collect();
                errs.push(
                    &self.path.key(key),
                    format!("unknown field (expected one of: {})", expected.join(", ")),
                );
            }
        }
    }

    /// The value of `field` under whichever spelling the document used, with its path.
    /// Both spellings at once is an error.
    pub fn get(&self, field: Field, errs: &mut Errors) -> Option<(&'a Value, FieldPath)> {
        let mut found: Option<(&'a str, &'a Value)> = None;
        for name in field.names {
            if let Some((k, v)) = self.map.get_key_value(*name) {
                if let Some((prev, _)) = found {
                    errs.push(&self.path.key(k), format!("given twice, also as {prev:?}"));
                    continue;
                }
                found = Some((k.as_str(), v));
            }
        }
        found.map(|(k, v)| (v, self.path.key(k)))
    }

    /// Whether the mapping has no fields at all.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn require(&self, field: Field, errs: &mut Errors) -> Option<(&'a Value, FieldPath)> {
        let got = self.get(field, errs);
        if got.is_none() {
            errs.push(
                &self.path.key(field.canonical()),
                "required field is missing",
            );
        }
        got
    }
}

/// A string, or an error naming what was found instead.
pub fn string<'a>(v: &'a Value, path: &FieldPath, errs: &mut Errors) -> Option<&'a str> {
    match v {
        Value::String(s) => Some(s),
        other => {
            errs.push(path, format!("expected a string, found {}", kind(other)));
            None
        }
    }
}

/// A list (bounded by `max_items`), or an error.
pub fn list<'a>(
    v: &'a Value,
    path: &FieldPath,
    max_items: usize,
    errs: &mut Errors,
) -> Option<&'a [Value]> {
    match v {
        Value::Array(items) if items.len() > max_items => {
            errs.push(
                path,
                format!(
                    "at most {max_items} items are allowed, found {}",
                    items.len()
                ),
            );
            None
        }
        Value::Array(items) => Some(items),
        Value::Null => Some(&[]),
        other => {
            errs.push(path, format!("expected a list, found {}", kind(other)));
            None
        }
    }
}

/// A string no longer than `max_len` characters.
pub fn bounded_string<'a>(
    v: &'a Value,
    path: &FieldPath,
    max_len: usize,
    errs: &mut Errors,
) -> Option<&'a str> {
    let s = string(v, path, errs)?;
    if s.chars().count() > max_len {
        errs.push(path, format!("at most {max_len} characters are allowed"));
        return None;
    }
    Some(s)
}

/// One of `choices`, or an error that lists them.
pub fn choice<'a>(
    v: &'a Value,
    path: &FieldPath,
    choices: &[&str],
    errs: &mut Errors,
) -> Option<&'a str> {
    let s = string(v, path, errs)?;
    if choices.contains(&s) {
        Some(s)
    } else {
        errs.push(
            path,
            format!(
                "unknown value {s:?} (expected one of: {})",
                choices.join(", ")
            ),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_are_not_identifiers() {
        let p = FieldPath::root("tools")
            .key("delete_*")
            .key("deny_if")
            .index(0);
        assert_eq!(p.as_str(), "tools.delete_*.deny_if[0]");
        assert_eq!(
            FieldPath::root("tools").key("a.b").as_str(),
            r#"tools["a.b"]"#
        );
        assert_eq!(FieldPath::default().key("x").as_str(), "x");
    }

    #[test]
    fn both_spellings_of_one_field_is_an_error() {
        const F: &[Field] = &[Field::new(&["deny_if", "denyIf"])];
        let v: Value = serde_json::json!({"deny_if": [], "denyIf": []});
        let mut errs = Errors::default();
        let o = Obj::new(&v, FieldPath::root("t"), F, &mut errs).unwrap();
        assert!(o.get(F[0], &mut errs).is_some());
        assert_eq!(errs.0.len(), 1);
        assert!(errs.0[0].message.contains("given twice"));
    }
}
