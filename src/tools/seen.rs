//! The definitions a policy's tools were first seen with, across all its pods (`seen.json`).
//!
//! Under `pinning: firstSeen` each sidecar holds a tool to the definition it first saw. A
//! process alone forgets that when it restarts, and a new replica would pin whatever the server
//! says now. So the controller keeps one record per policy (the McpPolicy's `status.firstSeen`):
//! the hash each tool had when the oldest pod listing it first saw it, never replaced once
//! recorded. It renders the record to every pod, and each sidecar adopts it over its own. A
//! definition that changes is then caught by every replica, restarted or new.

use crate::policy::{bounds, is_pin_hash};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most tools a record holds (new ones past it are not recorded).
pub const MAX_RECORDED: usize = bounds::FIRST_SEEN;

/// The record: tool name → `sha256:` and 64 hex digits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstSeen {
    pub tools: BTreeMap<String, String>,
}

impl FirstSeen {
    /// Reads a record, refusing one that holds more than [`MAX_RECORDED`] tools, a name that is
    /// not a tool name (visible ASCII, 1 to 128 bytes) or a hash that is not `sha256:` and 64
    /// lower-case hex digits.
    pub fn parse(bytes: &[u8]) -> Result<FirstSeen, String> {
        let f: FirstSeen = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if f.tools.len() > MAX_RECORDED {
            return Err(format!(
                "{} tools recorded, at most {MAX_RECORDED} are allowed",
                f.tools.len()
            ));
        }
        match f.tools.iter().find(|(n, h)| !is_name(n) || !is_pin_hash(h)) {
            Some((n, _)) => Err(format!("tool {n:?}: not a tool name and definition hash")),
            None => Ok(f),
        }
    }

    /// The record after the pods' reports, oldest pod first: each tool keeps the hash it was
    /// recorded with; a tool not yet recorded gets the hash the first pod that lists it first
    /// saw it with.
    pub fn merged<'a>(
        &self,
        pods: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
    ) -> FirstSeen {
        let mut tools = self.tools.clone();
        for reported in pods {
            for (name, hash) in reported {
                if tools.len() >= MAX_RECORDED {
                    break;
                }
                if is_name(name) && is_pin_hash(hash) {
                    tools.entry(name.clone()).or_insert_with(|| hash.clone());
                }
            }
        }
        FirstSeen { tools }
    }

    /// The record as the sidecar reads it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record serialises")
    }
}

/// A tool name as sidecars report them: visible ASCII, 1 to 128 bytes.
pub fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_record_holds_as_many_tools_as_a_sidecar_lists() {
        assert_eq!(super::MAX_RECORDED, crate::tools::MAX_TOOLS);
    }

    use super::*;

    fn h(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn map(pairs: &[(&str, char)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(n, c)| (n.to_string(), h(*c))).collect()
    }

    #[test]
    fn a_recorded_hash_is_never_replaced_and_the_oldest_pod_names_new_tools() {
        let old = FirstSeen {
            tools: map(&[("run", 'a')]),
        };
        let oldest = map(&[("run", 'b'), ("read", 'c')]);
        let newer = map(&[("read", 'd'), ("write", 'e')]);
        let next = old.merged([&oldest, &newer]);
        assert_eq!(
            next.tools,
            map(&[("run", 'a'), ("read", 'c'), ("write", 'e')])
        );
    }

    #[test]
    fn what_a_pod_reports_is_taken_only_within_bounds() {
        let bad = BTreeMap::from([
            ("bad name".to_string(), h('a')),
            ("ok".to_string(), "md5:x".to_string()),
            ("fine".to_string(), h('b')),
        ]);
        assert_eq!(
            FirstSeen::default().merged([&bad]).tools,
            map(&[("fine", 'b')])
        );
        let many: BTreeMap<String, String> = (0..MAX_RECORDED + 10)
            .map(|i| (format!("t{i}"), h('a')))
            .collect();
        assert_eq!(
            FirstSeen::default().merged([&many]).tools.len(),
            MAX_RECORDED
        );
    }

    #[test]
    fn a_record_file_is_read_strictly() {
        let ok = FirstSeen {
            tools: map(&[("run", 'a')]),
        };
        assert_eq!(FirstSeen::parse(ok.to_json().as_bytes()).unwrap(), ok);
        for bad in [
            r#"{"tools": {"run": "sha256:xyz"}}"#.to_string(),
            format!(r#"{{"tools": {{"": "{}"}}}}"#, h('a')),
            r#"{"tools": {}, "extra": 1}"#.to_string(),
            r#"[]"#.to_string(),
        ] {
            assert!(FirstSeen::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let many = FirstSeen {
            tools: (0..=MAX_RECORDED)
                .map(|i| (format!("t{i}"), h('a')))
                .collect(),
        };
        assert!(FirstSeen::parse(many.to_json().as_bytes()).is_err());
    }
}
