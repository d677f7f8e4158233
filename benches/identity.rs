//! Token verification (signatures by `ring`): `cargo bench --bench identity`.
//!
//! A projected-ServiceAccount-shaped token (RS256 with the fixture 2048-bit key, and ES256 with
//! a fresh P-256 key) verified once per call (uncached: what a new token costs) and through the
//! cache of verified tokens (what every later request with the same token costs).

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use mcp_warden::identity::{install_crypto, VerifiedCache, Verifier};
use serde_json::json;
use std::hint::black_box;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Median nanoseconds per call of `f` over `rounds` rounds of `per_round` calls.
fn median_ns(rounds: usize, per_round: u32, mut f: impl FnMut()) -> f64 {
    let mut per_call: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(per_round)
        })
        .collect();
    per_call.sort_by(|a, b| a.partial_cmp(b).unwrap());
    per_call[per_call.len() / 2]
}

fn main() {
    install_crypto();
    let root = env!("CARGO_MANIFEST_DIR");
    let rsa_pem =
        std::fs::read(format!("{root}/tests/fixtures/identity/rsa-test-key.pem")).unwrap();
    let rsa_set: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{root}/tests/fixtures/identity/rsa-test-jwks.json")).unwrap(),
    )
    .unwrap();
    let (es_jwk, es_key) = mcp_warden::identity::p256_signing_key("es");
    let set = json!({"keys": [rsa_set["keys"][0].clone(), es_jwk]});
    let issuer = "https://kubernetes.default.svc.cluster.local";
    let verifier = Verifier::new(
        issuer,
        &["mcp-warden".to_string()],
        &serde_json::to_vec(&set).unwrap(),
    )
    .unwrap();
    let claims = json!({"iss": issuer, "aud": ["mcp-warden"], "sub": "system:serviceaccount:agents:ci",
                        "iat": now(), "nbf": now(), "exp": now() + 3600,
                        "kubernetes.io": {"namespace": "agents", "serviceaccount": {"name": "ci", "uid": "0b6c"}}});
    let token = |alg: Algorithm, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        encode(&h, &claims, key).unwrap()
    };
    let rs = token(
        Algorithm::RS256,
        "test-rsa",
        &EncodingKey::from_rsa_pem(&rsa_pem).unwrap(),
    );
    let es = token(Algorithm::ES256, "es", &es_key);
    println!("token verification, median of 50 rounds");
    println!("{:<52} {:>12}", "figure", "measured");
    for (name, t) in [("RS256", &rs), ("ES256", &es)] {
        let uncached = median_ns(50, 20, || {
            black_box(verifier.verify(black_box(t)).unwrap());
        });
        let cache = VerifiedCache::new(10_000);
        let at = now();
        cache.verify(&verifier, t, at).unwrap();
        let cached = median_ns(50, 2_000, || {
            black_box(cache.verify(&verifier, black_box(t), at).unwrap());
        });
        println!(
            "{:<52} {:>9.1} µs",
            format!("{name} uncached (signature, claims)"),
            uncached / 1e3
        );
        println!(
            "{:<52} {:>9.2} µs",
            format!("{name} cached (hash of the token, lookup)"),
            cached / 1e3
        );
    }
}
