//! The policy a platform team writes, and its compiled, validated form.
//!
//! One document type, [`doc::PolicyDoc`], serves the policy file and the McpPolicy `spec`:
//! camelCase fields (`denyIf`, `onDeny`, `allTools`) that also accept PolicyLayer's snake_case
//! (`deny_if`, `on_deny`, `all_tools`). [`compile`] is the single validation every part of
//! mcp-warden calls — sidecar, controller, webhook and `check` — so they always agree on what
//! is valid; it reports every error it finds at once, each with its field path.

pub mod argpath;
pub mod category;
pub mod compare;
mod compile;
pub mod condition;
pub mod doc;
pub mod glob;
pub mod prune;
pub mod reader;
mod rules;
pub mod shape;
pub mod source;
pub mod window;

pub use category::{Category, Hints};
pub use compile::{compile, compile_file, document, load_str, with_found, DEFAULT_ON_DENY};
use condition::{Matcher, Step, Truth};
use glob::Glob;
pub use reader::{FieldError, PolicyErrors};
use serde_json::Value;
use std::collections::HashMap;
use std::num::NonZeroU32;
use window::Window;

/// A tool definition's pin: `sha256:` and 64 lower-case hex digits (`pins`, the record of
/// first-seen definitions, what sidecars report).
pub fn is_pin_hash(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// SHA-256 as lower-case hex: the policy hash (`policyHash`, `policy_info{hash}`), and how
/// tokens and arguments appear in audit lines.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// Bounds on a policy's size. The CRD schema uses the same numbers, so the API server and the
/// compiler refuse the same documents.
pub mod bounds {
    pub const TOOLS: usize = 512;
    pub const HIDE: usize = 128;
    pub const LIMITS: usize = 8;
    pub const DENY_IF: usize = 32;
    pub const CONDITIONS: usize = 16;
    pub const REQUIRE: usize = 32;
    pub const IN_VALUES: usize = 256;
    pub const TOOL_NAME: usize = 128;
    pub const NAME: usize = 253;
    pub const REASON: usize = 1024;
    pub const PATH: usize = 256;
    pub const COUNTER: usize = 63;
    pub const HEADER: usize = 128;
    pub const HOSTS: usize = 128;
    pub const HOST: usize = 270;
    pub const GRANTS: usize = 16;
    pub const GRANT_TOOLS: usize = 64;
    pub const SUBJECTS: usize = 32;
    /// A subject or an audience.
    pub const SUBJECT: usize = 256;
    pub const AUDIENCES: usize = 8;
    pub const URL: usize = 1024;
    pub const APPROVAL_USES: usize = 1000;
    /// Tools in a policy's record of first-seen definitions (as many as a sidecar lists).
    pub const FIRST_SEEN: usize = 1024;
}

/// `approval`: a call runs only with a person's approval of exactly it (policy, tool, arguments,
/// caller), which allows `uses` calls within `ttl` of being granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub ttl: std::time::Duration,
    pub uses: u32,
    pub by: ApprovedBy,
}

impl Default for Approval {
    fn default() -> Approval {
        Approval {
            ttl: std::time::Duration::from_secs(3600),
            uses: 1,
            by: ApprovedBy::Approver,
        }
    }
}

/// Who approves a call: a person with RBAC on McpApprovals, or the user at the MCP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovedBy {
    Approver,
    /// The user confirms in their client (a form, or the page at `url`); a client that cannot
    /// ask gets the approver flow, or a denial when `deny_otherwise`.
    User {
        url: Option<String>,
        deny_otherwise: bool,
    },
}

impl Approval {
    /// How long a question put to the user holds when the policy gives no `ttl`.
    pub const USER_TTL: std::time::Duration = std::time::Duration::from_secs(600);

    pub fn by_user(&self) -> bool {
        matches!(self.by, ApprovedBy::User { .. })
    }
}

/// Which `Host` and `Origin` values the sidecar accepts besides loopback ones (DNS-rebinding
/// protection); added to its `--allowed-host` and `--allowed-origin` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transport {
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
}

/// What happens to a tool no rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultDecision {
    Allow,
    Deny,
}

/// How a denied `tools/call` is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyAs {
    /// A `CallToolResult` with `isError: true`, so the client hands the reason to the model.
    Result,
    /// A JSON-RPC error (403 denied, 429 limited).
    Error,
}

/// Where the caller identity for `scope: grant` and grants comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// SHA-256 of the `Authorization` bearer token: an opaque key that names no one.
    Bearer,
    /// A header set by an authenticating gateway in front (lower-cased name).
    Header(String),
    /// A projected ServiceAccount token, verified against the cluster's keys (the issuer comes
    /// with the keys the controller renders).
    ServiceAccount { audiences: Vec<String> },
    /// A JWT from an external OIDC issuer, verified against its keys.
    Jwt {
        issuer: String,
        audiences: Vec<String>,
        /// Where the controller fetches the issuer's JSON Web Key Set.
        jwks_from: String,
    },
}

impl Identity {
    /// Whether the identity is a signed token the sidecar verifies (and so needs keys).
    pub fn verifies_tokens(&self) -> bool {
        matches!(self, Identity::ServiceAccount { .. } | Identity::Jwt { .. })
    }

    /// The audiences a verified token must be for.
    pub fn audiences(&self) -> &[String] {
        match self {
            Identity::ServiceAccount { audiences } | Identity::Jwt { audiences, .. } => audiences,
            _ => &[],
        }
    }

    /// The issuer a JWT identity names (a ServiceAccount's comes with the cluster's keys).
    pub fn issuer(&self) -> Option<&str> {
        match self {
            Identity::Jwt { issuer, .. } => Some(issuer),
            _ => None,
        }
    }
}

/// Who the caller is, as the policy reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    pub source: Identity,
    /// A gated request without a valid identity is refused with 401.
    pub required: bool,
}

/// Who shares one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One counter for all callers together, held across the policy's pods.
    Policy,
    /// One counter for the sidecar process: each replica counts alone.
    Pod,
    /// One counter per caller identity.
    Grant,
    /// One counter per `Mcp-Session-Id`, falling back to the grant key without a session.
    Session,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Policy => "policy",
            Scope::Pod => "pod",
            Scope::Grant => "grant",
            Scope::Session => "session",
        }
    }

    /// Whether its counts are held across the policy's pods (all but `pod`).
    pub fn across_pods(self) -> bool {
        self != Scope::Pod
    }
}

/// A named counter. Every limit naming it shares it, and all must agree on window, scope, max.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    pub window: Window,
    pub scope: Scope,
    pub max: NonZeroU32,
}

/// One condition of a `require` or `deny_if` entry.
#[derive(Debug, Clone)]
pub struct Condition {
    pub path: String,
    pub(crate) steps: Vec<Step>,
    pub(crate) matcher: Matcher,
}

/// How a list of values reached by a `[*]` path is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantifier {
    /// `deny_if`: the condition holds if any value matches.
    Any,
    /// `require`: the condition holds only if every value matches.
    All,
}

impl Condition {
    /// Evaluates against the call's arguments. `Unknown` results are returned as they are;
    /// the caller decides which side is unsafe. Where the path goes through a string holding
    /// JSON text, the condition is also judged on the parsed value (as a lenient server reads
    /// it), and the unsafe outcome of the two readings wins.
    fn eval(&self, args: &Value, q: Quantifier) -> Truth {
        let (strict, through_string) = if !self.steps.contains(&Step::Each) {
            // One value at most: no list to build.
            let (found, through) = condition::resolve_one(&self.steps, args);
            let t = match (found, self.matcher.is_presence()) {
                (f, true) => self.matcher.test_presence(usize::from(f.is_some())),
                (None, false) => Truth::False,
                (Some(v), false) => self.matcher.test(v),
            };
            (t, through)
        } else {
            let mut found: Vec<&Value> = Vec::new();
            let through = condition::resolve(&self.steps, args, &mut found);
            (self.judge(&found, q), through)
        };
        if !through_string {
            return strict;
        }
        let mut parsed = Vec::new();
        if condition::resolve_lenient(&self.steps, args, &mut parsed).is_err() {
            return Truth::Unknown;
        }
        let lenient = self.judge(&parsed.iter().collect::<Vec<_>>(), q);
        match q {
            // `deny_if`: either reading matching is enough.
            Quantifier::Any if strict == Truth::True || lenient == Truth::True => Truth::True,
            // `require`: both readings must match.
            Quantifier::All if strict == Truth::False || lenient == Truth::False => Truth::False,
            _ if strict == Truth::Unknown || lenient == Truth::Unknown => Truth::Unknown,
            _ => strict,
        }
    }

    /// Judges the values one reading of the path reached.
    fn judge(&self, found: &[&Value], q: Quantifier) -> Truth {
        if self.matcher.is_presence() {
            return self.matcher.test_presence(found.len());
        }
        if found.is_empty() {
            return Truth::False;
        }
        let mut unknown = false;
        for v in found {
            match (self.matcher.test(v), q) {
                (Truth::True, Quantifier::Any) => return Truth::True,
                (Truth::False, Quantifier::All) => return Truth::False,
                (Truth::Unknown, _) => unknown = true,
                _ => {}
            }
        }
        match (unknown, q) {
            (true, _) => Truth::Unknown,
            (false, Quantifier::Any) => Truth::False,
            (false, Quantifier::All) => Truth::True,
        }
    }

    /// A `deny_if` condition: holds when it matches, or when the value cannot be compared.
    pub fn holds_for_deny(&self, args: &Value) -> bool {
        self.eval(args, Quantifier::Any) != Truth::False
    }

    /// A `require` condition: satisfied only when it certainly matches.
    pub fn satisfied(&self, args: &Value) -> bool {
        self.eval(args, Quantifier::All) == Truth::True
    }
}

/// A `require` entry: a condition and the reason shown when it fails.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub rule: String,
    pub condition: Condition,
    pub reason: String,
}

/// A `deny_if` entry: denies when every condition holds (an empty list always holds).
#[derive(Debug, Clone)]
pub struct DenyIf {
    pub rule: String,
    pub conditions: Vec<Condition>,
    pub on_deny: String,
}

/// A limit a rule applies: the counter it takes, and where the policy declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRef {
    pub counter: usize,
    pub rule: String,
}

/// A compiled tool rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The key as written in `tools` (a name or a glob).
    pub key: String,
    /// Rule path for audit lines and explanations, e.g. `tools.run_cell`.
    pub path: String,
    /// `action: deny` with its reason.
    pub deny: Option<String>,
    /// `approval` / `action: require_approval`: checked after everything else but the limits.
    pub approval: Option<Approval>,
    pub require: Vec<Requirement>,
    pub deny_if: Vec<DenyIf>,
    /// `all_tools.limits` followed by the rule's own, one entry per distinct counter.
    pub limits: Vec<LimitRef>,
    /// Counter indexes of `limits`, sorted: the order counters are locked in.
    pub counter_order: Vec<usize>,
    /// What of the arguments `require` and `deny_if` read.
    pub reads: prune::Need,
}

impl Rule {
    /// Several rules acting as one (a tool in several categories): the first denial denies,
    /// every `require`, `deny_if` and limit applies, and an approval is needed if any rule asks
    /// for one (the shortest ttl, the fewest uses). `None` for no rules.
    pub fn merged(rules: &[&Rule]) -> Option<Rule> {
        let (first, rest) = rules.split_first()?;
        if rest.is_empty() {
            return Some((*first).clone());
        }
        let keys: Vec<&str> = rules
            .iter()
            .map(|r| r.key.trim_start_matches("categories."))
            .collect();
        let key = format!("categories.{}", keys.join("+"));
        let denier = rules.iter().find(|r| r.deny.is_some());
        let mut out = Rule {
            path: denier.map_or_else(|| key.clone(), |r| r.path.clone()),
            key,
            deny: denier.and_then(|r| r.deny.clone()),
            approval: None,
            require: Vec::new(),
            deny_if: Vec::new(),
            limits: Vec::new(),
            counter_order: Vec::new(),
            reads: prune::Need::default(),
        };
        for r in rules {
            out.approval = match (out.approval, r.approval.clone()) {
                // A person with RBAC is asked when the rules disagree on who approves.
                (Some(a), Some(b)) => Some(Approval {
                    ttl: a.ttl.min(b.ttl),
                    uses: a.uses.min(b.uses),
                    by: match a.by == b.by {
                        true => a.by,
                        false => ApprovedBy::Approver,
                    },
                }),
                (a, b) => a.or(b),
            };
            out.require.extend(r.require.iter().cloned());
            out.deny_if.extend(r.deny_if.iter().cloned());
            for l in &r.limits {
                if !out.limits.iter().any(|x| x.counter == l.counter) {
                    out.limits.push(l.clone());
                }
            }
        }
        out.counter_order = out.limits.iter().map(|l| l.counter).collect();
        out.counter_order.sort_unstable();
        out.reads = prune::Need::of(
            out.require
                .iter()
                .map(|r| r.condition.steps.as_slice())
                .chain(
                    out.deny_if
                        .iter()
                        .flat_map(|d| d.conditions.iter().map(|c| c.steps.as_slice())),
                ),
        );
        Some(out)
    }

    /// Denied whatever the arguments: `action: deny` or a `deny_if` with no conditions.
    pub fn always_denied(&self) -> bool {
        self.deny.is_some() || self.deny_if.iter().any(|d| d.conditions.is_empty())
    }
}

/// Tool rules by name: exact names, then globs, most specific first.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    exact: HashMap<String, usize>,
    /// Glob rules, most specific first.
    globs: Vec<(Glob, usize)>,
}

impl RuleSet {
    pub(crate) fn new(rules: Vec<Rule>) -> RuleSet {
        let mut exact = HashMap::new();
        let mut globs = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if Glob::is_glob(&r.key) {
                globs.push((Glob::new(&r.key), i));
            } else {
                exact.insert(r.key.clone(), i);
            }
        }
        // Longest glob first; among equal lengths, the lexically smaller pattern, so the order is
        // fixed whatever order the document lists them in.
        globs.sort_by(|(a, _), (b, _)| {
            b.pattern()
                .chars()
                .count()
                .cmp(&a.pattern().chars().count())
                .then(a.pattern().cmp(b.pattern()))
        });
        RuleSet {
            rules,
            exact,
            globs,
        }
    }

    /// The rule for a tool: exact name, else the most specific glob.
    pub fn find(&self, tool: &str) -> Option<&Rule> {
        if let Some(&i) = self.exact.get(tool) {
            return Some(&self.rules[i]);
        }
        self.globs
            .iter()
            .find(|(g, _)| g.matches(tool))
            .map(|(_, i)| &self.rules[*i])
    }
}

/// Rules for the callers a grant names, in place of the base policy's for what it names.
#[derive(Debug, Clone)]
pub struct Grant {
    /// `grants[0]`: audit lines, `_meta`, explanations and the `grant` metric label.
    pub path: String,
    /// Identities it applies to, exact or glob.
    pub subjects: Vec<Glob>,
    /// Replaces the base `default`.
    pub default: Option<DefaultDecision>,
    /// Replace the base rules of the tools they name.
    pub tools: RuleSet,
    /// With `all_tools`: the base rules again, with the grant's `all_tools` limits in place of
    /// the base's, and the limits of tools no rule names.
    pub all_tools: Option<(RuleSet, Rule)>,
}

impl Grant {
    /// Whether the grant names this caller.
    pub fn names(&self, caller: &str) -> bool {
        self.subjects.iter().any(|g| g.matches(caller))
    }
}

/// Which tools' definitions are pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pinning {
    /// Only the tools `pins` names (the default).
    #[default]
    Explicit,
    /// Every tool, at the definition the sidecar first saw (`pins` still wins for what it names).
    FirstSeen,
}

/// A pinned tool definition: its hash (`sha256:` and 64 hex digits) and where it is declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub hash: String,
    /// `pins.run_cell`: the rule of the denial when the definition differs.
    pub rule: String,
}

/// How the tool a call names is to be found, once exact names and globs are tried.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'p> {
    Rule(&'p Rule),
    /// No rule: the default decides.
    Default,
    /// Only the server's description of the tool can say which rule applies (categories are in
    /// use), and the sidecar has not seen it in the server's tool list.
    Unlisted,
}

impl<'p> Lookup<'p> {
    /// The rule that applies, if one does.
    pub fn rule(&self) -> Option<&'p Rule> {
        match self {
            Lookup::Rule(r) => Some(r),
            _ => None,
        }
    }

    /// The parts of the call's arguments the rule's conditions read, when they read any (a rule
    /// that denies outright reads none).
    pub fn reads(&self) -> Option<&'p prune::Need> {
        self.rule()
            .filter(|r| {
                r.deny.is_none()
                    && (!r.require.is_empty() || r.deny_if.iter().any(|d| !d.conditions.is_empty()))
            })
            .map(|r| &r.reads)
    }

    /// The approval the rule asks for, if it asks for one.
    pub fn approval(&self) -> Option<Approval> {
        self.rule().and_then(|r| r.approval.clone())
    }
}

/// A validated policy, ready for the engine.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Hosts and origins accepted on the wire.
    pub transport: Transport,
    /// `namespace/name` for McpPolicies, the file name for files; labels every metric.
    pub name: Option<String>,
    pub default: DefaultDecision,
    pub identity: IdentitySettings,
    pub deny_as: DenyAs,
    /// Hidden globs, with their rule paths (`hide[0]`).
    pub hide: Vec<(Glob, String)>,
    pub tools: RuleSet,
    /// Rules by MCP tool annotations, for tools no name or glob matches.
    pub categories: category::Categories,
    /// Pinned tool definitions, by tool name.
    pub pins: HashMap<String, Pin>,
    pub pinning: Pinning,
    /// First match wins.
    pub grants: Vec<Grant>,
    pub counters: Vec<Counter>,
    /// Limits of tools no rule names (under `default: allow`).
    pub default_rule: Rule,
    /// The document in canonical snake_case, as the controller renders it.
    pub document: Value,
}

/// Where a policy was written, which spells its error paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// A policy file (the sidecar's `--policy`, `check`, the rendered ConfigMap): snake_case.
    File,
    /// An McpPolicy `spec`: camelCase.
    Spec,
}

impl Policy {
    /// The first grant that names the caller, by index.
    pub fn grant_for(&self, caller: &str) -> Option<usize> {
        self.grants.iter().position(|g| g.names(caller))
    }

    /// The rule for a tool under a grant: the grant's own, else the base rule (exact name, else
    /// the most specific glob), else `None` (the default decides).
    pub fn rule_for(&self, tool: &str, grant: Option<usize>) -> Option<&Rule> {
        let Some(g) = grant.and_then(|i| self.grants.get(i)) else {
            return self.tools.find(tool);
        };
        g.tools.find(tool).or_else(|| match &g.all_tools {
            Some((base, _)) => base.find(tool),
            None => self.tools.find(tool),
        })
    }

    /// The rule for a tool under a grant, with what the server says of the tool (`None`: the
    /// sidecar has not seen it listed): a name or glob first, then its categories, then the
    /// default.
    pub fn lookup(
        &self,
        tool: &str,
        grant: Option<usize>,
        hints: Option<category::Hints>,
    ) -> Lookup<'_> {
        if let Some(r) = self.rule_for(tool, grant) {
            return Lookup::Rule(r);
        }
        if !self.categories.in_use() {
            return Lookup::Default;
        }
        match hints {
            None => Lookup::Unlisted,
            Some(h) => self
                .categories
                .rule(h)
                .map_or(Lookup::Default, Lookup::Rule),
        }
    }

    /// Whether the policy reads what the server says of its tools (categories or pins).
    pub fn uses_tool_knowledge(&self) -> bool {
        self.categories.in_use() || !self.pins.is_empty() || self.pinning == Pinning::FirstSeen
    }

    /// The base rule for a tool (no grant).
    pub fn find_rule(&self, tool: &str) -> Option<&Rule> {
        self.rule_for(tool, None)
    }

    /// What happens to tools no rule names, under a grant.
    pub fn default_for(&self, grant: Option<usize>) -> DefaultDecision {
        grant
            .and_then(|i| self.grants.get(i)?.default)
            .unwrap_or(self.default)
    }

    /// The limits of tools no rule names, under a grant.
    pub fn default_rule_for(&self, grant: Option<usize>) -> &Rule {
        match grant.and_then(|i| self.grants.get(i)?.all_tools.as_ref()) {
            Some((_, default_rule)) => default_rule,
            None => &self.default_rule,
        }
    }

    /// The grant's path (`grants[0]`), for audit lines and labels.
    pub fn grant_path(&self, grant: Option<usize>) -> Option<&str> {
        grant
            .and_then(|i| self.grants.get(i))
            .map(|g| g.path.as_str())
    }

    /// Whether deciding a call to this tool reads its arguments (a `require` or a conditional
    /// `deny_if`), so callers can skip parsing them otherwise.
    pub fn reads_arguments(&self, tool: &str, grant: Option<usize>, hints: Option<Hints>) -> bool {
        self.arguments_read(tool, grant, hints).is_some()
    }

    /// The parts of this tool's arguments its rule reads, when it reads any.
    pub fn arguments_read(
        &self,
        tool: &str,
        grant: Option<usize>,
        hints: Option<Hints>,
    ) -> Option<&prune::Need> {
        self.lookup(tool, grant, hints).reads()
    }

    /// The `hide` entry that hides this tool, if any.
    pub fn hidden_by(&self, tool: &str) -> Option<&str> {
        self.hide
            .iter()
            .find(|(g, _)| g.matches(tool))
            .map(|(_, p)| p.as_str())
    }

    /// Whether `tools/list` may show the tool to a caller under this grant: some call to it
    /// could be allowed. `hints`: the tool's categories, from its listed definition.
    pub fn listable(&self, tool: &str, grant: Option<usize>, hints: Option<Hints>) -> bool {
        if self.hidden_by(tool).is_some() {
            return false;
        }
        match self.lookup(tool, grant, hints) {
            Lookup::Rule(r) => !r.always_denied(),
            Lookup::Default => self.default_for(grant) == DefaultDecision::Allow,
            Lookup::Unlisted => true,
        }
    }

    /// A bounded metric label for a tool: its exact rule name, the glob that matched, the
    /// categories' rule (`categories.destructive`), or `_other`.
    pub fn tool_label<'a>(&'a self, tool: &str, hints: Option<Hints>) -> &'a str {
        match self.lookup(tool, None, hints) {
            Lookup::Rule(r) => &r.key,
            _ => "_other",
        }
    }
}

#[cfg(test)]
mod tests;
