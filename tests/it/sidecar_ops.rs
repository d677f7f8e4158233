//! Operating the sidecar: readiness, hot reload through a ConfigMap volume's layout, keeping
//! the last good policy, and the SIGTERM drain.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

async fn call_tool(url: &str, id: u64, name: &str) -> (u16, Value) {
    let headers = v26_headers(name);
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let raw = post_json(url, &h, &call_v26(id, name, json!({}), json!({}))).await;
    (
        raw.0,
        messages(&raw).into_iter().next().unwrap_or(Value::Null),
    )
}

fn denied(v: &Value) -> bool {
    v["result"]["isError"] == true
}

/// Writes a policy the way the kubelet updates a ConfigMap volume: a new timestamped directory,
/// a `..data_tmp` symlink to it renamed over `..data`, and `policy.json -> ..data/policy.json`.
fn configmap_write(dir: &Path, generation: u32, policy: &str) {
    let ts = dir.join(format!("..2026_11_22_00_00_{generation:02}.000000"));
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join("policy.json"), policy).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("policy.json");
    if std::fs::symlink_metadata(&link).is_err() {
        symlink("..data/policy.json", &link).unwrap();
    }
}

#[tokio::test]
async fn reload_through_a_configmap_symlink_swap_under_traffic_fails_no_request() {
    let up = upstream(false, true).await;
    let dir = temp_dir("configmap");
    let allow = json!({"version": "1", "name": "ml/notebooks", "default": "deny",
        "tools": {"notebook_read": {}, "run_cell": {"limits": [{"counter": "cells", "window": "hour", "max": 1000}]}}});
    configmap_write(&dir, 1, &allow.to_string());
    let sc = sidecar_at(&up.url(), &dir.join("policy.json"), |_| {}).await;
    assert_eq!(get(&sc.admin_url("/readyz")).await.0, 200);
    assert_eq!(
        metric(
            &sc,
            "mcp_warden_policy_reloads_total",
            &["policy=\"ml/notebooks\"", "result=\"ok\""]
        )
        .await,
        Some(1.0)
    );

    // Traffic runs while the policy changes underneath it.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (url, stop, failures, sent) = (sc.url(), stop.clone(), failures.clone(), sent.clone());
        tokio::spawn(async move {
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let (status, v) = call_tool(&url, id, "run_cell").await;
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 || v["result"].is_null() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    wait_until("traffic", async || sent.load(Ordering::Relaxed) > 20).await;
    let (_, v) = call_tool(&sc.url(), 1, "run_cell").await;
    assert!(!denied(&v));

    // Generation 2 denies run_cell and keeps the counter's name, window and scope.
    let deny = json!({"version": "1", "name": "ml/notebooks", "default": "deny",
        "tools": {"notebook_read": {}, "run_cell": {"action": "deny", "reason": "Paused for maintenance"},
                  "other": {"limits": [{"counter": "cells", "window": "hour", "max": 1000}]}}});
    configmap_write(&dir, 2, &deny.to_string());
    let url = sc.url();
    wait_until("the new policy", async || {
        denied(&call_tool(&url, 2, "run_cell").await.1)
    })
    .await;
    let (_, v) = call_tool(&sc.url(), 3, "run_cell").await;
    assert_eq!(v["result"]["content"][0]["text"], "Paused for maintenance");

    // Generation 3 is invalid: the last good policy stays, and the error is counted.
    configmap_write(&dir, 3, r#"{"version": "1", "default": "sometimes"}"#);
    let sc_ref = &sc;
    wait_until("the reload error", async || {
        metric(
            sc_ref,
            "mcp_warden_policy_reloads_total",
            &["result=\"error\""],
        )
        .await
            == Some(1.0)
    })
    .await;
    let (_, v) = call_tool(&sc.url(), 4, "run_cell").await;
    assert_eq!(
        v["result"]["content"][0]["text"], "Paused for maintenance",
        "still enforcing generation 2"
    );
    assert_eq!(
        get(&sc.admin_url("/readyz")).await.0,
        200,
        "a bad update does not make the sidecar unready"
    );

    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "every request under reload got an answer"
    );
    // Exactly one series for the policy in force, with generation 2's hash.
    let (_, _, body) = get(&sc.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&body);
    let info: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("mcp_warden_policy_info{"))
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    let hash = mcp_warden::sidecar::load_policy(
        &dir.join("..2026_11_22_00_00_02.000000/policy.json"),
        None,
        None,
        Default::default(),
    )
    .unwrap()
    .hash;
    assert!(info[0].contains(&hash), "{} vs {hash}", info[0]);
}

#[tokio::test]
async fn without_a_valid_policy_nothing_is_forwarded_until_one_appears() {
    let up = upstream(false, true).await;
    let dir = temp_dir("missing");
    let path = dir.join("policy.yaml");
    let sc = sidecar_at(&up.url(), &path, |_| {}).await;
    let ready = get(&sc.admin_url("/readyz")).await;
    assert_eq!(ready.0, 503);
    assert_eq!(
        String::from_utf8_lossy(&ready.2),
        "not ready: no valid policy loaded\n"
    );
    let (status, v) = call_tool(&sc.url(), 1, "notebook_read").await;
    assert_eq!(status, 503);
    assert_eq!(v["error"]["code"], -32603);
    let raw = get(&sc.url()).await;
    assert_eq!(raw.0, 503, "GET streams are not forwarded either");
    assert_eq!(up.requests(), 0);
    // An invalid file changes nothing.
    std::fs::write(&path, "default: nope\n").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&sc.admin_url("/readyz")).await.0, 503);
    std::fs::write(&path, POLICY).unwrap();
    let admin = sc.admin_url("/readyz");
    wait_until("readiness", async || get(&admin).await.0 == 200).await;
    let (status, v) = call_tool(&sc.url(), 2, "notebook_read").await;
    assert_eq!((status, denied(&v)), (200, false));
}

#[tokio::test]
async fn sigterm_drains_then_finishes_in_flight_requests() {
    let up = upstream(false, false).await;
    let dir = temp_dir("drain");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, POLICY).unwrap();
    let mut sc = sidecar_at(&up.url(), &path, |c| {
        c.drain_delay = Duration::from_millis(600)
    })
    .await;
    // A long call in flight: the server holds it until released.
    let url = sc.url();
    let in_flight = tokio::spawn(async move { call_tool(&url, 1, "slow_report").await });
    wait_until("the call to reach the server", async || {
        up.server.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    sc.terminate();
    let admin = sc.admin_url("/readyz");
    wait_until("unready", async || get(&admin).await.0 == 503).await;
    assert_eq!(
        String::from_utf8_lossy(&get(&admin).await.2),
        "not ready: draining\n"
    );
    // During the drain delay new requests are still served.
    let (status, v) = call_tool(&sc.url(), 2, "notebook_read").await;
    assert_eq!((status, denied(&v)), (200, false));
    up.server.release.notify_one();
    let (status, v) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["result"]["content"][0]["text"], "slow_report ran with {}");
    let result = tokio::time::timeout(Duration::from_secs(10), sc.done.take().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        tokio::net::TcpStream::connect(sc.addr).await.is_err(),
        "the listener is closed"
    );
}
