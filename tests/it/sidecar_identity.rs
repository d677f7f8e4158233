//! Verified identities through the sidecar: ServiceAccount-style tokens signed with test keys,
//! checked against the key set file, refused with 401 for every reason a token can be bad, and
//! grants applied per caller with the official Rust SDK as client and server.

use crate::common;

use base64::Engine as _;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rmcp::model::CallToolRequestParams;
use serde_json::{json, Value};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const CI: &str = "system:serviceaccount:ci:builder";
const OTHER: &str = "system:serviceaccount:agents:helper";
const JWKS: &str = include_str!("../fixtures/identity/rsa-test-jwks.json");
const RSA_PEM: &str = include_str!("../fixtures/identity/rsa-test-key.pem");

/// ServiceAccount tokens required; `write_file` 2 per hour per caller, 3 for the CI grant.
fn policy(required: bool) -> String {
    format!(
        r#"
version: "1"
default: deny
identity:
  service_account: {{audiences: [mcp-warden]}}
  required: {required}
tools:
  notebook_read: {{}}
  write_file:
    limits: [{{counter: writes, window: hour, max: 2, scope: grant}}]
  clear_session: {{action: deny, reason: "Only CI may clear sessions"}}
grants:
  - subjects: ["system:serviceaccount:ci:*"]
    tools:
      write_file:
        limits: [{{counter: ci_writes, window: hour, max: 3, scope: grant}}]
      clear_session: {{}}
"#
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The fixture key set with the issuer the controller renders beside it.
fn key_set_with_issuer(jwks: &str) -> String {
    let mut v: Value = serde_json::from_str(jwks).unwrap();
    v["issuer"] = json!(ISSUER);
    v.to_string()
}

fn claims(sub: &str, over: Value) -> Value {
    let t = now();
    let mut c = json!({"iss": ISSUER, "aud": ["mcp-warden"], "sub": sub,
                       "iat": t, "nbf": t - 1, "exp": t + 600});
    for (k, v) in over.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn sign_with(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    mcp_warden::identity::install_crypto();
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, claims, key).unwrap()
}

fn token(sub: &str, over: Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap();
    sign_with(Algorithm::RS256, "test-rsa", &key, &claims(sub, over))
}

/// A token signed with the header and signature given as text (for `alg: none` and HMAC).
fn forged(header: &str, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let message = format!(
        "{}.{}",
        b64(header.as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(message.as_bytes());
    format!("{message}.{}", b64(&sig))
}

async fn start(required: bool, jwks: &str) -> (Upstream, Sidecar) {
    let up = upstream(false, true).await;
    let dir = temp_dir("identity");
    std::fs::write(dir.join("policy.yaml"), policy(required)).unwrap();
    std::fs::write(dir.join("jwks.json"), jwks).unwrap();
    let jwks_path = dir.join("jwks.json");
    let sc = sidecar_at(&up.url(), &dir.join("policy.yaml"), |c| {
        c.jwks_path = Some(jwks_path)
    })
    .await;
    (up, sc)
}

const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

async fn post_with_token(url: &str, token: Option<&str>, body: &str) -> Raw {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = vec![("mcp-protocol-version", "2025-06-18")];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    post_json(url, &h, body).await
}

/// The 401 a request gets, checked in full: status, challenge, JSON-RPC body; the reason text.
fn unauthorized(raw: &Raw) -> (String, String) {
    assert_eq!(raw.0, 401, "{:?}", String::from_utf8_lossy(&raw.2));
    let challenge = raw
        .1
        .get("www-authenticate")
        .expect("a 401 carries WWW-Authenticate")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    let body: Value = serde_json::from_slice(&raw.2).unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["error"]["code"], 401);
    (
        body["error"]["message"].as_str().unwrap().to_owned(),
        challenge,
    )
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_reason_and_nothing_is_forwarded() {
    let (up, sc) = start(true, &key_set_with_issuer(JWKS)).await;
    let before = up.requests();
    let t = now();
    let hs256 = forged(
        r#"{"alg":"HS256","typ":"JWT","kid":"test-rsa"}"#,
        &claims(CI, json!({})),
        |m| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, JWKS.as_bytes());
            ring::hmac::sign(&key, m).as_ref().to_vec()
        },
    );
    let none = forged(
        r#"{"alg":"none","typ":"JWT","kid":"test-rsa"}"#,
        &claims(CI, json!({})),
        |_| Vec::new(),
    );
    let good = token(CI, json!({}));
    let (head, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let tampered = format!(
        "{head}.{}.{sig}",
        b64(claims(OTHER, json!({})).to_string().as_bytes())
    );
    let (_, es_key) = mcp_warden::identity::p256_signing_key("not-in-the-set");
    let unknown_key = sign_with(
        Algorithm::ES256,
        "not-in-the-set",
        &es_key,
        &claims(CI, json!({})),
    );
    let cases: Vec<(&str, Option<String>, &str, &str)> = vec![
        ("no token", None, "no bearer token", "missing"),
        (
            "expired",
            Some(token(
                CI,
                json!({"exp": t - 120, "iat": t - 700, "nbf": t - 700}),
            )),
            "expired",
            "expired",
        ),
        (
            "not yet valid",
            Some(token(CI, json!({"nbf": t + 600}))),
            "not valid yet",
            "not_yet_valid",
        ),
        (
            "another audience",
            Some(token(
                CI,
                json!({"aud": ["https://kubernetes.default.svc"]}),
            )),
            "another audience",
            "wrong_audience",
        ),
        (
            "another issuer",
            Some(token(CI, json!({"iss": "https://evil.example.com"}))),
            "another issuer",
            "wrong_issuer",
        ),
        (
            "a changed payload",
            Some(tampered),
            "signature",
            "bad_signature",
        ),
        (
            "an unknown key id",
            Some(unknown_key),
            "key id",
            "unknown_key",
        ),
        ("alg none", Some(none), "\"none\"", "algorithm"),
        (
            "HS256 with the public key as secret",
            Some(hs256),
            "HS256",
            "algorithm",
        ),
        (
            "not a JWT",
            Some("opaque-token".into()),
            "not a JWT",
            "malformed",
        ),
    ];
    for (what, tok, reason, label) in &cases {
        let raw = post_with_token(&sc.url(), tok.as_deref(), LIST).await;
        let (message, challenge) = unauthorized(&raw);
        assert!(message.contains(reason), "{what}: {message}");
        match tok {
            None => assert!(!challenge.contains("error="), "{what}: {challenge}"),
            Some(_) => assert!(
                challenge.contains(r#"error="invalid_token""#),
                "{what}: {challenge}"
            ),
        }
        assert!(
            metric(
                &sc,
                "mcp_warden_unauthenticated_total",
                &[&format!("reason=\"{label}\"")]
            )
            .await
            .is_some_and(|n| n >= 1.0),
            "{what}: counted as {label}"
        );
    }
    // A token in the query string is not read: the request has no token.
    let url = format!("{}?access_token={good}", sc.url());
    let (message, _) = unauthorized(&post_with_token(&url, None, LIST).await);
    assert!(message.contains("no bearer token"), "{message}");
    // GET streams and DELETEs need the identity too.
    let raw = request("GET", &sc.url(), &[("accept", "text/event-stream")], "").await;
    unauthorized(&raw);
    assert_eq!(up.requests(), before, "nothing was forwarded");

    // The good token passes.
    let raw = post_with_token(&sc.url(), Some(&good), LIST).await;
    assert_eq!(raw.0, 200);
    assert_eq!(up.requests(), before + 1);
}

fn call(name: &'static str) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name);
    p.arguments = Some(serde_json::Map::new());
    p
}

async fn names(c: &rmcp::service::RunningService<rmcp::RoleClient, ()>) -> Vec<String> {
    let mut n = rmcp_tool_names(c).await;
    n.sort();
    n
}

#[tokio::test]
async fn grants_apply_per_service_account_through_an_sdk_client() {
    let (_up, sc) = start(true, &key_set_with_issuer(JWKS)).await;
    let ci = rmcp_client(&sc.url(), &token(CI, json!({}))).await;
    let other = rmcp_client(&sc.url(), &token(OTHER, json!({}))).await;

    // Listing follows the caller's grant: only CI may clear sessions.
    assert_eq!(
        names(&ci).await,
        ["clear_session", "notebook_read", "write_file"]
    );
    assert_eq!(names(&other).await, ["notebook_read", "write_file"]);

    // CI's grant: 3 writes per hour; everyone else: 2, each caller its own counter.
    for _ in 0..3 {
        let r = ci.call_tool(call("write_file")).await.unwrap();
        assert_eq!(r.is_error, Some(false));
    }
    let r = ci.call_tool(call("write_file")).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    let meta = serde_json::to_value(&r.meta).unwrap();
    let rec = &meta["dev.mcpwarden/decision"];
    assert_eq!(rec["decision"], "rate_limited");
    assert_eq!(rec["counter"], "ci_writes");
    assert_eq!(
        rec["identity"], CI,
        "a ServiceAccount is named in the clear"
    );
    assert_eq!(rec["grant"], "grants[0]");
    for _ in 0..2 {
        let r = other.call_tool(call("write_file")).await.unwrap();
        assert_eq!(r.is_error, Some(false));
    }
    let r = other.call_tool(call("write_file")).await.unwrap();
    let meta = serde_json::to_value(&r.meta).unwrap();
    assert_eq!(meta["dev.mcpwarden/decision"]["counter"], "writes");
    assert_eq!(meta["dev.mcpwarden/decision"]["identity"], OTHER);
    assert!(meta["dev.mcpwarden/decision"].get("grant").is_none());

    let r = other.call_tool(call("clear_session")).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    let r = ci.call_tool(call("clear_session")).await.unwrap();
    assert_eq!(
        r.is_error,
        Some(false),
        "the grant allows what the base denies"
    );

    // Under the grant: 3 writes and clear_session allowed, 1 write limited.
    let under_grant = |decision: &'static str| {
        let sc = &sc;
        async move {
            metric(
                sc,
                "mcp_warden_grant_decisions_total",
                &["grant=\"grants[0]\"", &format!("decision=\"{decision}\"")],
            )
            .await
        }
    };
    assert_eq!(under_grant("allow").await, Some(4.0));
    assert_eq!(under_grant("rate_limited").await, Some(1.0));
}

#[tokio::test]
async fn without_required_a_caller_with_no_token_is_anonymous_but_a_bad_token_is_refused() {
    let (up, sc) = start(false, &key_set_with_issuer(JWKS)).await;
    let raw = post_with_token(&sc.url(), None, LIST).await;
    assert_eq!(raw.0, 200, "no token: served with the base rules");
    let listed: Vec<String> = messages(&raw)[0]["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!listed.contains(&"clear_session".to_owned()), "{listed:?}");
    let before = up.requests();
    let expired = token(CI, json!({"exp": now() - 120}));
    let (message, _) = unauthorized(&post_with_token(&sc.url(), Some(&expired), LIST).await);
    assert!(message.contains("expired"), "{message}");
    assert_eq!(
        up.requests(),
        before,
        "a bad token never falls back to anonymous"
    );
}

#[tokio::test]
async fn rotated_keys_are_picked_up_and_a_broken_key_set_keeps_the_last_good_one() {
    let (_up, sc) = start(true, &key_set_with_issuer(JWKS)).await;
    let rsa = token(CI, json!({}));
    assert_eq!(post_with_token(&sc.url(), Some(&rsa), LIST).await.0, 200);

    // A broken key set: the keys in force stay.
    std::fs::write(sc.dir.join("jwks.json"), "{not json").unwrap();
    let broken = Ok(mcp_warden::sidecar::sha256_hex(b"{not json"));
    wait_until("the broken key set is read", async || {
        sc.state
            .policy
            .load()
            .as_ref()
            .is_some_and(|p| p.keys_seen.as_ref() == Some(&broken))
    })
    .await;
    assert_eq!(post_with_token(&sc.url(), Some(&rsa), LIST).await.0, 200);

    // The issuer rotates to an ES256 key: its tokens pass, the removed key's are refused.
    let (jwk, es_key) = mcp_warden::identity::p256_signing_key("es-1");
    let set = json!({"issuer": ISSUER, "keys": [jwk]});
    std::fs::write(sc.dir.join("jwks.json"), set.to_string()).unwrap();
    let es = sign_with(Algorithm::ES256, "es-1", &es_key, &claims(CI, json!({})));
    wait_until("the new key set is loaded", async || {
        post_with_token(&sc.url(), Some(&es), LIST).await.0 == 200
    })
    .await;
    let (message, _) = unauthorized(&post_with_token(&sc.url(), Some(&rsa), LIST).await);
    assert!(message.contains("key id"), "{message}");
}

#[tokio::test]
async fn without_a_key_set_every_token_is_refused() {
    let up = upstream(false, true).await;
    let dir = temp_dir("identity-nokeys");
    std::fs::write(dir.join("policy.yaml"), policy(false)).unwrap();
    let sc = sidecar_at(&up.url(), &dir.join("policy.yaml"), |_| {}).await;
    let (message, _) =
        unauthorized(&post_with_token(&sc.url(), Some(&token(CI, json!({}))), LIST).await);
    assert!(message.contains("--jwks"), "{message}");
    assert_eq!(
        metric(
            &sc,
            "mcp_warden_unauthenticated_total",
            &["reason=\"no_keys\""]
        )
        .await,
        Some(1.0)
    );
    // A key set for no issuer cannot verify ServiceAccount tokens either.
    std::fs::write(dir.join("jwks.json"), JWKS).unwrap();
    let sc = sidecar_at(&up.url(), &dir.join("policy.yaml"), |c| {
        c.jwks_path = Some(dir.join("jwks.json"))
    })
    .await;
    let (message, _) =
        unauthorized(&post_with_token(&sc.url(), Some(&token(CI, json!({}))), LIST).await);
    assert!(message.contains("names no issuer"), "{message}");
}

/// Class 12 (tokens): a header naming where to fetch a key (`jku`, `x5u`) or carrying one (`jwk`)
/// is never followed or used, an ES256 header on the RSA key's id is refused, an oversized token
/// is refused before decoding, and a flood of distinct refused tokens caches nothing: the good
/// token still passes after it.
#[tokio::test]
async fn token_header_tricks_oversized_tokens_and_floods_are_refused() {
    let (up, sc) = start(true, &key_set_with_issuer(JWKS)).await;
    // A listener the tricks point at: it must never be asked.
    let lure = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lure_url = format!("http://{}/keys", lure.local_addr().unwrap());
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = asked.clone();
    tokio::spawn(async move {
        while lure.accept().await.is_ok() {
            a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let key = EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap();
    let with_header = |extra: Value, key: &EncodingKey| {
        mcp_warden::identity::install_crypto();
        let mut h: Value = json!({"alg": "RS256", "typ": "JWT", "kid": "test-rsa"});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        let header: Header = serde_json::from_value(h).unwrap();
        encode(&header, &claims(CI, json!({})), key).unwrap()
    };
    // Signed with the right key, with a jku: the key set decides; the URL is never fetched.
    let good_jku = with_header(json!({"jku": lure_url, "x5u": lure_url}), &key);
    let raw = post_with_token(&sc.url(), Some(&good_jku), LIST).await;
    assert_eq!(raw.0, 200, "{:?}", String::from_utf8_lossy(&raw.2));
    // Signed with the attacker's own key, named by jku/x5u/jwk: refused as a bad signature.
    let forged_jku = forged(
        &json!({"alg": "RS256", "kid": "test-rsa", "jku": lure_url, "x5u": lure_url,
                "jwk": {"kty": "oct", "k": "c2VjcmV0"}})
        .to_string(),
        &claims(CI, json!({})),
        |_| vec![7u8; 256],
    );
    let (message, _) = unauthorized(&post_with_token(&sc.url(), Some(&forged_jku), LIST).await);
    assert!(message.contains("signature"), "{message}");
    // ES256 on the RSA key's id: key-type confusion is an unknown key.
    let es = forged(
        r#"{"alg":"ES256","kid":"test-rsa"}"#,
        &claims(CI, json!({})),
        |_| vec![1u8; 64],
    );
    let (message, _) = unauthorized(&post_with_token(&sc.url(), Some(&es), LIST).await);
    assert!(message.contains("key id"), "{message}");
    // Oversized: refused before decoding, with the reason.
    let huge = format!(
        "{good_jku}{}",
        "A".repeat(mcp_warden::identity::MAX_TOKEN_BYTES)
    );
    let (message, _) = unauthorized(&post_with_token(&sc.url(), Some(&huge), LIST).await);
    assert!(message.contains("over 16384 bytes"), "{message}");
    // A flood of distinct tokens that look valid (right kid, fresh claims, wrong signature).
    let before = up.requests();
    for i in 0..300 {
        let t = forged(
            r#"{"alg":"RS256","kid":"test-rsa"}"#,
            &claims(&format!("system:serviceaccount:flood:{i}"), json!({})),
            |_| vec![(i % 251) as u8; 256],
        );
        assert_eq!(post_with_token(&sc.url(), Some(&t), LIST).await.0, 401);
    }
    assert_eq!(up.requests(), before, "nothing of the flood was forwarded");
    let raw = post_with_token(&sc.url(), Some(&token(CI, json!({}))), LIST).await;
    assert_eq!(raw.0, 200, "the good token still passes");
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no key URL was fetched"
    );
}
