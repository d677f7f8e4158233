//! Loading the policy file, and reloading it when it changes.
//!
//! The file is re-read every `reload_interval` through its path, so every way a file can change
//! is seen: an editor's rename, a ConfigMap's `..data` symlink swap, a file that disappears and
//! comes back. A new policy replaces the old one atomically (requests in flight finish on the one
//! they started with); counters carry over per the engine's rules. A missing or invalid file keeps
//! the last good policy and counts `policy_reloads_total{result="error"}` once per change.

use super::State;
use crate::engine::{Engine, EngineOptions};
use crate::policy::{self, sha256_hex};
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

/// Reads and compiles the policy at `path`, keeping counters of `previous` where they match.
pub fn load_policy(
    path: &Path,
    previous: Option<&LoadedPolicy>,
    opts: EngineOptions,
) -> Result<LoadedPolicy, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    compile_bytes(path, &bytes, previous, opts)
}

fn compile_bytes(
    path: &Path,
    bytes: &[u8],
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
    let engine = Engine::new(policy, previous.map(|p| &p.engine), opts);
    Ok(LoadedPolicy {
        engine,
        label,
        hash: sha256_hex(bytes),
        allowed: std::sync::OnceLock::new(),
    })
}

fn file_label(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("policy")
        .to_owned()
}

fn install(state: &State, loaded: LoadedPolicy) {
    let m = &state.metrics;
    m.policy_info.reset();
    m.policy_info
        .with_label_values(&[&loaded.label, &loaded.hash])
        .set(1);
    m.reloads.with_label_values(&[&loaded.label, "ok"]).inc();
    tracing::info!(policy = %loaded.label, hash = %loaded.hash, "policy loaded");
    state.policy.store(Some(Arc::new(loaded)));
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

/// The first load, at start. Failure leaves the sidecar unready; the watcher keeps trying.
pub fn initial_load(state: &State) {
    match load_policy(&state.cfg.policy_path, None, state.cfg.engine) {
        Ok(p) => install(state, p),
        Err(e) => failed(state, &e.to_string()),
    }
}

/// Re-reads the file every interval until `stop` changes.
pub async fn watch(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    // What the file looked like last time: its hash, or the error reading it gave.
    let mut last_seen: Option<Result<String, String>> =
        state.policy.load().as_ref().map(|p| Ok(p.hash.clone()));
    let mut tick = tokio::time::interval(state.cfg.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let path = state.cfg.policy_path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        let Ok(read) = read else { continue };
        let seen = match &read {
            Ok(bytes) => Ok(sha256_hex(bytes)),
            Err(e) => Err(e.to_string()),
        };
        if last_seen.as_ref() == Some(&seen) {
            continue;
        }
        last_seen = Some(seen.clone());
        let current = state.policy.load_full();
        match (read, seen) {
            (Ok(_), Ok(hash)) if current.as_ref().is_some_and(|c| c.hash == hash) => {}
            (Ok(bytes), _) => {
                match compile_bytes(
                    &state.cfg.policy_path,
                    &bytes,
                    current.as_deref(),
                    state.cfg.engine,
                ) {
                    Ok(p) => install(&state, p),
                    Err(e) => failed(&state, &e.to_string()),
                }
            }
            (Err(source), _) => {
                let e = LoadError::Read {
                    path: state.cfg.policy_path.clone(),
                    source,
                };
                failed(&state, &e.to_string())
            }
        }
    }
}
