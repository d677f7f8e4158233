//! The official Rust SDK (rmcp) as client and server, with the sidecar between them: every
//! rule acts on a real MCP session, over JSON and SSE replies, stateful and stateless.

use crate::common;

use common::*;
use rmcp::model::CallToolRequestParams;
use serde_json::{json, Value};

fn call(name: &'static str, args: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name);
    p.arguments = args.as_object().cloned();
    p
}

fn text_of(r: &rmcp::model::CallToolResult) -> String {
    serde_json::to_value(&r.content).unwrap()[0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Runs the whole rule set through an rmcp client against one server mode.
async fn rules_act(stateful: bool, json_replies: bool) {
    let up = upstream(stateful, json_replies).await;
    let sc = sidecar(&up, POLICY).await;
    let c = rmcp_client(&sc.url(), "token-a").await;

    // tools/list: hidden, always-denied and unnamed tools are gone, pagination is kept.
    let tools = rmcp_tool_names(&c).await;
    assert_eq!(
        tools,
        vec!["run_cell", "notebook_read", "write_file", "slow_report"]
    );

    // Allowed: the server runs it.
    let r = c
        .call_tool(call("notebook_read", json!({"path": "/workspace/a.ipynb"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false));
    assert!(
        text_of(&r).starts_with("notebook_read ran with"),
        "{}",
        text_of(&r)
    );

    // Denied: the reason reaches the client as a tool error; the server never sees the call.
    let before = up.server.calls.load(std::sync::atomic::Ordering::SeqCst);
    let r = c.call_tool(call("clear_session", json!({}))).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(text_of(&r), "Blocked by default. Requires approval.");
    let meta = serde_json::to_value(&r.meta).unwrap();
    assert_eq!(
        meta["dev.mcpwarden/decision"],
        json!({"decision": "deny", "tool": "clear_session", "rule": "tools.clear_session.deny_if[0]", "policy": "policy",
               // An opaque bearer token appears only as its hash.
               "identity": mcp_warden::sidecar::sha256_hex(b"token-a")})
    );
    let r = c.call_tool(call("delete_all", json!({}))).await.unwrap();
    assert_eq!(
        text_of(&r),
        "Destructive tools are disabled in this namespace"
    );
    let r = c.call_tool(call("debug_dump", json!({}))).await.unwrap();
    assert_eq!(text_of(&r), "Unknown tool: debug_dump");
    let r = c.call_tool(call("unlisted_tool", json!({}))).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(
        up.server.calls.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "no denied call reached the server"
    );

    // Arguments: require and deny_if, with a numeric string a lenient server would coerce.
    let r = c
        .call_tool(call(
            "write_file",
            json!({"path": "/etc/passwd", "size": 1}),
        ))
        .await
        .unwrap();
    assert_eq!(
        text_of(&r),
        "argument validation failed: args.path must be a path within /workspace"
    );
    let r = c
        .call_tool(call(
            "write_file",
            json!({"path": "/workspace/big", "size": "5000"}),
        ))
        .await
        .unwrap();
    assert_eq!(text_of(&r), "Files over 1000 bytes need approval");
    let r = c
        .call_tool(call(
            "write_file",
            json!({"path": "/workspace/ok", "size": "10"}),
        ))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false));

    // Limits: 5 per minute per caller; a second caller has its own counter.
    for i in 0..5 {
        let r = c
            .call_tool(call("run_cell", json!({"code": i})))
            .await
            .unwrap();
        assert_eq!(r.is_error, Some(false), "call {i}");
    }
    let r = c
        .call_tool(call("run_cell", json!({"code": 5})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(
        text_of(&r)
            .starts_with("Rate limit exceeded: run_cell_rate allows 5 calls per minute (grant)"),
        "{}",
        text_of(&r)
    );
    let meta = serde_json::to_value(&r.meta).unwrap();
    assert_eq!(meta["dev.mcpwarden/decision"]["counter"], "run_cell_rate");
    assert!(
        meta["dev.mcpwarden/decision"]["retryAfterSeconds"]
            .as_u64()
            .unwrap()
            >= 60
    );
    let other = rmcp_client(&sc.url(), "token-b").await;
    let r = other
        .call_tool(call("run_cell", json!({"code": 0})))
        .await
        .unwrap();
    assert_eq!(
        r.is_error,
        Some(false),
        "another identity has its own counter"
    );

    // The metrics saw all of it.
    assert_eq!(
        metric(
            &sc,
            "mcp_warden_decisions_total",
            &["tool=\"run_cell\"", "decision=\"allow\""]
        )
        .await,
        Some(6.0)
    );
    assert_eq!(
        metric(
            &sc,
            "mcp_warden_decisions_total",
            &["tool=\"run_cell\"", "decision=\"rate_limited\""]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &sc,
            "mcp_warden_decisions_total",
            &["tool=\"_other\"", "decision=\"deny\""]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &sc,
            "mcp_warden_limit_hits_total",
            &[
                "counter=\"run_cell_rate\"",
                "window=\"minute\"",
                "scope=\"grant\""
            ]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(&sc, "mcp_warden_counter_keys", &["policy=\"policy\""]).await,
        Some(2.0)
    );
    c.cancel().await.unwrap();
    other.cancel().await.unwrap();
}

#[tokio::test]
async fn stateful_server_with_sse_replies() {
    rules_act(true, false).await;
}

#[tokio::test]
async fn stateless_server_with_json_replies() {
    rules_act(false, true).await;
}

#[tokio::test]
async fn stateless_server_with_sse_replies() {
    rules_act(false, false).await;
}
