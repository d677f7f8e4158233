//! Approval uses counted by the approval's owner among the policy's sidecars.

use super::*;

/// A use of an approval held for a call: reserved here, or counted by the approval's owner
/// among the policy's sidecars.
pub(in crate::sidecar) enum Use {
    Here(Reservation),
    Owner(OwnedUse),
}

/// A use of an approval its owner counted for a call here: given back to it if the call does
/// not run.
#[derive(Debug)]
pub(in crate::sidecar) struct OwnedUse {
    address: String,
    key: String,
}

/// Reserves a use of the approval of call `id` for a call here: counted here when this sidecar
/// owns the approval (or has no peers), else by asking its owner. `None`: no use may be had —
/// none left, or (never open) the owner cannot be asked.
pub(in crate::sidecar) async fn reserve_use(st: &State, label: &str, id: &str) -> Option<Use> {
    let now = unix_now();
    let here = || st.approvals.reserve(id, now).map(Use::Here);
    let view = st.peers.view.load_full();
    match view.mode {
        Mode::Alone => return here(),
        // Counted here, a use could be counted again on another pod.
        Mode::Unknown => return None,
        Mode::Known => {}
    }
    let key = st.approvals.live_key(id, now)?;
    let (_, owner) = st.peers.owner(&view, APPROVALS, &key)?;
    if Some(&owner.name) == st.peers.me.as_ref() {
        return here();
    }
    let (Some(peer_key), Some(me)) = (view.key.as_ref(), st.peers.me.as_ref()) else {
        return None;
    };
    if st.peers.is_down(&owner.address) {
        return None;
    }
    let body = UseRequest {
        id: id.to_owned(),
        key: key.clone(),
        by: me.clone(),
    };
    let body = serde_json::to_vec(&body).expect("serialises");
    let sent = tokio::time::timeout(
        ASK_TIMEOUT,
        post(&st.peers.client, peer_key, &owner.address, USE_PATH, body),
    )
    .await;
    let answer = match sent {
        Ok(Ok(b)) => serde_json::from_slice::<UseAnswer>(&b).ok(),
        _ => None,
    };
    match answer {
        Some(UseAnswer::Reserved) => {
            record(st, label, "taken");
            Some(Use::Owner(OwnedUse {
                address: owner.address.clone(),
                key,
            }))
        }
        Some(UseAnswer::Refused) => {
            record(st, label, "limited");
            None
        }
        Some(UseAnswer::NotOwner) => {
            record(st, label, "not_owner");
            None
        }
        None => {
            record(st, label, "error");
            st.peers.mark_down(&owner.address);
            None
        }
    }
}

impl Peers {
    /// Gives an approval use back to its owner (the call did not run); best effort: a use that
    /// cannot be given back stays spent.
    pub(in crate::sidecar) fn give_back_use(&self, u: OwnedUse) {
        let view = self.view.load();
        let (Some(key), Some(me)) = (view.key.clone(), self.me.clone()) else {
            return;
        };
        let client = self.client.clone();
        let body = serde_json::to_vec(&UseRequest {
            id: String::new(),
            key: u.key,
            by: me,
        })
        .expect("serialises");
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                ASK_TIMEOUT,
                post(&client, &key, &u.address, UNUSE_PATH, body),
            )
            .await;
        });
    }
}
