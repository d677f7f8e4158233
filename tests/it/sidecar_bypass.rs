//! The ways around the gate an attacker's probe found, one class per test: each would pass (the
//! hidden tool listed, the body forwarded, the client locked out) without the fix it names.

use crate::common;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIST: &str = r#"{"jsonrpc":"2.0","id":0,"result":{"tools":[{"name":"notebook_read"},{"name":"debug_dump"}]}}"#;

fn error_code(raw: &Raw) -> i64 {
    messages(raw)
        .first()
        .and_then(|v| v["error"]["code"].as_i64())
        .unwrap_or(0)
}

async fn stub_sidecar(
    answer: impl Fn(&str, &str) -> Canned + Send + Sync + 'static,
    tune: impl FnOnce(&mut mcp_warden::sidecar::Config),
) -> (Sidecar, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (addr, count) = stub_upstream(answer).await;
    let dir = temp_dir("bypass");
    let path = dir.join("p.yaml");
    std::fs::write(&path, POLICY).unwrap();
    let sc = sidecar_at(&format!("http://{addr}/mcp"), &path, tune).await;
    (sc, count)
}

fn list_request(id: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#)
}

/// Class 1: ids a server echoes in another form could not be matched to their request.
#[tokio::test]
async fn ids_a_server_would_echo_differently_are_refused_and_every_list_is_filtered() {
    let (sc, count) = stub_sidecar(|_, _| sse_answer(LIST), |_| {}).await;
    for id in ["-0", "9007199254740993", "123456789012345678901234567890"] {
        let raw = post_json(&sc.url(), &[], &list_request(id)).await;
        assert_eq!((raw.0, error_code(&raw)), (400, -32600), "id {id}");
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "refused ids never reach the server"
    );
    // A server answering under another id than the request's is filtered all the same.
    let raw = post_json(&sc.url(), &[], &list_request("\"mine\"")).await;
    assert_eq!(raw.0, 200);
    let body = String::from_utf8_lossy(&raw.2);
    assert!(body.contains("notebook_read"), "{body}");
    assert!(!body.contains("debug_dump"), "{body}");
}

/// Class 2: a GET stream (a `Last-Event-ID` replay, a server-initiated stream) carrying a list.
#[tokio::test]
async fn tool_lists_on_get_streams_are_filtered() {
    let (sc, _) = stub_sidecar(
        |method, _| match method {
            "GET" => Canned {
                status: 200,
                headers: vec![("content-type", "text/event-stream".into())],
                chunks: vec![
                    Bytes::from_static(b"id: 1\ndata: \n\n"),
                    Bytes::from(format!("id: 2\nevent: message\ndata: {LIST}\n\n")),
                ],
            },
            _ => sse_answer("{}"),
        },
        |_| {},
    )
    .await;
    let raw = request(
        "GET",
        &sc.url(),
        &[("accept", "text/event-stream"), ("last-event-id", "1")],
        Bytes::new(),
    )
    .await;
    let body = String::from_utf8_lossy(&raw.2);
    assert!(
        body.contains("id: 1\ndata: \n\n"),
        "the priming event passes: {body}"
    );
    assert!(body.contains("notebook_read"), "{body}");
    assert!(
        !body.contains("debug_dump"),
        "the replayed list is filtered: {body}"
    );
}

/// Class 7 (and 8): what the filter cannot read is refused on SSE as on JSON, and a rewritten
/// stream loses the upstream's Content-Length.
#[tokio::test]
async fn unreadable_lists_are_refused_on_sse_as_on_json() {
    let cases: Vec<(&str, Canned)> = vec![
        (
            "lone surrogate",
            sse_answer(&LIST.replace("debug_dump", "debug_dump\\ud800")),
        ),
        (
            "number out of range",
            sse_answer(&LIST.replace("\"id\":0", "\"id\":0,\"n\":1e400")),
        ),
        ("byte-order mark", sse_answer(&format!("\u{feff}{LIST}"))),
        (
            "case-folded key",
            sse_answer(&LIST.replace("\"tools\"", "\"Tools\"")),
        ),
        (
            "duplicate key",
            sse_answer(&LIST.replace("\"tools\":[", "\"tools\":[],\"tools\":[")),
        ),
        (
            "json, lone surrogate",
            Canned {
                status: 200,
                headers: vec![("content-type", "application/json".into())],
                chunks: vec![Bytes::from(LIST.replace("debug_dump", "debug_dump\\ud800"))],
            },
        ),
    ];
    for (what, canned) in cases {
        let (sc, _) = stub_sidecar(move |_, _| canned.clone(), |_| {}).await;
        let raw = post_json(&sc.url(), &[], &list_request("7")).await;
        let body = String::from_utf8_lossy(&raw.2);
        assert!(!body.contains("debug_dump"), "{what}: {body}");
        let msgs = messages(&raw);
        assert_eq!(msgs.len(), 1, "{what}: {body}");
        assert_eq!(msgs[0]["error"]["code"], -32603, "{what}: {body}");
        assert!(
            msgs[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("could not filter"),
            "{what}: {body}"
        );
    }
    let gzip = Canned {
        status: 200,
        headers: vec![
            ("content-type", "text/event-stream".into()),
            ("content-encoding", "gzip".into()),
        ],
        chunks: vec![Bytes::from_static(b"\x1f\x8b\x08\x00")],
    };
    let (sc, _) = stub_sidecar(move |_, _| gzip.clone(), |_| {}).await;
    let raw = post_json(&sc.url(), &[], &list_request("7")).await;
    assert_eq!(
        (raw.0, error_code(&raw)),
        (502, -32603),
        "a compressed stream"
    );
    // A filtered SSE answer with the upstream's Content-Length still arrives whole.
    let framed = Canned {
        status: 200,
        headers: vec![
            ("content-type", "text/event-stream".into()),
            ("content-length", format!("{}", LIST.len() + 23)),
        ],
        chunks: vec![Bytes::from(format!("event: message\ndata: {LIST}\n\n"))],
    };
    let (sc, _) = stub_sidecar(move |_, _| framed.clone(), |_| {}).await;
    let raw = post_json(&sc.url(), &[], &list_request("7")).await;
    assert!(raw
        .1
        .get("content-length")
        .is_none_or(|v| v.to_str().unwrap() == raw.2.len().to_string()));
    assert_eq!(
        messages(&raw)[0]["result"]["tools"],
        json!([{"name": "notebook_read"}])
    );
}

/// Class 3: a body on a method the gate does not decide.
#[tokio::test]
async fn bodies_on_methods_the_gate_does_not_decide_are_refused() {
    let (sc, count) = stub_sidecar(
        |_, _| sse_answer("{}"),
        |c| {
            c.passthrough_paths = vec!["/oauth/token".into()];
        },
    )
    .await;
    let call = call_v26(1, "unlisted_tool", json!({}), json!({}));
    for method in ["GET", "DELETE", "OPTIONS"] {
        for path in ["/mcp", "/messages/?session_id=abc", "/oauth/token"] {
            let url = format!("http://{}{path}", sc.addr);
            let raw = request(
                method,
                &url,
                &[("content-type", "application/json")],
                call.clone(),
            )
            .await;
            assert_eq!((raw.0, error_code(&raw)), (400, -32600), "{method} {path}");
        }
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "no body reached the server"
    );
    // Without a body they are forwarded as before.
    let raw = request("DELETE", &sc.url(), &[], Bytes::new()).await;
    assert_eq!(raw.0, 200);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// Class 4: DNS rebinding. Rewriting `Host` hides it from the server, so the sidecar checks.
#[tokio::test]
async fn hostile_host_and_origin_are_refused() {
    let up = upstream(false, true).await;
    let sc = sidecar(&up, POLICY).await;
    let body = call_v26(1, "notebook_read", json!({}), json!({}));
    let mut h = v26_headers("notebook_read");
    h.push(("content-type", "application/json".into()));
    h.push(("accept", "application/json, text/event-stream".into()));
    let send = |extra: Vec<(&'static str, &'static str)>| {
        let mut h: Vec<(&str, String)> = h.clone();
        h.extend(extra.into_iter().map(|(k, v)| (k, v.to_string())));
        let url = sc.url();
        let body = body.clone();
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request("POST", &url, &h, body).await
        }
    };
    for bad in [
        vec![("host", "evil.example.com")],
        vec![("origin", "http://evil.example.com")],
        vec![
            ("host", "evil.example.com"),
            ("origin", "http://evil.example.com"),
        ],
    ] {
        let raw = send(bad.clone()).await;
        assert_eq!(raw.0, 403, "{bad:?}: {}", String::from_utf8_lossy(&raw.2));
    }
    assert_eq!(up.requests(), 0, "nothing refused reached the server");
    let raw = send(vec![("origin", "http://localhost:3000")]).await;
    assert_eq!(raw.0, 200, "{}", String::from_utf8_lossy(&raw.2));
}

/// Class 5: a redirect built from the rewritten Host sends the client to the upstream.
#[tokio::test]
async fn redirects_to_the_upstream_point_back_at_the_sidecar() {
    let dir = temp_dir("redirect");
    let path = dir.join("p.yaml");
    std::fs::write(&path, POLICY).unwrap();
    // The server redirects /mcp to /mcp/ with an absolute URL built from the Host it received.
    let own = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let seen = own.clone();
    let (up2, _) = stub_upstream(move |_, p| Canned {
        status: 307,
        headers: vec![(
            "location",
            format!(
                "http://{}{p}{}",
                seen.get().unwrap(),
                if p.ends_with('/') { "" } else { "/" }
            ),
        )],
        chunks: vec![],
    })
    .await;
    own.set(up2.to_string()).unwrap();
    let sc = sidecar_at(&format!("http://{up2}/mcp"), &path, |_| {}).await;
    let raw = post_json(&sc.url(), &[], &list_request("1")).await;
    assert_eq!(raw.0, 307);
    let host = sc.addr.to_string();
    assert_eq!(raw.1["location"], format!("http://{host}/mcp/").as_str());
    // The path it points at is gated like the MCP path.
    let mut h = v26_headers("clear_session");
    h.push(("content-type", "application/json".into()));
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let raw = request(
        "POST",
        &format!("http://{host}/mcp/"),
        &h,
        call_v26(2, "clear_session", json!({}), json!({})),
    )
    .await;
    assert_eq!(
        messages(&raw)[0]["result"]["isError"],
        true,
        "denied on /mcp/ too"
    );
}

/// Class 6: clients that stall cannot lock others out.
#[tokio::test]
async fn stalled_clients_do_not_lock_out_one_that_behaves() {
    let up = upstream(false, true).await;
    let dir = temp_dir("slowloris");
    let path = dir.join("p.yaml");
    std::fs::write(&path, POLICY).unwrap();
    let sc = sidecar_at(&up.url(), &path, |c| {
        c.limits.max_connections = 32;
        c.limits.header_timeout = Duration::from_secs(1);
        c.body_timeout = Duration::from_secs(1);
        c.inflight_body_bytes = 16 << 20;
    })
    .await;
    // 16 chunked bodies that each declare nothing, send one chunk, and stall...
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
        s.write_all(
            b"POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
              transfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n",
        )
        .await
        .unwrap();
        stalled.push(s);
    }
    // (Once inside a request, a connection is not the one evicted at the cap.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...and 100 connections that never finish their headers.
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
        s.write_all(b"POST /mcp HTTP/1.1\r\nhost: loc")
            .await
            .unwrap();
        stalled.push(s);
    }
    let raw = post(&sc, "notebook_read", 1).await;
    assert_eq!(
        raw.0,
        200,
        "served while others stall: {}",
        String::from_utf8_lossy(&raw.2)
    );
    // The stalled bodies are answered 408 and their connections closed within the timeout.
    let mut first = stalled.remove(0);
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .expect("the stalled body is answered")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
    let raw = post(&sc, "notebook_read", 2).await;
    assert_eq!(raw.0, 200);
}

async fn post(sc: &Sidecar, tool: &str, id: u64) -> Raw {
    let mut h = v26_headers(tool);
    h.push(("content-type", "application/json".into()));
    h.push(("accept", "application/json, text/event-stream".into()));
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request(
        "POST",
        &sc.url(),
        &h,
        call_v26(id, tool, json!({}), json!({})),
    )
    .await
}

/// Class 9: envelope keys in another case, which Go's encoding/json would read.
#[tokio::test]
async fn envelope_keys_in_another_case_are_refused() {
    let up = upstream(false, true).await;
    let policy = "version: \"1\"\ndefault: allow\ntools:\n  run_cell:\n    deny_if:\n      - conditions: [{path: args.code, op: contains, value: rm}]\n";
    let sc = sidecar(&up, policy).await;
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_cell","Arguments":{"code":"rm -rf /"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_cell","argumentſ":{"code":"rm -rf /"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"run_cell"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","Params":{"name":"run_cell"}}"#,
        r#"{"jsonrpc":"2.0","ID":1,"method":"tools/call","params":{"name":"run_cell"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"run_cell"}}"#,
    ] {
        let raw = post_json(&sc.url(), &[], body).await;
        assert_eq!(raw.0, 400, "{body}: {}", String::from_utf8_lossy(&raw.2));
        assert!(
            String::from_utf8_lossy(&raw.2).contains("ignoring case"),
            "{body}"
        );
    }
    assert_eq!(up.requests(), 0);
}

/// Class 11: counter keys cost the same however long the session id; absurd ids are refused.
#[tokio::test]
async fn session_ids_are_bounded() {
    let up = upstream(false, true).await;
    let sc = sidecar(&up, POLICY).await;
    let body = call_v26(1, "notebook_read", json!({}), json!({}));
    let long = "a".repeat(64 << 10);
    for (what, id) in [
        ("64 KiB", long.as_str()),
        ("not visible ASCII", "a b"),
        ("too long", &long[..257]),
    ] {
        let raw = post_json(&sc.url(), &[("mcp-session-id", id)], &body).await;
        assert_eq!(raw.0, 400, "{what}");
        assert_eq!(
            raw.1.get("connection").map(|v| v.to_str().unwrap()),
            Some("close"),
            "{what}: refused before its body was read, the connection cannot be reused"
        );
    }
    let raw = request(
        "POST",
        &sc.url(),
        &[
            ("content-type", "application/json"),
            ("mcp-session-id", "a"),
            ("mcp-session-id", "b"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(raw.0, 400, "two session ids");
    assert_eq!(up.requests(), 0);
    let policy =
        "version: \"1\"\ndefault: deny\nidentity: {header: x-agent}\ntools:\n  notebook_read: {}\n";
    let sc = sidecar(&up, policy).await;
    let raw = request(
        "POST",
        &sc.url(),
        &[
            ("content-type", "application/json"),
            ("x-agent", "a"),
            ("x-agent", "b"),
        ],
        body,
    )
    .await;
    assert_eq!(raw.0, 400, "an identity header sent twice");
    let v: Value = serde_json::from_slice(&raw.2).unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("more than once"));
}

/// `scope: session` on a server that issues no sessions: a fresh invented id per call used to
/// make a fresh counter. An id the server never issued now counts under the caller.
#[tokio::test]
async fn invented_session_ids_do_not_escape_a_session_limit() {
    let (addr, _) =
        stub_upstream(|_, _| sse_answer(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#))
            .await;
    let dir = temp_dir("session-limit");
    let path = dir.join("p.yaml");
    std::fs::write(
        &path,
        "version: \"1\"\ndefault: deny\ntools:\n  run_cell:\n    limits: [{counter: c, window: minute, max: 2, scope: session}]\n",
    )
    .unwrap();
    let sc = sidecar_at(&format!("http://{addr}/mcp"), &path, |_| {}).await;
    let mut outcomes = Vec::new();
    for i in 0..3 {
        let sid = format!("invented-{i}");
        let raw = post_json(
            &sc.url(),
            &[("mcp-session-id", sid.as_str())],
            &call_v26(i, "run_cell", json!({}), json!({})),
        )
        .await;
        let m = messages(&raw);
        outcomes.push(
            m[0]["result"]["_meta"]["dev.mcpwarden/decision"]["decision"]
                .as_str()
                .unwrap_or("forwarded")
                .to_owned(),
        );
    }
    assert_eq!(outcomes, ["forwarded", "forwarded", "rate_limited"]);
}

/// The policy's `transport` (in a cluster: the Services that select the pod, rendered by the
/// controller) adds to the accepted hosts and origins, and a reload changes them.
#[tokio::test]
async fn the_policy_names_more_hosts_and_origins() {
    let up = upstream(false, true).await;
    let policy = |hosts: &str| {
        format!("{POLICY}\ntransport:\n  allowed_hosts: [{hosts}]\n  allowed_origins: [\"https://console.example.com\"]\n")
    };
    let sc = sidecar(&up, &policy("jupyter.notebooks.svc")).await;
    let send = |host: &'static str, origin: Option<&'static str>| {
        let url = sc.url();
        async move {
            let mut h = vec![
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("host", host),
            ];
            if let Some(o) = origin {
                h.push(("origin", o));
            }
            request("POST", &url, &h, list_request("1")).await.0
        }
    };
    assert_eq!(send("jupyter.notebooks.svc:8080", None).await, 200);
    assert_eq!(
        send("jupyter.notebooks.svc", Some("https://console.example.com")).await,
        200
    );
    assert_eq!(
        send(
            "jupyter.notebooks.svc",
            Some("http://jupyter.notebooks.svc")
        )
        .await,
        200
    );
    assert_eq!(send("evil.example.com", None).await, 403);
    assert_eq!(
        send("jupyter.notebooks.svc", Some("https://evil.example.com")).await,
        403
    );
    std::fs::write(sc.dir.join("policy.yaml"), policy("mcp.example.com")).unwrap();
    let url = sc.url();
    wait_until("the reload to change the hosts", async || {
        let h = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("host", "mcp.example.com"),
        ];
        request("POST", &url, &h, list_request("2")).await.0 == 200
    })
    .await;
    assert_eq!(send("jupyter.notebooks.svc", None).await, 403);
}

/// An event over the size limit on the legacy SSE stream: the request it answers gets an error
/// with its own id that says what happened (not a tool-list error with `id: null`).
#[tokio::test]
async fn an_oversized_answer_on_the_legacy_stream_answers_its_request() {
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":5,"result":{{"content":[{{"type":"text","text":"{}"}}]}}}}"#,
        "x".repeat(17 << 20)
    );
    let stream = Canned {
        status: 200,
        headers: vec![("content-type", "text/event-stream".into())],
        chunks: vec![
            Bytes::from("event: endpoint\ndata: /messages?session_id=1\n\n"),
            Bytes::from(format!("event: message\ndata: {big}\n\n")),
        ],
    };
    let (sc, _) = stub_sidecar(move |_, _| stream.clone(), |_| {}).await;
    let raw = get(&sc.url().replace("/mcp", "/sse")).await;
    let body = String::from_utf8_lossy(&raw.2);
    assert!(
        body.starts_with("event: endpoint\ndata: /messages?session_id=1\n\n"),
        "{}",
        &body[..200.min(body.len())]
    );
    let msgs = messages(&raw);
    assert_eq!(msgs.len(), 1, "{body}");
    assert_eq!(msgs[0]["id"], 5, "the request the event answered: {body}");
    let message = msgs[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("over the 16777216-byte limit"),
        "{message}"
    );
    assert!(!message.contains("tool list"), "{message}");
}
