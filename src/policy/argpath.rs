//! Argument paths: `args.files[*].name`, `args["key.with.dots"]`, and what they reach.

use serde_json::Value;

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

/// Whether `v` is a string holding JSON text of a list or object, which a lenient server (the
/// Python SDK's FastMCP, for a parameter typed as a list or model) parses into that value.
pub(super) fn json_text(v: &Value) -> Option<&str> {
    let s = v.as_str()?.trim_start_matches([' ', '\t', '\n', '\r']);
    (s.starts_with('[') || s.starts_with('{')).then_some(s)
}

/// Collects the values a path reaches. A step into the wrong kind of value (a key on a list,
/// `[*]` on a string) reaches nothing; `null` counts as absent. Returns whether a step that
/// needed a list or object met a string holding JSON text: then the lenient reading of `prune` reads on.
pub fn resolve<'v>(steps: &[Step], v: &'v Value, out: &mut Vec<&'v Value>) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        if !v.is_null() {
            out.push(v);
        }
        return false;
    };
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => m.get(k).is_some_and(|c| resolve(rest, c, out)),
        (Step::Index(i), Value::Array(a)) => a.get(*i).is_some_and(|c| resolve(rest, c, out)),
        (Step::Each, Value::Array(a)) => {
            let mut through = false;
            for child in a {
                through |= resolve(rest, child, out);
            }
            through
        }
        (_, v) => json_text(v).is_some(),
    }
}

/// The one value a path without `[*]` reaches, if any (`null` counts as absent), and whether the
/// path met a string holding JSON text where it needed a list or object.
pub fn resolve_one<'v>(steps: &[Step], mut v: &'v Value) -> (Option<&'v Value>, bool) {
    for step in steps {
        v = match (step, v) {
            (Step::Key(k), Value::Object(m)) => match m.get(k) {
                Some(c) => c,
                None => return (None, false),
            },
            (Step::Index(i), Value::Array(a)) => match a.get(*i) {
                Some(c) => c,
                None => return (None, false),
            },
            (_, v) => return (None, json_text(v).is_some()),
        };
    }
    ((!v.is_null()).then_some(v), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert!(!resolve(
            &parse_path("args.files[*].n").unwrap(),
            &v,
            &mut out
        ));
        assert_eq!(out, vec![&json!("a"), &json!("c")]);
        out.clear();
        assert!(!resolve(&parse_path("args.s[*]").unwrap(), &v, &mut out));
        assert!(out.is_empty(), "[*] on a string reaches nothing");
        out.clear();
        resolve(&parse_path("args.files[2].n").unwrap(), &v, &mut out);
        assert_eq!(out, vec![&json!("c")]);
    }
}
