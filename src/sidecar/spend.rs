//! What the allowed calls of a forwarded request took, settled by the server's answer.

use super::peers::{Lent, Use};
use super::record;
use super::State;
use crate::engine::Taken;

/// What the allowed calls of a forwarded request took: their counts and approval uses. A call
/// spends them when the server accepted it; they are given back when it provably did not run:
/// the server answered with a redirect (the client sends the request again, elsewhere), or the
/// connection to it failed before the request was sent. Dropped unsettled, they stay spent.
#[derive(Default)]
pub(super) struct Spend {
    taken: Vec<Taken>,
    /// Counts other sidecars of the policy took for these calls, as owners of their keys.
    pub(super) lent: Vec<Lent>,
    approvals: Vec<HeldUse>,
}

/// A reserved approval use of an allowed call, with its metric's labels.
struct HeldUse {
    reservation: Use,
    policy: String,
    tool: String,
}

impl Spend {
    /// Counts an allowed call took.
    pub(super) fn took(&mut self, taken: Taken) {
        if !taken.is_empty() {
            self.taken.push(taken);
        }
    }

    /// An approval use an allowed call holds, with its metric's labels.
    pub(super) fn holds(&mut self, reservation: Use, policy: &str, tool_label: &str) {
        self.approvals.push(HeldUse {
            reservation,
            policy: policy.to_owned(),
            tool: tool_label.to_owned(),
        });
    }

    /// The calls ran (or may have): counts stay, approval uses are spent.
    pub(super) fn commit(self, st: &State) {
        for u in self.approvals {
            if let Use::Here(r) = u.reservation {
                r.commit(None);
            }
            // A use its owner counted is spent there already.
            record::approval(st, &u.policy, &u.tool, "used");
        }
    }

    /// The calls provably did not run: counts (here and at their owners) and approval uses
    /// are given back.
    pub(super) fn give_back(self, st: &State) {
        for t in self.taken {
            t.give_back();
        }
        st.peers.give_back(self.lent);
        for u in self.approvals {
            match u.reservation {
                // Dropping a reservation gives the use back.
                Use::Here(r) => drop(r),
                Use::Owner(o) => st.peers.give_back_use(o),
            }
        }
    }
}
