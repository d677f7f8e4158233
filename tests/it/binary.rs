//! The real binary, as a user and a kubelet run it: the demo, and the sidecar with its audit log
//! and its exit on SIGTERM.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-warden");

#[test]
fn the_demo_shows_every_part_of_the_main_job() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "the server offers 10 tools; the agent sees 9",
        "removed (never callable): install_package\n",
        "the sidecar answers resultType \"input_required\" with a sealed requestState",
        "     | An agent asks to call the tool \"run_python_file\" with these arguments:",
        "the user accepts; the client repeats the call with the answer: allowed, server answered \"run_python_file done\"",
        "the same answer sent again: DENIED (approval_required, rule tools.run_python_file)",
        "mcp_warden_approvals_total{policy=\"mcp-python-interpreter\",result=\"user_confirmed\",tool=\"run_python_file\"} 1",
        "allowed, server answered \"2\"",
        "DENIED (approval_required, rule tools.clear_session): Tool \"clear_session\" needs a person's approval",
        "clear_session   system:serviceaccount:sandbox:demo-agent",
        "{\"session_id\":\"default\"}",
        "approved clear_session for system:serviceaccount:sandbox:demo-agent (1 use(s) within 3600 s)",
        "the identical call again: allowed, server answered \"clear_session done\"",
        "and once more (the one use is spent): DENIED (approval_required",
        "mcp_warden_approvals_total{policy=\"mcp-python-interpreter\",result=\"used\",tool=\"clear_session\"} 1",
        "DENIED (deny, rule tools.run_python_code.deny_if[0]): Destructive code is not allowed",
        "list_directory, 61 times: 60 allowed, then",
        "DENIED (rate_limited, rule tools.list_directory.limits[0]): Rate limit exceeded: list_directory_rate allows 60 calls per minute",
        "mcp_warden_decisions_total{decision=\"allow\",policy=\"mcp-python-interpreter\",tool=\"list_directory\"} 60",
        "mcp_warden_limit_hits_total{counter=\"list_directory_rate\",policy=\"mcp-python-interpreter\",scope=\"grant\",window=\"minute\"} 1",
        "agent               system:serviceaccount:sandbox:demo-agent",
        "refused: HTTP 401 \"unauthorized: the token's signature does not verify\"",
        "WWW-Authenticate: Bearer realm=\"mcp-warden\", error=\"invalid_token\"",
        "mcp_warden_unauthenticated_total{policy=\"mcp-python-interpreter\",reason=\"bad_signature\"} 1",
        "7. the server redefines run_python_code under the same name (a rug pull):",
        "tools/list no longer shows run_python_code",
        "DENIED (deny, rule pins.run_python_code): The definition of tool \"run_python_code\" has changed since it was pinned",
        "mcp_warden_tool_definition_changes_total{policy=\"mcp-python-interpreter\",tool=\"run_python_code\"} 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        out.stderr.is_empty(),
        "the demo is quiet on stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the sidecar binary with its logs on a channel; returns it, the channel, the lines read
/// up to "listening", and the address it listens on.
fn spawn_sidecar(
    policy: &std::path::Path,
    upstream: &str,
    extra: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<Value>,
    Vec<Value>,
    String,
) {
    let mut child = Command::new(BIN)
        .args([
            "sidecar",
            "--policy",
            policy.to_str().unwrap(),
            "--upstream",
            upstream,
        ])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--drain-delay-seconds",
            "0.2",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).unwrap_or_else(|_| json!({"unparsed": line}));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let listen = loop {
        let v = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the sidecar starts");
        lines.push(v.clone());
        if v["message"] == "mcp-warden sidecar listening" {
            break v["listen"].as_str().unwrap().to_owned();
        }
    };
    (child, rx, lines, listen)
}

/// With `identity.serviceAccount`, audit lines name the verified ServiceAccount in the clear and
/// the grant that applied; the token itself never appears.
#[tokio::test]
async fn audit_lines_name_a_verified_service_account_and_its_grant() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let up = upstream(false, true).await;
    let dir = temp_dir("binary-identity");
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        r#"{"version": "1", "identity": {"service_account": {"audiences": ["mcp-warden"]}},
            "tools": {"notebook_read": {}, "clear_session": {"action": "require_approval"}},
            "grants": [{"subjects": ["system:serviceaccount:ci:*"], "tools": {"write_file": {}}}]}"#,
    )
    .unwrap();
    let mut jwks: Value =
        serde_json::from_str(include_str!("../fixtures/identity/rsa-test-jwks.json")).unwrap();
    jwks["issuer"] = json!("https://kubernetes.default.svc.cluster.local");
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let (mut child, rx, mut lines, listen) =
        spawn_sidecar(&policy, &up.url(), &["--jwks", jwks_path.to_str().unwrap()]);

    mcp_warden::identity::install_crypto();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    let token = encode(
        &header,
        &json!({"iss": "https://kubernetes.default.svc.cluster.local", "aud": "mcp-warden",
                "sub": "system:serviceaccount:ci:builder", "exp": now + 600}),
        &EncodingKey::from_rsa_pem(include_bytes!("../fixtures/identity/rsa-test-key.pem"))
            .unwrap(),
    )
    .unwrap();
    let auth = format!("Bearer {token}");
    let url = format!("http://{listen}/mcp");
    let r = post_json(
        &url,
        &[
            ("authorization", &auth),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "write_file"),
        ],
        &call_v26(1, "write_file", json!({}), json!({})),
    )
    .await;
    let answered = messages(&r)[0]["result"]["isError"].clone();
    let r = post_json(
        &url,
        &[
            ("authorization", &auth),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "clear_session"),
        ],
        &call_v26(2, "clear_session", json!({"session_id": "s"}), json!({})),
    )
    .await;
    let approval_id =
        messages(&r)[0]["result"]["_meta"]["dev.mcpwarden/decision"]["approvalId"].clone();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    lines.extend(rx.try_iter());
    assert_eq!(
        answered,
        false,
        "the grant allows write_file: {}",
        String::from_utf8_lossy(&r.2)
    );
    let audit = lines
        .iter()
        .find(|l| l["target"] == "mcp_warden::audit")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(audit["identity"], "system:serviceaccount:ci:builder");
    assert_eq!(audit["grant"], "grants[0]");
    assert_eq!(audit["rule"], "grants[0].tools.write_file");
    assert!(audit.get("approval_id").is_none());
    let requested = lines
        .iter()
        .find(|l| l["target"] == "mcp_warden::audit" && l["tool"] == "clear_session")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(requested["decision"], "approval_required");
    assert!(
        approval_id.as_str().is_some_and(|id| id.len() == 64),
        "{approval_id}"
    );
    assert_eq!(
        requested["approval_id"], approval_id,
        "the audit line records the request"
    );
    let all = lines.iter().map(Value::to_string).collect::<String>();
    assert!(!all.contains(&token), "the token never appears in logs");
}

#[tokio::test]
async fn the_sidecar_binary_audits_every_decision_and_exits_cleanly_on_sigterm() {
    let up = upstream(false, true).await;
    let dir = temp_dir("binary");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let (mut child, rx, mut lines, listen) = spawn_sidecar(&policy, &up.url(), &[]);
    let url = format!("http://{listen}/mcp");
    let secret = "Bearer s3cret-token-value";
    let body = |id: u64, name: &str, args: Value| call_v26(id, name, args, json!({}));
    let h = |name: &'static str| {
        vec![
            ("authorization", secret),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", name),
        ]
    };
    let args = json!({"path": "/workspace/report.txt", "size": 10});
    let r = post_json(&url, &h("write_file"), &body(1, "write_file", args.clone())).await;
    assert_eq!(messages(&r)[0]["result"]["isError"], false);
    let r = post_json(
        &url,
        &h("clear_session"),
        &body(2, "clear_session", json!({})),
    )
    .await;
    assert_eq!(messages(&r)[0]["result"]["isError"], true);

    // SIGTERM: drain, then exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    lines.extend(rx.try_iter());

    let audits: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "mcp_warden::audit")
        .collect();
    assert_eq!(audits.len(), 2, "{lines:#?}");
    let expected_hash = mcp_warden::sidecar::sha256_hex(b"s3cret-token-value");
    let allow = audits[0];
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["tool"], "write_file");
    assert_eq!(allow["rule"], "tools.write_file");
    assert_eq!(allow["policy"], "policy");
    assert_eq!(allow["identity"], expected_hash);
    assert_eq!(
        allow["args_sha256"],
        mcp_warden::sidecar::sha256_hex(args.to_string().as_bytes())
    );
    assert!(allow["timestamp"].is_string() && allow["latency_ns"].is_u64());
    assert_eq!(audits[1]["decision"], "deny");
    assert_eq!(audits[1]["rule"], "tools.clear_session.deny_if[0]");
    let all = lines.iter().map(Value::to_string).collect::<String>();
    assert!(!all.contains("s3cret"), "the token never appears in logs");
    assert!(
        !all.contains("report.txt"),
        "arguments never appear in logs"
    );
    assert!(lines
        .iter()
        .any(|l| l["message"] == "draining: /readyz is false"));
}

/// Without a reachable API server the controller stays alive but not ready, explains why, and
/// still stops cleanly on SIGTERM.
#[tokio::test]
async fn the_controller_is_unready_until_its_cache_syncs_and_exits_cleanly_on_sigterm() {
    let dir = temp_dir("controller");
    let kubeconfig = dir.join("kubeconfig");
    // A cluster address where nothing listens: the controller can never sync.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "controller",
            "--namespace",
            "mcp-warden",
            "--identity",
            "test",
        ])
        .args([
            "--webhook-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--native-sidecar", "false", "--drain-delay-seconds", "0.2"])
        .env("KUBECONFIG", &kubeconfig)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let started = rx
        .iter()
        .find(|l| {
            l["fields"]["message"] == "mcp-warden controller listening"
                || l["message"] == "mcp-warden controller listening"
        })
        .expect("the controller logs where it listens");
    let admin = started["fields"]["admin"]
        .as_str()
        .or(started["admin"].as_str())
        .unwrap()
        .to_string();
    let get = |path: &str| {
        let url = format!("http://{admin}{path}");
        async move {
            let (status, _, body) = get(&url).await;
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    assert_eq!(get("/livez").await.0, 200);
    let (status, ready) = get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("McpPolicy cache has not synced"), "{ready}");
    assert_eq!(get("/metrics").await.0, 200);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
}
