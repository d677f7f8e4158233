//! What binds a later request to a call decided earlier — a server's question (the retry that
//! completes it is not counted again) and a task (only its creator acts on it) — kept by one
//! owner among the policy's sidecars, so the request may land on any replica. Without peers, or
//! when this sidecar owns it, the record is kept here.

use super::*;
use crate::sidecar::confirm::continuation::{Keeping, Seen};

/// What binding owners are placed under (no counter is named so: counter names have no spaces).
const BOUND: &str = "bound requests";

fn key(seen: &Seen) -> String {
    match seen {
        Seen::Question { state, .. } => format!("q:{state}"),
        Seen::Task { id, .. } => format!("t:{id}"),
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BindRequest {
    /// `true`: keep it; `false`: check it (a question is taken, once).
    keep: bool,
    seen: Seen,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "camelCase")]
pub(super) enum BindAnswer {
    Yes,
    No,
    NotOwner,
}

/// Kept here: `keep` records it; else whether it holds (a question is taken).
fn here(st: &State, seen: &Seen, keep: bool) -> bool {
    let now = unix_now();
    let c = &st.confirm;
    match (seen, keep) {
        (Seen::Question { state, call }, true) => c.continuations.asked(state, call.clone(), now),
        (Seen::Task { id, caller }, true) => c.tasks.created(id, caller, now),
        (Seen::Question { state, call }, false) => {
            return c.continuations.completes(state, call, now)
        }
        (Seen::Task { id, caller }, false) => return c.tasks.check(id, caller, now).is_ok(),
    }
    true
}

/// The owner to ask, when another sidecar keeps `seen`.
fn elsewhere(st: &State, seen: &Seen) -> Option<(String, hmac::Key)> {
    let view = st.peers.view.load_full();
    if view.mode != Mode::Known {
        return None;
    }
    let (_, owner) = st.peers.owner(&view, BOUND, &key(seen))?;
    if Some(&owner.name) == st.peers.me.as_ref() {
        return None;
    }
    Some((owner.address.clone(), view.key.clone()?))
}

async fn ask(
    st: &State,
    label: &str,
    to: (String, hmac::Key),
    seen: Seen,
    keep: bool,
) -> Option<bool> {
    let (address, peer_key) = to;
    if st.peers.is_down(&address) {
        return None;
    }
    let body = serde_json::to_vec(&BindRequest { keep, seen }).expect("serialises");
    let sent = tokio::time::timeout(
        ASK_TIMEOUT,
        post(&st.peers.client, &peer_key, &address, BIND_PATH, body),
    )
    .await;
    match sent
        .ok()
        .and_then(Result::ok)
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(BindAnswer::Yes) => {
            record(st, label, "taken");
            Some(true)
        }
        Some(BindAnswer::No) => Some(false),
        Some(BindAnswer::NotOwner) => {
            record(st, label, "not_owner");
            None
        }
        None => {
            record(st, label, "error");
            st.peers.mark_down(&address);
            None
        }
    }
}

/// Keeps what a server's answer showed: here, or with its owner — then the returned future is
/// to be awaited before the answer goes on (kept here too if the owner cannot be reached).
pub(in crate::sidecar) fn keep(st: &Arc<State>, label: &str, seen: Seen) -> Option<Keeping> {
    let Some(to) = elsewhere(st, &seen) else {
        here(st, &seen, true);
        return None;
    };
    let (st, label) = (st.clone(), label.to_owned());
    Some(Box::pin(async move {
        if ask(&st, &label, to, seen.clone(), true).await.is_none() {
            here(&st, &seen, true);
        }
    }))
}

/// Whether a request is bound as `seen` says (a question is taken, once): asked of its owner,
/// or looked up here. An owner that cannot be asked answers no (a retry is then counted, a task
/// request refused).
pub(in crate::sidecar) async fn holds(st: &State, label: &str, seen: Seen) -> bool {
    match elsewhere(st, &seen) {
        None => here(st, &seen, false),
        Some(to) => ask(st, label, to, seen, false).await.unwrap_or(false),
    }
}

/// A binding another sidecar asks this one, its owner, to keep or check.
pub(super) fn serve_bound(st: &State, bytes: &[u8]) -> Response<Body> {
    let Ok(r) = serde_json::from_slice::<BindRequest>(bytes) else {
        return serve::refuse(StatusCode::BAD_REQUEST, "not a binding request");
    };
    let answer = match st.peers.owns(BOUND, &key(&r.seen)) {
        false => BindAnswer::NotOwner,
        true if here(st, &r.seen, r.keep) => BindAnswer::Yes,
        true => BindAnswer::No,
    };
    json(
        StatusCode::OK,
        serde_json::to_vec(&answer).expect("serialises"),
    )
}
