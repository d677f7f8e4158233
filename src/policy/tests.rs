use super::*;
use serde_json::json;

fn compile_file(v: Value) -> Result<Policy, PolicyErrors> {
    compile(&v, Flavor::File, "")
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
fn spec_flavor_drops_placement_and_adds_the_name() {
    let spec = json!({"podSelector": {"matchLabels": {"app": "j"}}, "upstream": {"port": 8888, "path": "/mcp"},
                      "isolation": "None", "default": "deny", "tools": {"a": {}}});
    let p = compile(&spec, Flavor::Spec, "spec").unwrap();
    assert_eq!(
        normalize(&spec, Flavor::Spec, Some("ns/p")),
        json!({"default": "deny", "tools": {"a": {}}, "name": "ns/p"})
    );
    assert!(p.document.get("podSelector").is_none());
    // The rendered document is itself a valid policy file.
    compile_file(normalize(&spec, Flavor::Spec, Some("ns/p"))).unwrap();
    // Placement fields are not part of a policy file.
    assert_eq!(paths(json!({"upstream": {"port": 1}})), vec!["upstream"]);
}

#[test]
fn spec_placement_errors_are_reported() {
    let spec = json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]},
                      "upstream": {"port": 70000, "path": "mcp"}, "isolation": "Strict"});
    let e = compile(&spec, Flavor::Spec, "spec").unwrap_err();
    let got: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        got,
        vec![
            "spec.podSelector.matchExpressions[0].operator",
            "spec.upstream.port",
            "spec.upstream.path",
            "spec.isolation"
        ]
    );
    let e = compile(&json!({}), Flavor::Spec, "spec").unwrap_err();
    assert_eq!(
        e.0.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        vec!["spec.podSelector", "spec.upstream"]
    );
}

#[test]
fn every_error_is_reported_at_once_with_its_path() {
    let got = errors(json!({
        "default": "maybe",
        "versoin": "1",
        "tools": {
            "write_file": {
                "deny_if": [{"conditions": [
                    {"path": "args.content", "op": "contains", "value": "rm"},
                    {"path": "args.content", "op": "startswith", "value": "x"}
                ]}],
                "limits": [{"counter": "w", "window": "fortnight", "max": 0}]
            },
            "run": {"require": [{"path": "arg.x", "op": "regex", "value": "("}]}
        }
    }));
    let expect = [
        ("versoin", "unknown field"),
        ("default", "unknown value \"maybe\""),
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
        (
            "tools.write_file.deny_if[0].conditions[1].op",
            "unknown operator \"startswith\" (expected one of: eq, neq",
        ),
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
fn unknown_fields_are_errors_at_every_level() {
    let got = paths(json!({
        "identity": {"header": "x-agent-id", "hash": true},
        "all_tools": {"limits": [], "extra": 1},
        "tools": {"a": {"limit": []}, "b": {"deny_if": [{"conditions": [{"path": "args.x", "op": "exists", "vaule": 1}], "ondeny": "x"}]},
                  "c": {"require": [{"path": "args.x", "op": "exists", "why": "x"}]},
                  "d": {"limits": [{"counter": "c", "window": "second", "max": 1, "burst": 2}]}}
    }));
    for p in [
        "identity.hash",
        "all_tools.extra",
        "tools.a.limit",
        "tools.b.deny_if[0].ondeny",
        "tools.b.deny_if[0].conditions[0].vaule",
        "tools.c.require[0].why",
        "tools.d.limits[0].burst",
    ] {
        assert!(paths_contains(&got, p), "missing {p} in {got:?}");
    }
}

fn paths_contains(got: &[String], p: &str) -> bool {
    got.iter().any(|g| g == p)
}

#[test]
fn type_errors_name_what_was_found() {
    let got = errors(
        json!({"tools": {"a": "allow", "b": {"limits": {"counter": "x"}}}, "hide": "debug_*"}),
    );
    assert!(
        got.contains(&(
            "tools.a".into(),
            "expected a mapping, found a string".into()
        )),
        "{got:?}"
    );
    assert!(
        got.contains(&(
            "tools.b.limits".into(),
            "expected a list, found a mapping".into()
        )),
        "{got:?}"
    );
    assert!(
        got.contains(&("hide".into(), "expected a list, found a string".into())),
        "{got:?}"
    );
    assert_eq!(
        errors(json!([1])),
        vec![(String::new(), "expected a mapping, found a list".into())]
    );
}

#[test]
fn required_fields_are_named() {
    let got = paths(json!({"tools": {"a": {"limits": [{}], "deny_if": [{}], "require": [{}]}}}));
    for p in [
        "tools.a.limits[0].counter",
        "tools.a.limits[0].window",
        "tools.a.limits[0].max",
        "tools.a.deny_if[0].conditions",
        "tools.a.require[0].path",
        "tools.a.require[0].op",
    ] {
        assert!(paths_contains(&got, p), "missing {p} in {got:?}");
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
    let got = errors(json!({"tools": {"a": {"limits": [
        {"counter": "a b", "window": "minute", "max": 1},
        {"counter": "ok", "window": "minute", "max": -1},
        {"counter": "ok2", "window": "minute", "max": 1.5},
        {"counter": "ok3", "window": "minute", "max": 5000000000u64},
        {"counter": "ok4", "window": "minute", "max": "10"},
        {"counter": "ok5", "window": "minute", "max": 1, "scope": "cluster"}
    ]}}}));
    let got_paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        got_paths,
        vec![
            "tools.a.limits[0].counter",
            "tools.a.limits[1].max",
            "tools.a.limits[2].max",
            "tools.a.limits[3].max",
            "tools.a.limits[4].max",
            "tools.a.limits[5].scope"
        ]
    );
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
    let spec = compile(
        &json!({"podSelector": {}, "upstream": {"port": 8888},
            "identity": {"jwt": {"issuer": "https://id.example.com", "audiences": ["mcp"],
                                 "jwksFrom": "https://id.example.com/jwks"}}}),
        Flavor::Spec,
        "spec",
    )
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
    let got = paths(json!({"identity": {"service_account": {}}}));
    assert_eq!(got, vec!["identity.service_account.audiences"]);
    let got = paths(json!({"identity": {"required": "yes", "header": "x"}}));
    assert_eq!(got, vec!["identity.required"]);
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
        {"tools": {"t": {"limits": [{"counter": "c", "window": "week", "max": 1}]}}},
        {"subjects": [""], "default": "maybe", "extra": 1},
        {"subjects": ["a"], "tools": {"t": {"limits": [{"counter": "base", "window": "hour", "max": 2}]}}}
    ], "tools": {"u": {"limits": [{"counter": "base", "window": "minute", "max": 2}]}}}));
    assert_eq!(
        got,
        vec![
            "grants[0].subjects",
            "grants[1].subjects",
            "grants[1].tools.t.limits[0].window",
            "grants[2].extra",
            "grants[2].subjects[0]",
            "grants[2].default",
            "grants[3].tools.t.limits[0]",
        ]
    );
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
            uses: 3
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
        "d": {"approval": {"uses": 1001, "extra": 1}},
        "e": {"action": "maybe"}}}));
    assert_eq!(
        got,
        vec![
            "tools.a.approval",
            "tools.b.approval.ttl",
            "tools.c.approval.uses",
            "tools.d.approval.extra",
            "tools.d.approval.uses",
            "tools.e.action"
        ]
    );
}

#[test]
fn categories_and_pins_compile_in_both_spellings_and_bad_ones_name_the_field() {
    let hash = format!("sha256:{}", "0".repeat(64));
    let file = compile(
        &json!({"categories": {"read_only": {}, "open_world": {"action": "deny"}},
                "pins": {"run": hash}, "pinning": "firstSeen"}),
        Flavor::File,
        "",
    )
    .unwrap();
    assert!(file.categories.in_use());
    assert_eq!(file.pins["run"].rule, "pins.run");
    assert_eq!(file.pinning, super::Pinning::FirstSeen);
    let spec = compile(
        &json!({"podSelector": {}, "upstream": {"port": 8888},
                "categories": {"readOnly": {}, "openWorld": {"action": "deny"}}}),
        Flavor::Spec,
        "spec",
    )
    .unwrap();
    assert_eq!(
        spec.document["categories"],
        json!({"read_only": {}, "open_world": {"action": "deny"}}),
        "rendered in snake_case"
    );
    let errs = compile(
        &json!({"categories": {"dangerous": {}, "destructive": {"action": "maybe"}},
                "pins": {"a": "md5:x", "b*": hash},
                "pinning": "always"}),
        Flavor::File,
        "",
    )
    .unwrap_err();
    let text = errs.to_string();
    for want in [
        "categories.dangerous: unknown field",
        "categories.destructive.action",
        "pins.a: expected \"sha256:\"",
        "pins.b*: a pin names one tool exactly",
        "pinning",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
}
