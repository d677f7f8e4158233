//! Putting a call's counts to their owners, and the fallback share when an owner cannot be asked.

use super::*;

/// A count an owner took for this sidecar: given back to it if the call does not run.
#[derive(Debug)]
pub(in crate::sidecar) struct Lent {
    pub(super) address: String,
    pub(super) counter: String,
    pub(super) spent: Spent,
}

/// Why an owner's answer could not be used (a fallback's `reason` label).
#[derive(Debug, Clone, Copy)]
enum Unasked {
    Unreachable,
    NotOwner,
    Mismatch,
    Busy,
}

impl Unasked {
    fn as_str(self) -> &'static str {
        match self {
            Unasked::Unreachable => "unreachable",
            Unasked::NotOwner => "not_owner",
            Unasked::Mismatch => "mismatch",
            Unasked::Busy => "busy",
        }
    }
}

/// Puts an allowed call's remote asks to their owners. Each owner counts its asks all or none;
/// an owner that cannot be asked is replaced by the fallback share here. If any is full, every
/// count the call took (here and at owners) is given back and the call is refused.
pub(in crate::sidecar) async fn ask_owners<'p>(
    st: &State,
    label: &str,
    engine: &'p Engine,
    mut d: Decision<'p>,
    now: u64,
    lent: &mut Vec<Lent>,
) -> Decision<'p> {
    let mut asks = std::mem::take(&mut d.remote);
    let view = st.peers.view.load_full();
    let mut mine = Vec::new();
    // Counts a lease holds are spent here, without a hop.
    asks.retain(|a| {
        let counter = &engine.policy().counters[a.counter].name;
        match st.peers.spend_leased(counter, &a.key) {
            Some(l) => {
                mine.push(l);
                false
            }
            None => true,
        }
    });
    let mut owners: Vec<u32> = asks.iter().map(|a| a.owner).collect();
    owners.sort_unstable();
    owners.dedup();
    let answers = futures_util::future::join_all(owners.iter().map(|&o| {
        let mine: Vec<&Ask> = asks.iter().filter(|a| a.owner == o).collect();
        ask_one(st, engine, &view, o, mine)
    }))
    .await;
    let mut hit: Option<(usize, &'p str, Duration)> = None;
    // The peer set changed since the call was placed: those count on shares.
    let lost: Vec<&Ask<'p>> = asks
        .iter()
        .filter(|a| a.owner as usize >= view.peers.len())
        .collect();
    if !lost.is_empty() {
        match fallback(st, label, engine, &view, &lost, now, Unasked::NotOwner) {
            Ok(taken) => d.taken.extend(taken),
            Err(h) => hit = Some(h),
        }
    }
    for (&o, answer) in owners.iter().zip(answers) {
        let group: Vec<&Ask<'p>> = asks.iter().filter(|a| a.owner == o).collect();
        let Some(peer) = view.peers.get(o as usize) else {
            continue;
        };
        let result = match answer {
            Ok(TakeAnswer::Taken { spent, leased }) if spent.len() == group.len() => {
                record(st, label, "taken");
                for (i, (a, s)) in group.iter().zip(spent).enumerate() {
                    let counter = &engine.policy().counters[a.counter].name;
                    if let Some(&n) = leased.get(i).filter(|&&n| n > 0) {
                        st.peers.lease(label, counter, &a.key, &peer.address, s, n);
                    }
                    mine.push(Lent {
                        address: peer.address.clone(),
                        counter: counter.clone(),
                        spent: s,
                    });
                }
                continue;
            }
            Ok(TakeAnswer::Limited {
                counter,
                retry_after_ms,
            }) => {
                record(st, label, "limited");
                let a = group
                    .iter()
                    .find(|a| engine.policy().counters[a.counter].name == counter)
                    .unwrap_or(&group[0]);
                Err((a.counter, a.declared, Duration::from_millis(retry_after_ms)))
            }
            Ok(TakeAnswer::NotOwner) => {
                fallback(st, label, engine, &view, &group, now, Unasked::NotOwner)
            }
            Ok(TakeAnswer::Mismatch) => {
                fallback(st, label, engine, &view, &group, now, Unasked::Mismatch)
            }
            Ok(TakeAnswer::Taken { .. }) | Err(Unasked::Unreachable) => {
                st.peers.mark_down(&peer.address);
                fallback(st, label, engine, &view, &group, now, Unasked::Unreachable)
            }
            Err(why) => fallback(st, label, engine, &view, &group, now, why),
        };
        match result {
            Ok(taken) => d.taken.extend(taken),
            Err((ci, declared, wait)) => {
                if hit.is_none_or(|(_, _, w)| wait > w) {
                    hit = Some((ci, declared, wait));
                }
            }
        }
    }
    let Some((ci, declared, wait)) = hit else {
        lent.extend(mine);
        return d;
    };
    std::mem::take(&mut d.taken).give_back();
    st.peers.give_back(mine);
    engine.limited(d, ci, declared, wait)
}

/// Counts `group` on this sidecar's fallback shares, because its owner could not be asked.
fn fallback<'p>(
    st: &State,
    label: &str,
    engine: &'p Engine,
    view: &View,
    group: &[&Ask<'p>],
    now: u64,
    why: Unasked,
) -> Result<Taken, (usize, &'p str, Duration)> {
    if matches!(why, Unasked::Unreachable | Unasked::Busy) {
        record(st, label, "error");
    } else {
        record(st, label, why.as_str());
    }
    st.metrics
        .budget_fallbacks
        .with_label_values(&[label, why.as_str()])
        .inc();
    engine
        .take_shares(group, view.ways, now)
        .map_err(|(ci, wait)| {
            let declared = group
                .iter()
                .find(|a| a.counter == ci)
                .map_or("", |a| a.declared);
            (ci, declared, wait)
        })
}

/// Asks owner `o` for `asks`.
async fn ask_one(
    st: &State,
    engine: &Engine,
    view: &View,
    o: u32,
    asks: Vec<&Ask<'_>>,
) -> Result<TakeAnswer, Unasked> {
    let (Some(peer), Some(key)) = (view.peers.get(o as usize), view.key.as_ref()) else {
        return Err(Unasked::Unreachable);
    };
    let Ok(_permit) = st.peers.inflight.clone().try_acquire_owned() else {
        return Err(Unasked::Busy);
    };
    let body = TakeRequest {
        takes: asks
            .iter()
            .map(|a| {
                let c = &engine.policy().counters[a.counter];
                TakeOne {
                    counter: c.name.clone(),
                    key: a.key.clone(),
                    max: c.max.get(),
                    window_ms: c.window.length.as_millis() as u64,
                    scope: c.scope,
                    lease: st.peers.lease_size(c.max.get(), view.peers.len()),
                }
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&body).expect("a request serialises");
    let answer = tokio::time::timeout(
        ASK_TIMEOUT,
        post(&st.peers.client, key, &peer.address, TAKE_PATH, bytes),
    )
    .await;
    match answer {
        Ok(Ok(b)) => serde_json::from_slice(&b).map_err(|_| Unasked::Unreachable),
        _ => Err(Unasked::Unreachable),
    }
}

impl Peers {
    /// Gives counts back to their owners (the call did not run); best effort: a count that
    /// cannot be given back stays spent (a limit may refuse early, never allow more).
    pub(in crate::sidecar) fn give_back(&self, lent: Vec<Lent>) {
        if lent.is_empty() {
            return;
        }
        let Some(key) = self.view.load().key.clone() else {
            return;
        };
        let mut by_owner: HashMap<String, Vec<ReturnOne>> = HashMap::new();
        for l in lent {
            by_owner.entry(l.address).or_default().push(ReturnOne {
                counter: l.counter,
                spent: l.spent,
                count: 1,
            });
        }
        for (address, returns) in by_owner {
            let client = self.client.clone();
            let key = key.clone();
            let body = serde_json::to_vec(&ReturnRequest { returns }).expect("serialises");
            tokio::spawn(async move {
                let sent = tokio::time::timeout(
                    ASK_TIMEOUT,
                    post(&client, &key, &address, RETURN_PATH, body),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    tracing::debug!(%address, "a count could not be given back to its owner");
                }
            });
        }
    }
}
