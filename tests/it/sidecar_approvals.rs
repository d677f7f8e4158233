//! Approvals through the sidecar without a cluster (`--approvals FILE`): a call that needs one is
//! refused with its approval id, an approval of exactly that call lets it run as many times as the
//! approval allows, and nothing else — other arguments, another caller — runs on it.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

const POLICY: &str = r#"
version: "1"
default: deny
identity: {header: x-agent}
tools:
  notebook_read: {}
  clear_session: {action: require_approval}
"#;

/// The decision record of a call as `agent` (and whether the server ran it).
async fn clear(sc: &Sidecar, agent: &str, id: u64, args: Value) -> Value {
    decision_of(&call_as(sc, agent, "clear_session", args, id).await)
}

fn approve(sc: &Sidecar, ids: &[(&str, u32)]) {
    let list: Vec<Value> = ids
        .iter()
        .map(|(id, uses)| json!({"id": id, "uses": uses, "expires_at": u64::MAX / 2}))
        .collect();
    std::fs::write(
        sc.dir.join("approvals.json"),
        json!({"approvals": list}).to_string(),
    )
    .unwrap();
}

/// Asks for `args` as `agent`, approves one use and waits for the sidecar to load it.
async fn approved_once(sc: &Sidecar, agent: &str, args: &Value) {
    let id = clear(sc, agent, 1, args.clone()).await["approvalId"]
        .as_str()
        .unwrap()
        .to_owned();
    approve(sc, &[(&id, 1)]);
    wait_until("the approval is loaded", async || {
        sc.state.approvals.pending().is_empty()
    })
    .await;
}

async fn start() -> (Upstream, Sidecar) {
    let up = upstream(false, true).await;
    let dir = temp_dir("approvals");
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    let approvals = dir.join("approvals.json");
    let sc = sidecar_at(&up.url(), &dir.join("policy.yaml"), |c| {
        c.approvals_path = Some(approvals)
    })
    .await;
    (up, sc)
}

#[tokio::test]
async fn an_approved_call_runs_as_often_as_approved_and_nothing_else_runs_on_it() {
    let (up, sc) = start().await;
    let args = json!({"session_id": "default", "force": true});
    let rec = clear(&sc, "alice", 1, args.clone()).await;
    assert_eq!(rec["decision"], "approval_required");
    let id = rec["approvalId"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64);
    // Asking again is the same request (same id), recorded once.
    let again = clear(&sc, "alice", 2, args.clone()).await;
    assert_eq!(again["approvalId"], id.as_str());
    let pending = sc.state.approvals.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].tool, "clear_session");
    assert_eq!(pending[0].identity, "alice");
    assert_eq!(
        pending[0].arguments.as_deref(),
        Some(r#"{"force":true,"session_id":"default"}"#)
    );
    assert_eq!(
        metric(&sc, "mcp_warden_approvals_total", &["result=\"requested\""]).await,
        Some(1.0)
    );
    assert_eq!(
        metric(&sc, "mcp_warden_approvals_pending", &[]).await,
        Some(1.0)
    );
    let ran_before = up.server.calls.load(Ordering::SeqCst);

    approve(&sc, &[(&id, 1)]);
    // The same call with its keys in another order is the same call.
    let reordered: Value =
        serde_json::from_str(r#"{"force": true, "session_id": "default"}"#).unwrap();
    wait_until("the approval is loaded", async || {
        sc.state.approvals.pending().is_empty()
    })
    .await;
    assert_eq!(clear(&sc, "alice", 3, reordered).await["decision"], "ran");
    assert_eq!(up.server.calls.load(Ordering::SeqCst), ran_before + 1);
    // One use: the second identical call needs approval again.
    assert_eq!(
        clear(&sc, "alice", 4, args.clone()).await["decision"],
        "approval_required"
    );
    // Other arguments, or another caller, are other calls.
    let other = clear(
        &sc,
        "alice",
        5,
        json!({"session_id": "other", "force": true}),
    )
    .await;
    assert_eq!(other["decision"], "approval_required");
    assert_ne!(other["approvalId"], id.as_str());
    let bob = clear(&sc, "bob", 6, args.clone()).await;
    assert_eq!(bob["decision"], "approval_required");
    assert_ne!(bob["approvalId"], id.as_str());
    assert_eq!(up.server.calls.load(Ordering::SeqCst), ran_before + 1);
    assert_eq!(
        metric(&sc, "mcp_warden_approvals_total", &["result=\"used\""]).await,
        Some(1.0)
    );
}

#[tokio::test]
async fn concurrent_identical_calls_with_one_use_run_exactly_once() {
    let (up, sc) = start().await;
    let args = json!({"session_id": "s"});
    approved_once(&sc, "alice", &args).await;
    let before = up.server.calls.load(Ordering::SeqCst);
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let (sc, args) = (&sc, args.clone());
            async move { clear(sc, "alice", 10 + i, args).await }
        })
        .collect();
    let results = futures::future::join_all(calls).await;
    let ran = results.iter().filter(|r| r["decision"] == "ran").count();
    assert_eq!(ran, 1, "{results:?}");
    assert_eq!(up.server.calls.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn an_expired_approval_allows_nothing() {
    let (up, sc) = start().await;
    let id = clear(&sc, "alice", 1, json!({})).await["approvalId"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(
        sc.dir.join("approvals.json"),
        json!({"approvals": [{"id": id, "uses": 5, "expires_at": 1}]}).to_string(),
    )
    .unwrap();
    wait_until("the approvals are loaded", async || {
        sc.state.approvals.pending().is_empty()
    })
    .await;
    let before = up.server.calls.load(Ordering::SeqCst);
    assert_eq!(
        clear(&sc, "alice", 2, json!({})).await["decision"],
        "approval_required"
    );
    assert_eq!(up.server.calls.load(Ordering::SeqCst), before);
}

/// A sidecar whose admin API takes `auth` (`--admin-token-file` or `--admin-keys`).
async fn start_with_admin(
    auth: impl FnOnce(&mut mcp_warden::sidecar::Config, &std::path::Path),
) -> (Upstream, Sidecar) {
    let up = upstream(false, true).await;
    let dir = temp_dir("approvals-admin");
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    let d = dir.clone();
    let sc = sidecar_at(&up.url(), &dir.join("policy.yaml"), move |c| auth(c, &d)).await;
    (up, sc)
}

async fn admin(sc: &Sidecar, method: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        h.push(("authorization", b.as_str()));
    }
    let raw = request(method, &sc.admin_url("/approvals"), &h, body.to_owned()).await;
    (raw.0, serde_json::from_slice(&raw.2).unwrap_or(Value::Null))
}

#[tokio::test]
async fn without_a_cluster_the_admin_api_lists_and_decides_requests_for_its_token_only() {
    let (up, sc) = start_with_admin(|c, d| {
        std::fs::write(d.join("admin-token"), "s3cret-admin-token\n").unwrap();
        c.admin_token_file = Some(d.join("admin-token"));
    })
    .await;
    let args = json!({"session_id": "default"});
    let id = clear(&sc, "alice", 1, args.clone()).await["approvalId"]
        .as_str()
        .unwrap()
        .to_owned();
    // No token, a wrong token: 401 with a challenge; nothing is shown.
    let (status, body) = admin(&sc, "GET", None, "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = admin(&sc, "GET", Some("s3cret-admin-tokeN"), "").await;
    assert_eq!(status, 401);
    assert!(!body.to_string().contains("session_id"));
    let token = Some("s3cret-admin-token");
    let (status, body) = admin(&sc, "GET", token, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pending"][0]["id"], id.as_str());
    assert_eq!(
        body["pending"][0]["arguments"],
        r#"{"session_id":"default"}"#
    );
    assert_eq!(body["pending"][0]["uses"], 1);
    assert_eq!(body["pending"][0]["ttl_seconds"], 3600);
    // Bad decisions are refused with the reason.
    let (status, body) = admin(
        &sc,
        "POST",
        token,
        r#"{"id": "nope", "decision": "approve"}"#,
    )
    .await;
    assert_eq!(status, 404);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("no pending request"));
    let (status, _) = admin(&sc, "POST", token, r#"{"id": "x", "decision": "maybe"}"#).await;
    assert_eq!(status, 400);
    let (status, _) = admin(
        &sc,
        "POST",
        token,
        &format!("{{\"id\": \"{}\"}}", "x".repeat(5000)),
    )
    .await;
    assert_eq!(status, 413);
    // Approve: the identical call runs once.
    let ran = up.server.calls.load(Ordering::SeqCst);
    let (status, body) = admin(
        &sc,
        "POST",
        token,
        &json!({"id": id, "decision": "approve"}).to_string(),
    )
    .await;
    assert_eq!(
        (status, body["decision"].as_str()),
        (200, Some("approved")),
        "{body}"
    );
    assert_eq!(
        clear(&sc, "alice", 2, args.clone()).await["decision"],
        "ran"
    );
    assert_eq!(up.server.calls.load(Ordering::SeqCst), ran + 1);
    assert_eq!(
        clear(&sc, "alice", 3, args.clone()).await["decision"],
        "approval_required"
    );
    let (_, body) = admin(&sc, "GET", token, "").await;
    assert_eq!(body["used"][0]["used"], 1);
    // Reject the new request: it leaves, nothing runs.
    let (status, body) = admin(
        &sc,
        "POST",
        token,
        &json!({"id": id, "decision": "reject"}).to_string(),
    )
    .await;
    assert_eq!((status, body["decision"].as_str()), (200, Some("denied")));
    assert_eq!(
        clear(&sc, "alice", 4, args).await["decision"],
        "approval_required"
    );
    assert_eq!(up.server.calls.load(Ordering::SeqCst), ran + 1);
    for result in ["approved", "denied", "used"] {
        assert_eq!(
            metric(
                &sc,
                "mcp_warden_approvals_total",
                &[&format!("result=\"{result}\"")]
            )
            .await,
            Some(1.0),
            "{result}"
        );
    }
}

#[tokio::test]
async fn in_a_cluster_the_admin_api_takes_only_the_controllers_token_for_its_audience() {
    let (jwk, key) = mcp_warden::identity::p256_signing_key("admin-key");
    let issuer = "https://kubernetes.default.svc";
    let controller = "system:serviceaccount:mcp-warden:mcp-warden";
    let keys = json!({"issuer": issuer, "subject": controller, "keys": [jwk]}).to_string();
    let (_up, sc) = start_with_admin(move |c, d| {
        std::fs::write(d.join("admin.json"), keys).unwrap();
        c.admin_keys_path = Some(d.join("admin.json"));
    })
    .await;
    clear(&sc, "alice", 1, json!({})).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |sub: &str, aud: &str| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("admin-key".into());
        jsonwebtoken::encode(
            &h,
            &json!({"iss": issuer, "sub": sub, "aud": [aud], "exp": now + 600, "iat": now}),
            &key,
        )
        .unwrap()
    };
    let (status, body) = admin(&sc, "GET", Some(&token(controller, "mcp-warden-admin")), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pending"][0]["identity"], "alice");
    // The API server's audience (a token that would also work against the cluster) is refused.
    let (status, _) = admin(
        &sc,
        "GET",
        Some(&token(controller, "https://kubernetes.default.svc")),
        "",
    )
    .await;
    assert_eq!(status, 401);
    // Another ServiceAccount of the cluster, even for the right audience.
    let (status, body) = admin(
        &sc,
        "GET",
        Some(&token(
            "system:serviceaccount:agents:bot",
            "mcp-warden-admin",
        )),
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // The controller's token reads; decisions are McpApprovals, never POSTs.
    let (status, body) = admin(
        &sc,
        "POST",
        Some(&token(controller, "mcp-warden-admin")),
        r#"{"id": "x", "decision": "approve"}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // A forged token (payload changed after signing).
    let t = token(controller, "mcp-warden-admin");
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    parts[1].insert(3, 'x');
    let (status, _) = admin(&sc, "GET", Some(&parts.join(".")), "").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_admin_api_is_off_unless_configured() {
    let (_up, sc) = start_with_admin(|_, _| {}).await;
    let (status, body) = admin(&sc, "GET", Some("anything"), "").await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("admin API is off"));
}

/// Class 13 (approvals): arguments a server's parser tells apart get different approvals —
/// `1` and `1.0`, keys in another case — and a number past ±2^53 (where two literals read as one
/// float) cannot be approved at all: refused with the reason, nothing forwarded. Key order and
/// escapes name the same call.
#[tokio::test]
async fn approvals_follow_what_the_server_would_read() {
    let (up, sc) = start().await;
    let first = clear(&sc, "agent", 1, json!({"n": 1})).await;
    assert_eq!(first["decision"], "approval_required");
    let id = first["approvalId"].as_str().unwrap().to_owned();
    for (args, same) in [
        (r#"{"n":1.0}"#, false),
        (r#"{"N":1}"#, false),
        (r#"{ "n" : 1 }"#, true),
    ] {
        let d = clear(&sc, "agent", 2, serde_json::from_str(args).unwrap()).await;
        assert_eq!(d["approvalId"] == json!(id), same, "{args}: {d}");
    }
    let d = clear(
        &sc,
        "agent",
        3,
        json!({"s": "\u{41}", "t": [1, {"b": 2, "a": 1}]}),
    )
    .await;
    let e = clear(
        &sc,
        "agent",
        4,
        serde_json::from_str(r#"{"t":[1,{"a":1,"b":2}],"s":"\u0041"}"#).unwrap(),
    )
    .await;
    assert_eq!(d["approvalId"], e["approvalId"], "key order and escapes");
    let before = up.requests();
    let raw = post_json(
        &sc.url(),
        &[("x-agent", "agent"), ("mcp-protocol-version", "2025-06-18")],
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"clear_session","arguments":{"n":18446744073709551617}}}"#,
    )
    .await;
    assert_eq!(raw.0, 400, "{}", String::from_utf8_lossy(&raw.2));
    let m = &messages(&raw)[0];
    assert_eq!(
        (m["id"].clone(), m["error"]["code"].clone()),
        (json!(9), json!(-32602))
    );
    assert!(
        m["error"]["message"]
            .as_str()
            .unwrap()
            .contains("beyond ±2^53"),
        "{m}"
    );
    assert_eq!(up.requests(), before, "nothing was forwarded");
}

/// An approval does not outlive the rules it was given under: a policy edit that denies the
/// call (here `deny_if` on its arguments) wins over the approval, which is not spent, and the
/// call runs on it once the edit is undone.
#[tokio::test]
async fn a_policy_change_that_denies_the_call_wins_over_its_approval() {
    let (up, sc) = start().await;
    let args = json!({"session_id": "x"});
    approved_once(&sc, "alice", &args).await;
    let denying = POLICY.replace(
        "clear_session: {action: require_approval}",
        r#"clear_session:
    action: require_approval
    deny_if: [{conditions: [{path: args.session_id, op: eq, value: x}], on_deny: "Session x is frozen"}]"#,
    );
    let reloads = async || {
        metric(&sc, "mcp_warden_policy_reloads_total", &["result=\"ok\""])
            .await
            .unwrap_or(0.0)
    };
    let before = reloads().await;
    std::fs::write(sc.dir.join("policy.yaml"), &denying).unwrap();
    wait_until("the edit loaded", async || reloads().await > before).await;
    let ran = up.server.calls.load(Ordering::SeqCst);
    let d = clear(&sc, "alice", 2, args.clone()).await;
    assert_eq!(
        (d["decision"].clone(), d["rule"].clone()),
        (json!("deny"), json!("tools.clear_session.deny_if[0]"))
    );
    assert_eq!(
        up.server.calls.load(Ordering::SeqCst),
        ran,
        "the approved call did not run"
    );
    let before = reloads().await;
    std::fs::write(sc.dir.join("policy.yaml"), POLICY).unwrap();
    wait_until("the edit undone", async || reloads().await > before).await;
    assert_eq!(
        clear(&sc, "alice", 3, args.clone()).await["decision"],
        "ran"
    );
    assert_eq!(
        up.server.calls.load(Ordering::SeqCst),
        ran + 1,
        "the use was kept for it"
    );
    assert_eq!(
        clear(&sc, "alice", 4, args.clone()).await["decision"],
        "approval_required"
    );
}
