//! Rolling-window counters with fixed memory per key.
//!
//! A window of length W is cut into N sub-buckets of width w = W/N. A call at time t falls in
//! bucket b = ⌊t/w⌋ and is allowed only if the calls in buckets b−N ..= b (N+1 buckets) number
//! fewer than `max`. Those buckets cover every instant of (t−W, t], so no rolling window of
//! length W ever holds more than `max` allowed calls; the price is that a call may be refused up
//! to w early, because bucket b−N also holds calls a little older than W. Memory per key is
//! N+1 integers whatever `max` is.
//!
//! Keys per counter are capped. Only a key whose window is empty is evicted (evicting a live key
//! would reset its limit); when the cap is full of live keys, new keys share one overflow counter.
//! A key that later gets its own slot starts from the overflow's counts, so a caller that was
//! counted in the overflow never gets a fresh allowance by leaving it.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Sub-buckets per window: a call may be refused at most W/20 (5% of the window) early.
pub const SUB_BUCKETS: u64 = 20;
const SLOTS: usize = SUB_BUCKETS as usize + 1;

/// One key's counts: N+1 buckets in a ring, the newest at `head`.
#[derive(Debug, Clone)]
pub struct Rolling {
    head: u64,
    sum: u32,
    counts: [u32; SLOTS],
}

impl Rolling {
    fn new(bucket: u64) -> Rolling {
        Rolling {
            head: bucket,
            sum: 0,
            counts: [0; SLOTS],
        }
    }

    /// Moves the window to `bucket`, dropping buckets that left it. A bucket older than `head`
    /// (a caller that read the clock before another) counts in `head`: later, never earlier.
    fn advance(&mut self, bucket: u64) {
        if bucket <= self.head {
            return;
        }
        let gap = bucket - self.head;
        if gap >= SLOTS as u64 {
            self.counts = [0; SLOTS];
            self.sum = 0;
        } else {
            for k in 1..=gap {
                let idx = ((self.head + k) % SLOTS as u64) as usize;
                self.sum -= self.counts[idx];
                self.counts[idx] = 0;
            }
        }
        self.head = bucket;
    }

    fn add(&mut self) {
        self.counts[(self.head % SLOTS as u64) as usize] += 1;
        self.sum += 1;
    }

    fn remove(&mut self) {
        self.remove_at(self.head);
    }

    /// Takes back one call counted in `bucket`, unless that bucket has left the window (then the
    /// call no longer counts anyway).
    fn remove_at(&mut self, bucket: u64) {
        if bucket > self.head || self.head - bucket >= SLOTS as u64 {
            return;
        }
        let idx = (bucket % SLOTS as u64) as usize;
        if self.counts[idx] > 0 {
            self.counts[idx] -= 1;
            self.sum -= 1;
        }
    }

    /// Calls counted now (after `advance`).
    pub fn count(&self) -> u32 {
        self.sum
    }

    /// How long until a call would be counted below `max` again: when enough of the oldest
    /// buckets have left the window. Bucket k stops counting when the clock reaches bucket k+N+1.
    fn retry_after(&self, max: u32, width: u64, now: u64) -> Duration {
        let mut remaining = self.sum;
        let first = self.head.saturating_sub(SUB_BUCKETS);
        for k in first..=self.head {
            remaining -= self.counts[(k % SLOTS as u64) as usize];
            if remaining < max {
                let leaves_at = (k + SLOTS as u64).saturating_mul(width);
                return Duration::from_nanos(leaves_at.saturating_sub(now).max(1));
            }
        }
        Duration::from_nanos(width * SLOTS as u64)
    }
}

/// Counts of one named counter: one [`Rolling`] per key, plus the shared overflow.
#[derive(Debug)]
pub struct Family {
    /// Identity that decides whether a reloaded policy keeps these counts.
    pub name: String,
    pub window: Duration,
    pub scope: crate::policy::Scope,
    /// Sub-bucket width in nanoseconds.
    width: u64,
    max_keys: usize,
    /// Keys are stored as 64-bit hashes under a per-counter random key: memory per key is fixed
    /// however long the caller's session id or identity is, and no caller can aim a collision.
    hasher: RandomState,
    state: Mutex<FamilyState>,
}

#[derive(Debug)]
pub struct FamilyState {
    keys: HashMap<u64, Rolling>,
    overflow: Rolling,
    last_sweep: Option<u64>,
}

/// Where a call's count lives.
pub struct Slot<'a> {
    pub rolling: &'a mut Rolling,
    pub overflow: bool,
    key: u64,
}

/// Where one counted call was counted: enough to give it back ([`Family::give_back`]). An owner
/// sidecar hands it to the peer it counted for, which sends it back to give the count back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spent {
    key: u64,
    overflow: bool,
    bucket: u64,
}

impl Family {
    pub fn new(
        name: &str,
        window: Duration,
        scope: crate::policy::Scope,
        max_keys: usize,
    ) -> Family {
        let width = (window.as_nanos() / u128::from(SUB_BUCKETS)).max(1) as u64;
        Family {
            name: name.to_owned(),
            window,
            scope,
            width,
            max_keys: max_keys.max(1),
            hasher: RandomState::new(),
            state: Mutex::new(FamilyState {
                keys: HashMap::new(),
                overflow: Rolling::new(0),
                last_sweep: None,
            }),
        }
    }

    pub fn bucket(&self, now: u64) -> u64 {
        now / self.width
    }

    pub fn width(&self) -> u64 {
        self.width
    }

    pub fn lock(&self) -> MutexGuard<'_, FamilyState> {
        // A panic while holding the lock cannot leave counts half-written in a way that lets
        // calls through (at worst one call is over-counted), so a poisoned lock is still used.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live keys (plus the overflow when it is in use).
    pub fn key_count(&self) -> usize {
        self.lock().keys.len()
    }

    /// The slot for `key` at `bucket`, advanced to it.
    pub fn slot<'s>(&self, st: &'s mut FamilyState, key: &str, bucket: u64) -> Slot<'s> {
        st.overflow.advance(bucket);
        let key = self.hasher.hash_one(key);
        if !st.keys.contains_key(&key) {
            if st.keys.len() >= self.max_keys && st.last_sweep != Some(bucket) {
                st.last_sweep = Some(bucket);
                st.keys.retain(|_, r| {
                    r.advance(bucket);
                    r.count() > 0
                });
            }
            if st.keys.len() >= self.max_keys {
                return Slot {
                    rolling: &mut st.overflow,
                    overflow: true,
                    key,
                };
            }
            let mut fresh = st.overflow.clone();
            fresh.advance(bucket);
            st.keys.insert(key, fresh);
        }
        let rolling = st.keys.get_mut(&key).expect("inserted above");
        rolling.advance(bucket);
        Slot {
            rolling,
            overflow: false,
            key,
        }
    }

    /// Gives back a call counted at `spent` (it provably did not run).
    pub fn give_back(&self, spent: Spent) {
        let mut st = self.lock();
        let st = &mut *st;
        let rolling = match spent.overflow {
            true => &mut st.overflow,
            false => match st.keys.get_mut(&spent.key) {
                Some(r) => r,
                // Swept: it counted nothing any more.
                None => return,
            },
        };
        rolling.remove_at(spent.bucket);
    }
}

impl Slot<'_> {
    pub fn full(&self, max: u32) -> bool {
        self.rolling.count() >= max
    }
    /// Counts one call; returns where, to give it back.
    pub fn add(&mut self) -> Spent {
        self.rolling.add();
        Spent {
            key: self.key,
            overflow: self.overflow,
            bucket: self.rolling.head,
        }
    }
    pub fn remove(&mut self) {
        self.rolling.remove();
    }
    pub fn retry_after(&self, max: u32, width: u64, now: u64) -> Duration {
        self.rolling.retry_after(max, width, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_drops_old_buckets() {
        let mut r = Rolling::new(0);
        r.add();
        r.advance(5);
        r.add();
        r.add();
        assert_eq!(r.count(), 3);
        r.advance(SUB_BUCKETS); // bucket 0 is still inside b-N ..= b
        assert_eq!(r.count(), 3);
        r.advance(SUB_BUCKETS + 1);
        assert_eq!(r.count(), 2);
        r.advance(SUB_BUCKETS + 6);
        assert_eq!(r.count(), 0);
        r.add();
        r.advance(1000);
        assert_eq!(r.count(), 0);
    }

    #[test]
    fn a_stale_clock_counts_in_the_newest_bucket() {
        let mut r = Rolling::new(10);
        r.advance(3);
        r.add();
        r.advance(10 + SUB_BUCKETS);
        assert_eq!(
            r.count(),
            1,
            "counted at bucket 10, so still inside the window"
        );
    }
}
