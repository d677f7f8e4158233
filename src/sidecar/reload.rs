//! Loading the policy file, and reloading it when it changes.
//!
//! The file is re-read every `reload_interval` through its path, so every way a file can change
//! is seen: an editor's rename, a ConfigMap's `..data` symlink swap, a file that disappears and
//! comes back. A new policy replaces the old one atomically (requests in flight finish on the one
//! they started with); counters carry over per the engine's rules. A missing or invalid file keeps
//! the last good policy and counts `policy_reloads_total{result="error"}` once per change.
//!
//! The key set (`--jwks`) is read with the policy and watched the same way: a policy that
//! verifies tokens is built with a verifier for its keys. A key set that cannot be read keeps the
//! last good keys; with none, tokens are refused (401), never accepted unverified.

use super::State;
use crate::engine::{Engine, EngineOptions};
use crate::identity::{VerifiedCache, Verifier};
use crate::policy::{self, sha256_hex, Identity};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// A compiled policy with what identifies it.
pub struct LoadedPolicy {
    pub engine: Engine,
    /// The `policy` label: the document's `name`, else the file name without extension.
    pub label: String,
    /// SHA-256 (hex) of the file's bytes, as the controller computes `policyHash`.
    pub hash: String,
    /// The accepted hosts and origins: the flags' plus the policy's `transport` (built on first
    /// use, so once per load).
    pub allowed: std::sync::OnceLock<super::Allowed>,
    /// The keys tokens are verified with, when the policy verifies tokens.
    pub keys: Keys,
    /// The key set file as it was read for this load: its hash, or the error reading it.
    pub keys_seen: Option<Result<String, String>>,
}

/// The keys of a policy that verifies tokens.
pub enum Keys {
    /// The policy reads no tokens (`identity.header`, or a token's hash).
    NotNeeded,
    Ready(Arc<KeyRing>),
    /// Why there are none: every token is refused.
    Unavailable(String),
}

/// A verifier and the tokens it has verified.
pub struct KeyRing {
    pub verifier: Verifier,
    pub cache: VerifiedCache,
    /// SHA-256 of the key set file, to tell whether it changed.
    pub hash: String,
}

/// Verified tokens remembered per key set.
const VERIFIED_TOKENS: usize = 10_000;

/// The key set file: a JSON Web Key Set, with an `issuer` member when the controller renders it
/// (a ServiceAccount identity learns its issuer there).
#[derive(serde::Deserialize)]
struct KeySetFile {
    issuer: Option<String>,
}

/// The keys `identity` needs, from the key set file's bytes. `previous` is kept when the new
/// bytes cannot be used and it verifies for the same issuer and audiences.
fn keys_for(
    identity: &Identity,
    jwks: Option<&Result<Vec<u8>, String>>,
    previous: Option<&Keys>,
) -> Keys {
    if !identity.verifies_tokens() {
        return Keys::NotNeeded;
    }
    let built = match jwks {
        None => Err("no key set: start the sidecar with --jwks FILE".to_owned()),
        Some(Err(e)) => Err(e.clone()),
        Some(Ok(bytes)) => {
            let hash = sha256_hex(bytes);
            if let Some(Keys::Ready(ring)) = previous {
                if ring.hash == hash && same_audience(ring, identity) {
                    return Keys::Ready(ring.clone());
                }
            }
            ring_for(identity, bytes).map(|verifier| KeyRing {
                verifier,
                cache: VerifiedCache::new(VERIFIED_TOKENS),
                hash,
            })
        }
    };
    match built {
        Ok(ring) => Keys::Ready(Arc::new(ring)),
        Err(why) => match previous {
            Some(Keys::Ready(ring)) if same_audience(ring, identity) => {
                tracing::error!(%why, "key set not reloaded; the last good keys stay in force");
                Keys::Ready(ring.clone())
            }
            _ => {
                tracing::error!(%why, "no keys to verify tokens with: every token is refused");
                Keys::Unavailable(why)
            }
        },
    }
}

fn same_audience(ring: &KeyRing, identity: &Identity) -> bool {
    ring.verifier.audiences() == identity.audiences()
        && identity
            .issuer()
            .is_none_or(|i| i == ring.verifier.issuer())
}

fn ring_for(identity: &Identity, bytes: &[u8]) -> Result<Verifier, String> {
    let file: KeySetFile =
        serde_json::from_slice(bytes).map_err(|e| format!("the key set is not JSON: {e}"))?;
    let issuer = match (identity.issuer(), file.issuer.as_deref()) {
        (Some(want), Some(got)) if want != got => {
            return Err(format!(
                "the key set is for issuer {got:?}, the policy names {want:?}"
            ))
        }
        (Some(want), _) => want.to_owned(),
        (None, Some(got)) => got.to_owned(),
        (None, None) => {
            return Err("the key set names no issuer (an \"issuer\" member), which \
                 identity.serviceAccount needs"
                .into())
        }
    };
    Verifier::new(&issuer, identity.audiences(), bytes).map_err(|e| format!("the key set: {e}"))
}

/// Why a policy file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not UTF-8", path.display())]
    NotUtf8 { path: std::path::PathBuf },
    #[error("invalid policy {}: {}", path.display(), errors.to_string().replace('\n', "; "))]
    Invalid {
        path: std::path::PathBuf,
        errors: policy::PolicyErrors,
    },
}

/// Reads and compiles the policy at `path` with the key set at `jwks`, keeping counters (and
/// keys) of `previous` where they match.
pub fn load_policy(
    path: &Path,
    jwks: Option<&Path>,
    previous: Option<&LoadedPolicy>,
    opts: EngineOptions,
) -> Result<LoadedPolicy, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let jwks = jwks.map(read_key_set);
    compile_bytes(path, &bytes, jwks.as_ref(), previous, opts)
}

fn seen_hash(read: &Result<Vec<u8>, String>) -> Result<String, String> {
    read.as_ref().map(|b| sha256_hex(b)).map_err(Clone::clone)
}

fn read_key_set(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn compile_bytes(
    path: &Path,
    bytes: &[u8],
    jwks: Option<&Result<Vec<u8>, String>>,
    previous: Option<&LoadedPolicy>,
    opts: EngineOptions,
) -> Result<LoadedPolicy, LoadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| LoadError::NotUtf8 {
        path: path.to_owned(),
    })?;
    let policy = policy::load_str(text).map_err(|errors| LoadError::Invalid {
        path: path.to_owned(),
        errors,
    })?;
    let label = policy.name.clone().unwrap_or_else(|| file_label(path));
    let keys = keys_for(&policy.identity.source, jwks, previous.map(|p| &p.keys));
    let engine = Engine::new(policy, previous.map(|p| &p.engine), opts);
    Ok(LoadedPolicy {
        engine,
        label,
        hash: sha256_hex(bytes),
        allowed: std::sync::OnceLock::new(),
        keys,
        keys_seen: jwks.map(seen_hash),
    })
}

fn file_label(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("policy")
        .to_owned()
}

fn install(state: &State, mut loaded: LoadedPolicy) {
    // Counts held across pods are placed by the sidecar's peer set.
    loaded.engine = loaded.engine.with_placer(state.peers.clone());
    state.peers.reload(&loaded.label);
    state.confirm.sealer.reload();
    let m = &state.metrics;
    m.policy_info.reset();
    m.policy_info
        .with_label_values(&[&loaded.label, &loaded.hash])
        .set(1);
    m.reloads.with_label_values(&[&loaded.label, "ok"]).inc();
    m.reloads.with_label_values(&[&loaded.label, "error"]);
    seed_series(m, &loaded.label, loaded.engine.policy());
    tracing::info!(policy = %loaded.label, hash = %loaded.hash, "policy loaded");
    state.policy.store(Some(Arc::new(loaded)));
}

/// Creates, at zero, the series of every outcome the policy can decide: a counter's first
/// increment is then a change Prometheus sees (`rate` and `increase` miss the value a series
/// is born with), so a dashboard shows exactly the calls made. Bounded by the policy's rules.
fn seed_series(m: &crate::metrics::SidecarMetrics, label: &str, policy: &policy::Policy) {
    let rules = policy
        .tools
        .rules
        .iter()
        .chain(policy.grants.iter().flat_map(|g| g.tools.rules.iter()))
        .chain(policy.categories.rules());
    for rule in rules {
        let mut outcomes = Vec::new();
        if !rule.always_denied() {
            outcomes.push("allow");
        }
        if rule.deny.is_some() || !rule.require.is_empty() || !rule.deny_if.is_empty() {
            outcomes.push("deny");
        }
        if !rule.limits.is_empty() {
            outcomes.push("rate_limited");
        }
        if let Some(a) = &rule.approval {
            outcomes.push("approval_required");
            for result in ["requested", "used"] {
                m.approvals.with_label_values(&[label, &rule.key, result]);
            }
            if a.by_user() {
                for result in super::confirm::RESULTS {
                    m.approvals.with_label_values(&[label, &rule.key, result]);
                }
            }
        }
        for outcome in outcomes {
            m.decisions.with_label_values(&[label, &rule.key, outcome]);
        }
    }
    let other = match policy.default {
        policy::DefaultDecision::Allow => "allow",
        policy::DefaultDecision::Deny => "deny",
    };
    m.decisions.with_label_values(&[label, "_other", other]);
    m.decisions.with_label_values(&[label, "_other", "invalid"]);
    if policy.uses_tool_knowledge() {
        // Calls the server's tool list must decide, made before the sidecar has listed it.
        m.decisions
            .with_label_values(&[label, "_other", "unlisted"]);
    }
    for result in ["ok", "error"] {
        m.tool_lists.with_label_values(&[label, result]);
    }
    if policy.counters.iter().any(|c| c.scope.across_pods()) {
        for result in super::peers::REQUEST_RESULTS {
            m.peer_requests.with_label_values(&[label, result]);
        }
        for reason in super::peers::FALLBACK_REASONS {
            m.budget_fallbacks.with_label_values(&[label, reason]);
        }
        m.lease_refills.with_label_values(&[label]);
    }
    if !policy.default_rule.limits.is_empty() {
        m.decisions
            .with_label_values(&[label, "_other", "rate_limited"]);
    }
    if !policy.counters.is_empty() {
        m.counter_overflow.with_label_values(&[label]);
    }
    // What every agent sends (other methods' series appear with their first request).
    for method in ["initialize", "tools/list", "tools/call"] {
        m.requests.with_label_values(&[label, method]);
        m.request_duration.with_label_values(&[label, method]);
    }
    m.decision_duration.with_label_values(&[label]);
    m.continuations.with_label_values(&[label]);
    for c in &policy.counters {
        m.limit_hits
            .with_label_values(&[label, &c.name, &c.window.text, c.scope.as_str()]);
    }
}

fn failed(state: &State, error: &str) {
    let label = state
        .policy
        .load()
        .as_ref()
        .map_or_else(|| file_label(&state.cfg.policy_path), |p| p.label.clone());
    state
        .metrics
        .reloads
        .with_label_values(&[&label, "error"])
        .inc();
    if state.policy.load().is_some() {
        tracing::error!(%error, "policy not reloaded; the last good policy stays in force");
    } else {
        tracing::error!(%error, "no valid policy: not ready, nothing is forwarded");
    }
}

/// Re-reads the approvals file, if there is one. A file that cannot be read keeps the approvals
/// in force; its error is logged once until it changes.
fn load_approvals(state: &State, last_error: &mut Option<String>) {
    let Some(path) = &state.cfg.approvals_path else {
        return;
    };
    match state.approvals.load(path) {
        Ok(true) => {
            *last_error = None;
            tracing::info!(path = %path.display(), "approvals loaded");
        }
        Ok(false) => *last_error = None,
        Err(e) => {
            let e = e.to_string();
            if last_error.as_deref() != Some(e.as_str()) {
                tracing::warn!(error = %e, "approvals not reloaded; the approvals in force stay");
                *last_error = Some(e);
            }
        }
    }
}

/// What the record of first-seen definitions was when last read: its hash, or the error.
#[derive(Default)]
pub struct SeenFile(Option<Result<String, String>>);

/// Re-reads the policy's record of first-seen definitions, if there is one, and adopts it when
/// it changed. A missing file records nothing; one that cannot be read keeps what was adopted,
/// and its error is logged once until it changes.
pub fn load_seen(state: &State, last: &mut SeenFile) {
    let Some(path) = &state.cfg.seen_path else {
        return;
    };
    let read = match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => Err(e.to_string()),
        Ok(bytes) => Ok(bytes),
    };
    let now = read.as_ref().map(|b| sha256_hex(b)).map_err(Clone::clone);
    if last.0.as_ref() == Some(&now) {
        return;
    }
    last.0 = Some(now);
    match read.and_then(|b| crate::tools::seen::FirstSeen::parse(&b)) {
        Ok(record) => {
            state.tools.adopt_first_seen(&record);
            tracing::info!(path = %path.display(), tools = record.tools.len(), "first-seen definitions adopted");
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "first-seen definitions not read; those adopted stay")
        }
    }
}

/// The first load, at start. Failure leaves the sidecar unready; the watcher keeps trying.
pub fn initial_load(state: &State) {
    load_seen(state, &mut SeenFile::default());
    match load_policy(
        &state.cfg.policy_path,
        state.cfg.jwks_path.as_deref(),
        None,
        state.cfg.engine,
    ) {
        Ok(p) => install(state, p),
        Err(e) => failed(state, &e.to_string()),
    }
}

/// Re-reads the files every interval until `stop` changes.
pub async fn watch(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    // What the files looked like last time: their hashes, or the errors reading them gave.
    let mut last_seen: Option<Seen> = None;
    let mut tick = tokio::time::interval(state.cfg.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut approvals_error = None;
    let mut seen_file = SeenFile::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        load_approvals(&state, &mut approvals_error);
        load_seen(&state, &mut seen_file);
        if let Some(p) = state.policy.load_full() {
            state.peers.reload(&p.label);
        }
        state.confirm.sealer.reload();
        state.peers.expire_leases();
        let (path, jwks_path) = (state.cfg.policy_path.clone(), state.cfg.jwks_path.clone());
        let read = tokio::task::spawn_blocking(move || {
            (std::fs::read(&path), jwks_path.as_deref().map(read_key_set))
        })
        .await;
        let Ok((read, jwks)) = read else { continue };
        let seen = Seen {
            policy: match &read {
                Ok(bytes) => Ok(sha256_hex(bytes)),
                Err(e) => Err(e.to_string()),
            },
            jwks: jwks
                .as_ref()
                .map(|j| j.as_ref().map(|b| sha256_hex(b)).map_err(Clone::clone)),
        };
        let first = last_seen.is_none();
        if last_seen.as_ref() == Some(&seen) {
            continue;
        }
        last_seen = Some(seen.clone());
        let current = state.policy.load_full();
        let unchanged = current.as_ref().is_some_and(|c| {
            seen.policy.as_ref().is_ok_and(|h| *h == c.hash) && c.keys_seen == seen.jwks
        });
        if first && unchanged {
            continue;
        }
        match read {
            Ok(bytes) => match compile_bytes(
                &state.cfg.policy_path,
                &bytes,
                jwks.as_ref(),
                current.as_deref(),
                state.cfg.engine,
            ) {
                Ok(p) => install(&state, p),
                Err(e) => failed(&state, &e.to_string()),
            },
            Err(source) => {
                let e = LoadError::Read {
                    path: state.cfg.policy_path.clone(),
                    source,
                };
                failed(&state, &e.to_string())
            }
        }
    }
}

/// The files' contents by hash (or the error reading them).
#[derive(Clone, PartialEq, Eq)]
struct Seen {
    policy: Result<String, String>,
    jwks: Option<Result<String, String>>,
}
