//! Session ids the server issued. `scope: session` counts per session only for ids the server
//! handed out through this sidecar; any other id (a client inventing a fresh one per call to get a
//! fresh counter) counts under the caller's grant key instead.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Mutex;

/// Ids remembered per generation; two generations are kept, so the oldest ids are forgotten in
/// bulk once 2 × this many newer ones were issued.
const GENERATION: usize = 50_000;

/// Hashes of issued session ids, in two generations (fixed memory per id).
pub struct Issued {
    hasher: RandomState,
    gens: Mutex<[HashSet<u64>; 2]>,
}

impl Default for Issued {
    fn default() -> Self {
        Issued {
            hasher: RandomState::new(),
            gens: Mutex::new([HashSet::new(), HashSet::new()]),
        }
    }
}

impl Issued {
    pub fn record(&self, id: &[u8]) {
        let h = self.hasher.hash_one(id);
        let mut g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
        if g[0].len() >= GENERATION {
            g.swap(0, 1);
            g[0].clear();
        }
        g[0].insert(h);
    }

    pub fn contains(&self, id: &[u8]) -> bool {
        let h = self.hasher.hash_one(id);
        let g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
        g[0].contains(&h) || g[1].contains(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_ids_are_remembered_for_at_least_one_generation() {
        let s = Issued::default();
        s.record(b"first");
        assert!(s.contains(b"first"));
        assert!(!s.contains(b"invented"));
        for i in 0..GENERATION {
            s.record(format!("id{i}").as_bytes());
        }
        assert!(s.contains(b"first"), "still in the previous generation");
        for i in 0..GENERATION {
            s.record(format!("next{i}").as_bytes());
        }
        assert!(!s.contains(b"first"), "forgotten after two generations");
    }
}
