//! The McpPolicy resource (`mcpwarden.dev/v1alpha1`): Rust types from which the CRD is
//! generated (`mcp-warden crd`), so the schema the API server enforces cannot drift from the code.
//!
//! The `///` comments become `kubectl explain` text. The schema is structural and bounded
//! everywhere (CEL cost budgets need it), with enums for closed sets and CEL rules for what crosses
//! fields. What a schema cannot express (regex syntax, argument path syntax, one definition per
//! counter) is checked by the one compile step, [`McpPolicySpec::compile`], which the validating
//! webhook, the controller, the sidecar and `mcp-warden check` share.

use crate::policy::{self, bounds, window::WINDOW_PATTERN, Flavor, Policy, PolicyErrors};
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
    /// Policy format version; only "1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["1"]))]
    pub version: Option<String>,
    /// What happens to tools no rule names: `deny` (default) or `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultAction>,
    /// Who the caller is, for `grants` and `scope: grant` limits: a verified ServiceAccount
    /// token, a verified JWT of an external issuer, or a gateway's header. Default: the SHA-256
    /// of the bearer token, which names no one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
    /// Tool-name globs (`*`, `?`) never listed in tools/list, and denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::HIDE), inner(length(min = 1, max = bounds::TOOL_NAME)))]
    pub hide: Option<Vec<String>>,
    /// Limits every allowed call counts against, whatever the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_tools: Option<AllTools>,
    /// How a denied call is answered: `result` (default; a tool error whose text is the reason,
    /// which clients hand to the model) or `error` (a JSON-RPC error, code 403 or 429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_as: Option<DenyAs>,
    /// Hosts and origins the sidecar accepts besides loopback ones (DNS-rebinding protection).
    /// The controller adds the names and cluster IPs of the Services that select the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportSpec>,
    /// Rules by tool name. Keys are names or globs (`delete_*`); an exact name beats a glob,
    /// a longer glob beats a shorter one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = bounds::TOOLS))]
    #[x_kube(validation = kube::core::cel::Rule::new("self.all(name, size(name) >= 1 && size(name) <= 128 && !name.contains(' '))").message("tool names are 1 to 128 characters with no spaces"))]
    pub tools: Option<BTreeMap<String, ToolRule>>,
    /// Rules per caller. The first grant whose `subjects` match the caller's identity applies:
    /// a tool it names replaces the base rule for that tool, its `default` the base default, its
    /// `allTools` the base `allTools`; tools it does not name fall back to the base rules.
    /// Callers without an identity get the base rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::GRANTS))]
    pub grants: Option<Vec<GrantSpec>>,
    /// Rules by what the server says of a tool (its MCP annotations), for tools no name or glob
    /// in `tools` matches: `destructive`, `readOnly`, `openWorld`, `idempotent` (same fields as a
    /// tool rule). A hint the server does not set counts as the MCP default: an unannotated tool
    /// is destructive and open-world. A tool in several categories gets all their rules (the
    /// strictest wins). Order: exact name, glob, category, `default`. A call to a tool the
    /// sidecar has not yet seen listed is refused with a retryable error until it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<CategoriesSpec>,
    /// Pinned tool definitions: tool name → `sha256:…` of its name, description, input and
    /// output schema and annotations (`mcp-warden pin --server URL` prints them). A tool whose
    /// definition differs is removed from tools/list and its calls are denied (rule
    /// `pins.TOOL`) — a "rug pull" under the same name cannot slip through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = bounds::TOOLS, "additionalProperties" = {"type": "string", "maxLength": 71}))]
    #[x_kube(validation = kube::core::cel::Rule::new("self.all(name, size(name) >= 1 && size(name) <= 128 && !name.contains(' ') && !name.contains('*') && !name.contains('?') && self[name].matches('^sha256:[0-9a-f]{64}$'))").message("pins map a tool name (no globs) to \"sha256:\" and 64 lower-case hex digits"))]
    pub pins: Option<BTreeMap<String, String>>,
    /// `explicit` (default): only the tools in `pins` are pinned. `firstSeen`: every tool is
    /// pinned to the definition each sidecar first saw it with (lost when the pod restarts; use
    /// `pins` for pins that last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinning: Option<Pinning>,
}

/// Rules by MCP tool annotations.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CategoriesSpec {
    /// Tools that may destroy data: `destructiveHint` true or unset, and not read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive: Option<ToolRule>,
    /// Tools that change nothing: `readOnlyHint` true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<ToolRule>,
    /// Tools that reach outside systems: `openWorldHint` true or unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world: Option<ToolRule>,
    /// Tools that can be repeated safely: `idempotentHint` true, and not read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<ToolRule>,
}

/// Which tools' definitions are pinned.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Pinning {
    Explicit,
    FirstSeen,
}

/// Rules for the callers a grant names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantSpec {
    /// Identities the grant applies to, exact or glob (`*`, `?`): a ServiceAccount as
    /// `system:serviceaccount:NAMESPACE:NAME` (`system:serviceaccount:agents:*` for a namespace),
    /// a JWT's `sub`, or the identity header's value.
    #[schemars(length(min = 1, max = bounds::SUBJECTS), inner(length(min = 1, max = bounds::SUBJECT)))]
    pub subjects: Vec<String>,
    /// Replaces the base `default` for these callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultAction>,
    /// Replaces the base `allTools` for these callers (same fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_tools: Option<AllTools>,
    /// Rules by tool name that replace the base rules for these callers (same fields as
    /// `spec.tools`). Counters are shared by name across the whole policy: give a grant's limit
    /// its own counter name to count these callers apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = bounds::GRANT_TOOLS))]
    #[x_kube(validation = kube::core::cel::Rule::new("self.all(name, size(name) >= 1 && size(name) <= 128 && !name.contains(' '))").message("tool names are 1 to 128 characters with no spaces"))]
    pub tools: Option<BTreeMap<String, ToolRule>>,
}

/// A label selector with bounded size.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
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

/// `allow` or `deny`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    Allow,
    Deny,
}

/// `result` or `error`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DenyAs {
    Result,
    Error,
}

/// Who the caller is: exactly one of `serviceAccount`, `jwt` and `header`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::cel::Rule::new("(has(self.header) ? 1 : 0) + (has(self.serviceAccount) ? 1 : 0) + (has(self.jwt) ? 1 : 0) == 1").message("name exactly one source of identity: serviceAccount, jwt or header"))]
pub struct IdentitySpec {
    /// Projected ServiceAccount tokens (`Authorization: Bearer`), verified in the sidecar
    /// against the cluster's keys, which the controller renders beside the policy; the caller is
    /// `system:serviceaccount:NAMESPACE:NAME`. Mount a token with one of `audiences`, or mint one
    /// with `kubectl create token SA --audience AUDIENCE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountIdentity>,
    /// JWTs from an external OIDC issuer, verified in the sidecar against the issuer's keys,
    /// which the controller fetches from `jwksFrom`; the caller is the token's `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtIdentity>,
    /// The header carrying the caller's identity. Trust it only when an authenticating gateway in
    /// front of the sidecar sets it: clients can send any header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = bounds::HEADER), pattern(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    pub header: Option<String>,
    /// `true`: a request without a valid identity is refused with HTTP 401 and
    /// `WWW-Authenticate: Bearer`, naming why (no token, expired, wrong audience, bad
    /// signature…). `false` (default): a request without a token is served as `anonymous` with
    /// the base rules; a token that is sent must still be valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
}

/// Projected ServiceAccount tokens of this cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ServiceAccountIdentity {
    /// Audiences a token may be for (`aud`); at least one. Use one of your own, such as
    /// `mcp-warden`, not the API server's, so a token for this server cannot be replayed at it.
    #[schemars(length(min = 1, max = bounds::AUDIENCES), inner(length(min = 1, max = bounds::SUBJECT)))]
    pub audiences: Vec<String>,
}

/// JWTs from an external OIDC issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtIdentity {
    /// The issuer (`iss`), an https:// URL.
    #[schemars(length(min = 9, max = bounds::URL), pattern(r"^https://[^\s]+$"))]
    pub issuer: String,
    /// Audiences a token may be for (`aud`); at least one.
    #[schemars(length(min = 1, max = bounds::AUDIENCES), inner(length(min = 1, max = bounds::SUBJECT)))]
    pub audiences: Vec<String>,
    /// The https:// URL of the issuer's JSON Web Key Set, fetched by the controller.
    #[schemars(length(min = 9, max = bounds::URL), pattern(r"^https://[^\s]+$"))]
    pub jwks_from: String,
}

/// What the sidecar accepts in `Host` and `Origin`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransportSpec {
    /// Extra `Host` values agents may use, `name` or `name:port` (`*` for any), such as an
    /// Ingress hostname. Once any host is known, the sidecar refuses other `Host`s with 403;
    /// loopback names always pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::HOSTS), inner(length(min = 1, max = bounds::HOST)))]
    pub allowed_hosts: Option<Vec<String>>,
    /// Extra `Origin` values browser-based clients may send, `scheme://host[:port]` (`*` for
    /// any). Any other `Origin` is refused with 403; loopback origins and allowed hosts' pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::HOSTS), inner(length(min = 1, max = bounds::HOST)))]
    pub allowed_origins: Option<Vec<String>>,
}

/// Limits that apply to every allowed call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct AllTools {
    /// The limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::LIMITS))]
    pub limits: Option<Vec<Limit>>,
}

/// What a rule does for one tool (or glob).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::cel::Rule::new("!has(self.reason) || (has(self.action) && self.action == 'deny')").message("reason is only used with action: deny").field_path(".reason"))]
#[x_kube(validation = kube::core::cel::Rule::new("!has(self.approval) || !has(self.action) || self.action != 'deny'").message("a denied tool cannot also require approval").field_path(".approval"))]
pub struct ToolRule {
    /// `allow` (default); `deny`: deny whatever the arguments, with `reason`;
    /// `require_approval`: the short form of `approval: {}` (one use within an hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ToolAction>,
    /// The call runs only with a person's approval of exactly it: this tool, these arguments
    /// (compared canonically), this caller. Checked after `require` and `denyIf`, before the
    /// limits. Without one the agent is told the request is recorded and to repeat the identical
    /// call once it is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
    /// The text the agent sees when `action: deny` refuses a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::REASON))]
    pub reason: Option<String>,
    /// Rate limits, taken all together or not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::LIMITS))]
    pub limits: Option<Vec<Limit>>,
    /// Argument validation: every condition must hold, or the call is denied
    /// ("argument validation failed: …").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::REQUIRE))]
    pub require: Option<Vec<Requirement>>,
    /// Denials on arguments: the first entry whose conditions all hold denies with its `onDeny`.
    /// An entry with no conditions always denies (and hides the tool from tools/list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::DENY_IF))]
    pub deny_if: Option<Vec<DenyIf>>,
}

/// What a tool rule does before its checks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolAction {
    Allow,
    Deny,
    RequireApproval,
}

/// How long, and for how many calls, an approval holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct ApprovalSpec {
    /// How long an approval holds once given (default `1h`): `90s`, `15m`, `2h`, `1d`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 12), pattern(WINDOW_PATTERN))]
    pub ttl: Option<String>,
    /// Calls one approval allows (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub uses: Option<u32>,
}

/// A rate limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Limit {
    /// Counter name. Limits naming the same counter share it and must agree on window, scope
    /// and max. Counters survive policy updates when name, window and scope are unchanged.
    #[schemars(length(min = 1, max = bounds::COUNTER), pattern(r"^[A-Za-z0-9_.-]+$"))]
    pub counter: String,
    /// `second`, `minute`, `hour`, `day`, or a duration such as `90s`, `15m`, `2h`, `1d` (at most
    /// 7 days). Never more than `max` calls are allowed in any rolling window of this length.
    #[schemars(length(max = 12), pattern(WINDOW_PATTERN))]
    pub window: String,
    /// Calls allowed per window (at least 1).
    #[schemars(range(min = 1))]
    pub max: u32,
    /// `pod` (default): one counter per sidecar. `grant` (alias `identity`): per caller, as
    /// `identity` says. `session`: per session id the server issued through the sidecar; a call
    /// with none (or with an id the server never issued) counts per caller. Until identities
    /// are verified neither is a security limit: a caller that sends a fresh bearer token or
    /// opens a fresh session gets a fresh counter (`mcp-warden check` warns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// Who shares a counter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Pod,
    Grant,
    Identity,
    Session,
}

/// One argument condition of `require`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Requirement {
    /// Argument path: `args.key`, `args.a.b`, `args.list[0]`, `args.list[*].key`, `args["a.b"]`.
    #[schemars(length(min = 4, max = bounds::PATH), pattern(r"^args"))]
    pub path: String,
    /// The operator.
    pub op: Op,
    /// The operand (any JSON value; none for `exists` and `not_exists`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub value: Option<Value>,
    /// The text the agent sees when this condition fails (default: a description of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::REASON))]
    pub reason: Option<String>,
}

/// One entry of `denyIf`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DenyIf {
    /// All must hold for the entry to deny; empty means always.
    #[schemars(length(max = bounds::CONDITIONS))]
    pub conditions: Vec<ConditionSpec>,
    /// The text the agent sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::REASON))]
    pub on_deny: Option<String>,
}

/// One argument condition of `denyIf`. With a `[*]` path it holds if any element matches.
/// A value that cannot be compared (a mapping where a number is expected) makes it hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ConditionSpec {
    /// Argument path, as in `require`.
    #[schemars(length(min = 4, max = bounds::PATH), pattern(r"^args"))]
    pub path: String,
    /// The operator.
    pub op: Op,
    /// The operand (any JSON value; none for `exists` and `not_exists`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub value: Option<Value>,
}

// Whether `value` is present cannot be a CEL rule: the API server gives CEL no access to a field
// without a schema type (`value` may be any JSON value), so such a rule fails to compile and the
// CRD is refused. The validating webhook refuses a missing or extra `value` instead.

/// A condition operator. Numeric operators and numeric `eq`/`in` read numeric strings as numbers,
/// and booleans match "true"/"false", the way lenient servers read arguments.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Neq,
    In,
    NotIn,
    Contains,
    Prefix,
    Suffix,
    Regex,
    Gt,
    Gte,
    Lt,
    Lte,
    Exists,
    NotExists,
    PathWithin,
}

/// A condition operand: any JSON value, kept as written.
fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-preserve-unknown-fields": true})
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
        let needs =
            |r: &ToolRule| r.approval.is_some() || r.action == Some(ToolAction::RequireApproval);
        let categories = self.categories.iter().flat_map(|c| {
            [&c.destructive, &c.read_only, &c.open_world, &c.idempotent]
                .into_iter()
                .flatten()
        });
        self.tools.as_ref().is_some_and(|t| t.values().any(needs))
            || categories.into_iter().any(needs)
            || self
                .grants
                .iter()
                .flatten()
                .any(|g| g.tools.as_ref().is_some_and(|t| t.values().any(needs)))
    }

    /// Compiles the policy with the same code the sidecar uses; errors carry `spec.` paths.
    pub fn compile(&self) -> Result<Policy, PolicyErrors> {
        let v = serde_json::to_value(self).map_err(|e| {
            PolicyErrors(vec![policy::FieldError {
                path: "spec".into(),
                message: e.to_string(),
            }])
        })?;
        policy::compile(&v, Flavor::Spec, "spec")
    }

    /// The upstream MCP path (`/mcp` unless set).
    pub fn upstream_path(&self) -> &str {
        self.upstream.path.as_deref().unwrap_or("/mcp")
    }
}

/// Renders an McpPolicy into the `policy.json` its sidecars read: the policy in snake_case plus
/// `name: <namespace>/<name>`, nothing else, so the sidecar's strict parser accepts it.
pub fn render(namespace: &str, name: &str, spec: &McpPolicySpec) -> Result<Rendered, PolicyErrors> {
    let compiled = spec.compile()?;
    let v = serde_json::to_value(spec).unwrap_or(Value::Null);
    let doc = policy::normalize(&v, Flavor::Spec, Some(&format!("{namespace}/{name}")));
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
