use super::*;
use base64::Engine as _;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AGENT: &str = "system:serviceaccount:agents:ci";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh P-256 key: its JWK and its signing key.
fn es_key(kid: &str) -> (Value, EncodingKey) {
    p256_signing_key(kid)
}

/// The fixture RSA key (kid `test-rsa`): its JWK and its signing key.
fn rsa_key() -> (Value, EncodingKey) {
    let set: Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/identity/rsa-test-jwks.json"
    ))
    .unwrap();
    let pem = include_str!("../../tests/fixtures/identity/rsa-test-key.pem");
    (
        set["keys"][0].clone(),
        EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
}

fn claims(over: Value) -> Value {
    let t = now();
    let mut c = json!({"iss": ISSUER, "aud": ["mcp-warden"], "sub": AGENT,
                       "iat": t, "nbf": t - 1, "exp": t + 600});
    for (k, v) in over.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    install_crypto();
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, claims, key).unwrap()
}

/// An HS256 token whose secret is the RSA key set's text: what a verifier that let the token
/// pick its algorithm would accept with the public key as an HMAC secret.
fn hs256_with_the_public_key(claims: &Value) -> String {
    let secret = include_str!("../../tests/fixtures/identity/rsa-test-jwks.json");
    let message = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT","kid":"test-rsa"}"#),
        b64(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, message.as_bytes());
    format!("{message}.{}", b64(tag.as_ref()))
}

struct Keys {
    verifier: Verifier,
    es: EncodingKey,
    rsa: EncodingKey,
}

fn keys() -> Keys {
    let (es_jwk, es) = es_key("test-es");
    let (rsa_jwk, rsa) = rsa_key();
    let set = json!({"keys": [es_jwk, rsa_jwk]});
    let verifier = Verifier::new(
        ISSUER,
        &["mcp-warden".to_string()],
        &serde_json::to_vec(&set).unwrap(),
    )
    .unwrap();
    Keys { verifier, es, rsa }
}

#[test]
fn rs256_and_es256_tokens_identify_their_subject() {
    let k = keys();
    for token in [
        sign(Algorithm::RS256, "test-rsa", &k.rsa, &claims(json!({}))),
        sign(Algorithm::ES256, "test-es", &k.es, &claims(json!({}))),
    ] {
        let v = k.verifier.verify(&token).unwrap();
        assert_eq!(&*v.subject, AGENT);
        assert!(v.expires > now());
    }
    // A single audience as a string, and clock skew within the leeway, pass too.
    let skewed = claims(json!({"aud": "mcp-warden", "exp": now() - 10}));
    assert!(k
        .verifier
        .verify(&sign(Algorithm::ES256, "test-es", &k.es, &skewed))
        .is_ok());
}

#[test]
fn every_failure_has_its_reason() {
    let k = keys();
    let es = |c: Value| sign(Algorithm::ES256, "test-es", &k.es, &claims(c));
    let t = now();
    let cases: Vec<(&str, String, TokenError)> = vec![
        ("expired", es(json!({"exp": t - 120})), TokenError::Expired),
        (
            "not yet valid",
            es(json!({"nbf": t + 600})),
            TokenError::NotYetValid,
        ),
        (
            "another audience",
            es(json!({"aud": ["kubernetes"]})),
            TokenError::WrongAudience,
        ),
        (
            "another issuer",
            es(json!({"iss": "https://evil.example"})),
            TokenError::WrongIssuer,
        ),
        (
            "no subject",
            es(json!({"sub": null})),
            TokenError::MissingClaim("sub".into()),
        ),
        (
            "signed by another key under a known kid",
            sign(
                Algorithm::ES256,
                "test-es",
                &es_key("x").1,
                &claims(json!({})),
            ),
            TokenError::BadSignature,
        ),
        (
            "unknown key id",
            sign(Algorithm::ES256, "rotated-away", &k.es, &claims(json!({}))),
            TokenError::UnknownKey,
        ),
        (
            "ES256 header on the RSA key's id",
            sign(Algorithm::ES256, "test-rsa", &k.es, &claims(json!({}))),
            TokenError::UnknownKey,
        ),
        (
            "HS256 with the public key as the secret",
            hs256_with_the_public_key(&claims(json!({}))),
            TokenError::Algorithm("HS256".into()),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT","kid":"test-es"}"#),
                b64(claims(json!({})).to_string().as_bytes())
            ),
            TokenError::Algorithm("none".into()),
        ),
        (
            "not a JWT",
            "opaque-token-value".into(),
            TokenError::Malformed("a JWT has three dot-separated parts".into()),
        ),
    ];
    for (what, token, want) in cases {
        assert_eq!(k.verifier.verify(&token), Err(want), "{what}");
    }
    // A payload changed after signing.
    let good = es(json!({}));
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = b64(
        claims(json!({"sub": "system:serviceaccount:kube-system:admin"}))
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged;
    assert_eq!(
        k.verifier.verify(&parts.join(".")),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn a_key_set_without_a_usable_key_is_refused() {
    let empty = br#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}"#;
    assert!(matches!(
        Verifier::new(ISSUER, &[], empty),
        Err(KeySetError::Empty)
    ));
    assert!(matches!(
        Verifier::new(ISSUER, &[], b"not json"),
        Err(KeySetError::Json(_))
    ));
}

#[test]
fn verified_tokens_are_cached_until_they_expire_and_the_cache_is_bounded() {
    let k = keys();
    let cache = VerifiedCache::new(2);
    let token = sign(Algorithm::ES256, "test-es", &k.es, &claims(json!({})));
    cache.verify(&k.verifier, &token, now()).unwrap();
    assert_eq!(cache.len(), 1);
    // Answered from the cache: a verifier that could not check it (another key set) is not asked.
    let other = Verifier::new(
        ISSUER,
        &["mcp-warden".to_string()],
        &serde_json::to_vec(&json!({"keys": [es_key("other").0]})).unwrap(),
    )
    .unwrap();
    assert_eq!(other.verify(&token), Err(TokenError::UnknownKey));
    assert_eq!(
        &*cache.verify(&other, &token, now()).unwrap().subject,
        AGENT
    );
    // Past its expiry (and the leeway) the cached entry is refused and dropped.
    assert_eq!(
        cache.verify(&k.verifier, &token, now() + 600 + LEEWAY_SECS + 1),
        Err(TokenError::Expired)
    );
    assert!(cache.is_empty());
    // Failures are not remembered; at most `max` tokens are.
    let bad = sign(Algorithm::ES256, "nope", &k.es, &claims(json!({})));
    assert!(cache.verify(&k.verifier, &bad, now()).is_err());
    assert!(cache.is_empty());
    for i in 0..3 {
        let t = sign(
            Algorithm::ES256,
            "test-es",
            &k.es,
            &claims(json!({"jti": format!("t{i}")})),
        );
        assert!(cache.verify(&k.verifier, &t, now()).is_ok());
    }
    assert_eq!(cache.len(), 2);
}
