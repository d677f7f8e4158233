use super::*;
use crate::policy::bounds;
use kube::core::cel::Validator;
use kube::CustomResourceExt;
use serde_json::json;

fn schema() -> Value {
    let crd = McpPolicy::crd();
    let s = crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    serde_json::to_value(s).unwrap()
}

fn object(spec: Value) -> Value {
    json!({"apiVersion": "mcpwarden.dev/v1alpha1", "kind": "McpPolicy",
           "metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
}

fn spec_with_tools(tools: Value) -> Value {
    json!({"podSelector": {"matchLabels": {"app": "jupyter-mcp"}}, "upstream": {"port": 8888}, "tools": tools})
}

/// The CEL messages the API server would answer for `obj`.
fn cel_errors(obj: &Value) -> Vec<String> {
    match Validator::new().validate(&schema(), obj, None) {
        Ok(()) => vec![],
        Err(errs) => errs.into_iter().map(|e| e.to_string()).collect(),
    }
}

/// Walks the schema and names every string, list or map without an upper bound.
fn unbounded(v: &Value, path: &str, out: &mut Vec<String>) {
    let Some(o) = v.as_object() else { return };
    if o.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) {
        return; // a condition's operand: any JSON value, bounded by the request size
    }
    match o.get("type").and_then(Value::as_str) {
        Some("string")
            if !o.contains_key("maxLength")
                && !o.contains_key("enum")
                && o.get("format").is_none() =>
        {
            out.push(format!("{path}: string without maxLength"))
        }
        Some("array") if !o.contains_key("maxItems") => {
            out.push(format!("{path}: list without maxItems"))
        }
        Some("object")
            if o.contains_key("additionalProperties") && !o.contains_key("maxProperties") =>
        {
            out.push(format!("{path}: map without maxProperties"))
        }
        _ => {}
    }
    if let Some(props) = o.get("properties").and_then(Value::as_object) {
        for (k, child) in props {
            if path.is_empty() && k == "metadata" {
                continue; // the API server's own
            }
            unbounded(child, &format!("{path}.{k}"), out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = o.get(key) {
            unbounded(child, &format!("{path}[{key}]"), out);
        }
    }
}

#[test]
fn the_schema_is_bounded_everywhere() {
    let mut out = Vec::new();
    unbounded(&schema(), "", &mut out);
    assert!(
        out.is_empty(),
        "unbounded schema nodes:\n{}",
        out.join("\n")
    );
}

#[test]
fn the_schema_uses_the_compilers_bounds() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    assert_eq!(spec["tools"]["maxProperties"], json!(bounds::TOOLS));
    assert_eq!(spec["hide"]["maxItems"], json!(bounds::HIDE));
    let rule = &spec["tools"]["additionalProperties"]["properties"];
    assert_eq!(rule["limits"]["maxItems"], json!(bounds::LIMITS));
    assert_eq!(rule["require"]["maxItems"], json!(bounds::REQUIRE));
    assert_eq!(rule["denyIf"]["maxItems"], json!(bounds::DENY_IF));
    assert_eq!(
        rule["denyIf"]["items"]["properties"]["conditions"]["maxItems"],
        json!(bounds::CONDITIONS)
    );
    assert_eq!(rule["reason"]["maxLength"], json!(bounds::REASON));
    let names_rule = spec["tools"]["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .unwrap();
    assert!(
        names_rule.contains(&format!("size(name) <= {}", bounds::TOOL_NAME)),
        "{names_rule}"
    );
    assert_eq!(
        spec["allTools"]["properties"]["limits"]["items"]["properties"]["window"]["pattern"],
        json!(crate::policy::window::WINDOW_PATTERN)
    );
}

#[test]
fn enums_cover_the_closed_sets() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    let op = &spec["tools"]["additionalProperties"]["properties"]["require"]["items"]["properties"]
        ["op"]["enum"];
    let ops: Vec<&str> = op
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        ops,
        crate::policy::condition::OPS,
        "the schema's operators are the compiler's"
    );
    assert_eq!(spec["default"]["enum"], json!(["allow", "deny", null]));
    assert_eq!(
        spec["isolation"]["enum"],
        json!(["NetworkPolicy", "None", null])
    );
}

#[test]
fn cel_rules_refuse_what_crosses_fields_with_the_field_named() {
    let ok = object(spec_with_tools(json!({
        "write_file": {"denyIf": [{"conditions": [{"path": "args.content", "op": "contains", "value": "rm -rf"}], "onDeny": "no"}],
                       "require": [{"path": "args.path", "op": "exists"}]},
        "delete_*": {"action": "deny", "reason": "Disabled"}
    })));
    assert_eq!(cel_errors(&ok), Vec::<String>::new());

    let cases = [
        (
            json!({"a": {"reason": "why"}}),
            "reason is only used with action: deny",
        ),
        (
            json!({"a": {"action": "allow", "reason": "why"}}),
            "reason is only used with action: deny",
        ),
        (
            json!({"bad name": {}}),
            "tool names are 1 to 128 characters with no spaces",
        ),
        (
            json!({"a": {"action": "deny", "approval": {"uses": 2}}}),
            "a denied tool cannot also require approval",
        ),
        (
            json!({"x".repeat(129): {}}),
            "tool names are 1 to 128 characters with no spaces",
        ),
    ];
    for (tools, message) in cases {
        let errs = cel_errors(&object(spec_with_tools(tools.clone())));
        assert!(
            errs.iter().any(|e| e.contains(message)),
            "{tools}: expected {message:?}, got {errs:?}"
        );
    }
    let bad_selector = object(
        json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]},
                                     "upstream": {"port": 1}}),
    );
    let errs = cel_errors(&bad_selector);
    assert!(
        errs.iter().any(|e| e.contains("In and NotIn need values")),
        "{errs:?}"
    );
}

#[test]
fn cel_rules_keep_identity_and_grants_coherent() {
    let with = |extra: Value| {
        let mut spec = spec_with_tools(json!({"write_file": {}}));
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let obj = object(spec);
        // The compiler agrees with the API server on every case.
        let compiled = McpPolicySpec::check(&obj["spec"]).is_ok();
        (cel_errors(&obj), compiled)
    };
    let grant = json!([{"subjects": ["system:serviceaccount:ci:*"],
                        "tools": {"write_file": {"limits": [
                            {"counter": "ci", "window": "hour", "max": 100, "scope": "grant"}]}}}]);
    let (errs, compiled) = with(
        json!({"identity": {"serviceAccount": {"audiences": ["mcp-warden"]},
                                                    "required": true},
                                       "grants": grant}),
    );
    assert_eq!((errs, compiled), (Vec::<String>::new(), true));
    let cases = [
        (json!({"grants": grant}), "grants need an identity"),
        (
            json!({"identity": {"header": "x", "serviceAccount": {"audiences": ["a"]}}}),
            "exactly one source of identity",
        ),
        (
            json!({"identity": {"required": true}}),
            "exactly one source of identity",
        ),
        (
            json!({"grants": [{"subjects": ["a"], "tools": {"bad name": {}}}],
                   "identity": {"header": "x"}}),
            "tool names are 1 to 128 characters",
        ),
    ];
    for (extra, message) in cases {
        let (errs, compiled) = with(extra.clone());
        assert!(
            errs.iter().any(|e| e.contains(message)),
            "{extra}: expected {message:?}, got {errs:?}"
        );
        assert!(!compiled, "{extra}: the compiler must refuse it too");
    }
}

/// The API server compiles a rule against the schema's types, and a field with no `type` (our
/// condition `value`, any JSON) is invisible to CEL there: a rule naming it makes the whole CRD
/// invalid (found against a real kube-apiserver; kube's evaluator accepts such rules).
#[test]
fn no_cel_rule_names_a_field_without_a_type() {
    fn walk(node: &Value, at: &str, bad: &mut Vec<String>) {
        let Some(obj) = node.as_object() else { return };
        if let (Some(rules), Some(props)) = (
            obj.get("x-kubernetes-validations")
                .and_then(Value::as_array),
            obj.get("properties").and_then(Value::as_object),
        ) {
            for (name, prop) in props {
                let typed = prop.get("type").is_some()
                    || prop.get("x-kubernetes-int-or-string") == Some(&json!(true));
                for rule in rules {
                    let text = rule["rule"].as_str().unwrap_or_default();
                    if !typed && text.contains(&format!("self.{name}")) {
                        bad.push(format!("{at}: {text}"));
                    }
                }
            }
        }
        for (key, child) in obj {
            match child {
                Value::Object(_) => walk(child, &format!("{at}.{key}"), bad),
                Value::Array(items) => {
                    for item in items {
                        walk(item, &format!("{at}.{key}[]"), bad);
                    }
                }
                _ => {}
            }
        }
    }
    let mut bad = Vec::new();
    walk(&schema(), "openAPIV3Schema", &mut bad);
    assert_eq!(bad, Vec::<String>::new());
}

#[test]
fn a_value_missing_or_extra_is_refused_by_the_compiler_with_its_path() {
    for (tools, path, message) in [
        (
            json!({"a": {"require": [{"path": "args.x", "op": "exists", "value": 1}]}}),
            "spec.tools.a.require[0].value",
            "takes no value",
        ),
        (
            json!({"a": {"denyIf": [{"conditions": [{"path": "args.x", "op": "eq"}]}]}}),
            "spec.tools.a.denyIf[0].conditions[0].op",
            "needs a value",
        ),
    ] {
        let spec: McpPolicySpec = serde_json::from_value(spec_with_tools(tools)).unwrap();
        let e = spec.compile().unwrap_err();
        assert_eq!(e.0[0].path, path);
        assert!(e.0[0].message.contains(message), "{}", e.0[0].message);
    }
}

#[test]
fn the_spec_compiles_with_the_sidecars_code_and_spec_paths() {
    let spec: McpPolicySpec = serde_json::from_value(spec_with_tools(json!({
        "run_cell": {"denyIf": [{"conditions": [{"path": "args.code", "op": "regex", "value": "(unclosed"}]}]}
    })))
    .unwrap();
    let e = spec.compile().unwrap_err();
    assert_eq!(
        e.0[0].path,
        "spec.tools.run_cell.denyIf[0].conditions[0].value"
    );
    assert!(e.0[0].message.contains("invalid regex"));
}

#[test]
fn render_produces_the_policy_file_the_sidecar_loads() {
    let spec: McpPolicySpec = serde_json::from_value(json!({
        "podSelector": {"matchLabels": {"app": "python-interpreter"}},
        "upstream": {"port": 8000, "path": "/mcp"},
        "isolation": "NetworkPolicy",
        "default": "deny",
        "allTools": {"limits": [{"counter": "all", "window": "minute", "max": 600}]},
        "tools": {
            "clear_session": {"denyIf": [{"conditions": [], "onDeny": "Blocked by default. Requires approval."}]},
            "write_file": {"limits": [{"counter": "write_file_rate", "window": "hour", "max": 30, "scope": "grant"}]}
        }
    }))
    .unwrap();
    let r = render("ml", "interpreter", &spec).unwrap();
    let doc: Value = serde_json::from_slice(&r.json).unwrap();
    assert_eq!(doc["name"], "ml/interpreter");
    assert!(
        doc.get("podSelector").is_none()
            && doc.get("upstream").is_none()
            && doc.get("isolation").is_none()
    );
    assert_eq!(
        doc["all_tools"]["limits"][0]["counter"], "all",
        "snake_case, as policy files are written"
    );
    assert_eq!(
        doc["tools"]["clear_session"]["deny_if"][0]["on_deny"],
        "Blocked by default. Requires approval."
    );
    assert_eq!(r.tool_count, 2);
    assert_eq!(r.hash, crate::policy::sha256_hex(&r.json));
    // The sidecar's strict parser accepts it, and decides the same way.
    let p = crate::policy::load_str(std::str::from_utf8(&r.json).unwrap()).unwrap();
    assert_eq!(p.name.as_deref(), Some("ml/interpreter"));
    assert!(!p.listable("clear_session", None, None));
    // Rendering is deterministic: the same spec, the same bytes.
    assert_eq!(render("ml", "interpreter", &spec).unwrap(), r);
    assert!(render("ml", "other", &spec).unwrap().hash != r.hash);
}

#[test]
fn example_manifests_deserialize_into_the_typed_spec() {
    let f = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mcppolicies.yaml"
    );
    let docs =
        crate::policy::source::parse_documents(&std::fs::read_to_string(f).unwrap()).unwrap();
    let valid: McpPolicy = serde_json::from_value(docs[0].clone()).unwrap();
    assert_eq!(valid.spec.upstream.port, 8888);
    assert_eq!(cel_errors(&docs[0]), Vec::<String>::new());
    valid.spec.compile().unwrap();
}

#[test]
fn a_spec_is_checked_whole_placement_and_policy_at_once() {
    let spec = json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]},
                      "upstream": {"port": 0, "path": "mcp"}, "isolation": "Strict",
                      "allTools": {"limits": [{"counter": "a b", "window": "minute", "max": 1}]},
                      "tools": {"w": {"denyIf": [{"conditions": [], "onDeny": 3}]}}});
    let e = McpPolicySpec::check(&spec).unwrap_err();
    let got: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        got,
        vec![
            "spec.podSelector.matchExpressions[0].operator",
            "spec.isolation",
            "spec.tools.w.denyIf[0].onDeny",
            "spec.allTools.limits[0].counter",
        ],
        "{e}"
    );
    let spec = json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
                      "upstream": {"port": 0, "path": "mcp"}, "tools": {"w": {}}});
    let e = McpPolicySpec::check(&spec).unwrap_err();
    assert_eq!(
        e.0.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        vec![
            "spec.upstream.port",
            "spec.upstream.path",
            "spec.podSelector.matchExpressions[0].values"
        ],
        "{e}"
    );
    let e = McpPolicySpec::check(&json!({})).unwrap_err();
    assert_eq!(
        e.0.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        vec!["spec.podSelector", "spec.upstream"]
    );
    let (spec, policy) =
        McpPolicySpec::check(&json!({"podSelector": {}, "upstream": {"port": 8888},
        "isolation": "None", "tools": {"a": {}}}))
        .unwrap();
    assert_eq!(spec.isolation(), Isolation::None);
    assert!(policy.find_rule("a").is_some());
    assert!(
        policy.document.get("podSelector").is_none(),
        "placement is not the policy"
    );
}
