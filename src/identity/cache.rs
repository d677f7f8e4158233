//! Verified tokens remembered until they expire, so a caller's token costs one signature check,
//! not one per request. Bounded: when full, expired entries are dropped, and if it is still full
//! the new token is verified but not remembered. Failures are never remembered.

use super::{TokenError, Verified, Verifier, LEEWAY_SECS};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// The cache of one [`Verifier`] (a new key set starts a new cache).
pub struct VerifiedCache {
    max: usize,
    entries: Mutex<HashMap<[u8; 32], Verified>>,
}

impl VerifiedCache {
    pub fn new(max: usize) -> VerifiedCache {
        VerifiedCache {
            max,
            entries: Mutex::default(),
        }
    }

    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Verified>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `verifier.verify(token)`, answered from the cache while the token is unexpired at `now`
    /// (seconds since the epoch).
    pub fn verify(
        &self,
        verifier: &Verifier,
        token: &str,
        now: u64,
    ) -> Result<Verified, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let live = |v: &Verified| v.expires.saturating_add(LEEWAY_SECS) >= now;
        {
            let mut entries = self.lock();
            match entries.get(&key) {
                Some(v) if live(v) => return Ok(v.clone()),
                Some(_) => {
                    entries.remove(&key);
                    return Err(TokenError::Expired);
                }
                None => {}
            }
        }
        let verified = verifier.verify(token)?;
        let mut entries = self.lock();
        if entries.len() >= self.max {
            entries.retain(|_, v| live(v));
        }
        if entries.len() < self.max {
            entries.insert(key, verified.clone());
        }
        Ok(verified)
    }
}
