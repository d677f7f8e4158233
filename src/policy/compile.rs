//! Compiling a policy document: the typed [`PolicyDoc`] checked for what serde cannot check
//! (bounds, names, URLs, regexes, argument paths, one definition per counter) and turned into
//! the engine's form, with every error reported at once with its field path.

use super::category::{Categories, Category};
use super::doc::{self, PolicyDoc};
use super::glob::Glob;
use super::reader::{Errors, FieldError, FieldPath, PolicyErrors};
use super::shape;
use super::{
    bounds, source, Counter, DefaultDecision, DenyAs, Flavor, Grant, Identity, IdentitySettings,
    LimitRef, Pin, Pinning, Policy, Rule, RuleSet,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Reason shown when a `deny_if` entry has no `on_deny`.
pub const DEFAULT_ON_DENY: &str = "Denied by policy";

/// Compiles a policy file's document (already parsed): the policy and an optional `name`.
pub fn compile_file(v: &Value) -> Result<Policy, PolicyErrors> {
    let mut errs = Errors::default();
    let mut rest = v.clone();
    let name = match rest.as_object_mut().and_then(|m| m.shift_remove("name")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() > bounds::NAME => {
            let at = FieldPath::root("name");
            errs.push(
                &at,
                format!("at most {} characters are allowed", bounds::NAME),
            );
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            let found = super::reader::kind(&other);
            errs.push(
                &FieldPath::root("name"),
                format!("expected a string, found {found}"),
            );
            None
        }
    };
    let (doc, shape) = shape::read::<PolicyDoc>(&rest, "");
    let mut found = errs.into_result(()).err().map(|e| e.0).unwrap_or_default();
    found.extend(shape);
    match doc {
        Some(doc) => with_found(found, compile(&doc, name, Flavor::File, "")),
        None => Err(PolicyErrors(found)),
    }
}

/// A compile's result after the errors `found` before it (shapes, placement): those first, then
/// the compiler's; the policy only when there are none.
pub fn with_found<T>(
    mut found: Vec<FieldError>,
    compiled: Result<T, PolicyErrors>,
) -> Result<T, PolicyErrors> {
    match compiled {
        Ok(p) if found.is_empty() => Ok(p),
        Ok(_) => Err(PolicyErrors(found)),
        Err(e) => {
            found.extend(e.0);
            Err(PolicyErrors(found))
        }
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
    compile_file(&doc)
}

/// Compiles a policy. `flavor` spells the error paths (snake_case for files, camelCase for an
/// McpPolicy `spec`); `prefix` comes before every path (`spec` for McpPolicies).
pub fn compile(
    doc: &PolicyDoc,
    name: Option<String>,
    flavor: Flavor,
    prefix: &str,
) -> Result<Policy, PolicyErrors> {
    let mut c = Compiler {
        errs: Errors::default(),
        counters: Vec::new(),
        counter_paths: Vec::new(),
        flavor,
    };
    let root = FieldPath::root(prefix);
    if let Some(v) = &doc.version {
        if v.0 != "1" {
            let at = c.at(&root, "version");
            c.errs.push(
                &at,
                format!("unsupported version {:?} (expected \"1\")", v.0),
            );
        }
    }
    let identity = c.identity(doc.identity.as_ref(), &c.at(&root, "identity"));
    let transport = c.transport(doc.transport.as_ref(), &c.at(&root, "transport"));
    let hide = c.hide(doc.hide.as_deref(), &c.at(&root, "hide"));
    let all_tools = c
        .all_tools(doc.all_tools.as_ref(), &c.at(&root, "allTools"))
        .unwrap_or_default();
    let tools_at = c.at(&root, "tools");
    let rules = c.tools(doc.tools.as_ref(), &tools_at, bounds::TOOLS, &all_tools);
    let categories = c.categories(
        doc.categories.as_ref(),
        &c.at(&root, "categories"),
        &all_tools,
    );
    let pins = c.pins(doc.pins.as_ref(), &c.at(&root, "pins"));
    let grants_at = c.at(&root, "grants");
    let grants = c.grants(doc, &grants_at, &tools_at, &identity, &all_tools);
    let Compiler { errs, counters, .. } = c;
    let document = if errs.is_empty() {
        document(doc, name.as_deref())
    } else {
        Value::Null
    };
    errs.into_result(Policy {
        transport,
        name,
        default: decision(doc.default).unwrap_or(DefaultDecision::Deny),
        identity,
        deny_as: match doc.deny_as {
            Some(doc::DenyAs::Error) => DenyAs::Error,
            _ => DenyAs::Result,
        },
        hide,
        tools: RuleSet::new(rules),
        categories: Categories::new(categories),
        pins,
        pinning: match doc.pinning {
            Some(doc::Pinning::FirstSeen) => Pinning::FirstSeen,
            _ => Pinning::Explicit,
        },
        grants,
        counters,
        default_rule: default_rule(all_tools),
        document,
    })
}

/// The canonical document: the policy in snake_case plus `name`, what the controller renders
/// into `policy.json` (and what the policy hash is of).
pub fn document(doc: &PolicyDoc, name: Option<&str>) -> Value {
    let mut v = snake_case(
        serde_json::to_value(doc).expect("serialising a value built in memory cannot fail"),
    );
    default_scopes(&mut v);
    if let (Some(n), Value::Object(m)) = (name, &mut v) {
        m.insert("name".into(), Value::String(n.to_owned()));
    }
    v
}

/// `scope: policy` is the default: rendered without it, a limit reads the same to this version
/// and, as its own default (`pod`), to the sidecar version before (which has no `policy`).
fn default_scopes(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(limits)) = m.get_mut("limits") {
                for l in limits.iter_mut().filter_map(Value::as_object_mut) {
                    if l.get("scope").and_then(Value::as_str) == Some("policy") {
                        l.remove("scope");
                    }
                }
            }
            m.values_mut().for_each(default_scopes);
        }
        Value::Array(a) => a.iter_mut().for_each(default_scopes),
        _ => {}
    }
}

/// A document's field names in snake_case. Tool names (the keys under `tools`), pinned tool
/// names (under `pins`) and condition operands (`value`) are the user's and stay as written.
fn snake_case(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("tools", Value::Object(rules)) => Value::Object(
                            rules.into_iter().map(|(t, r)| (t, snake_case(r))).collect(),
                        ),
                        ("pins" | "value", v) => v,
                        (_, v) => snake_case(v),
                    };
                    (snake_name(&k), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(snake_case).collect()),
        other => other,
    }
}

/// `allTools` → `all_tools`.
fn snake_name(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn decision(d: Option<doc::DefaultAction>) -> Option<DefaultDecision> {
    d.map(|d| match d {
        doc::DefaultAction::Allow => DefaultDecision::Allow,
        doc::DefaultAction::Deny => DefaultDecision::Deny,
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

pub(super) struct Compiler {
    pub(super) errs: Errors,
    pub(super) counters: Vec<Counter>,
    /// Where each counter was first declared, for "differs from" messages.
    pub(super) counter_paths: Vec<String>,
    pub(super) flavor: Flavor,
}

impl Compiler {
    /// The path of a field (named in camelCase), spelled as this flavour writes it.
    pub(super) fn at(&self, p: &FieldPath, camel: &str) -> FieldPath {
        match self.flavor {
            Flavor::Spec => p.key(camel),
            Flavor::File => p.key(&snake_name(camel)),
        }
    }

    /// A list of at most `max` items, or an error.
    pub(super) fn bounded<'a, T>(
        &mut self,
        items: &'a [T],
        p: &FieldPath,
        max: usize,
    ) -> Option<&'a [T]> {
        if items.len() > max {
            self.errs.push(
                p,
                format!("at most {max} items are allowed, found {}", items.len()),
            );
            return None;
        }
        Some(items)
    }

    /// A string of at most `max` characters, or an error.
    pub(super) fn text<'a>(&mut self, s: &'a str, p: &FieldPath, max: usize) -> Option<&'a str> {
        if s.chars().count() > max {
            self.errs
                .push(p, format!("at most {max} characters are allowed"));
            return None;
        }
        Some(s)
    }

    /// The limits of an `allTools` at `p`, when one is given.
    fn all_tools(&mut self, all: Option<&doc::AllTools>, p: &FieldPath) -> Option<Vec<LimitRef>> {
        all.map(|a| self.limits(a.limits.as_deref(), &p.key("limits")))
    }

    /// The rules of `tools`, each with `allTools` limits before its own.
    fn tools(
        &mut self,
        tools: Option<&BTreeMap<String, doc::ToolRule>>,
        p: &FieldPath,
        max: usize,
        all_tools: &[LimitRef],
    ) -> Vec<Rule> {
        let Some(m) = tools else {
            return Vec::new();
        };
        if m.len() > max {
            self.errs.push(
                p,
                format!("at most {max} tools are allowed, found {}", m.len()),
            );
            return Vec::new();
        }
        m.iter()
            .filter_map(|(key, rule)| self.rule(key, rule, p, all_tools))
            .collect()
    }

    /// `categories`: rules by MCP tool annotations, each compiled like a tool rule.
    fn categories(
        &mut self,
        c: Option<&doc::CategoriesSpec>,
        p: &FieldPath,
        all_tools: &[LimitRef],
    ) -> Vec<(Category, Rule)> {
        let Some(c) = c else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (category, rule, camel) in [
            (Category::Destructive, &c.destructive, "destructive"),
            (Category::ReadOnly, &c.read_only, "readOnly"),
            (Category::OpenWorld, &c.open_world, "openWorld"),
            (Category::Idempotent, &c.idempotent, "idempotent"),
        ] {
            let Some(rule) = rule else { continue };
            let key = format!("categories.{}", category.name());
            let at = self.at(p, camel);
            if let Some(r) = self.rule_at(&key, rule, at, all_tools) {
                out.push((category, r));
            }
        }
        out
    }

    /// `pins`: tool name → `sha256:` and 64 lower-case hex digits of its definition.
    fn pins(
        &mut self,
        pins: Option<&BTreeMap<String, String>>,
        p: &FieldPath,
    ) -> HashMap<String, Pin> {
        let mut out = HashMap::new();
        let Some(m) = pins else {
            return out;
        };
        if m.len() > bounds::TOOLS {
            self.errs.push(
                p,
                format!(
                    "at most {} pins are allowed, found {}",
                    bounds::TOOLS,
                    m.len()
                ),
            );
            return out;
        }
        for (tool, hash) in m {
            let tp = p.key(tool);
            if !self.tool_key(tool, &tp) {
                continue;
            }
            if Glob::is_glob(tool) {
                self.errs
                    .push(&tp, "a pin names one tool exactly, not a glob");
            } else if !super::is_pin_hash(hash) {
                self.errs.push(
                    &tp,
                    format!(
                        "expected \"sha256:\" and 64 lower-case hex digits (as `mcp-warden pin \
                         --server URL` prints), found {hash:?}"
                    ),
                );
            } else {
                let rule = format!("pins.{tool}");
                out.insert(
                    tool.clone(),
                    Pin {
                        hash: hash.clone(),
                        rule,
                    },
                );
            }
        }
        out
    }

    /// `grants`: per-caller rules, each replacing the base rules for what it names.
    fn grants(
        &mut self,
        doc: &PolicyDoc,
        p: &FieldPath,
        tools_at: &FieldPath,
        identity: &IdentitySettings,
        base_all_tools: &[LimitRef],
    ) -> Vec<Grant> {
        let Some(items) = doc.grants.as_deref() else {
            return Vec::new();
        };
        let Some(items) = self.bounded(items, p, bounds::GRANTS) else {
            return Vec::new();
        };
        if identity.source == Identity::Bearer && !items.is_empty() {
            self.errs.push(
                p,
                "grants need an identity that names the caller: identity.serviceAccount, \
                 identity.jwt or identity.header (a bearer token's hash names no one)",
            );
        }
        let mut out = Vec::new();
        for (i, g) in items.iter().enumerate() {
            let gp = p.index(i);
            let subjects = self
                .names(
                    &g.subjects,
                    &gp.key("subjects"),
                    bounds::SUBJECTS,
                    "subject",
                )
                .iter()
                .map(|s| Glob::new(s))
                .collect();
            let own = self.all_tools(g.all_tools.as_ref(), &self.at(&gp, "allTools"));
            let effective = own.as_deref().unwrap_or(base_all_tools);
            let own_at = gp.key("tools");
            let tools = self.tools(g.tools.as_ref(), &own_at, bounds::GRANT_TOOLS, effective);
            let all_tools = own.map(|limits| {
                (
                    RuleSet::new(self.base_rules_with(doc, tools_at, &limits)),
                    default_rule(limits),
                )
            });
            out.push(Grant {
                path: gp.as_str().to_owned(),
                subjects,
                default: decision(g.default),
                tools: RuleSet::new(tools),
                all_tools,
            });
        }
        out
    }

    /// A required, non-empty list of bounded names without control characters (subjects,
    /// audiences); `what` names one in the errors.
    fn names(&mut self, items: &[String], p: &FieldPath, max: usize, what: &str) -> Vec<String> {
        let Some(items) = self.bounded(items, p, max) else {
            return Vec::new();
        };
        if items.is_empty() {
            self.errs.push(p, format!("name at least one {what}"));
        }
        let mut out = Vec::new();
        for (i, s) in items.iter().enumerate() {
            let ip = p.index(i);
            match self.text(s, &ip, bounds::SUBJECT) {
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

    /// The base rules compiled again with other `allTools` limits. Their errors were reported
    /// the first time, so this reading's are dropped.
    fn base_rules_with(
        &mut self,
        doc: &PolicyDoc,
        p: &FieldPath,
        limits: &[LimitRef],
    ) -> Vec<Rule> {
        let reported = std::mem::take(&mut self.errs);
        let rules = self.tools(doc.tools.as_ref(), p, bounds::TOOLS, limits);
        self.errs = reported;
        rules
    }

    fn identity(&mut self, id: Option<&doc::IdentitySpec>, p: &FieldPath) -> IdentitySettings {
        let mut out = IdentitySettings {
            source: Identity::Bearer,
            required: false,
        };
        let Some(id) = id else {
            return out;
        };
        let mut sources = Vec::new();
        if let Some(source) = self.identity_sources(id, p, &mut sources) {
            out.source = source;
        }
        if sources.len() > 1 {
            self.errs.push(
                p,
                format!(
                    "one source of identity, not {} ({})",
                    sources.len(),
                    sources.join(", ")
                ),
            );
        }
        out.required = id.required.unwrap_or(false);
        if out.required && sources.is_empty() {
            self.errs.push(
                &p.key("required"),
                "required needs identity.serviceAccount, identity.jwt or identity.header",
            );
        }
        if sources.is_empty() && id.required == Some(false) {
            self.errs.push(
                p,
                "name a source of identity: serviceAccount, jwt or header",
            );
        }
        out
    }

    /// The identity's source (`header`, `serviceAccount`, `jwt`: the last one given), with the
    /// paths of every one given in `sources`.
    fn identity_sources(
        &mut self,
        id: &doc::IdentitySpec,
        p: &FieldPath,
        sources: &mut Vec<String>,
    ) -> Option<Identity> {
        let mut source = None;
        if let Some(h) = &id.header {
            let hp = p.key("header");
            sources.push(hp.as_str().to_owned());
            match self.text(h, &hp, bounds::HEADER) {
                Some(h) if is_header_name(h) => {
                    source = Some(Identity::Header(h.to_ascii_lowercase()))
                }
                Some(h) => self
                    .errs
                    .push(&hp, format!("{h:?} is not a valid HTTP header name")),
                None => {}
            }
        }
        if let Some(sa) = &id.service_account {
            let sp = self.at(p, "serviceAccount");
            sources.push(sp.as_str().to_owned());
            let audiences = self.audiences(&sa.audiences, &sp);
            source = Some(Identity::ServiceAccount { audiences });
        }
        if let Some(jwt) = &id.jwt {
            let jp = p.key("jwt");
            sources.push(jp.as_str().to_owned());
            let issuer = self.url(&jwt.issuer, &jp.key("issuer"));
            let audiences = self.audiences(&jwt.audiences, &jp);
            let jwks_from = self.url(&jwt.jwks_from, &self.at(&jp, "jwksFrom"));
            source = Some(Identity::Jwt {
                issuer: issuer.unwrap_or_default(),
                audiences,
                jwks_from: jwks_from.unwrap_or_default(),
            });
        }
        source
    }

    fn audiences(&mut self, audiences: &[String], p: &FieldPath) -> Vec<String> {
        self.names(
            audiences,
            &p.key("audiences"),
            bounds::AUDIENCES,
            "audience",
        )
    }

    /// An `https://` URL (an issuer, a key set's address).
    fn url(&mut self, s: &str, p: &FieldPath) -> Option<String> {
        let s = self.text(s, p, bounds::URL)?;
        let rest = s.strip_prefix("https://");
        if rest
            .is_none_or(|r| r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            self.errs.push(p, format!("{s:?} is not an https:// URL"));
            return None;
        }
        Some(s.to_owned())
    }

    fn transport(&mut self, t: Option<&doc::TransportSpec>, p: &FieldPath) -> super::Transport {
        let mut out = super::Transport::default();
        let Some(t) = t else {
            return out;
        };
        for (items, camel, into) in [
            (&t.allowed_hosts, "allowedHosts", &mut out.allowed_hosts),
            (
                &t.allowed_origins,
                "allowedOrigins",
                &mut out.allowed_origins,
            ),
        ] {
            let Some(items) = items else { continue };
            let lp = self.at(p, camel);
            let Some(items) = self.bounded(items, &lp, bounds::HOSTS) else {
                continue;
            };
            for (i, s) in items.iter().enumerate() {
                let ip = lp.index(i);
                if let Some(s) = self.text(s, &ip, bounds::HOST) {
                    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        self.errs
                            .push(&ip, format!("{s:?} is not a host or origin"));
                    } else {
                        into.push(s.to_owned());
                    }
                }
            }
        }
        out
    }

    fn hide(&mut self, hide: Option<&[String]>, p: &FieldPath) -> Vec<(Glob, String)> {
        let Some(items) = hide.and_then(|h| self.bounded(h, p, bounds::HIDE)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, s) in items.iter().enumerate() {
            let ip = p.index(i);
            if self.tool_key(s, &ip) {
                out.push((Glob::new(s), format!("hide[{i}]")));
            }
        }
        out
    }
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn sorted_counters(limits: &[LimitRef]) -> Vec<usize> {
    let mut v: Vec<usize> = limits.iter().map(|l| l.counter).collect();
    v.sort_unstable();
    v.dedup();
    v
}
