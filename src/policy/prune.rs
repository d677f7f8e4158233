//! Reading only the arguments a rule looks at. A tool's `require` and `deny_if` paths make a tree
//! ([`Need`]); arguments are deserialised against it, so keys and elements no path reaches are
//! skipped without being stored. A 4 MiB object of 400,000 keys that a rule reads one key of
//! costs that one key, not the ~150 bytes per key a whole `serde_json::Value` would.

use super::argpath::Step;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::argpath::parse_path;
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
}
