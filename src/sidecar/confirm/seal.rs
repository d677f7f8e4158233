//! The sidecar's `requestState`: what a question to the user is about, sealed (AES-256-GCM) so
//! a client can carry it but neither read nor change it. The key is derived from the policy's
//! peer key (the same on every replica, rendered by the controller) or, without one, made at
//! start (then only this process opens what it sealed).

use crate::policy::sha256_hex;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Mutex;

/// How the sidecar's states begin; a server's own `requestState` is anything else.
pub const PREFIX: &str = "mcp-warden.1.";
/// Bound to the key's purpose: a state is never a peer request, and the reverse.
const AAD: &[u8] = b"mcp-warden user confirmation v1";
/// Longest state accepted (a sealed question is a few hundred bytes).
const MAX_STATE: usize = 4096;

/// What a question put to the user binds: who asked, which call, under which policy, until when.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The caller's identity as audit lines show it.
    pub caller: String,
    pub tool: String,
    /// SHA-256 (hex) of the canonical arguments.
    pub args: String,
    /// SHA-256 (hex) of the policy file.
    pub policy: String,
    /// Unix seconds after which the answer is not taken.
    pub exp: u64,
    /// Random; an answer is taken once.
    pub nonce: String,
}

/// Why a state is not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsealed {
    /// Not one the sidecar sealed with a key it holds, or changed since.
    Forged,
}

/// The sealing keys: the policy's (from the peer key file) and this process's own.
pub struct Sealer {
    key_path: Option<PathBuf>,
    /// The policy's key and the hash of the file it came from.
    policy: Mutex<Option<(String, std::sync::Arc<LessSafeKey>)>>,
    own: LessSafeKey,
    rng: SystemRandom,
}

fn derive(secret: &[u8]) -> LessSafeKey {
    let k = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), AAD);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k.as_ref()).expect("32 bytes"))
}

impl Sealer {
    pub fn new(key_path: Option<PathBuf>) -> Sealer {
        let rng = SystemRandom::new();
        let mut own = [0u8; 32];
        rng.fill(&mut own)
            .expect("the system's random source works");
        Sealer {
            key_path,
            policy: Mutex::new(None),
            own: derive(&own),
            rng,
        }
    }

    /// Re-reads the policy's key; one that cannot be read keeps the last (a state sealed
    /// before a rotation stays readable until the new key is in).
    pub fn reload(&self) {
        let Some(p) = &self.key_path else { return };
        let Ok(k) = std::fs::read(p) else { return };
        if k.len() < 32 {
            return;
        }
        let hash = sha256_hex(&k);
        let mut cur = self.policy.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|(h, _)| *h == hash) {
            return;
        }
        *cur = Some((hash, std::sync::Arc::new(derive(&k))));
    }

    fn policy_key(&self) -> Option<std::sync::Arc<LessSafeKey>> {
        let cur = self.policy.lock().unwrap_or_else(|e| e.into_inner());
        cur.as_ref().map(|(_, k)| k.clone())
    }

    /// A fresh random nonce for a question (hex, 128 bits).
    pub fn nonce(&self) -> String {
        let mut n = [0u8; 16];
        self.rng
            .fill(&mut n)
            .expect("the system's random source works");
        n.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The `requestState` carrying `q`.
    pub fn seal(&self, q: &Question) -> String {
        let key = self.policy_key();
        let key = key.as_deref().unwrap_or(&self.own);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut data = serde_json::to_vec(q).expect("serialises");
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut data,
        )
        .expect("sealing a small buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// The question a state carries, if the sidecar sealed it (with the policy's key or its own).
    pub fn open(&self, state: &str) -> Result<Question, Unsealed> {
        let body = state.strip_prefix(PREFIX).ok_or(Unsealed::Forged)?;
        if body.len() > MAX_STATE {
            return Err(Unsealed::Forged);
        }
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| Unsealed::Forged)?;
        if raw.len() < NONCE_LEN {
            return Err(Unsealed::Forged);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let policy = self.policy_key();
        for key in policy.as_deref().into_iter().chain([&self.own]) {
            let mut buf = sealed.to_vec();
            let n = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealed::Forged)?;
            if let Ok(plain) = key.open_in_place(n, Aad::from(AAD), &mut buf) {
                return serde_json::from_slice(plain).map_err(|_| Unsealed::Forged);
            }
        }
        Err(Unsealed::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question() -> Question {
        Question {
            caller: "agent-a".into(),
            tool: "clear_session".into(),
            args: "ab".repeat(32),
            policy: "cd".repeat(32),
            exp: 1_900_000_000,
            nonce: "00".repeat(16),
        }
    }

    #[test]
    fn a_sealed_question_opens_only_unchanged_and_only_with_the_key() {
        let s = Sealer::new(None);
        let state = s.seal(&question());
        assert!(state.starts_with(PREFIX));
        assert!(
            !state.contains("agent-a"),
            "the state is not readable: {state}"
        );
        assert_eq!(s.open(&state), Ok(question()));
        // Every byte flipped in turn is refused.
        let body = state.strip_prefix(PREFIX).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(body).unwrap();
        for i in 0..raw.len() {
            let mut r = raw.clone();
            r[i] ^= 1;
            let forged = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(r));
            assert_eq!(s.open(&forged), Err(Unsealed::Forged), "byte {i}");
        }
        // Another process (another key) cannot open it.
        assert_eq!(Sealer::new(None).open(&state), Err(Unsealed::Forged));
        for junk in [
            "",
            PREFIX,
            "server-state",
            "mcp-warden.1.!!!",
            "mcp-warden.1.AAAA",
        ] {
            assert_eq!(s.open(junk), Err(Unsealed::Forged), "{junk:?}");
        }
    }

    #[test]
    fn replicas_with_the_policy_key_open_each_others_states() {
        let dir = std::env::temp_dir().join(format!("mw-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("peer.key");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let (a, b) = (
            Sealer::new(Some(key.clone())),
            Sealer::new(Some(key.clone())),
        );
        a.reload();
        b.reload();
        let state = a.seal(&question());
        assert_eq!(b.open(&state), Ok(question()));
        // Another policy's key does not.
        let other = dir.join("other.key");
        std::fs::write(&other, [8u8; 32]).unwrap();
        let c = Sealer::new(Some(other));
        c.reload();
        assert_eq!(c.open(&state), Err(Unsealed::Forged));
        // A short key file is not taken; the last good key stays.
        std::fs::write(&key, [1u8; 8]).unwrap();
        b.reload();
        assert_eq!(b.open(&state), Ok(question()));
        std::fs::remove_dir_all(&dir).ok();
    }
}
