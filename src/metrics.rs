//! Prometheus metrics (prefix `mcp_warden_`). One registry is built at start and passed down;
//! every label value is bounded (tools the policy does not name are `_other`, unknown methods
//! `_other`), and every sidecar series carries `policy="<namespace>/<name>"`.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every sidecar metric of the design, by name, for docs and the dashboard test.
pub const SIDECAR_METRICS: &[&str] = &[
    "mcp_warden_decisions_total",
    "mcp_warden_limit_hits_total",
    "mcp_warden_requests_total",
    "mcp_warden_request_duration_seconds",
    "mcp_warden_decision_duration_seconds",
    "mcp_warden_policy_reloads_total",
    "mcp_warden_policy_info",
    "mcp_warden_counter_keys",
    "mcp_warden_counter_overflow_total",
    "mcp_warden_grant_decisions_total",
    "mcp_warden_unauthenticated_total",
    "mcp_warden_approvals_total",
    "mcp_warden_approvals_pending",
    "mcp_warden_approvals_oldest_pending_seconds",
    "mcp_warden_tool_definition_changes_total",
    "mcp_warden_tool_lists_total",
    "mcp_warden_tools_offered",
    "mcp_warden_peers",
    "mcp_warden_peer_requests_total",
    "mcp_warden_budget_fallbacks_total",
    "mcp_warden_lease_refills_total",
    "mcp_warden_continuations_total",
];

/// `request_duration_seconds`: what the sidecar adds is tens of microseconds and a small
/// server answers in about a millisecond, so the buckets start at 100 µs; they end at 30 s for
/// slow tools (streams are timed to their response headers).
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// `decision_duration_seconds`: a decision takes a few hundred nanoseconds (a regex or a long
/// argument path, microseconds), so 100 ns to 1 ms.
pub const DECISION_BUCKETS: &[f64] = &[
    1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 1e-4, 1e-3,
];

/// Admission and reconciliation: milliseconds (an AdmissionReview is answered in about
/// 0.3 ms; a reconcile waits on API writes), up to the API server's 10 s webhook timeout.
pub const CONTROLLER_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The sidecar's metrics.
#[derive(Clone)]
pub struct SidecarMetrics {
    pub registry: Registry,
    pub decisions: IntCounterVec,
    pub limit_hits: IntCounterVec,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub decision_duration: HistogramVec,
    pub reloads: IntCounterVec,
    pub policy_info: IntGaugeVec,
    pub counter_keys: IntGaugeVec,
    pub counter_overflow: IntCounterVec,
    pub grant_decisions: IntCounterVec,
    pub unauthenticated: IntCounterVec,
    pub approvals: IntCounterVec,
    pub approvals_pending: IntGaugeVec,
    pub approvals_oldest_pending: IntGaugeVec,
    pub tool_definition_changes: IntCounterVec,
    pub tool_lists: IntCounterVec,
    pub tools_offered: IntGaugeVec,
    pub peers: IntGaugeVec,
    pub peer_requests: IntCounterVec,
    pub budget_fallbacks: IntCounterVec,
    pub lease_refills: IntCounterVec,
    pub continuations: IntCounterVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("mcp_warden")
}

/// Registers metrics on one registry; every metric is `mcp_warden_`-prefixed.
struct Builder {
    registry: Registry,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            registry: Registry::new(),
        }
    }

    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> M {
        self.registry
            .register(Box::new(m.clone()))
            .expect("registered once");
        m
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(opts(name, help), labels).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(opts(name, help), labels).expect("valid metric"))
    }

    fn float_gauge(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.register(GaugeVec::new(opts(name, help), labels).expect("valid metric"))
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        let o = HistogramOpts::new(name, help)
            .namespace("mcp_warden")
            .buckets(buckets);
        self.register(HistogramVec::new(o, labels).expect("valid metric"))
    }
}

fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    out
}

impl SidecarMetrics {
    pub fn new() -> SidecarMetrics {
        let b = Builder::new();
        let counter = |n: &str, h: &str, l: &[&str]| b.counter(n, h, l);
        let gauge = |n: &str, h: &str, l: &[&str]| b.gauge(n, h, l);
        let histogram = |n: &str, h: &str, l: &[&str], bk: Vec<f64>| b.histogram(n, h, l, bk);
        SidecarMetrics {
            decisions: counter(
                "decisions_total",
                "tools/call decisions (allow, deny, rate_limited, invalid)",
                &["policy", "tool", "decision"],
            ),
            limit_hits: counter(
                "limit_hits_total",
                "Calls refused because a counter was full",
                &["policy", "counter", "window", "scope"],
            ),
            requests: counter("requests_total", "JSON-RPC messages received, by method", &["policy", "method"]),
            request_duration: histogram(
                "request_duration_seconds",
                "Time from request received to response headers sent",
                &["policy", "method"],
                REQUEST_BUCKETS.to_vec(),
            ),
            decision_duration: histogram(
                "decision_duration_seconds",
                "Time to decide one tools/call",
                &["policy"],
                DECISION_BUCKETS.to_vec(),
            ),
            reloads: counter("policy_reloads_total", "Policy loads, by result (ok, error)", &["policy", "result"]),
            policy_info: gauge("policy_info", "The policy being enforced (value 1), by hash", &["policy", "hash"]),
            counter_keys: gauge("counter_keys", "Live rate-limit counter keys", &["policy"]),
            counter_overflow: counter(
                "counter_overflow_total",
                "Calls counted in a shared overflow counter because the key cap was full of live keys",
                &["policy"],
            ),
            grant_decisions: counter(
                "grant_decisions_total",
                "tools/call decisions made under a grant's rules, by grant (grants[0], …)",
                &["policy", "grant", "decision"],
            ),
            unauthenticated: counter(
                "unauthenticated_total",
                "Requests refused with 401 because the caller's identity could not be verified, by reason",
                &["policy", "reason"],
            ),
            approvals: counter(
                "approvals_total",
                "Calls of tools that need approval, by result (requested, approved, denied, used, expired; \
                 by the user in their client: user_asked, user_confirmed, user_declined, \
                 user_cancelled, user_replayed, user_unreachable)",
                &["policy", "tool", "result"],
            ),
            approvals_pending: gauge(
                "approvals_pending",
                "Requests waiting for a person's approval",
                &["policy"],
            ),
            approvals_oldest_pending: gauge(
                "approvals_oldest_pending_seconds",
                "Seconds the oldest request still waiting for approval has waited (0 with none)",
                &["policy"],
            ),
            tool_definition_changes: counter(
                "tool_definition_changes_total",
                "Tools whose definition changed under the same name since the sidecar first \
                 saw them (pinned ones are then denied)",
                &["policy", "tool"],
            ),
            tool_lists: counter(
                "tool_lists_total",
                "Lists of the server's tools the sidecar read itself, by result (ok, error)",
                &["policy", "result"],
            ),
            tools_offered: gauge(
                "tools_offered",
                "Tools in the server's latest list",
                &["policy"],
            ),
            peers: gauge(
                "peers",
                "The policy's ready sidecars this one knows (the owners of counts held across pods)",
                &["policy"],
            ),
            peer_requests: counter(
                "peer_requests_total",
                "Counts asked of their owner, another sidecar of the policy (owner hops), by \
                 result (taken, limited, not_owner, mismatch, error)",
                &["policy", "result"],
            ),
            budget_fallbacks: counter(
                "budget_fallbacks_total",
                "Calls counted on this sidecar's fallback share because the owner could not be \
                 asked, by reason (unreachable, busy, not_owner, mismatch, unknown_peers)",
                &["policy", "reason"],
            ),
            lease_refills: counter(
                "lease_refills_total",
                "Leases an owner lent this sidecar: counts of a large limit's key spent here \
                 without a hop until they run out or a second passes",
                &["policy"],
            ),
            continuations: counter(
                "continuations_total",
                "Retries that complete the server's own input_required question: forwarded \
                 without a second decision (the call was counted on its first leg)",
                &["policy"],
            ),
            registry: b.registry.clone(),
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        render(&self.registry)
    }
}

/// Every controller metric of the design, by name, for docs and the dashboard test.
pub const CONTROLLER_METRICS: &[&str] = &[
    "mcp_warden_reconciliations_total",
    "mcp_warden_reconcile_duration_seconds",
    "mcp_warden_injections_total",
    "mcp_warden_admission_duration_seconds",
    "mcp_warden_policy_rendered_info",
    "mcp_warden_webhook_certificate_expiry_timestamp_seconds",
];

/// The controller's metrics (every replica serves the webhook ones; the leader the rest).
#[derive(Clone)]
pub struct ControllerMetrics {
    pub registry: Registry,
    pub reconciliations: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub injections: IntCounterVec,
    pub admission_duration: HistogramVec,
    pub rendered: IntGaugeVec,
    pub cert_expiry: GaugeVec,
}

impl ControllerMetrics {
    pub fn new() -> ControllerMetrics {
        let b = Builder::new();
        let latency = CONTROLLER_BUCKETS.to_vec();
        let m = ControllerMetrics {
            reconciliations: b.counter(
                "reconciliations_total",
                "McpPolicy reconciliations, by result (ok, invalid, error)",
                &["result"],
            ),
            reconcile_duration: b.histogram(
                "reconcile_duration_seconds",
                "Time to reconcile one McpPolicy",
                &[],
                latency.clone(),
            ),
            injections: b.counter(
                "injections_total",
                "Pod admissions, by result (injected, skipped, refused, error)",
                &["result"],
            ),
            admission_duration: b.histogram(
                "admission_duration_seconds",
                "Time to answer one AdmissionReview, by webhook (mutate, validate, guard, mutate-approval, validate-approval)",
                &["webhook"],
                latency,
            ),
            rendered: b.gauge(
                "policy_rendered_info",
                "The policy hash the controller rendered (value 1), by policy",
                &["policy", "hash"],
            ),
            cert_expiry: b.float_gauge(
                "webhook_certificate_expiry_timestamp_seconds",
                "When the serving certificate this replica presents expires (Unix seconds)",
                &[],
            ),
            registry: b.registry.clone(),
        };
        // Every result and webhook exists at zero from the start, so the first admission or
        // reconcile is a change rate() and increase() see.
        for r in ["ok", "invalid", "error"] {
            m.reconciliations.with_label_values(&[r]);
        }
        for r in ["injected", "skipped", "refused", "error"] {
            m.injections.with_label_values(&[r]);
        }
        for w in [
            "mutate",
            "validate",
            "guard",
            "mutate-approval",
            "validate-approval",
        ] {
            m.admission_duration.with_label_values(&[w]);
        }
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        render(&self.registry)
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for SidecarMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_metric_is_exported() {
        let m = SidecarMetrics::new();
        m.decisions.with_label_values(&["p", "t", "allow"]).inc();
        m.limit_hits
            .with_label_values(&["p", "c", "minute", "grant"])
            .inc();
        m.requests.with_label_values(&["p", "tools/call"]).inc();
        m.request_duration
            .with_label_values(&["p", "tools/call"])
            .observe(0.001);
        m.decision_duration.with_label_values(&["p"]).observe(1e-6);
        m.reloads.with_label_values(&["p", "ok"]).inc();
        m.policy_info.with_label_values(&["p", "abc"]).set(1);
        m.counter_keys.with_label_values(&["p"]).set(3);
        m.counter_overflow.with_label_values(&["p"]).inc();
        m.grant_decisions
            .with_label_values(&["p", "grants[0]", "allow"])
            .inc();
        m.unauthenticated.with_label_values(&["p", "expired"]).inc();
        m.approvals
            .with_label_values(&["p", "t", "requested"])
            .inc();
        m.approvals_pending.with_label_values(&["p"]).set(1);
        m.approvals_oldest_pending.with_label_values(&["p"]).set(30);
        m.tool_definition_changes
            .with_label_values(&["p", "t"])
            .inc();
        m.tool_lists.with_label_values(&["p", "ok"]).inc();
        m.tools_offered.with_label_values(&["p"]).set(4);
        m.peers.with_label_values(&["p"]).set(3);
        m.peer_requests.with_label_values(&["p", "taken"]).inc();
        m.budget_fallbacks
            .with_label_values(&["p", "unreachable"])
            .inc();
        m.lease_refills.with_label_values(&["p"]).inc();
        m.continuations.with_label_values(&["p"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        for name in SIDECAR_METRICS {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }

    #[test]
    fn every_listed_controller_metric_is_exported() {
        let m = ControllerMetrics::new();
        m.reconciliations.with_label_values(&["ok"]).inc();
        m.reconcile_duration
            .with_label_values(&[] as &[&str])
            .observe(0.01);
        m.injections.with_label_values(&["injected"]).inc();
        m.admission_duration
            .with_label_values(&["mutate"])
            .observe(0.001);
        m.rendered.with_label_values(&["ns/p", "abc"]).set(1);
        m.cert_expiry.with_label_values(&[] as &[&str]).set(1.0e9);
        let text = String::from_utf8(m.render()).unwrap();
        for name in CONTROLLER_METRICS {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert_eq!(text.matches("# TYPE ").count(), CONTROLLER_METRICS.len());
    }
}
