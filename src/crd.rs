//! The McpPolicy resource (`mcpwarden.dev/v1alpha1`): Rust types from which the CRD is
//! generated (`mcp-warden crd`), so the schema the API server enforces cannot drift from the code.
//!
//! The `///` comments become `kubectl explain` text. The schema is structural and bounded
//! everywhere (CEL cost budgets need it), with enums for closed sets and CEL rules for what crosses
//! fields. What a schema cannot express (regex syntax, argument path syntax, one definition per
//! counter) is checked by the one compile step, [`McpPolicySpec::compile`], which the validating
//! webhook, the controller, the sidecar and `mcp-warden check` share.

use crate::policy::doc::{self, PolicyDoc};
pub use crate::policy::doc::{
    AllTools, ApprovalSpec, CategoriesSpec, ConditionSpec, DefaultAction, DenyAs, DenyIf,
    GrantSpec, IdentitySpec, JwtIdentity, Limit, Op, Pinning, Requirement, Scope,
    ServiceAccountIdentity, ToolAction, ToolRule, TransportSpec, Version,
};
use crate::policy::reader::{Errors, FieldPath};
use crate::policy::shape;
use crate::policy::{self, Flavor, Policy, PolicyErrors};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Where a policy applies, and the policy itself.
// Each printcolumn(...) repeats `type_ =`; clippy reads that as one attribute given twice.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcpwarden.dev",
    version = "v1alpha1",
    kind = "McpPolicy",
    namespaced,
    shortname = "mcpp",
    category = "mcp",
    status = "McpPolicyStatus",
    doc = "An McpPolicy guards the MCP servers in the pods it selects: mcp-warden injects its sidecar into them, and the sidecar allows, denies or rate-limits every tools/call by this policy. Rate-limit counters live in each sidecar: N replicas allow N x max, and a restart resets them.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Default", type_ = "string", json_path = ".spec.default"),
    printcolumn(name = "Tools", type_ = "integer", json_path = ".status.toolCount"),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.matchedPods"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::cel::Rule::new("!has(self.grants) || size(self.grants) == 0 || has(self.identity)").message("grants need an identity that names the caller: identity.serviceAccount, identity.jwt or identity.header").field_path(".grants"))]
pub struct McpPolicySpec {
    /// The pods this policy guards, in this namespace (a standard label selector). When two
    /// policies select the same pod, the older one applies and the other reports `Conflict`.
    pub pod_selector: PodSelector,
    /// Where the MCP server listens inside the pod.
    pub upstream: Upstream,
    /// `NetworkPolicy` (default): only the sidecar's ports are reachable, so nothing gets to the
    /// MCP server around it. `None`: no NetworkPolicy is rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "NetworkPolicy"))]
    pub isolation: Option<Isolation>,
    /// The policy itself: every field of a policy file but `name`.
    #[serde(flatten)]
    pub policy: PolicyDoc,
}

/// A label selector with bounded size.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = doc::open_object)]
pub struct PodSelector {
    /// Labels a pod must carry, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "labels_schema")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Set-based requirements, all of which must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub match_expressions: Option<Vec<SelectorRequirement>>,
}

/// Label keys and values with Kubernetes' bounds.
fn labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 63}
    })
}

/// One set-based selector requirement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = doc::open_object)]
#[x_kube(validation = kube::core::cel::Rule::new("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)").message("In and NotIn need values; Exists and DoesNotExist take none"))]
pub struct SelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: SelectorOperator,
    /// The values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Option<Vec<String>>,
}

/// A selector operator.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Where the MCP server listens in the pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = doc::open_object)]
pub struct Upstream {
    /// The MCP server's port inside the pod. The container port named `mcp` is moved to the
    /// sidecar, which forwards to this port on 127.0.0.1.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// The MCP endpoint path (default `/mcp`; `/sse` for a legacy HTTP+SSE server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), pattern(r"^/"))]
    pub path: Option<String>,
}

/// Whether a NetworkPolicy keeps traffic from reaching the MCP server around the sidecar.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Isolation {
    NetworkPolicy,
    None,
}

/// Standard conditions, as a list-map keyed by `type`, with the bounds Kubernetes gives them.
fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 8,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "maxLength": 316, "description": "Ready, or a warning such as ServiceBypass."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "lastTransitionTime": {"type": "string", "format": "date-time", "description": "When status last changed."},
                "reason": {"type": "string", "maxLength": 1024, "minLength": 1, "description": "Why, in CamelCase (Rendered, InvalidPolicy, Conflict, ...)."},
                "message": {"type": "string", "maxLength": 32768, "description": "Details for people."}
            }
        }
    })
}

/// What the controller observed and rendered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (reasons `Rendered`, `InvalidPolicy`, `Conflict`) and warnings such as
    /// `ServiceBypass`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// SHA-256 of the rendered policy.json that sidecars enforce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub policy_hash: Option<String>,
    /// Tool rules in the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_count: Option<i32>,
    /// Pods the selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_pods: Option<i32>,
    /// Matched pods running the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_pods: Option<i32>,
    /// Injected pods whose sidecar is older than the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outdated_pods: Option<i32>,
    /// The tools the server offers, as its sidecars last listed them (the first 256 by name),
    /// each with its definition hash and MCP-annotation categories. Conditions `UnknownTools`,
    /// `UnknownArguments` and `ToolDefinitionChanged` compare the policy with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub observed_tools: Option<Vec<ObservedTool>>,
    /// How many tools the server offers (all of them, where `observedTools` stops at 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_tool_count: Option<i32>,
    /// When the tools in this status were read from the sidecars (written when what they see
    /// changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools_observed_at: Option<Time>,
    /// Under `pinning: firstSeen`: the definition each tool had when the policy's pods first saw
    /// it (tool name → `sha256:…`), recorded once and rendered to every pod, so a restarted or
    /// new replica holds each tool to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = crate::policy::bounds::FIRST_SEEN, "additionalProperties" = {"type": "string", "maxLength": 71}))]
    pub first_seen: Option<BTreeMap<String, String>>,
    /// Offered tools that no rule names and only `default: allow` lets through (the first 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(max = 128)))]
    pub tools_allowed_by_default: Option<Vec<String>>,
}

/// One tool the server offers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedTool {
    #[schemars(length(max = 128))]
    pub name: String,
    /// `sha256:…` of its definition (what `pins` holds).
    #[schemars(length(max = 71))]
    pub hash: String,
    /// `destructive`, `read_only`, `open_world`, `idempotent`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), inner(length(max = 16)))]
    pub categories: Vec<String>,
    /// Its definition changed since a sidecar first saw it, or differs from its pin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed: bool,
}

/// A rendered policy: the bytes of `policy.json` and their SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub json: Vec<u8>,
    pub hash: String,
    pub tool_count: usize,
}

impl McpPolicySpec {
    /// The isolation in force: `NetworkPolicy` unless the spec says `None` (the API server also
    /// fills the default in, but a spec read from elsewhere may leave it out).
    pub fn isolation(&self) -> Isolation {
        self.isolation.unwrap_or(Isolation::NetworkPolicy)
    }

    /// Whether any rule (base or grant) needs a person's approval: its sidecars then report
    /// requests to the controller and honour the approvals it renders.
    pub fn has_approvals(&self) -> bool {
        let p = &self.policy;
        let needs =
            |r: &ToolRule| r.approval.is_some() || r.action == Some(ToolAction::RequireApproval);
        let categories = p.categories.iter().flat_map(|c| {
            [&c.destructive, &c.read_only, &c.open_world, &c.idempotent]
                .into_iter()
                .flatten()
        });
        p.tools.as_ref().is_some_and(|t| t.values().any(needs))
            || categories.into_iter().any(needs)
            || p.grants
                .iter()
                .flatten()
                .any(|g| g.tools.as_ref().is_some_and(|t| t.values().any(needs)))
    }

    /// Compiles the policy with the same code the sidecar uses; errors carry `spec.` paths.
    pub fn compile(&self) -> Result<Policy, PolicyErrors> {
        policy::compile(&self.policy, None, Flavor::Spec, "spec")
    }

    /// Checks an McpPolicy `spec` (already parsed) as the API server and the compiler would,
    /// every error at once with its `spec.` path: the shapes serde refuses, then what it cannot
    /// see in where the policy applies and in the policy itself. The typed spec and the
    /// compiled policy when there is nothing to say.
    pub fn check(v: &Value) -> Result<(McpPolicySpec, Policy), PolicyErrors> {
        use policy::FieldError;
        let root = FieldPath::root("spec");
        let Value::Object(m) = v else {
            let found = policy::reader::kind(v);
            let e = FieldError::new("spec", format!("expected a mapping, found {found}"));
            return Err(PolicyErrors(vec![e]));
        };
        let mut errs: Vec<FieldError> = ["podSelector", "upstream"]
            .into_iter()
            .filter(|key| !m.contains_key(*key))
            .map(|key| FieldError::new(root.key(key).as_str(), "required field is missing"))
            .collect();
        let pod_selector: Option<PodSelector> =
            part(m.get("podSelector"), "spec.podSelector", &mut errs);
        let upstream: Option<Upstream> = part(m.get("upstream"), "spec.upstream", &mut errs);
        let isolation: Option<Isolation> = part(m.get("isolation"), "spec.isolation", &mut errs);
        let rest: serde_json::Map<String, Value> = m
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "podSelector" | "upstream" | "isolation"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (policy, shape) = shape::read::<PolicyDoc>(&Value::Object(rest), "spec");
        errs.extend(shape);
        let Some(policy) = policy else {
            return Err(PolicyErrors(errs));
        };
        let compiled = policy::compile(&policy, None, Flavor::Spec, "spec");
        let (Some(pod_selector), Some(upstream)) = (pod_selector, upstream) else {
            errs.extend(compiled.err().map(|e| e.0).unwrap_or_default());
            return Err(PolicyErrors(errs));
        };
        let spec = McpPolicySpec {
            pod_selector,
            upstream,
            isolation,
            policy,
        };
        let mut placement = Errors::default();
        spec.check_placement(&root, &mut placement);
        errs.extend(
            placement
                .into_result(())
                .err()
                .map(|e| e.0)
                .unwrap_or_default(),
        );
        policy::with_found(errs, compiled).map(|p| (spec, p))
    }

    /// What the schema says of `podSelector` and `upstream` that serde cannot: a port of 0, a
    /// path not starting with `/`, `In`/`NotIn` without values, `Exists` with some.
    fn check_placement(&self, root: &FieldPath, errs: &mut Errors) {
        if self.upstream.port == 0 {
            errs.push(
                &root.key("upstream").key("port"),
                "port must be 1 to 65535, found 0",
            );
        }
        if let Some(path) = &self.upstream.path {
            if !path.starts_with('/') {
                errs.push(
                    &root.key("upstream").key("path"),
                    "path must start with '/'",
                );
            }
        }
        let expressions = self.pod_selector.match_expressions.iter().flatten();
        for (i, e) in expressions.enumerate() {
            let at = root
                .key("podSelector")
                .key("matchExpressions")
                .index(i)
                .key("values");
            let count = e.values.as_ref().map_or(0, Vec::len);
            match e.operator {
                SelectorOperator::In | SelectorOperator::NotIn if count == 0 => {
                    errs.push(&at, format!("{:?} needs values", e.operator))
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist if count > 0 => {
                    errs.push(&at, "must be empty for this operator")
                }
                _ => {}
            }
        }
    }

    /// The upstream MCP path (`/mcp` unless set).
    pub fn upstream_path(&self) -> &str {
        self.upstream.path.as_deref().unwrap_or("/mcp")
    }
}

/// `v` read as a `T` (nothing when absent); what serde refuses goes to `errs` with its path.
fn part<T: serde::de::DeserializeOwned>(
    v: Option<&Value>,
    path: &str,
    errs: &mut Vec<policy::FieldError>,
) -> Option<T> {
    shape::from_value(v?, path)
        .map_err(|e| errs.extend(e.0))
        .ok()
}

/// Renders an McpPolicy into the `policy.json` its sidecars read: the policy in snake_case plus
/// `name: <namespace>/<name>`, nothing else, so the sidecar's strict parser accepts it.
pub fn render(namespace: &str, name: &str, spec: &McpPolicySpec) -> Result<Rendered, PolicyErrors> {
    let compiled = spec.compile()?;
    let doc = policy::document(&spec.policy, Some(&format!("{namespace}/{name}")));
    let json =
        serde_json::to_vec_pretty(&doc).expect("serialising a value built in memory cannot fail");
    let hash = policy::sha256_hex(&json);
    Ok(Rendered {
        json,
        hash,
        tool_count: compiled.tools.rules.len(),
    })
}

/// What the API server's CEL rules would say about an McpPolicy object, evaluated locally.
pub fn cel_errors(object: &Value) -> Vec<policy::FieldError> {
    use kube::CustomResourceExt;
    let crd = McpPolicy::crd();
    let Some(schema) = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
    else {
        return Vec::new();
    };
    let schema = serde_json::to_value(schema).unwrap_or(Value::Null);
    match kube::core::cel::Validator::new().validate(&schema, object, None) {
        Ok(()) => Vec::new(),
        Err(errs) => errs
            .into_iter()
            .map(|e| {
                let text = e.to_string();
                let (path, message) = text.split_once(": ").unwrap_or(("", &text));
                policy::FieldError {
                    path: path.to_owned(),
                    message: message.to_owned(),
                }
            })
            .collect(),
    }
}

/// The CRD as YAML, as `crds/mcppolicy.yaml` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = serde_yaml::to_string(&McpPolicy::crd())
        .expect("serialising a value built in memory cannot fail");
    format!("# Generated by `mcp-warden crd` from src/crd.rs; do not edit.\n{crd}")
}

pub mod approval;
pub mod build;
pub mod manifest;
pub mod reference;

#[cfg(test)]
mod tests;
