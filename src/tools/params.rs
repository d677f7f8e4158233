//! `x-mcp-header` (MCP 2026-07-28): a tool's `inputSchema` may mark a property with
//! `x-mcp-header: "Region"`, and a client calling the tool over streamable HTTP then mirrors the
//! argument's value into an `Mcp-Param-Region` header, so intermediaries can route on it without
//! reading the body. Only properties reachable from the schema's root through `properties`
//! alone may be annotated, only of type string, integer, number or boolean, with a header name
//! that is an HTTP token, unique ignoring case. A schema that breaks any of these has no usable
//! declarations: its headers cannot be checked.

use serde_json::Value;

/// Deepest schema nesting read (deeper annotations make the declarations unusable).
const MAX_DEPTH: usize = 32;
/// Most declarations one tool may make.
pub const MAX_DECLARED: usize = 32;

/// One `x-mcp-header` declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHeader {
    /// The name after `Mcp-Param-`, as declared.
    pub name: String,
    /// The property names from the arguments' root.
    pub path: Vec<String>,
    pub kind: Kind,
}

/// The declared property's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Integer,
    Number,
    Boolean,
}

/// Schema keywords whose values are schemas (or maps or lists of them) not reachable through
/// `properties` alone: an annotation under one of them is invalid.
const SUBSCHEMAS: [&str; 17] = [
    "items",
    "prefixItems",
    "contains",
    "additionalProperties",
    "patternProperties",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentSchemas",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "$defs",
];

/// The declarations of an `inputSchema`, or why they cannot be used.
pub fn declared(schema: &Value) -> Result<Vec<ParamHeader>, String> {
    let mut out = Vec::new();
    visit(schema, &mut Vec::new(), true, 0, &mut out)?;
    let mut names: Vec<String> = out.iter().map(|p| p.name.to_ascii_lowercase()).collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err("two x-mcp-header declarations name the same header".into());
    }
    if out.len() > MAX_DECLARED {
        return Err(format!(
            "more than {MAX_DECLARED} x-mcp-header declarations"
        ));
    }
    Ok(out)
}

fn visit(
    node: &Value,
    path: &mut Vec<String>,
    reachable: bool,
    depth: usize,
    out: &mut Vec<ParamHeader>,
) -> Result<(), String> {
    let Value::Object(m) = node else {
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Err("the inputSchema nests too deep to read its x-mcp-header declarations".into());
    }
    if let Some(h) = m.get("x-mcp-header") {
        out.push(declaration(h, m.get("type"), path, reachable)?);
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        for (name, sub) in props {
            path.push(name.clone());
            visit(sub, path, reachable, depth + 1, out)?;
            path.pop();
        }
    }
    for key in SUBSCHEMAS.iter().copied().chain(["definitions"]) {
        match m.get(key) {
            Some(Value::Array(list)) => {
                for sub in list {
                    visit(sub, path, false, depth + 1, out)?;
                }
            }
            Some(Value::Object(o))
                if matches!(
                    key,
                    "patternProperties" | "dependentSchemas" | "$defs" | "definitions"
                ) =>
            {
                for sub in o.values() {
                    visit(sub, path, false, depth + 1, out)?;
                }
            }
            Some(sub) => visit(sub, path, false, depth + 1, out)?,
            None => {}
        }
    }
    Ok(())
}

fn declaration(
    h: &Value,
    ty: Option<&Value>,
    path: &[String],
    reachable: bool,
) -> Result<ParamHeader, String> {
    let name = h
        .as_str()
        .filter(|n| is_token(n))
        .ok_or_else(|| format!("x-mcp-header {h} is not an HTTP header name token"))?;
    if !reachable || path.is_empty() {
        return Err(format!(
            "x-mcp-header {name:?} is not on a property reached through properties alone"
        ));
    }
    let kind = match ty.and_then(Value::as_str) {
        Some("string") => Kind::String,
        Some("integer") => Kind::Integer,
        Some("number") => Kind::Number,
        Some("boolean") => Kind::Boolean,
        _ => {
            return Err(format!(
                "x-mcp-header {name:?} is on a property that is not a string, integer, number or boolean"
            ))
        }
    };
    Ok(ParamHeader {
        name: name.to_owned(),
        path: path.to_vec(),
        kind,
    })
}

/// RFC 9110 token: one or more `tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value as the client meant it: `=?base64?…?=` decoded (`None` when its payload is
/// not Base64 of UTF-8), anything else literal.
pub fn decode(value: &str) -> Option<String> {
    use base64::Engine;
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(value.to_owned()),
    }
}

/// Whether header value `text` (decoded) says what argument `value` of kind `kind` is.
pub fn agrees(kind: Kind, text: &str, value: &Value) -> bool {
    match (kind, value) {
        (Kind::String, Value::String(s)) => s == text,
        (Kind::Boolean, Value::Bool(b)) => text == if *b { "true" } else { "false" },
        (Kind::Integer | Kind::Number, Value::Number(n)) => {
            // Numbers compare by value: 42 and 42.0 agree.
            match (text.parse::<f64>(), n.as_f64()) {
                (Ok(a), Some(b)) => a.is_finite() && a == b,
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn declarations_reachable_through_properties_are_read() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "opts": {"type": "object", "properties": {"tier": {"type": "integer", "x-mcp-header": "Tier"}}},
            "plain": {"type": "string", "default": {"x-mcp-header": "NotASchema"}}
        }});
        let d = declared(&schema).unwrap();
        let got: Vec<(&str, Vec<&str>, Kind)> = d
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.path.iter().map(String::as_str).collect(),
                    p.kind,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("Region", vec!["region"], Kind::String),
                ("Tier", vec!["opts", "tier"], Kind::Integer)
            ]
        );
    }

    #[test]
    fn invalid_declarations_make_the_set_unusable() {
        for schema in [
            json!({"properties": {"a": {"type": "array", "items": {"type": "string", "x-mcp-header": "A"}}}}),
            json!({"anyOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]}),
            json!({"properties": {"a": {"type": "object", "x-mcp-header": "A"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "has space"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "A"},
                                  "b": {"type": "string", "x-mcp-header": "a"}}}),
        ] {
            assert!(declared(&schema).is_err(), "{schema}");
        }
    }

    #[test]
    fn values_compare_as_the_client_meant_them() {
        assert_eq!(
            decode("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(decode("=?base64?not base64?="), None);
        assert_eq!(decode("plain").as_deref(), Some("plain"));
        assert!(agrees(Kind::Integer, "42", &json!(42.0)));
        assert!(!agrees(Kind::Integer, "42", &json!(43)));
        assert!(agrees(Kind::Boolean, "true", &json!(true)));
        assert!(!agrees(Kind::Boolean, "True", &json!(true)));
        assert!(!agrees(Kind::String, "us", &json!(1)));
    }
}
