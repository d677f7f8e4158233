//! One policy, several sidecars: three sidecars of one policy on loopback, each in front of its
//! own rmcp server, told of each other by a peer file as the controller renders it, and a client
//! that sends its calls round robin. The limit holds across them exactly; with an owner gone
//! the survivors count on their shares and never allow more than the stated bound; a restarted
//! sidecar takes its place again and holds the policy's pins; an approval runs on any replica,
//! once per use; a large limit is leased and stays exact; a user's answer, a server's question
//! and a task hold on whichever replica the next request lands.

use crate::common::*;
use mcp_warden::sidecar::peers::owner_among;
use serde_json::{json, Value};
use std::path::Path;

const POLICY: &str = r#"
version: "1"
identity: {header: x-agent}
tools:
  run_cell:
    limits: [{counter: run_cell_rate, window: minute, max: 10, scope: grant}]
  write_file:
    limits: [{counter: writes, window: minute, max: 7}]
  notebook_read: {}
  slow_report: {}
  clear_session: {action: require_approval}
  hot:
    limits: [{counter: hot_rate, window: minute, max: 300, scope: grant}]
"#;

const NAMES: [&str; 3] = ["web-0", "web-1", "web-2"];
const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-peer-key";

struct Replica {
    sc: Sidecar,
    _up: Upstream,
}

/// Starts sidecar `name` of the policy in `dir` (its policy, peer file and key), in front of a
/// server of its own.
async fn replica(dir: &Path, name: &'static str) -> Replica {
    let up = upstream(false, true).await;
    let d = dir.to_path_buf();
    let sc = sidecar_at(&up.url(), &dir.join("policy.yaml"), move |c| {
        c.peers_path = Some(d.join("peers.json"));
        c.peer_key_path = Some(d.join("peer.key"));
        c.pod_name = Some(name.to_owned());
        c.approvals_path = Some(d.join("approvals.json"));
        c.seen_path = Some(d.join("seen.json"));
    })
    .await;
    // Calls of a policy with pins wait for the sidecar's own first listing.
    wait_until("the tools are listed", async || {
        metric(&sc, "mcp_warden_tools_offered", &[])
            .await
            .is_some_and(|n| n > 0.0)
    })
    .await;
    Replica { sc, _up: up }
}

/// Writes the peer file as the controller would, and waits until every running sidecar knows
/// `ready` peers.
async fn tell_peers(dir: &Path, replicas: &[Option<Replica>], ready: usize) {
    let peers: Vec<Value> = NAMES
        .iter()
        .zip(replicas)
        .filter_map(|(n, r)| {
            r.as_ref()
                .map(|r| json!({"name": n, "address": r.sc.admin.to_string()}))
        })
        .collect();
    let file = json!({"replicas": 3, "peers": peers});
    std::fs::write(dir.join("peers.json.tmp"), file.to_string()).unwrap();
    std::fs::rename(dir.join("peers.json.tmp"), dir.join("peers.json")).unwrap();
    for r in replicas.iter().flatten() {
        wait_until("the peer set is read", async || {
            metric(&r.sc, "mcp_warden_peers", &[]).await == Some(ready as f64)
        })
        .await;
    }
}

async fn start(tag: &str) -> (std::path::PathBuf, Vec<Option<Replica>>) {
    start_with(tag, POLICY).await
}

async fn start_with(tag: &str, policy: &str) -> (std::path::PathBuf, Vec<Option<Replica>>) {
    let dir = temp_dir(tag);
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    std::fs::write(dir.join("peer.key"), KEY).unwrap();
    // The policy's record (the controller's `status.firstSeen`): slow_report was first seen
    // with another definition than the one the servers give now.
    let pinned = format!("sha256:{}", "0".repeat(64));
    std::fs::write(
        dir.join("seen.json"),
        json!({"tools": {"slow_report": pinned}}).to_string(),
    )
    .unwrap();
    let mut replicas = Vec::new();
    for n in NAMES {
        replicas.push(Some(replica(&dir, n).await));
    }
    tell_peers(&dir, &replicas, 3).await;
    (dir, replicas)
}

/// Calls `tool` as `agent` through `sc`: whether the server ran it.
async fn ran(sc: &Sidecar, agent: &str, tool: &str, id: u64) -> bool {
    let m = call_as(sc, agent, tool, json!({"n": id}), id).await;
    match decision_of(&m)["decision"].as_str() {
        Some("ran") => {
            assert!(m["result"]["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with(&format!("{tool} ran"))));
            true
        }
        d => {
            assert_eq!(d, Some("rate_limited"), "{m}");
            false
        }
    }
}

/// `n` calls sent round robin over the running sidecars: how many ran.
async fn round_robin(replicas: &[Option<Replica>], agent: &str, tool: &str, n: u64) -> usize {
    let running: Vec<&Sidecar> = replicas.iter().flatten().map(|r| &r.sc).collect();
    let mut allowed = 0;
    for i in 0..n {
        if ran(running[i as usize % running.len()], agent, tool, i + 1).await {
            allowed += 1;
        }
    }
    allowed
}

/// The sum of every series of `name` matching `labels`, over the running sidecars.
async fn total(replicas: &[Option<Replica>], name: &str, labels: &[&str]) -> f64 {
    let mut sum = 0.0;
    for r in replicas.iter().flatten() {
        let (_, _, body) = get(&r.sc.admin_url("/metrics")).await;
        sum += String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

/// An agent name whose `run_cell_rate` key `owner` owns (among all three).
fn agent_owned_by(owner: &str, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .find(|a| owner_among(&NAMES, "run_cell_rate", a) == Some(owner))
        .unwrap()
}

#[tokio::test]
async fn three_sidecars_hold_one_budget_exactly_under_round_robin() {
    let (_dir, replicas) = start("peers-exact").await;
    // The seeds' per-caller limit: 10 a minute for each agent, whichever sidecar is asked.
    for agent in ["alice", "bob", "carol", "dave"] {
        assert_eq!(
            round_robin(&replicas, agent, "run_cell", 30).await,
            10,
            "{agent}"
        );
    }
    // A limit for all callers together (scope policy, the default): 7 a minute in all.
    let mut ran_writes = 0;
    for (i, agent) in ["alice", "bob", "carol"]
        .iter()
        .cycle()
        .take(21)
        .enumerate()
    {
        let sc = &replicas[i % 3].as_ref().unwrap().sc;
        ran_writes += ran(sc, agent, "write_file", i as u64 + 1).await as usize;
    }
    assert_eq!(ran_writes, 7);
    // Calls without a limit never ask a peer.
    let asked = total(&replicas, "mcp_warden_peer_requests_total", &[]).await;
    assert_eq!(round_robin(&replicas, "alice", "notebook_read", 9).await, 9);
    assert_eq!(
        total(&replicas, "mcp_warden_peer_requests_total", &[]).await,
        asked
    );
    // Counts were asked of their owners over the peer API, and none fell back.
    assert!(
        total(
            &replicas,
            "mcp_warden_peer_requests_total",
            &["result=\"taken\""]
        )
        .await
            >= 20.0
    );
    assert!(
        total(
            &replicas,
            "mcp_warden_peer_requests_total",
            &["result=\"limited\""]
        )
        .await
            > 0.0
    );
    assert_eq!(
        total(&replicas, "mcp_warden_budget_fallbacks_total", &[]).await,
        0.0
    );
}

#[tokio::test]
async fn with_an_owner_gone_the_survivors_count_on_shares_and_a_restart_rejoins() {
    let pinned = POLICY.replace("tools:\n", "pinning: firstSeen\ntools:\n");
    let (dir, mut replicas) = start_with("peers-kill", &pinned).await;
    let agent = agent_owned_by("web-0", "kill");
    // Four calls counted by the owner, web-0.
    assert_eq!(round_robin(&replicas, &agent, "run_cell", 4).await, 4);
    // web-0 stops; the peer set still names it (the controller has not re-rendered yet).
    let mut gone = replicas[0].take().unwrap();
    gone.sc.terminate();
    gone.sc.done.take().unwrap().await.unwrap().unwrap();
    drop(gone);
    // Each survivor counts the key on its share: ⌊10 / 3⌋ = 3 each, never more.
    assert_eq!(round_robin(&replicas, &agent, "run_cell", 20).await, 6);
    assert!(
        total(
            &replicas,
            "mcp_warden_budget_fallbacks_total",
            &["reason=\"unreachable\""]
        )
        .await
            >= 2.0
    );
    // A key a survivor owns is still held exactly.
    let kept = agent_owned_by("web-1", "kept");
    assert_eq!(round_robin(&replicas, &kept, "run_cell", 25).await, 10);
    // The controller re-renders the peer set without web-0: its keys have new owners, which
    // count them exactly (starting afresh: the old owner's counts went with it).
    tell_peers(&dir, &replicas, 2).await;
    let moved = agent_owned_by("web-0", "moved");
    assert_eq!(round_robin(&replicas, &moved, "run_cell", 25).await, 10);
    // web-0 comes back (a new process, a new admin port) and is told to everyone.
    replicas[0] = Some(replica(&dir, "web-0").await);
    tell_peers(&dir, &replicas, 3).await;
    let back = agent_owned_by("web-0", "back");
    assert_eq!(round_robin(&replicas, &back, "run_cell", 30).await, 10);
    // Pins are the policy's: every replica, the restarted one too, holds slow_report to the
    // recorded definition, though none of them saw that one itself.
    for r in replicas.iter().flatten() {
        let m = call_as(&r.sc, "pinned", "slow_report", json!({}), 1).await;
        assert_eq!(m["result"]["isError"], true, "{m}");
        assert!(
            m["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("has changed since it was pinned"),
            "{m}"
        );
    }
}

#[tokio::test]
async fn peer_requests_without_the_key_or_replayed_are_refused() {
    let (_dir, replicas) = start("peers-auth").await;
    let sc = &replicas[0].as_ref().unwrap().sc;
    let body = r#"{"takes":[{"counter":"run_cell_rate","key":"x","max":10,"windowMs":60000,"scope":"grant"}]}"#;
    let url = sc.admin_url("/peer/take");
    // No MAC; a MAC made with another key.
    let raw = post_json(&url, &[], body).await;
    assert_eq!(raw.0, 401, "{}", String::from_utf8_lossy(&raw.2));
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let nonce = "00112233445566778899aabbccddeeff";
    let mac = |key: &[u8], body: &str| {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let msg = format!("/peer/take\n{time}\n{nonce}\n{body}");
        ring::hmac::sign(&k, msg.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let headers = |m: &str| {
        vec![
            ("mcp-warden-peer-time", time.clone()),
            ("mcp-warden-peer-nonce", nonce.to_owned()),
            ("mcp-warden-peer-mac", m.to_owned()),
        ]
    };
    let send = async |m: String, b: &str| {
        let h = headers(&m);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post_json(&url, &h, b).await
    };
    let wrong = send(mac(b"another key of thirty-two bytes!!", body), body).await;
    assert_eq!(wrong.0, 401);
    // The right key: answered (the owner of key "x" may be another sidecar, so either result).
    let ok = send(mac(KEY, body), body).await;
    assert_eq!(ok.0, 200, "{}", String::from_utf8_lossy(&ok.2));
    let answer: Value = serde_json::from_slice(&ok.2).unwrap();
    assert!(["taken", "notOwner"].contains(&answer["result"].as_str().unwrap()));
    // The same request again: a replay.
    let replay = send(mac(KEY, body), body).await;
    assert_eq!(replay.0, 401);
    assert!(String::from_utf8_lossy(&replay.2).contains("replay"));
    // A body changed under the MAC.
    let other = body.replace("\"x\"", "\"y\"");
    let moved = send(mac(KEY, body), &other).await;
    assert_eq!(moved.0, 401);
}

/// `clear_session` as `agent` through `sc`: the decision record, or "ran".
async fn clear(sc: &Sidecar, agent: &str, id: u64) -> Value {
    decision_of(&call_as(sc, agent, "clear_session", json!({"session_id": "s1"}), id).await)
}

#[tokio::test]
async fn an_approval_asked_on_one_pod_runs_on_any_and_each_use_is_spent_once() {
    let (dir, replicas) = start("peers-approval").await;
    let sc = |i: usize| &replicas[i].as_ref().unwrap().sc;
    // Asked on web-1.
    let asked = clear(sc(1), "alice", 1).await;
    assert_eq!(asked["decision"], "approval_required", "{asked}");
    let id = asked["approvalId"].as_str().unwrap().to_owned();
    // Approved for two uses, naming web-1 (as the controller renders it).
    let file = json!({"approvals": [{"id": id, "uses": 2, "expires_at": 4_000_000_000u64,
                                     "pod": "web-1", "name": "clear-session-1"}]});
    std::fs::write(dir.join("approvals.json"), file.to_string()).unwrap();
    wait_until("every sidecar holds the approval", async || {
        replicas.iter().flatten().all(|r| {
            r.sc.state
                .approvals
                .report(1)
                .used
                .iter()
                .any(|s| s.id == id)
        })
    })
    .await;
    // Nine tries round robin, from web-0: exactly two run, wherever they land.
    let mut ran_on = Vec::new();
    for i in 0..9u64 {
        let k = i as usize % 3;
        let d = clear(sc(k), "alice", 10 + i).await;
        if d["decision"] == "ran" {
            ran_on.push(NAMES[k]);
        } else {
            assert_eq!(d["decision"], "approval_required", "{d}");
        }
    }
    assert_eq!(
        ran_on,
        ["web-0", "web-1"],
        "uses: 2 is two calls across the replicas"
    );
    // The owner counted both, and says where they ran; the others spent none themselves.
    let reports: Vec<_> = replicas
        .iter()
        .flatten()
        .map(|r| r.sc.state.approvals.report(1).used)
        .collect();
    let used: u32 = reports.iter().flatten().map(|s| s.used).sum();
    assert_eq!(used, 2);
    let on: Vec<String> = reports
        .iter()
        .flatten()
        .flat_map(|s| s.used_on.clone())
        .collect();
    assert_eq!(on, ["web-0", "web-1"]);
    // Another caller's identical call is not approved anywhere.
    for k in 0..3 {
        assert_eq!(
            clear(sc(k), "bob", 30).await["decision"],
            "approval_required"
        );
    }
}

#[tokio::test]
async fn a_large_limit_is_leased_to_non_owners_and_still_exact() {
    let (_dir, replicas) = start("peers-lease").await;
    // 30 calls, then the leases' unused counts go back to the owner within two seconds.
    assert_eq!(round_robin(&replicas, "lessee", "hot", 30).await, 30);
    let refills = total(&replicas, "mcp_warden_lease_refills_total", &[]).await;
    assert!(
        refills >= 2.0,
        "both non-owners were lent counts: {refills}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // Then the rest of the budget: two thirds of the calls land on non-owners, and leases
    // spare most of their hops.
    let hops = total(&replicas, "mcp_warden_peer_requests_total", &[]).await;
    let first = round_robin(&replicas, "lessee", "hot", 270).await;
    let hops = total(&replicas, "mcp_warden_peer_requests_total", &[]).await - hops;
    assert!(hops < 90.0, "{hops} hops for 180 calls on non-owners");
    // Counts still in a lease are spent by the next calls: the limit of 300 holds exactly,
    // nothing lost in a lease, nothing extra.
    let rest = round_robin(&replicas, "lessee", "hot", 300).await;
    assert_eq!(30 + first + rest, 300, "{first} + {rest}");
}

#[tokio::test]
async fn a_users_answer_runs_the_call_on_any_replica_once() {
    let policy = "version: \"1\"\nidentity: {header: x-agent}\ntools:\n  write_file:\n    approval: {by: user}\n";
    let (_dir, replicas) = start_with("peers-confirm", policy).await;
    let sc: Vec<&Sidecar> = replicas.iter().flatten().map(|r| &r.sc).collect();
    let post = async |sc: &Sidecar, body: &str| {
        let mut h = v26_headers("write_file");
        h.push(("x-agent", "user-7".to_owned()));
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        messages(&post_json(&sc.url(), &h, body).await).remove(0)
    };
    let caps = json!({"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}});
    let asked = post(
        sc[0],
        &call_v26(1, "write_file", json!({"path": "/w/a"}), caps.clone()),
    )
    .await;
    let state = asked["result"]["requestState"]
        .as_str()
        .expect("asked")
        .to_owned();
    let retry = |id: u64| {
        let mut v: Value = serde_json::from_str(&call_v26(
            id,
            "write_file",
            json!({"path": "/w/a"}),
            caps.clone(),
        ))
        .unwrap();
        v["params"]["requestState"] = json!(state);
        v["params"]["inputResponses"] = json!({"mcp-warden/confirm": {"action": "accept"}});
        v.to_string()
    };
    // Answered on another replica than the one that asked: it runs there.
    let ran = post(sc[1], &retry(2)).await;
    assert!(
        ran["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("write_file ran"),
        "{ran}"
    );
    // The same answer on every replica afterwards: refused, whoever owns it.
    for (i, s) in sc.iter().enumerate() {
        let again = post(s, &retry(3 + i as u64)).await;
        assert_eq!(again["result"]["isError"], true, "replica {i}: {again}");
        assert!(again["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("already taken"));
    }
    assert_eq!(
        total(
            &replicas,
            "mcp_warden_approvals_total",
            &["result=\"user_confirmed\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        total(
            &replicas,
            "mcp_warden_approvals_total",
            &["result=\"user_replayed\""]
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn a_servers_question_and_a_task_are_bound_across_replicas() {
    let policy = "version: \"1\"\nidentity: {header: x-agent}\ntools:\n  write_file: {}\n  slow_report: {}\n";
    let (_dir, replicas) = start_with("peers-bound", policy).await;
    let sc: Vec<&Sidecar> = replicas.iter().flatten().map(|r| &r.sc).collect();
    let post = async |sc: &Sidecar, agent: &str, method: &str, name: &str, params: Value| {
        let mut params = params;
        params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities":
                {"extensions": {"io.modelcontextprotocol/tasks": {}}}});
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let h = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
            ("mcp-name", name),
            ("x-agent", agent),
        ];
        let raw = post_json(&sc.url(), &h, &body.to_string()).await;
        (raw.0, messages(&raw).remove(0))
    };
    // The server's question asked through web-0, answered through web-2: not decided again.
    let args = json!({"server_asks": true, "path": "/w/x"});
    let (_, asked) = post(
        sc[0],
        "ann",
        "tools/call",
        "write_file",
        json!({"name": "write_file", "arguments": args}),
    )
    .await;
    assert_eq!(asked["result"]["resultType"], "input_required", "{asked}");
    let state = asked["result"]["requestState"].as_str().unwrap().to_owned();
    let retry = json!({"name": "write_file", "arguments": args, "requestState": state,
        "inputResponses": {SERVER_QUESTION: {"action": "accept", "content": {}}}});
    let (_, done) = post(sc[2], "ann", "tools/call", "write_file", retry.clone()).await;
    assert!(
        done["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("write_file ran"),
        "{done}"
    );
    assert_eq!(
        total(
            &replicas,
            "mcp_warden_decisions_total",
            &["tool=\"write_file\"", "decision=\"allow\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        total(&replicas, "mcp_warden_continuations_total", &[]).await,
        1.0
    );
    // The same retry again, on another replica: a new call, decided (once only).
    let _ = post(sc[1], "ann", "tools/call", "write_file", retry).await;
    assert_eq!(
        total(&replicas, "mcp_warden_continuations_total", &[]).await,
        1.0
    );
    assert_eq!(
        total(
            &replicas,
            "mcp_warden_decisions_total",
            &["tool=\"write_file\"", "decision=\"allow\""]
        )
        .await,
        2.0
    );
    // A task made through web-1 is polled by its creator through every replica, by nobody else.
    let (_, made) = post(
        sc[1],
        "ann",
        "tools/call",
        "slow_report",
        json!({"name": "slow_report", "arguments": {"as_task": true}}),
    )
    .await;
    let task = made["result"]["taskId"]
        .as_str()
        .expect("a task")
        .to_owned();
    for s in &sc {
        let (status, m) = post(s, "ann", "tasks/get", &task, json!({"taskId": task})).await;
        assert_ne!(status, 400, "the creator, through {}: {m}", s.addr);
        let (status, m) = post(s, "bob", "tasks/get", &task, json!({"taskId": task})).await;
        assert_eq!(status, 400, "another caller, through {}: {m}", s.addr);
    }
}
