//! The McpApproval resource (`mcpwarden.dev/v1alpha1`, short name `mcpa`): one call an agent
//! asked to make that its policy runs only with a person's approval.
//!
//! The controller creates it from a sidecar's pending request; a person sets `spec.decision`
//! (`kubectl mcp-warden approve NAME`); the admission webhooks stamp `spec.decidedBy` and
//! `spec.decidedAt` and refuse self-approval and changed decisions; the controller renders an
//! approved one into the policy's ConfigMap until it is used up or expires, and keeps `status`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One call waiting for, or given, a person's decision.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcpwarden.dev",
    version = "v1alpha1",
    kind = "McpApproval",
    namespaced,
    shortname = "mcpa",
    category = "mcp",
    status = "McpApprovalStatus",
    doc = "An McpApproval is one tools/call an agent asked to make that its McpPolicy runs only with a person's approval. Approve or deny it by setting spec.decision (kubectl mcp-warden approve|reject NAME); the call then runs as many times as the rule's uses allow, within its ttl, with exactly these arguments, for exactly this identity, on this pod.",
    printcolumn(name = "Tool", type_ = "string", json_path = ".spec.tool"),
    printcolumn(name = "Identity", type_ = "string", json_path = ".spec.identity"),
    printcolumn(name = "Decision", type_ = "string", json_path = ".spec.decision"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct McpApprovalSpec {
    /// The McpPolicy (in this namespace) whose rule asks for approval.
    #[schemars(length(min = 1, max = 253))]
    pub policy: String,
    /// The tool the agent called.
    #[schemars(length(min = 1, max = 256))]
    pub tool: String,
    /// The call's arguments as canonical JSON (keys sorted, no whitespace); absent when over
    /// 16 KiB, then only `argumentsHash` tells them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub arguments: Option<String>,
    /// SHA-256 (hex) of the canonical arguments: the approval holds for exactly these.
    #[schemars(length(min = 64, max = 64))]
    pub arguments_hash: String,
    /// Who asked: the verified caller (`system:serviceaccount:NS:NAME`, a JWT subject, a
    /// gateway header's value) or `anonymous`. That identity may not decide.
    #[schemars(length(min = 1, max = 256))]
    pub identity: String,
    /// The pod whose sidecar saw the call: the approval is honoured there only.
    #[schemars(length(min = 1, max = 253))]
    pub pod: String,
    /// The sidecar's id for what must match (policy, tool, arguments hash, identity).
    #[schemars(length(min = 64, max = 64))]
    pub approval_id: String,
    /// When the agent asked.
    pub requested_at: Time,
    /// When the request lapses if nobody decides it.
    pub expires_at: Time,
    /// Calls an approval allows (the rule's `approval.uses`).
    #[schemars(range(min = 1, max = 1000))]
    pub uses: u32,
    /// Seconds an approval lasts from the decision (the rule's `approval.ttl`).
    #[schemars(range(min = 1))]
    pub ttl_seconds: u64,
    /// `Approved` or `Denied`, set by a person; final once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ApprovalDecision>,
    /// Who decided: stamped by the admission webhook from the request's user (a value sent by
    /// the client is overwritten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub decided_by: Option<String>,
    /// When the decision was made: stamped by the admission webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
}

/// A person's decision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ApprovalDecision {
    Approved,
    Denied,
}

/// Where an approval stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ApprovalPhase {
    /// Waiting for a decision.
    Pending,
    /// Approved, unexpired, with uses left: rendered for the sidecar.
    Approved,
    Denied,
    /// Every use spent.
    Used,
    /// Lapsed: undecided past `expiresAt`, or approved and not used up within the ttl.
    Expired,
}

impl ApprovalPhase {
    /// Whether nothing more can happen to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ApprovalPhase::Denied | ApprovalPhase::Used | ApprovalPhase::Expired
        )
    }
}

/// What the controller observed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpApprovalStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ApprovalPhase>,
    /// Uses the sidecar has spent.
    #[serde(default)]
    pub used: u32,
    /// The pods whose calls spent the uses (an approval is honoured on every pod of a policy
    /// whose sidecars have peers; each use is counted once, by its owner).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub used_on: Vec<String>,
    /// When an approval stops allowing calls (`decidedAt` + ttl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_expires_at: Option<Time>,
    /// When the phase became final (retention counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// The McpApproval name for a request: the tool (as a DNS label) and the approval id's start.
pub fn approval_name(tool: &str, approval_id: &str) -> String {
    let mut label: String = tool
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(40)
        .collect();
    label = label.trim_matches('-').to_owned();
    if label.is_empty() {
        label.push_str("call");
    }
    format!("{label}-{}", &approval_id[..approval_id.len().min(12)])
}

/// The CRD as YAML, as `crds/mcpapproval.yaml` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = serde_yaml::to_string(&McpApproval::crd())
        .expect("serialising a value built in memory cannot fail");
    format!("# Generated by `mcp-warden crd` from src/crd/approval.rs; do not edit.\n{crd}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_from_the_tool_and_the_id() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(
            approval_name("clear_session", &id),
            "clear-session-0123456789ab"
        );
        assert_eq!(approval_name("__", &id), "call-0123456789ab");
        assert_eq!(
            approval_name("Ünïcode.Tool", &id),
            "n-code-tool-0123456789ab"
        );
        assert!(approval_name(&"x".repeat(300), &id).len() <= 63);
    }

    #[test]
    fn the_crd_has_the_short_name_and_columns_people_use() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(McpApproval::crd()).unwrap();
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "mcpa");
        let cols: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(cols, ["Tool", "Identity", "Decision", "Phase", "Age"]);
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let decisions = spec["properties"]["decision"]["enum"].as_array().unwrap();
        assert!(decisions.contains(&"Approved".into()) && decisions.contains(&"Denied".into()));
        assert_eq!(
            decisions.iter().filter(|d| d.is_string()).count(),
            2,
            "{decisions:?}"
        );
    }
}
