//! Approvals: a call whose rule needs one runs only with a person's approval of exactly it —
//! policy, tool, SHA-256 of the canonical arguments, caller — which allows a number of uses until
//! it expires.
//!
//! Granted approvals are read from a file (`--approvals FILE`; in a cluster the controller renders
//! it), re-read when it changes; a file that cannot be read keeps the last good set. Uses are
//! counted here, by approval id, across reloads: a use is reserved under one lock before the call
//! is decided, so two identical calls racing for the last use never both run, and given back if
//! the call is refused for another reason (a limit). Calls that needed an approval and had none
//! are kept as pending requests, bounded (the oldest is dropped) and dropped once their time to
//! live has passed. Without a cluster, the admin API decides pending requests directly
//! ([`Approvals::decide`]); such approvals live in memory beside the file's.
//!
//! In a cluster an approval names the pod whose sidecar saw the request. A sidecar without peers
//! honours it on that pod only, counting its uses itself. A sidecar with peers (`--peers`, one
//! budget across replicas) honours it on every pod of the policy: each use is counted once, by
//! the sidecar that owns the approval among the peers (see `peers`), which records on which pod
//! it ran.

use crate::approval::{ApprovalsFile, Granted, Pending, Report, Spent, MIN_ID_PREFIX};
use crate::policy::sha256_hex;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Pods recorded per approval as where its uses ran.
const MAX_USED_ON: usize = 16;

/// Pending requests kept at most.
pub const MAX_PENDING: usize = 256;
/// Largest canonical arguments kept with a pending request (larger ones keep only their hash).
const MAX_PENDING_ARGUMENTS: usize = 16 << 10;

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

/// Why a decision through the admin API was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "no pending request has approval id {0:?} (decided, expired, never made here, or a prefix \
     shorter than 12 characters or naming several)"
)]
pub struct NotPending(pub String);

#[derive(Default)]
struct Inner {
    /// The file's approvals.
    granted: HashMap<String, Granted>,
    /// Approvals decided through the admin API (no cluster), with their metric labels
    /// (policy, tool).
    local: HashMap<String, Granted>,
    local_labels: HashMap<String, (String, String)>,
    /// Requests that lapsed undecided and local approvals that lapsed unused, as metric labels
    /// (policy, tool), until [`Approvals::take_lapsed`] counts them.
    lapsed: Vec<(String, String)>,
    /// Uses taken per approval ([`Granted::key`]; kept across reloads of the file).
    used: HashMap<String, u32>,
    /// The pods whose calls spent each approval's uses (one entry per use, at most
    /// [`MAX_USED_ON`]).
    used_on: HashMap<String, Vec<String>>,
    pending: VecDeque<Pending>,
    /// The file's hash, to tell whether it changed.
    file_hash: Option<String>,
}

/// The approvals of one sidecar.
#[derive(Default)]
pub struct Approvals {
    inner: Mutex<Inner>,
    /// This sidecar's pod: approvals naming another pod are not honoured here, unless
    /// `policy_wide`.
    pod: Option<String>,
    /// Approvals are honoured on every pod of the policy (the sidecar has peers).
    policy_wide: bool,
}

/// A use of an approval, reserved for one call: kept by [`Reservation::commit`], given back when
/// dropped otherwise.
pub struct Reservation {
    approvals: Arc<Approvals>,
    /// The approval's [`Granted::key`].
    key: String,
    committed: bool,
}

impl Reservation {
    /// The call ran on pod `on` (this one when `None`): the use is spent. Returns the uses
    /// left.
    pub fn commit(mut self, on: Option<&str>) -> u32 {
        self.committed = true;
        let mut inner = self.approvals.lock();
        if let Some(pod) = on.or(self.approvals.pod.as_deref()) {
            let list = inner.used_on.entry(self.key.clone()).or_default();
            if list.len() < MAX_USED_ON {
                list.push(pod.to_owned());
            }
        }
        let used = inner.used.get(&self.key).copied().unwrap_or(0);
        inner
            .granted
            .values()
            .chain(inner.local.values())
            .find(|g| g.key() == self.key)
            .map_or(0, |g| g.uses.saturating_sub(used))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            let mut inner = self.approvals.lock();
            if let Some(n) = inner.used.get_mut(&self.key) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Inner {
    /// Drops pending requests and local approvals whose time has passed at `now`, noting those
    /// that lapsed without being decided or used up.
    fn prune(&mut self, now: u64) {
        let Inner {
            pending,
            lapsed,
            local,
            local_labels,
            used,
            ..
        } = self;
        pending.retain(|p| {
            let live = p.expires_at() >= now;
            if !live {
                lapsed.push((p.policy.clone(), p.tool_label.clone()));
            }
            live
        });
        local.retain(|id, g| {
            let live = now <= g.expires_at;
            if !live {
                let labels = local_labels.remove(id).unwrap_or_default();
                if used.remove(g.key()).unwrap_or(0) < g.uses {
                    lapsed.push(labels);
                }
            }
            live
        });
    }

    /// The approval of call `id` that has uses left, if any.
    fn live(&self, id: &str) -> Option<&Granted> {
        [self.granted.get(id), self.local.get(id)]
            .into_iter()
            .flatten()
            .find(|g| self.used.get(g.key()).copied().unwrap_or(0) < g.uses)
    }
}

impl Approvals {
    /// The approvals of the sidecar of pod `pod` (none outside a cluster); `policy_wide` when
    /// the sidecar has peers.
    pub fn for_pod(pod: Option<String>, policy_wide: bool) -> Approvals {
        Approvals {
            pod,
            policy_wide,
            ..Approvals::default()
        }
    }

    /// The key ([`Granted::key`]) of the approval of call `id` with uses left at `now`: what a
    /// use is counted under, here or at the approval's owner.
    pub fn live_key(&self, id: &str, now: u64) -> Option<String> {
        let inner = self.lock();
        let g = inner.live(id)?;
        (now <= g.expires_at).then(|| g.key().to_owned())
    }

    /// Reserves a use of approval `id` counted under `key` for a call on another pod: only if
    /// this sidecar holds that very approval (the same key) with uses left.
    pub fn reserve_key(self: &Arc<Self>, id: &str, key: &str, now: u64) -> Option<Reservation> {
        if self.live_key(id, now).as_deref() != Some(key) {
            return None;
        }
        self.reserve(id, now)
    }

    /// Gives back a use counted under `key` that ran nowhere (its call on pod `on` did not run).
    pub fn give_back_use(&self, key: &str, on: &str) {
        let mut inner = self.lock();
        if let Some(n) = inner.used.get_mut(key) {
            *n = n.saturating_sub(1);
        }
        if let Some(list) = inner.used_on.get_mut(key) {
            if let Some(i) = list.iter().rposition(|p| p == on) {
                list.remove(i);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the granted approvals with the file's, if it changed; a missing file grants
    /// none (a policy without approvals has no such key in its ConfigMap). Uses already taken
    /// stay counted; requests the file now approves leave the pending list.
    pub fn load(&self, path: &Path) -> Result<bool, ApprovalsError> {
        let shown = path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => br#"{"approvals":[]}"#.to_vec(),
            Err(source) => {
                return Err(ApprovalsError::Read {
                    path: shown,
                    source,
                })
            }
        };
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
            .filter(|g| self.policy_wide || g.pod.is_none() || g.pod == self.pod)
            .map(|g| (g.id.clone(), g))
            .collect();
        let requested: Vec<String> = inner.pending.iter().map(|p| p.id.clone()).collect();
        let approved: std::collections::HashSet<String> = requested
            .into_iter()
            .filter(|id| inner.live(id).is_some())
            .collect();
        inner.pending.retain(|p| !approved.contains(&p.id));
        inner.file_hash = Some(hash);
        Ok(true)
    }

    /// Reserves one use of approval `id` at `now` (seconds since the epoch), if it is granted,
    /// unexpired and has uses left.
    pub fn reserve(self: &Arc<Self>, id: &str, now: u64) -> Option<Reservation> {
        let mut inner = self.lock();
        let g = inner.live(id)?;
        if now > g.expires_at {
            return None;
        }
        let key = g.key().to_owned();
        *inner.used.entry(key.clone()).or_insert(0) += 1;
        Some(Reservation {
            approvals: self.clone(),
            key,
            committed: false,
        })
    }

    /// Records a request that needed an approval (once per id; lapsed ones and, beyond
    /// [`MAX_PENDING`], the oldest are dropped). Returns whether it was new.
    pub fn request(&self, mut p: Pending) -> bool {
        if p.arguments
            .as_ref()
            .is_some_and(|a| a.len() > MAX_PENDING_ARGUMENTS)
        {
            p.arguments = None;
        }
        let mut inner = self.lock();
        inner.prune(p.requested_at);
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

    /// The pending requests still within their time at `now`, and the uses spent of every
    /// approval this sidecar holds.
    pub fn report(&self, now: u64) -> Report {
        let mut inner = self.lock();
        inner.prune(now);
        let pending = inner.pending.iter().cloned().collect();
        let mut used: Vec<Spent> = inner
            .granted
            .values()
            .chain(inner.local.values())
            .map(|g| Spent {
                id: g.id.clone(),
                name: g.name.clone(),
                used: inner.used.get(g.key()).copied().unwrap_or(0),
                uses: g.uses,
                expires_at: g.expires_at,
                used_on: inner.used_on.get(g.key()).cloned().unwrap_or_default(),
            })
            .collect();
        used.sort_by(|a, b| a.id.cmp(&b.id));
        Report { pending, used }
    }

    /// Seconds the oldest pending request has waited at `now` (0 with none).
    pub fn oldest_pending_age(&self, now: u64) -> u64 {
        let mut inner = self.lock();
        inner.prune(now);
        inner
            .pending
            .iter()
            .map(|p| now.saturating_sub(p.requested_at))
            .max()
            .unwrap_or(0)
    }

    /// The (policy, tool) of each request that lapsed undecided and each local approval that
    /// lapsed unused since the last call, for `approvals_total{result="expired"}`.
    pub fn take_lapsed(&self, now: u64) -> Vec<(String, String)> {
        let mut inner = self.lock();
        inner.prune(now);
        std::mem::take(&mut inner.lapsed)
    }

    /// Decides a pending request through the admin API: approved, it allows the rule's uses
    /// for the rule's time to live from now; either way it leaves the pending list.
    pub fn decide(&self, id: &str, approve: bool, now: u64) -> Result<Pending, NotPending> {
        let mut inner = self.lock();
        // The id, or a prefix of at least 12 characters naming one request (as lists show it).
        let matches: Vec<usize> = inner
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.expires_at() >= now
                    && (p.id == id || (id.len() >= MIN_ID_PREFIX && p.id.starts_with(id)))
            })
            .map(|(i, _)| i)
            .collect();
        let [at] = matches[..] else {
            return Err(NotPending(id.to_owned()));
        };
        let p = inner.pending.remove(at).expect("the position is in range");
        if approve {
            inner
                .local_labels
                .insert(p.id.clone(), (p.policy.clone(), p.tool_label.clone()));
            inner.local.insert(
                p.id.clone(),
                Granted {
                    id: p.id.clone(),
                    uses: p.uses,
                    expires_at: now.saturating_add(p.ttl_seconds),
                    pod: None,
                    name: Some(format!("{}@{now}", p.id)),
                },
            );
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
        assert_eq!(r.commit(None), 0);
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
                        r.commit(None);
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
            uses: 1,
            ttl_seconds: 3600,
            tool_label: "t".into(),
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

    #[test]
    fn approvals_for_another_pod_are_not_honoured_and_a_missing_file_grants_none() {
        let d = dir().join("pods");
        std::fs::create_dir_all(&d).unwrap();
        let a = Arc::new(Approvals::for_pod(Some("web-0".into()), false));
        assert!(
            a.load(&d.join("absent.json")).unwrap(),
            "a missing file is an empty set"
        );
        let path = file(
            &d,
            json!([
                {"id": "mine", "uses": 1, "expires_at": 100, "pod": "web-0"},
                {"id": "theirs", "uses": 1, "expires_at": 100, "pod": "web-1"},
                {"id": "any", "uses": 1, "expires_at": 100}
            ]),
        );
        a.load(&path).unwrap();
        assert!(a.reserve("theirs", 1).is_none());
        assert!(a.reserve("mine", 1).is_some());
        assert!(a.reserve("any", 1).is_some());
    }

    #[test]
    fn with_peers_every_pods_approval_is_honoured_and_where_it_ran_is_recorded() {
        let d = dir().join("policy-wide");
        std::fs::create_dir_all(&d).unwrap();
        let a = Arc::new(Approvals::for_pod(Some("web-0".into()), true));
        let path = file(
            &d,
            json!([{"id": "theirs", "uses": 2, "expires_at": 100, "pod": "web-1", "name": "n1"}]),
        );
        a.load(&path).unwrap();
        assert_eq!(a.live_key("theirs", 1).as_deref(), Some("n1"));
        // A use for a call on web-2, asked of this sidecar as the approval's owner.
        assert!(
            a.reserve_key("theirs", "another-name", 1).is_none(),
            "another approval"
        );
        a.reserve_key("theirs", "n1", 1)
            .unwrap()
            .commit(Some("web-2"));
        a.reserve("theirs", 1).unwrap().commit(None);
        assert!(a.reserve("theirs", 1).is_none(), "both uses spent");
        let spent = &a.report(1).used[0];
        assert_eq!(
            (spent.used, spent.used_on.clone()),
            (2, vec!["web-2".to_owned(), "web-0".to_owned()])
        );
        // web-2's call did not run after all: its use comes back.
        a.give_back_use("n1", "web-2");
        let spent = &a.report(1).used[0];
        assert_eq!(
            (spent.used, spent.used_on.clone()),
            (1, vec!["web-0".to_owned()])
        );
        assert!(a.reserve("theirs", 1).is_some());
    }

    #[test]
    fn the_admin_api_decides_pending_requests_once_within_their_time() {
        let a = Arc::new(Approvals::default());
        let req = |id: &str, at: u64| Pending {
            id: id.into(),
            policy: "p".into(),
            tool: "clear_session".into(),
            arguments: Some("{}".into()),
            arguments_sha256: sha256_hex(b"{}"),
            identity: "alice".into(),
            requested_at: at,
            uses: 2,
            ttl_seconds: 60,
            tool_label: "clear_session".into(),
        };
        a.request(req("a", 100));
        a.request(req("b", 100));
        assert_eq!(a.oldest_pending_age(130), 30);
        a.request(req("0123456789abcdef-1", 100));
        a.request(req("0123456789abcdef-2", 100));
        assert!(
            a.decide("0123456789ab", true, 130).is_err(),
            "a prefix naming two"
        );
        assert!(
            a.decide("0123456", true, 130).is_err(),
            "a prefix too short"
        );
        assert!(a.decide("0123456789abcdef-2", false, 130).is_ok());
        assert!(
            a.decide("0123456789ab", false, 130).is_ok(),
            "now names one"
        );
        assert_eq!(
            a.decide("a", true, 130).unwrap().tool,
            "clear_session",
            "approved"
        );
        assert_eq!(
            a.decide("a", true, 130),
            Err(NotPending("a".into())),
            "a decision is made once"
        );
        assert!(a.reserve("a", 130).unwrap().commit(None) == 1);
        let r = a.report(131);
        assert_eq!(r.pending.len(), 1);
        assert_eq!(
            r.used,
            vec![Spent {
                id: "a".into(),
                name: Some("a@130".into()),
                used: 1,
                uses: 2,
                expires_at: 190,
                used_on: vec![],
            }]
        );
        assert!(
            a.reserve("a", 191).is_none(),
            "the approval lapses ttl after it was given"
        );
        // A rejected request leaves; nothing is granted.
        a.decide("b", false, 131).unwrap();
        assert!(a.reserve("b", 131).is_none());
        // A lapsed request cannot be approved, is not reported, and is dropped on the next one.
        a.request(req("c", 100));
        assert!(a.decide("c", true, 161).is_err());
        assert!(a.report(161).pending.is_empty());
        assert_eq!(a.oldest_pending_age(161), 0);
        a.request(req("d", 200));
        assert_eq!(a.pending().len(), 1);
        // Counted as expired: c (lapsed undecided) and a (approved at 130, one of two uses spent,
        // lapsed at 190); b was rejected, which is not a lapse.
        let lapsed = a.take_lapsed(200);
        assert_eq!(lapsed.len(), 2, "{lapsed:?}");
        assert!(a.take_lapsed(200).is_empty(), "counted once");
    }
}
