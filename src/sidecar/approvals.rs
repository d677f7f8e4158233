//! Approvals: a call whose rule needs one runs only with a person's approval of exactly it —
//! policy, tool, SHA-256 of the canonical arguments, caller — which allows a number of uses until
//! it expires.
//!
//! Granted approvals are read from a file (`--approvals FILE`; in a cluster the controller renders
//! it), re-read when it changes; a file that cannot be read keeps the last good set. Uses are
//! counted here, by approval id, across reloads: a use is reserved under one lock before the call
//! is decided, so two identical calls racing for the last use never both run, and given back if
//! the call is refused for another reason (a limit). Calls that needed an approval and had none
//! are kept as pending requests, bounded (the oldest is dropped).

use crate::policy::sha256_hex;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Pending requests kept at most.
pub const MAX_PENDING: usize = 256;
/// Largest canonical arguments kept with a pending request (larger ones keep only their hash).
const MAX_PENDING_ARGUMENTS: usize = 16 << 10;

/// The id an approval must carry to match a call: a hash of everything that must match. Each
/// part is prefixed with its length, so no choice of parts (a tool name holding a separator)
/// can make two different calls share an id.
pub fn approval_id(policy: &str, tool: &str, arguments_sha256: &str, caller: &str) -> String {
    let mut text = String::new();
    for part in [policy, tool, arguments_sha256, caller] {
        text.push_str(&format!("{}:{part};", part.len()));
    }
    sha256_hex(text.as_bytes())
}

/// Arguments as one canonical text: object keys sorted, no whitespace.
pub fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sorted(v)).expect("a JSON value serialises")
}

/// One granted approval, as the file lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Granted {
    pub id: String,
    /// Calls it allows.
    pub uses: u32,
    /// Seconds since the epoch after which it allows nothing.
    pub expires_at: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsFile {
    approvals: Vec<Granted>,
}

/// Why an approvals file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not an approvals file ({{\"approvals\": [{{id, uses, expires_at}}]}}): {source}"
    )]
    Invalid {
        path: String,
        source: serde_json::Error,
    },
}

/// A call that needed an approval and had none.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pending {
    pub id: String,
    pub policy: String,
    pub tool: String,
    /// The canonical arguments, unless over 16 KiB.
    pub arguments: Option<String>,
    pub arguments_sha256: String,
    pub identity: String,
    /// Seconds since the epoch.
    pub requested_at: u64,
}

#[derive(Default)]
struct Inner {
    granted: HashMap<String, Granted>,
    /// Uses taken per approval id (kept across reloads of the file).
    used: HashMap<String, u32>,
    pending: VecDeque<Pending>,
    /// The file's hash, to tell whether it changed.
    file_hash: Option<String>,
}

/// The approvals of one sidecar.
#[derive(Default)]
pub struct Approvals {
    inner: Mutex<Inner>,
}

/// A use of an approval, reserved for one call: kept by [`Reservation::commit`], given back when
/// dropped otherwise.
pub struct Reservation {
    approvals: Arc<Approvals>,
    id: String,
    committed: bool,
}

impl Reservation {
    /// The call ran: the use is spent. Returns the uses left.
    pub fn commit(mut self) -> u32 {
        self.committed = true;
        let inner = self.approvals.lock();
        let used = inner.used.get(&self.id).copied().unwrap_or(0);
        inner
            .granted
            .get(&self.id)
            .map_or(0, |g| g.uses.saturating_sub(used))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            let mut inner = self.approvals.lock();
            if let Some(n) = inner.used.get_mut(&self.id) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Approvals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the granted approvals with the file's, if it changed. Uses already taken stay
    /// counted; requests the file now approves leave the pending list.
    pub fn load(&self, path: &Path) -> Result<bool, ApprovalsError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ApprovalsError::Read {
            path: shown.clone(),
            source,
        })?;
        let hash = sha256_hex(&bytes);
        if self.lock().file_hash.as_deref() == Some(hash.as_str()) {
            return Ok(false);
        }
        let file: ApprovalsFile =
            serde_json::from_slice(&bytes).map_err(|source| ApprovalsError::Invalid {
                path: shown,
                source,
            })?;
        let mut inner = self.lock();
        inner.granted = file
            .approvals
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect();
        let Inner {
            granted, pending, ..
        } = &mut *inner;
        pending.retain(|p| !granted.contains_key(&p.id));
        inner.file_hash = Some(hash);
        Ok(true)
    }

    /// Reserves one use of approval `id` at `now` (seconds since the epoch), if it is granted,
    /// unexpired and has uses left.
    pub fn reserve(self: &Arc<Self>, id: &str, now: u64) -> Option<Reservation> {
        let mut inner = self.lock();
        let g = inner.granted.get(id)?;
        if now > g.expires_at {
            return None;
        }
        let uses = g.uses;
        let used = inner.used.entry(id.to_owned()).or_insert(0);
        if *used >= uses {
            return None;
        }
        *used += 1;
        Some(Reservation {
            approvals: self.clone(),
            id: id.to_owned(),
            committed: false,
        })
    }

    /// Records a request that needed an approval (once per id; the oldest is dropped beyond
    /// [`MAX_PENDING`]). Returns whether it was new.
    pub fn request(&self, mut p: Pending) -> bool {
        if p.arguments
            .as_ref()
            .is_some_and(|a| a.len() > MAX_PENDING_ARGUMENTS)
        {
            p.arguments = None;
        }
        let mut inner = self.lock();
        if inner.pending.iter().any(|q| q.id == p.id) {
            return false;
        }
        if inner.pending.len() >= MAX_PENDING {
            inner.pending.pop_front();
        }
        inner.pending.push_back(p);
        true
    }

    /// The pending requests, oldest first.
    pub fn pending(&self) -> Vec<Pending> {
        self.lock().pending.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(dir: &Path, approvals: Value) -> std::path::PathBuf {
        let p = dir.join("approvals.json");
        std::fs::write(&p, json!({"approvals": approvals}).to_string()).unwrap();
        p
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mcp-warden-approvals-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn canonical_arguments_ignore_key_order_and_whitespace_only() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, {"d": 0, "c": 2}], "x": "s"}}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"c":2,"d":0}]},"b":1}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&b),
            r#"{"a":{"x":"s","y":[1,{"c":2,"d":0}]},"b":1}"#
        );
        let c: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[{"c":2,"d":0},1]},"b":1}"#).unwrap();
        assert_ne!(canonical(&a), canonical(&c), "array order matters");
        let id = |p, t, a, i| approval_id(p, t, a, i);
        assert_ne!(id("p", "t", "h", "alice"), id("p", "t", "h", "bob"));
        assert_ne!(id("p", "t", "h", "a"), id("p", "u", "h", "a"));
        assert_ne!(id("p", "t\0h", "x", "a"), id("p", "t", "h\0x", "a"));
    }

    #[test]
    fn a_use_is_reserved_once_given_back_when_not_spent_and_uses_survive_reloads() {
        let d = dir();
        let a = Arc::new(Approvals::default());
        let path = file(&d, json!([{"id": "x", "uses": 1, "expires_at": 100}]));
        assert!(a.load(&path).unwrap());
        assert!(!a.load(&path).unwrap(), "unchanged");
        let r = a.reserve("x", 50).expect("granted");
        assert!(a.reserve("x", 50).is_none(), "the one use is taken");
        drop(r);
        let r = a.reserve("x", 50).expect("given back");
        assert_eq!(r.commit(), 0);
        assert!(a.reserve("x", 50).is_none(), "spent");
        // The file is rewritten (another approval added): the spent use stays spent.
        let path = file(
            &d,
            json!([{"id": "x", "uses": 1, "expires_at": 100}, {"id": "y", "uses": 2, "expires_at": 100}]),
        );
        assert!(a.load(&path).unwrap());
        assert!(a.reserve("x", 50).is_none());
        assert!(a.reserve("y", 101).is_none(), "expired");
        assert!(a.reserve("nope", 50).is_none());
        // A broken file keeps the last good set.
        std::fs::write(&path, "{oops").unwrap();
        assert!(a.load(&path).is_err());
        assert!(a.reserve("y", 50).is_some());
    }

    #[test]
    fn racing_calls_for_the_last_use_run_exactly_once() {
        let d = dir();
        let a = Arc::new(Approvals::default());
        a.load(&file(
            &d,
            json!([{"id": "x", "uses": 1, "expires_at": u64::MAX}]),
        ))
        .unwrap();
        let won = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    if let Some(r) = a.reserve("x", 1) {
                        r.commit();
                        won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(won.into_inner(), 1);
    }

    #[test]
    fn pending_requests_are_bounded_and_leave_once_approved() {
        let d = dir();
        let a = Approvals::default();
        let req = |i: usize| Pending {
            id: format!("id-{i}"),
            policy: "p".into(),
            tool: "t".into(),
            arguments: Some("x".repeat(if i == 0 { 20_000 } else { 2 })),
            arguments_sha256: String::new(),
            identity: "a".into(),
            requested_at: 0,
        };
        assert!(a.request(req(0)));
        assert!(!a.request(req(0)), "once per id");
        assert_eq!(
            a.pending()[0].arguments,
            None,
            "large arguments keep only their hash"
        );
        for i in 1..=MAX_PENDING {
            a.request(req(i));
        }
        let p = a.pending();
        assert_eq!(p.len(), MAX_PENDING);
        assert_eq!(p[0].id, "id-1", "the oldest was dropped");
        a.load(&file(
            &d,
            json!([{"id": "id-5", "uses": 1, "expires_at": 1}]),
        ))
        .unwrap();
        assert!(a.pending().iter().all(|p| p.id != "id-5"));
    }
}
