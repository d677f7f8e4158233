//! The canonical snake_case form of a valid policy document.

use super::Flavor;
use serde_json::{Map, Value};

/// The canonical snake_case document of a valid policy: what the controller renders into
/// `policy.json`. Spec-only fields are dropped; `name` is set when given.
pub fn normalize(doc: &Value, flavor: Flavor, name: Option<&str>) -> Value {
    fn rename(
        m: &Map<String, Value>,
        f: impl Fn(&str, &Value) -> Option<(String, Value)>,
    ) -> Value {
        Value::Object(m.iter().filter_map(|(k, v)| f(k, v)).collect())
    }
    fn snake(k: &str) -> String {
        match k {
            "allTools" => "all_tools",
            "denyIf" => "deny_if",
            "onDeny" => "on_deny",
            "denyAs" => "deny_as",
            "allowedHosts" => "allowed_hosts",
            "allowedOrigins" => "allowed_origins",
            other => other,
        }
        .to_owned()
    }
    let Value::Object(top) = doc else {
        return doc.clone();
    };
    let mut out = rename(top, |k, v| {
        if flavor == Flavor::Spec && matches!(k, "podSelector" | "upstream" | "isolation") {
            return None;
        }
        if v.is_null() {
            return None;
        }
        let v = if k == "transport" {
            match v {
                Value::Object(t) => rename(t, |tk, tv| Some((snake(tk), tv.clone()))),
                other => other.clone(),
            }
        } else if k == "tools" {
            match v {
                Value::Object(tools) => rename(tools, |tool, rule| {
                    let rule = match rule {
                        Value::Object(r) => rename(r, |rk, rv| {
                            let rv = match (rk, rv) {
                                ("denyIf" | "deny_if", Value::Array(entries)) => Value::Array(
                                    entries
                                        .iter()
                                        .map(|e| match e {
                                            Value::Object(em) => {
                                                rename(em, |ek, ev| Some((snake(ek), ev.clone())))
                                            }
                                            other => other.clone(),
                                        })
                                        .collect(),
                                ),
                                (_, other) => other.clone(),
                            };
                            Some((snake(rk), rv))
                        }),
                        _ => Value::Object(Map::new()),
                    };
                    Some((tool.to_owned(), rule))
                }),
                other => other.clone(),
            }
        } else {
            v.clone()
        };
        Some((snake(k), v))
    });
    if let (Some(n), Value::Object(m)) = (name, &mut out) {
        m.insert("name".into(), Value::String(n.to_owned()));
    }
    out
}
