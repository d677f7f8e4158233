//! The compiler's rules: a tool rule's action, approval, limits (one definition per counter) and
//! argument conditions, checked and turned into the engine's form.

use super::compile::{sorted_counters, Compiler, DEFAULT_ON_DENY};
use super::condition::{self, Matcher};
use super::doc;
use super::reader::FieldPath;
use super::window::Window;
use super::{
    bounds, Approval, ApprovedBy, Condition, Counter, DenyIf, LimitRef, Requirement, Rule, Scope,
};
use serde_json::Value;
use std::num::NonZeroU32;

impl Compiler {
    /// A tool key is a name or a glob: printable, no whitespace, not empty, bounded.
    pub(super) fn tool_key(&mut self, key: &str, p: &FieldPath) -> bool {
        if key.chars().count() > bounds::TOOL_NAME {
            self.errs.push(
                p,
                format!("a tool name is at most {} characters", bounds::TOOL_NAME),
            );
            return false;
        }
        if key.is_empty() || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
            self.errs.push(
                p,
                "a tool name must be non-empty with no spaces or control characters",
            );
            return false;
        }
        true
    }

    pub(super) fn rule(
        &mut self,
        key: &str,
        rule: &doc::ToolRule,
        tools: &FieldPath,
        all_tools: &[LimitRef],
    ) -> Option<Rule> {
        let p = tools.key(key);
        let key_ok = self.tool_key(key, &p);
        let r = self.rule_at(key, rule, p, all_tools)?;
        key_ok.then_some(r)
    }

    /// A rule's fields, at `p`, under the name `key`.
    pub(super) fn rule_at(
        &mut self,
        key: &str,
        rule: &doc::ToolRule,
        p: FieldPath,
        all_tools: &[LimitRef],
    ) -> Option<Rule> {
        let reason = rule
            .reason
            .as_deref()
            .and_then(|r| self.text(r, &p.key("reason"), bounds::REASON));
        let deny = match (rule.action, reason) {
            (Some(doc::ToolAction::Deny), r) => Some(r.unwrap_or(DEFAULT_ON_DENY).to_owned()),
            (_, Some(_)) => {
                self.errs
                    .push(&p.key("reason"), "reason is only used with action: deny");
                None
            }
            _ => None,
        };
        let mut limits: Vec<LimitRef> = all_tools.to_vec();
        for l in self.limits(rule.limits.as_deref(), &p.key("limits")) {
            if !limits.iter().any(|x| x.counter == l.counter) {
                limits.push(l);
            }
        }
        let require = self.require(rule.require.as_deref(), &p.key("require"));
        let deny_if = self.deny_if(rule.deny_if.as_deref(), &self.at(&p, "denyIf"));
        let approval = self.approval(rule, &p.key("approval"));
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
    pub(super) fn approval(&mut self, rule: &doc::ToolRule, p: &FieldPath) -> Option<Approval> {
        let Some(a) = &rule.approval else {
            return (rule.action == Some(doc::ToolAction::RequireApproval))
                .then_some(Approval::default());
        };
        if rule.action == Some(doc::ToolAction::Deny) {
            self.errs
                .push(p, "a denied tool cannot also require approval");
            return None;
        }
        let mut out = Approval::default();
        let mut valid = true;
        match a.by {
            Some(doc::ApprovalBy::User) => {
                out.ttl = Approval::USER_TTL;
                out.by = ApprovedBy::User {
                    url: a.url.clone(),
                    deny_otherwise: a.fallback == Some(doc::ApprovalFallback::Deny),
                };
                if let Some(url) = &a.url {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        self.errs.push(
                            &p.key("url"),
                            format!("url must be an http(s) URL, found {url:?}"),
                        );
                        valid = false;
                    }
                }
                if a.uses.is_some_and(|n| n != 1) {
                    self.errs.push(
                        &p.key("uses"),
                        "a user confirms one call at a time: uses must be 1 with by: user",
                    );
                    valid = false;
                }
            }
            _ => {
                for (set, field) in [(a.url.is_some(), "url"), (a.fallback.is_some(), "fallback")] {
                    if set {
                        self.errs
                            .push(&p.key(field), format!("{field} needs by: user"));
                        valid = false;
                    }
                }
            }
        }
        if let Some(ttl) = &a.ttl {
            match Window::parse(ttl) {
                Ok(w) => out.ttl = w.length,
                Err(e) => {
                    let message = e.to_string().replace("window", "ttl");
                    self.errs.push(&p.key("ttl"), message);
                    valid = false;
                }
            }
        }
        if let Some(n) = a.uses {
            if (1..=bounds::APPROVAL_USES as u32).contains(&n) {
                out.uses = n;
            } else {
                self.errs.push(
                    &p.key("uses"),
                    format!(
                        "uses must be a whole number from 1 to {}, found {n}",
                        bounds::APPROVAL_USES
                    ),
                );
                valid = false;
            }
        }
        valid.then_some(out)
    }

    pub(super) fn limits(&mut self, limits: Option<&[doc::Limit]>, p: &FieldPath) -> Vec<LimitRef> {
        let Some(items) = limits.and_then(|l| self.bounded(l, p, bounds::LIMITS)) else {
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

    pub(super) fn limit(&mut self, l: &doc::Limit, p: FieldPath) -> Option<LimitRef> {
        let cp = p.key("counter");
        let name = self.text(&l.counter, &cp, bounds::COUNTER).and_then(|s| {
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
        let window = Window::parse(&l.window)
            .map_err(|e| self.errs.push(&p.key("window"), e.to_string()))
            .ok();
        let max = NonZeroU32::new(l.max);
        if max.is_none() {
            self.errs.push(
                &p.key("max"),
                format!("max must be a whole number from 1 to {}, found 0", u32::MAX),
            );
        }
        let scope = match l.scope {
            None | Some(doc::Scope::Policy) => Scope::Policy,
            Some(doc::Scope::Pod) => Scope::Pod,
            Some(doc::Scope::Session) => Scope::Session,
            Some(doc::Scope::Grant | doc::Scope::Identity) => Scope::Grant,
        };
        let counter = Counter {
            name: name?,
            window: window?,
            scope,
            max: max?,
        };
        self.declare(counter, p.as_str().to_owned())
    }

    /// A counter's first declaration defines it; a later one must agree.
    pub(super) fn declare(&mut self, counter: Counter, rule: String) -> Option<LimitRef> {
        let Some(i) = self.counters.iter().position(|c| c.name == counter.name) else {
            self.counters.push(counter);
            self.counter_paths.push(rule.clone());
            return Some(LimitRef {
                counter: self.counters.len() - 1,
                rule,
            });
        };
        let first = &self.counters[i];
        let same = first.window.length == counter.window.length
            && first.scope == counter.scope
            && first.max == counter.max;
        if same {
            return Some(LimitRef { counter: i, rule });
        }
        let message = format!(
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
        );
        self.errs.push(&FieldPath::root(&rule), message);
        None
    }

    /// One argument condition: its path parsed, its operator compiled with its operand.
    pub(super) fn condition(
        &mut self,
        path: &str,
        op: doc::Op,
        value: Option<&Value>,
        p: &FieldPath,
    ) -> Option<Condition> {
        let pp = p.key("path");
        let parsed = self.text(path, &pp, bounds::PATH).and_then(|s| {
            condition::parse_path(s)
                .map_err(|e| self.errs.push(&pp, e))
                .ok()
        });
        if let Some(Value::Array(items)) = value {
            if items.len() > bounds::IN_VALUES {
                self.errs.push(
                    &p.key("value"),
                    format!("at most {} values are allowed", bounds::IN_VALUES),
                );
                return None;
            }
        }
        let op_name = serde_json::to_value(op)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let matcher = match Matcher::compile(&op_name, value) {
            Ok(m) => m,
            Err(e) => {
                // Blame `value`: the operator is one serde knows, so its operand is wrong.
                let at = if value.is_some() {
                    p.key("value")
                } else {
                    p.key("op")
                };
                self.errs.push(&at, e);
                return None;
            }
        };
        Some(Condition {
            path: path.to_owned(),
            steps: parsed?,
            matcher,
        })
    }

    pub(super) fn require(
        &mut self,
        items: Option<&[doc::Requirement]>,
        p: &FieldPath,
    ) -> Vec<Requirement> {
        let Some(items) = items.and_then(|i| self.bounded(i, p, bounds::REQUIRE)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, r) in items.iter().enumerate() {
            let ip = p.index(i);
            let custom = r
                .reason
                .as_deref()
                .and_then(|s| self.text(s, &ip.key("reason"), bounds::REASON))
                .map(str::to_owned);
            if let Some(condition) = self.condition(&r.path, r.op, r.value.as_ref(), &ip) {
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

    pub(super) fn deny_if(&mut self, items: Option<&[doc::DenyIf]>, p: &FieldPath) -> Vec<DenyIf> {
        let Some(items) = items.and_then(|i| self.bounded(i, p, bounds::DENY_IF)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, d) in items.iter().enumerate() {
            let ip = p.index(i);
            let on_deny = d
                .on_deny
                .as_deref()
                .and_then(|s| self.text(s, &self.at(&ip, "onDeny"), bounds::REASON))
                .unwrap_or(DEFAULT_ON_DENY)
                .to_owned();
            let cp = ip.key("conditions");
            let Some(conds) = self.bounded(&d.conditions, &cp, bounds::CONDITIONS) else {
                continue;
            };
            let compiled: Vec<Option<Condition>> = conds
                .iter()
                .enumerate()
                .map(|(j, c)| self.condition(&c.path, c.op, c.value.as_ref(), &cp.index(j)))
                .collect();
            if let Some(conditions) = compiled.into_iter().collect::<Option<Vec<_>>>() {
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

fn is_counter_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
