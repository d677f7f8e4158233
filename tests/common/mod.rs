//! Shared harness: a real rmcp (official Rust SDK) MCP server, the sidecar in front of it in
//! this process, and a raw HTTP helper for what SDK clients would never send.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use mcp_warden::metrics::SidecarMetrics;
use mcp_warden::sidecar::{self, Config, Listeners, State};
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// The test policy, in the seed's style (shared with the Python peer tests).
pub const POLICY: &str = include_str!("../fixtures/notebook-policy.yaml");

/// Every tool the server offers, in page order (two pages).
pub const SERVER_TOOLS: &[&str] = &[
    "run_cell",
    "notebook_read",
    "clear_session",
    "debug_dump",
    "write_file",
    "delete_all",
    "slow_report",
    "unlisted_tool",
];

/// A notebook-like MCP server. `slow_report` sends a progress event and then waits for
/// `release` before finishing, so tests can see streaming without timing.
#[derive(Clone)]
pub struct Notebook {
    pub release: Arc<Notify>,
    pub calls: Arc<AtomicUsize>,
    /// Set when a `slow_report` call was cancelled because its client went away.
    pub cancelled: Arc<std::sync::atomic::AtomicBool>,
    /// What each call that ran carried besides its name and arguments: its `requestState` and
    /// the keys of its `inputResponses` (the server's own multi round-trip questions).
    pub carried: Arc<std::sync::Mutex<Vec<Carried>>>,
}

/// A call's `requestState` and the keys of its `inputResponses`.
pub type Carried = (Option<String>, Vec<String>);

/// The key of the server's own question (`write_file` with `{"server_asks": true}`).
pub const SERVER_QUESTION: &str = "server/overwrite";

fn tool(name: &'static str) -> Tool {
    let schema = json!({"type": "object", "properties": {}, "additionalProperties": true});
    Tool::new(
        name,
        format!("the {name} tool"),
        Arc::new(schema.as_object().unwrap().clone()),
    )
}

impl ServerHandler for Notebook {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let second = request.and_then(|r| r.cursor).as_deref() == Some("page-2");
        let (page, next) = if second {
            (&SERVER_TOOLS[4..], None)
        } else {
            (&SERVER_TOOLS[..4], Some("page-2".to_string()))
        };
        Ok(ListToolsResult {
            tools: page.iter().map(|n| tool(n)).collect(),
            next_cursor: next,
            ..Default::default()
        })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let keys = request
            .input_responses
            .as_ref()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        self.carried
            .lock()
            .unwrap()
            .push((request.request_state.clone(), keys));
        let asks = request
            .arguments
            .as_ref()
            .is_some_and(|a| a.get("server_asks") == Some(&json!(true)));
        if request
            .arguments
            .as_ref()
            .is_some_and(|a| a.get("as_task") == Some(&json!(true)))
        {
            // A task (2026-07-28 tasks extension): polled with tasks/get.
            let n = self.calls.load(Ordering::SeqCst);
            let task = json!({"resultType": "task", "taskId": format!("task-{n}"),
                "status": "working", "createdAt": "2026-12-06T00:00:00Z",
                "lastUpdatedAt": "2026-12-06T00:00:00Z"});
            return Ok(CallToolResponse::Task(
                serde_json::from_value(task).unwrap(),
            ));
        }
        if asks && request.input_responses.is_none() {
            // The server's own question (2026-07-28 multi round-trip request).
            let n = self.calls.load(Ordering::SeqCst);
            let ask = json!({
                "resultType": "input_required",
                "inputRequests": {SERVER_QUESTION: {"method": "elicitation/create", "params": {
                    "mode": "form", "message": "Overwrite the file?",
                    "requestedSchema": {"type": "object", "properties": {}}}}},
                "requestState": format!("server-state-{n}")
            });
            return Ok(CallToolResponse::InputRequired(
                serde_json::from_value(ask).unwrap(),
            ));
        }
        if request.name == "slow_report" {
            if let Some(token) = context.meta.get_progress_token() {
                let _ = context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token, 1.0).with_message("started"),
                    )
                    .await;
            }
            tokio::select! {
                _ = self.release.notified() => {}
                _ = context.ct.cancelled() => {
                    self.cancelled.store(true, Ordering::SeqCst);
                    return Err(ErrorData::internal_error("cancelled", None));
                }
            }
        }
        let args = serde_json::to_string(&request.arguments.unwrap_or_default()).unwrap();
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "{} ran with {args}",
            request.name
        ))])
        .into())
    }
}

/// Whether a request is the sidecar's own listing of the server's tools (not a client's, so
/// the servers here do not count it).
pub fn from_sidecar_listing<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        == Some(mcp_warden::tools::client::USER_AGENT)
}

/// A running upstream server.
pub struct Upstream {
    pub addr: SocketAddr,
    pub server: Notebook,
    /// Every HTTP request the server received.
    pub requests: Arc<AtomicUsize>,
    /// The headers of the last request the server received.
    pub last_headers: Arc<std::sync::Mutex<http::HeaderMap>>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Starts the rmcp server: `stateful` keeps sessions; `json` prefers JSON replies over SSE.
pub async fn upstream(stateful: bool, json: bool) -> Upstream {
    let server = Notebook {
        release: Arc::new(Notify::new()),
        calls: Arc::new(AtomicUsize::new(0)),
        cancelled: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        carried: Arc::default(),
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(stateful)
        .with_json_response(json)
        .with_sse_keep_alive(None);
    let s = server.clone();
    let service: StreamableHttpService<Notebook, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(s.clone()), Default::default(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let last_headers = Arc::new(std::sync::Mutex::new(http::HeaderMap::new()));
    let counted = requests.clone();
    let seen = last_headers.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = service.clone();
            let counted = counted.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    if !from_sidecar_listing(&req) {
                        counted.fetch_add(1, Ordering::SeqCst);
                        *seen.lock().unwrap() = req.headers().clone();
                    }
                    let mut svc = svc.clone();
                    async move { tower::Service::call(&mut svc, req).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    Upstream {
        addr,
        server,
        requests,
        last_headers,
    }
}

/// The sidecar running in this process.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub state: Arc<State>,
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Sidecar {
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
    /// Starts the drain (as SIGTERM would).
    pub fn terminate(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mcp-warden-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Starts a sidecar for `upstream_url` with `policy_path`, adjusting the config with `tune`.
pub async fn sidecar_at(
    upstream_url: &str,
    policy_path: &Path,
    tune: impl FnOnce(&mut Config),
) -> Sidecar {
    let mut cfg = Config::new(upstream_url.parse().unwrap(), policy_path.to_path_buf());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = "127.0.0.1:0".parse().unwrap();
    cfg.drain_delay = Duration::from_millis(0);
    cfg.reload_interval = Duration::from_millis(50);
    tune(&mut cfg);
    let listeners = Listeners::bind(&cfg).await.unwrap();
    let addr = listeners.proxy.local_addr().unwrap();
    let admin = listeners.admin.local_addr().unwrap();
    let state = State::new(cfg, SidecarMetrics::new()).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let st = state.clone();
    let done = tokio::spawn(sidecar::run(st, listeners, async move {
        let _ = rx.await;
    }));
    let dir = policy_path.parent().unwrap().to_path_buf();
    let sc = Sidecar {
        addr,
        admin,
        state,
        dir,
        stop: Some(tx),
        done: Some(done),
    };
    // Wait until the first load has happened (ready, or known to be unready).
    for _ in 0..100 {
        if get(&sc.admin_url("/livez")).await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sc
}

/// A sidecar with the test policy written to a fresh directory.
pub async fn sidecar(upstream: &Upstream, policy: &str) -> Sidecar {
    let dir = temp_dir("sidecar");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    sidecar_at(&upstream.url(), &path, |_| {}).await
}

pub type Raw = (u16, http::HeaderMap, Bytes);

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A raw HTTP request; the whole response body is read.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Raw {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client()
        .request(b.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    (parts.status.as_u16(), parts.headers, bytes)
}

pub async fn get(url: &str) -> Raw {
    request("GET", url, &[], Bytes::new()).await
}

/// A JSON POST with the headers a streamable-HTTP client sends.
pub async fn post_json(url: &str, extra: &[(&str, &str)], body: &str) -> Raw {
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    h.extend_from_slice(extra);
    request("POST", url, &h, body.to_owned()).await
}

/// `tool` called with `args` as `agent` (the `x-agent` header) through `sc`: the answer's
/// message (the request must be answered 200).
pub async fn call_as(sc: &Sidecar, agent: &str, tool: &str, args: Value, id: u64) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": tool, "arguments": args}});
    let raw = post_json(
        &sc.url(),
        &[("x-agent", agent), ("mcp-protocol-version", "2025-06-18")],
        &body.to_string(),
    )
    .await;
    assert_eq!(raw.0, 200, "{}", String::from_utf8_lossy(&raw.2));
    messages(&raw).swap_remove(0)
}

/// The decision record of an answer `m` that refused its call, or `{"decision": "ran"}`.
pub fn decision_of(m: &Value) -> Value {
    match m["result"]["isError"].as_bool() {
        Some(true) => m["result"]["_meta"]["dev.mcpwarden/decision"].clone(),
        _ => json!({"decision": "ran"}),
    }
}

/// A `tools/call` body as a 2026-07-28 client sends it (sessionless, metadata in `_meta`), with
/// `extra_meta` merged into `_meta` (e.g. a progress token).
pub fn call_v26(id: u64, name: &str, args: Value, extra_meta: Value) -> String {
    let mut meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}});
    if let (Some(m), Value::Object(extra)) = (meta.as_object_mut(), extra_meta) {
        m.extend(extra);
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": name, "arguments": args, "_meta": meta}})
    .to_string()
}

/// The headers a 2026-07-28 client sends with a `tools/call`.
pub fn v26_headers(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("mcp-protocol-version", "2026-07-28".into()),
        ("mcp-method", "tools/call".into()),
        ("mcp-name", name.into()),
    ]
}

/// Polls `f` until it holds (at most 5 s).
pub async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Starts the blocking `slow_report` call on its own connection and returns the open response
/// body once the first event (the progress notification) has arrived, with the connection task.
pub async fn start_slow_report(
    addr: SocketAddr,
) -> (hyper::body::Incoming, tokio::task::JoinHandle<()>, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::post("/mcp")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in v26_headers("slow_report") {
        req = req.header(k, v);
    }
    let body = call_v26(1, "slow_report", json!({}), json!({"progressToken": "p1"}));
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = resp.into_body();
    let mut seen = String::new();
    while !seen.contains("notifications/progress") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the first event arrived while the server was still working")
            .unwrap()
            .unwrap();
        if let Ok(d) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&d));
        }
    }
    std::mem::forget(send);
    (body, conn, seen)
}

/// The JSON-RPC messages in a response body, whether JSON or SSE.
pub fn messages(raw: &Raw) -> Vec<Value> {
    let ct = raw
        .1
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("text/event-stream") {
        let text = String::from_utf8_lossy(&raw.2);
        text.split("\n\n")
            .filter_map(|ev| {
                let data: Vec<&str> = ev
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                serde_json::from_str(&data.join("\n")).ok()
            })
            .collect()
    } else {
        match serde_json::from_slice(&raw.2) {
            Ok(Value::Array(items)) => items,
            Ok(v) => vec![v],
            Err(_) => vec![],
        }
    }
}

/// The value of one metric series from `/metrics`, matched by name and label substrings.
pub async fn metric(sc: &Sidecar, name: &str, labels: &[&str]) -> Option<f64> {
    let (_, _, body) = get(&sc.admin_url("/metrics")).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l.as_bytes().get(name.len()) == Some(&b'{')
                    || l.as_bytes().get(name.len()) == Some(&b' '))
        })
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// What a stub upstream answers: status, headers, and the body as chunks sent one by one.
#[derive(Clone)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub chunks: Vec<Bytes>,
}

/// A plain HTTP server that answers every request with `answer(method, path)`, recording the
/// request count. For what a real MCP server would not send (unreadable lists, odd framing).
pub async fn stub_upstream(
    answer: impl Fn(&str, &str) -> Canned + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        if !from_sidecar_listing(&req) {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        let c = answer(req.method().as_str(), req.uri().path());
                        async move {
                            let frames = c.chunks.into_iter().map(|b| {
                                Ok::<_, std::convert::Infallible>(http_body::Frame::data(b))
                            });
                            let body =
                                http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                            let mut r = http::Response::new(body);
                            *r.status_mut() = http::StatusCode::from_u16(c.status).unwrap();
                            for (k, v) in c.headers {
                                r.headers_mut().insert(k, v.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, count)
}

/// An SSE answer carrying `data` as one event.
pub fn sse_answer(data: &str) -> Canned {
    Canned {
        status: 200,
        headers: vec![("content-type", "text/event-stream".into())],
        chunks: vec![Bytes::from(format!("event: message\ndata: {data}\n\n"))],
    }
}

/// An rmcp (official Rust SDK) client through `url`, sending `token` as its bearer token.
pub async fn rmcp_client(
    url: &str,
    token: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;
    let cfg =
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    ().serve(StreamableHttpClientTransport::from_config(cfg))
        .await
        .expect("client connects through the sidecar")
}

/// The names of every tool an rmcp client is shown, all pages, in order.
pub async fn rmcp_tool_names(
    c: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
) -> Vec<String> {
    c.list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}
