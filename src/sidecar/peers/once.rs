//! Answers to the questions sidecars put to users (`approval: {by: user}`), taken once across
//! the policy's sidecars: each answer's owner among them remembers it, so a `requestState`
//! replayed to another replica is refused there too.

use super::*;
use crate::sidecar::confirm::seal::Question;

/// What answer owners are placed under (no counter is named so: counter names have no spaces).
const ANSWERS: &str = "user answers";

/// An answer asked to be taken by its owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OnceRequest {
    nonce: String,
    exp: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "camelCase")]
pub(super) enum OnceAnswer {
    Taken,
    /// Taken before (or too many are remembered to take one more).
    Seen,
    NotOwner,
}

/// Takes the answer to question `q` for a call here: `false` when it was taken before, or
/// (never open) when its owner cannot be asked.
pub(in crate::sidecar) async fn take_answer(st: &State, label: &str, q: &Question) -> bool {
    let now = unix_now();
    let here = || st.confirm.take_once(&q.nonce, q.exp, now);
    let view = st.peers.view.load_full();
    match view.mode {
        Mode::Alone => return here(),
        // Taken here, the answer could be taken again on another pod.
        Mode::Unknown => return false,
        Mode::Known => {}
    }
    let Some((_, owner)) = st.peers.owner(&view, ANSWERS, &q.nonce) else {
        return false;
    };
    if Some(&owner.name) == st.peers.me.as_ref() {
        return here();
    }
    let Some(peer_key) = view.key.as_ref() else {
        return false;
    };
    if st.peers.is_down(&owner.address) {
        return false;
    }
    let body = serde_json::to_vec(&OnceRequest {
        nonce: q.nonce.clone(),
        exp: q.exp,
    })
    .expect("serialises");
    let sent = tokio::time::timeout(
        ASK_TIMEOUT,
        post(&st.peers.client, peer_key, &owner.address, ONCE_PATH, body),
    )
    .await;
    match sent
        .ok()
        .and_then(Result::ok)
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(OnceAnswer::Taken) => {
            record(st, label, "taken");
            true
        }
        Some(OnceAnswer::Seen) => {
            record(st, label, "limited");
            false
        }
        Some(OnceAnswer::NotOwner) => {
            record(st, label, "not_owner");
            false
        }
        None => {
            record(st, label, "error");
            st.peers.mark_down(&owner.address);
            false
        }
    }
}

/// An answer another sidecar asks this one, its owner, to take.
pub(super) fn take_owned_answer(st: &State, bytes: &[u8]) -> Response<Body> {
    let Ok(r) = serde_json::from_slice::<OnceRequest>(bytes) else {
        return serve::refuse(StatusCode::BAD_REQUEST, "not an answer request");
    };
    let answer = match st.peers.owns(ANSWERS, &r.nonce) {
        false => OnceAnswer::NotOwner,
        true if st.confirm.take_once(&r.nonce, r.exp, unix_now()) => OnceAnswer::Taken,
        true => OnceAnswer::Seen,
    };
    json(
        StatusCode::OK,
        serde_json::to_vec(&answer).expect("serialises"),
    )
}
