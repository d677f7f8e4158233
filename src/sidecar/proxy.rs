//! Request handling: route, gate, forward, and filter `tools/list` answers.
//!
//! Gated POST bodies are read whole (bounded), scanned, decided, and forwarded byte for byte.
//! Everything else streams through untouched, so a client that disconnects closes its upstream
//! stream too. Anything that cannot be read with certainty is refused, never forwarded.

use super::gate::{check_headers, decide_body, too_large, Verdict};
use super::legacy::{self, LegacySession};
use super::{full, ProxyBody, State};
use crate::mcp::{self, code, sse, Refusal};
use crate::sidecar::reload::LoadedPolicy;
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
        .clamp(1, st.cfg.max_body_bytes)
        .min(u32::MAX as usize) as u32;
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
                    *v = mcp::list_error(v.get("id").cloned().unwrap_or(Value::Null), &e);
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
            serde_json::to_vec(&mcp::list_error(id, "compressed tools/list response"))
                .unwrap_or_default(),
        );
    }
    let bytes = match Limited::new(body, MAX_LIST_RESPONSE).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::BAD_GATEWAY,
                serde_json::to_vec(&mcp::list_error(
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
            serde_json::to_vec(&mcp::list_error(id, &e)).unwrap_or_default(),
        ),
    }
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
