//! The policy a platform team writes, and its compiled, validated form.
//!
//! One reader serves both spellings: policy files use PolicyLayer's snake_case (`deny_if`,
//! `on_deny`, `all_tools`), the McpPolicy spec uses camelCase (`denyIf`, `onDeny`, `allTools`).
//! [`compile`] is the single validation every part of mcp-warden calls — sidecar, controller,
//! webhook and `check` — so they always agree on what is valid. It reports every error at once,
//! each with its field path.

pub mod condition;
pub mod glob;
pub mod reader;
pub mod source;
pub mod window;

use condition::{Matcher, Step, Truth};
use glob::Glob;
use reader::{bounded_string, choice, list, Errors, Field, FieldPath, Obj};
pub use reader::{FieldError, PolicyErrors};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::num::NonZeroU32;
use window::Window;

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
}

/// What happens to a tool no rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
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

/// Where the caller identity for `scope: grant` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// SHA-256 of the `Authorization` bearer token.
    Bearer,
    /// A header set by an authenticating gateway in front (lower-cased name).
    Header(String),
}

/// Who shares one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One counter for the sidecar process.
    Pod,
    /// One counter per caller identity.
    Grant,
    /// One counter per `Mcp-Session-Id`, falling back to the grant key without a session.
    Session,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Pod => "pod",
            Scope::Grant => "grant",
            Scope::Session => "session",
        }
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
    steps: Vec<Step>,
    matcher: Matcher,
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
    /// the caller decides which side is unsafe.
    fn eval(&self, args: &Value, q: Quantifier) -> Truth {
        if !self.steps.contains(&Step::Each) {
            // One value at most: no list to build.
            let found = condition::resolve_one(&self.steps, args);
            return match (found, self.matcher.is_presence()) {
                (f, true) => self.matcher.test_presence(usize::from(f.is_some())),
                (None, false) => Truth::False,
                (Some(v), false) => self.matcher.test(v),
            };
        }
        let mut found: Vec<&Value> = Vec::new();
        condition::resolve(&self.steps, args, &mut found);
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
    pub require: Vec<Requirement>,
    pub deny_if: Vec<DenyIf>,
    /// `all_tools.limits` followed by the rule's own, one entry per distinct counter.
    pub limits: Vec<LimitRef>,
    /// Counter indexes of `limits`, sorted: the order counters are locked in.
    pub counter_order: Vec<usize>,
}

impl Rule {
    /// Denied whatever the arguments: `action: deny` or a `deny_if` with no conditions.
    pub fn always_denied(&self) -> bool {
        self.deny.is_some() || self.deny_if.iter().any(|d| d.conditions.is_empty())
    }
}

/// A validated policy, ready for the engine.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `namespace/name` for McpPolicies, the file name for files; labels every metric.
    pub name: Option<String>,
    pub default: Default,
    pub identity: Identity,
    pub deny_as: DenyAs,
    /// Hidden globs, with their rule paths (`hide[0]`).
    pub hide: Vec<(Glob, String)>,
    pub rules: Vec<Rule>,
    exact: HashMap<String, usize>,
    /// Glob rules, most specific first.
    globs: Vec<(Glob, usize)>,
    pub counters: Vec<Counter>,
    /// Limits of tools no rule names (under `default: allow`).
    pub default_rule: Rule,
    /// The document in canonical snake_case, as the controller renders it.
    pub document: Value,
}

/// Which document shape is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// A policy file: the sidecar's `--policy`, `check`, the rendered ConfigMap.
    File,
    /// An McpPolicy `spec`: the policy plus `podSelector`, `upstream`, `isolation`.
    Spec,
}

const F_VERSION: Field = Field::new(&["version"]);
const F_NAME: Field = Field::new(&["name"]);
const F_DEFAULT: Field = Field::new(&["default"]);
const F_IDENTITY: Field = Field::new(&["identity"]);
const F_HIDE: Field = Field::new(&["hide"]);
const F_ALL_TOOLS: Field = Field::new(&["all_tools", "allTools"]);
const F_TOOLS: Field = Field::new(&["tools"]);
const F_DENY_AS: Field = Field::new(&["deny_as", "denyAs"]);
const F_POD_SELECTOR: Field = Field::new(&["podSelector"]);
const F_UPSTREAM: Field = Field::new(&["upstream"]);
const F_ISOLATION: Field = Field::new(&["isolation"]);
const F_HEADER: Field = Field::new(&["header"]);
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

const POLICY_FIELDS: &[Field] = &[
    F_VERSION,
    F_NAME,
    F_DEFAULT,
    F_IDENTITY,
    F_HIDE,
    F_ALL_TOOLS,
    F_TOOLS,
    F_DENY_AS,
];
const SPEC_FIELDS: &[Field] = &[
    F_VERSION,
    F_DEFAULT,
    F_IDENTITY,
    F_HIDE,
    F_ALL_TOOLS,
    F_TOOLS,
    F_DENY_AS,
    F_POD_SELECTOR,
    F_UPSTREAM,
    F_ISOLATION,
];
const IDENTITY_FIELDS: &[Field] = &[F_HEADER];
const ALL_TOOLS_FIELDS: &[Field] = &[F_LIMITS];
const RULE_FIELDS: &[Field] = &[F_ACTION, F_REASON, F_LIMITS, F_REQUIRE, F_DENY_IF];
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
    let fields = match flavor {
        Flavor::File => POLICY_FIELDS,
        Flavor::Spec => SPEC_FIELDS,
    };
    let Some(top) = Obj::new(doc, root.clone(), fields, &mut errs) else {
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
    let default = match top.get(F_DEFAULT, &mut c.errs) {
        Some((v, p)) => match choice(v, &p, &["allow", "deny"], &mut c.errs) {
            Some("allow") => Default::Allow,
            _ => Default::Deny,
        },
        None => Default::Deny,
    };
    let deny_as = match top.get(F_DENY_AS, &mut c.errs) {
        Some((v, p)) => match choice(v, &p, &["result", "error"], &mut c.errs) {
            Some("error") => DenyAs::Error,
            _ => DenyAs::Result,
        },
        None => DenyAs::Result,
    };
    let identity = c.identity(&top);
    let hide = c.hide(&top);

    let all_tools_limits = match top.get(F_ALL_TOOLS, &mut c.errs) {
        Some((v, p)) => match Obj::new(v, p, ALL_TOOLS_FIELDS, &mut c.errs) {
            Some(o) => c.limits(&o),
            None => Vec::new(),
        },
        None => Vec::new(),
    };

    let mut rules = Vec::new();
    if let Some((v, p)) = top.get(F_TOOLS, &mut c.errs) {
        match v {
            Value::Object(m) if m.len() > bounds::TOOLS => c.errs.push(
                &p,
                format!(
                    "at most {} tools are allowed, found {}",
                    bounds::TOOLS,
                    m.len()
                ),
            ),
            Value::Object(m) => {
                for (key, rule) in m {
                    if let Some(r) = c.rule(key, rule, &p, &all_tools_limits) {
                        rules.push(r);
                    }
                }
            }
            Value::Null => {}
            other => c.errs.push(
                &p,
                format!("expected a mapping, found {}", reader::kind(other)),
            ),
        }
    }
    if flavor == Flavor::Spec {
        c.spec_placement(&top);
    }
    let default_rule = Rule {
        key: String::new(),
        path: "default".into(),
        deny: None,
        require: Vec::new(),
        deny_if: Vec::new(),
        counter_order: sorted_counters(&all_tools_limits),
        limits: all_tools_limits,
    };

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

    let Compiler { errs, counters, .. } = c;
    let document = if errs.is_empty() {
        normalize(doc, flavor, name.as_deref())
    } else {
        Value::Null
    };
    errs.into_result(Policy {
        name,
        default,
        identity,
        deny_as,
        hide,
        rules,
        exact,
        globs,
        counters,
        default_rule,
        document,
    })
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
    fn identity(&mut self, top: &Obj) -> Identity {
        let Some((v, p)) = top.get(F_IDENTITY, &mut self.errs) else {
            return Identity::Bearer;
        };
        let Some(o) = Obj::new(v, p, IDENTITY_FIELDS, &mut self.errs) else {
            return Identity::Bearer;
        };
        let Some((hv, hp)) = o.require(F_HEADER, &mut self.errs) else {
            return Identity::Bearer;
        };
        match bounded_string(hv, &hp, bounds::HEADER, &mut self.errs) {
            Some(h) if is_header_name(h) => Identity::Header(h.to_ascii_lowercase()),
            Some(h) => {
                self.errs
                    .push(&hp, format!("{h:?} is not a valid HTTP header name"));
                Identity::Bearer
            }
            None => Identity::Bearer,
        }
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
        let o = Obj::new(v, p.clone(), RULE_FIELDS, &mut self.errs)?;
        let action = o
            .get(F_ACTION, &mut self.errs)
            .and_then(|(v, ap)| choice(v, &ap, &["allow", "deny"], &mut self.errs));
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
        if !key_ok {
            return None;
        }
        Some(Rule {
            key: key.to_owned(),
            path: p.as_str().to_owned(),
            deny,
            require,
            deny_if,
            counter_order: sorted_counters(&limits),
            limits,
        })
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
            Window::parse(s).map_err(|e| self.errs.push(&wp, e)).ok()
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

    /// `podSelector`, `upstream` and `isolation`: where an McpPolicy applies. Read here so that
    /// `check` and the admission webhook report them with the rest.
    fn spec_placement(&mut self, top: &Obj) {
        if let Some((v, p)) = top.require(F_POD_SELECTOR, &mut self.errs) {
            check_label_selector(v, &p, &mut self.errs);
        }
        if let Some((v, p)) = top.require(F_UPSTREAM, &mut self.errs) {
            const PORT: Field = Field::new(&["port"]);
            const UPATH: Field = Field::new(&["path"]);
            if let Some(o) = Obj::new(v, p, &[PORT, UPATH], &mut self.errs) {
                if let Some((pv, pp)) = o.require(PORT, &mut self.errs) {
                    if !pv.as_u64().is_some_and(|n| (1..=65535).contains(&n)) {
                        self.errs
                            .push(&pp, format!("port must be 1 to 65535, found {pv}"));
                    }
                }
                if let Some((pv, pp)) = o.get(UPATH, &mut self.errs) {
                    if let Some(s) = bounded_string(pv, &pp, bounds::PATH, &mut self.errs) {
                        if !s.starts_with('/') {
                            self.errs.push(&pp, "path must start with '/'");
                        }
                    }
                }
            }
        }
        if let Some((v, p)) = top.get(F_ISOLATION, &mut self.errs) {
            choice(v, &p, &["NetworkPolicy", "None"], &mut self.errs);
        }
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

/// A standard Kubernetes LabelSelector: `matchLabels` and `matchExpressions`.
fn check_label_selector(v: &Value, p: &FieldPath, errs: &mut Errors) {
    const ML: Field = Field::new(&["matchLabels"]);
    const ME: Field = Field::new(&["matchExpressions"]);
    const KEY: Field = Field::new(&["key"]);
    const OPERATOR: Field = Field::new(&["operator"]);
    const VALUES: Field = Field::new(&["values"]);
    let Some(o) = Obj::new(v, p.clone(), &[ML, ME], errs) else {
        return;
    };
    if let Some((mv, mp)) = o.get(ML, errs) {
        match mv {
            Value::Object(m) => {
                for (k, val) in m {
                    reader::string(val, &mp.key(k), errs);
                }
            }
            other => errs.push(
                &mp,
                format!("expected a mapping, found {}", reader::kind(other)),
            ),
        }
    }
    if let Some((ev, ep)) = o.get(ME, errs) {
        for (i, e) in list(ev, &ep, 64, errs)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let Some(eo) = Obj::new(e, ep.index(i), &[KEY, OPERATOR, VALUES], errs) else {
                continue;
            };
            if let Some((kv, kp)) = eo.require(KEY, errs) {
                reader::string(kv, &kp, errs);
            }
            let op = eo.require(OPERATOR, errs).and_then(|(ov, op)| {
                choice(ov, &op, &["In", "NotIn", "Exists", "DoesNotExist"], errs)
            });
            let values = eo.get(VALUES, errs);
            let count = match &values {
                Some((vv, vp)) => list(vv, vp, 256, errs).map_or(0, |l| {
                    for (j, x) in l.iter().enumerate() {
                        reader::string(x, &vp.index(j), errs);
                    }
                    l.len()
                }),
                None => 0,
            };
            match op {
                Some("In" | "NotIn") if count == 0 => errs.push(
                    &ep.index(i).key("values"),
                    format!("{} needs values", op.unwrap_or_default()),
                ),
                Some("Exists" | "DoesNotExist") if count > 0 => errs.push(
                    &ep.index(i).key("values"),
                    "must be empty for this operator",
                ),
                _ => {}
            }
        }
    }
}

/// The canonical snake_case document of a valid policy: what the controller renders into
/// `policy.json`. Spec-only fields are dropped; `name` is set when given.
pub fn normalize(doc: &Value, flavor: Flavor, name: Option<&str>) -> Value {
    fn rename(
        m: &Map<String, Value>,
        f: impl Fn(&str, &Value) -> Option<(String, Value)>,
    ) -> Value {
        Value::Object(m.iter().filter_map(|(k, v)| f(k, v)).collect())
    }
    fn snake(k: &str) -> String {
        match k {
            "allTools" => "all_tools",
            "denyIf" => "deny_if",
            "onDeny" => "on_deny",
            "denyAs" => "deny_as",
            other => other,
        }
        .to_owned()
    }
    let Value::Object(top) = doc else {
        return doc.clone();
    };
    let mut out = rename(top, |k, v| {
        if flavor == Flavor::Spec && matches!(k, "podSelector" | "upstream" | "isolation") {
            return None;
        }
        if v.is_null() {
            return None;
        }
        let v = if k == "tools" {
            match v {
                Value::Object(tools) => rename(tools, |tool, rule| {
                    let rule = match rule {
                        Value::Object(r) => rename(r, |rk, rv| {
                            let rv = match (rk, rv) {
                                ("denyIf" | "deny_if", Value::Array(entries)) => Value::Array(
                                    entries
                                        .iter()
                                        .map(|e| match e {
                                            Value::Object(em) => {
                                                rename(em, |ek, ev| Some((snake(ek), ev.clone())))
                                            }
                                            other => other.clone(),
                                        })
                                        .collect(),
                                ),
                                (_, other) => other.clone(),
                            };
                            Some((snake(rk), rv))
                        }),
                        _ => Value::Object(Map::new()),
                    };
                    Some((tool.to_owned(), rule))
                }),
                other => other.clone(),
            }
        } else {
            v.clone()
        };
        Some((snake(k), v))
    });
    if let (Some(n), Value::Object(m)) = (name, &mut out) {
        m.insert("name".into(), Value::String(n.to_owned()));
    }
    out
}

impl Policy {
    /// The rule for a tool: exact name, else the most specific glob, else `None` (default).
    pub fn find_rule(&self, tool: &str) -> Option<&Rule> {
        if let Some(&i) = self.exact.get(tool) {
            return Some(&self.rules[i]);
        }
        self.globs
            .iter()
            .find(|(g, _)| g.matches(tool))
            .map(|(_, i)| &self.rules[*i])
    }

    /// Whether deciding a call to this tool reads its arguments (a `require` or a conditional
    /// `deny_if`), so callers can skip parsing them otherwise.
    pub fn reads_arguments(&self, tool: &str) -> bool {
        self.find_rule(tool).is_some_and(|r| {
            r.deny.is_none()
                && (!r.require.is_empty() || r.deny_if.iter().any(|d| !d.conditions.is_empty()))
        })
    }

    /// The `hide` entry that hides this tool, if any.
    pub fn hidden_by(&self, tool: &str) -> Option<&str> {
        self.hide
            .iter()
            .find(|(g, _)| g.matches(tool))
            .map(|(_, p)| p.as_str())
    }

    /// Whether `tools/list` may show the tool: some call to it could be allowed.
    pub fn listable(&self, tool: &str) -> bool {
        if self.hidden_by(tool).is_some() {
            return false;
        }
        match self.find_rule(tool) {
            Some(r) => !r.always_denied(),
            None => self.default == Default::Allow,
        }
    }

    /// A bounded metric label for a tool: its exact rule name, the glob that matched, or `_other`.
    pub fn tool_label<'a>(&'a self, tool: &str) -> &'a str {
        match self.find_rule(tool) {
            Some(r) => &r.key,
            None => "_other",
        }
    }
}

#[cfg(test)]
mod tests;
