//! The legacy HTTP+SSE transport (protocol 2024-11-05): the client opens `GET /sse`, the server's
//! first event (`endpoint`) names the URL to POST messages to, and every answer travels on the
//! event stream. The sidecar watches GET streams for that event, gates POSTs to the endpoint it
//! names, writes denials into that session's stream, and filters `tools/list` answers there.

use super::{BoxError, ProxyBody, State};
use crate::mcp::{self, sse};
use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde_json::Value;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Open legacy sessions, by the path and query of their message endpoint.
#[derive(Default)]
pub struct LegacySessions {
    by_endpoint: Mutex<HashMap<String, Weak<LegacySession>>>,
}

/// One open legacy event stream.
pub struct LegacySession {
    inject: mpsc::UnboundedSender<Bytes>,
    /// Ids of `tools/list` requests whose answers are still to come on the stream.
    pending_lists: Mutex<Vec<Value>>,
}

impl LegacySessions {
    /// The session whose endpoint is exactly this URI's path and query.
    pub fn session_for(&self, uri: &http::Uri) -> Option<Arc<LegacySession>> {
        let key = uri.path_and_query()?.as_str();
        self.by_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)?
            .upgrade()
    }

    fn register(&self, key: String, session: &Arc<LegacySession>) {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(session));
    }

    fn remove(&self, key: &str) {
        self.by_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

impl LegacySession {
    /// Sends a JSON-RPC message to the client on the session's stream.
    pub fn inject(&self, json: &[u8]) {
        let mut event = Vec::with_capacity(json.len() + 24);
        event.extend_from_slice(b"event: message\ndata: ");
        event.extend_from_slice(json);
        event.extend_from_slice(b"\n\n");
        let _ = self.inject.send(Bytes::from(event));
    }

    pub fn expect_tool_lists(&self, ids: &[Value]) {
        if !ids.is_empty() {
            self.pending_lists
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(ids);
        }
    }
}

/// Wraps a GET event stream: passes it through event by event, and if it turns out to be a
/// legacy stream, registers its session.
pub fn watch_stream(st: &Arc<State>, body: ProxyBody) -> ProxyBody {
    LegacyStream {
        inner: body,
        buf: BytesMut::new(),
        state: st.clone(),
        session: None,
        rx: None,
        done: false,
    }
    .boxed_unsync()
}

struct LegacyStream {
    inner: ProxyBody,
    buf: BytesMut,
    state: Arc<State>,
    session: Option<(String, Arc<LegacySession>)>,
    rx: Option<mpsc::UnboundedReceiver<Bytes>>,
    done: bool,
}

impl LegacyStream {
    fn drain(&mut self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        while let Some(end) = sse::event_end(&self.buf) {
            let event = self.buf.split_to(end);
            match self.process(&event) {
                Some(rewritten) => out.extend_from_slice(&rewritten),
                None => out.extend_from_slice(&event),
            }
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    /// `Some` when the event must be replaced.
    fn process(&mut self, event: &[u8]) -> Option<Vec<u8>> {
        let name = event_name(event);
        let data = sse::event_data(event)?;
        if name.as_deref() == Some("endpoint") && self.session.is_none() {
            return self.open_session(&data);
        }
        let (_, session) = self.session.as_ref()?;
        let mut pending = session
            .pending_lists
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if pending.is_empty() {
            return None;
        }
        let mut v: Value = serde_json::from_slice(&data).ok()?;
        let id = v.get("id")?.clone();
        let at = pending.iter().position(|p| *p == id)?;
        pending.swap_remove(at);
        let policy = self.state.policy.load_full()?;
        let pol = policy.engine.policy();
        if let Err(e) =
            mcp::filter_tools_result(&mut v, std::slice::from_ref(&id), &|n| pol.listable(n))
        {
            v = mcp::list_error(id, &e);
        }
        let mut out = b"event: message\ndata: ".to_vec();
        out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
        Some(out)
    }

    /// Registers the session named by an `endpoint` event. An absolute URL is rewritten to its
    /// path and query, so the client keeps posting through the sidecar.
    fn open_session(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(data).ok()?.trim();
        let uri: http::Uri = text.parse().ok()?;
        let key = uri.path_and_query()?.as_str().to_owned();
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Arc::new(LegacySession {
            inject: tx,
            pending_lists: Mutex::new(Vec::new()),
        });
        self.state.legacy.register(key.clone(), &session);
        self.session = Some((key.clone(), session));
        self.rx = Some(rx);
        (uri.authority().is_some())
            .then(|| format!("event: endpoint\ndata: {key}\n\n").into_bytes())
    }
}

fn event_name(event: &[u8]) -> Option<String> {
    event
        .split(|&b| b == b'\n' || b == b'\r')
        .find_map(|l| l.strip_prefix(b"event:"))
        .map(|v| String::from_utf8_lossy(v).trim().to_owned())
}

impl Drop for LegacyStream {
    fn drop(&mut self) {
        if let Some((key, _)) = &self.session {
            self.state.legacy.remove(key);
        }
    }
}

impl Body for LegacyStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(out) = this.drain() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if let Some(rx) = &mut this.rx {
                if let Poll::Ready(Some(injected)) = rx.poll_recv(cx) {
                    return Poll::Ready(Some(Ok(Frame::data(injected))));
                }
            }
            if this.done {
                if this.buf.is_empty() {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut d) => {
                        while d.has_remaining() {
                            let n = d.chunk().len();
                            this.buf.extend_from_slice(d.chunk());
                            d.advance(n);
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
