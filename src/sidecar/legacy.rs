//! The legacy HTTP+SSE transport (protocol 2024-11-05): the client opens `GET /sse`, the server's
//! first event (`endpoint`) names the URL to POST messages to, and every answer travels on the
//! event stream. The sidecar watches GET streams for that event, gates POSTs to the endpoint it
//! names, writes denials into that session's stream, and filters every event of every GET stream
//! (a replay after `Last-Event-ID` can carry an old `tools/list` answer too).

use super::filter::{ListFilter, MAX_LIST_RESPONSE};
use super::State;
use crate::mcp::sse::{self, Rewrite, Splitter};
use crate::serve::{Body, BoxError};
use bytes::Bytes;
use http_body::Frame;
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

/// Answers the sidecar writes into one stream that the client has not read yet, at most.
const INJECT_QUEUE: usize = 256;
/// `tools/list` request ids remembered per stream (to answer with if a list cannot be read).
const PENDING_LISTS: usize = 64;

/// One open legacy event stream.
pub struct LegacySession {
    inject: mpsc::Sender<Bytes>,
    /// Ids of the latest `tools/list` requests whose answers are to come on the stream.
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
    /// Sends a JSON-RPC message to the client on the session's stream; `false` when the
    /// client has left that many answers unread (or the stream is gone).
    pub fn inject(&self, json: &[u8]) -> bool {
        self.inject.try_send(sse::message_event(json)).is_ok()
    }

    pub fn expect_tool_lists(&self, ids: &[Value]) {
        if ids.is_empty() {
            return;
        }
        let mut pending = self.pending_lists.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend_from_slice(ids);
        let over = pending.len().saturating_sub(PENDING_LISTS);
        pending.drain(..over);
    }
}

/// Wraps a GET event stream: filters every event, and if the stream turns out to be a legacy
/// one, registers its session.
pub fn watch_stream(st: &Arc<State>, body: Body, caller: super::caller::Caller) -> Body {
    LegacyStream {
        inner: body,
        split: Splitter::new(MAX_LIST_RESPONSE),
        filter: ListFilter::new(st.clone(), Vec::new(), caller),
        state: st.clone(),
        session: None,
        rx: None,
        done: false,
    }
    .boxed_unsync()
}

struct LegacyStream {
    inner: Body,
    split: Splitter,
    filter: ListFilter,
    state: Arc<State>,
    session: Option<(String, Arc<LegacySession>)>,
    rx: Option<mpsc::Receiver<Bytes>>,
    done: bool,
}

impl LegacyStream {
    fn drain(&mut self) -> Option<Bytes> {
        let mut split = std::mem::replace(&mut self.split, Splitter::new(0));
        let filter = self.filter.clone();
        // Read only when an event is over the limit (the closure runs then alone).
        let session = self.session.as_ref().map(|(_, s)| s.clone());
        let (out, end) = split.drain(
            |event| self.process(event),
            |limit, start| filter.oversized(limit, start, &pending_lists(session.as_deref())),
        );
        self.split = split;
        self.done |= end;
        out
    }

    /// `Some` when the event must be replaced.
    fn process(&mut self, event: &[u8]) -> Option<Bytes> {
        let data = sse::event_data(event)?;
        if self.session.is_none() && sse::event_name(event).as_deref() == Some("endpoint") {
            return self.open_session(&data).map(Bytes::from);
        }
        if !crate::mcp::lists::might_carry_tools(&data) {
            // Most events (tool results, notifications): no lock, no copy of the pending ids.
            return None;
        }
        if crate::tools::announces_list_change(&data) {
            self.state.tools.wake();
        }
        let pending = pending_lists(self.session.as_ref().map(|(_, s)| &**s));
        let new = self.filter.apply(&data, &pending)?;
        Some(sse::with_data(event, &new))
    }

    /// Registers the session named by an `endpoint` event. An absolute URL is rewritten to its
    /// path and query, so the client keeps posting through the sidecar.
    fn open_session(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(data).ok()?.trim();
        let uri: http::Uri = text.parse().ok()?;
        let key = uri.path_and_query()?.as_str().to_owned();
        let (tx, rx) = mpsc::channel(INJECT_QUEUE);
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

/// The ids of a session's `tools/list` requests still waiting for their answer.
fn pending_lists(session: Option<&LegacySession>) -> Vec<Value> {
    session.map_or_else(Vec::new, |s| {
        s.pending_lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    })
}

impl Drop for LegacyStream {
    fn drop(&mut self) {
        if let Some((key, _)) = &self.session {
            self.state.legacy.remove(key);
        }
    }
}

impl http_body::Body for LegacyStream {
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
                let rest = this.split.take_rest();
                if rest.is_empty() || !this.filter.pass_rest(&rest) {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Ok(Frame::data(rest.freeze()))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => this.split.push(d),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session() -> (LegacySession, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(INJECT_QUEUE);
        let s = LegacySession {
            inject: tx,
            pending_lists: Mutex::new(Vec::new()),
        };
        (s, rx)
    }

    #[test]
    fn answers_for_a_client_that_does_not_read_are_bounded() {
        let (s, mut rx) = session();
        for _ in 0..INJECT_QUEUE {
            assert!(s.inject(b"{}"));
        }
        assert!(
            !s.inject(b"{}"),
            "the queue is full: the POST is refused, nothing grows"
        );
        let first = rx.try_recv().unwrap();
        assert_eq!(&first[..], b"event: message\ndata: {}\n\n");
        assert!(s.inject(b"{}"), "room again once the client reads");
    }

    #[test]
    fn pending_list_ids_are_bounded_to_the_latest() {
        let (s, _rx) = session();
        let ids: Vec<Value> = (0..PENDING_LISTS as u64 * 3).map(|i| json!(i)).collect();
        s.expect_tool_lists(&ids);
        let pending = s.pending_lists.lock().unwrap();
        assert_eq!(pending.len(), PENDING_LISTS);
        assert_eq!(pending.last(), ids.last(), "the newest are kept");
    }
}
