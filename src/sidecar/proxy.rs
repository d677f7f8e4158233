//! Request handling: route, gate, forward, and filter `tools/list` answers.
//!
//! Gated POST bodies are read whole (bounded), scanned, decided, and forwarded byte for byte.
//! Everything else streams through untouched, so a client that disconnects closes its upstream
//! stream too. Anything that cannot be read with certainty is refused, never forwarded.

use super::audit;
use super::legacy::{self, LegacySession};
use super::{full, ProxyBody, State};
use crate::engine::{monotonic_now, Call, Outcome};
use crate::mcp::{self, code, sse, Body, Kind, Refusal};
use crate::policy::Identity;
use crate::sidecar::reload::{sha256_hex, LoadedPolicy};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// Largest `tools/list` response read whole to be filtered.
const MAX_LIST_RESPONSE: usize = 16 << 20;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Handles one request on the MCP port.
pub(super) async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<ProxyBody> {
    let Some(policy) = st.policy.load_full() else {
        return refusal(&Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::INTERNAL_ERROR,
            "mcp-warden has no valid policy loaded; nothing is forwarded",
        ));
    };
    let path = req.uri().path();
    let is_post = req.method() == Method::POST;
    if is_post && path == st.cfg.mcp_path() {
        return gate(&st, &policy, req, None).await;
    }
    if is_post {
        if let Some(session) = st.legacy.session_for(req.uri()) {
            return gate(&st, &policy, req, Some(session)).await;
        }
    }
    if st.cfg.passthrough_paths.iter().any(|p| p == path) {
        return forward_streaming(&st, req).await;
    }
    match *req.method() {
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS => {
            forward_streaming(&st, req).await
        }
        Method::POST => refusal(&Refusal::new(
            StatusCode::NOT_FOUND,
            code::INVALID_REQUEST,
            format!(
                "POST {path} is not the MCP endpoint ({}); the sidecar forwards POSTs elsewhere \
                 only when started with --passthrough-path {path}",
                st.cfg.mcp_path()
            ),
        )),
        _ => refusal(&Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            code::INVALID_REQUEST,
            format!("{} is not an MCP method on {path}", req.method()),
        )),
    }
}

/// What the gate concluded about a body.
enum Verdict {
    /// Forward unchanged; filter the answers to these `tools/list` ids.
    Forward { list_ids: Vec<Value> },
    /// Answer the client ourselves (denials), with an optional `Retry-After`.
    Answer {
        body: Vec<u8>,
        retry_after: Option<u64>,
    },
}

async fn gate(
    st: &State,
    policy: &Arc<LoadedPolicy>,
    req: Request<Incoming>,
    session: Option<Arc<LegacySession>>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    if let Err(r) = check_headers(req.headers(), st.cfg.max_body_bytes) {
        return refusal(&r);
    }
    // Hold body bytes against the global budget while the body is in memory.
    let want = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(st.cfg.max_body_bytes)
        .clamp(1, st.cfg.max_body_bytes) as u32;
    let Ok(_permit) = st.budget.try_acquire_many(want) else {
        return refusal(&Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::INTERNAL_ERROR,
            "the sidecar is holding too many request bodies; retry shortly",
        ));
    };
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, st.cfg.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return refusal(&too_large(st.cfg.max_body_bytes));
        }
        Err(_) => {
            return refusal(&Refusal::new(
                StatusCode::BAD_REQUEST,
                code::PARSE_ERROR,
                "the request body was cut off",
            ))
        }
    };
    let (verdict, method) = match decide_body(st, policy, &parts.headers, &bytes) {
        Ok(v) => v,
        Err(r) => return refusal(&r),
    };
    let label = policy.label.as_str();
    let response = match verdict {
        Verdict::Answer { body, retry_after } => match &session {
            // Legacy transport: answers travel on the session's event stream.
            Some(s) => {
                s.inject(&body);
                status_only(StatusCode::ACCEPTED)
            }
            None => {
                let mut r = json_response(StatusCode::OK, body);
                if let Some(secs) = retry_after {
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                r
            }
        },
        Verdict::Forward { list_ids } => {
            if let Some(s) = &session {
                s.expect_tool_lists(&list_ids);
            }
            let filter = (!list_ids.is_empty() && session.is_none()).then_some(list_ids);
            forward_gated(st, policy, parts, bytes.clone(), filter).await
        }
    };
    st.metrics
        .request_duration
        .with_label_values(&[label, method])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Content type, encoding and declared length: refused before a byte of the body is read.
fn check_headers(h: &HeaderMap, max: usize) -> Result<(), Refusal> {
    let unsupported =
        |msg: String| Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, code::PARSE_ERROR, msg);
    let ct = h
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| unsupported("Content-Type application/json is required".into()))?
        .to_str()
        .map_err(|_| unsupported("unreadable Content-Type".into()))?;
    let mut params = ct.split(';');
    let essence = params.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(unsupported(format!(
            "Content-Type {essence:?} is not application/json"
        )));
    }
    for p in params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k.trim().eq_ignore_ascii_case("charset") {
            let v = v.trim().trim_matches('"');
            if !v.eq_ignore_ascii_case("utf-8") && !v.eq_ignore_ascii_case("utf8") {
                return Err(unsupported(format!(
                    "charset {v:?} is not supported; send UTF-8"
                )));
            }
        }
    }
    for ce in h.get_all(header::CONTENT_ENCODING) {
        let v = ce.to_str().unwrap_or("?").trim();
        if !v.eq_ignore_ascii_case("identity") {
            return Err(unsupported(format!(
                "Content-Encoding {v:?} is not decoded by the sidecar; send the body uncompressed"
            )));
        }
    }
    if let Some(len) = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(too_large(max));
        }
    }
    Ok(())
}

fn too_large(max: usize) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        code::INVALID_REQUEST,
        format!("the request body is over the {max}-byte limit"),
    )
}

/// Parses, checks headers against the body, and decides every `tools/call`.
fn decide_body(
    st: &State,
    policy: &LoadedPolicy,
    h: &HeaderMap,
    bytes: &[u8],
) -> Result<(Verdict, &'static str), Refusal> {
    let label = policy.label.as_str();
    let body = mcp::parse(bytes)?;
    // For the duration metric: the method of a single message; batches count as `_other`.
    let method = match &body {
        Body::Single(m) => m.method.as_deref().map_or("_other", mcp::method_label),
        Body::Batch(_) => "_other",
    };
    let version = h
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("2025-03-26");
    if let Body::Batch(_) = body {
        if version != "2025-03-26" {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                format!("JSON-RPC batches are not allowed under protocol version {version}"),
            ));
        }
    }
    if let Body::Single(m) = &body {
        check_routing_headers(h, m)?;
    }
    let engine = &policy.engine;
    let pol = engine.policy();
    let mut grant: Option<String> = None;
    let session = h.get("mcp-session-id").and_then(|v| v.to_str().ok());
    let mut list_ids = Vec::new();
    let mut answers: Vec<Option<Value>> = Vec::new();
    let mut denied_any = false;
    let mut retry_after = None;
    for m in body.messages() {
        if let Some(method) = &m.method {
            st.metrics
                .requests
                .with_label_values(&[label, mcp::method_label(method)])
                .inc();
        }
        if m.is_method("tools/list") && m.kind == Kind::Request {
            list_ids.push(
                serde_json::from_str(m.id.map_or("null", |i| i.get())).unwrap_or(Value::Null),
            );
        }
        if !m.is_method("tools/call") {
            answers.push(None);
            continue;
        }
        let Some(id) = m.id else {
            st.metrics
                .decisions
                .with_label_values(&[label, "_other", "invalid"])
                .inc();
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                "tools/call needs an id",
            ));
        };
        let call = m.tool_call().inspect_err(|_| {
            st.metrics
                .decisions
                .with_label_values(&[label, "_other", "invalid"])
                .inc();
        })?;
        let args: Value = match call.arguments {
            Some(raw) if pol.reads_arguments(&call.name) => serde_json::from_str(raw.get())
                .map_err(|_| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        code::INVALID_PARAMS,
                        "unreadable arguments",
                    )
                    .with_id(Some(id))
                })?,
            _ => Value::Null,
        };
        let grant = grant.get_or_insert_with(|| grant_key(&pol.identity, h));
        let t0 = Instant::now();
        let d = engine.decide(
            &Call {
                tool: &call.name,
                args: &args,
                grant,
                session,
            },
            monotonic_now(),
        );
        let took = t0.elapsed();
        st.metrics
            .decision_duration
            .with_label_values(&[label])
            .observe(took.as_secs_f64());
        st.metrics
            .decisions
            .with_label_values(&[label, d.tool_label, d.outcome.as_str()])
            .inc();
        if d.overflow {
            st.metrics
                .counter_overflow
                .with_label_values(&[label])
                .inc();
        }
        if let Some(hit) = &d.limit {
            let c = hit.counter;
            st.metrics
                .limit_hits
                .with_label_values(&[label, &c.name, &c.window.text, c.scope.as_str()])
                .inc();
            retry_after = Some(mcp::retry_after_secs(&d));
        }
        if audit::enabled() {
            let args_sha256 = call
                .arguments
                .map_or_else(String::new, |a| sha256_hex(a.get().as_bytes()));
            audit::write(&audit::AuditLine {
                policy: label,
                tool: &call.name,
                decision: d.outcome.as_str(),
                rule: d.rule,
                identity: grant,
                session: session.unwrap_or(""),
                counter: d.limit.as_ref().map_or("", |h| h.counter.name.as_str()),
                latency_ns: took.as_nanos() as u64,
                args_sha256: &args_sha256,
            });
        }
        if d.outcome == Outcome::Allow {
            answers.push(None);
        } else {
            denied_any = true;
            let v = call.protocol_version.as_deref().unwrap_or(version);
            answers.push(Some(mcp::denial(id, &d, &call.name, label, pol.deny_as, v)));
        }
    }
    if !denied_any {
        return Ok((Verdict::Forward { list_ids }, method));
    }
    let body = match &body {
        Body::Single(_) => serde_json::to_vec(&answers[0]).unwrap_or_default(),
        Body::Batch(msgs) => {
            // Nothing of a batch with a denied call runs: every request gets an answer.
            let out: Vec<Value> = msgs
                .iter()
                .zip(answers)
                .filter_map(|(m, a)| match (a, m.kind, m.id) {
                    (Some(a), _, _) => Some(a),
                    (None, Kind::Request, Some(id)) => Some(mcp::not_run(id)),
                    _ => None,
                })
                .collect();
            serde_json::to_vec(&out).unwrap_or_default()
        }
    };
    Ok((Verdict::Answer { body, retry_after }, method))
}

/// `Mcp-Method` and `Mcp-Name` (2026-07-28) must say what the body says.
fn check_routing_headers(h: &HeaderMap, m: &mcp::Message) -> Result<(), Refusal> {
    let mismatch = |what: &str| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            code::HEADER_MISMATCH,
            format!("the {what} header does not match the body"),
        )
        .with_id(m.id)
    };
    if let Some(hm) = h.get("mcp-method") {
        if m.method.as_deref().map(str::as_bytes) != Some(hm.as_bytes()) {
            return Err(mismatch("Mcp-Method"));
        }
    }
    if let Some(hn) = h.get("mcp-name") {
        if m.routing_name().as_deref().map(str::as_bytes) != Some(hn.as_bytes()) {
            return Err(mismatch("Mcp-Name"));
        }
    }
    Ok(())
}

/// The counter key of the caller: SHA-256 of its bearer token or identity header, or `anonymous`.
fn grant_key(identity: &Identity, h: &HeaderMap) -> String {
    let value = match identity {
        Identity::Bearer => h.get(header::AUTHORIZATION).and_then(|v| {
            let v = v.as_bytes();
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
        }),
        Identity::Header(name) => h.get(name.as_str()).map(HeaderValue::as_bytes),
    };
    match value {
        Some(v) if !v.is_empty() => sha256_hex(v),
        _ => "anonymous".to_owned(),
    }
}

/// The upstream request for `parts`, with `Host` rewritten and hop-by-hop headers dropped.
fn upstream_request(
    st: &State,
    parts: http::request::Parts,
    body: ProxyBody,
    drop_accept_encoding: bool,
) -> Request<ProxyBody> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(st.upstream_authority.clone())
        .path_and_query(pq)
        .build()
        .unwrap_or_else(|_| st.cfg.upstream.clone());
    let mut req = Request::new(body);
    *req.method_mut() = parts.method;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    *headers = parts.headers;
    strip_hop_by_hop(headers);
    if drop_accept_encoding {
        headers.remove(header::ACCEPT_ENCODING);
    }
    headers.insert(header::HOST, st.upstream_host.clone());
    req
}

async fn forward_gated(
    st: &State,
    policy: &Arc<LoadedPolicy>,
    parts: http::request::Parts,
    bytes: Bytes,
    filter: Option<Vec<Value>>,
) -> Response<ProxyBody> {
    let req = upstream_request(st, parts, full(bytes), filter.is_some());
    let resp = match st.client.request(req).await {
        Ok(r) => r,
        Err(e) => return bad_gateway(&e),
    };
    match filter {
        None => passthrough(resp),
        Some(ids) => filter_response(policy.clone(), ids, resp).await,
    }
}

async fn forward_streaming(st: &Arc<State>, req: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let is_get = parts.method == Method::GET;
    let up = upstream_request(st, parts, body.map_err(Into::into).boxed_unsync(), is_get);
    let resp = match st.client.request(up).await {
        Ok(r) => r,
        Err(e) => return bad_gateway(&e),
    };
    if is_get && is_event_stream(resp.headers()) {
        // A GET stream may be the legacy transport's: watch it for its `endpoint` event.
        let (mut p, b) = resp.into_parts();
        strip_hop_by_hop(&mut p.headers);
        let body = legacy::watch_stream(st, b.map_err(Into::into).boxed_unsync());
        return Response::from_parts(p, body);
    }
    passthrough(resp)
}

fn is_event_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// Removes hop-by-hop headers, and those the `Connection` header names, in place.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        h.remove(*name);
    }
    for name in listed {
        h.remove(name);
    }
}

fn passthrough(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

/// Filters `tools/list` answers in a JSON or SSE response; any other response passes.
async fn filter_response(
    policy: Arc<LoadedPolicy>,
    ids: Vec<Value>,
    resp: Response<Incoming>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if is_event_stream(&parts.headers) && !encoded {
        let rewrite: sse::Rewriter = Arc::new(move |v: &mut Value| {
            let pol = policy.engine.policy();
            match mcp::filter_tools_result(v, &ids, &|name| pol.listable(name)) {
                Ok(changed) => changed,
                Err(e) => {
                    *v = list_error(v.get("id").cloned().unwrap_or(Value::Null), &e);
                    true
                }
            }
        });
        let body = sse::RewriteEvents::new(body.map_err(super::BoxError::from), rewrite);
        return Response::from_parts(parts, body.boxed_unsync());
    }
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json || !parts.status.is_success() {
        return Response::from_parts(parts, body.map_err(Into::into).boxed_unsync());
    }
    let id = ids.first().cloned().unwrap_or(Value::Null);
    if encoded {
        return json_response(
            StatusCode::BAD_GATEWAY,
            serde_json::to_vec(&list_error(id, "compressed tools/list response"))
                .unwrap_or_default(),
        );
    }
    let bytes = match Limited::new(body, MAX_LIST_RESPONSE).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::BAD_GATEWAY,
                serde_json::to_vec(&list_error(
                    id,
                    "tools/list response unreadable or too large",
                ))
                .unwrap_or_default(),
            )
        }
    };
    let pol = policy.engine.policy();
    match mcp::filter_tools_list(&bytes, &ids, &|name| pol.listable(name)) {
        Ok(None) => Response::from_parts(parts, full(bytes)),
        Ok(Some(new)) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, full(new))
        }
        Err(e) => json_response(
            StatusCode::BAD_GATEWAY,
            serde_json::to_vec(&list_error(id, &e)).unwrap_or_default(),
        ),
    }
}

fn list_error(id: Value, why: &str) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code::INTERNAL_ERROR, "message": format!("mcp-warden could not filter the server's tool list: {why}")}
    })
}

fn bad_gateway(e: &dyn std::fmt::Display) -> Response<ProxyBody> {
    tracing::warn!(error = %e, "upstream request failed");
    refusal(&Refusal::new(
        StatusCode::BAD_GATEWAY,
        code::INTERNAL_ERROR,
        "the MCP server behind mcp-warden is unreachable",
    ))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn status_only(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// A refusal as an HTTP response with a JSON-RPC error body.
pub(super) fn refusal(r: &Refusal) -> Response<ProxyBody> {
    json_response(r.status, r.body())
}
