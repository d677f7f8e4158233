//! Least privilege, checked two ways against `controller::rbac::RULES`:
//! - the chart's ClusterRole and Role grant exactly those rules;
//! - the Kubernetes calls in the controller and webhook sources use exactly those verbs (a call
//!   the table does not grant fails, and so does a grant no code uses).

use mcp_warden::controller::rbac::{Rule, RULES, URL_MODE_RULES};
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeSet;

type Grant = (String, String, String);

fn grants(rules: &[Rule], namespaced: bool) -> BTreeSet<Grant> {
    rules
        .iter()
        .filter(|r| r.namespaced == namespaced)
        .flat_map(|r| {
            r.verbs
                .iter()
                .map(move |v| (r.group.to_string(), r.resource.to_string(), v.to_string()))
        })
        .collect()
}

fn chart_roles() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/mcp-warden/templates/rbac.yaml"
    ))
    .unwrap();
    // The rules carry no template directives; drop the lines that do.
    let plain: String = text
        .lines()
        .filter(|l| {
            !l.contains("{{")
                && !l.trim_start().starts_with('*')
                && !l.trim_start().starts_with("Least")
                && !l.trim_start().starts_with("Cluster-wide")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    plain
        .split("\n---\n")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn role_grants(doc: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for r in doc["rules"].as_array().unwrap() {
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                for v in r["verbs"].as_array().unwrap() {
                    out.insert((
                        g.as_str().unwrap().into(),
                        res.as_str().unwrap().into(),
                        v.as_str().unwrap().into(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn the_chart_grants_exactly_the_rules_the_controller_needs() {
    let docs = chart_roles();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in the chart"))
    };
    assert_eq!(
        role_grants(find("ClusterRole")),
        grants(RULES, false),
        "ClusterRole differs from controller::rbac::RULES"
    );
    assert_eq!(
        role_grants(find("Role")),
        grants(RULES, true),
        "Role differs from controller::rbac::RULES"
    );
}

/// (group, resource) of each Kubernetes type the code calls.
fn resource_of(ty: &str) -> (&'static str, &'static str) {
    match ty {
        "McpPolicy" => ("mcpwarden.dev", "mcppolicies"),
        "ConfigMap" => ("", "configmaps"),
        "NetworkPolicy" => ("networking.k8s.io", "networkpolicies"),
        "Pod" => ("", "pods"),
        "Service" => ("", "services"),
        "Node" => ("", "nodes"),
        "Secret" => ("", "secrets"),
        "Lease" => ("coordination.k8s.io", "leases"),
        "Event" => ("events.k8s.io", "events"),
        "MutatingWebhookConfiguration" => ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
        "ValidatingWebhookConfiguration" => ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
        other => panic!("the controller calls the API for {other}: add it to tests/rbac.rs and controller::rbac::RULES"),
    }
}

/// The (group, resource, verb) of every API call in the controller and webhook sources.
fn used() -> BTreeSet<Grant> {
    let binding = Regex::new(r"(\w+): &?Api<(\w+)>").unwrap();
    let inline = Regex::new(r"(watcher|Controller::new)\(\s*Api::<(\w+)>").unwrap();
    let call =
        Regex::new(r"\b(\w+)\s*\.(get_opt|get|create|replace|patch_status|patch|delete|list)\(")
            .unwrap();
    let fn_def = Regex::new(r"fn (\w+)").unwrap();
    let mut out = BTreeSet::new();
    let mut add = |ty: &str, suffix: &str, verb: &str| {
        let (g, r) = resource_of(ty);
        out.insert((g.to_string(), format!("{r}{suffix}"), verb.to_string()));
    };
    for dir in ["src/controller", "src/webhook"] {
        for entry in std::fs::read_dir(format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"))).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.contains("tests") || !name.ends_with(".rs") {
                continue;
            }
            let src = std::fs::read_to_string(&path).unwrap();
            let src = src.split("#[cfg(test)]").next().unwrap();
            for c in inline.captures_iter(src) {
                add(&c[2], "", "list");
                add(&c[2], "", "watch");
            }
            // Calls on a variable use the type of its latest binding before the call.
            let bindings: Vec<(usize, String, String)> = binding
                .captures_iter(src)
                .map(|c| {
                    (
                        c.get(0).unwrap().start(),
                        c[1].to_string(),
                        c[2].to_string(),
                    )
                })
                .collect();
            // Calls through a generic `Api<K>` parameter are the calls of every `Api` variable
            // passed to that function: (function, verb, suffix) first, call sites after.
            let mut generic: Vec<(String, String, &str)> = Vec::new();
            for c in call.captures_iter(src) {
                let at = c.get(0).unwrap().start();
                let Some((bound_at, _, ty)) = bindings
                    .iter()
                    .rev()
                    .find(|(pos, var, _)| *pos < at && *var == c[1])
                else {
                    continue;
                };
                let stmt = &src[at..src[at..].find(';').map_or(src.len(), |e| at + e)];
                let verbs: Vec<(&str, &str)> = match &c[2] {
                    "get_opt" | "get" => vec![("", "get")],
                    "create" => vec![("", "create")],
                    "replace" => vec![("", "update")],
                    "delete" => vec![("", "delete")],
                    "list" => vec![("", "list")],
                    "patch_status" => vec![("/status", "patch")],
                    // Server-side apply creates what does not exist yet.
                    "patch" if stmt.contains("Patch::Apply") => vec![("", "patch"), ("", "create")],
                    "patch" => vec![("", "patch")],
                    _ => unreachable!(),
                };
                let is_generic = ty.len() == 1 && ty.chars().all(|ch| ch.is_ascii_uppercase());
                for (suffix, verb) in verbs {
                    if is_generic {
                        let func = fn_def
                            .captures_iter(&src[..*bound_at])
                            .last()
                            .map(|f| f[1].to_string())
                            .expect("a generic Api parameter belongs to a function");
                        generic.push((func, verb.to_string(), suffix));
                    } else {
                        add(ty, suffix, verb);
                    }
                }
            }
            for (func, verb, suffix) in &generic {
                let site = Regex::new(&format!(r"\b{func}\(\s*&(\w+)")).unwrap();
                for c in site.captures_iter(src) {
                    let at = c.get(0).unwrap().start();
                    if let Some((_, _, ty)) = bindings
                        .iter()
                        .rev()
                        .find(|(pos, var, _)| *pos < at && *var == c[1])
                    {
                        add(ty, suffix, verb);
                    }
                }
            }
            if src.contains(".publish(&") {
                add("Event", "", "create");
                add("Event", "", "patch");
            }
        }
    }
    out
}

#[test]
fn the_code_uses_exactly_the_verbs_the_rules_grant() {
    let used = used();
    let mut granted = grants(RULES, false);
    granted.extend(grants(RULES, true));
    granted.extend(grants(URL_MODE_RULES, false));
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "the code makes calls no rule grants: {missing:?}"
    );
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "rules grant what no code uses (not least privilege): {unused:?}"
    );
}

#[test]
fn rules_on_the_controllers_own_objects_name_them() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/mcp-warden/templates/rbac.yaml"
    ))
    .unwrap();
    let own: Vec<&Rule> = RULES.iter().filter(|r| r.own_names).collect();
    assert!(own.len() >= 2, "the webhook configurations are named");
    for r in &own {
        let block = format!(
            "resources: [\"{}\"]\n    verbs: {:?}\n    resourceNames: [{{{{ include \"mcp-warden.fullname\" . | quote }}}}]",
            r.resource, r.verbs
        );
        assert!(
            text.contains(&block),
            "the chart's rule on {} must name only the release's own object:\n{block}",
            r.resource
        );
    }
    assert_eq!(
        text.matches("resourceNames:").count(),
        own.len(),
        "only the rules marked own_names are restricted by name"
    );
    let deployment = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/mcp-warden/templates/deployment.yaml"
    ))
    .unwrap();
    assert!(
        deployment.contains("--webhook-config={{ include \"mcp-warden.fullname\" . }}"),
        "the controller is told the name its RBAC allows"
    );
}
