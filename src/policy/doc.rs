//! The policy document: one serde type for the policy file and the McpPolicy `spec`
//! (which flattens it in beside `podSelector`, `upstream` and `isolation`).
//!
//! Fields are camelCase (`allTools`, `denyIf`, `onDeny`) and accept PolicyLayer's snake_case
//! (`all_tools`, `deny_if`, `on_deny`) as aliases; unknown fields are refused, and duplicate keys
//! are refused before (by [`super::source`]). What serde checks here — shapes, types, closed
//! sets — is reported with each field's path ([`super::shape`]); what it cannot — bounds,
//! regexes, argument paths, one definition per counter — the compiler reports. Every error of
//! a document is reported at once. The `///` comments are the CRD's `kubectl explain` text.

use super::bounds;
use super::reader::PolicyErrors;
use super::window::WINDOW_PATTERN;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A policy: what the sidecar enforces. A policy file is this plus an optional `name`; an
/// McpPolicy `spec` is this plus where it applies.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a policy (a mapping)"
)]
#[schemars(transform = open_object)]
pub struct PolicyDoc {
    /// Policy format version; only "1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("enum" = ["1"]))]
    pub version: Option<Version>,
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
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "all_tools")]
    pub all_tools: Option<AllTools>,
    /// How a denied call is answered: `result` (default; a tool error whose text is the reason,
    /// which clients hand to the model) or `error` (a JSON-RPC error, code 403 or 429).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "deny_as")]
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
    #[serde(deserialize_with = "rules")]
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
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "rules by category (a mapping)"
)]
#[schemars(transform = open_object)]
pub struct CategoriesSpec {
    /// Tools that may destroy data: `destructiveHint` true or unset, and not read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive: Option<ToolRule>,
    /// Tools that change nothing: `readOnlyHint` true.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "read_only")]
    pub read_only: Option<ToolRule>,
    /// Tools that reach outside systems: `openWorldHint` true or unset.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "open_world")]
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
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a grant (a mapping with subjects)"
)]
#[schemars(transform = open_object)]
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
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "all_tools")]
    pub all_tools: Option<AllTools>,
    /// Rules by tool name that replace the base rules for these callers (same fields as
    /// `spec.tools`). Counters are shared by name across the whole policy: give a grant's limit
    /// its own counter name to count these callers apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = bounds::GRANT_TOOLS))]
    #[x_kube(validation = kube::core::cel::Rule::new("self.all(name, size(name) >= 1 && size(name) <= 128 && !name.contains(' '))").message("tool names are 1 to 128 characters with no spaces"))]
    #[serde(deserialize_with = "rules")]
    pub tools: Option<BTreeMap<String, ToolRule>>,
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
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "an identity (a mapping)"
)]
#[schemars(transform = open_object)]
#[x_kube(validation = kube::core::cel::Rule::new("(has(self.header) ? 1 : 0) + (has(self.serviceAccount) ? 1 : 0) + (has(self.jwt) ? 1 : 0) == 1").message("name exactly one source of identity: serviceAccount, jwt or header"))]
pub struct IdentitySpec {
    /// Projected ServiceAccount tokens (`Authorization: Bearer`), verified in the sidecar
    /// against the cluster's keys, which the controller renders beside the policy; the caller is
    /// `system:serviceaccount:NAMESPACE:NAME`. Mount a token with one of `audiences`, or mint one
    /// with `kubectl create token SA --audience AUDIENCE`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "service_account"
    )]
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
#[serde(deny_unknown_fields, expecting = "a mapping with audiences")]
#[schemars(transform = open_object)]
pub struct ServiceAccountIdentity {
    /// Audiences a token may be for (`aud`); at least one. Use one of your own, such as
    /// `mcp-warden`, not the API server's, so a token for this server cannot be replayed at it.
    #[schemars(length(min = 1, max = bounds::AUDIENCES), inner(length(min = 1, max = bounds::SUBJECT)))]
    pub audiences: Vec<String>,
}

/// JWTs from an external OIDC issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a mapping with issuer, audiences and jwksFrom"
)]
#[schemars(transform = open_object)]
pub struct JwtIdentity {
    /// The issuer (`iss`), an https:// URL.
    #[schemars(length(min = 9, max = bounds::URL), pattern(r"^https://[^\s]+$"))]
    pub issuer: String,
    /// Audiences a token may be for (`aud`); at least one.
    #[schemars(length(min = 1, max = bounds::AUDIENCES), inner(length(min = 1, max = bounds::SUBJECT)))]
    pub audiences: Vec<String>,
    /// The https:// URL of the issuer's JSON Web Key Set, fetched by the controller.
    #[schemars(length(min = 9, max = bounds::URL), pattern(r"^https://[^\s]+$"))]
    #[serde(alias = "jwks_from")]
    pub jwks_from: String,
}

/// What the sidecar accepts in `Host` and `Origin`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
#[schemars(transform = open_object)]
pub struct TransportSpec {
    /// Extra `Host` values agents may use, `name` or `name:port` (`*` for any), such as an
    /// Ingress hostname. Once any host is known, the sidecar refuses other `Host`s with 403;
    /// loopback names always pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::HOSTS), inner(length(min = 1, max = bounds::HOST)))]
    #[serde(alias = "allowed_hosts")]
    pub allowed_hosts: Option<Vec<String>>,
    /// Extra `Origin` values browser-based clients may send, `scheme://host[:port]` (`*` for
    /// any). Any other `Origin` is refused with 403; loopback origins and allowed hosts' pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::HOSTS), inner(length(min = 1, max = bounds::HOST)))]
    #[serde(alias = "allowed_origins")]
    pub allowed_origins: Option<Vec<String>>,
}

/// Limits that apply to every allowed call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with limits")]
#[schemars(transform = open_object)]
pub struct AllTools {
    /// The limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::LIMITS))]
    pub limits: Option<Vec<Limit>>,
}

/// What a rule does for one tool (or glob).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a tool rule (a mapping)"
)]
#[schemars(transform = open_object)]
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
    #[serde(alias = "deny_if")]
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
#[serde(deny_unknown_fields, expecting = "an approval (a mapping)")]
#[schemars(transform = open_object)]
pub struct ApprovalSpec {
    /// How long an approval holds once given (default `1h`): `90s`, `15m`, `2h`, `1d`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 12), pattern(WINDOW_PATTERN))]
    pub ttl: Option<String>,
    /// Calls one approval allows (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub uses: Option<u32>,
    /// Who approves: `approver` (default), a person with RBAC on McpApprovals; `user`, the user
    /// at the MCP client, asked in their client's own UI before the call is forwarded (one call
    /// per confirmation; `ttl` is how long the question holds, default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<ApprovalBy>,
    /// With `by: user`: a page the user opens to approve instead of a form in the client
    /// (`{approvalId}` is replaced by the call's approval id); the call runs once an approval of
    /// it is granted there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub url: Option<String>,
    /// With `by: user`: what a client that cannot ask its user gets: `approver` (default), the
    /// approver flow; `deny`, a denial that says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<ApprovalFallback>,
}

/// Who approves a call.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalBy {
    Approver,
    User,
}

/// What a call needing the user's confirmation gets when the client cannot ask.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalFallback {
    Approver,
    Deny,
}

/// A rate limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a limit (a mapping with counter, window and max)"
)]
#[schemars(transform = open_object)]
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
    /// `policy` (default): one counter for all callers together. `grant` (alias `identity`):
    /// per caller, as `identity` says. `session`: per session id the server issued through the
    /// sidecar; a call with none (or with an id the server never issued) counts per caller. These
    /// three hold across all the policy's pods (one budget however many replicas). `pod`: one
    /// counter per sidecar, each replica counting alone. Until identities are verified neither
    /// `grant` nor `session` is a security limit: a caller that sends a fresh bearer token or
    /// opens a fresh session gets a fresh counter (`mcp-warden check` warns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// Who shares a counter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Policy,
    Pod,
    Grant,
    Identity,
    Session,
}

/// One argument condition of `require`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a condition (a mapping with path and op)"
)]
#[schemars(transform = open_object)]
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
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a denyIf entry (a mapping with conditions)"
)]
#[schemars(transform = open_object)]
pub struct DenyIf {
    /// All must hold for the entry to deny; empty means always.
    #[schemars(length(max = bounds::CONDITIONS))]
    pub conditions: Vec<ConditionSpec>,
    /// The text the agent sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::REASON))]
    #[serde(alias = "on_deny")]
    pub on_deny: Option<String>,
}

/// One argument condition of `denyIf`. With a `[*]` path it holds if any element matches.
/// A value that cannot be compared (a mapping where a number is expected) makes it hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a condition (a mapping with path and op)"
)]
#[schemars(transform = open_object)]
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

/// `version`: "1", written as a string or a number.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Version(pub String);

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a version such as \"1\"")]
        enum Written {
            Text(String),
            Number(u64),
        }
        Ok(Version(match Written::deserialize(d)? {
            Written::Text(s) => s,
            Written::Number(n) => n.to_string(),
        }))
    }
}

/// A tool map whose rules may be left empty (`run_cell:` in YAML): an empty rule.
fn rules<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, ToolRule>>, D::Error> {
    let m: Option<BTreeMap<String, Option<ToolRule>>> = Deserialize::deserialize(d)?;
    Ok(m.map(|m| {
        m.into_iter()
            .map(|(k, r)| (k, r.unwrap_or_default()))
            .collect()
    }))
}

/// The schema of an object whose unknown fields are refused by serde: the API server prunes
/// them, and a structural schema cannot say `additionalProperties: false` beside `properties`.
pub fn open_object(schema: &mut schemars::Schema) {
    if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
        schema.remove("additionalProperties");
    }
}

impl PolicyDoc {
    /// Reads a document (already parsed, duplicate keys refused) whose fields are all the
    /// policy's; what serde refuses is named with its path under `prefix`, every such error.
    pub fn from_value(v: &Value, prefix: &str) -> Result<PolicyDoc, PolicyErrors> {
        super::shape::from_value(v, prefix)
    }
}
