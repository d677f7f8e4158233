//! The sidecar's view of the server's tools: the latest list it read itself, and the definition
//! each tool was first seen with (what `pinning: firstSeen` holds it to). Read lock-free on every
//! `tools/call`; replaced whole when a new list arrives.

use super::{ToolDef, MAX_TOOLS};
use crate::engine::Seen;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// One listed tool and the hash it was first seen with.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(flatten)]
    pub def: ToolDef,
    /// The hash of the definition this sidecar first saw for the tool.
    pub first_hash: String,
}

/// One list, as read at one time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Tools by name.
    pub tools: HashMap<String, Entry>,
    /// Seconds since the epoch when the list was read; `None` before the first list.
    pub listed_at: Option<u64>,
    /// Why the latest attempt to list failed, if it did (the list before it stays in use).
    pub error: Option<String>,
    /// Tools beyond [`MAX_TOOLS`] that were dropped from the list.
    pub dropped: usize,
}

impl Snapshot {
    /// What the list says of a tool, for the engine.
    pub fn seen(&self, name: &str) -> Option<Seen<'_>> {
        self.tools.get(name).map(|e| Seen {
            hints: e.def.hints,
            hash: &e.def.hash,
            first: &e.first_hash,
        })
    }

    /// The tools in name order.
    pub fn sorted(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.tools.values().collect();
        v.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        v
    }
}

/// What a new list changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Tools listed before whose definition is now another one.
    pub redefined: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// The live view, shared by the discovery task, the gate, the list filter and the admin API.
#[derive(Default)]
pub struct Catalog {
    current: ArcSwap<Snapshot>,
    /// First-seen hashes, kept even for tools that leave the list (one that comes back changed
    /// is still caught). Bounded by [`MAX_TOOLS`] × 4.
    first_seen: Mutex<HashMap<String, String>>,
    wake: Notify,
}

impl Catalog {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Asks the discovery task to list again now (a `list_changed` notification, a call to a
    /// tool it has not seen, a client seeing another definition).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when [`Catalog::wake`] was called.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// The hash a tool was first seen with.
    pub fn first_hash(&self, name: &str) -> Option<String> {
        self.first_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Installs a new list read at `now` (seconds since the epoch).
    pub fn update(&self, defs: Vec<ToolDef>, now: u64) -> Changes {
        let old = self.snapshot();
        let mut first = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = defs.len().saturating_sub(MAX_TOOLS);
        let mut tools = HashMap::new();
        let mut changes = Changes::default();
        for def in defs.into_iter().take(MAX_TOOLS) {
            match old.tools.get(&def.name) {
                Some(prev) if prev.def.hash != def.hash => changes.redefined.push(def.name.clone()),
                Some(_) => {}
                None => changes.added.push(def.name.clone()),
            }
            if first.len() >= MAX_TOOLS * 4 && !first.contains_key(&def.name) {
                // Only tools no longer listed are forgotten to make room.
                first.retain(|k, _| old.tools.contains_key(k));
            }
            let first_hash = first
                .entry(def.name.clone())
                .or_insert_with(|| def.hash.clone())
                .clone();
            tools.insert(def.name.clone(), Entry { def, first_hash });
        }
        changes.removed = old
            .tools
            .keys()
            .filter(|k| !tools.contains_key(*k))
            .cloned()
            .collect();
        for v in [
            &mut changes.redefined,
            &mut changes.added,
            &mut changes.removed,
        ] {
            v.sort();
        }
        self.current.store(Arc::new(Snapshot {
            tools,
            listed_at: Some(now),
            error: None,
            dropped,
        }));
        changes
    }

    /// Records a failed attempt to list; the last list stays in use.
    pub fn failed(&self, why: String) {
        let mut s = (*self.snapshot()).clone();
        s.error = Some(why);
        self.current.store(Arc::new(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(name: &str, description: &str) -> ToolDef {
        ToolDef::read(&json!({"name": name, "description": description})).unwrap()
    }

    #[test]
    fn a_tool_keeps_the_hash_it_was_first_seen_with() {
        let c = Catalog::default();
        assert!(c.snapshot().listed_at.is_none());
        assert_eq!(c.snapshot().seen("a"), None);
        let ch = c.update(vec![def("a", "one"), def("b", "two")], 10);
        assert_eq!(ch.added, ["a", "b"]);
        let s = c.snapshot();
        let a = s.seen("a").unwrap();
        assert_eq!(a.hash, a.first);
        let ch = c.update(vec![def("a", "changed")], 20);
        assert_eq!(
            ch,
            Changes {
                redefined: vec!["a".into()],
                added: vec![],
                removed: vec!["b".into()]
            }
        );
        let s = c.snapshot();
        let a = s.seen("a").unwrap();
        assert_ne!(a.hash, a.first, "the first definition is remembered");
        assert_eq!(s.listed_at, Some(20));
        c.update(vec![def("b", "other")], 30);
        let s = c.snapshot();
        let b = s.seen("b").unwrap();
        assert_ne!(
            b.hash, b.first,
            "a tool that left the list and came back changed is caught"
        );
    }

    #[test]
    fn a_failed_list_keeps_the_last_one() {
        let c = Catalog::default();
        c.update(vec![def("a", "one")], 1);
        c.failed("connection refused".into());
        let s = c.snapshot();
        assert!(s.seen("a").is_some());
        assert_eq!(s.error.as_deref(), Some("connection refused"));
    }
}
