//! Reconcile benchmark against the real API server `KUBECONFIG` names:
//! `cargo build --release && cargo bench --bench reconcile` (add `-- --count N`, default 1000).
//!
//! Starts the release `mcp-warden controller` binary outside the cluster (`--webhook-url` on
//! 127.0.0.1), creates N McpPolicies in a fresh namespace as fast as the API server takes them,
//! and reports how long until every one is `Ready` with its ConfigMap rendered (budget: 1,000 in
//! ≤ 10 s), then the controller's memory with those policies and with 5 pods per policy cached.
//! Without a reachable cluster it says so and exits.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use mcp_warden::crd::build::PolicyBuilder;
use mcp_warden::crd::McpPolicy;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let count: usize = std::env::args()
        .skip_while(|a| a != "--count")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run(count));
}

async fn run(count: usize) {
    if std::env::var("KUBECONFIG").is_err() {
        println!("reconcile benchmark SKIPPED: KUBECONFIG is not set (it needs a real API server)");
        return;
    }
    let client = match kube::Client::try_default().await {
        Ok(c) if c.apiserver_version().await.is_ok() => c,
        _ => {
            println!("reconcile benchmark SKIPPED: the API server of KUBECONFIG is not reachable");
            return;
        }
    };
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/mcp-warden");
    let id = std::process::id();
    let (sys, ns) = (format!("mcpw-bench-sys-{id}"), format!("mcpw-bench-{id}"));
    let nss: Api<Namespace> = Api::all(client.clone());
    let pp = PatchParams::apply("mcp-warden-bench").force();
    for n in [&sys, &ns] {
        nss.patch(
            n,
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}),
            ),
        )
        .await
        .unwrap();
    }
    let crd: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/mcppolicy.yaml"))
            .unwrap(),
    )
    .unwrap();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.patch("mcppolicies.mcpwarden.dev", &pp, &Patch::Apply(&crd))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut controller = Command::new(bin)
        .args([
            "controller",
            "--namespace",
            &sys,
            "--webhook-url",
            &format!("https://127.0.0.1:{port}"),
            "--admin-listen",
            "127.0.0.1:0",
            "--webhook-config",
            &format!("mcpw-bench-{id}"),
            "--native-sidecar",
            "false",
            "--log",
            "warn",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("build the release binary first: cargo build --release");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let policies: Api<McpPolicy> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in (0..count)
        .collect::<Vec<_>>()
        .chunks(count.div_ceil(16).max(1))
    {
        let (policies, chunk, ns) = (policies.clone(), chunk.to_vec(), ns.clone());
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                let p = PolicyBuilder::new(&ns, &format!("p{i:04}"))
                    .app(&format!("a{i}"))
                    .spec(json!({"tools": {"run_cell": {"limits": [{"counter": "c", "window": "minute", "max": 10}]}}}))
                    .build();
                policies.create(&PostParams::default(), &p).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let created = started.elapsed();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let ready_at = loop {
        let ready = policies
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == count {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(300) {
            println!("only {ready} of {count} Ready after 300 s");
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rendered = cms
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=mcp-warden"))
        .await
        .unwrap()
        .items
        .len();
    println!("{count} McpPolicies: created in {:.2} s; all Ready in {:.2} s ({rendered} ConfigMaps); budget 1,000 in <= 10 s: {}",
        created.as_secs_f64(), ready_at.as_secs_f64(),
        if count >= 1000 && ready_at <= Duration::from_secs(10) { "met" } else if count < 1000 { "n/a (fewer than 1,000)" } else { "NOT met" });
    let rss = |what: &str| {
        let status = std::fs::read_to_string(format!("/proc/{}/status", controller.id()))
            .unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        println!(
            "controller memory {what}: RSS {:.1} MiB, peak {:.1} MiB",
            kb("VmRSS:") / 1024.0,
            kb("VmHWM:") / 1024.0
        );
    };
    rss(&format!("with {count} McpPolicies"));

    // The controller caches every pod (counts, conflicts): its memory with many of them.
    let pods_wanted = count * 5;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in (0..pods_wanted)
        .collect::<Vec<_>>()
        .chunks(pods_wanted.div_ceil(16).max(1))
    {
        let (pods, chunk) = (pods.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("pod{i:05}"), "labels": {"app": format!("a{}", i % count)}},
                    "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1",
                                             "ports": [{"name": "mcp", "containerPort": 8888}]}]}
                }))
                .unwrap();
                // The ServiceAccount admission plugin needs the namespace's default account,
                // which the controller-manager creates a moment after the namespace.
                for _ in 0..50 {
                    match pods.create(&PostParams::default(), &p).await {
                        Ok(_) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "{pods_wanted} pods created in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    rss(&format!(
        "with {count} McpPolicies and {pods_wanted} pods cached"
    ));
    let _ = controller.kill();
    let _ = controller.wait();
    // A registration left behind would send every later McpPolicy to a dead webhook.
    let hooks = format!("mcpw-bench-{id}");
    let mutating: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let _ = mutating.delete(&hooks, &DeleteParams::default()).await;
    let validating: Api<
        k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
    > = Api::all(client.clone());
    let _ = validating.delete(&hooks, &DeleteParams::default()).await;
    for n in [&sys, &ns] {
        let _ = nss.delete(n, &DeleteParams::default()).await;
    }
}
