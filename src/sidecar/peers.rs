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

/// One count asked of an owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TakeOne {
    counter: String,
    key: String,
    /// The counter as the asker's policy has it: an owner whose differs refuses.
    max: u32,
    window_ms: u64,
    scope: Scope,
    /// Counts asked beyond this call's one, as a lease (hot keys of large limits).
    #[serde(default, skip_serializing_if = "is_zero")]
    lease: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TakeRequest {
    takes: Vec<TakeOne>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "camelCase")]
enum TakeAnswer {
    /// Counted, in the order asked, with the counts lent beyond each (a lease).
    Taken {
        spent: Vec<Spent>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        leased: Vec<u32>,
    },
    /// A counter was full.
    #[serde(rename_all = "camelCase")]
    Limited {
        counter: String,
        retry_after_ms: u64,
    },
    /// This sidecar's peer set makes another the owner.
    NotOwner,
    /// Its policy does not hold such a counter across pods.
    Mismatch,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnOne {
    counter: String,
    spent: Spent,
    /// How many counts at `spent` (a lease's unused ones).
    #[serde(default = "one")]
    count: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnRequest {
    returns: Vec<ReturnOne>,
}

/// A use of an approval asked of its owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UseRequest {
    id: String,
    /// What its uses are counted under (the McpApproval's name, or the id).
    key: String,
    /// The pod whose call it is for.
    by: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "camelCase")]
enum UseAnswer {
    /// Counted (spent, until given back).
    Reserved,
    /// Used up, expired, or not (yet) in the owner's approvals.
    Refused,
    NotOwner,
}

/// A use of an approval held for a call: reserved here, or counted by the approval's owner
/// among the policy's sidecars.
pub(super) enum Use {
    Here(Reservation),
    Owner(OwnedUse),
}

/// A use of an approval its owner counted for a call here: given back to it if the call does
/// not run.
#[derive(Debug)]
pub(super) struct OwnedUse {
    address: String,
    key: String,
}

/// Reserves a use of the approval of call `id` for a call here: counted here when this sidecar
/// owns the approval (or has no peers), else by asking its owner. `None`: no use may be had —
/// none left, or (never open) the owner cannot be asked.
pub(super) async fn reserve_use(st: &State, label: &str, id: &str) -> Option<Use> {
    let now = unix_now();
    let here = || st.approvals.reserve(id, now).map(Use::Here);
    let view = st.peers.view.load_full();
    match view.mode {
        Mode::Alone => return here(),
        // Counted here, a use could be counted again on another pod.
        Mode::Unknown => return None,
        Mode::Known => {}
    }
    let key = st.approvals.live_key(id, now)?;
    let (_, owner) = st.peers.owner(&view, APPROVALS, &key)?;
    if Some(&owner.name) == st.peers.me.as_ref() {
        return here();
    }
    let (Some(peer_key), Some(me)) = (view.key.as_ref(), st.peers.me.as_ref()) else {
        return None;
    };
    if st.peers.is_down(&owner.address) {
        return None;
    }
    let body = UseRequest {
        id: id.to_owned(),
        key: key.clone(),
        by: me.clone(),
    };
    let body = serde_json::to_vec(&body).expect("serialises");
    let sent = tokio::time::timeout(
        ASK_TIMEOUT,
        post(&st.peers.client, peer_key, &owner.address, USE_PATH, body),
    )
    .await;
    let answer = match sent {
        Ok(Ok(b)) => serde_json::from_slice::<UseAnswer>(&b).ok(),
        _ => None,
    };
    match answer {
        Some(UseAnswer::Reserved) => {
            record(st, label, "taken");
            Some(Use::Owner(OwnedUse {
                address: owner.address.clone(),
                key,
            }))
        }
        Some(UseAnswer::Refused) => {
            record(st, label, "limited");
            None
        }
        Some(UseAnswer::NotOwner) => {
            record(st, label, "not_owner");
            None
        }
        None => {
            record(st, label, "error");
            st.peers.mark_down(&owner.address);
            None
        }
    }
}

/// A count an owner took for this sidecar: given back to it if the call does not run.
#[derive(Debug)]
pub(super) struct Lent {
    address: String,
    counter: String,
    spent: Spent,
}

/// Why an owner's answer could not be used (a fallback's `reason` label).
#[derive(Debug, Clone, Copy)]
enum Unasked {
    Unreachable,
    NotOwner,
    Mismatch,
    Busy,
}

impl Unasked {
    fn as_str(self) -> &'static str {
        match self {
            Unasked::Unreachable => "unreachable",
            Unasked::NotOwner => "not_owner",
            Unasked::Mismatch => "mismatch",
            Unasked::Busy => "busy",
        }
    }
}

/// Puts an allowed call's remote asks to their owners. Each owner counts its asks all or none;
/// an owner that cannot be asked is replaced by the fallback share here. If any is full, every
/// count the call took (here and at owners) is given back and the call is refused.
pub(super) async fn ask_owners<'p>(
    st: &State,
    label: &str,
    engine: &'p Engine,
    mut d: Decision<'p>,
    now: u64,
    lent: &mut Vec<Lent>,
) -> Decision<'p> {
    let mut asks = std::mem::take(&mut d.remote);
    let view = st.peers.view.load_full();
    let mut mine = Vec::new();
    // Counts a lease holds are spent here, without a hop.
    asks.retain(|a| {
        let counter = &engine.policy().counters[a.counter].name;
        match st.peers.spend_leased(counter, &a.key) {
            Some(l) => {
                mine.push(l);
                false
            }
            None => true,
        }
    });
    let mut owners: Vec<u32> = asks.iter().map(|a| a.owner).collect();
    owners.sort_unstable();
    owners.dedup();
    let answers = futures_util::future::join_all(owners.iter().map(|&o| {
        let mine: Vec<&Ask> = asks.iter().filter(|a| a.owner == o).collect();
        ask_one(st, engine, &view, o, mine)
    }))
    .await;
    let mut hit: Option<(usize, &'p str, Duration)> = None;
    // The peer set changed since the call was placed: those count on shares.
    let lost: Vec<&Ask<'p>> = asks
        .iter()
        .filter(|a| a.owner as usize >= view.peers.len())
        .collect();
    if !lost.is_empty() {
        match fallback(st, label, engine, &view, &lost, now, Unasked::NotOwner) {
            Ok(taken) => d.taken.extend(taken),
            Err(h) => hit = Some(h),
        }
    }
    for (&o, answer) in owners.iter().zip(answers) {
        let group: Vec<&Ask<'p>> = asks.iter().filter(|a| a.owner == o).collect();
        let Some(peer) = view.peers.get(o as usize) else {
            continue;
        };
        let result = match answer {
            Ok(TakeAnswer::Taken { spent, leased }) if spent.len() == group.len() => {
                record(st, label, "taken");
                for (i, (a, s)) in group.iter().zip(spent).enumerate() {
                    let counter = &engine.policy().counters[a.counter].name;
                    if let Some(&n) = leased.get(i).filter(|&&n| n > 0) {
                        st.peers.lease(label, counter, &a.key, &peer.address, s, n);
                    }
                    mine.push(Lent {
                        address: peer.address.clone(),
                        counter: counter.clone(),
                        spent: s,
                    });
                }
                continue;
            }
            Ok(TakeAnswer::Limited {
                counter,
                retry_after_ms,
            }) => {
                record(st, label, "limited");
                let a = group
                    .iter()
                    .find(|a| engine.policy().counters[a.counter].name == counter)
                    .unwrap_or(&group[0]);
                Err((a.counter, a.declared, Duration::from_millis(retry_after_ms)))
            }
            Ok(TakeAnswer::NotOwner) => {
                fallback(st, label, engine, &view, &group, now, Unasked::NotOwner)
            }
            Ok(TakeAnswer::Mismatch) => {
                fallback(st, label, engine, &view, &group, now, Unasked::Mismatch)
            }
            Ok(TakeAnswer::Taken { .. }) | Err(Unasked::Unreachable) => {
                st.peers.mark_down(&peer.address);
                fallback(st, label, engine, &view, &group, now, Unasked::Unreachable)
            }
            Err(why) => fallback(st, label, engine, &view, &group, now, why),
        };
        match result {
            Ok(taken) => d.taken.extend(taken),
            Err((ci, declared, wait)) => {
                if hit.is_none_or(|(_, _, w)| wait > w) {
                    hit = Some((ci, declared, wait));
                }
            }
        }
    }
    let Some((ci, declared, wait)) = hit else {
        lent.extend(mine);
        return d;
    };
    std::mem::take(&mut d.taken).give_back();
    st.peers.give_back(mine);
    engine.limited(d, ci, declared, wait)
}

fn record(st: &State, label: &str, result: &str) {
    st.metrics
        .peer_requests
        .with_label_values(&[label, result])
        .inc();
}

/// Counts `group` on this sidecar's fallback shares, because its owner could not be asked.
fn fallback<'p>(
    st: &State,
    label: &str,
    engine: &'p Engine,
    view: &View,
    group: &[&Ask<'p>],
    now: u64,
    why: Unasked,
) -> Result<Taken, (usize, &'p str, Duration)> {
    if matches!(why, Unasked::Unreachable | Unasked::Busy) {
        record(st, label, "error");
    } else {
        record(st, label, why.as_str());
    }
    st.metrics
        .budget_fallbacks
        .with_label_values(&[label, why.as_str()])
        .inc();
    engine
        .take_shares(group, view.ways, now)
        .map_err(|(ci, wait)| {
            let declared = group
                .iter()
                .find(|a| a.counter == ci)
                .map_or("", |a| a.declared);
            (ci, declared, wait)
        })
}

/// Asks owner `o` for `asks`.
async fn ask_one(
    st: &State,
    engine: &Engine,
    view: &View,
    o: u32,
    asks: Vec<&Ask<'_>>,
) -> Result<TakeAnswer, Unasked> {
    let (Some(peer), Some(key)) = (view.peers.get(o as usize), view.key.as_ref()) else {
        return Err(Unasked::Unreachable);
    };
    let Ok(_permit) = st.peers.inflight.clone().try_acquire_owned() else {
        return Err(Unasked::Busy);
    };
    let body = TakeRequest {
        takes: asks
            .iter()
            .map(|a| {
                let c = &engine.policy().counters[a.counter];
                TakeOne {
                    counter: c.name.clone(),
                    key: a.key.clone(),
                    max: c.max.get(),
                    window_ms: c.window.length.as_millis() as u64,
                    scope: c.scope,
                    lease: st.peers.lease_size(c.max.get(), view.peers.len()),
                }
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&body).expect("a request serialises");
    let answer = tokio::time::timeout(
        ASK_TIMEOUT,
        post(&st.peers.client, key, &peer.address, TAKE_PATH, bytes),
    )
    .await;
    match answer {
        Ok(Ok(b)) => serde_json::from_slice(&b).map_err(|_| Unasked::Unreachable),
        _ => Err(Unasked::Unreachable),
    }
}

/// A signed POST to a peer; its answer's body (2xx only).
async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    key: &hmac::Key,
    address: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Bytes, String> {
    let time = unix_now().to_string();
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
    let nonce = hex(&nonce);
    let mac = hex(hmac::sign(key, &signed(path, &time, &nonce, &body)).as_ref());
    let req = Request::post(format!("http://{address}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(TIME_HEADER, time)
        .header(NONCE_HEADER, nonce)
        .header(MAC_HEADER, mac)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{}", resp.status()));
    }
    Limited::new(resp.into_body(), MAX_PEER_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

/// What the MAC covers: path, time, nonce and body, so none can be moved to another request.
fn signed(path: &str, time: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(path.len() + time.len() + nonce.len() + body.len() + 3);
    for part in [path.as_bytes(), time.as_bytes(), nonce.as_bytes()] {
        m.extend_from_slice(part);
        m.push(b'\n');
    }
    m.extend_from_slice(body);
    m
}

/// Seconds since the epoch (a peer request's time).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts an owner lent this sidecar: spent here, without a hop, until they run out or
/// [`LEASE_FOR`] passes (then the rest goes back).
#[derive(Debug)]
struct Lease {
    left: u32,
    address: String,
    /// Where the owner counted them.
    spent: Spent,
    until: Instant,
}

impl Peers {
    /// How many counts beyond a call's own to ask of the owner of a key of a limit of `max`:
    /// none below [`LEASE_MIN_MAX`]; else a twentieth of a peer's fair share, 2 to
    /// [`LEASE_MOST`].
    fn lease_size(&self, max: u32, peers: usize) -> u32 {
        if max < LEASE_MIN_MAX || self.lock_leases().len() >= MAX_LEASES {
            return 0;
        }
        (max / (20 * peers.max(1) as u32)).clamp(2, LEASE_MOST)
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Lease>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `n` counts the owner at `address` lent for `key` of `counter`.
    fn lease(&self, label: &str, counter: &str, key: &str, address: &str, spent: Spent, n: u32) {
        let old = self.lock_leases().insert(
            (counter.to_owned(), key.to_owned()),
            Lease {
                left: n,
                address: address.to_owned(),
                spent,
                until: Instant::now() + LEASE_FOR,
            },
        );
        if let Some(old) = old {
            self.return_lease(counter, old);
        }
        self.metrics.lease_refills.with_label_values(&[label]).inc();
    }

    /// One count of a live lease for `key` of `counter`, if there is one.
    fn spend_leased(&self, counter: &str, key: &str) -> Option<Lent> {
        let mut leases = self.lock_leases();
        let l = leases.get_mut(&(counter.to_owned(), key.to_owned()))?;
        if l.left == 0 || l.until <= Instant::now() {
            return None;
        }
        l.left -= 1;
        Some(Lent {
            address: l.address.clone(),
            counter: counter.to_owned(),
            spent: l.spent,
        })
    }

    /// Gives the unused counts of leases that ran out of time back to their owners.
    pub(super) fn expire_leases(&self) {
        let now = Instant::now();
        let expired: Vec<((String, String), Lease)> = {
            let mut leases = self.lock_leases();
            let keys: Vec<(String, String)> = leases
                .iter()
                .filter(|(_, l)| l.until <= now || l.left == 0)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| leases.remove(&k).map(|l| (k, l)))
                .collect()
        };
        for ((counter, _), l) in expired {
            self.return_lease(&counter, l);
        }
    }

    fn return_lease(&self, counter: &str, l: Lease) {
        if l.left == 0 {
            return;
        }
        let Some(key) = self.view.load().key.clone() else {
            return;
        };
        let body = serde_json::to_vec(&ReturnRequest {
            returns: vec![ReturnOne {
                counter: counter.to_owned(),
                spent: l.spent,
                count: l.left,
            }],
        })
        .expect("serialises");
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                ASK_TIMEOUT,
                post(&client, &key, &l.address, RETURN_PATH, body),
            )
            .await;
        });
    }

    /// Gives an approval use back to its owner (the call did not run); best effort: a use that
    /// cannot be given back stays spent.
    pub(super) fn give_back_use(&self, u: OwnedUse) {
        let view = self.view.load();
        let (Some(key), Some(me)) = (view.key.clone(), self.me.clone()) else {
            return;
        };
        let client = self.client.clone();
        let body = serde_json::to_vec(&UseRequest {
            id: String::new(),
            key: u.key,
            by: me,
        })
        .expect("serialises");
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                ASK_TIMEOUT,
                post(&client, &key, &u.address, UNUSE_PATH, body),
            )
            .await;
        });
    }

    /// Gives counts back to their owners (the call did not run); best effort: a count that
    /// cannot be given back stays spent (a limit may refuse early, never allow more).
    pub(super) fn give_back(&self, lent: Vec<Lent>) {
        if lent.is_empty() {
            return;
        }
        let Some(key) = self.view.load().key.clone() else {
            return;
        };
        let mut by_owner: HashMap<String, Vec<ReturnOne>> = HashMap::new();
        for l in lent {
            by_owner.entry(l.address).or_default().push(ReturnOne {
                counter: l.counter,
                spent: l.spent,
                count: 1,
            });
        }
        for (address, returns) in by_owner {
            let client = self.client.clone();
            let key = key.clone();
            let body = serde_json::to_vec(&ReturnRequest { returns }).expect("serialises");
            tokio::spawn(async move {
                let sent = tokio::time::timeout(
                    ASK_TIMEOUT,
                    post(&client, &key, &address, RETURN_PATH, body),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    tracing::debug!(%address, "a count could not be given back to its owner");
                }
            });
        }
    }
}

/// Nonces seen, with the time each was sent.
#[derive(Default)]
struct Nonces {
    seen: HashMap<String, u64>,
}

impl Nonces {
    /// Records `nonce`: false if it was seen (a replay) or there is no room.
    fn fresh(&mut self, nonce: &str, time: u64, now: u64) -> bool {
        if self.seen.len() >= MAX_NONCES {
            self.seen
                .retain(|_, t| t.saturating_add(2 * CLOCK_SKEW_SECS) >= now);
        }
        if self.seen.len() >= MAX_NONCES || self.seen.contains_key(nonce) {
            return false;
        }
        self.seen.insert(nonce.to_owned(), time);
        true
    }
}

/// Whether `path` is the peer API's.
pub fn handles(path: &str) -> bool {
    [TAKE_PATH, RETURN_PATH, USE_PATH, UNUSE_PATH].contains(&path)
}

/// Answers a peer's request (on the admin port).
pub async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != http::Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let path = req.uri().path().to_owned();
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_PEER_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the peer request is too large",
            )
        }
    };
    if let Err(why) = st.peers.verify(&parts.headers, &path, &bytes) {
        tracing::warn!(%why, "peer request refused");
        return refuse(StatusCode::UNAUTHORIZED, &why);
    }
    let Some(policy) = st.policy.load_full() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "no policy loaded");
    };
    if path == USE_PATH || path == UNUSE_PATH {
        return approval_use(&st, &path, &bytes);
    }
    let engine = &policy.engine;
    if path == RETURN_PATH {
        let Ok(r) = serde_json::from_slice::<ReturnRequest>(&bytes) else {
            return refuse(StatusCode::BAD_REQUEST, "not a return request");
        };
        for one in r.returns {
            engine.give_back_owned(&one.counter, one.spent, one.count.min(LEASE_MOST));
        }
        return json(StatusCode::OK, b"{}".to_vec());
    }
    let Ok(r) = serde_json::from_slice::<TakeRequest>(&bytes) else {
        return refuse(StatusCode::BAD_REQUEST, "not a take request");
    };
    let answer = take_owned(&st, engine, &r);
    json(
        StatusCode::OK,
        serde_json::to_vec(&answer).expect("serialises"),
    )
}

/// A use of an approval another sidecar asks of this one, its owner (or gives back).
fn approval_use(st: &State, path: &str, bytes: &[u8]) -> Response<Body> {
    let Ok(r) = serde_json::from_slice::<UseRequest>(bytes) else {
        return refuse(StatusCode::BAD_REQUEST, "not an approval use request");
    };
    if path == UNUSE_PATH {
        st.approvals.give_back_use(&r.key, &r.by);
        return json(StatusCode::OK, b"{}".to_vec());
    }
    let view = st.peers.view.load();
    let mine = view.mode == Mode::Known
        && st
            .peers
            .owner(&view, APPROVALS, &r.key)
            .is_some_and(|(_, p)| Some(&p.name) == st.peers.me.as_ref());
    let answer = match mine {
        false => UseAnswer::NotOwner,
        true => match st.approvals.reserve_key(&r.id, &r.key, unix_now()) {
            Some(reservation) => {
                reservation.commit(Some(&r.by));
                UseAnswer::Reserved
            }
            None => UseAnswer::Refused,
        },
    };
    json(
        StatusCode::OK,
        serde_json::to_vec(&answer).expect("serialises"),
    )
}

/// Takes a peer's asks as their owner.
fn take_owned(st: &State, engine: &Engine, r: &TakeRequest) -> TakeAnswer {
    let pol = engine.policy();
    let same = |t: &TakeOne| {
        pol.counters.iter().any(|c| {
            c.name == t.counter
                && c.max.get() == t.max
                && c.window.length.as_millis() as u64 == t.window_ms
                && c.scope == t.scope
        })
    };
    if r.takes.iter().any(|t| !same(t)) {
        return TakeAnswer::Mismatch;
    }
    let view = st.peers.view.load();
    let mine = |t: &TakeOne| {
        view.mode == Mode::Known
            && st
                .peers
                .owner(&view, &t.counter, &t.key)
                .is_some_and(|(_, p)| Some(&p.name) == st.peers.me.as_ref())
    };
    if !r.takes.iter().all(mine) {
        return TakeAnswer::NotOwner;
    }
    let asks: Vec<(&str, &str)> = r
        .takes
        .iter()
        .map(|t| (t.counter.as_str(), t.key.as_str()))
        .collect();
    let now = crate::engine::monotonic_now();
    match engine.take_owned(&asks, now) {
        Ok(spent) => {
            // Leases: as many more counts as fit, at most what was asked.
            let leased: Vec<u32> = r
                .takes
                .iter()
                .map(|t| match t.lease.min(LEASE_MOST) {
                    0 => 0,
                    n => engine
                        .take_extra(&t.counter, &t.key, n, now)
                        .map_or(0, |(got, _)| got),
                })
                .collect();
            let leased = match leased.iter().any(|&n| n > 0) {
                true => leased,
                false => Vec::new(),
            };
            TakeAnswer::Taken { spent, leased }
        }
        Err(None) => TakeAnswer::Mismatch,
        Err(Some((c, wait))) => TakeAnswer::Limited {
            counter: c.name.clone(),
            retry_after_ms: wait.as_millis() as u64,
        },
    }
}

impl Peers {
    /// Checks a peer request's time, nonce and MAC.
    fn verify(&self, h: &http::HeaderMap, path: &str, body: &[u8]) -> Result<(), String> {
        let view = self.view.load();
        let key = view.key.as_ref().ok_or("this sidecar has no peer key")?;
        let get = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("no {name} header"))
        };
        let (time, nonce, mac) = (get(TIME_HEADER)?, get(NONCE_HEADER)?, get(MAC_HEADER)?);
        let mac = unhex(mac).ok_or("the MAC is not hex")?;
        hmac::verify(key, &signed(path, time, nonce, body), &mac)
            .map_err(|_| "the MAC does not verify".to_owned())?;
        let sent: u64 = time.parse().map_err(|_| "the time is not a number")?;
        let now = unix_now();
        if sent.abs_diff(now) > CLOCK_SKEW_SECS {
            return Err(format!(
                "the request's time is {} s off",
                sent.abs_diff(now)
            ));
        }
        if nonce.len() != 32 || unhex(nonce).is_none() {
            return Err("the nonce is not 16 hex bytes".into());
        }
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if !nonces.fresh(nonce, sent, now) {
            return Err("the nonce was seen before (a replay)".into());
        }
        Ok(())
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn refuse(status: StatusCode, why: &str) -> Response<Body> {
    json(
        status,
        serde_json::to_vec(&serde_json::json!({ "error": why })).expect("serialises"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peering::PeerEntry;

    fn view(names: &[&str]) -> View {
        View {
            mode: Mode::Known,
            peers: names
                .iter()
                .map(|n| Peer {
                    name: n.to_string(),
                    address: String::new(),
                    seed: seed(n.as_bytes()),
                })
                .collect(),
            ways: NonZeroU32::new(names.len() as u32).unwrap(),
            key: None,
            read: String::new(),
        }
    }

    #[test]
    fn owners_spread_and_only_the_removed_peers_keys_move() {
        let peers = Peers::new(None, None, None, SidecarMetrics::new());
        let three = view(&["web-0", "web-1", "web-2"]);
        let two = view(&["web-0", "web-2"]);
        let mut per = [0usize; 3];
        for i in 0..3000 {
            let key = format!("caller-{i}");
            let (o, p) = peers.owner(&three, "run_cell", &key).unwrap();
            per[o as usize] += 1;
            let (_, q) = peers.owner(&two, "run_cell", &key).unwrap();
            if p.name != "web-1" {
                assert_eq!(p.name, q.name, "a key of a peer that stayed kept its owner");
            }
        }
        for n in per {
            assert!((800..1200).contains(&n), "owners are spread: {per:?}");
        }
    }

    #[test]
    fn a_nonce_is_taken_once() {
        let mut n = Nonces::default();
        assert!(n.fresh("a", 100, 100));
        assert!(!n.fresh("a", 100, 101));
        assert!(n.fresh("b", 100, 101));
    }

    #[test]
    fn the_share_divides_by_the_replicas_or_the_ready_peers() {
        let e = |name: &str| PeerEntry {
            name: name.into(),
            address: "10.0.0.1:9481".into(),
        };
        let f = PeerFile {
            replicas: 3,
            peers: vec![e("a"), e("b")],
        };
        assert_eq!(ways(&f).get(), 3);
        let f = PeerFile {
            replicas: 1,
            peers: vec![e("a"), e("b")],
        };
        assert_eq!(ways(&f).get(), 2);
        let f = PeerFile {
            replicas: 0,
            peers: vec![],
        };
        assert_eq!(ways(&f).get(), 1);
    }

    #[test]
    fn unhex_reads_what_hex_writes() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
