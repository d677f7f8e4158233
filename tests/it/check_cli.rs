//! `mcp-warden check` as a user runs it: the real binary, real files, exit codes and output.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-warden"))
        .arg("check")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap();
    (out.status.code().unwrap(), text)
}

#[test]
fn examples_are_valid() {
    let (code, out) = check(&[
        "examples/policies/jupyter-mcp.yaml",
        "examples/policies/claude-code-notebook-mcp.yaml",
        "examples/policies/mcp-python-interpreter.yaml",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(": ok: ").count(), 3, "{out}");
    assert!(out.contains("mcp-python-interpreter.yaml (document 1): ok: policy: default deny, 9 tool rules, 4 counters, 0 hidden patterns, 1 grant"), "{out}");
}

#[test]
fn a_broken_policy_reports_every_error_with_file_document_and_path() {
    let (code, out) = check(&["tests/fixtures/broken-policy.yaml"]);
    assert_eq!(code, 1, "{out}");
    let at = "tests/fixtures/broken-policy.yaml (document 1): ";
    let expected = [
        "identity.header: \"x agent\" is not a valid HTTP header name",
        "tools.write_file.deny_if[0].conditions[1].op: unknown variant `startswith`, expected one of `eq`, `neq`, `in`, `not_in`, `contains`, `prefix`, `suffix`, `regex`, `gt`, `gte`, `lt`, `lte`, `exists`, `not_exists`, `path_within`",
        "tools.write_file.limits[0].window: unknown window \"fortnight\"",
        "tools.write_file.limits[0].max: max must be a whole number from 1",
        "tools.run_cell.require[0].value: invalid regex: unclosed group",
        "tools.run_python.limits[0]: counter \"cells\" is declared at tools.run_cell.limits[0] with window minute, scope policy, max 5; here with window hour",
        "tools.read_file.alow: unknown field `alow`, expected one of `action`, `approval`, `reason`, `limits`, `require`, `denyIf`, `deny_if`",
    ];
    for e in expected {
        assert!(
            out.contains(&format!("{at}{e}")),
            "missing {e:?} in:\n{out}"
        );
    }
    assert_eq!(
        out.lines().count(),
        expected.len(),
        "one line per error:\n{out}"
    );
}

#[test]
fn manifests_are_checked_per_document_and_other_kinds_skipped() {
    let (code, out) = check(&["tests/fixtures/mcppolicies.yaml"]);
    assert_eq!(code, 1, "{out}");
    let f = "tests/fixtures/mcppolicies.yaml";
    assert!(
        out.contains(&format!(
            "{f} (document 1): ok: notebooks/jupyter: default deny, 2 tool rules"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{f} (document 2): skipped (Deployment is not an McpPolicy)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{f} (document 3): spec.upstream.port: port must be 1 to 65535, found 0"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{f} (document 3): spec.allTools.limits[0].scope: unknown variant `everyone`, expected one of `policy`, `pod`, `grant`, `identity`, `session`"
        )),
        "{out}"
    );
}

#[test]
fn explain_shows_the_decision_and_why() {
    let p = "examples/policies/mcp-python-interpreter.yaml";
    let (code, out) = check(&[p, "--explain", "clear_session"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("decision: approval_required"), "{out}");
    assert!(out.contains("rule:     tools.clear_session\n"), "{out}");
    assert!(
        out.contains("needs a person's approval of this exact call"),
        "{out}"
    );
    assert!(out.contains("listed:   yes"), "{out}");
    let (_, out) = check(&[p, "--explain", "install_package"]);
    assert!(out.contains("decision: deny"), "{out}");
    assert!(
        out.contains("reason:   Package installs are disabled in this namespace"),
        "{out}"
    );
    assert!(out.contains("listed:   no"), "{out}");

    let (_, out) = check(&[
        p,
        "--explain",
        "write_file",
        "--args",
        r#"{"file_path":"a","content":"x"}"#,
    ]);
    assert!(out.contains("decision: allow"), "{out}");
    assert!(out.contains("counts:   write_file_rate (30 per hour, scope grant, declared at tools.write_file.limits[0])"), "{out}");

    let (_, out) = check(&[p, "--explain", "write_file", "--calls", "31"]);
    assert!(out.contains("30 of the first 30 allowed"), "{out}");
    assert!(out.contains("decision: rate_limited"), "{out}");

    let (_, out) = check(&[
        p,
        "--explain",
        "run_python_code",
        "--args",
        r#"{"code":"x","timeout":"600"}"#,
    ]);
    assert!(
        out.contains("reason:   Timeouts above 120 s are not allowed"),
        "{out}"
    );
}

#[test]
fn explain_with_an_identity_shows_the_grant_that_applied() {
    let p = "examples/policies/mcp-python-interpreter.yaml";
    let ci = "system:serviceaccount:ci:ci-agent";
    let (code, out) = check(&[p, "--explain", "write_file", "--identity", ci]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("caller:   {ci}, under grants[0]")),
        "{out}"
    );
    assert!(
        out.contains("rule:     grants[0].tools.write_file"),
        "{out}"
    );
    assert!(out.contains("counts:   ci_write_file_rate (100 per hour, scope grant, declared at grants[0].tools.write_file.limits[0])"), "{out}");
    let (_, out) = check(&[
        p,
        "--explain",
        "write_file",
        "--identity",
        ci,
        "--calls",
        "101",
    ]);
    assert!(out.contains("100 of the first 100 allowed"), "{out}");
    let (_, out) = check(&[
        p,
        "--explain",
        "write_file",
        "--identity",
        "system:serviceaccount:agents:helper",
    ]);
    assert!(
        out.contains("no grant names it: the base rules apply"),
        "{out}"
    );
    assert!(out.contains("rule:     tools.write_file"), "{out}");
    let (_, out) = check(&[p, "--explain", "write_file"]);
    assert!(out.contains("caller:   anonymous (no --identity)"), "{out}");
}

#[test]
fn bad_invocations_fail_clearly() {
    let (code, out) = check(&["does-not-exist.yaml"]);
    assert_eq!(code, 1);
    assert!(out.contains("does-not-exist.yaml: cannot read"), "{out}");
    let (code, out) = check(&[
        "examples/policies/jupyter-mcp.yaml",
        "--explain",
        "x",
        "--args",
        "[1]",
    ]);
    assert_eq!(code, 2);
    assert!(out.contains("--args must be a JSON object"), "{out}");
    let dir = std::env::temp_dir().join(format!("mcp-warden-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"default": "deny", "default": "allow"}"#).unwrap();
    let (code, out) = check(&[bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains("duplicate key \\\"default\\\"") || out.contains("duplicate key \"default\""),
        "{out}"
    );
}
