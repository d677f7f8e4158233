//! Reading a document's shape with serde, every error at once: the path of each thing serde
//! refuses, and what could be read of the rest.

use super::bounds;
use super::reader::{FieldError, FieldPath, PolicyErrors};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_json::Value;
use serde_path_to_error::Segment;

/// Deserialises `v` as `T`, naming the path of each thing it refuses (under `prefix`).
pub fn from_value<T: DeserializeOwned>(v: &Value, prefix: &str) -> Result<T, PolicyErrors> {
    match read(v, prefix) {
        (Some(t), errs) if errs.is_empty() => Ok(t),
        (_, errs) => Err(PolicyErrors(errs)),
    }
}

/// Deserialises `v` as `T` and goes on past what serde refuses, so a user sees every shape
/// error at once: each error is recorded and the field that holds it is set aside, then the
/// rest is read again. What was set aside is the field named in the error, or, inside a list,
/// the field holding the list (one error per list). An error on a field's parent that setting
/// the field aside caused (`missing field`) is not reported again. Returns what could be read
/// of the rest (for the compiler's own checks), and the errors.
pub fn read<T: DeserializeOwned>(v: &Value, prefix: &str) -> (Option<T>, Vec<FieldError>) {
    let mut work = v.clone();
    let mut errs: Vec<FieldError> = Vec::new();
    let mut set_aside: Vec<Vec<String>> = Vec::new();
    // Each round sets one field aside, and a document has finitely many.
    for _ in 0..=bounds::TOOLS * 4 {
        let e = match serde_path_to_error::deserialize::<_, T>(Strict(&work)) {
            Ok(t) => return (Some(t), errs),
            Err(e) => e,
        };
        let mut path = FieldPath::root(prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut in_list = false;
        for seg in e.path().iter() {
            match seg {
                Segment::Seq { index } => {
                    in_list = true;
                    path = path.index(*index);
                }
                Segment::Map { key } => {
                    if !in_list {
                        keys.push(key.clone());
                    }
                    path = path.key(key);
                }
                Segment::Enum { variant } => path = path.key(variant),
                Segment::Unknown => {}
            }
        }
        let caused = set_aside
            .iter()
            .any(|gone| gone.starts_with(&keys) && gone.len() > keys.len());
        if !caused {
            errs.push(FieldError {
                path: path.as_str().to_owned(),
                message: e.into_inner().to_string(),
            });
        }
        if keys.is_empty() || !remove(&mut work, &keys) {
            return (None, errs);
        }
        set_aside.push(keys);
    }
    (None, errs)
}

/// Removes the field at `keys` (a path of mapping keys); whether there was one.
fn remove(v: &mut Value, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut at = v;
    for k in parents {
        match at.get_mut(k.as_str()) {
            Some(next) => at = next,
            None => return false,
        }
    }
    at.as_object_mut()
        .is_some_and(|m| m.shift_remove(last.as_str()).is_some())
}

/// A JSON value read strictly: a struct only from a mapping (serde would also fill one from a
/// list, by position — `run_cell: ["deny"]` — a second way to write a policy that nothing else
/// reads so), an enum only from its name.
struct Strict<'a>(&'a Value);

type ValueError = serde_json::Error;

impl<'de> Deserializer<'de> for Strict<'de> {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => {
                visitor.visit_seq(de::value::SeqDeserializer::new(items.iter().map(Strict)))
            }
            Value::Object(m) => visitor.visit_map(de::value::MapDeserializer::new(
                m.iter().map(|(k, v)| (k.as_str(), Strict(v))),
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self.0 {
            Value::String(s) => visitor.visit_enum(de::value::BorrowedStrDeserializer::new(s)),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

impl<'de> de::IntoDeserializer<'de, ValueError> for Strict<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map(de::Unexpected::Signed)
            .unwrap_or(de::Unexpected::Float(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}
