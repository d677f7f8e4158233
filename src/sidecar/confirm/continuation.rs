//! A server's own `input_required`: the call it answers was decided and counted when it was
//! forwarded; the client's retry that completes it (carrying the server's `requestState`) is
//! forwarded untouched and not counted again. The sidecar remembers, for each such answer, the
//! SHA-256 of the server's state and the call it belongs to; a retry is a continuation only with
//! that state, from the same caller, for the same tool and arguments, under the same policy —
//! once. Anything else is a new call, decided and counted like any.

use crate::policy::sha256_hex;
use std::collections::HashMap;
use std::sync::Mutex;

/// Server states remembered at once, at most; beyond, a retry is counted again (never less).
pub const MAX_PENDING: usize = 65_536;
/// How long a server's question is remembered.
pub const HOLD_SECS: u64 = 3600;

/// The call a server's question belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The server answered `call` with `input_required` carrying `state`.
    pub fn asked(&self, state: &str, call: Call, now: u64) {
        let mut m = self.by_state.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_PENDING {
            m.retain(|_, (_, exp)| *exp >= now);
            if m.len() >= MAX_PENDING {
                return;
            }
        }
        m.insert(sha256_hex(state.as_bytes()), (call, now + HOLD_SECS));
    }

    /// Whether a retry carrying `state` completes `call` (taken once).
    pub fn completes(&self, state: &str, call: &Call, now: u64) -> bool {
        let mut m = self.by_state.lock().unwrap_or_else(|e| e.into_inner());
        let key = sha256_hex(state.as_bytes());
        match m.get(&key) {
            Some((c, exp)) if c == call && *exp >= now => {
                m.remove(&key);
                true
            }
            _ => false,
        }
    }
}

/// The server's answer to a forwarded call, passed through untouched while the sidecar looks
/// for an `input_required` in it (a JSON answer up to [`MAX_WATCHED`] bytes, or each event of a
/// stream).
pub struct Watch<B> {
    inner: B,
    on: std::sync::Arc<super::Confirmations>,
    call: Call,
    sse: Option<crate::mcp::sse::Splitter>,
    json: Vec<u8>,
    /// The answer is too large to be a question: passed on unwatched.
    stopped: bool,
}

/// The largest JSON answer (or event) looked into: an `input_required` or a task is a few KiB,
/// and a larger answer is passed on without being held.
pub const MAX_WATCHED: usize = 64 << 10;

impl<B> Watch<B> {
    pub fn new(
        inner: B,
        on: std::sync::Arc<super::Confirmations>,
        call: Call,
        event_stream: bool,
    ) -> Self {
        Watch {
            inner,
            on,
            call,
            sse: event_stream.then(|| crate::mcp::sse::Splitter::new(MAX_WATCHED)),
            json: Vec::new(),
            stopped: false,
        }
    }

    fn look(&self, data: &[u8]) {
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
            return;
        }
        let Ok(Answer { result: Some(a) }) = serde_json::from_slice::<Answer>(data) else {
            return;
        };
        let now = super::super::caller::unix_now();
        match (a.result_type.as_deref(), a.request_state, a.task_id) {
            (Some("input_required"), Some(state), _) => {
                self.on.continuations.asked(&state, self.call.clone(), now)
            }
            (Some("task"), _, Some(task)) => self.on.tasks.created(&task, &self.call.caller, now),
            _ => {}
        }
    }

    fn feed(&mut self, chunk: &bytes::Bytes) {
        if self.stopped {
            return;
        }
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
                        self.look(&d);
                    }
                }
            }
            None if self.json.len() + chunk.len() <= MAX_WATCHED => {
                self.json.extend_from_slice(chunk)
            }
            // A large answer is no question: not held, not looked into.
            None => {
                self.stopped = true;
                self.json = Vec::new();
            }
        }
    }
}

impl<B> http_body::Body for Watch<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.feed(&data);
                }
                // A server may not be polled past its last frame.
                if self.sse.is_none() && !self.stopped && self.inner.is_end_stream() {
                    let json = std::mem::take(&mut self.json);
                    self.look(&json);
                }
            }
            std::task::Poll::Ready(None) if self.sse.is_none() && !self.stopped => {
                let json = std::mem::take(&mut self.json);
                self.look(&json);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
