//! Reading only the arguments a rule looks at. A tool's `require` and `deny_if` paths make a tree
//! ([`Need`]); arguments are deserialised against it, so keys and elements no path reaches are
//! skipped without being stored. A 4 MiB object of 400,000 keys that a rule reads one key of
//! costs that one key, not the ~150 bytes per key a whole `serde_json::Value` would.

use super::argpath::{json_text, Step};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// What of a value the paths need: all of it, or some keys and elements of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Need {
    /// A path ends here: keep the whole value.
    whole: bool,
    keys: HashMap<String, Need>,
    /// `[*]`: every element, with what each needs (merged with any `[i]` needs).
    each: Option<Box<Need>>,
    /// `[i]`: these elements only.
    index: BTreeMap<usize, Need>,
}

impl Need {
    /// The tree of every path in `paths`.
    pub fn of<'p>(paths: impl IntoIterator<Item = &'p [Step]>) -> Need {
        let mut n = Need::default();
        for p in paths {
            n.add(p);
        }
        n.settle();
        n
    }

    fn add(&mut self, steps: &[Step]) {
        let Some((step, rest)) = steps.split_first() else {
            self.whole = true;
            return;
        };
        match step {
            Step::Key(k) => self.keys.entry(k.clone()).or_default().add(rest),
            Step::Index(i) => self.index.entry(*i).or_default().add(rest),
            Step::Each => self.each.get_or_insert_with(Default::default).add(rest),
        }
    }

    /// Folds `[i]` needs into `[*]`'s where both exist, so an element needs one tree.
    fn settle(&mut self) {
        if let Some(each) = &mut self.each {
            for (_, n) in std::mem::take(&mut self.index) {
                each.merge(n);
            }
            each.settle();
        }
        for n in self.keys.values_mut().chain(self.index.values_mut()) {
            n.settle();
        }
    }

    fn merge(&mut self, other: Need) {
        self.whole |= other.whole;
        for (k, n) in other.keys {
            self.keys.entry(k).or_default().merge(n);
        }
        for (i, n) in other.index {
            self.index.entry(i).or_default().merge(n);
        }
        if let Some(e) = other.each {
            self.each.get_or_insert_with(Default::default).merge(*e);
        }
    }

    /// Whether any path reads anything.
    pub fn is_empty(&self) -> bool {
        *self == Need::default()
    }

    /// Parses JSON text keeping only what this tree needs.
    pub fn read(&self, text: &str) -> Result<Value, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = self.deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }
}

impl<'de> DeserializeSeed<'de> for &Need {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.whole {
            return serde::Deserialize::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &Need {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        // A string where a path goes on may hold JSON text a lenient server parses: keep it.
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

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = m.next_key::<String>()? {
            match self.keys.get(&key) {
                Some(child) => {
                    let v = m.next_value_seed(child)?;
                    out.insert(key, v);
                }
                None => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        if let Some(each) = &self.each {
            while let Some(v) = s.next_element_seed(&**each)? {
                out.push(v);
            }
            return Ok(Value::Array(out));
        }
        // Elements up to the last index read keep their places (unread ones as null); the rest
        // are skipped.
        let last = self.index.keys().next_back().copied();
        let mut i = 0;
        loop {
            match (last, self.index.get(&i)) {
                (Some(l), _) if i > l => {
                    while s.next_element::<IgnoredAny>()?.is_some() {}
                    break;
                }
                (None, _) => {
                    while s.next_element::<IgnoredAny>()?.is_some() {}
                    break;
                }
                (_, Some(child)) => match s.next_element_seed(child)? {
                    Some(v) => out.push(v),
                    None => break,
                },
                (_, None) => match s.next_element::<IgnoredAny>()? {
                    Some(_) => out.push(Value::Null),
                    None => break,
                },
            }
            i += 1;
        }
        Ok(Value::Array(out))
    }
}

/// JSON text inside an argument that no reader agrees on (invalid, duplicate keys): the value a
/// lenient server would see is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

/// Like [`super::argpath::resolve`], but a string holding JSON text where a list or object is needed is parsed
/// and followed, as a lenient server reads it.
pub fn resolve_lenient(steps: &[Step], v: &Value, out: &mut Vec<Value>) -> Result<(), Unreadable> {
    let Some((step, rest)) = steps.split_first() else {
        if !v.is_null() {
            out.push(v.clone());
        }
        return Ok(());
    };
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => match m.get(k) {
            Some(c) => resolve_lenient(rest, c, out),
            None => Ok(()),
        },
        (Step::Index(i), Value::Array(a)) => match a.get(*i) {
            Some(c) => resolve_lenient(rest, c, out),
            None => Ok(()),
        },
        (Step::Each, Value::Array(a)) => a.iter().try_for_each(|c| resolve_lenient(rest, c, out)),
        (_, v) => match json_text(v) {
            Some(text) => {
                crate::mcp::scan::validate(text.as_bytes(), crate::mcp::MAX_DEPTH)
                    .map_err(|_| Unreadable)?;
                // Only what the rest of the path reaches is kept, as for the arguments.
                let parsed = Need::of([steps]).read(text).map_err(|_| Unreadable)?;
                resolve_lenient(steps, &parsed, out)
            }
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::argpath::{parse_path, resolve, resolve_one};
    use serde_json::json;

    fn need(paths: &[&str]) -> Need {
        let parsed: Vec<Vec<Step>> = paths.iter().map(|p| parse_path(p).unwrap()).collect();
        Need::of(parsed.iter().map(Vec::as_slice))
    }

    #[test]
    fn only_what_paths_reach_is_kept() {
        let text = r#"{"code":"rm","big":{"a":1,"b":[1,2,3]},"files":[{"name":"x","size":1},{"name":"y"}],
                      "pair":[10,20,30,40],"opts":"{\"mode\":1}","n":null}"#;
        let v = need(&[
            "args.code",
            "args.files[*].name",
            "args.pair[1]",
            "args.opts.mode",
        ])
        .read(text)
        .unwrap();
        assert_eq!(
            v,
            json!({"code": "rm", "files": [{"name": "x"}, {"name": "y"}], "pair": [null, 20],
                   "opts": "{\"mode\":1}"})
        );
        let whole = need(&["args.big", "args.big.a"]).read(text).unwrap();
        assert_eq!(
            whole["big"],
            json!({"a": 1, "b": [1, 2, 3]}),
            "a path ending at big keeps it whole"
        );
        let both = need(&["args.pair[0]", "args.pair[*]"]).read(text).unwrap();
        assert_eq!(both["pair"], json!([10, 20, 30, 40]));
        assert_eq!(
            need(&["args"]).read(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn what_is_kept_reads_as_the_whole_value_would() {
        use crate::policy::argpath::resolve;
        let text = r#"{"a":[{"b":[1,{"c":"x"}]},{"b":"s"},3],"d":{"e":null}}"#;
        let full: Value = serde_json::from_str(text).unwrap();
        for path in [
            "args.a[*].b[1].c",
            "args.a[0].b[*]",
            "args.d.e",
            "args.a[2]",
            "args.zz",
            "args.a[9]",
        ] {
            let steps = parse_path(path).unwrap();
            let pruned = Need::of([steps.as_slice()]).read(text).unwrap();
            let (mut x, mut y) = (Vec::new(), Vec::new());
            resolve(&steps, &full, &mut x);
            resolve(&steps, &pruned, &mut y);
            assert_eq!(x, y, "{path}");
        }
    }

    #[test]
    fn invalid_text_is_an_error() {
        assert!(need(&["args.a"]).read("{\"a\":1").is_err());
        assert!(need(&["args.a"]).read("{\"a\":1} x").is_err());
    }

    #[test]
    fn strings_holding_json_are_followed_in_the_lenient_reading() {
        let v = json!({"commands": "[\"ls\", \"rm -rf /srv/x\"]", "options": " {\"mode\": \"dangerous\"}",
                       "bad": "[1,", "dup": "{\"a\":1,\"a\":2}", "plain": "rm"});
        let mut strict = Vec::new();
        let path = parse_path("args.commands[*]").unwrap();
        assert!(
            resolve(&path, &v, &mut strict),
            "a list as JSON text is met"
        );
        assert!(
            strict.is_empty(),
            "strictly, [*] on a string reaches nothing"
        );
        let mut lenient = Vec::new();
        resolve_lenient(&path, &v, &mut lenient).unwrap();
        assert_eq!(lenient, vec![json!("ls"), json!("rm -rf /srv/x")]);
        let path = parse_path("args.options.mode").unwrap();
        assert_eq!(resolve_one(&path, &v), (None, true));
        lenient.clear();
        resolve_lenient(&path, &v, &mut lenient).unwrap();
        assert_eq!(lenient, vec![json!("dangerous")]);
        for bad in ["args.bad[0]", "args.dup.a"] {
            assert_eq!(
                resolve_lenient(&parse_path(bad).unwrap(), &v, &mut Vec::new()),
                Err(Unreadable),
                "{bad}"
            );
        }
        assert_eq!(
            resolve_one(&parse_path("args.plain.x").unwrap(), &v),
            (None, false)
        );
    }
}
