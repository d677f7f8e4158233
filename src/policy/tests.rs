use super::*;
use serde_json::json;

fn compile_file(v: Value) -> Result<Policy, PolicyErrors> {
    super::compile_file(&v)
}

/// An McpPolicy `spec`'s policy part: camelCase paths under `spec`.
fn compile_spec(v: Value) -> Result<Policy, PolicyErrors> {
    let doc = doc::PolicyDoc::from_value(&v, "spec")?;
    compile(&doc, None, Flavor::Spec, "spec")
}

/// The one error serde reports for a shape it refuses: its path and message.
fn shape_error(v: Value) -> (String, String) {
    let mut e = errors(v);
    assert_eq!(e.len(), 1, "one shape error: {e:?}");
    e.remove(0)
}

fn errors(v: Value) -> Vec<(String, String)> {
    compile_file(v)
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect()
}

fn paths(v: Value) -> Vec<String> {
    errors(v).into_iter().map(|(p, _)| p).collect()
}

#[test]
fn the_policylayer_seed_policy_loads_unchanged() {
    let text = r#"{"version":"1","default":"deny","tools":{"run_cell":{"limits":[{"counter":"run_cell_rate","window":"minute","max":10,"scope":"grant"}]},"notebook_validate":{},"clear_session":{"deny_if":[{"conditions":[],"on_deny":"Blocked by default. Requires approval."}]}}}"#;
    let p = load_str(text).unwrap();
    assert_eq!(p.default, DefaultDecision::Deny);
    assert_eq!(p.tools.rules.len(), 3);
    assert_eq!(p.counters.len(), 1);
    assert_eq!(p.counters[0].max.get(), 10);
    assert_eq!(p.counters[0].scope, Scope::Grant);
    assert!(p.find_rule("clear_session").unwrap().always_denied());
    // The normalized document of a snake_case policy is the policy itself.
    assert_eq!(p.document, serde_json::from_str::<Value>(text).unwrap());
}

#[test]
fn camel_case_and_snake_case_are_one_model() {
    let snake = json!({"default": "allow", "deny_as": "error", "all_tools": {"limits": [
        {"counter": "all", "window": "minute", "max": 5}]},
        "tools": {"x": {"deny_if": [{"conditions": [], "on_deny": "no"}]}}});
    let camel = json!({"default": "allow", "denyAs": "error", "allTools": {"limits": [
        {"counter": "all", "window": "minute", "max": 5}]},
        "tools": {"x": {"denyIf": [{"conditions": [], "onDeny": "no"}]}}});
    let a = compile_file(snake.clone()).unwrap();
    let b = compile_file(camel).unwrap();
    assert_eq!(
        a.document, b.document,
        "both spellings render the same snake_case document"
    );
    assert_eq!(a.document, snake);
    assert_eq!(b.deny_as, DenyAs::Error);
    assert_eq!(b.tools.rules[0].deny_if[0].on_deny, "no");
    assert_eq!(b.default_rule.limits.len(), 1);
}

#[test]
fn the_document_is_snake_case_with_the_name_and_itself_a_policy_file() {
    let spec = json!({"default": "deny", "denyAs": "error", "tools": {"readFile": {"denyIf": [
        {"conditions": [{"path": "args.p", "op": "eq", "value": {"keepMe": 1}}], "onDeny": "no"}]}},
        "pins": {"runCell": format!("sha256:{}", "0".repeat(64))}});
    let d = doc::PolicyDoc::from_value(&spec, "spec").unwrap();
    let rendered = document(&d, Some("ns/p"));
    assert_eq!(
        rendered,
        json!({"default": "deny", "deny_as": "error", "tools": {"readFile": {"deny_if": [
            {"conditions": [{"path": "args.p", "op": "eq", "value": {"keepMe": 1}}], "on_deny": "no"}]}},
            "pins": {"runCell": format!("sha256:{}", "0".repeat(64))}, "name": "ns/p"}),
        "field names in snake_case; tool names, pins and operands as written"
    );
    let p = compile_file(rendered.clone()).unwrap();
    assert_eq!(
        p.document, rendered,
        "the rendered document reads back as itself"
    );
    // Placement fields are not part of a policy file.
    assert_eq!(shape_error(json!({"upstream": {"port": 1}})).0, "upstream");
}

#[test]
fn the_default_scope_is_rendered_without_a_scope_and_others_as_written() {
    let limit = |scope: &str| json!({"counter": format!("c_{scope}"), "window": "minute", "max": 1, "scope": scope});
    let spec = json!({"allTools": {"limits": [limit("policy")]},
                      "tools": {"t": {"limits": [limit("policy"), limit("pod"), limit("grant")]}}});
    let d = doc::PolicyDoc::from_value(&spec, "spec").unwrap();
    let rendered = document(&d, None);
    assert!(rendered["all_tools"]["limits"][0].get("scope").is_none());
    let scopes: Vec<&Value> = (0..3)
        .map(|i| &rendered["tools"]["t"]["limits"][i]["scope"])
        .collect();
    assert_eq!(scopes, [&Value::Null, &json!("pod"), &json!("grant")]);
    let p = compile_file(rendered).unwrap();
    assert_eq!(p.counters[0].scope, Scope::Policy, "absent reads as policy");
}

#[test]
fn every_error_serde_cannot_see_is_reported_at_once_with_its_path() {
    let got = errors(json!({
        "version": "2",
        "tools": {
            "write_file": {
                "deny_if": [{"conditions": [
                    {"path": "args.content", "op": "contains", "value": "rm"},
                    {"path": "args.content", "op": "gt", "value": "x"}
                ]}],
                "limits": [{"counter": "w", "window": "fortnight", "max": 0}]
            },
            "run": {"require": [{"path": "arg.x", "op": "regex", "value": "("}]}
        }
    }));
    let expect = [
        ("version", "unsupported version \"2\""),
        ("tools.run.require[0].path", "must start with \"args\""),
        ("tools.run.require[0].value", "invalid regex"),
        (
            "tools.write_file.limits[0].window",
            "unknown window \"fortnight\"",
        ),
        (
            "tools.write_file.limits[0].max",
            "max must be a whole number from 1",
        ),
        ("tools.write_file.deny_if[0].conditions[1].value", "number"),
    ];
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    for (path, msg) in expect {
        assert!(
            got.iter().any(|(p, m)| p == path && m.contains(msg)),
            "missing {path}: {msg} in {got:#?}"
        );
    }
}

#[test]
fn a_shape_serde_refuses_is_named_with_its_path() {
    for (doc, path, msg) in [
        (
            json!({"versoin": "1"}),
            "versoin",
            "unknown field `versoin`",
        ),
        (
            json!({"default": "maybe"}),
            "default",
            "unknown variant `maybe`, expected `allow` or `deny`",
        ),
        (
            json!({"tools": {"w": {"deny_if": [{"conditions": [{"path": "args.x", "op": "startswith"}]}]}}}),
            "tools.w.deny_if[0].conditions[0].op",
            "unknown variant `startswith`, expected one of `eq`, `neq`",
        ),
        (json!({"deny_if": []}), "deny_if", "unknown field `deny_if`"),
        // Never a rule by position, never an enum but by its name.
        (
            json!({"tools": {"a": ["deny"]}}),
            "tools.a",
            "invalid type: sequence, expected a tool rule (a mapping)",
        ),
        (
            json!({"default": 0}),
            "default",
            "invalid type: integer `0`",
        ),
        (
            json!({"tools": {"x": {"deny_if": [], "denyIf": []}}}),
            "tools.x",
            "duplicate field `denyIf`",
        ),
    ] {
        let (p, m) = shape_error(doc);
        assert_eq!(p, path);
        assert!(m.contains(msg), "{m}");
    }
}

#[test]
fn unknown_fields_are_errors_at_every_level() {
    for (doc, path) in [
        (
            json!({"identity": {"header": "x-agent-id", "hash": true}}),
            "identity.hash",
        ),
        (
            json!({"all_tools": {"limits": [], "extra": 1}}),
            "all_tools.extra",
        ),
        (json!({"tools": {"a": {"limit": []}}}), "tools.a.limit"),
        (
            json!({"tools": {"b": {"deny_if": [{"conditions": [], "ondeny": "x"}]}}}),
            "tools.b.deny_if[0].ondeny",
        ),
        (
            json!({"tools": {"b": {"deny_if": [{"conditions": [{"path": "args.x", "op": "exists", "vaule": 1}]}]}}}),
            "tools.b.deny_if[0].conditions[0].vaule",
        ),
        (
            json!({"tools": {"c": {"require": [{"path": "args.x", "op": "exists", "why": "x"}]}}}),
            "tools.c.require[0].why",
        ),
        (
            json!({"tools": {"d": {"limits": [{"counter": "c", "window": "second", "max": 1, "burst": 2}]}}}),
            "tools.d.limits[0].burst",
        ),
    ] {
        let (p, m) = shape_error(doc);
        assert_eq!(p, path);
        assert!(m.starts_with("unknown field"), "{m}");
    }
}

fn paths_contains(got: &[String], p: &str) -> bool {
    got.iter().any(|g| g == p)
}

#[test]
fn type_errors_name_what_was_found_and_what_was_expected() {
    for (doc, path, msg) in [
        (
            json!({"tools": {"a": "allow"}}),
            "tools.a",
            "invalid type: string \"allow\", expected a tool rule (a mapping)",
        ),
        (
            json!({"tools": {"b": {"limits": {"counter": "x"}}}}),
            "tools.b.limits",
            "invalid type: map, expected a sequence",
        ),
        (
            json!({"hide": "debug_*"}),
            "hide",
            "invalid type: string \"debug_*\", expected a sequence",
        ),
        (
            json!([1]),
            "",
            "invalid type: sequence, expected a policy (a mapping)",
        ),
    ] {
        let (p, m) = shape_error(doc);
        assert_eq!(p, path);
        assert!(m.contains(msg), "{m}");
    }
}

#[test]
fn required_fields_are_named() {
    for (doc, path, field) in [
        (
            json!({"tools": {"a": {"limits": [{"window": "second", "max": 1}]}}}),
            "tools.a.limits[0]",
            "counter",
        ),
        (
            json!({"tools": {"a": {"limits": [{"counter": "c", "max": 1}]}}}),
            "tools.a.limits[0]",
            "window",
        ),
        (
            json!({"tools": {"a": {"limits": [{"counter": "c", "window": "second"}]}}}),
            "tools.a.limits[0]",
            "max",
        ),
        (
            json!({"tools": {"a": {"deny_if": [{}]}}}),
            "tools.a.deny_if[0]",
            "conditions",
        ),
        (
            json!({"tools": {"a": {"require": [{"op": "exists"}]}}}),
            "tools.a.require[0]",
            "path",
        ),
        (
            json!({"tools": {"a": {"require": [{"path": "args.x"}]}}}),
            "tools.a.require[0]",
            "op",
        ),
    ] {
        let (p, m) = shape_error(doc);
        assert_eq!(p, path);
        assert_eq!(m, format!("missing field `{field}`"));
    }
}

#[test]
fn a_counter_has_one_definition() {
    let got = errors(json!({"tools": {
        "a": {"limits": [{"counter": "shared", "window": "minute", "max": 10, "scope": "grant"}]},
        "b": {"limits": [{"counter": "shared", "window": "hour", "max": 10, "scope": "grant"}]},
        "c": {"limits": [{"counter": "shared", "window": "minute", "max": 10, "scope": "identity"}]}
    }}));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "tools.b.limits[0]");
    assert!(
        got[0].1.contains("declared at tools.a.limits[0]"),
        "{}",
        got[0].1
    );
    // Same definition (60s is a minute, identity is an alias of grant): shared, not an error.
    let p = compile_file(json!({"tools": {
        "a": {"limits": [{"counter": "s", "window": "minute", "max": 3, "scope": "grant"}]},
        "c": {"limits": [{"counter": "s", "window": "60s", "max": 3, "scope": "identity"}]}}}))
    .unwrap();
    assert_eq!(p.counters.len(), 1);
    assert_eq!(
        p.find_rule("a").unwrap().limits[0].counter,
        p.find_rule("c").unwrap().limits[0].counter
    );
}

#[test]
fn limit_values_are_validated() {
    let got = paths(json!({"tools": {"a": {"limits": [
        {"counter": "a b", "window": "minute", "max": 1},
        {"counter": "ok", "window": "minute", "max": 0},
    ]}}}));
    assert_eq!(
        got,
        vec!["tools.a.limits[0].counter", "tools.a.limits[1].max"]
    );
    for (limit, path) in [
        (
            json!({"counter": "ok", "window": "minute", "max": -1}),
            "max",
        ),
        (
            json!({"counter": "ok", "window": "minute", "max": 1.5}),
            "max",
        ),
        (
            json!({"counter": "ok", "window": "minute", "max": 5000000000u64}),
            "max",
        ),
        (
            json!({"counter": "ok", "window": "minute", "max": "10"}),
            "max",
        ),
        (
            json!({"counter": "ok", "window": "minute", "max": 1, "scope": "cluster"}),
            "scope",
        ),
    ] {
        let (p, _) = shape_error(json!({"tools": {"a": {"limits": [limit]}}}));
        assert_eq!(p, format!("tools.a.limits[0].{path}"));
    }
}

#[test]
fn condition_values_are_validated_against_their_operator() {
    let got = errors(json!({"tools": {"a": {"deny_if": [{"conditions": [
        {"path": "args.n", "op": "gt", "value": "100"},
        {"path": "args.n", "op": "in", "value": "x"},
        {"path": "args.n", "op": "exists", "value": 1},
        {"path": "args.n", "op": "eq"},
        {"path": "args.p", "op": "path_within", "value": "relative"}
    ]}]}}}));
    let got_paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        got_paths,
        vec![
            "tools.a.deny_if[0].conditions[0].value",
            "tools.a.deny_if[0].conditions[1].value",
            "tools.a.deny_if[0].conditions[2].value",
            "tools.a.deny_if[0].conditions[3].op",
            "tools.a.deny_if[0].conditions[4].value"
        ],
        "{got:#?}"
    );
}

#[test]
fn versions_identity_and_reasons_are_validated() {
    let got = paths(json!({"version": "2", "identity": {"header": "bad header"},
                           "tools": {"a": {"reason": "x"}, "": {}, "b c": {}}}));
    for p in [
        "version",
        "identity.header",
        "tools.a.reason",
        r#"tools[""]"#,
        r#"tools["b c"]"#,
    ] {
        assert!(paths_contains(&got, p), "missing {p} in {got:?}");
    }
    let p = compile_file(json!({"version": 1, "identity": {"header": "X-Agent-Id"}})).unwrap();
    assert_eq!(p.identity.source, Identity::Header("x-agent-id".into()));
}

#[test]
fn bounds_are_enforced() {
    let many: serde_json::Map<String, Value> = (0..=bounds::TOOLS)
        .map(|i| (format!("t{i}"), json!({})))
        .collect();
    assert_eq!(paths(json!({"tools": many})), vec!["tools"]);
    let long = "x".repeat(bounds::REASON + 1);
    assert_eq!(
        paths(json!({"tools": {"a": {"action": "deny", "reason": long}}})),
        vec!["tools.a.reason"]
    );
    let conds: Vec<Value> = (0..=bounds::CONDITIONS)
        .map(|_| json!({"path": "args.a", "op": "exists"}))
        .collect();
    assert_eq!(
        paths(json!({"tools": {"a": {"deny_if": [{"conditions": conds}]}}})),
        vec!["tools.a.deny_if[0].conditions"]
    );
}

#[test]
fn exact_names_beat_globs_and_longer_globs_beat_shorter() {
    let p = compile_file(json!({"default": "allow", "tools": {
        "delete_*": {"action": "deny", "reason": "short"},
        "delete_tmp_*": {},
        "delete_tmp_important": {"action": "deny", "reason": "exact"},
        "*": {"action": "deny", "reason": "catch-all"},
        "?elete_tmp_*": {"action": "deny", "reason": "tie"}
    }}))
    .unwrap();
    assert_eq!(
        p.find_rule("delete_tmp_important").unwrap().key,
        "delete_tmp_important"
    );
    // "?elete_tmp_*" and "delete_tmp_*" have equal length: the lexically smaller wins, always.
    assert_eq!(p.find_rule("delete_tmp_x").unwrap().key, "?elete_tmp_*");
    assert_eq!(p.find_rule("delete_users").unwrap().key, "delete_*");
    assert_eq!(p.find_rule("read").unwrap().key, "*");
    assert_eq!(p.tool_label("delete_users", None), "delete_*");
    let none = compile_file(json!({"tools": {"a": {}}})).unwrap();
    assert!(none.find_rule("b").is_none());
    assert_eq!(none.tool_label("b", None), "_other");
}

#[test]
fn listable_follows_hide_action_default_and_unconditional_deny_if() {
    let p = compile_file(json!({"default": "deny", "hide": ["debug_*"], "tools": {
        "read": {},
        "debug_dump": {},
        "drop": {"action": "deny"},
        "clear": {"deny_if": [{"conditions": []}]},
        "write": {"deny_if": [{"conditions": [{"path": "args.x", "op": "exists"}]}]},
        "limited": {"limits": [{"counter": "l", "window": "second", "max": 1}]}
    }}))
    .unwrap();
    assert!(p.listable("read", None, None));
    assert!(
        p.listable("write", None, None),
        "a conditional deny_if leaves the tool callable"
    );
    assert!(
        p.listable("limited", None, None),
        "limits do not hide a tool"
    );
    assert!(
        !p.listable("debug_dump", None, None),
        "hidden even though a rule allows it"
    );
    assert!(!p.listable("debug_other", None, None));
    assert!(!p.listable("drop", None, None));
    assert!(!p.listable("clear", None, None));
    assert!(!p.listable("unnamed", None, None), "default deny");
    let open = compile_file(json!({"default": "allow"})).unwrap();
    assert!(open.listable("anything", None, None));
}

#[test]
fn yaml_policies_with_empty_rules_load() {
    let p = load_str("default: deny\ntools:\n  notebook_read:\n  run_cell: {}\n").unwrap();
    assert_eq!(p.tools.rules.len(), 2);
    assert!(p.listable("notebook_read", None, None));
    let e = load_str("tools: [").unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].path, "");
}

#[test]
fn identities_read_in_both_spellings_and_one_source_at_a_time() {
    let p = compile_file(
        json!({"identity": {"service_account": {"audiences": ["mcp-warden"]},
        "required": true}}),
    )
    .unwrap();
    assert_eq!(
        p.identity,
        IdentitySettings {
            source: Identity::ServiceAccount {
                audiences: vec!["mcp-warden".into()]
            },
            required: true
        }
    );
    let spec = compile_spec(json!({
            "identity": {"jwt": {"issuer": "https://id.example.com", "audiences": ["mcp"],
                                 "jwksFrom": "https://id.example.com/jwks"}}}))
    .unwrap();
    assert_eq!(
        spec.identity.source,
        Identity::Jwt {
            issuer: "https://id.example.com".into(),
            audiences: vec!["mcp".into()],
            jwks_from: "https://id.example.com/jwks".into()
        }
    );
    assert!(!spec.identity.required);
    assert_eq!(
        spec.document["identity"],
        json!({"jwt": {"issuer": "https://id.example.com", "audiences": ["mcp"],
                       "jwks_from": "https://id.example.com/jwks"}}),
        "the rendered file is snake_case"
    );
    let got =
        errors(json!({"identity": {"header": "x-a", "service_account": {"audiences": ["a"]}}}));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "identity");
    assert!(got[0].1.contains("one source of identity"), "{got:?}");
    let got = paths(json!({"identity": {"required": true}}));
    assert_eq!(got, vec!["identity.required"]);
    let got = paths(
        json!({"identity": {"jwt": {"issuer": "http://plain", "audiences": [],
        "jwks_from": "ftp://x"}}}),
    );
    assert_eq!(
        got,
        vec![
            "identity.jwt.issuer",
            "identity.jwt.audiences",
            "identity.jwt.jwks_from"
        ]
    );
    let (p, m) = shape_error(json!({"identity": {"service_account": {}}}));
    assert_eq!(
        (p.as_str(), m.as_str()),
        ("identity.service_account", "missing field `audiences`")
    );
    let (p, _) = shape_error(json!({"identity": {"required": "yes", "header": "x"}}));
    assert_eq!(p, "identity.required");
}

#[test]
fn grants_replace_the_base_rules_for_what_they_name() {
    let p = compile_file(json!({
    "identity": {"header": "x-agent"},
    "default": "deny",
    "all_tools": {"limits": [{"counter": "all", "window": "minute", "max": 100}]},
    "tools": {"read": {}, "write_file": {"limits": [
        {"counter": "writes", "window": "hour", "max": 30, "scope": "grant"}]},
        "drop": {"action": "deny"}},
    "grants": [
        {"subjects": ["system:serviceaccount:ci:*"], "tools": {"write_file": {"limits": [
            {"counter": "ci_writes", "window": "hour", "max": 100, "scope": "grant"}]},
            "drop": {}}},
        {"subjects": ["admin"], "default": "allow",
         "all_tools": {"limits": [{"counter": "admin_all", "window": "minute", "max": 5}]}}
    ]}))
    .unwrap();
    let ci = p.grant_for("system:serviceaccount:ci:builder");
    assert_eq!(ci, Some(0));
    assert_eq!(p.grant_for("system:serviceaccount:other:x"), None);
    assert_eq!(p.grant_path(ci), Some("grants[0]"));
    let w = p.rule_for("write_file", ci).unwrap();
    assert_eq!(w.path, "grants[0].tools.write_file");
    assert_eq!(
        w.limits
            .iter()
            .map(|l| p.counters[l.counter].name.as_str())
            .collect::<Vec<_>>(),
        ["all", "ci_writes"],
        "the base all_tools still applies to a grant without its own"
    );
    assert_eq!(
        p.rule_for("read", ci).unwrap().path,
        "tools.read",
        "unnamed: base"
    );
    assert!(p.listable("drop", ci, None) && !p.listable("drop", None, None));
    assert!(!p.listable("other", ci, None), "the base default");

    let admin = p.grant_for("admin");
    assert_eq!(admin, Some(1));
    assert_eq!(p.default_for(admin), DefaultDecision::Allow);
    assert!(p.listable("other", admin, None));
    let read = p.rule_for("read", admin).unwrap();
    assert_eq!(read.path, "tools.read");
    assert_eq!(
        read.limits
            .iter()
            .map(|l| p.counters[l.counter].name.as_str())
            .collect::<Vec<_>>(),
        ["admin_all"],
        "the grant's all_tools replaces the base's, on base rules too"
    );
    assert_eq!(p.default_rule_for(admin).limits.len(), 1);
    assert_eq!(
        p.counters[p.default_rule_for(admin).limits[0].counter].name,
        "admin_all"
    );
    assert_eq!(
        p.document["grants"][0]["tools"]["write_file"]["limits"][0]["counter"],
        "ci_writes"
    );
}

#[test]
fn grants_are_checked_with_their_paths() {
    let got = errors(json!({"grants": [{"subjects": ["a"]}]}));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "grants");
    assert!(got[0].1.contains("names no one"), "{got:?}");
    let got = paths(json!({"identity": {"header": "x"}, "grants": [
        {"subjects": []},
        {"subjects": ["b"], "tools": {"t": {"limits": [{"counter": "c", "window": "week", "max": 1}]}}},
        {"subjects": [""]},
        {"subjects": ["a"], "tools": {"t": {"limits": [{"counter": "base", "window": "hour", "max": 2}]}}}
    ], "tools": {"u": {"limits": [{"counter": "base", "window": "minute", "max": 2}]}}}));
    assert_eq!(
        got,
        vec![
            "grants[0].subjects",
            "grants[1].tools.t.limits[0].window",
            "grants[2].subjects[0]",
            "grants[3].tools.t.limits[0]",
        ]
    );
    for (grant, path) in [
        (json!({"tools": {}}), "grants[0]"),
        (json!({"subjects": ["a"], "extra": 1}), "grants[0].extra"),
        (
            json!({"subjects": ["a"], "default": "maybe"}),
            "grants[0].default",
        ),
    ] {
        let (p, _) = shape_error(json!({"identity": {"header": "x"}, "grants": [grant]}));
        assert_eq!(p, path);
    }
    let many: Vec<Value> = (0..17)
        .map(|i| json!({"subjects": [format!("s{i}")]}))
        .collect();
    assert_eq!(
        paths(json!({"identity": {"header": "x"}, "grants": many})),
        vec!["grants"]
    );
}

#[test]
fn approvals_read_in_both_forms_and_are_checked() {
    let p = compile_file(json!({"tools": {
        "clear_session": {"action": "require_approval"},
        "drop_table": {"approval": {"ttl": "15m", "uses": 3}},
        "read": {}}}))
    .unwrap();
    assert_eq!(
        p.find_rule("clear_session").unwrap().approval,
        Some(Approval::default())
    );
    assert_eq!(
        p.find_rule("drop_table").unwrap().approval,
        Some(Approval {
            ttl: std::time::Duration::from_secs(900),
            uses: 3,
            by: ApprovedBy::Approver,
        })
    );
    assert_eq!(p.find_rule("read").unwrap().approval, None);
    assert!(
        p.listable("clear_session", None, None),
        "an approved call can run"
    );
    let got = paths(json!({"tools": {
        "a": {"action": "deny", "approval": {}},
        "b": {"approval": {"ttl": "fortnight"}},
        "c": {"approval": {"uses": 0}},
        "d": {"approval": {"uses": 1001}}}}));
    assert_eq!(
        got,
        vec![
            "tools.a.approval",
            "tools.b.approval.ttl",
            "tools.c.approval.uses",
            "tools.d.approval.uses",
        ]
    );
    let (p, _) = shape_error(json!({"tools": {"d": {"approval": {"extra": 1}}}}));
    assert_eq!(p, "tools.d.approval.extra");
    let (p, m) = shape_error(json!({"tools": {"e": {"action": "maybe"}}}));
    assert_eq!(p, "tools.e.action");
    assert!(m.contains("`require_approval`"), "{m}");
}

#[test]
fn categories_and_pins_compile_in_both_spellings_and_bad_ones_name_the_field() {
    let hash = format!("sha256:{}", "0".repeat(64));
    let file = compile_file(
        json!({"categories": {"read_only": {}, "open_world": {"action": "deny"}},
                "pins": {"run": hash}, "pinning": "firstSeen"}),
    )
    .unwrap();
    assert!(file.categories.in_use());
    assert_eq!(file.pins["run"].rule, "pins.run");
    assert_eq!(file.pinning, super::Pinning::FirstSeen);
    let spec =
        compile_spec(json!({"categories": {"readOnly": {}, "openWorld": {"action": "deny"}}}))
            .unwrap();
    assert_eq!(
        spec.document["categories"],
        json!({"read_only": {}, "open_world": {"action": "deny"}}),
        "rendered in snake_case"
    );
    let errs = compile_file(json!({"pins": {"a": "md5:x", "b*": hash}})).unwrap_err();
    let text = errs.to_string();
    for want in [
        "pins.a: expected \"sha256:\"",
        "pins.b*: a pin names one tool exactly",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    for (doc, path) in [
        (
            json!({"categories": {"dangerous": {}}}),
            "categories.dangerous",
        ),
        (
            json!({"categories": {"destructive": {"action": "maybe"}}}),
            "categories.destructive.action",
        ),
        (json!({"pinning": "always"}), "pinning"),
    ] {
        assert_eq!(shape_error(doc).0, path);
    }
}

#[test]
fn every_shape_error_is_reported_at_once_one_per_list() {
    let got = errors(json!({"versoin": "1", "default": "maybe",
        "identity": {"jwt": {"issuer": 1, "audiences": ["a"], "jwksFrom": "https://x"}},
        "tools": {"a": {"limit": []}, "b": {"deny_if": [{"ondeny": "x"}, {"conditions": 1}]},
                  "c": {"action": "allow", "reason": "x"}}}));
    let got: Vec<(&str, &str)> = got.iter().map(|(p, m)| (p.as_str(), m.as_str())).collect();
    assert_eq!(
        got.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![
            "versoin",
            "default",
            "identity.jwt.issuer",
            "tools.a.limit",
            "tools.b.deny_if[0].ondeny",
            "tools.c.reason"
        ],
        "{got:#?}"
    );
    // Setting `issuer` aside leaves `jwt` without it: that is not a second error.
    assert!(got[2].1.starts_with("invalid type: integer `1`"), "{got:?}");
    assert_eq!(got[5].1, "reason is only used with action: deny");
}

#[test]
fn the_user_at_the_client_can_be_the_one_who_approves() {
    let p = compile_file(json!({"tools": {
        "clear_session": {"approval": {"by": "user"}},
        "drop_table": {"approval": {"by": "user", "ttl": "2m", "fallback": "deny"}},
        "wire": {"approval": {"by": "user", "url": "https://approve.example/{approvalId}"}},
        "plain": {"approval": {"by": "approver"}}}}))
    .unwrap();
    let user = |url: Option<&str>, deny| ApprovedBy::User {
        url: url.map(str::to_owned),
        deny_otherwise: deny,
    };
    let rule = |t: &str| p.find_rule(t).unwrap().approval.clone().unwrap();
    assert_eq!(rule("clear_session").by, user(None, false));
    assert_eq!(
        rule("clear_session").ttl,
        Approval::USER_TTL,
        "ten minutes to answer"
    );
    assert_eq!(rule("drop_table").by, user(None, true));
    assert_eq!(rule("drop_table").ttl.as_secs(), 120);
    assert_eq!(
        rule("wire").by,
        user(Some("https://approve.example/{approvalId}"), false)
    );
    assert_eq!(rule("plain"), Approval::default());
    let errs = compile_file(json!({"tools": {
        "a": {"approval": {"by": "user", "uses": 2}},
        "b": {"approval": {"url": "https://x"}},
        "c": {"approval": {"by": "user", "url": "ftp://x"}},
        "d": {"approval": {"by": "someone"}},
        "e": {"approval": {"fallback": "deny"}}}}))
    .unwrap_err()
    .to_string();
    for want in [
        "tools.a.approval.uses: a user confirms one call at a time",
        "tools.b.approval.url: url needs by: user",
        "tools.c.approval.url: url must be an http(s) URL",
        "tools.d.approval.by",
        "tools.e.approval.fallback: fallback needs by: user",
    ] {
        assert!(errs.contains(want), "{want:?} in {errs}");
    }
}
