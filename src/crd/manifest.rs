//! Reading one document of a file or an admission request: an McpPolicy manifest (checked as
//! the API server and the compiler would), another Kubernetes object, or a bare policy.

use super::McpPolicySpec;
use crate::policy::{self, Policy, PolicyErrors};
use serde_json::Value;

/// The McpPolicy API group/version accepted.
pub const API_VERSION: &str = "mcpwarden.dev/v1alpha1";
pub const KIND: &str = "McpPolicy";

/// What one document turned out to be.
#[derive(Debug)]
pub enum Document {
    Policy { label: String, policy: Box<Policy> },
    Skipped { kind: String },
    Invalid(PolicyErrors),
}

/// Reads one document of a file: an McpPolicy manifest, another Kubernetes object (skipped),
/// or a bare policy.
pub fn read_document(doc: &Value) -> Document {
    let Some(kind) = doc.get("kind") else {
        let label = doc
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("policy")
            .to_owned();
        return match policy::compile_file(doc) {
            Ok(p) => Document::Policy {
                label,
                policy: Box::new(p),
            },
            Err(e) => Document::Invalid(e),
        };
    };
    if kind != KIND {
        return Document::Skipped {
            kind: kind.as_str().unwrap_or("?").to_owned(),
        };
    }
    read_manifest(doc)
}

/// An McpPolicy manifest, checked as the API server (its schema's CEL rules) and the compiler
/// would, every error at once.
fn read_manifest(doc: &Value) -> Document {
    let (label, mut errs) = header(doc);
    let compiled = match doc.get("spec") {
        None => {
            errs.push(policy::FieldError::new("spec", "required field is missing"));
            None
        }
        Some(spec) => McpPolicySpec::check(spec)
            .map_err(|PolicyErrors(e)| errs.extend(e))
            .ok()
            .map(|(_, p)| p),
    };
    // The CRD's CEL rules, as the API server would apply them; the compiler reports most of the
    // same problems, so only what it did not say at that path is added.
    for e in super::cel_errors(doc) {
        if !errs.iter().any(|have| have.path == e.path) {
            errs.push(e);
        }
    }
    match compiled {
        Some(p) if errs.is_empty() => Document::Policy {
            label,
            policy: Box::new(p),
        },
        _ => Document::Invalid(PolicyErrors(errs)),
    }
}

/// A manifest's `namespace/name`, and what is wrong with its `apiVersion` and `metadata`.
fn header(doc: &Value) -> (String, Vec<policy::FieldError>) {
    let mut errs = Vec::new();
    match doc.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        other => errs.push(policy::FieldError::new(
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
        errs.push(policy::FieldError::new(
            "metadata.name",
            "required field is missing",
        ));
    }
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    (format!("{ns}/{}", name.unwrap_or("?")), errs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mcppolicy_manifest_errors_carry_spec_paths() {
        let doc = json!({
            "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"podSelector": {}, "upstream": {"port": 8888},
                     "tools": {"w": {"denyIf": [{"conditions": [{"path": "args.x", "op": "startswith", "value": "a"}]}]}}}
        });
        let Document::Invalid(e) = read_document(&doc) else {
            panic!("should be invalid")
        };
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].path, "spec.tools.w.denyIf[0].conditions[0].op");
    }

    #[test]
    fn other_kinds_are_skipped_and_wrong_api_version_is_an_error() {
        assert!(matches!(
            read_document(&json!({"kind": "Deployment"})),
            Document::Skipped { .. }
        ));
        let doc = json!({"apiVersion": "v1", "kind": KIND, "metadata": {"name": "p"},
                         "spec": {"podSelector": {}, "upstream": {"port": 1}}});
        let Document::Invalid(e) = read_document(&doc) else {
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
        let Document::Invalid(e) = read_document(&doc) else {
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
        match read_document(&doc) {
            Document::Policy { label, .. } => assert_eq!(label, "ml/p"),
            other => panic!("{other:?}"),
        }
    }
}
