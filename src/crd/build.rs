//! McpPolicies built in code (tests, benchmarks, tools that generate policies): a valid
//! manifest with defaults a test rarely cares about, and setters for what it does.

use super::McpPolicy;
use serde_json::{json, Map, Value};

/// Builds an McpPolicy manifest. Defaults: selects `app: jupyter-mcp`, upstream port 8888,
/// `default: deny`, no tools.
#[derive(Debug, Clone)]
pub struct PolicyBuilder {
    metadata: Map<String, Value>,
    spec: Map<String, Value>,
}

impl PolicyBuilder {
    pub fn new(namespace: &str, name: &str) -> PolicyBuilder {
        let metadata = json!({"name": name, "namespace": namespace});
        let spec = json!({
            "podSelector": {"matchLabels": {"app": "jupyter-mcp"}},
            "upstream": {"port": 8888},
            "default": "deny",
        });
        PolicyBuilder {
            metadata: into_map(metadata),
            spec: into_map(spec),
        }
    }

    /// Selects pods with these labels (`matchLabels`).
    pub fn selecting(mut self, labels: Value) -> PolicyBuilder {
        self.spec
            .insert("podSelector".into(), json!({ "matchLabels": labels }));
        self
    }

    /// Selects pods labelled `app: APP`.
    pub fn app(self, app: &str) -> PolicyBuilder {
        self.selecting(json!({ "app": app }))
    }

    /// Sets these top-level spec fields (replacing what was there).
    pub fn spec(mut self, fields: Value) -> PolicyBuilder {
        self.spec.extend(into_map(fields));
        self
    }

    /// Sets these metadata fields (`uid`, `creationTimestamp`, …).
    pub fn metadata(mut self, fields: Value) -> PolicyBuilder {
        self.metadata.extend(into_map(fields));
        self
    }

    /// Created `secs` seconds after 2026-01-01T00:00:00Z (the oldest selecting policy wins).
    pub fn created(self, secs: u32) -> PolicyBuilder {
        let stamp = format!(
            "2026-01-01T{:02}:{:02}:{:02}Z",
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60
        );
        self.metadata(json!({ "creationTimestamp": stamp }))
    }

    /// The manifest, as `kubectl apply` would send it.
    pub fn manifest(&self) -> Value {
        json!({
            "apiVersion": "mcpwarden.dev/v1alpha1",
            "kind": "McpPolicy",
            "metadata": self.metadata,
            "spec": self.spec,
        })
    }

    /// The typed object.
    pub fn build(&self) -> McpPolicy {
        serde_json::from_value(self.manifest()).expect("the builder writes a valid McpPolicy")
    }
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("expected a JSON object, got {other}"),
    }
}
