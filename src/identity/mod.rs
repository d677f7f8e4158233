//! Who is calling: bearer tokens verified offline against a JSON Web Key Set (projected
//! ServiceAccount tokens against the cluster's keys, or an external OIDC issuer's), with the
//! verified ones cached until they expire so a request costs a signature check only the first
//! time a token is seen.
//!
//! Signatures are checked by `ring` ([`crypto`]). Only RS256 and ES256 are accepted, each with a
//! key of its own kind: `alg: none`, HMAC (where a
//! public key could be used as the secret) and anything else are refused before any key is used.

mod cache;
mod crypto;

pub use cache::VerifiedCache;
pub use crypto::install as install_crypto;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Seconds of clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Why a token does not identify its caller. The text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token's algorithm {0:?} is not accepted (RS256 or ES256)")]
    Algorithm(String),
    #[error("the token names no key id, or one the issuer's key set does not have")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
}

impl TokenError {
    /// A bounded metric label for the reason.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed(_) => "malformed",
            TokenError::Algorithm(_) => "algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::MissingClaim(_) => "missing_claim",
        }
    }
}

/// Why a key set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("not a JSON Web Key Set: {0}")]
    Json(#[from] serde_json::Error),
    #[error("key {kid:?}: {why}")]
    Key { kid: String, why: String },
    #[error("the key set has no usable RS256 or ES256 key")]
    Empty,
}

/// A fresh P-256 key for signing ES256 tokens, and its public JWK (kid `kid`): what an issuer
/// holds. The demo signs its agent's token with one; tests use them as issuers.
pub fn p256_signing_key(kid: &str) -> (serde_json::Value, jsonwebtoken::EncodingKey) {
    use base64::Engine as _;
    crypto::install();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("ring generates P-256 keys");
    let raw = kp.public_key_raw();
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
        "alg": "ES256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    let key = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes())
        .expect("a key serialised here reads back");
    (jwk, key)
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The `sub` claim: `system:serviceaccount:NS:NAME` for a ServiceAccount.
    pub subject: Arc<str>,
    /// The `exp` claim (seconds since the epoch).
    pub expires: u64,
}

/// One key of the set, and the algorithm it verifies.
struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens from one issuer for the given audiences.
pub struct Verifier {
    issuer: String,
    audiences: Vec<String>,
    keys: HashMap<String, Key>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

impl Verifier {
    /// A verifier for tokens of `issuer` for any of `audiences`, with the keys of `jwks` (a JSON
    /// Web Key Set document). Keys without a `kid`, or of another kind than RSA or EC P-256, are
    /// left out; a set with no usable key is an error.
    pub fn new(issuer: &str, audiences: &[String], jwks: &[u8]) -> Result<Verifier, KeySetError> {
        crypto::install();
        let set: JwkSet = serde_json::from_slice(jwks)?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| KeySetError::Key {
                kid: kid.clone(),
                why: e.to_string(),
            })?;
            keys.insert(kid, Key { alg, key });
        }
        if keys.is_empty() {
            return Err(KeySetError::Empty);
        }
        Ok(Verifier {
            issuer: issuer.to_owned(),
            audiences: audiences.to_vec(),
            keys,
        })
    }

    /// The audiences a token may be for.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The issuer whose tokens this verifies.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Verifies `token`: its algorithm, its key, its signature, then `iss`, `aud`, `exp` and
    /// `nbf` (with [`LEEWAY_SECS`]), and that it names a subject.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!(
                "the token is over {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header = raw_header(token)?;
        let alg = header
            .alg
            .ok_or_else(|| TokenError::Malformed("the header names no algorithm".into()))?;
        let alg = match alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(TokenError::Algorithm(alg)),
        };
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .filter(|k| k.alg == alg)
            .ok_or(TokenError::UnknownKey)?;
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(classify)?;
        let (Some(sub), Some(exp)) = (data.claims.sub, data.claims.exp) else {
            return Err(TokenError::MissingClaim("sub or exp".into()));
        };
        Ok(Verified {
            subject: sub.into(),
            expires: exp,
        })
    }
}

/// Longest token read: ServiceAccount and OIDC tokens are a few KiB; a longer one is refused
/// before any decoding, so its size costs nothing (and the header's `jku`, `x5u`, `jwk` or `x5c`
/// are never read: keys come only from the rendered key set).
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// A token's header as written, read before anything is trusted (`decode` reads it again,
/// strictly, with the signature).
fn raw_header(token: &str) -> Result<RawHeader, TokenError> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| TokenError::Malformed("the header is not base64url".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed("the header is not JSON".into()))
}

fn classify(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.into_kind() {
        K::InvalidSignature => TokenError::BadSignature,
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidAudience => TokenError::WrongAudience,
        K::InvalidIssuer => TokenError::WrongIssuer,
        K::MissingRequiredClaim(c) => TokenError::MissingClaim(c),
        K::InvalidAlgorithm | K::MissingAlgorithm => TokenError::Algorithm("mismatched".into()),
        other => TokenError::Malformed(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests;
