//! Reading policy text (JSON or YAML, one or many documents) into plain JSON values.
//!
//! A duplicate key is an error here: `serde_json` would keep the last value silently, and a
//! policy with two `run_cell` entries must not quietly lose one of them.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// A document could not be read as JSON or YAML.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    /// What the parser said, with its line and column where it gave them.
    pub message: String,
}

/// Text format of a policy source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// JSON when the text opens with `{` or `[`, YAML otherwise (YAML is the superset users write).
    pub fn sniff(text: &str) -> Format {
        match text
            .trim_start_matches('\u{feff}')
            .trim_start()
            .as_bytes()
            .first()
        {
            Some(b'{') | Some(b'[') => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// Parses every document in `text`. JSON holds exactly one; YAML may hold several separated by
/// `---`. Empty YAML documents (a trailing `---`) are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, SyntaxError> {
    match Format::sniff(text) {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let v = StrictValue::deserialize(&mut de).map_err(syntax)?;
            de.end().map_err(syntax)?;
            Ok(vec![v.0])
        }
        Format::Yaml => {
            let mut docs = Vec::new();
            for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
                let v = StrictValue::deserialize(doc).map_err(|e| SyntaxError {
                    message: format!("document {}: {e}", i + 1),
                })?;
                if !v.0.is_null() {
                    docs.push(v.0);
                }
            }
            Ok(docs)
        }
    }
}

/// Parses text that must hold exactly one document.
pub fn parse_one(text: &str) -> Result<Value, SyntaxError> {
    let mut docs = parse_documents(text)?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        0 => Err(SyntaxError {
            message: "the document is empty".into(),
        }),
        n => Err(SyntaxError {
            message: format!("expected one document, found {n}"),
        }),
    }
}

fn syntax(e: impl fmt::Display) -> SyntaxError {
    SyntaxError {
        message: e.to_string(),
    }
}

/// A JSON value whose objects never held the same key twice.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON or YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number must be finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<MapKey>()? {
            let StrictValue(v) = map.next_value()?;
            if out.contains_key(&key.0) {
                return Err(de::Error::custom(format!("duplicate key {:?}", key.0)));
            }
            out.insert(key.0, v);
        }
        Ok(Value::Object(out))
    }
}

/// Object keys: YAML allows non-string keys (`1: x`, `true: y`); they are read as their text.
struct MapKey(String);

impl<'de> Deserialize<'de> for MapKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }
            fn visit_string<E>(self, v: String) -> Result<String, E> {
                Ok(v)
            }
            fn visit_bool<E>(self, v: bool) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_i64<E>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_u64<E>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }
        }
        d.deserialize_any(KeyVisitor).map(MapKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_yaml_give_the_same_value() {
        let j = parse_one(r#"{"default":"deny","tools":{"a":{}}}"#).unwrap();
        let y = parse_one("default: deny\ntools:\n  a: {}\n").unwrap();
        assert_eq!(j, y);
    }

    #[test]
    fn duplicate_keys_are_refused_in_both_formats() {
        let e = parse_one(r#"{"tools":{"a":{},"a":{}}}"#).unwrap_err();
        assert!(e.message.contains("duplicate key \"a\""), "{}", e.message);
        let e = parse_one("tools:\n  a: {}\n  a: {}\n").unwrap_err();
        assert!(e.message.contains("duplicate"), "{}", e.message);
    }

    #[test]
    fn multi_document_yaml_skips_empty_documents() {
        let docs = parse_documents("a: 1\n---\nb: 2\n---\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["b"], 2);
    }

    #[test]
    fn trailing_garbage_after_json_is_an_error() {
        assert!(parse_one(r#"{"a":1} {"b":2}"#).is_err());
    }
}
