//! The McpPolicy field reference in docs/reference.md, generated from the CRD schema (so it cannot
//! drift): every field's path, type and documentation, with an example.

use serde_json::Value;

/// An example value for every field of the spec, by path.
const EXAMPLES: &[(&str, &str)] = &[
    ("spec.version", r#""1""#),
    ("spec.podSelector", "`{matchLabels: {app: jupyter-mcp}}`"),
    ("spec.podSelector.matchLabels", "`{app: jupyter-mcp}`"),
    (
        "spec.podSelector.matchExpressions",
        "`[{key: tier, operator: In, values: [tools]}]`",
    ),
    ("spec.podSelector.matchExpressions[].key", "`tier`"),
    ("spec.podSelector.matchExpressions[].operator", "`In`"),
    (
        "spec.podSelector.matchExpressions[].values",
        "`[tools, notebooks]`",
    ),
    ("spec.upstream", "`{port: 8888, path: /mcp}`"),
    ("spec.upstream.port", "`8888`"),
    ("spec.upstream.path", "`/mcp`"),
    ("spec.isolation", "`NetworkPolicy`"),
    ("spec.default", "`deny`"),
    ("spec.denyAs", "`result`"),
    (
        "spec.identity",
        "`{serviceAccount: {audiences: [mcp-warden]}, required: true}`",
    ),
    (
        "spec.identity.serviceAccount",
        "`{audiences: [mcp-warden]}`",
    ),
    ("spec.identity.serviceAccount.audiences", "`[mcp-warden]`"),
    (
        "spec.identity.jwt",
        "`{issuer: https://id.example.com, audiences: [mcp], jwksFrom: https://id.example.com/jwks}`",
    ),
    ("spec.identity.jwt.issuer", "`https://id.example.com`"),
    ("spec.identity.jwt.audiences", "`[mcp]`"),
    ("spec.identity.jwt.jwksFrom", "`https://id.example.com/jwks`"),
    ("spec.identity.header", "`X-Agent-Id`"),
    ("spec.identity.required", "`true`"),
    (
        "spec.grants",
        "`[{subjects: [system:serviceaccount:ci:agent], tools: {write_file: {}}}]`",
    ),
    (
        "spec.grants[].subjects",
        "`[system:serviceaccount:agents:*]`",
    ),
    ("spec.grants[].default", "`allow`"),
    (
        "spec.grants[].allTools",
        "`{limits: [{counter: ci_all, window: minute, max: 1200}]}`",
    ),
    (
        "spec.grants[].tools",
        "`{write_file: {limits: [{counter: ci_writes, window: hour, max: 100, scope: grant}]}}`",
    ),
    ("spec.transport", "`{allowedHosts: [mcp.example.com]}`"),
    ("spec.transport.allowedHosts", "`[mcp.example.com]`"),
    (
        "spec.transport.allowedOrigins",
        "`[https://console.example.com]`",
    ),
    ("spec.hide", "`[debug_*, admin_*]`"),
    (
        "spec.categories",
        "`{destructive: {action: deny}, readOnly: {}}`",
    ),
    (
        "spec.categories.destructive",
        "`{action: deny, reason: Destructive tools are off here}`",
    ),
    ("spec.categories.readOnly", "`{}`"),
    (
        "spec.categories.openWorld",
        "`{limits: [{counter: outside, window: minute, max: 30}]}`",
    ),
    ("spec.categories.idempotent", "`{}`"),
    ("spec.pins", "`{run_python_code: \"sha256:5b0c…\"}`"),
    ("spec.pins.<tool>", "`\"sha256:5b0c…\"`"),
    ("spec.pinning", "`firstSeen`"),
    (
        "spec.allTools",
        "`{limits: [{counter: all, window: minute, max: 600}]}`",
    ),
    (
        "spec.allTools.limits",
        "`[{counter: all, window: minute, max: 600}]`",
    ),
    ("spec.allTools.limits[].counter", "`all`"),
    ("spec.allTools.limits[].window", "`minute`, `90s`"),
    ("spec.allTools.limits[].max", "`600`"),
    ("spec.allTools.limits[].scope", "`pod`"),
    ("spec.tools", "`{run_cell: {}, delete_*: {action: deny}}`"),
    ("spec.tools.<tool>.action", "`deny`, `require_approval`"),
    ("spec.tools.<tool>.approval", "`{ttl: 1h, uses: 1}`"),
    ("spec.tools.<tool>.approval.ttl", "`1h`"),
    ("spec.tools.<tool>.approval.uses", "`1`"),
    ("spec.tools.<tool>.approval.by", "`user`"),
    (
        "spec.tools.<tool>.approval.url",
        "`https://approvals.example.com/{approvalId}`",
    ),
    ("spec.tools.<tool>.approval.fallback", "`deny`"),
    ("spec.tools.<tool>.reason", "`Deleting cells is disabled`"),
    (
        "spec.tools.<tool>.limits",
        "`[{counter: run_cell_rate, window: minute, max: 10, scope: grant}]`",
    ),
    ("spec.tools.<tool>.limits[].counter", "`run_cell_rate`"),
    ("spec.tools.<tool>.limits[].window", "`minute`, `15m`"),
    ("spec.tools.<tool>.limits[].max", "`10`"),
    ("spec.tools.<tool>.limits[].scope", "`grant`"),
    (
        "spec.tools.<tool>.require",
        "`[{path: args.path, op: path_within, value: /workspace}]`",
    ),
    (
        "spec.tools.<tool>.require[].path",
        "`args.path`, `args.cells[*].id`",
    ),
    ("spec.tools.<tool>.require[].op", "`path_within`"),
    ("spec.tools.<tool>.require[].value", "`/workspace`"),
    (
        "spec.tools.<tool>.require[].reason",
        "`Only files under /workspace`",
    ),
    (
        "spec.tools.<tool>.denyIf",
        "`[{conditions: [{path: args.code, op: regex, value: 'rm -rf'}], onDeny: No}]`",
    ),
    (
        "spec.tools.<tool>.denyIf[].conditions",
        "`[{path: args.timeout, op: gt, value: 120}]`",
    ),
    (
        "spec.tools.<tool>.denyIf[].conditions[].path",
        "`args.code`",
    ),
    ("spec.tools.<tool>.denyIf[].conditions[].op", "`regex`"),
    (
        "spec.tools.<tool>.denyIf[].conditions[].value",
        "`shutil\\.rmtree`",
    ),
    (
        "spec.tools.<tool>.denyIf[].onDeny",
        "`Destructive code is not allowed`",
    ),
];

fn kind(node: &Value) -> String {
    let t = node["type"].as_str().unwrap_or("any");
    match t {
        "array" => format!("[]{}", node["items"]["type"].as_str().unwrap_or("object")),
        "object" if node["additionalProperties"].is_object() && node["properties"].is_null() => {
            "map".into()
        }
        "string" if node["enum"].is_array() => {
            let vals: Vec<&str> = node["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            format!("enum: {}", vals.join(", "))
        }
        other => other.into(),
    }
}

fn walk(node: &Value, path: &str, out: &mut Vec<(String, String, String)>) {
    if let Some(props) = node["properties"].as_object() {
        for (k, v) in props {
            let p = format!("{path}.{k}");
            let doc = v["description"]
                .as_str()
                .unwrap_or("")
                .replace('\n', " ")
                .replace('|', "\\|");
            out.push((p.clone(), kind(v), doc));
            // A grant's and a category's rules have the fields of the base rules, documented
            // there.
            if p != "spec.grants[].tools"
                && p != "spec.grants[].allTools"
                && !p.starts_with("spec.categories.")
            {
                walk(v, &p, out);
            }
        }
    }
    if node["type"] == "array" {
        walk(&node["items"], &format!("{path}[]"), out);
    }
    if node["additionalProperties"].is_object() {
        walk(
            &node["additionalProperties"],
            &format!("{path}.<tool>"),
            out,
        );
    }
}

/// Every spec field: (path, type, documentation), in schema order.
pub fn fields() -> Vec<(String, String, String)> {
    let crd: Value = serde_yaml::from_str(&super::crd_yaml()).expect("the CRD is YAML");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut out = Vec::new();
    walk(spec, "spec", &mut out);
    out
}

/// The reference table (Markdown), as docs/reference.md carries it between its markers.
pub fn markdown() -> String {
    let mut s = String::from("| field | type | example | meaning |\n|---|---|---|---|\n");
    for (path, ty, doc) in fields() {
        let example = EXAMPLES
            .iter()
            .find(|(p, _)| *p == path)
            .map_or("", |(_, e)| e);
        s.push_str(&format!("| `{path}` | {ty} | {example} | {doc} |\n"));
    }
    s
}

/// Spec fields with no example (a new field needs one).
pub fn missing_examples() -> Vec<String> {
    fields()
        .into_iter()
        .map(|(p, _, _)| p)
        .filter(|p| !EXAMPLES.iter().any(|(e, _)| e == p))
        .collect()
}
