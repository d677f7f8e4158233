//! Asking a client before 2026-07-28: `elicitation/create` on the call's own event stream. The
//! sidecar answers the call's POST with a stream, writes its question there, and waits for the
//! client's answer, which arrives as a POST of a JSON-RPC response to the sidecar's request id;
//! that answer is the sidecar's and never reaches the server. Only sessions whose `initialize`
//! declared elicitation are asked.

use super::CanElicit;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// How the sidecar's own request ids begin.
pub const ID_PREFIX: &str = "mcp-warden-confirm-";
/// Questions open on streams at once, at most; beyond, a call gets the policy's fallback.
pub const MAX_OPEN: usize = 1024;
/// Sessions whose capabilities are remembered per generation (two are kept).
const GENERATION: usize = 50_000;

/// The client's reply to a question on a stream: the JSON-RPC `result` or `error` member.
pub type Reply = Result<serde_json::Value, serde_json::Value>;

struct Waiting {
    caller: String,
    reply: oneshot::Sender<Reply>,
}

/// Questions open on event streams, and what the sessions declared they can be asked.
pub struct Open {
    waiting: Mutex<HashMap<String, Waiting>>,
    hasher: RandomState,
    sessions: Mutex<[HashMap<u64, CanElicit>; 2]>,
}

impl Default for Open {
    fn default() -> Self {
        Open {
            waiting: Mutex::default(),
            hasher: RandomState::new(),
            sessions: Mutex::new([HashMap::new(), HashMap::new()]),
        }
    }
}

/// Why a client's reply was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum NotTaken {
    /// No question of that id is open (answered, expired, or never asked).
    Unknown,
    /// Asked of another caller.
    OtherCaller,
}

impl Open {
    /// Remembers what a session's `initialize` declared.
    pub fn session_started(&self, session: &[u8], can: CanElicit) {
        if can == CanElicit::default() {
            return;
        }
        let h = self.hasher.hash_one(session);
        let mut g = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if g[0].len() >= GENERATION {
            g.swap(0, 1);
            g[0].clear();
        }
        g[0].insert(h, can);
    }

    /// What a session declared it can be asked (nothing for a session not seen starting).
    pub fn session(&self, session: &[u8]) -> CanElicit {
        let h = self.hasher.hash_one(session);
        let g = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        g[0].get(&h)
            .or_else(|| g[1].get(&h))
            .copied()
            .unwrap_or_default()
    }

    /// Opens a question of request id `id` for `caller`; `None` when too many are open.
    pub fn ask(&self, id: &str, caller: &str) -> Option<oneshot::Receiver<Reply>> {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|_, q| !q.reply.is_closed());
        if w.len() >= MAX_OPEN {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        w.insert(
            id.to_owned(),
            Waiting {
                caller: caller.to_owned(),
                reply: tx,
            },
        );
        Some(rx)
    }

    /// Closes a question nobody answers any more.
    pub fn forget(&self, id: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Hands the client's reply to the question it answers; only the caller asked may answer.
    pub fn reply(&self, id: &str, caller: &str, reply: Reply) -> Result<(), NotTaken> {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match w.get(id) {
            None => return Err(NotTaken::Unknown),
            Some(q) if q.caller != caller => return Err(NotTaken::OtherCaller),
            Some(_) => {}
        }
        let q = w.remove(id).expect("present");
        q.reply.send(reply).map_err(|_| NotTaken::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_is_answered_once_and_only_by_its_caller() {
        let o = Open::default();
        let mut rx = o.ask("q1", "alice").unwrap();
        assert_eq!(
            o.reply("q1", "mallory", Ok(serde_json::json!({}))),
            Err(NotTaken::OtherCaller)
        );
        assert_eq!(
            o.reply("q2", "alice", Ok(serde_json::json!({}))),
            Err(NotTaken::Unknown)
        );
        o.reply("q1", "alice", Ok(serde_json::json!({"action": "accept"})))
            .unwrap();
        assert_eq!(rx.try_recv().unwrap().unwrap()["action"], "accept");
        assert_eq!(
            o.reply("q1", "alice", Ok(serde_json::json!({}))),
            Err(NotTaken::Unknown)
        );
    }

    #[test]
    fn sessions_remember_what_they_declared() {
        let o = Open::default();
        o.session_started(
            b"s1",
            CanElicit {
                form: true,
                url: false,
            },
        );
        o.session_started(b"s2", CanElicit::default());
        assert!(o.session(b"s1").form);
        assert_eq!(o.session(b"s2"), CanElicit::default());
        assert_eq!(o.session(b"other"), CanElicit::default());
    }
}
