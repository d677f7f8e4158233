//! Compiling a policy document: every field read, checked and turned into the engine's form,
//! with every error reported at once with its field path.

use super::category::{Categories, Category};
use super::condition::{self, Matcher};
use super::glob::Glob;
use super::reader::{
    self, bounded_string, choice, list, Errors, Field, FieldError, FieldPath, Obj, PolicyErrors,
};
use super::window::Window;
use super::{
    bounds, normalize, source, spec, Approval, Condition, Counter, DefaultDecision, DenyAs, DenyIf,
    Flavor, Grant, Identity, IdentitySettings, LimitRef, Pin, Pinning, Policy, Requirement, Rule,
    RuleSet, Scope,
};
use serde_json::Value;
use std::collections::HashMap;
use std::num::NonZeroU32;

const F_VERSION: Field = Field::new(&["version"]);
const F_NAME: Field = Field::new(&["name"]);
const F_DEFAULT: Field = Field::new(&["default"]);
const F_IDENTITY: Field = Field::new(&["identity"]);
const F_HIDE: Field = Field::new(&["hide"]);
const F_ALL_TOOLS: Field = Field::new(&["all_tools", "allTools"]);
const F_TOOLS: Field = Field::new(&["tools"]);
const F_DENY_AS: Field = Field::new(&["deny_as", "denyAs"]);
const F_HEADER: Field = Field::new(&["header"]);
const F_SERVICE_ACCOUNT: Field = Field::new(&["service_account", "serviceAccount"]);
const F_JWT: Field = Field::new(&["jwt"]);
const F_REQUIRED: Field = Field::new(&["required"]);
const F_AUDIENCES: Field = Field::new(&["audiences"]);
const F_ISSUER: Field = Field::new(&["issuer"]);
const F_JWKS_FROM: Field = Field::new(&["jwks_from", "jwksFrom"]);
const F_GRANTS: Field = Field::new(&["grants"]);
const F_SUBJECTS: Field = Field::new(&["subjects"]);
const F_APPROVAL: Field = Field::new(&["approval"]);
const F_TTL: Field = Field::new(&["ttl"]);
const F_USES: Field = Field::new(&["uses"]);
const F_LIMITS: Field = Field::new(&["limits"]);
const F_ACTION: Field = Field::new(&["action"]);
const F_REASON: Field = Field::new(&["reason"]);
const F_REQUIRE: Field = Field::new(&["require"]);
const F_DENY_IF: Field = Field::new(&["deny_if", "denyIf"]);
const F_CONDITIONS: Field = Field::new(&["conditions"]);
const F_ON_DENY: Field = Field::new(&["on_deny", "onDeny"]);
const F_PATH: Field = Field::new(&["path"]);
const F_OP: Field = Field::new(&["op"]);
const F_VALUE: Field = Field::new(&["value"]);
const F_COUNTER: Field = Field::new(&["counter"]);
const F_WINDOW: Field = Field::new(&["window"]);
const F_MAX: Field = Field::new(&["max"]);
const F_SCOPE: Field = Field::new(&["scope"]);
const F_CATEGORIES: Field = Field::new(&["categories"]);
const F_PINS: Field = Field::new(&["pins"]);
const F_PINNING: Field = Field::new(&["pinning"]);
const F_DESTRUCTIVE: Field = Field::new(&["destructive"]);
const F_READ_ONLY: Field = Field::new(&["read_only", "readOnly"]);
const F_OPEN_WORLD: Field = Field::new(&["open_world", "openWorld"]);
const F_IDEMPOTENT: Field = Field::new(&["idempotent"]);
const F_TRANSPORT: Field = Field::new(&["transport"]);
const F_ALLOWED_HOSTS: Field = Field::new(&["allowed_hosts", "allowedHosts"]);
const F_ALLOWED_ORIGINS: Field = Field::new(&["allowed_origins", "allowedOrigins"]);

/// Top-level fields of a policy file; an McpPolicy spec has all but `name`, plus
/// [`spec::SPEC_ONLY_FIELDS`].
const POLICY_FIELDS: &[Field] = &[
    F_VERSION,
    F_DEFAULT,
    F_IDENTITY,
    F_HIDE,
    F_ALL_TOOLS,
    F_TOOLS,
    F_DENY_AS,
    F_TRANSPORT,
    F_GRANTS,
    F_CATEGORIES,
    F_PINS,
    F_PINNING,
    F_NAME,
];
const CATEGORY_FIELDS: &[Field] = &[F_DESTRUCTIVE, F_READ_ONLY, F_OPEN_WORLD, F_IDEMPOTENT];
const SPEC_FIELDS: &[Field] = POLICY_FIELDS.split_at(POLICY_FIELDS.len() - 1).0;
const IDENTITY_FIELDS: &[Field] = &[F_HEADER, F_SERVICE_ACCOUNT, F_JWT, F_REQUIRED];
const SERVICE_ACCOUNT_FIELDS: &[Field] = &[F_AUDIENCES];
const JWT_FIELDS: &[Field] = &[F_ISSUER, F_AUDIENCES, F_JWKS_FROM];
const GRANT_FIELDS: &[Field] = &[F_SUBJECTS, F_DEFAULT, F_ALL_TOOLS, F_TOOLS];
const TRANSPORT_FIELDS: &[Field] = &[F_ALLOWED_HOSTS, F_ALLOWED_ORIGINS];
const ALL_TOOLS_FIELDS: &[Field] = &[F_LIMITS];
const RULE_FIELDS: &[Field] = &[
    F_ACTION, F_REASON, F_LIMITS, F_REQUIRE, F_DENY_IF, F_APPROVAL,
];
const APPROVAL_FIELDS: &[Field] = &[F_TTL, F_USES];
const REQUIRE_FIELDS: &[Field] = &[F_PATH, F_OP, F_VALUE, F_REASON];
const DENY_IF_FIELDS: &[Field] = &[F_CONDITIONS, F_ON_DENY];
const CONDITION_FIELDS: &[Field] = &[F_PATH, F_OP, F_VALUE];
const LIMIT_FIELDS: &[Field] = &[F_COUNTER, F_WINDOW, F_MAX, F_SCOPE];

/// Reason shown when a `deny_if` entry has no `on_deny`.
pub const DEFAULT_ON_DENY: &str = "Denied by policy";

/// Compiles a policy document (already parsed from JSON or YAML). `prefix` is prepended to every
/// error path (`spec` for McpPolicies).
pub fn compile(doc: &Value, flavor: Flavor, prefix: &str) -> Result<Policy, PolicyErrors> {
    let mut errs = Errors::default();
    let root = FieldPath::root(prefix);
    let (fields, extra) = match flavor {
        Flavor::File => (POLICY_FIELDS, &[][..]),
        Flavor::Spec => (SPEC_FIELDS, spec::SPEC_ONLY_FIELDS),
    };
    let Some(top) = Obj::with_extra(doc, root.clone(), fields, extra, &mut errs) else {
        return Err(errs.into_result(()).unwrap_err());
    };
    let mut c = Compiler {
        errs,
        counters: Vec::new(),
        counter_paths: Vec::new(),
    };

    if let Some((v, p)) = top.get(F_VERSION, &mut c.errs) {
        if !(v == "1" || v == 1) {
            c.errs
                .push(&p, format!("unsupported version {v} (expected \"1\")"));
        }
    }
    let name = top
        .get(F_NAME, &mut c.errs)
        .and_then(|(v, p)| bounded_string(v, &p, bounds::NAME, &mut c.errs))
        .map(str::to_owned);
    let default = c.default(&top).unwrap_or(DefaultDecision::Deny);
    let deny_as = match top.get(F_DENY_AS, &mut c.errs) {
        Some((v, p)) => match choice(v, &p, &["result", "error"], &mut c.errs) {
            Some("error") => DenyAs::Error,
            _ => DenyAs::Result,
        },
        None => DenyAs::Result,
    };
    let identity = c.identity(&top);
    let transport = c.transport(&top);
    let hide = c.hide(&top);
    let all_tools_limits = c.all_tools(&top).unwrap_or_default();
    let rules = c.tools(&top, bounds::TOOLS, &all_tools_limits);
    let categories = c.categories(&top, &all_tools_limits);
    let pins = c.pins(&top);
    let pinning = c.pinning(&top);
    let grants = c.grants(&top, &identity, &all_tools_limits);
    if flavor == Flavor::Spec {
        spec::check_placement(&top, &mut c.errs);
    }
    let default_rule = default_rule(all_tools_limits);

    let Compiler { errs, counters, .. } = c;
    let document = if errs.is_empty() {
        normalize::normalize(doc, flavor, name.as_deref())
    } else {
        Value::Null
    };
    errs.into_result(Policy {
        transport,
        name,
        default,
        identity,
        deny_as,
        hide,
        tools: RuleSet::new(rules),
        categories: Categories::new(categories),
        pins,
        pinning,
        grants,
        counters,
        default_rule,
        document,
    })
}

/// The limits of tools no rule names.
fn default_rule(all_tools: Vec<LimitRef>) -> Rule {
    Rule {
        key: String::new(),
        path: "default".into(),
        approval: None,
        deny: None,
        require: Vec::new(),
        deny_if: Vec::new(),
        counter_order: sorted_counters(&all_tools),
        limits: all_tools,
        reads: Default::default(),
    }
}

/// Parses and compiles a policy file's text (JSON or YAML, one document).
pub fn load_str(text: &str) -> Result<Policy, PolicyErrors> {
    let doc = source::parse_one(text).map_err(|e| {
        PolicyErrors(vec![FieldError {
            path: String::new(),
            message: e.message,
        }])
    })?;
    compile(&doc, Flavor::File, "")
}

struct Compiler {
    errs: Errors,
    counters: Vec<Counter>,
    /// Where each counter was first declared, for "differs from" messages.
    counter_paths: Vec<String>,
}

impl Compiler {
    /// `default: allow | deny`, when given.
    fn default(&mut self, o: &Obj) -> Option<DefaultDecision> {
        let (v, p) = o.get(F_DEFAULT, &mut self.errs)?;
        match choice(v, &p, &["allow", "deny"], &mut self.errs)? {
            "allow" => Some(DefaultDecision::Allow),
            _ => Some(DefaultDecision::Deny),
        }
    }

    /// `all_tools.limits`, when `all_tools` is given.
    fn all_tools(&mut self, o: &Obj) -> Option<Vec<LimitRef>> {
        let (v, p) = o
            .get(F_ALL_TOOLS, &mut self.errs)
            .filter(|(v, _)| !v.is_null())?;
        Some(match Obj::new(v, p, ALL_TOOLS_FIELDS, &mut self.errs) {
            Some(a) => self.limits(&a),
            None => Vec::new(),
        })
    }

    /// The rules of `tools`, each with `all_tools` limits before its own.
    fn tools(&mut self, o: &Obj, max: usize, all_tools: &[LimitRef]) -> Vec<Rule> {
        let mut rules = Vec::new();
        let Some((v, p)) = o.get(F_TOOLS, &mut self.errs) else {
            return rules;
        };
        match v {
            Value::Object(m) if m.len() > max => self.errs.push(
                &p,
                format!("at most {max} tools are allowed, found {}", m.len()),
            ),
            Value::Object(m) => {
                for (key, rule) in m {
                    if let Some(r) = self.rule(key, rule, &p, all_tools) {
                        rules.push(r);
                    }
                }
            }
            Value::Null => {}
            other => self.errs.push(
                &p,
                format!("expected a mapping, found {}", reader::kind(other)),
            ),
        }
        rules
    }

    /// `categories`: rules by MCP tool annotations, each compiled like a tool rule.
    fn categories(&mut self, top: &Obj, all_tools: &[LimitRef]) -> Vec<(Category, Rule)> {
        let Some((v, p)) = top.get(F_CATEGORIES, &mut self.errs) else {
            return Vec::new();
        };
        let Some(o) = Obj::new(v, p, CATEGORY_FIELDS, &mut self.errs) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (c, field) in [
            (Category::Destructive, F_DESTRUCTIVE),
            (Category::ReadOnly, F_READ_ONLY),
            (Category::OpenWorld, F_OPEN_WORLD),
            (Category::Idempotent, F_IDEMPOTENT),
        ] {
            let Some((rv, rp)) = o.get(field, &mut self.errs) else {
                continue;
            };
            let key = format!("categories.{}", c.name());
            if let Some(r) = self.rule_at(&key, rv, rp, all_tools) {
                out.push((c, r));
            }
        }
        out
    }

    /// `pins`: tool name → `sha256:` and 64 lower-case hex digits of its definition.
    fn pins(&mut self, top: &Obj) -> HashMap<String, Pin> {
        let mut out = HashMap::new();
        let Some((v, p)) = top.get(F_PINS, &mut self.errs) else {
            return out;
        };
        let m = match v {
            Value::Object(m) if m.len() > bounds::TOOLS => {
                self.errs.push(
                    &p,
                    format!(
                        "at most {} pins are allowed, found {}",
                        bounds::TOOLS,
                        m.len()
                    ),
                );
                return out;
            }
            Value::Object(m) => m,
            Value::Null => return out,
            other => {
                self.errs.push(
                    &p,
                    format!("expected a mapping, found {}", reader::kind(other)),
                );
                return out;
            }
        };
        for (tool, hash) in m {
            let tp = p.key(tool);
            if tool.chars().count() > bounds::TOOL_NAME
                || !check_tool_key(tool, &tp, &mut self.errs)
            {
                continue;
            }
            if Glob::is_glob(tool) {
                self.errs
                    .push(&tp, "a pin names one tool exactly, not a glob");
                continue;
            }
            match hash.as_str() {
                Some(h) if is_pin_hash(h) => {
                    out.insert(
                        tool.clone(),
                        Pin {
                            hash: h.to_owned(),
                            rule: format!("pins.{tool}"),
                        },
                    );
                }
                _ => self.errs.push(
                    &tp,
                    format!(
                        "expected \"sha256:\" and 64 lower-case hex digits (as `mcp-warden pin \
                         --server URL` prints), found {hash}"
                    ),
                ),
            }
        }
        out
    }

    /// `pinning: explicit | firstSeen`.
    fn pinning(&mut self, top: &Obj) -> Pinning {
        match top.get(F_PINNING, &mut self.errs) {
            Some((v, p)) => match choice(v, &p, &["explicit", "firstSeen"], &mut self.errs) {
                Some("firstSeen") => Pinning::FirstSeen,
                _ => Pinning::Explicit,
            },
            None => Pinning::Explicit,
        }
    }

    /// `grants`: per-caller rules, each replacing the base rules for what it names.
    fn grants(
        &mut self,
        top: &Obj,
        identity: &IdentitySettings,
        base_all_tools: &[LimitRef],
    ) -> Vec<Grant> {
        let Some((v, p)) = top.get(F_GRANTS, &mut self.errs) else {
            return Vec::new();
        };
        let Some(items) = list(v, &p, bounds::GRANTS, &mut self.errs) else {
            return Vec::new();
        };
        if identity.source == Identity::Bearer && !items.is_empty() {
            self.errs.push(
                &p,
                "grants need an identity that names the caller: identity.serviceAccount, \
                 identity.jwt or identity.header (a bearer token's hash names no one)",
            );
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let gp = p.index(i);
            let Some(o) = Obj::new(item, gp.clone(), GRANT_FIELDS, &mut self.errs) else {
                continue;
            };
            let subjects = self.subjects(&o);
            let default = self.default(&o);
            let own_all_tools = self.all_tools(&o);
            let effective = own_all_tools.as_deref().unwrap_or(base_all_tools);
            let tools = self.tools(&o, bounds::GRANT_TOOLS, effective);
            let all_tools = own_all_tools.map(|limits| {
                (
                    RuleSet::new(self.base_rules_with(top, &limits)),
                    default_rule(limits),
                )
            });
            out.push(Grant {
                path: gp.as_str().to_owned(),
                subjects,
                default,
                tools: RuleSet::new(tools),
                all_tools,
            });
        }
        out
    }

    fn subjects(&mut self, o: &Obj) -> Vec<Glob> {
        self.names(o, F_SUBJECTS, bounds::SUBJECTS, "subject")
            .iter()
            .map(|s| Glob::new(s))
            .collect()
    }

    /// A required, non-empty list of bounded names without control characters (subjects,
    /// audiences); `what` names one in the errors.
    fn names(&mut self, o: &Obj, field: Field, max: usize, what: &str) -> Vec<String> {
        let Some((v, p)) = o.require(field, &mut self.errs) else {
            return Vec::new();
        };
        let Some(items) = list(v, &p, max, &mut self.errs) else {
            return Vec::new();
        };
        if items.is_empty() {
            self.errs.push(&p, format!("name at least one {what}"));
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = p.index(i);
            match bounded_string(item, &ip, bounds::SUBJECT, &mut self.errs) {
                Some("") => self.errs.push(&ip, format!("a {what} cannot be empty")),
                Some(s) if s.chars().any(char::is_control) => self
                    .errs
                    .push(&ip, format!("a {what} cannot hold control characters")),
                Some(s) => out.push(s.to_owned()),
                None => {}
            }
        }
        out
    }

    /// The base rules compiled again with other `all_tools` limits. Their errors were reported
    /// the first time, so this reading's are dropped.
    fn base_rules_with(&mut self, top: &Obj, limits: &[LimitRef]) -> Vec<Rule> {
        let reported = std::mem::take(&mut self.errs);
        let rules = self.tools(top, bounds::TOOLS, limits);
        self.errs = reported;
        rules
    }

    fn identity(&mut self, top: &Obj) -> IdentitySettings {
        let mut out = IdentitySettings {
            source: Identity::Bearer,
            required: false,
        };
        let Some((v, p)) = top.get(F_IDENTITY, &mut self.errs) else {
            return out;
        };
        let Some(o) = Obj::new(v, p.clone(), IDENTITY_FIELDS, &mut self.errs) else {
            return out;
        };
        let mut sources = Vec::new();
        if let Some((hv, hp)) = o.get(F_HEADER, &mut self.errs) {
            sources.push(hp.as_str().to_owned());
            match bounded_string(hv, &hp, bounds::HEADER, &mut self.errs) {
                Some(h) if is_header_name(h) => {
                    out.source = Identity::Header(h.to_ascii_lowercase())
                }
                Some(h) => self
                    .errs
                    .push(&hp, format!("{h:?} is not a valid HTTP header name")),
                None => {}
            }
        }
        if let Some((sv, sp)) = o.get(F_SERVICE_ACCOUNT, &mut self.errs) {
            sources.push(sp.as_str().to_owned());
            if let Some(so) = Obj::new(sv, sp, SERVICE_ACCOUNT_FIELDS, &mut self.errs) {
                let audiences = self.audiences(&so);
                out.source = Identity::ServiceAccount { audiences };
            }
        }
        if let Some((jv, jp)) = o.get(F_JWT, &mut self.errs) {
            sources.push(jp.as_str().to_owned());
            if let Some(jo) = Obj::new(jv, jp, JWT_FIELDS, &mut self.errs) {
                let issuer = self.url(&jo, F_ISSUER);
                let audiences = self.audiences(&jo);
                let jwks_from = self.url(&jo, F_JWKS_FROM);
                out.source = Identity::Jwt {
                    issuer: issuer.unwrap_or_default(),
                    audiences,
                    jwks_from: jwks_from.unwrap_or_default(),
                };
            }
        }
        if sources.len() > 1 {
            self.errs.push(
                &p,
                format!(
                    "one source of identity, not {} ({})",
                    sources.len(),
                    sources.join(", ")
                ),
            );
        }
        if let Some((rv, rp)) = o.get(F_REQUIRED, &mut self.errs) {
            match rv {
                Value::Bool(b) => out.required = *b,
                other => self.errs.push(
                    &rp,
                    format!("expected true or false, found {}", reader::kind(other)),
                ),
            }
            if out.required && sources.is_empty() {
                self.errs.push(
                    &rp,
                    "required needs identity.serviceAccount, identity.jwt or identity.header",
                );
            }
        }
        if sources.is_empty() && !o.is_empty() && !out.required {
            self.errs.push(
                &p,
                "name a source of identity: serviceAccount, jwt or header",
            );
        }
        out
    }

    fn audiences(&mut self, o: &Obj) -> Vec<String> {
        self.names(o, F_AUDIENCES, bounds::AUDIENCES, "audience")
    }

    /// A required `https://` URL field (an issuer, a key set's address).
    fn url(&mut self, o: &Obj, field: Field) -> Option<String> {
        let (v, p) = o.require(field, &mut self.errs)?;
        let s = bounded_string(v, &p, bounds::URL, &mut self.errs)?;
        let rest = s.strip_prefix("https://");
        if rest
            .is_none_or(|r| r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            self.errs.push(&p, format!("{s:?} is not an https:// URL"));
            return None;
        }
        Some(s.to_owned())
    }

    fn transport(&mut self, top: &Obj) -> super::Transport {
        let mut t = super::Transport::default();
        let Some((v, p)) = top.get(F_TRANSPORT, &mut self.errs) else {
            return t;
        };
        let Some(o) = Obj::new(v, p, TRANSPORT_FIELDS, &mut self.errs) else {
            return t;
        };
        for (field, out) in [
            (F_ALLOWED_HOSTS, &mut t.allowed_hosts),
            (F_ALLOWED_ORIGINS, &mut t.allowed_origins),
        ] {
            let Some((v, p)) = o.get(field, &mut self.errs) else {
                continue;
            };
            let Some(items) = list(v, &p, bounds::HOSTS, &mut self.errs) else {
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                let ip = p.index(i);
                if let Some(s) = bounded_string(item, &ip, bounds::HOST, &mut self.errs) {
                    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        self.errs
                            .push(&ip, format!("{s:?} is not a host or origin"));
                    } else {
                        out.push(s.to_owned());
                    }
                }
            }
        }
        t
    }

    fn hide(&mut self, top: &Obj) -> Vec<(Glob, String)> {
        let Some((v, p)) = top.get(F_HIDE, &mut self.errs) else {
            return Vec::new();
        };
        let Some(items) = list(v, &p, bounds::HIDE, &mut self.errs) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = p.index(i);
            if let Some(s) = bounded_string(item, &ip, bounds::TOOL_NAME, &mut self.errs) {
                if check_tool_key(s, &ip, &mut self.errs) {
                    out.push((Glob::new(s), format!("hide[{i}]")));
                }
            }
        }
        out
    }

    fn rule(
        &mut self,
        key: &str,
        v: &Value,
        tools: &FieldPath,
        all_tools: &[LimitRef],
    ) -> Option<Rule> {
        let p = tools.key(key);
        let key_ok = if key.chars().count() > bounds::TOOL_NAME {
            self.errs.push(
                &p,
                format!("a tool name is at most {} characters", bounds::TOOL_NAME),
            );
            false
        } else {
            check_tool_key(key, &p, &mut self.errs)
        };
        let r = self.rule_at(key, v, p, all_tools)?;
        key_ok.then_some(r)
    }

    /// A rule's fields, at `p`, under the name `key`.
    fn rule_at(
        &mut self,
        key: &str,
        v: &Value,
        p: FieldPath,
        all_tools: &[LimitRef],
    ) -> Option<Rule> {
        let o = Obj::new(v, p.clone(), RULE_FIELDS, &mut self.errs)?;
        let action = o.get(F_ACTION, &mut self.errs).and_then(|(v, ap)| {
            choice(
                v,
                &ap,
                &["allow", "deny", "require_approval"],
                &mut self.errs,
            )
        });
        let reason = o
            .get(F_REASON, &mut self.errs)
            .and_then(|(v, rp)| bounded_string(v, &rp, bounds::REASON, &mut self.errs));
        let deny = match (action, reason) {
            (Some("deny"), r) => Some(r.unwrap_or(DEFAULT_ON_DENY).to_owned()),
            (_, Some(_)) => {
                self.errs
                    .push(&p.key("reason"), "reason is only used with action: deny");
                None
            }
            _ => None,
        };
        let mut limits: Vec<LimitRef> = all_tools.to_vec();
        for l in self.limits(&o) {
            if !limits.iter().any(|x| x.counter == l.counter) {
                limits.push(l);
            }
        }
        let require = self.require(&o);
        let deny_if = self.deny_if(&o);
        let approval = self.approval(&o, action);
        let reads = super::prune::Need::of(
            require.iter().map(|r| r.condition.steps.as_slice()).chain(
                deny_if
                    .iter()
                    .flat_map(|d| d.conditions.iter().map(|c| c.steps.as_slice())),
            ),
        );
        Some(Rule {
            key: key.to_owned(),
            path: p.as_str().to_owned(),
            approval,
            deny,
            require,
            deny_if,
            counter_order: sorted_counters(&limits),
            limits,
            reads,
        })
    }

    /// `approval: {ttl, uses}`, or `action: require_approval` (one use within an hour).
    fn approval(&mut self, o: &Obj, action: Option<&str>) -> Option<Approval> {
        let given = o.get(F_APPROVAL, &mut self.errs);
        let Some((v, p)) = given else {
            return (action == Some("require_approval")).then_some(Approval::default());
        };
        if action == Some("deny") {
            self.errs
                .push(&p, "a denied tool cannot also require approval");
            return None;
        }
        let a = Obj::new(v, p, APPROVAL_FIELDS, &mut self.errs)?;
        let mut out = Approval::default();
        let mut valid = true;
        if let Some((tv, tp)) = a.get(F_TTL, &mut self.errs) {
            match reader::string(tv, &tp, &mut self.errs).map(Window::parse) {
                Some(Ok(w)) => out.ttl = w.length,
                Some(Err(e)) => {
                    self.errs.push(&tp, e.to_string().replace("window", "ttl"));
                    valid = false;
                }
                None => valid = false,
            }
        }
        if let Some((uv, up)) = a.get(F_USES, &mut self.errs) {
            match uv.as_u64() {
                Some(n) if (1..=bounds::APPROVAL_USES as u64).contains(&n) => out.uses = n as u32,
                _ => {
                    self.errs.push(
                        &up,
                        format!(
                            "uses must be a whole number from 1 to {}, found {uv}",
                            bounds::APPROVAL_USES
                        ),
                    );
                    valid = false;
                }
            }
        }
        valid.then_some(out)
    }

    fn limits(&mut self, o: &Obj) -> Vec<LimitRef> {
        let Some((v, p)) = o.get(F_LIMITS, &mut self.errs) else {
            return Vec::new();
        };
        let Some(items) = list(v, &p, bounds::LIMITS, &mut self.errs) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(l) = self.limit(item, p.index(i)) {
                if !out.iter().any(|x: &LimitRef| x.counter == l.counter) {
                    out.push(l);
                }
            }
        }
        out
    }

    fn limit(&mut self, v: &Value, p: FieldPath) -> Option<LimitRef> {
        let o = Obj::new(v, p.clone(), LIMIT_FIELDS, &mut self.errs)?;
        let name = o.require(F_COUNTER, &mut self.errs).and_then(|(v, cp)| {
            let s = bounded_string(v, &cp, bounds::COUNTER, &mut self.errs)?;
            if is_counter_name(s) {
                Some(s.to_owned())
            } else {
                self.errs.push(
                    &cp,
                    format!("counter name {s:?} must be letters, digits, '_', '-' or '.'"),
                );
                None
            }
        });
        let window = o.require(F_WINDOW, &mut self.errs).and_then(|(v, wp)| {
            let s = reader::string(v, &wp, &mut self.errs)?;
            Window::parse(s)
                .map_err(|e| self.errs.push(&wp, e.to_string()))
                .ok()
        });
        let max = o.require(F_MAX, &mut self.errs).and_then(|(v, mp)| {
            match v.as_u64().map(u32::try_from) {
                Some(Ok(n)) if n >= 1 => NonZeroU32::new(n),
                _ => {
                    self.errs.push(
                        &mp,
                        format!(
                            "max must be a whole number from 1 to {}, found {v}",
                            u32::MAX
                        ),
                    );
                    None
                }
            }
        });
        let scope = match o.get(F_SCOPE, &mut self.errs) {
            Some((v, sp)) => match choice(
                v,
                &sp,
                &["pod", "grant", "identity", "session"],
                &mut self.errs,
            )? {
                "pod" => Scope::Pod,
                "session" => Scope::Session,
                _ => Scope::Grant,
            },
            None => Scope::Pod,
        };
        let counter = Counter {
            name: name?,
            window: window?,
            scope,
            max: max?,
        };
        let rule = p.as_str().to_owned();
        if let Some(i) = self.counters.iter().position(|c| c.name == counter.name) {
            let first = &self.counters[i];
            let same = first.window.length == counter.window.length
                && first.scope == counter.scope
                && first.max == counter.max;
            if !same {
                self.errs.push(
                    &p,
                    format!(
                        "counter {:?} is declared at {} with window {}, scope {}, max {}; \
                         here with window {}, scope {}, max {} (one counter, one definition)",
                        counter.name,
                        self.counter_paths[i],
                        first.window.text,
                        first.scope.as_str(),
                        first.max,
                        counter.window.text,
                        counter.scope.as_str(),
                        counter.max
                    ),
                );
                return None;
            }
            return Some(LimitRef { counter: i, rule });
        }
        self.counters.push(counter);
        self.counter_paths.push(rule.clone());
        Some(LimitRef {
            counter: self.counters.len() - 1,
            rule,
        })
    }

    fn condition(&mut self, o: &Obj) -> Option<Condition> {
        let path = o.require(F_PATH, &mut self.errs).and_then(|(v, pp)| {
            let s = bounded_string(v, &pp, bounds::PATH, &mut self.errs)?;
            match condition::parse_path(s) {
                Ok(steps) => Some((s.to_owned(), steps)),
                Err(e) => {
                    self.errs.push(&pp, e);
                    None
                }
            }
        });
        let op = o
            .require(F_OP, &mut self.errs)
            .and_then(|(v, op)| reader::string(v, &op, &mut self.errs).map(|s| (s, op)));
        let value = o.get(F_VALUE, &mut self.errs);
        if let Some((Value::Array(items), vp)) = &value {
            if items.len() > bounds::IN_VALUES {
                self.errs.push(
                    vp,
                    format!("at most {} values are allowed", bounds::IN_VALUES),
                );
                return None;
            }
        }
        let (op, op_path) = op?;
        let matcher = match Matcher::compile(op, value.as_ref().map(|(v, _)| *v)) {
            Ok(m) => m,
            Err(e) => {
                // Blame `value` when the operator is known and its operand is wrong.
                let at = match (&value, condition::OPS.contains(&op)) {
                    (Some((_, vp)), true) => vp.clone(),
                    _ => op_path,
                };
                self.errs.push(&at, e);
                return None;
            }
        };
        let (path, steps) = path?;
        Some(Condition {
            path,
            steps,
            matcher,
        })
    }

    fn require(&mut self, o: &Obj) -> Vec<Requirement> {
        let Some((v, p)) = o.get(F_REQUIRE, &mut self.errs) else {
            return Vec::new();
        };
        let Some(items) = list(v, &p, bounds::REQUIRE, &mut self.errs) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = p.index(i);
            let Some(co) = Obj::new(item, ip.clone(), REQUIRE_FIELDS, &mut self.errs) else {
                continue;
            };
            let custom = co
                .get(F_REASON, &mut self.errs)
                .and_then(|(v, rp)| bounded_string(v, &rp, bounds::REASON, &mut self.errs))
                .map(str::to_owned);
            if let Some(condition) = self.condition(&co) {
                let reason = custom.unwrap_or_else(|| {
                    format!(
                        "argument validation failed: {}",
                        condition.matcher.describe(&condition.path)
                    )
                });
                out.push(Requirement {
                    rule: ip.as_str().to_owned(),
                    condition,
                    reason,
                });
            }
        }
        out
    }

    fn deny_if(&mut self, o: &Obj) -> Vec<DenyIf> {
        let Some((v, p)) = o.get(F_DENY_IF, &mut self.errs) else {
            return Vec::new();
        };
        let Some(items) = list(v, &p, bounds::DENY_IF, &mut self.errs) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = p.index(i);
            let Some(eo) = Obj::new(item, ip.clone(), DENY_IF_FIELDS, &mut self.errs) else {
                continue;
            };
            let on_deny = eo
                .get(F_ON_DENY, &mut self.errs)
                .and_then(|(v, dp)| bounded_string(v, &dp, bounds::REASON, &mut self.errs))
                .unwrap_or(DEFAULT_ON_DENY)
                .to_owned();
            let conds = match eo.require(F_CONDITIONS, &mut self.errs) {
                Some((cv, cp)) => {
                    list(cv, &cp, bounds::CONDITIONS, &mut self.errs).map(|l| (l, cp))
                }
                None => None,
            };
            let Some((conds, cp)) = conds else { continue };
            let mut conditions = Vec::new();
            let mut ok = true;
            for (j, cond) in conds.iter().enumerate() {
                let Some(co) = Obj::new(cond, cp.index(j), CONDITION_FIELDS, &mut self.errs) else {
                    ok = false;
                    continue;
                };
                match self.condition(&co) {
                    Some(c) => conditions.push(c),
                    None => ok = false,
                }
            }
            if ok {
                out.push(DenyIf {
                    rule: ip.as_str().to_owned(),
                    conditions,
                    on_deny,
                });
            }
        }
        out
    }
}

fn sorted_counters(limits: &[LimitRef]) -> Vec<usize> {
    let mut v: Vec<usize> = limits.iter().map(|l| l.counter).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A tool key is a name or a glob: printable, no whitespace, not empty.
fn check_tool_key(key: &str, p: &FieldPath, errs: &mut Errors) -> bool {
    if key.is_empty() || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        errs.push(
            p,
            "a tool name must be non-empty with no spaces or control characters",
        );
        return false;
    }
    true
}

/// `sha256:` and 64 lower-case hex digits.
fn is_pin_hash(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_counter_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
