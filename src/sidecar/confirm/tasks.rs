//! Tasks (2026-07-28's tasks extension): a `tools/call` the server answers with
//! `resultType: "task"` was decided when it was made; the task it created is bound to the
//! caller who made it. `tasks/get`, `tasks/update` and `tasks/cancel` are forwarded only for a
//! task this sidecar saw created, and only from that caller: nobody polls, answers for, or
//! cancels another caller's task, and no task the sidecar never saw decided is driven through it.

use std::collections::HashMap;
use std::sync::Mutex;

/// Tasks remembered at once, at most; beyond, the oldest-expiring are dropped first.
pub const MAX_TASKS: usize = 65_536;
/// How long a task stays bound after it was created.
pub const HOLD_SECS: u64 = 24 * 3600;

/// The methods that act on a task by its id.
pub const METHODS: [&str; 3] = ["tasks/get", "tasks/update", "tasks/cancel"];

#[derive(Default)]
pub struct Bound {
    by_id: Mutex<HashMap<String, (String, u64)>>,
}

/// Why a request for a task is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Unbound {
    /// Not created through this sidecar (or forgotten since).
    Unknown,
    /// Created by another caller.
    OtherCaller,
}

impl Bound {
    /// The server created task `id` for `caller`'s call.
    pub fn created(&self, id: &str, caller: &str, now: u64) {
        let mut m = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_TASKS {
            m.retain(|_, (_, exp)| *exp >= now);
            if m.len() >= MAX_TASKS {
                let oldest = m
                    .iter()
                    .min_by_key(|(_, (_, e))| *e)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    m.remove(&k);
                }
            }
        }
        m.insert(id.to_owned(), (caller.to_owned(), now + HOLD_SECS));
    }

    /// Whether `caller` may act on task `id`.
    pub fn check(&self, id: &str, caller: &str, now: u64) -> Result<(), Unbound> {
        let m = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(id) {
            Some((c, exp)) if *exp >= now && c == caller => Ok(()),
            Some((_, exp)) if *exp >= now => Err(Unbound::OtherCaller),
            _ => Err(Unbound::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_its_creators_alone() {
        let b = Bound::default();
        b.created("t1", "alice", 100);
        assert_eq!(b.check("t1", "alice", 101), Ok(()));
        assert_eq!(b.check("t1", "mallory", 101), Err(Unbound::OtherCaller));
        assert_eq!(b.check("t2", "alice", 101), Err(Unbound::Unknown));
        assert_eq!(
            b.check("t1", "alice", 100 + HOLD_SECS + 1),
            Err(Unbound::Unknown)
        );
    }
}
