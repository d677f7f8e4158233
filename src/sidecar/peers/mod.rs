//! One budget across the policy's sidecars (DESIGN §15), with nothing added to the cluster.
//!
//! The controller renders the policy's ready sidecars (`--peers`: names and admin addresses, and
//! how many replicas the policy has) and a key only the policy's pods read (`--peer-key`). Every
//! key of a counter held across pods (scopes `policy`, `grant`, `session`) has one owner among
//! the peers, by rendezvous hashing of the counter and key over the peers' names: all sidecars
//! with the same peer set agree on it without talking. The owner's count is the truth; another
//! sidecar asks it (one hop, `POST /peer/take` on its admin port) before the call may run.
//!
//! Never open: when the owner cannot be asked (unreachable, another peer set or policy, no key,
//! no peer set), the sidecar counts the key here against a share of the limit, `max / ways`
//! (rounded down; `ways` is the policy's replica count), so sidecars that all fall back allow at
//! most `max` together. The bound while views differ (a membership change reaching the pods at
//! different times) is in docs/policy.md.
//!
//! Peer requests carry an HMAC-SHA256 over the path, time, a fresh nonce and the body; an owner
//! refuses a stale time, a nonce it has seen, an unknown counter and a body over
//! [`MAX_PEER_BODY`].
//!
//! Here: the peer set and who owns a key. `ask`: a call's counts put to their owners, and the
//! fallback share. `lease`: counts an owner lends ahead of calls. `uses`: approval uses counted
//! by the approval's owner. `serve`: the peer API as an owner answers it. `wire`: its messages,
//! and how a request is signed and sent.

use super::approvals::Reservation;
use super::State;
use crate::engine::counters::Spent;
use crate::engine::{Ask, Decision, Engine, Place, Placer, Taken};
use crate::metrics::SidecarMetrics;
use crate::peering::PeerFile;
use crate::policy::{sha256_hex, Counter, Scope};
use crate::serve::{json, Body};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use ring::hmac;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

mod ask;
mod bind;
mod lease;
mod once;
mod serve;
#[cfg(test)]
mod tests;
mod uses;
mod wire;

pub(in crate::sidecar) use ask::{ask_owners, Lent};
pub(in crate::sidecar) use bind::{holds, keep};
use lease::Lease;
pub(in crate::sidecar) use once::take_answer;
use serve::Nonces;
pub use serve::{handle, handles};
pub(in crate::sidecar) use uses::{reserve_use, Use};
use wire::*;

/// Largest peer request or answer read.
pub const MAX_PEER_BODY: usize = 16 << 10;
/// How long a sidecar waits for an owner before counting on its share instead.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// An owner that failed is not asked again for this long (its keys count on shares).
const DOWN_FOR: Duration = Duration::from_secs(2);
/// Peer requests in flight at once; beyond, calls count on shares.
const MAX_INFLIGHT: usize = 256;
/// Limits of at least this many calls per window are leased: a non-owner asks its owner for a
/// few counts at once and spends them without a hop (smaller limits ask on every call, exact).
pub const LEASE_MIN_MAX: u32 = 100;
/// A lease's unused counts go back to the owner after this long.
const LEASE_FOR: Duration = Duration::from_secs(1);
/// Most counts one lease holds.
const LEASE_MOST: u32 = 64;
/// Leases held at once; beyond, calls ask their owner each time.
const MAX_LEASES: usize = 10_000;
/// A request's time may differ from the owner's clock by this much.
const CLOCK_SKEW_SECS: u64 = 30;
/// Nonces remembered (each for twice the clock skew); beyond, peer requests are refused.
const MAX_NONCES: usize = 1 << 16;

const TIME_HEADER: &str = "mcp-warden-peer-time";
const NONCE_HEADER: &str = "mcp-warden-peer-nonce";
const MAC_HEADER: &str = "mcp-warden-peer-mac";

/// The `result` of `peer_requests_total` and the `reason` of `budget_fallbacks_total`.
pub const REQUEST_RESULTS: [&str; 5] = ["taken", "limited", "not_owner", "mismatch", "error"];
pub const FALLBACK_REASONS: [&str; 5] = [
    "unreachable",
    "busy",
    "not_owner",
    "mismatch",
    "unknown_peers",
];

pub const TAKE_PATH: &str = "/peer/take";
pub const RETURN_PATH: &str = "/peer/return";
pub const USE_PATH: &str = "/peer/use";
pub const UNUSE_PATH: &str = "/peer/unuse";
pub const ONCE_PATH: &str = "/peer/once";
pub const BIND_PATH: &str = "/peer/bind";

/// What approval owners are placed under (beside counter names: no counter is named so, as a
/// counter name has no spaces).
const APPROVALS: &str = "approval uses";

/// What a sidecar knows of its peers.
#[derive(Debug)]
struct View {
    mode: Mode,
    peers: Vec<Peer>,
    /// The fallback share divides the limit this many ways.
    ways: NonZeroU32,
    key: Option<hmac::Key>,
    /// The files as read (their hashes, or the errors), to tell a change.
    read: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No `--peers`: a sidecar alone holds every count.
    Alone,
    /// `--peers` given but not (yet) usable: every count of a counter held across pods is a
    /// share.
    Unknown,
    Known,
}

#[derive(Debug)]
struct Peer {
    name: String,
    address: String,
    seed: u64,
}

/// The sidecar's peers, and the client that asks them.
pub struct Peers {
    peers_path: Option<PathBuf>,
    key_path: Option<PathBuf>,
    me: Option<String>,
    view: ArcSwap<View>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Peers (by address) that failed lately.
    down: Mutex<HashMap<String, Instant>>,
    /// Counts owners lent this sidecar ahead of its calls, by counter and key.
    leases: Mutex<HashMap<(String, String), Lease>>,
    inflight: Arc<Semaphore>,
    nonces: Mutex<Nonces>,
    metrics: SidecarMetrics,
    /// The loaded policy's label, for the fallbacks the placer counts.
    label: ArcSwap<String>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("me", &self.me).finish()
    }
}

impl Peers {
    pub fn new(
        peers_path: Option<PathBuf>,
        key_path: Option<PathBuf>,
        me: Option<String>,
        metrics: SidecarMetrics,
    ) -> Peers {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(ASK_TIMEOUT));
        let mode = match peers_path {
            None => Mode::Alone,
            Some(_) => Mode::Unknown,
        };
        Peers {
            peers_path,
            key_path,
            me,
            view: ArcSwap::from_pointee(View {
                mode,
                peers: Vec::new(),
                // Until the peer set is read, no share is given.
                ways: NonZeroU32::MAX,
                key: None,
                read: String::new(),
            }),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
            down: Mutex::default(),
            leases: Mutex::default(),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
            nonces: Mutex::default(),
            metrics,
            label: ArcSwap::from_pointee(String::new()),
        }
    }

    /// Re-reads the peer file and key; a file that cannot be read or parsed keeps the view's
    /// share but stops asking owners (a peer set that may be stale could double a budget).
    pub fn reload(&self, label: &str) {
        if **self.label.load() != label {
            self.label.store(Arc::new(label.to_owned()));
            let n = self.view.load().peers.len() as i64;
            self.metrics.peers.with_label_values(&[label]).set(n);
        }
        let Some(peers_path) = &self.peers_path else {
            return;
        };
        let file = std::fs::read(peers_path)
            .map_err(|e| format!("cannot read {}: {e}", peers_path.display()))
            .and_then(|b| {
                serde_json::from_slice::<PeerFile>(&b)
                    .map_err(|e| format!("{} is not a peer file: {e}", peers_path.display()))
            });
        let key = match &self.key_path {
            None => Err("no --peer-key".to_owned()),
            Some(p) => std::fs::read(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
                .and_then(|k| match k.len() {
                    32.. => Ok(k),
                    n => Err(format!("{} holds {n} bytes, fewer than 32", p.display())),
                }),
        };
        let read = format!(
            "{:?}/{:?}",
            file.as_ref()
                .map(|f| sha256_hex(&serde_json::to_vec(f).unwrap_or_default())),
            key.as_ref().map(|k| sha256_hex(k))
        );
        let old = self.view.load();
        if old.read == read {
            return;
        }
        let view = match (file, key) {
            (Ok(f), Ok(k)) => {
                tracing::info!(
                    peers = f.peers.len(),
                    replicas = f.replicas,
                    "peer set read"
                );
                View {
                    mode: Mode::Known,
                    ways: ways(&f),
                    peers: f
                        .peers
                        .into_iter()
                        .map(|p| Peer {
                            seed: seed(p.name.as_bytes()),
                            name: p.name,
                            address: p.address,
                        })
                        .collect(),
                    key: Some(hmac::Key::new(hmac::HMAC_SHA256, &k)),
                    read,
                }
            }
            (file, key) => {
                let why = [file.as_ref().err(), key.as_ref().err()]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::warn!(%why, "peers cannot be asked: limits held across pods count on shares");
                View {
                    mode: Mode::Unknown,
                    ways: file.as_ref().map_or(old.ways, ways),
                    peers: Vec::new(),
                    key: None,
                    read,
                }
            }
        };
        let n = view.peers.len() as i64;
        self.view.store(Arc::new(view));
        self.metrics.peers.with_label_values(&[label]).set(n);
    }

    /// The owner of `key` of `counter` among the peers.
    fn owner<'v>(&self, view: &'v View, counter: &str, key: &str) -> Option<(u32, &'v Peer)> {
        let i = owner_index(view.peers.iter().map(|p| p.seed), counter, key)?;
        Some((i as u32, &view.peers[i]))
    }

    /// Whether this sidecar owns `key` of `name` in its current, known peer set (a peer asks
    /// only the owner; anything else answers "not the owner").
    fn owns(&self, name: &str, key: &str) -> bool {
        let view = self.view.load();
        view.mode == Mode::Known
            && self
                .owner(&view, name, key)
                .is_some_and(|(_, p)| Some(&p.name) == self.me.as_ref())
    }

    /// Whether the peer at `address` failed within [`DOWN_FOR`] (by address: a restarted
    /// sidecar comes back at a new one, and is asked at once).
    fn is_down(&self, address: &str) -> bool {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match down.get(address) {
            Some(since) if since.elapsed() < DOWN_FOR => true,
            Some(_) => {
                down.remove(address);
                false
            }
            None => false,
        }
    }

    fn mark_down(&self, address: &str) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by the peer set: entries of peers no longer in it are dropped.
        if down.len() >= 1024 {
            down.retain(|_, since| since.elapsed() < DOWN_FOR);
        }
        down.insert(address.to_owned(), Instant::now());
    }
}

impl Placer for Peers {
    fn place(&self, counter: &Counter, key: &str) -> Place {
        let view = self.view.load();
        match view.mode {
            Mode::Alone => Place::Here,
            Mode::Unknown => self.share(&view, "unknown_peers"),
            Mode::Known => match self.owner(&view, &counter.name, key) {
                None => self.share(&view, "unknown_peers"),
                Some((_, p)) if Some(&p.name) == self.me.as_ref() => Place::Here,
                Some((_, p)) if self.is_down(&p.address) => self.share(&view, "unreachable"),
                Some((i, _)) => Place::Owner(i),
            },
        }
    }
}

impl Peers {
    fn share(&self, view: &View, reason: &str) -> Place {
        self.metrics
            .budget_fallbacks
            .with_label_values(&[&self.label.load(), reason])
            .inc();
        Place::Share(view.ways)
    }
}

/// The owner of `key` of `counter` among peers with these seeds: the highest rendezvous
/// weight (ties, which need equal seeds, go to the larger seed).
fn owner_index(seeds: impl Iterator<Item = u64>, counter: &str, key: &str) -> Option<usize> {
    let h = seed(format!("{counter}\0{key}").as_bytes());
    seeds
        .enumerate()
        .max_by_key(|&(_, s)| (mix(h ^ s), s))
        .map(|(i, _)| i)
}

/// Which of the sidecars named `names` owns `key` of `counter` (every sidecar with this peer
/// set computes the same).
pub fn owner_among<'a>(names: &[&'a str], counter: &str, key: &str) -> Option<&'a str> {
    owner_index(names.iter().map(|n| seed(n.as_bytes())), counter, key).map(|i| names[i])
}

fn ways(f: &PeerFile) -> NonZeroU32 {
    NonZeroU32::new(f.replicas.max(f.peers.len() as u32)).unwrap_or(NonZeroU32::MIN)
}

/// 64 bits of SHA-256: the same on every sidecar, whatever its build.
fn seed(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// A 64-bit finaliser (splitmix64): the rendezvous weight of a key on a peer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn record(st: &State, label: &str, result: &str) {
    st.metrics
        .peer_requests
        .with_label_values(&[label, result])
        .inc();
}
