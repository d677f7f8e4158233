//! A policy against the tools a server really offers: what `check --server`, the sidecar's
//! `GET /tools` and the McpPolicy status report.

use super::ToolDef;
use crate::policy::argpath::Step;
use crate::policy::glob::Glob;
use crate::policy::{DefaultDecision, Lookup, Policy, Rule};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;

/// A name in the policy that matches no tool the server offers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Unknown {
    /// Where the policy names it: `tools.run_cel`, `grants[0].tools.x`, `hide[1]`, `pins.y`.
    pub at: String,
    /// The name or glob as written.
    pub name: String,
}

/// A condition on an argument the tool's input schema does not declare: it never fires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct UnknownArgument {
    /// The condition: `tools.run_cell.deny_if[0]`, `tools.write_file.require[1]`.
    pub rule: String,
    pub path: String,
    pub tool: String,
    /// The arguments the tool does declare.
    pub arguments: Vec<String>,
}

/// A pinned tool whose definition is not the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ChangedPin {
    pub tool: String,
    pub pinned: String,
    pub offered: String,
}

/// What a policy says of a server's tools that its author should know.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub unknown_tools: Vec<Unknown>,
    pub unknown_arguments: Vec<UnknownArgument>,
    /// Tools no rule names that only `default: allow` lets through.
    pub allowed_by_default: Vec<String>,
    pub changed_pins: Vec<ChangedPin>,
}

impl Report {
    /// Whether anything in the policy does not match the server (allowed-by-default tools are
    /// information, not a fault).
    pub fn clean(&self) -> bool {
        self.unknown_tools.is_empty()
            && self.unknown_arguments.is_empty()
            && self.changed_pins.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for u in &self.unknown_tools {
            writeln!(
                f,
                "{}: {:?} matches no tool the server offers",
                u.at, u.name
            )?;
        }
        for a in &self.unknown_arguments {
            writeln!(
                f,
                "{}: {} names an argument tool {:?} does not have (it takes: {}); the condition \
                 never matches",
                a.rule,
                a.path,
                a.tool,
                a.arguments.join(", ")
            )?;
        }
        for p in &self.changed_pins {
            writeln!(
                f,
                "pins.{}: the server offers {} (pinned {}); calls are denied",
                p.tool, p.offered, p.pinned
            )?;
        }
        if !self.allowed_by_default.is_empty() {
            writeln!(
                f,
                "allowed only by default: allow: {}",
                self.allowed_by_default.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Checks a policy against the tools a server offers.
pub fn report(policy: &Policy, tools: &[ToolDef]) -> Report {
    let mut r = Report::default();
    let offered = |pattern: &str| {
        let g = Glob::new(pattern);
        tools.iter().any(|t| g.matches(&t.name))
    };
    let mut unknown = BTreeSet::new();
    let mut rule_keys = |rules: &[Rule], prefix: &str| {
        for rule in rules {
            if !offered(&rule.key) {
                unknown.insert(Unknown {
                    at: format!("{prefix}tools.{}", rule.key),
                    name: rule.key.clone(),
                });
            }
        }
    };
    rule_keys(&policy.tools.rules, "");
    for g in &policy.grants {
        rule_keys(&g.tools.rules, &format!("{}.", g.path));
    }
    for (glob, at) in &policy.hide {
        if !offered(glob.pattern()) {
            unknown.insert(Unknown {
                at: at.clone(),
                name: glob.pattern().to_owned(),
            });
        }
    }
    for (tool, pin) in &policy.pins {
        match tools.iter().find(|t| &t.name == tool) {
            None => {
                unknown.insert(Unknown {
                    at: pin.rule.clone(),
                    name: tool.clone(),
                });
            }
            Some(t) if t.hash != pin.hash => r.changed_pins.push(ChangedPin {
                tool: tool.clone(),
                pinned: pin.hash.clone(),
                offered: t.hash.clone(),
            }),
            Some(_) => {}
        }
    }
    r.unknown_tools = unknown.into_iter().collect();
    let mut arguments = BTreeSet::new();
    let grants = std::iter::once(None).chain((0..policy.grants.len()).map(Some));
    for grant in grants {
        for t in tools {
            if let Lookup::Rule(rule) = policy.lookup(&t.name, grant, Some(t.hints)) {
                unknown_arguments(rule, t, &mut arguments);
            }
        }
    }
    r.unknown_arguments = arguments.into_iter().collect();
    if policy.default == DefaultDecision::Allow {
        r.allowed_by_default = tools
            .iter()
            .filter(|t| policy.hidden_by(&t.name).is_none())
            .filter(|t| matches!(policy.lookup(&t.name, None, Some(t.hints)), Lookup::Default))
            .map(|t| t.name.clone())
            .collect();
        r.allowed_by_default.sort();
    }
    r.changed_pins.sort();
    r
}

/// The conditions of `rule` on a top-level argument `tool` does not declare.
fn unknown_arguments(rule: &Rule, tool: &ToolDef, out: &mut BTreeSet<UnknownArgument>) {
    let Some(declared) = &tool.arguments else {
        return;
    };
    let conditions = rule
        .require
        .iter()
        .map(|q| (q.rule.as_str(), &q.condition))
        .chain(
            rule.deny_if
                .iter()
                .flat_map(|d| d.conditions.iter().map(move |c| (d.rule.as_str(), c))),
        );
    for (at, c) in conditions {
        if let Some(Step::Key(k)) = c.steps.first() {
            if !declared.contains(k) {
                let mut arguments = declared.clone();
                arguments.sort();
                out.insert(UnknownArgument {
                    rule: at.to_owned(),
                    path: c.path.clone(),
                    tool: tool.name.clone(),
                    arguments,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile_file;
    use serde_json::{json, Value};

    fn tools(list: Value) -> Vec<ToolDef> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|t| ToolDef::read(t).unwrap())
            .collect()
    }

    fn policy(doc: Value) -> Policy {
        compile_file(&doc).unwrap()
    }

    #[test]
    fn a_misspelt_rule_a_glob_matching_nothing_and_a_wrong_argument_are_reported() {
        let offered = tools(json!([
            {"name": "run_cell", "inputSchema": {"type": "object", "properties": {"index": {}}}},
            {"name": "read_notebook", "inputSchema": {"type": "object", "properties": {"path": {}}}},
            {"name": "clear_outputs"},
        ]));
        let p = policy(json!({
            "default": "allow",
            "hide": ["debug_*"],
            "tools": {
                "run_cel": {},
                "delete_*": {"action": "deny"},
                "run_cell": {"deny_if": [{"conditions": [{"path": "args.cell_index", "op": "gt", "value": 5}]}]},
                "read_*": {"require": [{"path": "args.path", "op": "prefix", "value": "/w"}]}
            },
            "pins": {"gone": format!("sha256:{}", "0".repeat(64))}
        }));
        let r = report(&p, &offered);
        let at: Vec<&str> = r.unknown_tools.iter().map(|u| u.at.as_str()).collect();
        assert_eq!(
            at,
            ["hide[0]", "pins.gone", "tools.delete_*", "tools.run_cel"]
        );
        assert_eq!(
            r.unknown_arguments,
            [UnknownArgument {
                rule: "tools.run_cell.deny_if[0]".into(),
                path: "args.cell_index".into(),
                tool: "run_cell".into(),
                arguments: vec!["index".into()],
            }]
        );
        assert_eq!(r.allowed_by_default, ["clear_outputs"]);
        assert!(!r.clean());
        let text = r.to_string();
        assert!(
            text.contains("tools.run_cel: \"run_cel\" matches no tool"),
            "{text}"
        );
        assert!(text.contains("it takes: index"), "{text}");
    }

    #[test]
    fn a_policy_that_matches_its_server_is_clean_and_changed_pins_are_not() {
        let offered = tools(json!([{"name": "a", "description": "x"}]));
        let hash = offered[0].hash.clone();
        let p = policy(json!({"tools": {"a": {}}, "pins": {"a": hash}}));
        assert!(report(&p, &offered).clean());
        let changed = tools(json!([{"name": "a", "description": "y"}]));
        let r = report(&p, &changed);
        assert_eq!(r.changed_pins.len(), 1);
        assert_eq!(r.changed_pins[0].pinned, hash);
        assert!(!r.clean());
    }

    #[test]
    fn category_rules_are_checked_against_the_tools_they_decide() {
        let offered = tools(json!([
            {"name": "write", "inputSchema": {"type": "object", "properties": {"file": {}}}},
            {"name": "look", "annotations": {"readOnlyHint": true},
             "inputSchema": {"type": "object", "properties": {"path": {}}}},
        ]));
        let p = policy(json!({"categories": {"destructive": {
            "require": [{"path": "args.path", "op": "prefix", "value": "/w"}]}}}));
        let r = report(&p, &offered);
        assert_eq!(r.unknown_arguments.len(), 1);
        assert_eq!(r.unknown_arguments[0].tool, "write");
        assert_eq!(
            r.unknown_arguments[0].rule,
            "categories.destructive.require[0]"
        );
    }
}
