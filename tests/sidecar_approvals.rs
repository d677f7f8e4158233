//! Approvals through the sidecar without a cluster (`--approvals FILE`): a call that needs one is
//! refused with its approval id, an approval of exactly that call lets it run as many times as the
//! approval allows, and nothing else — other arguments, another caller — runs on it.

mod common;

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

fn call(id: u64, args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "clear_session", "arguments": args}})
    .to_string()
}

/// The decision record of a call as `agent` (and whether the server ran it).
async fn clear(sc: &Sidecar, agent: &str, id: u64, args: Value) -> Value {
    let raw = post_json(
        &sc.url(),
        &[("x-agent", agent), ("mcp-protocol-version", "2025-06-18")],
        &call(id, args),
    )
    .await;
    assert_eq!(raw.0, 200, "{}", String::from_utf8_lossy(&raw.2));
    let m = &messages(&raw)[0];
    match m["result"]["isError"].as_bool() {
        Some(true) => m["result"]["_meta"]["dev.mcpwarden/decision"].clone(),
        _ => json!({"decision": "ran"}),
    }
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
    let id = clear(&sc, "alice", 1, args.clone()).await["approvalId"]
        .as_str()
        .unwrap()
        .to_owned();
    approve(&sc, &[(&id, 1)]);
    wait_until("the approval is loaded", async || {
        sc.state.approvals.pending().is_empty()
    })
    .await;
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
