//! The wire, with raw HTTP: what SDK clients never send must be refused, and refused requests
//! must never reach the server. Also batches, routing headers, streaming and Host rewriting.

use crate::common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::time::Duration;

async fn post(url: &str, headers: &[(&str, String)], body: &str) -> Raw {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post_json(url, &h, body).await
}

fn error_code(raw: &Raw) -> i64 {
    let v: Value = serde_json::from_slice(&raw.2).unwrap_or(Value::Null);
    v["error"]["code"].as_i64().unwrap_or(0)
}

/// What is sent (name, headers, body) and the expected HTTP status and JSON-RPC code.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16, i64);

#[tokio::test]
async fn what_cannot_be_read_with_certainty_is_refused_and_never_forwarded() {
    let up = upstream(false, true).await;
    let sc = sidecar(&up, POLICY).await;
    let url = sc.url();
    let deep = "[".repeat(70) + &"]".repeat(70);
    let json_ct = ("content-type", "application/json");
    let cases: Vec<Case> = vec![
        ("invalid JSON", vec![json_ct], "{\"jsonrpc\":\"2.0\",".into(), 400, -32700),
        ("duplicate key", vec![json_ct], r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_cell","name":"clear_session"}}"#.into(), 400, -32700),
        ("case-folded duplicate", vec![json_ct], r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_cell","Name":"clear_session"}}"#.into(), 400, -32700),
        ("NUL-stripped duplicate", vec![json_ct], r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_cell","name\u0000":"clear_session"}}"#.into(), 400, -32700),
        ("too deep", vec![json_ct], format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"run_cell","arguments":{{"x":{deep}}}}}}}"#), 400, -32700),
        ("not UTF-8 JSON content type", vec![("content-type", "text/plain")], call_v26(1, "run_cell", json!({}), json!({})), 415, -32700),
        ("no content type", vec![], call_v26(1, "run_cell", json!({}), json!({})), 415, -32700),
        ("latin-1 charset", vec![("content-type", "application/json; charset=iso-8859-1")], call_v26(1, "run_cell", json!({}), json!({})), 415, -32700),
        ("compressed", vec![json_ct, ("content-encoding", "gzip")], call_v26(1, "run_cell", json!({}), json!({})), 415, -32700),
        ("tools/call without id", vec![json_ct], r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"run_cell"}}"#.into(), 400, -32600),
        ("tools/call with id null", vec![json_ct], r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"run_cell"}}"#.into(), 400, -32600),
        ("method and result", vec![json_ct], r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","result":{},"params":{"name":"run_cell"}}"#.into(), 400, -32600),
        ("arguments not an object", vec![json_ct], r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_cell","arguments":"x"}}"#.into(), 400, -32602),
        ("name not a string", vec![json_ct], r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["run_cell"]}}"#.into(), 400, -32602),
        ("Mcp-Method disagrees", vec![json_ct, ("mcp-method", "tools/list")], call_v26(1, "run_cell", json!({}), json!({})), 400, -32020),
        ("Mcp-Name disagrees", vec![json_ct, ("mcp-method", "tools/call"), ("mcp-name", "notebook_read")], call_v26(1, "clear_session", json!({}), json!({})), 400, -32020),
        ("routing headers on a batch", vec![json_ct, ("mcp-method", "tools/call")], format!("[{}]", call_v26(1, "notebook_read", json!({}), json!({}))), 400, -32020),
        ("batch under 2025-06-18", vec![json_ct, ("mcp-protocol-version", "2025-06-18")], format!("[{}]", call_v26(1, "run_cell", json!({}), json!({}))), 400, -32600),
        ("an unknown protocol version header", vec![json_ct, ("mcp-protocol-version", "2099-01-01")], call_v26(1, "notebook_read", json!({}), json!({})), 400, -32600),
        ("a protocol version that is no date", vec![json_ct, ("mcp-protocol-version", "latest")], call_v26(1, "notebook_read", json!({}), json!({})), 400, -32600),
        ("an unknown protocol version in _meta", vec![json_ct], call_v26(1, "notebook_read", json!({}), json!({"io.modelcontextprotocol/protocolVersion": "2026-13-01"})), 400, -32600),
        ("an Mcp-Param header the tool does not declare", vec![json_ct, ("mcp-param-region", "x")], call_v26(1, "notebook_read", json!({}), json!({})), 400, -32020),
    ];
    for (what, headers, body, status, code) in cases {
        let raw = request("POST", &url, &headers, body).await;
        assert_eq!(raw.0, status, "{what}: {}", String::from_utf8_lossy(&raw.2));
        assert_eq!(
            error_code(&raw),
            code,
            "{what}: {}",
            String::from_utf8_lossy(&raw.2)
        );
    }
    assert_eq!(up.requests(), 0, "no refused request reached the server");
    // Calls refused as malformed count as `invalid` decisions.
    assert_eq!(
        metric(&sc, "mcp_warden_decisions_total", &["decision=\"invalid\""]).await,
        Some(4.0)
    );
}

#[tokio::test]
async fn bodies_over_the_limit_and_the_global_budget_are_refused() {
    let up = upstream(false, true).await;
    let dir = temp_dir("limits");
    let path = dir.join("p.yaml");
    std::fs::write(&path, POLICY).unwrap();
    let sc = sidecar_at(&up.url(), &path, |c| {
        c.max_body_bytes = 1024;
        c.inflight_body_bytes = 1024;
    })
    .await;
    let big = call_v26(1, "run_cell", json!({"code": "x".repeat(2000)}), json!({}));
    let raw = post(&sc.url(), &[], &big).await;
    assert_eq!((raw.0, error_code(&raw)), (413, -32600));

    // Hold 1000 bytes of the budget with a slow upload that sends them, then stalls.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let first = Bytes::from(format!("{{\"jsonrpc\":\"2.0\",\"x\":\"{}", "x".repeat(980)));
    let slow_body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        (Some(rx), Some(first)),
        |(rx, first)| async move {
            match (first, rx) {
                (Some(b), rx) => Some((
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(b)),
                    (rx, None),
                )),
                (None, Some(rx)) => {
                    let _ = rx.await;
                    None
                }
                _ => None,
            }
        },
    )));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(sc.url())
        .header("content-type", "application/json")
        .body(slow_body)
        .unwrap();
    let held = tokio::spawn(async move { client.request(req).await.map(|r| r.status().as_u16()) });
    let mut refused = 0;
    for _ in 0..50 {
        let raw = post(
            &sc.url(),
            &v26_headers("notebook_read"),
            &call_v26(2, "notebook_read", json!({}), json!({})),
        )
        .await;
        if raw.0 == 503 {
            refused += 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused, 1, "a request beyond the in-flight budget gets 503");
    drop(tx);
    let _ = held.await;
    let raw = post(
        &sc.url(),
        &v26_headers("notebook_read"),
        &call_v26(3, "notebook_read", json!({}), json!({})),
    )
    .await;
    assert_eq!(
        raw.0, 200,
        "the budget is released when the held request ends"
    );
}

#[tokio::test]
async fn a_batch_holding_a_denied_call_runs_nothing_and_answers_every_request() {
    let up = upstream(false, true).await;
    let sc = sidecar(&up, POLICY).await;
    let batch = format!(
        "[{},{},{}]",
        r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"notebook_read","arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#,
        r#"{"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"clear_session","arguments":{}}}"#
    );
    let raw = post(&sc.url(), &[], &batch).await;
    assert_eq!(raw.0, 200);
    let answers: Vec<Value> = serde_json::from_slice(&raw.2).unwrap();
    assert_eq!(answers.len(), 2, "notifications get no answer");
    assert_eq!(answers[0]["id"], "a");
    assert_eq!(answers[0]["error"]["code"], -32600);
    assert!(answers[0]["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("not run"));
    assert_eq!(answers[1]["id"], "b");
    assert_eq!(
        answers[1]["result"]["content"][0]["text"],
        "Blocked by default. Requires approval."
    );
    assert_eq!(up.requests(), 0);
    // An all-allowed batch is forwarded unchanged (what the server makes of it is its own business).
    let ok = format!(
        "[{}]",
        r#"{"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"notebook_read","arguments":{}}}"#
    );
    post(&sc.url(), &[], &ok).await;
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn limits_answer_retry_after_and_deny_as_error_uses_403_and_429() {
    let up = upstream(false, true).await;
    let policy = POLICY.replacen("default: deny", "default: deny\ndeny_as: error", 1);
    let sc = sidecar(&up, &policy).await;
    let auth = ("authorization", "Bearer t1".to_string());
    let mut h = v26_headers("run_cell");
    h.push(auth);
    for i in 0..5 {
        let raw = post(
            &sc.url(),
            &h,
            &call_v26(i, "run_cell", json!({}), json!({})),
        )
        .await;
        assert_eq!(raw.0, 200);
        assert_eq!(
            messages(&raw)[0]["result"]["content"][0]["text"],
            "run_cell ran with {}"
        );
    }
    let raw = post(
        &sc.url(),
        &h,
        &call_v26(9, "run_cell", json!({}), json!({})),
    )
    .await;
    let retry: u64 = raw
        .1
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((60..=63).contains(&retry), "{retry}");
    let v = &messages(&raw)[0];
    assert_eq!(v["error"]["code"], 429);
    assert_eq!(
        v["error"]["data"]["dev.mcpwarden/decision"]["retryAfterSeconds"],
        retry
    );
    let raw = post(
        &sc.url(),
        &v26_headers("clear_session"),
        &call_v26(10, "clear_session", json!({}), json!({})),
    )
    .await;
    assert_eq!(messages(&raw)[0]["error"]["code"], 403);
    assert!(raw.1.get("retry-after").is_none());
}

#[tokio::test]
async fn responses_stream_through_event_by_event() {
    let up = upstream(false, false).await;
    let sc = sidecar(&up, POLICY).await;
    // The server blocks until released: the progress event must arrive before that.
    let (body, _conn, seen) = start_slow_report(sc.addr).await;
    assert!(
        !seen.contains("slow_report ran"),
        "the result is not produced yet"
    );
    up.server.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("slow_report ran with {}"));
}

#[tokio::test]
async fn a_client_that_disconnects_closes_its_upstream_stream() {
    let up = upstream(false, false).await;
    let sc = sidecar(&up, POLICY).await;
    let (body, conn, _) = start_slow_report(sc.addr).await;
    assert!(!up
        .server
        .cancelled
        .load(std::sync::atomic::Ordering::SeqCst));
    // The agent goes away mid-call.
    drop(body);
    conn.abort();
    let cancelled = up.server.cancelled.clone();
    wait_until(
        "the server to see the client go away (the upstream stream must be closed)",
        async || cancelled.load(std::sync::atomic::Ordering::SeqCst),
    )
    .await;
}

#[tokio::test]
async fn host_is_rewritten_and_other_paths_are_refused_unless_passthrough() {
    let up = upstream(false, true).await;
    let dir = temp_dir("paths");
    let path = dir.join("p.yaml");
    std::fs::write(&path, POLICY).unwrap();
    let sc = sidecar_at(&up.url(), &path, |c| {
        c.passthrough_paths = vec!["/oauth/token".into()];
        c.allowed_hosts = vec!["agents.example.com".into()];
    })
    .await;
    let mut h: Vec<(&str, String)> = v26_headers("notebook_read");
    h.push(("host", "agents.example.com".into()));
    // Directly, the server refuses a foreign Host (DNS-rebinding protection)...
    let direct = post(
        &up.url(),
        &h,
        &call_v26(1, "notebook_read", json!({}), json!({})),
    )
    .await;
    assert_ne!(direct.0, 200);
    // ...through the sidecar, Host is the upstream's authority.
    let via = post(
        &sc.url(),
        &h,
        &call_v26(1, "notebook_read", json!({}), json!({})),
    )
    .await;
    assert_eq!(via.0, 200, "{}", String::from_utf8_lossy(&via.2));
    let before = up.requests();
    let raw = post(&format!("http://{}/other", sc.addr), &[], "{}").await;
    assert_eq!((raw.0, error_code(&raw)), (404, -32600));
    assert_eq!(up.requests(), before);
    post(
        &format!("http://{}/oauth/token", sc.addr),
        &[],
        "grant_type=x",
    )
    .await;
    assert_eq!(up.requests(), before + 1, "a passthrough path is forwarded");
}

#[tokio::test]
async fn a_limit_resets_after_its_window_and_header_identities_count_separately() {
    let up = upstream(false, true).await;
    let policy = r#"
version: "1"
default: deny
identity: {header: x-agent-id}
tools:
  run_cell:
    limits: [{counter: burst, window: 2s, max: 2, scope: grant}]
"#;
    let sc = sidecar(&up, policy).await;
    let call = |agent: &'static str, id: u64| {
        let url = sc.url();
        async move {
            let mut h = v26_headers("run_cell");
            h.push(("x-agent-id", agent.to_string()));
            let raw = post(&url, &h, &call_v26(id, "run_cell", json!({}), json!({}))).await;
            messages(&raw).remove(0)
        }
    };
    assert_eq!(call("alice", 1).await["result"]["isError"], false);
    assert_eq!(call("alice", 2).await["result"]["isError"], false);
    let limited = call("alice", 3).await;
    assert_eq!(limited["result"]["isError"], true);
    assert_eq!(
        call("bob", 4).await["result"]["isError"],
        false,
        "another identity, another counter"
    );
    // Wait as long as the denial says, then the window has moved on.
    let wait = limited["result"]["_meta"]["dev.mcpwarden/decision"]["retryAfterSeconds"]
        .as_u64()
        .unwrap();
    assert!((1..=3).contains(&wait), "{wait}");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        call("alice", 5).await["result"]["isError"],
        false,
        "the limit reset"
    );
}

#[tokio::test]
async fn the_get_stream_forwards_last_event_id_and_rewrites_host() {
    let up = upstream(true, false).await;
    let sc = sidecar(&up, POLICY).await;
    // Open a session, then resume its GET stream from an event id.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let raw = post(&sc.url(), &[], &init.to_string()).await;
    let session = raw.1["mcp-session-id"].to_str().unwrap().to_owned();
    let stream = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/mcp")
        .header("host", "localhost:9480")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .header("last-event-id", "0/7")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let _resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let seen = up.last_headers.lock().unwrap().clone();
    assert_eq!(
        seen["last-event-id"], "0/7",
        "Last-Event-ID reaches the server"
    );
    assert_eq!(seen["mcp-session-id"], session.as_str());
    assert_eq!(
        seen["host"],
        up.addr.to_string().as_str(),
        "Host is the upstream's authority"
    );
}
