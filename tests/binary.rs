//! The real binary, as a user and a kubelet run it: the demo, and the sidecar with its audit log
//! and its exit on SIGTERM.

mod common;

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
        "the server offers 10 tools; the agent sees 7",
        "removed (never callable): run_python_file, install_package, clear_session",
        "allowed, server answered \"2\"",
        "DENIED (deny, rule tools.clear_session.deny_if[0]): Blocked by default. Requires approval.",
        "DENIED (deny, rule tools.run_python_code.deny_if[0]): Destructive code is not allowed",
        "list_directory, 61 times: 60 allowed, then",
        "DENIED (rate_limited, rule tools.list_directory.limits[0]): Rate limit exceeded: list_directory_rate allows 60 calls per minute",
        "mcp_warden_decisions_total{decision=\"allow\",policy=\"mcp-python-interpreter\",tool=\"list_directory\"} 60",
        "mcp_warden_limit_hits_total{counter=\"list_directory_rate\",policy=\"mcp-python-interpreter\",scope=\"grant\",window=\"minute\"} 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        out.stderr.is_empty(),
        "the demo is quiet on stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_sidecar_binary_audits_every_decision_and_exits_cleanly_on_sigterm() {
    let up = upstream(false, true).await;
    let dir = temp_dir("binary");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "sidecar",
            "--policy",
            policy.to_str().unwrap(),
            "--upstream",
            &up.url(),
        ])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--drain-delay-seconds",
            "0.2",
        ])
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
