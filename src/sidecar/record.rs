//! The one place the gate records what happened: requests refused for their identity, request
//! and decision metrics, approval events, and the audit line of every decided call. Every label value here is bounded (the
//! policy's label, a rule's key, a method from a fixed list).

use super::audit;
use super::State;
use crate::engine::Decision;
use crate::policy::sha256_hex;
use std::time::Duration;

/// What is known of a decided call besides the decision.
pub(super) struct CallFacts<'a> {
    pub tool: &'a str,
    /// The raw `params.arguments`, hashed into the audit line.
    pub arguments: Option<&'a serde_json::value::RawValue>,
    pub identity: &'a str,
    pub session: Option<&'a str>,
    /// The approval id of a call whose rule needs one.
    pub approval: Option<&'a str>,
    /// The identity of the user who confirmed it in their client (`approval: {by: user}`).
    pub confirmed_by: Option<&'a str>,
}

/// A message of a gated request, by method.
pub(super) fn message(st: &State, policy: &str, method: &str) {
    st.metrics
        .requests
        .with_label_values(&[policy, method])
        .inc();
}

/// A gated request answered (forwarded or not), with the time it took.
pub(super) fn request_done(st: &State, policy: &str, method: &str, took: Duration) {
    st.metrics
        .request_duration
        .with_label_values(&[policy, method])
        .observe(took.as_secs_f64());
}

/// A request refused for its identity (`reason`: a bounded label such as `missing`,
/// `expired`, `no_keys`).
pub(super) fn unauthenticated(st: &State, policy: &str, reason: &str) {
    st.metrics
        .unauthenticated
        .with_label_values(&[policy, reason])
        .inc();
}

/// A `tools/call` that could not be read (no id, unreadable params): never decided.
pub(super) fn invalid_call(st: &State, policy: &str) {
    st.metrics
        .decisions
        .with_label_values(&[policy, "_other", "invalid"])
        .inc();
}

/// A decided call: its metrics and its audit line.
pub(super) fn decision(st: &State, policy: &str, call: &CallFacts, d: &Decision, took: Duration) {
    let metrics = &st.metrics;
    let outcome = d.outcome.as_str();
    metrics
        .decision_duration
        .with_label_values(&[policy])
        .observe(took.as_secs_f64());
    metrics
        .decisions
        .with_label_values(&[policy, d.tool_label, outcome])
        .inc();
    if let Some(g) = d.grant {
        metrics
            .grant_decisions
            .with_label_values(&[policy, g, outcome])
            .inc();
    }
    if d.overflow {
        metrics.counter_overflow.with_label_values(&[policy]).inc();
    }
    if let Some(hit) = &d.limit {
        let c = hit.counter;
        metrics
            .limit_hits
            .with_label_values(&[policy, &c.name, &c.window.text, c.scope.as_str()])
            .inc();
    }
    if audit::enabled() {
        let args_sha256 = call
            .arguments
            .map_or_else(String::new, |a| sha256_hex(a.get().as_bytes()));
        audit::write(&audit::AuditLine {
            policy,
            tool: call.tool,
            decision: outcome,
            rule: d.rule,
            identity: call.identity,
            grant: d.grant.unwrap_or(""),
            approval: call.approval.unwrap_or(""),
            confirmed_by: call.confirmed_by.unwrap_or(""),
            session: call.session.unwrap_or(""),
            counter: d.limit.as_ref().map_or("", |h| h.counter.name.as_str()),
            latency_ns: took.as_nanos() as u64,
            args_sha256: &args_sha256,
        });
    }
}

/// A retry completing the server's own `input_required`: forwarded without a second decision.
pub(super) fn continued(st: &State, policy: &str) {
    st.metrics.continuations.with_label_values(&[policy]).inc();
}

/// An approval event: `requested` and `used` (the gate), `approved` and `denied` (the admin
/// API), `expired` (found lapsed when metrics are read); for `by: user`, `user_asked`,
/// `user_confirmed`, `user_declined`, `user_cancelled` and `user_unreachable` (the client
/// cannot be asked).
pub(super) fn approval(st: &State, policy: &str, tool_label: &str, result: &str) {
    st.metrics
        .approvals
        .with_label_values(&[policy, tool_label, result])
        .inc();
}
