//! The peer wire the controller and the sidecars share (DESIGN §15): the peer file the controller
//! renders for the sidecars of one policy, so they hold one budget across replicas.

use serde::{Deserialize, Serialize};

/// The peer file (`peers.json` in the policy's ConfigMap).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    /// The policy's pods that carry its sidecar, ready or not: a sidecar that cannot ask a
    /// key's owner allows `max / replicas` on its own.
    pub replicas: u32,
    /// The ready sidecars, by pod name: they own the keys. Sorted by name.
    pub peers: Vec<PeerEntry>,
}

/// One ready sidecar.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The pod's name (what the sidecar's `POD_NAME` says).
    pub name: String,
    /// Its admin port, `ip:port` (`[ip]:port` for IPv6).
    pub address: String,
}

impl PeerFile {
    /// The file's text (stable: peers sorted, so a ConfigMap changes only when they do).
    pub fn to_json(&self) -> String {
        let mut sorted = self.clone();
        sorted.peers.sort();
        serde_json::to_string(&sorted).expect("a peer file serialises")
    }
}
