//! The canonical snake_case form of a valid policy document.
//!
//! Keys are renamed only where the policy defines them: tool names (map keys under `tools`) and
//! condition values are the user's and stay as written.

use super::Flavor;
use serde_json::{Map, Value};

fn snake(k: &str) -> String {
    match k {
        "allTools" => "all_tools",
        "denyIf" => "deny_if",
        "onDeny" => "on_deny",
        "denyAs" => "deny_as",
        "allowedHosts" => "allowed_hosts",
        "allowedOrigins" => "allowed_origins",
        "serviceAccount" => "service_account",
        "jwksFrom" => "jwks_from",
        "readOnly" => "read_only",
        "openWorld" => "open_world",
        other => other,
    }
    .to_owned()
}

/// A mapping with its keys renamed and each value passed through `f(key, value)`.
fn rename(v: &Value, f: impl Fn(&str, &Value) -> Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (snake(k), f(k, v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A mapping whose keys are renamed and whose values are kept.
fn flat(v: &Value) -> Value {
    rename(v, |_, v| v.clone())
}

fn each(v: &Value, f: impl Fn(&Value) -> Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(f).collect()),
        other => other.clone(),
    }
}

fn rule(v: &Value) -> Value {
    match v {
        Value::Object(_) => rename(v, |k, v| match k {
            "denyIf" | "deny_if" => each(v, flat),
            _ => v.clone(),
        }),
        _ => Value::Object(Map::new()),
    }
}

fn tools(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, r)| (k.clone(), rule(r))).collect()),
        other => other.clone(),
    }
}

fn identity(v: &Value) -> Value {
    rename(v, |k, v| match k {
        "jwt" | "serviceAccount" | "service_account" => flat(v),
        _ => v.clone(),
    })
}

fn grant(v: &Value) -> Value {
    rename(v, |k, v| match k {
        "tools" => tools(v),
        _ => v.clone(),
    })
}

/// The canonical snake_case document of a valid policy: what the controller renders into
/// `policy.json`. Spec-only fields are dropped; `name` is set when given.
pub fn normalize(doc: &Value, flavor: Flavor, name: Option<&str>) -> Value {
    let Value::Object(top) = doc else {
        return doc.clone();
    };
    let mut out: Map<String, Value> = top
        .iter()
        .filter(|(k, v)| {
            let placement = flavor == Flavor::Spec
                && matches!(k.as_str(), "podSelector" | "upstream" | "isolation");
            !v.is_null() && !placement
        })
        .map(|(k, v)| {
            let v = match k.as_str() {
                "transport" => flat(v),
                "tools" => tools(v),
                "identity" => identity(v),
                "grants" => each(v, grant),
                "categories" => rename(v, |_, r| rule(r)),
                _ => v.clone(),
            };
            (snake(k), v)
        })
        .collect();
    if let Some(n) = name {
        out.insert("name".into(), Value::String(n.to_owned()));
    }
    Value::Object(out)
}
