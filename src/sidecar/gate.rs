//! The gate: what is read from a gated request and decided before anything is forwarded.

use super::approvals;
use super::caller::Caller;
use super::reload::LoadedPolicy;
use super::State;
use super::{audit, denial};
use crate::engine::{monotonic_now, Call, Decision, Outcome};
use crate::mcp::{self, code, Body, Kind, Refusal};
use crate::policy::sha256_hex;
use http::header::{self, HeaderMap};
use http::StatusCode;
use serde_json::Value;
use std::time::Instant;

/// What the gate concluded about a body.
pub(super) enum Verdict {
    /// Forward unchanged; filter the answers to these `tools/list` ids. What the allowed calls
    /// took is settled by the upstream's answer.
    Forward { list_ids: Vec<Value>, spend: Spend },
    /// Answer the client ourselves (denials), with an optional `Retry-After`.
    Answer {
        body: Vec<u8>,
        retry_after: Option<u64>,
    },
}

/// What the allowed calls of a forwarded request took: their counts and approval uses. A call
/// spends them when the server accepted it; they are given back when it provably did not run:
/// the server answered with a redirect (the client sends the request again, elsewhere), or the
/// connection to it failed before the request was sent. Dropped unsettled, they stay spent.
#[derive(Default)]
pub(super) struct Spend {
    taken: Vec<crate::engine::Taken>,
    approvals: Vec<HeldUse>,
}

/// A reserved approval use of an allowed call, with its metric's labels.
struct HeldUse {
    reservation: approvals::Reservation,
    policy: String,
    tool: String,
}

impl Spend {
    /// The calls ran (or may have): counts stay, approval uses are spent.
    pub(super) fn commit(self, st: &State) {
        for u in self.approvals {
            u.reservation.commit();
            st.metrics
                .approvals
                .with_label_values(&[&u.policy, &u.tool, "used"])
                .inc();
        }
    }

    /// The calls provably did not run: counts and approval uses are given back.
    pub(super) fn give_back(self) {
        for t in self.taken {
            t.give_back();
        }
        // Dropping a reservation gives the use back.
        drop(self.approvals);
    }
}

/// Content type, encoding and declared length: refused before a byte of the body is read.
pub(super) fn check_headers(h: &HeaderMap, max: usize) -> Result<(), Refusal> {
    let unsupported =
        |msg: String| Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, code::PARSE_ERROR, msg);
    let ct = h
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| unsupported("Content-Type application/json is required".into()))?
        .to_str()
        .map_err(|_| unsupported("unreadable Content-Type".into()))?;
    let mut params = ct.split(';');
    let essence = params.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(unsupported(format!(
            "Content-Type {essence:?} is not application/json"
        )));
    }
    for p in params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k.trim().eq_ignore_ascii_case("charset") {
            let v = v.trim().trim_matches('"');
            if !v.eq_ignore_ascii_case("utf-8") && !v.eq_ignore_ascii_case("utf8") {
                return Err(unsupported(format!(
                    "charset {v:?} is not supported; send UTF-8"
                )));
            }
        }
    }
    for ce in h.get_all(header::CONTENT_ENCODING) {
        let v = ce.to_str().unwrap_or("?").trim();
        if !v.eq_ignore_ascii_case("identity") {
            return Err(unsupported(format!(
                "Content-Encoding {v:?} is not decoded by the sidecar; send the body uncompressed"
            )));
        }
    }
    check_session_id(h)?;
    if let Some(len) = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(too_large(max));
        }
    }
    Ok(())
}

/// Longest `Mcp-Session-Id` accepted. Servers issue UUIDs or hashes; a longer value is an attempt
/// to make counter keys or audit lines expensive.
pub(super) const MAX_SESSION_ID: usize = 256;

/// `Mcp-Session-Id`: at most one, of visible ASCII (as the transport specifies), not too long.
fn check_session_id(h: &HeaderMap) -> Result<(), Refusal> {
    let bad = |why: String| Refusal::new(StatusCode::BAD_REQUEST, code::INVALID_REQUEST, why);
    let mut ids = h.get_all("mcp-session-id").iter();
    let (Some(id), None) = (ids.next(), ids.next()) else {
        return match h.contains_key("mcp-session-id") {
            true => Err(bad("more than one Mcp-Session-Id header".into())),
            false => Ok(()),
        };
    };
    if id.len() > MAX_SESSION_ID {
        return Err(bad(format!(
            "Mcp-Session-Id is over {MAX_SESSION_ID} bytes"
        )));
    }
    if !id.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(bad("Mcp-Session-Id must be visible ASCII".into()));
    }
    Ok(())
}

pub(super) fn too_large(max: usize) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        code::INVALID_REQUEST,
        format!("the request body is over the {max}-byte limit"),
    )
}

/// Parses, checks headers against the body, and decides every `tools/call`: the body is
/// forwarded when every call is allowed, and otherwise answered here in full.
pub(super) fn decide_body(
    st: &State,
    policy: &LoadedPolicy,
    h: &HeaderMap,
    bytes: &[u8],
    caller: &Caller,
) -> Result<(Verdict, &'static str), Refusal> {
    let body = mcp::parse(bytes)?;
    // For the duration metric: the method of a single message; batches count as `_other`.
    let method = match &body {
        Body::Single(m) => m.method.as_deref().map_or("_other", mcp::method_label),
        Body::Batch(_) => "_other",
    };
    let version = h
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("2025-03-26");
    check_framing(h, &body, version)?;
    let mut gate = Gate {
        st,
        policy,
        version,
        caller,
        grant: caller.grant(policy.engine.policy()),
        // Only an id the server issued keys a session counter; another counts under the grant.
        session: h
            .get("mcp-session-id")
            .filter(|v| st.sessions.contains(v.as_bytes()))
            .and_then(|v| v.to_str().ok()),
        retry_after: None,
        spend: Spend::default(),
    };
    let mut list_ids = Vec::new();
    let mut answers: Vec<Option<Value>> = Vec::new();
    for m in body.messages() {
        if let Some(method) = &m.method {
            st.metrics
                .requests
                .with_label_values(&[&policy.label, mcp::method_label(method)])
                .inc();
        }
        if m.is_method("tools/list") && m.kind == Kind::Request {
            list_ids.push(
                serde_json::from_str(m.id.map_or("null", |i| i.get())).unwrap_or(Value::Null),
            );
        }
        answers.push(match m.is_method("tools/call") {
            true => gate.call(m)?,
            false => None,
        });
    }
    if answers.iter().all(Option::is_none) {
        let spend = gate.spend;
        return Ok((Verdict::Forward { list_ids, spend }, method));
    }
    // Nothing is forwarded: the calls that were allowed are answered "not run".
    gate.spend.give_back();
    let verdict = Verdict::Answer {
        body: answer_body(&body, answers),
        retry_after: gate.retry_after,
    };
    Ok((verdict, method))
}

/// A batch only under the protocol version that has them, and the routing headers agreeing
/// with the body.
fn check_framing(h: &HeaderMap, body: &Body, version: &str) -> Result<(), Refusal> {
    match body {
        Body::Single(m) => check_routing_headers(h, m),
        Body::Batch(_) if version != "2025-03-26" => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            format!("JSON-RPC batches are not allowed under protocol version {version}"),
        )),
        // One header cannot describe several messages: a server routing on it would act on a
        // message the sidecar did not decide.
        Body::Batch(_) if h.contains_key("mcp-method") || h.contains_key("mcp-name") => {
            Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                code::HEADER_MISMATCH,
                "Mcp-Method and Mcp-Name headers cannot describe a batch",
            ))
        }
        Body::Batch(_) => Ok(()),
    }
}

/// The approval a call needs: its id, its canonical arguments, and a reserved use if one is held.
struct Asked {
    id: String,
    /// What an approval of it grants.
    grants: crate::policy::Approval,
    arguments: String,
    arguments_sha256: String,
    held: Option<approvals::Reservation>,
}

/// The calls of one request, decided in turn.
struct Gate<'a> {
    st: &'a State,
    policy: &'a LoadedPolicy,
    version: &'a str,
    caller: &'a Caller,
    /// The grant whose rules apply to the caller.
    grant: Option<usize>,
    session: Option<&'a str>,
    /// Seconds until a limit that was hit lets calls through again.
    retry_after: Option<u64>,
    /// What the allowed calls took.
    spend: Spend,
}

impl Gate<'_> {
    /// Decides one `tools/call`: `None` to forward it, or the denial to answer with.
    fn call(&mut self, m: &mcp::Message) -> Result<Option<Value>, Refusal> {
        let label = self.policy.label.as_str();
        let invalid = || {
            self.st
                .metrics
                .decisions
                .with_label_values(&[label, "_other", "invalid"])
                .inc();
        };
        let Some(id) = m.id else {
            invalid();
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                "tools/call needs an id",
            ));
        };
        let call = m.tool_call().inspect_err(|_| invalid())?;
        let pol = self.policy.engine.policy();
        let unreadable = || {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_PARAMS,
                "unreadable arguments",
            )
            .with_id(Some(id))
        };
        // The server's tool list matters only to policies with categories or pins.
        let tools = pol.uses_tool_knowledge().then(|| self.st.tools.snapshot());
        let seen = tools.as_ref().and_then(|t| t.seen(&call.name));
        let hints = seen.map(|s| s.hints);
        let args: Value = match (
            call.arguments,
            pol.arguments_read(&call.name, self.grant, hints),
        ) {
            // Only what the rule's paths reach is kept: memory follows the policy, not the body.
            (Some(raw), Some(need)) => need.read(raw.get()).map_err(|_| unreadable())?,
            _ => Value::Null,
        };
        let rule_approval = match pol.lookup(&call.name, self.grant, hints) {
            crate::policy::Lookup::Rule(r) => r.approval,
            _ => None,
        };
        let approval = match rule_approval {
            Some(grants) => Some(self.ask_approval(&call, label, grants).map_err(|why| {
                Refusal::new(StatusCode::BAD_REQUEST, code::INVALID_PARAMS, why).with_id(Some(id))
            })?),
            None => None,
        };
        let t0 = Instant::now();
        let mut d = self.policy.engine.decide(
            &Call {
                tool: &call.name,
                args: &args,
                caller: &self.caller.id,
                grant: self.grant,
                session: self.session,
                approved: approval.as_ref().is_some_and(|a| a.held.is_some()),
                cloak: tools.as_ref().and_then(|t| t.cloak(&call.name)),
                seen,
            },
            monotonic_now(),
        );
        let took = t0.elapsed();
        self.record(&call, &d, took, approval.as_ref().map(|a| a.id.as_str()));
        let approval_id = approval.map(|a| self.settle_approval(a, &d, &call, label));
        if d.outcome == Outcome::Allow && !d.taken.is_empty() {
            self.spend.taken.push(std::mem::take(&mut d.taken));
        }
        if d.limit.is_some() || d.outcome == Outcome::Unlisted {
            self.retry_after = Some(denial::retry_after_secs(&d));
        }
        if d.outcome == Outcome::Unlisted {
            self.st.tools.wake();
        }
        if d.outcome == Outcome::Allow {
            return Ok(None);
        }
        let version = call.protocol_version.as_deref().unwrap_or(self.version);
        Ok(Some(denial::denial(
            id,
            &d,
            &denial::Subject {
                tool: &call.name,
                policy: label,
                caller: &self.caller.id,
                approval_id: approval_id
                    .as_deref()
                    .filter(|_| d.outcome == Outcome::ApprovalRequired),
            },
            pol.deny_as,
            version,
        )))
    }

    /// The decision's metrics and audit line.
    /// The approval a call whose rule needs one must match, and a use of it if one is granted
    /// (reserved now, spent only if the call is allowed). The arguments are read whole: the id
    /// covers all of them.
    fn ask_approval(
        &self,
        call: &mcp::ToolCall,
        label: &str,
        grants: crate::policy::Approval,
    ) -> Result<Asked, String> {
        let full: Value = match call.arguments {
            Some(r) => serde_json::from_str(r.get()).map_err(|_| "unreadable arguments")?,
            None => Value::Object(Default::default()),
        };
        if !crate::approval::exact_numbers(&full) {
            return Err(
                "a number in the arguments is beyond ±2^53, where two different numbers \
                        can read the same: it cannot be approved exactly; send it as a string"
                    .into(),
            );
        }
        let arguments = crate::approval::canonical(&full);
        let arguments_sha256 = sha256_hex(arguments.as_bytes());
        let id =
            crate::approval::approval_id(label, &call.name, &arguments_sha256, &self.caller.id);
        let held = self.st.approvals.reserve(&id, super::caller::unix_now());
        Ok(Asked {
            id,
            grants,
            arguments,
            arguments_sha256,
            held,
        })
    }

    /// After the decision: an allowed call holds its use until the server's answer settles it
    /// ([`Spend`]), a call with none becomes a pending request, any other refusal gives the
    /// reserved use back (by dropping it). Returns the id.
    fn settle_approval(
        &mut self,
        a: Asked,
        d: &Decision,
        call: &mcp::ToolCall,
        label: &str,
    ) -> String {
        let result = match (d.outcome, a.held) {
            (Outcome::Allow, Some(reservation)) => {
                self.spend.approvals.push(HeldUse {
                    reservation,
                    policy: label.to_owned(),
                    tool: d.tool_label.to_owned(),
                });
                None
            }
            (Outcome::ApprovalRequired, _) => self
                .st
                .approvals
                .request(crate::approval::Pending {
                    id: a.id.clone(),
                    policy: label.to_owned(),
                    tool: call.name.to_string(),
                    arguments: Some(a.arguments),
                    arguments_sha256: a.arguments_sha256,
                    identity: self.caller.id.to_string(),
                    requested_at: super::caller::unix_now(),
                    uses: a.grants.uses,
                    ttl_seconds: a.grants.ttl.as_secs(),
                    tool_label: d.tool_label.to_owned(),
                })
                .then_some("requested"),
            _ => None,
        };
        if let Some(result) = result {
            self.st
                .metrics
                .approvals
                .with_label_values(&[label, d.tool_label, result])
                .inc();
        }
        a.id
    }

    /// `approval`: the approval id of a call whose rule needs one (the request when refused, the
    /// use when allowed).
    fn record(
        &self,
        call: &mcp::ToolCall,
        d: &Decision,
        took: std::time::Duration,
        approval: Option<&str>,
    ) {
        let label = self.policy.label.as_str();
        let metrics = &self.st.metrics;
        metrics
            .decision_duration
            .with_label_values(&[label])
            .observe(took.as_secs_f64());
        metrics
            .decisions
            .with_label_values(&[label, d.tool_label, d.outcome.as_str()])
            .inc();
        if let Some(g) = d.grant {
            metrics
                .grant_decisions
                .with_label_values(&[label, g, d.outcome.as_str()])
                .inc();
        }
        if d.overflow {
            metrics.counter_overflow.with_label_values(&[label]).inc();
        }
        if let Some(hit) = &d.limit {
            let c = hit.counter;
            metrics
                .limit_hits
                .with_label_values(&[label, &c.name, &c.window.text, c.scope.as_str()])
                .inc();
        }
        if audit::enabled() {
            let args_sha256 = call
                .arguments
                .map_or_else(String::new, |a| sha256_hex(a.get().as_bytes()));
            audit::write(&audit::AuditLine {
                policy: label,
                tool: &call.name,
                decision: d.outcome.as_str(),
                rule: d.rule,
                identity: &self.caller.id,
                grant: d.grant.unwrap_or(""),
                approval: approval.unwrap_or(""),
                session: self.session.unwrap_or(""),
                counter: d.limit.as_ref().map_or("", |h| h.counter.name.as_str()),
                latency_ns: took.as_nanos() as u64,
                args_sha256: &args_sha256,
            });
        }
    }
}

/// The answer to a request with a denied call: the denial, or for a batch an answer to every
/// request in it (nothing of a batch with a denied call runs).
fn answer_body(body: &Body, answers: Vec<Option<Value>>) -> Vec<u8> {
    const INFALLIBLE: &str = "serialising a value built in memory cannot fail";
    match body {
        Body::Single(_) => serde_json::to_vec(&answers[0]).expect(INFALLIBLE),
        Body::Batch(msgs) => {
            let out: Vec<Value> = msgs
                .iter()
                .zip(answers)
                .filter_map(|(m, a)| match (a, m.kind, m.id) {
                    (Some(a), _, _) => Some(a),
                    (None, Kind::Request, Some(id)) => Some(mcp::not_run(id)),
                    _ => None,
                })
                .collect();
            serde_json::to_vec(&out).expect(INFALLIBLE)
        }
    }
}

/// `Mcp-Method` and `Mcp-Name` (2026-07-28) must say what the body says.
fn check_routing_headers(h: &HeaderMap, m: &mcp::Message) -> Result<(), Refusal> {
    let mismatch = |what: &str| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            code::HEADER_MISMATCH,
            format!("the {what} header does not match the body"),
        )
        .with_id(m.id)
    };
    if let Some(hm) = h.get("mcp-method") {
        if m.method.as_deref().map(str::as_bytes) != Some(hm.as_bytes()) {
            return Err(mismatch("Mcp-Method"));
        }
    }
    if let Some(hn) = h.get("mcp-name") {
        if m.routing_name().as_deref().map(str::as_bytes) != Some(hn.as_bytes()) {
            return Err(mismatch("Mcp-Name"));
        }
    }
    Ok(())
}
