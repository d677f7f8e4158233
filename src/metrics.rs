//! Prometheus metrics (prefix `mcp_warden_`). One registry is built at start and passed down;
//! every label value is bounded (tools the policy does not name are `_other`, unknown methods
//! `_other`), and every sidecar series carries `policy="<namespace>/<name>"`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
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
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("mcp_warden")
}

impl SidecarMetrics {
    pub fn new() -> SidecarMetrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(opts(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(opts(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help)
                    .namespace("mcp_warden")
                    .buckets(buckets),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
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
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            decision_duration: histogram(
                "decision_duration_seconds",
                "Time to decide one tools/call",
                &["policy"],
                vec![1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 1e-4, 1e-3],
            ),
            reloads: counter("policy_reloads_total", "Policy loads, by result (ok, error)", &["policy", "result"]),
            policy_info: gauge("policy_info", "The policy being enforced (value 1), by hash", &["policy", "hash"]),
            counter_keys: gauge("counter_keys", "Live rate-limit counter keys", &["policy"]),
            counter_overflow: counter(
                "counter_overflow_total",
                "Calls counted in a shared overflow counter because the key cap was full of live keys",
                &["policy"],
            ),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
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
        let text = String::from_utf8(m.render()).unwrap();
        for name in SIDECAR_METRICS {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
