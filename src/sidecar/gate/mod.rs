//! The gate: a gated request's headers and whole body → forward it, or answer it here.
//!
//! The body is parsed once ([`mcp::parse`]); the routing headers must say what it says; each
//! `tools/call` is planned once — the rule that applies (one lookup), the arguments its
//! conditions read, the approval it asks for — and then decided by the engine. Every decision is
//! recorded in one place ([`record`]); a body with any denied call is answered in full here and
//! nothing of it is forwarded. HTTP (reading the body, forwarding, filtering answers) is the
//! proxy's.

mod user;
use user::{check_task, initialize_capabilities, take_reply, Asking, UserAsk};

use super::caller::{unix_now, Caller};
use super::confirm::{self, continuation, tasks, Answer, CanElicit};
use super::peers::Use;
use super::record::{self, CallFacts};
use super::refusal::Refused;
use super::reload::LoadedPolicy;
use super::spend::Spend;
use super::{denial, params, peers, State};
use crate::approval::{approval_id, canonical, exact_numbers, Pending};
use crate::engine::{monotonic_now, Call, Decision, Outcome};
use crate::mcp::{self, Body, Kind};
use crate::policy::{sha256_hex, Approval, Lookup};
use http::header::HeaderMap;
use serde_json::value::RawValue;
use serde_json::Value;
use std::time::Instant;

/// What the gate concluded about a request.
pub(super) enum Verdict {
    /// Forward (unchanged, or as `body` without the sidecar's own fields); filter the answers
    /// to these `tools/list` ids. What the allowed calls took is settled by the upstream's
    /// answer.
    Forward {
        list_ids: Vec<Value>,
        spend: Spend,
        body: Option<Vec<u8>>,
        after: After,
    },
    /// Answer the client ourselves (denials), with an optional `Retry-After`.
    Answer {
        body: Vec<u8>,
        retry_after: Option<u64>,
    },
    /// Ask the user on the call's event stream first (a client before 2026-07-28).
    Ask(StreamAsk),
    /// The client's answer to the sidecar's own question: taken here (202), never forwarded.
    Taken,
}

/// What to watch in the server's answer to a forwarded request.
#[derive(Default)]
pub(super) struct After {
    /// A 2026-07-28 call: an `input_required` the server answers it with is remembered.
    pub continuation: Option<continuation::Call>,
    /// An `initialize`: what the client declared it can be asked, kept for its session.
    pub initialize: Option<CanElicit>,
}

/// A question for the user on the call's stream, and what it is about.
pub(super) struct StreamAsk {
    pub params: Value,
    pub ttl: std::time::Duration,
    /// Whom the answer binds to.
    pub told: Told,
}

/// The user's answer on a stream, for the call it was asked about.
#[derive(Clone)]
pub(super) struct Told {
    pub tool: String,
    pub arguments_sha256: String,
    pub answer: Answer,
}

/// The protocol version of a request that names none (the transport's rule).
const DEFAULT_VERSION: &str = "2025-03-26";

/// Decides a gated request: forward it or answer it, or refuse it when it cannot be read with
/// certainty. Also returns the method label of its duration metric (a batch is `_other`).
pub(super) async fn decide(
    st: &State,
    policy: &LoadedPolicy,
    caller: &Caller,
    h: &HeaderMap,
    bytes: &[u8],
    told: Option<&Told>,
) -> Result<(Verdict, &'static str), Refused> {
    let body = mcp::parse(bytes)?;
    if let Body::Single(m) = &body {
        if let Some(taken) = take_reply(st, caller, m)? {
            return Ok((taken, "_other"));
        }
    }
    let method = match &body {
        Body::Single(m) => m.method.as_deref().map_or("_other", mcp::method_label),
        Body::Batch(_) => "_other",
    };
    let version = match h.get("mcp-protocol-version") {
        None => DEFAULT_VERSION,
        Some(v) => v
            .to_str()
            .ok()
            .filter(|v| mcp::known_version(v))
            .ok_or_else(|| unknown_version(&String::from_utf8_lossy(v.as_bytes())))?,
    };
    check_framing(h, &body, version)?;
    let mut gate = Gate {
        st,
        policy,
        headers: h,
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
        told,
        strip: false,
        after: After::default(),
        stream_ask: None,
        single: matches!(body, Body::Single(_)),
    };
    let mut list_ids = Vec::new();
    let mut answers: Vec<Option<Value>> = Vec::with_capacity(body.messages().len());
    for m in body.messages() {
        if let Some(method) = &m.method {
            record::message(st, &policy.label, mcp::method_label(method));
        }
        if m.is_method("tools/list") && m.kind == Kind::Request {
            list_ids.push(m.id.map_or(Value::Null, mcp::raw_to_value));
        }
        if m.is_method("initialize") && m.kind == Kind::Request {
            gate.after.initialize = Some(initialize_capabilities(m));
        }
        if m.method
            .as_deref()
            .is_some_and(|x| tasks::METHODS.contains(&x))
        {
            check_task(st, &policy.label, caller, m).await?;
        }
        answers.push(match m.is_method("tools/call") {
            true => gate.call(m).await?,
            false => None,
        });
    }
    if answers.iter().all(Option::is_none) {
        let body = match gate.strip {
            true => Some(confirm::strip(bytes).ok_or(Refused::CallWithoutId)?),
            false => None,
        };
        let verdict = Verdict::Forward {
            list_ids,
            spend: gate.spend,
            body,
            after: gate.after,
        };
        return Ok((verdict, method));
    }
    // Nothing is forwarded: the calls that were allowed are answered "not run".
    gate.spend.give_back(st);
    if let Some(ask) = gate.stream_ask {
        return Ok((Verdict::Ask(ask), method));
    }
    let verdict = Verdict::Answer {
        body: answer_body(&body, answers),
        retry_after: gate.retry_after,
    };
    Ok((verdict, method))
}

/// A batch only under the protocol version that has them, and the routing headers agreeing
/// with the body.
fn check_framing(h: &HeaderMap, body: &Body, version: &str) -> Result<(), Refused> {
    match body {
        Body::Single(m) => check_routing_headers(h, m),
        Body::Batch(_) if version != DEFAULT_VERSION => {
            Err(Refused::BatchUnderVersion(version.to_owned()))
        }
        // One header cannot describe several messages: a server routing on it would act on a
        // message the sidecar did not decide.
        Body::Batch(_)
            if h.contains_key("mcp-method") || h.contains_key("mcp-name") || params::any(h) =>
        {
            Err(Refused::BatchWithRoutingHeaders)
        }
        Body::Batch(_) => Ok(()),
    }
}

/// `Mcp-Method` and `Mcp-Name` (2026-07-28) must say what the body says.
fn check_routing_headers(h: &HeaderMap, m: &mcp::Message) -> Result<(), Refused> {
    let mismatch = |header| Refused::HeaderMismatch {
        header,
        id: m.id.map(ToOwned::to_owned),
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

/// The approval a call needs: its id, its canonical arguments, and a reserved use if one is held.
struct Asked {
    id: String,
    /// What an approval of it grants.
    grants: Approval,
    arguments: String,
    arguments_sha256: String,
    held: Option<Use>,
}

/// The calls of one request, decided in turn.
struct Gate<'a> {
    st: &'a State,
    policy: &'a LoadedPolicy,
    headers: &'a HeaderMap,
    version: &'a str,
    caller: &'a Caller,
    /// The grant whose rules apply to the caller.
    grant: Option<usize>,
    session: Option<&'a str>,
    /// Seconds until a limit that was hit lets calls through again.
    retry_after: Option<u64>,
    /// What the allowed calls took.
    spend: Spend,
    /// The user's answer on a stream, when the request is decided again after it.
    told: Option<&'a Told>,
    /// The body carries the sidecar's own `requestState`: forwarded without it.
    strip: bool,
    after: After,
    /// A question to put on the call's stream before anything is forwarded.
    stream_ask: Option<StreamAsk>,
    /// The body is one message (a question can be put on its stream).
    single: bool,
}

impl Gate<'_> {
    /// Decides one `tools/call`: `None` to forward it, or the denial to answer with.
    async fn call(&mut self, m: &mcp::Message<'_>) -> Result<Option<Value>, Refused> {
        let label = self.policy.label.as_str();
        let Some(id) = m.id else {
            record::invalid_call(self.st, label);
            return Err(Refused::CallWithoutId);
        };
        let call = m
            .tool_call()
            .inspect_err(|_| record::invalid_call(self.st, label))?;
        let engine = &self.policy.engine;
        let pol = engine.policy();
        let version = call.protocol_version.as_deref().unwrap_or(self.version);
        if !mcp::known_version(version) {
            return Err(unknown_version(version));
        }
        let ours = call.request_state.as_deref().is_some_and(confirm::is_ours);
        self.strip |= ours;
        let modern = mcp::version_at_least(version, mcp::RESULT_TYPE_SINCE);
        let bound = (modern && self.single).then(|| self.bound(&call));
        if let (Some(state), Some(b), false) = (call.request_state.as_deref(), &bound, ours) {
            let seen = continuation::Seen::Question {
                state: sha256_hex(state.as_bytes()),
                call: b.clone(),
            };
            if peers::holds(self.st, label, seen).await {
                // Decided and counted when the server asked its question.
                record::continued(self.st, label);
                self.after.continuation = bound;
                return Ok(None);
            }
        }
        // The server's tool list matters to the Mcp-Param headers' check and to policies with
        // categories or pins; it is read once for both.
        let checks_params = params::apply(self.headers, version);
        let listed = (checks_params || pol.uses_tool_knowledge()).then(|| self.st.tools.snapshot());
        if let Some(listed) = listed.as_ref().filter(|_| checks_params) {
            params::check(self.headers, version, &call, listed, id)?;
        }
        let tools = listed.filter(|_| pol.uses_tool_knowledge());
        let seen = tools.as_ref().and_then(|t| t.seen(&call.name));
        let found = pol.lookup(&call.name, self.grant, seen.map(|s| s.hints));
        let args = read_arguments(&found, call.arguments, id)?;
        let approval = match found.approval() {
            Some(grants) => Some(self.ask_approval(&call, grants, id).await?),
            None => None,
        };
        let answer = match &approval {
            Some(a) => self.users_answer(&call, a, ours, id)?,
            None => None,
        };
        let confirmed = matches!(answer, Some((Answer::Accepted, _)));
        let t0 = Instant::now();
        let now = monotonic_now();
        let mut d = engine.decide_found(
            found,
            &Call {
                tool: &call.name,
                args: &args,
                caller: &self.caller.id,
                grant: self.grant,
                session: self.session,
                approved: confirmed || approval.as_ref().is_some_and(|a| a.held.is_some()),
                cloak: tools.as_ref().and_then(|t| t.cloak(&call.name)),
                seen,
            },
            now,
        );
        // A hop to another sidecar is not part of a decision's time.
        let decided = t0.elapsed();
        if d.outcome == Outcome::Allow && !d.remote.is_empty() {
            // Counts other sidecars own: the call waits for their owners.
            d = peers::ask_owners(self.st, label, engine, d, now, &mut self.spend.lent).await;
        }
        if let (Outcome::Allow, Some((Answer::Accepted, Some(q)))) = (d.outcome, &answer) {
            if !peers::take_answer(self.st, label, q).await {
                d.outcome = Outcome::ApprovalRequired;
                d.reason = "The user's answer to this call was already taken: an answer runs one \
                            call. Make the call again (without requestState) to be asked again."
                    .into();
            }
        }
        let facts = CallFacts {
            tool: &call.name,
            arguments: call.arguments,
            identity: &self.caller.id,
            session: self.session,
            approval: approval.as_ref().map(|a| a.id.as_str()),
            confirmed_by: confirmed.then_some(&*self.caller.id),
        };
        record::decision(self.st, label, &facts, &d, decided);
        let user = match (&approval, d.outcome) {
            (Some(a), Outcome::ApprovalRequired) if a.grants.by_user() => {
                let asked = Asking {
                    answer: answer.as_ref().map(|x| x.0),
                    retry: ours,
                    version,
                };
                self.ask_user(&call, a, asked, id, &mut d)
            }
            _ => UserAsk::Approver,
        };
        if confirmed && d.outcome == Outcome::Allow {
            record::approval(self.st, label, d.tool_label, "user_confirmed");
        }
        let approval_id = approval.map(|a| match &user {
            // Put to the user: nothing is pending for an approver (but for the page of `url`,
            // where an approver's approval is given).
            UserAsk::Asked(_, false) | UserAsk::Deny => a.id,
            _ => self.settle_approval(a, &d, &call),
        });
        let user_asks = match user {
            UserAsk::Asked(v, _) => Some(v),
            _ => None,
        };
        if d.outcome == Outcome::Allow {
            self.after.continuation = bound;
        }
        self.spend.took(std::mem::take(&mut d.taken));
        if d.limit.is_some() || d.outcome == Outcome::Unlisted {
            self.retry_after = Some(denial::retry_after_secs(&d));
        }
        if d.outcome == Outcome::Unlisted {
            self.st.tools.wake();
        }
        if d.outcome == Outcome::Allow {
            return Ok(None);
        }
        if let Some(asked) = user_asks {
            return Ok(Some(asked));
        }
        let subject = denial::Subject {
            tool: &call.name,
            policy: label,
            caller: &self.caller.id,
            approval_id: approval_id
                .as_deref()
                .filter(|_| d.outcome == Outcome::ApprovalRequired),
        };
        Ok(Some(denial::denial(id, &d, &subject, pol.deny_as, version)))
    }

    /// The approval a call whose rule needs one must match, and a use of it if one is granted
    /// (reserved now, spent only if the call is allowed). The arguments are read whole: the id
    /// covers all of them.
    async fn ask_approval(
        &self,
        call: &mcp::ToolCall<'_>,
        grants: Approval,
        id: &RawValue,
    ) -> Result<Asked, Refused> {
        let full: Value = match call.arguments {
            Some(r) => serde_json::from_str(r.get()).map_err(|_| unreadable_arguments(id))?,
            None => Value::Object(Default::default()),
        };
        if !exact_numbers(&full) {
            return Err(Refused::BadParams {
                why: "a number in the arguments is beyond ±2^53, where two different numbers \
                      can read the same: it cannot be approved exactly; send it as a string"
                    .into(),
                id: id.to_owned(),
            });
        }
        let arguments = canonical(&full);
        let arguments_sha256 = sha256_hex(arguments.as_bytes());
        let approval = approval_id(
            &self.policy.label,
            &call.name,
            &arguments_sha256,
            &self.caller.id,
        );
        let held = peers::reserve_use(self.st, &self.policy.label, &approval).await;
        Ok(Asked {
            id: approval,
            grants,
            arguments,
            arguments_sha256,
            held,
        })
    }

    /// After the decision: an allowed call holds its use until the server's answer settles it
    /// ([`Spend`]), a call with none becomes a pending request, any other refusal gives the
    /// reserved use back (by dropping it). Returns the id.
    fn settle_approval(&mut self, a: Asked, d: &Decision, call: &mcp::ToolCall) -> String {
        let label = self.policy.label.as_str();
        match (d.outcome, a.held) {
            (Outcome::Allow, Some(reservation)) => {
                self.spend.holds(reservation, label, d.tool_label);
            }
            // Refused for another reason: a use its owner counted is given back to it (one
            // reserved here is given back by dropping it).
            (_, Some(Use::Owner(u))) => self.st.peers.give_back_use(u),
            (Outcome::ApprovalRequired, _) => {
                let new = self.st.approvals.request(Pending {
                    id: a.id.clone(),
                    policy: label.to_owned(),
                    tool: call.name.to_string(),
                    arguments: Some(a.arguments),
                    arguments_sha256: a.arguments_sha256,
                    identity: self.caller.id.to_string(),
                    requested_at: unix_now(),
                    uses: a.grants.uses,
                    ttl_seconds: a.grants.ttl.as_secs(),
                    tool_label: d.tool_label.to_owned(),
                });
                if new {
                    record::approval(self.st, label, d.tool_label, "requested");
                }
            }
            _ => {}
        }
        a.id
    }
}

/// What the rule's conditions read of the arguments, and only that: memory follows the policy,
/// not the body.
fn read_arguments(
    found: &Lookup,
    arguments: Option<&RawValue>,
    id: &RawValue,
) -> Result<Value, Refused> {
    match (arguments, found.reads()) {
        (Some(raw), Some(need)) => need.read(raw.get()).map_err(|_| unreadable_arguments(id)),
        _ => Ok(Value::Null),
    }
}

fn unknown_version(v: &str) -> Refused {
    Refused::UnknownVersion(v.chars().take(40).collect())
}

fn unreadable_arguments(id: &RawValue) -> Refused {
    Refused::UnreadableArguments(id.to_owned())
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
