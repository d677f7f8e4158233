//! The peer API as an owner answers it: verified, then counts taken, given back, approval uses.

use super::*;

/// Nonces seen, with the time each was sent.
#[derive(Default)]
pub(super) struct Nonces {
    seen: HashMap<String, u64>,
}

impl Nonces {
    /// Records `nonce`: false if it was seen (a replay) or there is no room.
    pub(super) fn fresh(&mut self, nonce: &str, time: u64, now: u64) -> bool {
        if self.seen.len() >= MAX_NONCES {
            self.seen
                .retain(|_, t| t.saturating_add(2 * CLOCK_SKEW_SECS) >= now);
        }
        if self.seen.len() >= MAX_NONCES || self.seen.contains_key(nonce) {
            return false;
        }
        self.seen.insert(nonce.to_owned(), time);
        true
    }
}

/// Whether `path` is the peer API's.
pub fn handles(path: &str) -> bool {
    [
        TAKE_PATH,
        RETURN_PATH,
        USE_PATH,
        UNUSE_PATH,
        ONCE_PATH,
        BIND_PATH,
    ]
    .contains(&path)
}

/// Answers a peer's request (on the admin port).
pub async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != http::Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let path = req.uri().path().to_owned();
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_PEER_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the peer request is too large",
            )
        }
    };
    if let Err(why) = st.peers.verify(&parts.headers, &path, &bytes) {
        tracing::warn!(%why, "peer request refused");
        return refuse(StatusCode::UNAUTHORIZED, &why);
    }
    let Some(policy) = st.policy.load_full() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "no policy loaded");
    };
    if path == USE_PATH || path == UNUSE_PATH {
        return approval_use(&st, &path, &bytes);
    }
    if path == ONCE_PATH {
        return super::once::take_owned_answer(&st, &bytes);
    }
    if path == BIND_PATH {
        return super::bind::serve_bound(&st, &bytes);
    }
    let engine = &policy.engine;
    if path == RETURN_PATH {
        let Ok(r) = serde_json::from_slice::<ReturnRequest>(&bytes) else {
            return refuse(StatusCode::BAD_REQUEST, "not a return request");
        };
        for one in r.returns {
            engine.give_back_owned(&one.counter, one.spent, one.count.min(LEASE_MOST));
        }
        return json(StatusCode::OK, b"{}".to_vec());
    }
    let Ok(r) = serde_json::from_slice::<TakeRequest>(&bytes) else {
        return refuse(StatusCode::BAD_REQUEST, "not a take request");
    };
    let answer = take_owned(&st, engine, &r);
    json(
        StatusCode::OK,
        serde_json::to_vec(&answer).expect("serialises"),
    )
}

/// A use of an approval another sidecar asks of this one, its owner (or gives back).
fn approval_use(st: &State, path: &str, bytes: &[u8]) -> Response<Body> {
    let Ok(r) = serde_json::from_slice::<UseRequest>(bytes) else {
        return refuse(StatusCode::BAD_REQUEST, "not an approval use request");
    };
    if path == UNUSE_PATH {
        st.approvals.give_back_use(&r.key, &r.by);
        return json(StatusCode::OK, b"{}".to_vec());
    }
    let answer = match st.peers.owns(APPROVALS, &r.key) {
        false => UseAnswer::NotOwner,
        true => match st.approvals.reserve_key(&r.id, &r.key, unix_now()) {
            Some(reservation) => {
                reservation.commit(Some(&r.by));
                UseAnswer::Reserved
            }
            None => UseAnswer::Refused,
        },
    };
    json(
        StatusCode::OK,
        serde_json::to_vec(&answer).expect("serialises"),
    )
}

/// Takes a peer's asks as their owner.
fn take_owned(st: &State, engine: &Engine, r: &TakeRequest) -> TakeAnswer {
    let pol = engine.policy();
    let same = |t: &TakeOne| {
        pol.counters.iter().any(|c| {
            c.name == t.counter
                && c.max.get() == t.max
                && c.window.length.as_millis() as u64 == t.window_ms
                && c.scope == t.scope
        })
    };
    if r.takes.iter().any(|t| !same(t)) {
        return TakeAnswer::Mismatch;
    }
    let view = st.peers.view.load();
    let mine = |t: &TakeOne| {
        view.mode == Mode::Known
            && st
                .peers
                .owner(&view, &t.counter, &t.key)
                .is_some_and(|(_, p)| Some(&p.name) == st.peers.me.as_ref())
    };
    if !r.takes.iter().all(mine) {
        return TakeAnswer::NotOwner;
    }
    let asks: Vec<(&str, &str)> = r
        .takes
        .iter()
        .map(|t| (t.counter.as_str(), t.key.as_str()))
        .collect();
    let now = crate::engine::monotonic_now();
    match engine.take_owned(&asks, now) {
        Ok(spent) => {
            // Leases: as many more counts as fit, at most what was asked.
            let leased: Vec<u32> = r
                .takes
                .iter()
                .map(|t| match t.lease.min(LEASE_MOST) {
                    0 => 0,
                    n => engine
                        .take_extra(&t.counter, &t.key, n, now)
                        .map_or(0, |(got, _)| got),
                })
                .collect();
            let leased = match leased.iter().any(|&n| n > 0) {
                true => leased,
                false => Vec::new(),
            };
            TakeAnswer::Taken { spent, leased }
        }
        Err(None) => TakeAnswer::Mismatch,
        Err(Some((c, wait))) => TakeAnswer::Limited {
            counter: c.name.clone(),
            retry_after_ms: wait.as_millis() as u64,
        },
    }
}

impl Peers {
    /// Checks a peer request's time, nonce and MAC.
    fn verify(&self, h: &http::HeaderMap, path: &str, body: &[u8]) -> Result<(), String> {
        let view = self.view.load();
        let key = view.key.as_ref().ok_or("this sidecar has no peer key")?;
        let get = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("no {name} header"))
        };
        let (time, nonce, mac) = (get(TIME_HEADER)?, get(NONCE_HEADER)?, get(MAC_HEADER)?);
        let mac = unhex(mac).ok_or("the MAC is not hex")?;
        hmac::verify(key, &signed(path, time, nonce, body), &mac)
            .map_err(|_| "the MAC does not verify".to_owned())?;
        let sent: u64 = time.parse().map_err(|_| "the time is not a number")?;
        let now = unix_now();
        if sent.abs_diff(now) > CLOCK_SKEW_SECS {
            return Err(format!(
                "the request's time is {} s off",
                sent.abs_diff(now)
            ));
        }
        if nonce.len() != 32 || unhex(nonce).is_none() {
            return Err("the nonce is not 16 hex bytes".into());
        }
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if !nonces.fresh(nonce, sent, now) {
            return Err("the nonce was seen before (a replay)".into());
        }
        Ok(())
    }
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(super) fn refuse(status: StatusCode, why: &str) -> Response<Body> {
    json(
        status,
        serde_json::to_vec(&serde_json::json!({ "error": why })).expect("serialises"),
    )
}
