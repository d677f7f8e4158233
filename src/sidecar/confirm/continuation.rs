//! A server's own `input_required`: the call it answers was decided and counted when it was
//! forwarded; the client's retry that completes it (carrying the server's `requestState`) is
//! forwarded untouched and not counted again. The sidecar remembers, for each such answer, the
//! SHA-256 of the server's state and the call it belongs to; a retry is a continuation only with
//! that state, from the same caller, for the same tool and arguments, under the same policy —
//! once. Anything else is a new call, decided and counted like any.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Server states remembered at once, at most; beyond, a retry is counted again (never less).
pub const MAX_PENDING: usize = 65_536;
/// How long a server's question is remembered.
pub const HOLD_SECS: u64 = 3600;

/// The call a server's question belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    pub caller: String,
    pub tool: String,
    pub arguments_sha256: String,
    pub policy_hash: String,
}

#[derive(Default)]
pub struct Pending {
    by_state: Mutex<HashMap<String, (Call, u64)>>,
}

impl Pending {
    /// The server answered `call` with `input_required` whose state has SHA-256 `state`.
    pub fn asked(&self, state: &str, call: Call, now: u64) {
        let mut m = self.by_state.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_PENDING {
            m.retain(|_, (_, exp)| *exp >= now);
            if m.len() >= MAX_PENDING {
                return;
            }
        }
        m.insert(state.to_owned(), (call, now + HOLD_SECS));
    }

    /// Whether a retry carrying a state of SHA-256 `state` completes `call` (taken once).
    pub fn completes(&self, state: &str, call: &Call, now: u64) -> bool {
        let mut m = self.by_state.lock().unwrap_or_else(|e| e.into_inner());
        let key = state.to_owned();
        match m.get(&key) {
            Some((c, exp)) if c == call && *exp >= now => {
                m.remove(&key);
                true
            }
            _ => false,
        }
    }
}

/// What the sidecar saw in a server's answer: a question of the server's (by the SHA-256 of its
/// state) for a call, or a task it created for a caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum Seen {
    Question { state: String, call: Call },
    Task { id: String, caller: String },
}

/// What a [`Watch`] does with what it saw: records it, and returns what to wait for before the
/// answer goes on (a record kept by another sidecar), if anything.
pub type Record = Arc<dyn Fn(Seen) -> Option<Keeping> + Send + Sync>;

/// A record being kept by another sidecar.
pub type Keeping = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The server's answer to a forwarded call, passed through untouched while the sidecar looks
/// for an `input_required` or a task in it (a JSON answer up to [`MAX_WATCHED`] bytes, or each
/// event of a stream). A frame that showed one goes on once it is recorded, so the client's
/// next request finds the record.
pub struct Watch<B> {
    inner: B,
    record: Record,
    call: Call,
    sse: Option<crate::mcp::sse::Splitter>,
    json: Vec<u8>,
    /// The answer is too large to be a question: passed on unwatched.
    stopped: bool,
    /// A frame held until its records are kept.
    held: Option<(http_body::Frame<bytes::Bytes>, Vec<Keeping>)>,
}

/// The largest JSON answer (or event) looked into: an `input_required` or a task is a few KiB,
/// and a larger answer is passed on without being held.
pub const MAX_WATCHED: usize = 64 << 10;

impl<B> Watch<B> {
    pub fn new(inner: B, record: Record, call: Call, event_stream: bool) -> Self {
        Watch {
            inner,
            record,
            call,
            sse: event_stream.then(|| crate::mcp::sse::Splitter::new(MAX_WATCHED)),
            json: Vec::new(),
            stopped: false,
            held: None,
        }
    }

    /// What one message of the answer shows, if anything.
    fn look(&self, data: &[u8]) -> Option<Seen> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Asked {
            result_type: Option<String>,
            request_state: Option<String>,
            task_id: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            result: Option<Asked>,
        }
        if !data.windows(10).any(|w| w == b"resultType") {
            return None;
        }
        let Ok(Answer { result: Some(a) }) = serde_json::from_slice::<Answer>(data) else {
            return None;
        };
        match (a.result_type.as_deref(), a.request_state, a.task_id) {
            (Some("input_required"), Some(state), _) => Some(Seen::Question {
                state: crate::policy::sha256_hex(state.as_bytes()),
                call: self.call.clone(),
            }),
            (Some("task"), _, Some(id)) => Some(Seen::Task {
                id,
                caller: self.call.caller.clone(),
            }),
            _ => None,
        }
    }

    /// The messages a chunk completes, looked into.
    fn feed(&mut self, chunk: &bytes::Bytes, last: bool) -> Vec<Seen> {
        if self.stopped {
            return Vec::new();
        }
        let mut seen = Vec::new();
        match &mut self.sse {
            Some(s) => {
                s.push(chunk.clone());
                let mut events = Vec::new();
                loop {
                    match s.next_event() {
                        Ok(Some(e)) => events.push(e),
                        Ok(None) => break,
                        // An event this large is no question: the rest passes unwatched.
                        Err(_) => {
                            self.stopped = true;
                            self.sse = None;
                            break;
                        }
                    }
                }
                for e in events {
                    if let Some(d) = crate::mcp::sse::event_data(&e) {
                        seen.extend(self.look(&d));
                    }
                }
            }
            None if self.json.len() + chunk.len() <= MAX_WATCHED => {
                self.json.extend_from_slice(chunk);
                if last {
                    let json = std::mem::take(&mut self.json);
                    self.stopped = true;
                    seen.extend(self.look(&json));
                }
            }
            // A large answer is no question: not held, not looked into.
            None => {
                self.stopped = true;
                self.json = Vec::new();
            }
        }
        seen
    }
}

impl<B> http_body::Body for Watch<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some((_, waits)) = &mut self.held {
            waits.retain_mut(|w| w.as_mut().poll(cx).is_pending());
            if !waits.is_empty() {
                return Poll::Pending;
            }
            let (frame, _) = self.held.take().expect("held");
            return Poll::Ready(Some(Ok(frame)));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let frame = match polled {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(None) if self.sse.is_none() && !self.stopped => {
                // A JSON answer whose end came without data.
                let json = std::mem::take(&mut self.json);
                self.stopped = true;
                if let Some(seen) = self.look(&json) {
                    // Nothing is left to hold back: recorded as it may be.
                    if let Some(w) = (self.record)(seen) {
                        tokio::spawn(w);
                    }
                }
                return Poll::Ready(None);
            }
            other => return other,
        };
        let Some(data) = frame.data_ref().cloned() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        // A server may not be polled past its last frame.
        let last = self.inner.is_end_stream();
        let waits: Vec<_> = self
            .feed(&data, last)
            .into_iter()
            .filter_map(|s| (self.record)(s))
            .collect();
        if waits.is_empty() {
            return Poll::Ready(Some(Ok(frame)));
        }
        self.held = Some((frame, waits));
        self.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.held {
            Some(_) => http_body::SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_question_completes_its_own_call_once() {
        let p = Pending::default();
        let call = Call {
            caller: "a".into(),
            tool: "t".into(),
            arguments_sha256: "x".into(),
            policy_hash: "p".into(),
        };
        p.asked("server-state", call.clone(), 100);
        let other = Call {
            caller: "b".into(),
            ..call.clone()
        };
        assert!(!p.completes("server-state", &other, 101), "another caller");
        assert!(!p.completes("other-state", &call, 101));
        assert!(
            !p.completes("server-state", &call, 100 + HOLD_SECS + 1),
            "expired"
        );
        assert!(p.completes("server-state", &call, 101));
        assert!(!p.completes("server-state", &call, 102), "once");
    }
}
