//! An MCP client that does one thing: list the server's tools, all pages.
//!
//! It speaks what the sidecar forwards: streamable HTTP with a session (`initialize`,
//! `notifications/initialized`, `tools/list` with `Mcp-Session-Id`, then `DELETE`), stateless
//! servers (no session id), the sessionless 2026-07-28 revision (`tools/list` with the protocol
//! version in `_meta` and headers, when `initialize` is refused), and the legacy HTTP+SSE
//! transport (`GET /sse`, its `endpoint` event, answers on the stream) when the MCP path does not
//! take POSTs. Replies may be JSON or an event stream. Everything it reads is bounded.

use crate::mcp::sse::{self, Splitter};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::time::Duration;

/// The revision asked for in `initialize` (servers answer with the one they speak).
pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// The sessionless revision, tried when `initialize` is refused.
pub const SESSIONLESS_VERSION: &str = "2026-07-28";
/// How the lister introduces itself: servers (and their logs) can tell its requests from agents'.
pub const USER_AGENT: &str = concat!("mcp-warden/", env!("CARGO_PKG_VERSION"), " (tool listing)");
/// Largest reply read (one page of tools, or one event).
const MAX_REPLY: usize = 8 << 20;
/// Most pages followed.
const MAX_PAGES: usize = 64;

/// Why the tools could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cannot reach {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("{what} answered HTTP {status}")]
    Status { what: String, status: u16 },
    #[error("{what}: the server answered with error {code}: {message}")]
    Rpc {
        what: String,
        code: i64,
        message: String,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("listing tools took longer than {0:?}")]
    Timeout(Duration),
}

impl ListError {
    /// The MCP path takes no POSTs: maybe a legacy server.
    fn no_such_endpoint(&self) -> bool {
        matches!(self, ListError::Status { status, .. } if *status == 404 || *status == 405)
    }

    /// `initialize` was refused: maybe a sessionless (2026-07-28) server.
    fn refused_initialize(&self) -> bool {
        matches!(self, ListError::Rpc { .. })
            || matches!(self, ListError::Status { status, .. } if *status == 400)
    }
}

/// What a listing found.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The tool definitions, as the server sent them.
    pub tools: Vec<Value>,
    /// `streamable-http`, `sessionless` or `sse`.
    pub transport: &'static str,
    /// The protocol revision used.
    pub protocol_version: String,
    /// `serverInfo` from `initialize`, when there was one.
    pub server_info: Option<Value>,
}

/// Lists the tools of one MCP server.
pub struct Lister<C = HttpConnector> {
    http: Client<C, Full<Bytes>>,
    url: Uri,
    /// Where the legacy transport's event stream is, on the same host.
    sse_path: String,
    timeout: Duration,
}

impl Lister<HttpConnector> {
    /// A plain-HTTP lister (the sidecar's, for the server in its pod).
    pub fn http(url: Uri, sse_path: &str) -> Lister<HttpConnector> {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        c.set_connect_timeout(Some(Duration::from_secs(5)));
        Lister::with_connector(c, url, sse_path)
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

impl Lister<Https> {
    /// An HTTP or HTTPS lister trusting the system's roots (`check --server` on a laptop).
    pub fn https(url: Uri, sse_path: &str) -> Lister<Https> {
        Lister::with_connector(crate::serve::https_connector(false), url, sse_path)
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> Lister<C> {
    fn with_connector(c: C, url: Uri, sse_path: &str) -> Lister<C> {
        Lister {
            http: Client::builder(TokioExecutor::new()).build(c),
            url,
            sse_path: sse_path.to_owned(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Lists every tool, trying the transports in turn.
    pub async fn list(&self) -> Result<Listing, ListError> {
        tokio::time::timeout(self.timeout, self.list_any())
            .await
            .map_err(|_| ListError::Timeout(self.timeout))?
    }

    async fn list_any(&self) -> Result<Listing, ListError> {
        match self.streamable().await {
            Err(e) if e.no_such_endpoint() => self.legacy().await.map_err(|le| {
                ListError::Protocol(format!(
                    "{e}; the legacy transport at {} failed too: {le}",
                    self.sse_path
                ))
            }),
            Err(e) if e.refused_initialize() => self.sessionless().await.map_err(|se| {
                ListError::Protocol(format!(
                    "{e}; a sessionless ({SESSIONLESS_VERSION}) tools/list failed too: {se}"
                ))
            }),
            other => other,
        }
    }

    async fn streamable(&self) -> Result<Listing, ListError> {
        let (init, headers) = self
            .post(&self.url, &initialize(), &[], "initialize")
            .await?;
        let init = result_of(init, "initialize")?;
        let version = init
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(PROTOCOL_VERSION)
            .to_owned();
        let session = headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut extra: Vec<(&str, String)> = vec![("mcp-protocol-version", version.clone())];
        if let Some(s) = &session {
            extra.push(("mcp-session-id", s.clone()));
        }
        self.notify(&self.url, &extra).await?;
        let tools = self
            .pages(|cursor| {
                let body = request(2, "tools/list", cursor.map(|c| json!({"cursor": c})));
                let extra = extra.clone();
                async move {
                    let (v, _) = self.post(&self.url, &body, &extra, "tools/list").await?;
                    result_of(v, "tools/list")
                }
            })
            .await;
        if session.is_some() {
            // Best effort: the server may keep sessions it is not told to end.
            let mut req = self.request(Method::DELETE, &self.url, &extra, Bytes::new());
            req.headers_mut().remove(header::CONTENT_TYPE);
            let _ = self.http.request(req).await;
        }
        Ok(Listing {
            tools: tools?,
            transport: "streamable-http",
            protocol_version: version,
            server_info: init.get("serverInfo").cloned(),
        })
    }

    async fn sessionless(&self) -> Result<Listing, ListError> {
        let extra = vec![
            ("mcp-protocol-version", SESSIONLESS_VERSION.to_owned()),
            ("mcp-method", "tools/list".to_owned()),
        ];
        let tools = self
            .pages(|cursor| {
                let mut params = json!({"_meta": {
                    "io.modelcontextprotocol/protocolVersion": SESSIONLESS_VERSION,
                    "io.modelcontextprotocol/clientInfo": client_info(),
                    "io.modelcontextprotocol/clientCapabilities": {}}});
                if let Some(c) = cursor {
                    params["cursor"] = json!(c);
                }
                let body = request(2, "tools/list", Some(params));
                let extra = extra.clone();
                async move {
                    let (v, _) = self.post(&self.url, &body, &extra, "tools/list").await?;
                    result_of(v, "tools/list")
                }
            })
            .await?;
        Ok(Listing {
            tools,
            transport: "sessionless",
            protocol_version: SESSIONLESS_VERSION.into(),
            server_info: None,
        })
    }

    async fn legacy(&self) -> Result<Listing, ListError> {
        let sse_url = self.same_host(&self.sse_path)?;
        let mut req = self.request(Method::GET, &sse_url, &[], Bytes::new());
        req.headers_mut().insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );

        req.headers_mut().remove(header::CONTENT_TYPE);
        let resp = self.send(req, "GET of the event stream").await?;
        let mut stream = Events::new(resp.into_body());
        let endpoint = loop {
            let event = stream.next().await?;
            if sse::event_name(&event).as_deref() == Some("endpoint") {
                let data = sse::event_data(&event).unwrap_or_default();
                break String::from_utf8_lossy(&data).trim().to_owned();
            }
        };
        let endpoint = self.same_host(&endpoint)?;
        self.post_accepted(&endpoint, &initialize()).await?;
        let init = result_of(stream.reply(1).await?, "initialize")?;
        let version = init
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or("2024-11-05")
            .to_owned();
        self.notify(&endpoint, &[]).await?;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0..MAX_PAGES {
            let id = 2 + page as u64;
            let body = request(
                id,
                "tools/list",
                cursor.as_ref().map(|c| json!({"cursor": c})),
            );
            self.post_accepted(&endpoint, &body).await?;
            let result = result_of(stream.reply(id).await?, "tools/list")?;
            cursor = take_page(result, &mut tools)?;
            if cursor.is_none() {
                return Ok(Listing {
                    tools,
                    transport: "sse",
                    protocol_version: version,
                    server_info: init.get("serverInfo").cloned(),
                });
            }
        }
        Err(too_many_pages())
    }

    /// Follows `nextCursor` through every page.
    async fn pages<'a, F, Fut>(&'a self, mut page: F) -> Result<Vec<Value>, ListError>
    where
        F: FnMut(Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Value, ListError>> + 'a,
    {
        let mut tools = Vec::new();
        let mut cursor = None;
        for _ in 0..MAX_PAGES {
            cursor = take_page(page(cursor).await?, &mut tools)?;
            if cursor.is_none() {
                return Ok(tools);
            }
        }
        Err(too_many_pages())
    }

    /// `notifications/initialized`.
    async fn notify(&self, url: &Uri, extra: &[(&str, String)]) -> Result<(), ListError> {
        let body = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let req = self.request(Method::POST, url, extra, Bytes::from(body.to_string()));
        let resp = self.send(req, "notifications/initialized").await?;
        let _ = resp.into_body().collect().await;
        Ok(())
    }

    /// A POST whose answer travels on the legacy event stream.
    async fn post_accepted(&self, url: &Uri, body: &Value) -> Result<(), ListError> {
        let req = self.request(Method::POST, url, &[], Bytes::from(body.to_string()));
        let what = body["method"].as_str().unwrap_or("message").to_owned();
        let resp = self.send(req, &what).await?;
        let _ = resp.into_body().collect().await;
        Ok(())
    }

    /// POSTs one request and reads its answer, JSON or an event stream.
    async fn post(
        &self,
        url: &Uri,
        body: &Value,
        extra: &[(&str, String)],
        what: &str,
    ) -> Result<(Value, http::HeaderMap), ListError> {
        let req = self.request(Method::POST, url, extra, Bytes::from(body.to_string()));
        let resp = self.send(req, what).await?;
        let id = body["id"].as_u64().unwrap_or(0);
        let headers = resp.headers().clone();
        let is_sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let value = if is_sse {
            Events::new(resp.into_body()).reply(id).await?
        } else {
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| ListError::Protocol(format!("{what}: reading the answer: {e}")))?
                .to_bytes();
            serde_json::from_slice(&bytes)
                .map_err(|e| ListError::Protocol(format!("{what}: the answer is not JSON: {e}")))?
        };
        Ok((value, headers))
    }

    fn request(
        &self,
        method: Method,
        url: &Uri,
        extra: &[(&str, String)],
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::USER_AGENT, USER_AGENT);
        for (k, v) in extra {
            b = b.header(*k, v.as_str());
        }
        b.body(Full::new(body))
            .expect("a request built from a valid URI and headers")
    }

    /// Sends a request, following a server's 307/308 redirects (method and body kept) on its own
    /// host, as an MCP client does: a server may answer `POST /mcp` with `307 /mcp/`.
    async fn send(
        &self,
        req: Request<Full<Bytes>>,
        what: &str,
    ) -> Result<http::Response<Incoming>, ListError> {
        const MAX_REDIRECTS: usize = 3;
        let (parts, body) = req.into_parts();
        let mut url = parts.uri.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = Request::builder()
                .method(parts.method.clone())
                .uri(url.clone())
                .body(body.clone())
                .expect("a request built from a valid request");
            *req.headers_mut() = parts.headers.clone();
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ListError::Unreachable {
                    url: url.to_string(),
                    why: crate::serve::error_chain(&e),
                })?;
            let status = resp.status();
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok());
            match (status, location) {
                (StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT, Some(to)) => {
                    url = self.same_host(to)?;
                    continue;
                }
                _ if !status.is_success() => {
                    return Err(ListError::Status {
                        what: what.to_owned(),
                        status: status.as_u16(),
                    })
                }
                (StatusCode::NO_CONTENT, _) if what == "initialize" => {
                    return Err(ListError::Protocol("initialize got no answer".into()))
                }
                _ => return Ok(resp),
            }
        }
        Err(ListError::Protocol(format!(
            "{what}: more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// A path or URL the server named, on the server's own scheme and authority.
    fn same_host(&self, target: &str) -> Result<Uri, ListError> {
        let t: Uri = target
            .parse()
            .map_err(|_| ListError::Protocol(format!("{target:?} is not a URL")))?;
        if let Some(a) = t.authority() {
            if Some(a) != self.url.authority() {
                return Err(ListError::Protocol(format!(
                    "the server named another host ({a}); mcp-warden only talks to {}",
                    self.url.authority().map_or("", |a| a.as_str())
                )));
            }
        }
        let pq = t.path_and_query().map_or("/", |p| p.as_str());
        Uri::builder()
            .scheme(self.url.scheme_str().unwrap_or("http"))
            .authority(self.url.authority().map_or("", |a| a.as_str()))
            .path_and_query(pq)
            .build()
            .map_err(|e| ListError::Protocol(format!("{target:?}: {e}")))
    }
}

/// The event stream of one reply or of a legacy session.
struct Events {
    body: Incoming,
    split: Splitter,
}

impl Events {
    fn new(body: Incoming) -> Events {
        Events {
            body,
            split: Splitter::new(MAX_REPLY),
        }
    }

    /// The next event.
    async fn next(&mut self) -> Result<bytes::BytesMut, ListError> {
        loop {
            match self.split.next_event() {
                Ok(Some(e)) => return Ok(e),
                Ok(None) => {}
                Err(_) => {
                    return Err(ListError::Protocol(format!(
                        "an event of the server's stream is over {MAX_REPLY} bytes"
                    )))
                }
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.split.push(data);
                    }
                }
                Some(Err(e)) => {
                    return Err(ListError::Protocol(format!(
                        "the server's event stream broke: {e}"
                    )))
                }
                None => {
                    return Err(ListError::Protocol(
                        "the server's event stream ended before the answer".into(),
                    ))
                }
            }
        }
    }

    /// The message answering request `id`; notifications and requests before it are skipped.
    async fn reply(&mut self, id: u64) -> Result<Value, ListError> {
        loop {
            let event = self.next().await?;
            let Some(data) = sse::event_data(&event) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&data) else {
                continue;
            };
            if v.get("id").and_then(Value::as_u64) == Some(id) && v.get("method").is_none() {
                return Ok(v);
            }
        }
    }
}

fn client_info() -> Value {
    json!({"name": "mcp-warden", "version": env!("CARGO_PKG_VERSION")})
}

fn initialize() -> Value {
    request(
        1,
        "initialize",
        Some(
            json!({"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                    "clientInfo": client_info()}),
        ),
    )
}

fn request(id: u64, method: &str, params: Option<Value>) -> Value {
    let mut v = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if let Some(p) = params {
        v["params"] = p;
    }
    v
}

/// The `result` of an answer, or its error.
fn result_of(v: Value, what: &str) -> Result<Value, ListError> {
    if let Some(e) = v.get("error") {
        return Err(ListError::Rpc {
            what: what.to_owned(),
            code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        });
    }
    match v.get("result") {
        Some(r) if r.is_object() => Ok(r.clone()),
        _ => Err(ListError::Protocol(format!(
            "{what}: the answer has no result"
        ))),
    }
}

/// Adds one page's tools; the cursor of the next page, if any.
fn take_page(result: Value, tools: &mut Vec<Value>) -> Result<Option<String>, ListError> {
    match result.get("tools") {
        // Past the cap the catalog keeps, tools are counted as dropped, not held.
        Some(Value::Array(items)) => tools.extend(
            items
                .iter()
                .take((4 * super::MAX_TOOLS).saturating_sub(tools.len()))
                .cloned(),
        ),
        _ => {
            return Err(ListError::Protocol(
                "tools/list: the result has no list of tools".into(),
            ))
        }
    }
    Ok(result
        .get("nextCursor")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_owned))
}

fn too_many_pages() -> ListError {
    ListError::Protocol(format!(
        "tools/list: more than {MAX_PAGES} pages; mcp-warden stops there"
    ))
}
