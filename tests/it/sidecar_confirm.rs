//! Approval by the user at the MCP client (`approval: {by: user}`), through the real binary's
//! sidecar with the official Rust SDK (rmcp) as client and server: a 2026-07-28 client is asked
//! with `input_required` and its retry runs the call exactly once; a client before 2026-07-28
//! that declared elicitation is asked on the call's stream; a declined, replayed, forged or
//! moved answer never reaches the server; the server's own questions pass through untouched and
//! the call they complete counts once. Also the 2026-07-28 duties on lists: a list that
//! differs by caller is marked `cacheScope: "private"`.

use crate::common;

use common::*;
use rmcp::model::*;
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

const POLICY: &str = r#"
version: "1"
default: allow
tools:
  clear_session:
    approval: {by: user}
  delete_all:
    approval: {by: user, fallback: deny}
  write_file:
    limits:
      - {counter: writes, window: minute, max: 2}
"#;

/// The user at the client: answers every question with `says`, and remembers what was shown.
#[derive(Clone)]
struct User {
    says: ElicitationAction,
    shown: Arc<Mutex<Vec<String>>>,
    elicits: bool,
    version: &'static str,
}

impl User {
    fn new(says: ElicitationAction, version: &'static str) -> User {
        User {
            says,
            shown: Arc::default(),
            elicits: true,
            version,
        }
    }
}

impl ClientHandler for User {
    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let shown = serde_json::to_value(&request).unwrap();
        self.shown
            .lock()
            .unwrap()
            .push(shown["message"].as_str().unwrap_or("").to_owned());
        let mut r = ElicitResult::new(self.says.clone());
        if self.says == ElicitationAction::Accept {
            r = r.with_content(json!({"confirm": true}));
        }
        Ok(r)
    }

    fn get_info(&self) -> ClientConfig {
        let caps = match self.elicits {
            true => json!({"elicitation": {"form": {}}}),
            false => json!({}),
        };
        serde_json::from_value(json!({
            "protocolVersion": self.version,
            "capabilities": caps,
            "clientInfo": {"name": "confirm-test", "version": "1"}
        }))
        .unwrap()
    }
}

async fn connect(sc: &Sidecar, user: User) -> RunningService<RoleClient, User> {
    let cfg = StreamableHttpClientTransportConfig::with_uri(sc.url());
    let transport = StreamableHttpClientTransport::from_config(cfg);
    if user.version == "2026-07-28" {
        use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
        let mode = ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        };
        return user.serve_with_lifecycle(transport, mode).await.unwrap();
    }
    user.serve(transport).await.unwrap()
}

fn call(name: &'static str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name).with_arguments(args.as_object().unwrap().clone())
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

async fn start(stateful: bool) -> (Upstream, Sidecar) {
    let up = upstream(stateful, !stateful).await;
    let sc = sidecar(&up, POLICY).await;
    (up, sc)
}

async fn approvals(sc: &Sidecar, result: &str) -> f64 {
    metric(
        sc,
        "mcp_warden_approvals_total",
        &[&format!("result=\"{result}\"")],
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_2026_client_whose_user_accepts_runs_the_call_exactly_once() {
    let (up, sc) = start(false).await;
    let user = User::new(ElicitationAction::Accept, "2026-07-28");
    let shown = user.shown.clone();
    let c = connect(&sc, user).await;
    let r = c
        .call_tool(call("clear_session", json!({"session": "s-1"})))
        .await
        .unwrap();
    assert_eq!(text(&r), r#"clear_session ran with {"session":"s-1"}"#);
    assert_eq!(
        up.server.calls.load(Ordering::SeqCst),
        1,
        "the server ran it once"
    );
    let shown = shown.lock().unwrap().clone();
    assert_eq!(shown.len(), 1, "asked once: {shown:?}");
    assert!(
        shown[0].contains("clear_session") && shown[0].contains("\"s-1\""),
        "{shown:?}"
    );
    // The server never saw the sidecar's own fields.
    assert_eq!(
        up.server.carried.lock().unwrap().clone(),
        vec![(None, vec![])]
    );
    assert_eq!(approvals(&sc, "user_asked").await, 1.0);
    assert_eq!(approvals(&sc, "user_confirmed").await, 1.0);
    // The next identical call asks again: an answer runs one call.
    let r = c
        .call_tool(call("clear_session", json!({"session": "s-1"})))
        .await
        .unwrap();
    assert!(text(&r).contains("ran with"));
    assert_eq!(up.server.calls.load(Ordering::SeqCst), 2);
    assert_eq!(approvals(&sc, "user_asked").await, 2.0);
}

#[tokio::test]
async fn a_declined_or_dismissed_call_never_reaches_the_server() {
    let (up, sc) = start(false).await;
    for (says, result, words) in [
        (
            ElicitationAction::Decline,
            "user_declined",
            "declined this call",
        ),
        (
            ElicitationAction::Cancel,
            "user_cancelled",
            "without deciding",
        ),
    ] {
        let c = connect(&sc, User::new(says, "2026-07-28")).await;
        let r = c.call_tool(call("clear_session", json!({}))).await.unwrap();
        assert_eq!(r.is_error, Some(true));
        assert!(text(&r).contains(words), "{}", text(&r));
        assert_eq!(approvals(&sc, result).await, 1.0);
    }
    assert_eq!(up.server.calls.load(Ordering::SeqCst), 0);
}

/// The raw retry of a 2026-07-28 call carrying `state` and an answer: a client written from the
/// spec for what no released client sends (a replayed, changed or moved `requestState`).
fn retry(id: u64, tool: &str, args: Value, state: &str, action: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": tool, "arguments": args, "requestState": state,
        "inputResponses": {"mcp-warden/confirm": {"action": action, "content": {"confirm": true}}},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}
    }})
    .to_string()
}

async fn post_v26(sc: &Sidecar, tool: &str, body: &str) -> Value {
    let headers = v26_headers(tool);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let raw = post_json(&sc.url(), &headers, body).await;
    let mut m = messages(&raw);
    assert_eq!(m.len(), 1, "{raw:?}");
    m.remove(0)
}

#[tokio::test]
async fn a_replayed_forged_or_moved_answer_is_refused_and_nothing_runs_twice() {
    let (up, sc) = start(false).await;
    let first = call_v26(
        1,
        "clear_session",
        json!({"s": 1}),
        json!({
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}
        }),
    );
    let asked = post_v26(&sc, "clear_session", &first).await;
    assert_eq!(asked["result"]["resultType"], "input_required", "{asked}");
    let q = &asked["result"]["inputRequests"]["mcp-warden/confirm"];
    assert_eq!(q["method"], "elicitation/create");
    assert_eq!(q["params"]["mode"], "form");
    let state = asked["result"]["requestState"].as_str().unwrap().to_owned();
    assert!(!state.contains("clear_session"), "sealed, not readable");
    // The same answer for other arguments: refused, not forwarded.
    let moved = post_v26(
        &sc,
        "clear_session",
        &retry(2, "clear_session", json!({"s": 2}), &state, "accept"),
    )
    .await;
    assert_eq!(moved["error"]["code"], -32602, "{moved}");
    assert!(moved["error"]["message"]
        .as_str()
        .unwrap()
        .contains("another call"));
    // A changed state: refused.
    let mut forged = state.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let f = post_v26(
        &sc,
        "clear_session",
        &retry(3, "clear_session", json!({"s": 1}), &forged, "accept"),
    )
    .await;
    assert_eq!(f["error"]["code"], -32602, "{f}");
    assert_eq!(up.server.calls.load(Ordering::SeqCst), 0);
    // The genuine answer runs it once; the same answer again does not.
    let ok = post_v26(
        &sc,
        "clear_session",
        &retry(4, "clear_session", json!({"s": 1}), &state, "accept"),
    )
    .await;
    assert!(
        ok["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("ran with"),
        "{ok}"
    );
    let again = post_v26(
        &sc,
        "clear_session",
        &retry(5, "clear_session", json!({"s": 1}), &state, "accept"),
    )
    .await;
    assert_eq!(again["result"]["isError"], true, "{again}");
    assert!(again["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("already taken"));
    assert_eq!(
        up.server.calls.load(Ordering::SeqCst),
        1,
        "ran exactly once"
    );
    assert_eq!(approvals(&sc, "user_replayed").await, 1.0);
    // A sidecar of another policy (another key) does not take it.
    let (_up2, other) = start(false).await;
    let elsewhere = post_v26(
        &other,
        "clear_session",
        &retry(6, "clear_session", json!({"s": 1}), &state, "accept"),
    )
    .await;
    assert_eq!(elsewhere["error"]["code"], -32602, "{elsewhere}");
}

#[tokio::test]
async fn a_client_that_cannot_be_asked_gets_the_approver_flow_or_a_denial() {
    let (up, sc) = start(false).await;
    let mut user = User::new(ElicitationAction::Accept, "2026-07-28");
    user.elicits = false;
    let c = connect(&sc, user).await;
    let r = c.call_tool(call("clear_session", json!({}))).await.unwrap();
    let t = text(&r);
    assert_eq!(r.is_error, Some(true));
    assert!(
        t.contains("cannot be asked") && t.contains("The request is recorded"),
        "{t}"
    );
    assert_eq!(
        sc.state.approvals.pending().len(),
        1,
        "an approver can approve it"
    );
    let r = c.call_tool(call("delete_all", json!({}))).await.unwrap();
    let t = text(&r);
    assert!(
        t.contains("cannot be asked") && t.contains("did not run"),
        "{t}"
    );
    assert_eq!(
        sc.state.approvals.pending().len(),
        1,
        "fallback: deny records nothing"
    );
    for tool in ["clear_session", "delete_all"] {
        let n = metric(
            &sc,
            "mcp_warden_approvals_total",
            &[&format!("tool=\"{tool}\""), "result=\"user_unreachable\""],
        )
        .await;
        assert_eq!(n, Some(1.0), "{tool}");
    }
    assert_eq!(up.server.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_older_client_that_declared_elicitation_is_asked_on_the_calls_stream() {
    let (up, sc) = start(true).await;
    let user = User::new(ElicitationAction::Accept, "2025-11-25");
    let shown = user.shown.clone();
    let c = connect(&sc, user).await;
    let r = c
        .call_tool(call("clear_session", json!({"n": 7})))
        .await
        .unwrap();
    assert_eq!(text(&r), r#"clear_session ran with {"n":7}"#);
    assert_eq!(shown.lock().unwrap().len(), 1);
    assert_eq!(up.server.calls.load(Ordering::SeqCst), 1);
    let no = connect(&sc, User::new(ElicitationAction::Decline, "2025-11-25")).await;
    let r = no
        .call_tool(call("clear_session", json!({"n": 8})))
        .await
        .unwrap();
    assert!(text(&r).contains("declined"), "{}", text(&r));
    assert_eq!(
        up.server.calls.load(Ordering::SeqCst),
        1,
        "the declined call never ran"
    );
    // Without the capability: the approver flow.
    let mut mute = User::new(ElicitationAction::Accept, "2025-11-25");
    mute.elicits = false;
    let mute = connect(&sc, mute).await;
    let r = mute
        .call_tool(call("clear_session", json!({"n": 9})))
        .await
        .unwrap();
    assert!(text(&r).contains("cannot be asked"), "{}", text(&r));
    assert_eq!(up.server.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_servers_own_question_passes_through_and_its_call_counts_once() {
    let (up, sc) = start(false).await;
    let c = connect(&sc, User::new(ElicitationAction::Accept, "2026-07-28")).await;
    // Two calls, each asked by the server and retried: four legs, two calls, limit 2.
    for n in 0..2 {
        let r = c
            .call_tool(call("write_file", json!({"server_asks": true, "n": n})))
            .await
            .unwrap();
        assert!(text(&r).contains("write_file ran"), "{}", text(&r));
    }
    let carried = up.server.carried.lock().unwrap().clone();
    assert_eq!(carried.len(), 4, "{carried:?}");
    assert_eq!(carried[0], (None, vec![]));
    // The retry carried the server's own state and answer, untouched.
    assert_eq!(
        carried[1],
        (
            Some("server-state-1".into()),
            vec![SERVER_QUESTION.to_owned()]
        )
    );
    assert_eq!(
        metric(&sc, "mcp_warden_continuations_total", &[]).await,
        Some(2.0)
    );
    let allowed = metric(
        &sc,
        "mcp_warden_decisions_total",
        &["tool=\"write_file\"", "decision=\"allow\""],
    )
    .await;
    assert_eq!(allowed, Some(2.0), "each call decided once");
    // The third call is over the limit: the retries did not use it up early.
    let r = c
        .call_tool(call("write_file", json!({"n": 3})))
        .await
        .unwrap();
    assert!(
        text(&r).contains("rate limit") || text(&r).to_lowercase().contains("limit"),
        "{}",
        text(&r)
    );
    // A retry with a state the server never gave this call is a new call (counted).
    let forged = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "write_file", "arguments": {"n": 4}, "requestState": "server-state-1",
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
    .to_string();
    let m = post_v26(&sc, "write_file", &forged).await;
    assert_eq!(
        m["result"]["isError"], true,
        "limited like any new call: {m}"
    );
}

/// A 2026-07-28 `tools/list` a shared cache may keep (`cacheScope: "public"`), from a server
/// that lists `read` and `clear`.
fn public_list(_: &str, _: &str) -> Canned {
    let body = json!({"jsonrpc": "2.0", "id": 1, "result": {
        "tools": [{"name": "read", "inputSchema": {"type": "object"}},
                  {"name": "clear", "inputSchema": {"type": "object"}}],
        "ttlMs": 60000, "cacheScope": "public", "resultType": "complete"}});
    Canned {
        status: 200,
        headers: vec![("content-type", "application/json".into())],
        chunks: vec![body.to_string().into()],
    }
}

#[tokio::test]
async fn a_tool_list_that_differs_by_caller_is_marked_private() {
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/list"),
    ];
    for (policy, scope, names) in [
        // The same list for every caller: the server's scope stands.
        ("version: \"1\"\ndefault: allow\n", "public", vec!["read", "clear"]),
        (
            "version: \"1\"\ndefault: allow\ntools:\n  clear: {action: deny}\n",
            "public",
            vec!["read"],
        ),
        // A grant shows some callers more: one caller's list is not another's.
        (
            "version: \"1\"\ndefault: allow\nidentity: {header: x-agent}\ntools:\n  clear: {action: deny}\ngrants:\n  - subjects: [ops]\n    tools:\n      clear: {}\n",
            "private",
            vec!["read"],
        ),
    ] {
        let (addr, _) = stub_upstream(public_list).await;
        let dir = temp_dir("cache-scope");
        std::fs::write(dir.join("p.yaml"), policy).unwrap();
        let sc = sidecar_at(&format!("http://{addr}/mcp"), &dir.join("p.yaml"), |_| {}).await;
        let mut h = headers.to_vec();
        if policy.contains("x-agent") {
            h.push(("x-agent", "dev"));
        }
        let m = messages(&post_json(&sc.url(), &h, list).await).remove(0);
        assert_eq!(m["result"]["cacheScope"], scope, "{policy}: {m}");
        let shown: Vec<&str> = m["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(shown, names, "{policy}");
        assert_eq!(m["result"]["ttlMs"], 60000);
    }
}

#[tokio::test]
async fn a_task_is_decided_when_it_is_made_and_only_its_caller_acts_on_it() {
    let up = upstream(false, true).await;
    let policy = "version: \"1\"\ndefault: allow\nidentity: {header: x-agent}\n";
    let sc = sidecar(&up, policy).await;
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities":
            {"extensions": {"io.modelcontextprotocol/tasks": {}}}});
    let post = async |agent: &str, method: &str, name: Option<&str>, params: Value| {
        let mut params = params;
        params["_meta"] = meta.clone();
        let body = json!({"jsonrpc": "2.0", "id": 5, "method": method, "params": params});
        let mut h = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
            ("x-agent", agent),
        ];
        if let Some(n) = name {
            h.push(("mcp-name", n));
        }
        let raw = post_json(&sc.url(), &h, &body.to_string()).await;
        (raw.0, messages(&raw).remove(0))
    };
    let (_, made) = post(
        "alice",
        "tools/call",
        Some("slow_report"),
        json!({"name": "slow_report", "arguments": {"as_task": true}}),
    )
    .await;
    assert_eq!(made["result"]["resultType"], "task", "{made}");
    let task = made["result"]["taskId"].as_str().unwrap().to_owned();
    let before = up.requests();
    // Another caller cannot poll, answer for, or cancel it; an unknown task is not driven.
    for (agent, id) in [("mallory", task.as_str()), ("alice", "task-999")] {
        for method in ["tasks/get", "tasks/update", "tasks/cancel"] {
            let (status, m) = post(
                agent,
                method,
                None,
                json!({"taskId": id, "inputResponses": {}}),
            )
            .await;
            assert_eq!(status, 400, "{agent} {method}: {m}");
            let why = m["error"]["message"].as_str().unwrap();
            assert!(
                why.contains("another caller") || why.contains("not created through"),
                "{why}"
            );
        }
    }
    // Mcp-Name of a task request is its taskId.
    let (status, m) = post(
        "alice",
        "tasks/get",
        Some("task-999"),
        json!({"taskId": task}),
    )
    .await;
    assert_eq!((status, &m["error"]["code"]), (400, &json!(-32020)), "{m}");
    assert_eq!(up.requests(), before, "nothing forwarded");
    // Its caller's poll reaches the server.
    let (status, m) = post("alice", "tasks/get", Some(&task), json!({"taskId": task})).await;
    assert_ne!(status, 400, "{m}");
    assert_eq!(up.requests(), before + 1, "forwarded: {m}");
}

/// The user sent to an approval page: approves the call there (the approvals file, as an
/// approver's decision is rendered) and tells the client to go on.
#[derive(Clone)]
struct AtThePage {
    sc_state: Arc<mcp_warden::sidecar::State>,
    approvals: std::path::PathBuf,
    urls: Arc<Mutex<Vec<String>>>,
    approve: bool,
}

impl ClientHandler for AtThePage {
    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let v = serde_json::to_value(&request).unwrap();
        let url = v["url"].as_str().unwrap_or_default().to_owned();
        self.urls.lock().unwrap().push(url.clone());
        if self.approve {
            let id = url.rsplit('/').next().unwrap();
            let list = json!({"approvals": [{"id": id, "uses": 1, "expires_at": u64::MAX / 2}]});
            std::fs::write(&self.approvals, list.to_string()).unwrap();
            for _ in 0..200 {
                if self.sc_state.approvals.pending().is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        Ok(ElicitResult::new(ElicitationAction::Accept))
    }

    fn get_info(&self) -> ClientConfig {
        serde_json::from_value(json!({
            "protocolVersion": "2026-07-28",
            "capabilities": {"elicitation": {"url": {}}},
            "clientInfo": {"name": "confirm-test", "version": "1"}
        }))
        .unwrap()
    }
}

#[tokio::test]
async fn a_policy_with_a_url_sends_the_user_to_the_approval_page() {
    let up = upstream(false, true).await;
    let dir = temp_dir("confirm-url");
    let policy = "version: \"1\"\ndefault: allow\ntools:\n  clear_session:\n    approval: {by: user, url: \"https://approvals.example/{approvalId}\"}\n";
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    let approvals = dir.join("approvals.json");
    let a = approvals.clone();
    let sc = sidecar_at(&up.url(), &dir.join("policy.yaml"), |c| {
        c.approvals_path = Some(a)
    })
    .await;
    for approve in [false, true] {
        let page = AtThePage {
            sc_state: sc.state.clone(),
            approvals: approvals.clone(),
            urls: Arc::default(),
            approve,
        };
        let urls = page.urls.clone();
        let cfg = StreamableHttpClientTransportConfig::with_uri(sc.url());
        use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
        let mode = ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        };
        let c = page
            .serve_with_lifecycle(StreamableHttpClientTransport::from_config(cfg), mode)
            .await
            .unwrap();
        let r = c
            .call_tool(call("clear_session", json!({"approve": approve})))
            .await
            .unwrap();
        let urls = urls.lock().unwrap().clone();
        assert_eq!(urls.len(), 1, "sent to the page once: {urls:?}");
        assert!(
            urls[0].starts_with("https://approvals.example/"),
            "{urls:?}"
        );
        match approve {
            // Back without an approval: the approver flow says it is not approved yet.
            false => {
                assert_eq!(r.is_error, Some(true));
                assert!(text(&r).contains("has not approved it"), "{}", text(&r));
                assert_eq!(up.server.calls.load(Ordering::SeqCst), 0);
            }
            true => {
                assert!(text(&r).contains("clear_session ran"), "{}", text(&r));
                assert_eq!(up.server.calls.load(Ordering::SeqCst), 1);
            }
        }
    }
}
