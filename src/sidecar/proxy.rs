//! HTTP on the MCP port: route, identify the caller, read a gated body, hand it to the gate,
//! forward, and filter `tools/list` answers.
//!
//! Gated POST bodies are read whole (bounded) and forwarded byte for byte once the gate allows
//! them. Everything else streams through untouched, so a client that disconnects closes its
//! upstream stream too. Anything that cannot be read with certainty is refused, never forwarded.

use super::caller::{identify, Caller};
use super::confirm::continuation::{Record, Watch};
use super::confirm::{self, stream, Answer};
use super::filter::filter_response;
use super::gate::{self, After, StreamAsk, Told, Verdict};
use super::headers::{check_gated, is_event_stream, strip_hop_by_hop};
use super::legacy::{self, LegacySession};
use super::record;
use super::refusal::Refused;
use super::reload::LoadedPolicy;
use super::spend::Spend;
use super::State;
use crate::mcp::sse;
use crate::serve::{full, json, respond, Body};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// Handles one request on the MCP port.
pub(super) async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let Some(policy) = st.policy.load_full() else {
        return Refused::NoPolicy.response_closing();
    };
    if let Err(why) = st.allowed(&policy).check(req.headers()) {
        return Refused::Place(why.to_string()).response_closing();
    }
    let path = req.uri().path();
    let passthrough = st.cfg.passthrough_paths.iter().any(|p| p == path);
    // Every request but a CORS preflight (which carries no credentials) and the ungated
    // passthrough paths (an OAuth endpoint serves callers that have no token yet) proves who it
    // is from before anything is forwarded.
    let caller = match *req.method() {
        Method::OPTIONS => Caller::anonymous(),
        _ if passthrough && !st.cfg.is_mcp_path(path) => Caller::anonymous(),
        _ => match identify(&st, &policy, req.headers()) {
            Ok(c) => c,
            Err(r) => return r.response_closing(),
        },
    };
    let is_post = req.method() == Method::POST;
    if is_post && st.cfg.is_mcp_path(path) {
        return gated(&st, &policy, req, None, caller).await;
    }
    if is_post {
        if let Some(session) = st.legacy.session_for(req.uri()) {
            return gated(&st, &policy, req, Some(session), caller).await;
        }
    }
    if !is_post && hyper::body::Body::size_hint(req.body()).exact() != Some(0) {
        // The gate decides POST bodies only; a server that reads a body on another method (some
        // legacy endpoints do) would run a message nobody decided.
        return Refused::BodyOnMethod(req.method().clone()).response_closing();
    }
    if passthrough {
        return forward_streaming(&st, req, caller).await;
    }
    match *req.method() {
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS => {
            forward_streaming(&st, req, caller).await
        }
        Method::POST => Refused::NotMcpPath {
            path: path.to_owned(),
            mcp_path: st.cfg.mcp_path().to_owned(),
        }
        .response_closing(),
        _ => Refused::MethodNotAllowed {
            method: req.method().clone(),
            path: path.to_owned(),
        }
        .response_closing(),
    }
}

/// A gated POST: its headers checked, its body read whole, the gate's verdict carried out.
async fn gated(
    st: &Arc<State>,
    policy: &Arc<LoadedPolicy>,
    req: Request<Incoming>,
    session: Option<Arc<LegacySession>>,
    caller: Caller,
) -> Response<Body> {
    let started = Instant::now();
    if let Err(r) = check_gated(req.headers(), st.cfg.max_body_bytes) {
        return r.response_closing();
    }
    let (parts, body) = req.into_parts();
    let (bytes, _held) = match read_body(st, body).await {
        Ok(b) => b,
        Err(r) => return r.response_closing(),
    };
    let (verdict, method) =
        match gate::decide(st, policy, &caller, &parts.headers, &bytes, None).await {
            Ok(v) => v,
            Err(r) => return r.response(),
        };
    let response = match verdict {
        Verdict::Answer { body, retry_after } => match &session {
            // Legacy transport: answers travel on the session's event stream.
            Some(s) if s.inject(&body) => respond(StatusCode::ACCEPTED, Bytes::new()),
            Some(_) => Refused::StreamBacklog.response(),
            None => {
                let mut r = json(StatusCode::OK, body);
                if let Some(secs) = retry_after {
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                r
            }
        },
        Verdict::Forward {
            list_ids,
            spend,
            body,
            after,
        } => {
            if let Some(s) = &session {
                s.expect_tool_lists(&list_ids);
            }
            let filter = (!list_ids.is_empty() && session.is_none()).then_some(list_ids);
            let bytes = body.map_or_else(|| bytes.clone(), Bytes::from);
            forward_gated(st, parts, bytes, filter, caller, spend, after).await
        }
        Verdict::Taken => respond(StatusCode::ACCEPTED, Bytes::new()),
        Verdict::Ask(ask) => match session {
            // The legacy transport's answers travel on another stream: not asked there.
            Some(_) => Refused::StreamBacklog.response(),
            None => ask_on_stream(st, policy, parts, bytes.clone(), caller, ask),
        },
    };
    record::request_done(st, &policy.label, method, started.elapsed());
    response
}

/// Reads a gated body whole, within the size limit and the body timeout, holding its bytes
/// against the global budget as they arrive (not as declared: a client that declares 4 MiB and
/// sends 10 bytes holds 10).
async fn read_body(
    st: &State,
    mut body: Incoming,
) -> Result<(Bytes, Option<tokio::sync::SemaphorePermit<'_>>), Refused> {
    let max = st.cfg.max_body_bytes;
    let mut held: Option<tokio::sync::SemaphorePermit<'_>> = None;
    // Room for the declared length up front, so the buffer is not regrown (and briefly held
    // twice) as it fills; pages a client never sends are never touched, so never resident.
    let declared = http_body::Body::size_hint(&body).exact().unwrap_or(0);
    let mut buf = bytes::BytesMut::with_capacity((declared as usize).min(max));
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Refused::BodyCutOff)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(Refused::TooLarge(max));
            }
            let n = u32::try_from(data.len()).map_err(|_| Refused::TooLarge(max))?;
            let permit = st.budget.try_acquire_many(n).map_err(|_| Refused::Busy)?;
            match &mut held {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(st.cfg.body_timeout, read).await {
        Ok(Ok(())) => Ok((buf.freeze(), held)),
        Ok(Err(r)) => Err(r),
        Err(_) => Err(Refused::BodyTimeout(st.cfg.body_timeout)),
    }
}

/// The upstream request for `parts`, with `Host` rewritten and hop-by-hop headers dropped.
fn upstream_request(
    st: &State,
    parts: http::request::Parts,
    body: Body,
    drop_accept_encoding: bool,
) -> Request<Body> {
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

/// Sends a request upstream; the answer's headers are made fit for the client: hop-by-hop ones
/// dropped, and URLs naming the upstream's authority pointed back at the one the client used.
/// A failure says whether the request provably never reached the server (no connection).
async fn send(
    st: &State,
    req: Request<Body>,
    client_host: Option<HeaderValue>,
) -> Result<Response<Incoming>, (bool, Response<Body>)> {
    let mut resp = st
        .client
        .request(req)
        .await
        .map_err(|e| (e.is_connect(), bad_gateway(&e)))?;
    let h = resp.headers_mut();
    if let Some(id) = h.get("mcp-session-id") {
        st.sessions.record(id.as_bytes());
    }
    strip_hop_by_hop(h);
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        if let Some(v) = h
            .get(&name)
            .and_then(|v| restore_authority(st, v, client_host.as_ref()))
        {
            h.insert(name, v);
        }
    }
    Ok(resp)
}

/// `http://UPSTREAM/path` → `http://CLIENT_HOST/path`; other values are left alone.
fn restore_authority(
    st: &State,
    v: &HeaderValue,
    client_host: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    let uri: http::Uri = v.to_str().ok()?.parse().ok()?;
    let authority = uri.authority()?;
    if !authority
        .as_str()
        .eq_ignore_ascii_case(st.upstream_authority.as_str())
    {
        return None;
    }
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    match client_host.and_then(|h| h.to_str().ok()) {
        Some(host) => HeaderValue::from_str(&format!("http://{host}{pq}")).ok(),
        // No Host to go back to: a relative reference keeps the client on the sidecar.
        None => HeaderValue::from_str(pq).ok(),
    }
}

async fn forward_gated(
    st: &Arc<State>,
    mut parts: http::request::Parts,
    bytes: Bytes,
    filter: Option<Vec<Value>>,
    caller: Caller,
    spend: Spend,
    after: After,
) -> Response<Body> {
    let host = parts.headers.get(header::HOST).cloned();
    // The body may be the request's without the sidecar's own fields.
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let req = upstream_request(st, parts, full(bytes), filter.is_some());
    let resp = match send(st, req, host).await {
        Ok(r) => r,
        Err((unsent, r)) => {
            match unsent {
                true => spend.give_back(st),
                false => spend.commit(st),
            }
            return r;
        }
    };
    // A redirect: the server did not take the message; the client sends it again elsewhere,
    // where it is decided (and counted) again.
    match resp.status().is_redirection() {
        true => spend.give_back(st),
        false => spend.commit(st),
    }
    if let (Some(can), Some(id)) = (after.initialize, resp.headers().get("mcp-session-id")) {
        st.confirm.streams.session_started(id.as_bytes(), can);
    }
    if let Some(ids) = filter {
        return filter_response(st.clone(), ids, resp, caller).await;
    }
    let event_stream = is_event_stream(resp.headers());
    let (parts, body) = resp.into_parts();
    let body: Body = match after.continuation {
        // A 2026-07-28 call: the server may answer with its own question.
        Some(call) => {
            let label = st
                .policy
                .load()
                .as_ref()
                .map_or_else(String::new, |p| p.label.clone());
            let kept = st.clone();
            let record: Record = Arc::new(move |seen| super::peers::keep(&kept, &label, seen));
            let watched = Watch::new(body, record, call, event_stream);
            watched.map_err(Into::into).boxed_unsync()
        }
        None => body.map_err(Into::into).boxed_unsync(),
    };
    let body = match event_stream {
        // A stream of answers may carry a tools/list_changed notification.
        true => super::discovery::WatchListChanged::new(body, st.clone()).boxed_unsync(),
        false => body,
    };
    Response::from_parts(parts, body)
}

async fn forward_streaming(
    st: &Arc<State>,
    req: Request<Incoming>,
    caller: Caller,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let is_get = parts.method == Method::GET;
    let host = parts.headers.get(header::HOST).cloned();
    let up = upstream_request(st, parts, body.map_err(Into::into).boxed_unsync(), is_get);
    let resp = match send(st, up, host).await {
        Ok(r) => r,
        Err((_, r)) => return r,
    };
    if is_get && is_event_stream(resp.headers()) {
        // Any GET stream may carry a tool list (a replay after `Last-Event-ID`, the legacy
        // transport's answers): every event is filtered, and the stream is watched for the
        // legacy `endpoint` event.
        let (mut p, b) = resp.into_parts();
        if p.headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return Refused::CompressedStream.response();
        }
        p.headers.remove(header::CONTENT_LENGTH);
        let body = legacy::watch_stream(st, b.map_err(Into::into).boxed_unsync(), caller);
        return Response::from_parts(p, body);
    }
    passthrough(resp)
}

fn passthrough(resp: Response<Incoming>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

fn bad_gateway(e: &dyn std::fmt::Display) -> Response<Body> {
    tracing::warn!(error = %e, "upstream request failed");
    Refused::Unreachable.response()
}

/// Asks the user on the call's own event stream (a client before 2026-07-28 that declared
/// elicitation): the POST is answered with a stream carrying the sidecar's `elicitation/create`;
/// once the client answers (or the question expires) the request is decided again with the
/// answer, and forwarded or denied; the server's answer follows on the same stream.
fn ask_on_stream(
    st: &Arc<State>,
    policy: &Arc<LoadedPolicy>,
    parts: http::request::Parts,
    bytes: Bytes,
    caller: Caller,
    ask: StreamAsk,
) -> Response<Body> {
    let id = format!("{}{}", stream::ID_PREFIX, st.confirm.sealer.nonce());
    let Some(reply) = st.confirm.streams.ask(&id, &caller.id) else {
        return Refused::Busy.response();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let question = serde_json::json!({
        "jsonrpc": "2.0", "id": id, "method": "elicitation/create", "params": ask.params
    });
    let _ = tx.try_send(sse::message_event(question.to_string().as_bytes()));
    let (st, policy) = (st.clone(), policy.clone());
    tokio::spawn(async move {
        let answered = tokio::time::timeout(ask.ttl, reply).await;
        st.confirm.streams.forget(&id);
        let answer = match answered {
            Ok(Ok(Ok(result))) => confirm::read_action(&result),
            // Refused by the client, expired, or the stream went away.
            _ => Answer::Cancelled,
        };
        let told = Told { answer, ..ask.told };
        let decided = gate::decide(&st, &policy, &caller, &parts.headers, &bytes, Some(&told));
        let out = match decided.await {
            Ok((
                Verdict::Forward {
                    spend, body, after, ..
                },
                _,
            )) => {
                let bytes = body.map_or_else(|| bytes.clone(), Bytes::from);
                forward_gated(&st, parts, bytes, None, caller, spend, after).await
            }
            Ok((Verdict::Answer { body, .. }, _)) => json(StatusCode::OK, body),
            Ok(_) => Refused::CallWithoutId.response(),
            Err(r) => r.response(),
        };
        pipe_as_events(out, tx).await;
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| {
            (
                Ok::<_, crate::serve::BoxError>(http_body::Frame::data(b)),
                rx,
            )
        })
    });
    let mut r = Response::new(http_body_util::StreamBody::new(events).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Writes a response onto an event stream: its events as they are, or a JSON answer as one.
async fn pipe_as_events(resp: Response<Body>, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let events = is_event_stream(resp.headers());
    let mut body = resp.into_body();
    if events {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if tx.send(data).await.is_err() {
                    return;
                }
            }
        }
        return;
    }
    if let Ok(c) = body.collect().await {
        let _ = tx.send(sse::message_event(&c.to_bytes())).await;
    }
}
