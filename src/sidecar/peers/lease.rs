//! Leases: counts of a large limit an owner lends a non-owner ahead of its calls.

use super::*;

/// Counts an owner lent this sidecar: spent here, without a hop, until they run out or
/// [`LEASE_FOR`] passes (then the rest goes back).
#[derive(Debug)]
pub(super) struct Lease {
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
    pub(super) fn lease_size(&self, max: u32, peers: usize) -> u32 {
        if max < LEASE_MIN_MAX || self.lock_leases().len() >= MAX_LEASES {
            return 0;
        }
        (max / (20 * peers.max(1) as u32)).clamp(2, LEASE_MOST)
    }

    pub(super) fn lock_leases(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), Lease>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `n` counts the owner at `address` lent for `key` of `counter`.
    pub(super) fn lease(
        &self,
        label: &str,
        counter: &str,
        key: &str,
        address: &str,
        spent: Spent,
        n: u32,
    ) {
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
    pub(super) fn spend_leased(&self, counter: &str, key: &str) -> Option<Lent> {
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
    pub(in crate::sidecar) fn expire_leases(&self) {
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
}
