//! The sidecar's view of the server's tools: the latest list it read itself, the definition each
//! tool was first seen with (what `pinning: firstSeen` holds it to), and the tools whose
//! definitions disagree. Read lock-free on every `tools/call`; replaced whole when it changes.
//!
//! The server is not trusted to describe itself the same way to everyone: its own listing is easy
//! to recognise. Every definition a client is shown is compared with the listing; one that
//! differs makes the tool [`Cloak::Checking`] (hidden from clients, calls refused as not yet
//! known) and the sidecar lists again. If a listing started after that still differs, the tool
//! is [`Cloak::Cloaked`] for the life of the process: hidden, denied, counted and reported like a
//! changed pin. If it agrees, the server changed the tool for everyone, and the new listing is
//! used.

use super::{ToolDef, MAX_TOOLS};
use crate::engine::Seen;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

pub use crate::engine::Cloak;

/// Most tools whose disagreement is tracked; past it every tool counts as cloaked (the server
/// cannot make room by naming more tools).
const MAX_CLOAKS: usize = MAX_TOOLS * 4;

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
    /// Tools whose definitions disagree, by name.
    pub cloaks: HashMap<String, Cloak>,
    /// More tools disagreed than are tracked: every tool counts as cloaked.
    pub cloak_overflow: bool,
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

    /// Whether the tool's definitions disagree.
    pub fn cloak(&self, name: &str) -> Option<Cloak> {
        match self.cloak_overflow {
            true => Some(Cloak::Cloaked),
            false => self.cloaks.get(name).copied(),
        }
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
    /// Tools found to show clients another definition than the listing.
    pub cloaked: Vec<String>,
}

/// The live view, shared by the discovery task, the gate, the list filter and the admin API.
#[derive(Default)]
pub struct Catalog {
    current: ArcSwap<Snapshot>,
    /// First-seen hashes, kept even for tools that leave the list (one that comes back changed
    /// is still caught). Bounded by [`MAX_TOOLS`] × 4.
    first_seen: Mutex<HashMap<String, String>>,
    /// Definitions clients were shown that the listing did not have: hash and when, by name.
    /// Held while the snapshot is replaced, so writers never lose each other's changes.
    shown: Mutex<HashMap<String, (String, Instant)>>,
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

    /// Adopts the policy's record of first-seen definitions (see [`super::seen`]): a tool it
    /// names is held to the recorded hash, whatever this process saw first, in the list in use
    /// now and in every list after.
    pub fn adopt_first_seen(&self, record: &super::seen::FirstSeen) {
        // Held like a list update, so neither loses the other's change.
        let _shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let mut first = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (name, hash) in &record.tools {
            first.insert(name.clone(), hash.clone());
        }
        let snap = self.snapshot();
        let mut next = (*snap).clone();
        for (name, entry) in next.tools.iter_mut() {
            if let Some(hash) = record.tools.get(name) {
                entry.first_hash = hash.clone();
            }
        }
        self.current.store(Arc::new(next));
    }

    /// A client is being shown `hash` as the definition of `name`: when the listing says
    /// otherwise, the tool waits for a new listing to settle it (see the module docs). Returns
    /// whether the client may be shown it now.
    pub fn observe_shown(&self, name: &str, hash: &str) -> bool {
        let snap = self.snapshot();
        let agrees = snap.tools.get(name).is_some_and(|e| e.def.hash == hash);
        match snap.cloak(name) {
            None if agrees => return true,
            Some(Cloak::Cloaked) => return false,
            _ => {}
        }
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let snap = self.snapshot();
        let mut next = (*snap).clone();
        if !shown.contains_key(name) && shown.len() >= MAX_TOOLS {
            next.cloak_overflow = true;
        } else {
            shown.insert(name.to_owned(), (hash.to_owned(), Instant::now()));
            if next.cloaks.len() >= MAX_CLOAKS && !next.cloaks.contains_key(name) {
                next.cloak_overflow = true;
            } else {
                next.cloaks
                    .entry(name.to_owned())
                    .or_insert(Cloak::Checking);
            }
        }
        self.current.store(Arc::new(next));
        drop(shown);
        self.wake();
        false
    }

    /// Installs a new list read at `now` (seconds since the epoch), whose reading started at
    /// `started`: it settles what clients were shown before then.
    pub fn update(&self, defs: Vec<ToolDef>, now: u64) -> Changes {
        self.update_listed(defs, now, Instant::now())
    }

    /// [`Catalog::update`] for a listing that started reading at `started`.
    pub fn update_listed(&self, defs: Vec<ToolDef>, now: u64, started: Instant) -> Changes {
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut cloaks = old.cloaks.clone();
        shown.retain(|name, (hash, at)| {
            if *at >= started {
                return true; // shown while this list was being read: the next one settles it
            }
            match tools.get(name) {
                Some(e) if e.def.hash == *hash => {
                    cloaks.remove(name);
                }
                _ => {
                    if cloaks.insert(name.clone(), Cloak::Cloaked) != Some(Cloak::Cloaked) {
                        changes.cloaked.push(name.clone());
                    }
                }
            }
            false
        });
        for v in [
            &mut changes.redefined,
            &mut changes.added,
            &mut changes.removed,
            &mut changes.cloaked,
        ] {
            v.sort();
        }
        self.current.store(Arc::new(Snapshot {
            tools,
            listed_at: Some(now),
            error: None,
            dropped,
            cloaks,
            cloak_overflow: old.cloak_overflow,
        }));
        changes
    }

    /// Records a failed attempt to list; the last list stays in use.
    pub fn failed(&self, why: String) {
        let _writers = self.shown.lock().unwrap_or_else(|e| e.into_inner());
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
    fn the_policys_record_overrides_what_this_process_saw_first() {
        let c = Catalog::default();
        c.update(vec![def("a", "new"), def("b", "b1")], 10);
        let recorded = def("a", "old").hash;
        let record = crate::tools::seen::FirstSeen {
            tools: [
                ("a".to_string(), recorded.clone()),
                ("gone".to_string(), recorded.clone()),
            ]
            .into(),
        };
        c.adopt_first_seen(&record);
        let snap = c.snapshot();
        let a = snap.seen("a").unwrap();
        assert_eq!(a.first, recorded, "the listed tool is held to the record");
        assert_ne!(a.hash, a.first, "and so counts as changed");
        assert_eq!(
            snap.seen("b").unwrap().first,
            def("b", "b1").hash,
            "others keep their own"
        );
        // A tool recorded before it is listed here is held to the record when it comes.
        c.update(vec![def("a", "new"), def("gone", "other")], 20);
        assert_eq!(c.first_hash("gone"), Some(recorded.clone()));
        assert_eq!(c.snapshot().seen("gone").unwrap().first, recorded);
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
                removed: vec!["b".into()],
                cloaked: vec![],
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
    fn a_definition_clients_see_and_the_listing_does_not_is_checked_then_cloaked() {
        let c = Catalog::default();
        c.update(vec![def("a", "harmless"), def("b", "two")], 1);
        let listed = c.snapshot().tools["a"].def.hash.clone();
        assert!(
            c.observe_shown("a", &listed),
            "the listed definition is shown"
        );
        let other = def("a", "destructive").hash;
        assert!(
            !c.observe_shown("a", &other),
            "another definition is held back"
        );
        assert_eq!(c.snapshot().cloak("a"), Some(Cloak::Checking));
        assert_eq!(c.snapshot().cloak("b"), None);
        // A listing that started before the client was shown it settles nothing.
        let early = Instant::now() - std::time::Duration::from_secs(5);
        let ch = c.update_listed(vec![def("a", "harmless"), def("b", "two")], 2, early);
        assert!(ch.cloaked.is_empty());
        assert_eq!(c.snapshot().cloak("a"), Some(Cloak::Checking));
        // The next listing still shows mcp-warden the harmless one: cloaked, for good.
        let ch = c.update(vec![def("a", "harmless"), def("b", "two")], 3);
        assert_eq!(ch.cloaked, ["a"]);
        assert_eq!(c.snapshot().cloak("a"), Some(Cloak::Cloaked));
        assert!(
            !c.observe_shown("a", &listed),
            "not even the listing's own definition any more"
        );
        let ch = c.update(vec![def("a", "harmless"), def("b", "two")], 4);
        assert!(ch.cloaked.is_empty(), "counted once");
        assert_eq!(c.snapshot().cloak("a"), Some(Cloak::Cloaked));
    }

    #[test]
    fn a_change_the_next_listing_confirms_is_a_change_for_everyone() {
        let c = Catalog::default();
        c.update(vec![def("a", "one")], 1);
        let new = def("a", "two").hash;
        assert!(!c.observe_shown("a", &new));
        let ch = c.update(vec![def("a", "two")], 2);
        assert!(ch.cloaked.is_empty());
        assert_eq!(ch.redefined, ["a"]);
        assert_eq!(c.snapshot().cloak("a"), None);
        assert!(c.observe_shown("a", &new));
        // A tool clients are shown that the listing never has is cloaked too.
        assert!(!c.observe_shown("ghost", &def("ghost", "x").hash));
        assert_eq!(c.update(vec![def("a", "two")], 3).cloaked, ["ghost"]);
    }

    #[test]
    fn a_server_cannot_make_room_by_naming_more_tools() {
        let c = Catalog::default();
        c.update(vec![], 1);
        for i in 0..=MAX_TOOLS {
            c.observe_shown(&format!("t{i}"), "sha256:x");
        }
        assert!(c.snapshot().cloak_overflow);
        assert_eq!(c.snapshot().cloak("anything"), Some(Cloak::Cloaked));
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
