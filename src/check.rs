//! `mcp-warden check FILE…`: validates policy files and McpPolicy manifests offline, and with
//! `--explain` shows what a policy would decide for one call and why.

use crate::crd;
use crate::engine::{Call, Engine, EngineOptions, Outcome};
use crate::policy::{self, source, Flavor, Policy, PolicyErrors};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// The McpPolicy API group/version `check` accepts.
pub const API_VERSION: &str = "mcpwarden.dev/v1alpha1";
pub const KIND: &str = "McpPolicy";

/// A call to explain against every valid policy.
#[derive(Debug, Clone)]
pub struct Explain {
    pub tool: String,
    pub args: Value,
    pub grant: String,
    pub session: Option<String>,
    /// Make the call this many times (at one instant) and explain the last: shows limits acting.
    pub calls: u32,
}

/// What one document turned out to be.
#[derive(Debug)]
pub enum DocResult {
    Policy { label: String, policy: Box<Policy> },
    Skipped { kind: String },
    Invalid(PolicyErrors),
}

/// Reads one document of a file: an McpPolicy manifest, another Kubernetes object (skipped),
/// or a bare policy.
pub fn check_document(doc: &Value) -> DocResult {
    let Some(kind) = doc.get("kind") else {
        let label = doc
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("policy")
            .to_owned();
        return match policy::compile(doc, Flavor::File, "") {
            Ok(p) => DocResult::Policy {
                label,
                policy: Box::new(p),
            },
            Err(e) => DocResult::Invalid(e),
        };
    };
    if kind != KIND {
        return DocResult::Skipped {
            kind: kind.as_str().unwrap_or("?").to_owned(),
        };
    }
    let mut errs = Vec::new();
    let field = |path: &str, message: String| policy::FieldError {
        path: path.into(),
        message,
    };
    match doc.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        other => errs.push(field(
            "apiVersion",
            format!(
                "expected {API_VERSION:?}, found {}",
                other.map_or("nothing".into(), |s| format!("{s:?}"))
            ),
        )),
    }
    let meta = doc.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    if name.is_none() {
        errs.push(field("metadata.name", "required field is missing".into()));
    }
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let label = format!("{ns}/{}", name.unwrap_or("?"));
    let compiled = match doc.get("spec") {
        None => {
            errs.push(field("spec", "required field is missing".into()));
            None
        }
        Some(spec) => match policy::compile(spec, Flavor::Spec, "spec") {
            Ok(p) => Some(p),
            Err(PolicyErrors(e)) => {
                errs.extend(e);
                None
            }
        },
    };
    // The CRD's CEL rules, as the API server would apply them; the compiler reports most of the
    // same problems, so only what it did not say at that path is added.
    for e in crd::cel_errors(doc) {
        if !errs.iter().any(|have| have.path == e.path) {
            errs.push(e);
        }
    }
    match compiled {
        Some(p) if errs.is_empty() => DocResult::Policy {
            label,
            policy: Box::new(p),
        },
        _ => DocResult::Invalid(PolicyErrors(errs)),
    }
}

/// Checks every file, writing a report to `out`. Returns whether everything was valid.
pub fn run(paths: &[impl AsRef<Path>], explain: Option<&Explain>, out: &mut String) -> bool {
    let mut ok = true;
    for path in paths {
        let path = path.as_ref();
        let shown = path.display();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(out, "{shown}: cannot read: {e}");
                ok = false;
                continue;
            }
        };
        let docs = match source::parse_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                let _ = writeln!(out, "{shown}: {}", e.message);
                ok = false;
                continue;
            }
        };
        if docs.is_empty() {
            let _ = writeln!(out, "{shown}: no documents");
            ok = false;
        }
        for (i, doc) in docs.iter().enumerate() {
            let at = format!("{shown} (document {})", i + 1);
            match check_document(doc) {
                DocResult::Invalid(errs) => {
                    ok = false;
                    for e in errs.0 {
                        let _ = writeln!(out, "{at}: {e}");
                    }
                }
                DocResult::Skipped { kind } => {
                    let _ = writeln!(out, "{at}: skipped ({kind} is not an McpPolicy)");
                }
                DocResult::Policy { label, policy } => {
                    let _ = writeln!(out, "{at}: ok: {}", summary(&label, &policy));
                    for w in warnings(&policy) {
                        let _ = writeln!(out, "{at}: warning: {w}");
                    }
                    if let Some(x) = explain {
                        explain_call(&policy, x, out);
                    }
                }
            }
        }
    }
    ok
}

/// What a valid policy does less than it may seem to: per-caller and per-session counters that a
/// caller can escape by changing what identifies it.
pub fn warnings(p: &Policy) -> Vec<String> {
    use crate::policy::{Identity, Scope};
    let mut out = Vec::new();
    for c in &p.counters {
        match (c.scope, &p.identity) {
            (Scope::Session, _) => out.push(format!(
                "counter {:?} has scope session: it counts per session id the server issued \
                 (calls with another id count per caller), so it limits nothing on a server \
                 that issues no sessions, and a caller that opens new sessions gets new counters",
                c.name
            )),
            (Scope::Grant, Identity::Bearer) => out.push(format!(
                "counter {:?} has scope grant with the default identity (a hash of the bearer \
                 token): a caller that sends a fresh token gets a fresh counter, so it is not a \
                 security limit unless tokens are verified before the sidecar",
                c.name
            )),
            (Scope::Grant, Identity::Header(h)) => out.push(format!(
                "counter {:?} has scope grant keyed on the {h:?} header: trust it only when an \
                 authenticating gateway in front of the sidecar sets that header",
                c.name
            )),
            _ => {}
        }
    }
    out
}

fn summary(label: &str, p: &Policy) -> String {
    let default = match p.default {
        policy::DefaultDecision::Allow => "allow",
        policy::DefaultDecision::Deny => "deny",
    };
    format!(
        "{label}: default {default}, {} tool rule{}, {} counter{}, {} hidden pattern{}",
        p.rules.len(),
        plural(p.rules.len()),
        p.counters.len(),
        plural(p.counters.len()),
        p.hide.len(),
        plural(p.hide.len())
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Writes what the policy decides for the call, on fresh counters.
pub fn explain_call(policy: &Policy, x: &Explain, out: &mut String) {
    let engine = Engine::new(policy.clone(), None, EngineOptions::default());
    let call = Call {
        tool: &x.tool,
        args: &x.args,
        grant: &x.grant,
        session: x.session.as_deref(),
    };
    let calls = x.calls.max(1);
    let mut allowed = 0u32;
    for _ in 1..calls {
        if engine.decide(&call, 0).outcome == Outcome::Allow {
            allowed += 1;
        }
    }
    let d = engine.decide(&call, 0);
    let _ = writeln!(out, "  call:     {} {}", x.tool, x.args);
    if calls > 1 {
        let _ = writeln!(
            out,
            "  calls:    {calls} at one instant, {allowed} of the first {} allowed",
            calls - 1
        );
    }
    let _ = writeln!(out, "  decision: {}", d.outcome.as_str());
    let _ = writeln!(out, "  rule:     {}", d.rule);
    if !d.reason.is_empty() {
        let _ = writeln!(out, "  reason:   {}", d.reason);
    }
    if let Some(hit) = &d.limit {
        let _ = writeln!(out, "  retry in: {:.1} s", hit.retry_after.as_secs_f64());
    }
    if d.outcome == Outcome::Allow {
        let rule = policy.find_rule(&x.tool).unwrap_or(&policy.default_rule);
        for l in &rule.limits {
            let c = &policy.counters[l.counter];
            let _ = writeln!(
                out,
                "  counts:   {} ({} per {}, scope {}, declared at {})",
                c.name,
                c.max,
                c.window.text,
                c.scope.as_str(),
                l.rule
            );
        }
    }
    let _ = writeln!(
        out,
        "  listed:   {}",
        if policy.listable(&x.tool) {
            "yes"
        } else {
            "no (never callable)"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counters_a_caller_can_escape_are_warned_about() {
        let policy = |identity: Value, scope: &str| {
            let mut doc = json!({"tools": {"t": {"limits": [
                {"counter": "c", "window": "minute", "max": 1, "scope": scope}]}}});
            if !identity.is_null() {
                doc["identity"] = identity;
            }
            match check_document(&doc) {
                DocResult::Policy { policy, .. } => warnings(&policy),
                other => panic!("{other:?}"),
            }
        };
        let w = policy(Value::Null, "session");
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("scope session") && w[0].contains("issues no sessions"),
            "{w:?}"
        );
        let w = policy(Value::Null, "grant");
        assert!(w[0].contains("fresh token"), "{w:?}");
        let w = policy(json!({"header": "x-agent"}), "grant");
        assert!(w[0].contains("authenticating gateway"), "{w:?}");
        assert!(policy(Value::Null, "pod").is_empty());
    }

    #[test]
    fn mcppolicy_manifest_errors_carry_spec_paths() {
        let doc = json!({
            "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"podSelector": {}, "upstream": {"port": 8888},
                     "tools": {"w": {"denyIf": [{"conditions": [{"path": "args.x", "op": "startswith", "value": "a"}]}]}}}
        });
        let DocResult::Invalid(e) = check_document(&doc) else {
            panic!("should be invalid")
        };
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].path, "spec.tools.w.denyIf[0].conditions[0].op");
    }

    #[test]
    fn other_kinds_are_skipped_and_wrong_api_version_is_an_error() {
        assert!(matches!(
            check_document(&json!({"kind": "Deployment"})),
            DocResult::Skipped { .. }
        ));
        let doc = json!({"apiVersion": "v1", "kind": KIND, "metadata": {"name": "p"},
                         "spec": {"podSelector": {}, "upstream": {"port": 1}}});
        let DocResult::Invalid(e) = check_document(&doc) else {
            panic!()
        };
        assert_eq!(e.0[0].path, "apiVersion");
    }

    #[test]
    fn the_crds_cel_rules_are_applied_to_manifests() {
        // A selector requirement the compiler accepts loosely but the API server refuses.
        let doc = json!({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "p"},
                         "spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
                                  "upstream": {"port": 1}, "tools": {"bad name": {}}}});
        let DocResult::Invalid(e) = check_document(&doc) else {
            panic!()
        };
        let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"spec.podSelector.matchExpressions[0].values"),
            "{paths:?}"
        );
        assert!(
            e.0.iter()
                .any(|e| e.message.contains("tool names are 1 to 128 characters")),
            "{e}"
        );
    }

    #[test]
    fn a_valid_manifest_is_labelled_namespace_slash_name() {
        let doc = json!({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "p", "namespace": "ml"},
                         "spec": {"podSelector": {"matchLabels": {"app": "x"}}, "upstream": {"port": 8888, "path": "/mcp"},
                                  "default": "allow"}});
        match check_document(&doc) {
            DocResult::Policy { label, .. } => assert_eq!(label, "ml/p"),
            other => panic!("{other:?}"),
        }
    }
}
