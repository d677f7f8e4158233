//! Sidecar benchmark: `cargo bench --bench sidecar` (add `-- --quick` for a short run).
//!
//! A fast hyper upstream answers every `tools/call` with a fixed MCP result. The real
//! `mcp-warden sidecar` binary runs as its own process in front of it (so its CPU time and RSS
//! can be read from /proc), enforcing a 100-tool policy whose called tool has a `require`, a
//! `deny_if` and two limits, with an audit line per decision. Load comes from keep-alive
//! connections, one per concurrent client; direct, a bare hyper forwarder (the cost of the hop
//! itself) and the sidecar are interleaved in every round, and every figure of the performance
//! budget is printed beside its budget: saturated throughput and CPU per request as ratios to
//! the bare forwarder. With `MCP_WARDEN_BENCH_BEFORE=path/to/mcp-warden`, another build of the
//! sidecar (a change's before) joins every saturated round, for a before/after in one run.

mod common;
use bytes::Bytes;
use common::{free_port, upstream};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The bench policy; with `identity`, callers are ServiceAccounts whose tokens are verified.
fn policy_file(dir: &std::path::Path, identity: bool) -> std::path::PathBuf {
    let mut tools = Map::new();
    for i in 0..100 {
        let name = format!("tool_{i:03}");
        tools.insert(name.clone(), json!({
            "require": [{"path": "args.path", "op": "path_within", "value": "/workspace"}],
            "deny_if": [{"conditions": [{"path": "args.content", "op": "contains", "value": "rm -rf"}], "on_deny": "no"}],
            "limits": [
                {"counter": format!("{name}_burst"), "window": "minute", "max": 1_000_000_000u32, "scope": "grant"},
                {"counter": format!("{name}_hourly"), "window": "hour", "max": 1_000_000_000u32, "scope": "pod"}
            ]
        }));
    }
    let mut doc =
        json!({"version": "1", "name": "bench/policy", "default": "deny", "tools": tools});
    let mut path = dir.join("bench-policy.json");
    if identity {
        doc["identity"] =
            json!({"service_account": {"audiences": ["mcp-warden"]}, "required": true});
        path = dir.join("bench-policy-identity.json");
    }
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The fixture key set (with its issuer) written to `dir`, and RS256 tokens for 8 agents.
fn identities(dir: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    let mut jwks: serde_json::Value = serde_json::from_str(include_str!(
        "../tests/fixtures/identity/rsa-test-jwks.json"
    ))
    .unwrap();
    jwks["issuer"] = json!(ISSUER);
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    mcp_warden::identity::install_crypto();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!(
        "../tests/fixtures/identity/rsa-test-key.pem"
    ))
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    let tokens = (0..8)
        .map(|i| {
            let claims = json!({"iss": ISSUER, "aud": ["mcp-warden"], "exp": now + 3600,
                                "sub": format!("system:serviceaccount:agents:agent-{i}")});
            format!(
                "Bearer {}",
                jsonwebtoken::encode(&header, &claims, &key).unwrap()
            )
        })
        .collect();
    (path, tokens)
}

struct Sidecar {
    child: Child,
    addr: SocketAddr,
}

impl Sidecar {
    fn start_bare(upstream: SocketAddr) -> Sidecar {
        let port = free_port();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--bare-proxy", &port.to_string(), &upstream.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = wait_listening(port);
        Sidecar { child, addr }
    }

    fn start(upstream: SocketAddr, policy: &std::path::Path, extra: &[&str]) -> Sidecar {
        Sidecar::start_binary(env!("CARGO_BIN_EXE_mcp-warden"), upstream, policy, extra)
    }

    fn start_binary(
        binary: &str,
        upstream: SocketAddr,
        policy: &std::path::Path,
        extra: &[&str],
    ) -> Sidecar {
        let (port, admin) = (free_port(), free_port());
        let mut child = Command::new(binary)
            .args([
                "sidecar",
                "--policy",
                policy.to_str().unwrap(),
                "--upstream",
                &format!("http://{upstream}/mcp"),
            ])
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .args(extra)
            // Extra sidecar flags, e.g. MCP_WARDEN_BENCH_ARGS="--worker-threads 2".
            .args(
                std::env::var("MCP_WARDEN_BENCH_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            // The production default: one JSON audit line per decision on stderr.
            .env(
                "MCP_WARDEN_LOG",
                std::env::var("MCP_WARDEN_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sidecar binary starts");
        // Drain the log pipe as a container runtime would.
        let mut logs = child.stderr.take().expect("piped");
        std::thread::spawn(move || std::io::copy(&mut logs, &mut std::io::sink()));
        let addr = wait_listening(port);
        Sidecar { child, addr }
    }

    /// User + system CPU time of the process so far.
    fn cpu(&self) -> Duration {
        process_cpu(&self.child.id().to_string())
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }
}

/// Waits until something listens on the loopback port.
fn wait_listening(port: u16) -> SocketAddr {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    addr
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time of a process (`self` for this one).
fn process_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // stat fields 14 and 15 (utime, stime), counted from the state field (field 3).
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

/// Busy and total CPU time of the whole machine (all cores), from /proc/stat.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0.0);
    (
        (total - idle) / clock_ticks() as f64,
        total / clock_ticks() as f64,
    )
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// The protocol version the load speaks: `MCP_WARDEN_BENCH_VERSION` (2025-06-18 by default;
/// 2026-07-28 adds the routing headers and `_meta`, and the sidecar watches each answer for a
/// server's question or task).
fn protocol_version() -> String {
    std::env::var("MCP_WARDEN_BENCH_VERSION").unwrap_or_else(|_| "2025-06-18".into())
}

/// One load phase: `conns` clients, each on its own keep-alive connection, for `secs`, with
/// opaque bearer tokens (8 callers).
async fn load(target: SocketAddr, conns: usize, secs: f64) -> Vec<u64> {
    let opaque: Vec<String> = (0..8).map(|i| format!("Bearer agent-{i}")).collect();
    load_as(target, conns, secs, &opaque).await
}

/// Like [`load`], client `c` sending `auth[c % auth.len()]`. Returns per-request latencies (ns).
async fn load_as(target: SocketAddr, conns: usize, secs: f64, auth: &[String]) -> Vec<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let stop = stop.clone();
        let auth = auth[c % auth.len()].clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(target).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let version = protocol_version();
            let tool = format!("tool_{:03}", c % 100);
            let mut params = json!({"name": tool,
                "arguments": {"path": "/workspace/notes/a.txt", "content": "hello", "size": 12}});
            if version == "2026-07-28" {
                params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": version});
            }
            let body = json!({"jsonrpc": "2.0", "id": c, "method": "tools/call", "params": params})
                .to_string();
            let body = Bytes::from(body);
            let mut lat = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let mut req = http::Request::post("/mcp")
                    .header("host", target.to_string())
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", &version)
                    .header("authorization", &auth);
                if version == "2026-07-28" {
                    req = req
                        .header("mcp-method", "tools/call")
                        .header("mcp-name", &tool);
                }
                let req = req.body(Full::new(body.clone())).unwrap();
                let t = Instant::now();
                let resp = send.send_request(req).await.unwrap();
                let status = resp.status();
                let _ = resp.into_body().collect().await.unwrap();
                lat.push(t.elapsed().as_nanos() as u64);
                assert_eq!(status, 200);
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64
}

fn row(name: &str, measured: String, budget: &str, ok: Option<bool>) -> bool {
    let verdict = match ok {
        Some(true) => "ok",
        Some(false) => "OVER BUDGET",
        None => "",
    };
    println!("{name:<52} {measured:>22}   {budget:<12} {verdict}");
    ok.unwrap_or(true)
}

/// The reference point: a bare hyper forwarder (no parsing, no policy, no metrics) with the
/// sidecar's runtime and pooled client. Run as `<bench> --bare-proxy PORT UPSTREAM`.
fn bare_proxy(port: u16, upstream: SocketAddr) {
    use hyper_util::client::legacy::Client;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client: Client<_, Incoming> = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let client = client.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let pq = parts
                            .uri
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_owned();
                        parts.uri = format!("http://{upstream}{pq}").parse().unwrap();
                        client.request(http::Request::from_parts(parts, body)).await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bare-proxy") {
        return bare_proxy(args[i + 1].parse().unwrap(), args[i + 2].parse().unwrap());
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, secs) = if quick { (2, 0.5) } else { (5, 2.0) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("mcp-warden-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let up = upstream().await;
        let sc = Sidecar::start(up, &policy_file(&dir, false), &[]);
        // Sanity: the call is allowed through the sidecar (a denial would be a much cheaper path).
        let warm = load(sc.addr, 1, 0.2).await;
        assert!(!warm.is_empty());
        let idle_rss = sc.status_kib("VmRSS:");
        // Of which: private memory, and the binary's own pages mapped from its file (shared,
        // clean, dropped first under memory pressure).
        let (idle_anon, idle_file) = (sc.status_kib("RssAnon:"), sc.status_kib("RssFile:"));
        println!("mcp-warden sidecar benchmark: {rounds} interleaved rounds of {secs} s per phase, 2 shared cores");
        println!("{:<52} {:>22}   {:<12}", "figure", "measured", "budget");
        let mut all_ok = true;

        // Concurrency 1: latency, direct and through, interleaved.
        let (mut direct, mut via) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            direct.extend(load(up, 1, secs).await);
            via.extend(load(sc.addr, 1, secs).await);
        }
        direct.sort_unstable();
        via.sort_unstable();
        for (p, name, budget_ms) in [(0.5, "p50", 0.10), (0.99, "p99", 0.30)] {
            let added = (pct(&via, p) - pct(&direct, p)) / 1e6;
            all_ok &= row(
                &format!("c=1 added latency {name} ({:.3} -> {:.3} ms)", pct(&direct, p) / 1e6, pct(&via, p) / 1e6),
                format!("{added:.3} ms"),
                &format!("<= {budget_ms:.2} ms"),
                Some(added <= budget_ms),
            );
        }

        // Saturated: direct, the bare forwarder and the sidecar interleaved in every round. The
        // bare forwarder is the physical limit of a hop (hyper, no parsing, same runtime and
        // pool): the budgets are ratios to it.
        let bare = Sidecar::start_bare(up);
        let _ = load(bare.addr, 1, 0.2).await;
        // Another build of the sidecar to compare with in the same rounds (a change's before):
        // MCP_WARDEN_BENCH_BEFORE=path/to/mcp-warden.
        let prior = std::env::var("MCP_WARDEN_BENCH_BEFORE")
            .ok()
            .map(|bin| Sidecar::start_binary(&bin, up, &policy_file(&dir, false), &[]));
        if let Some(b) = &prior {
            assert!(!load(b.addr, 1, 0.2).await.is_empty());
        }
        for conns in [16usize, 64] {
            let (mut nd, mut nb, mut nv, mut n0) = (0usize, 0usize, 0usize, 0usize);
            let (mut cpu_b, mut cpu_v, mut cpu_0) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let (mut bench_d, mut bench_v, mut busy_d, mut busy_v, mut all_d, mut all_v) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
            for _ in 0..rounds {
                let (b0, m0) = (process_cpu("self"), machine_cpu());
                nd += load(up, conns, secs).await.len();
                let (b1, m1) = (process_cpu("self"), machine_cpu());
                let before = bare.cpu();
                nb += load(bare.addr, conns, secs).await.len();
                cpu_b += bare.cpu() - before;
                let (b2, m2) = (process_cpu("self"), machine_cpu());
                let before = sc.cpu();
                nv += load(sc.addr, conns, secs).await.len();
                cpu_v += sc.cpu() - before;
                let (b3, m3) = (process_cpu("self"), machine_cpu());
                if let Some(b) = &prior {
                    let c0 = b.cpu();
                    n0 += load(b.addr, conns, secs).await.len();
                    cpu_0 += b.cpu() - c0;
                }
                bench_d += (b1 - b0).as_secs_f64();
                bench_v += (b3 - b2).as_secs_f64();
                busy_d += m1.0 - m0.0;
                busy_v += m3.0 - m2.0;
                all_d += m1.1 - m0.1;
                all_v += m3.1 - m2.1;
            }
            println!(
                "  (c={conns}: machine busy {:.0}% direct, {:.0}% through; load generator + upstream {:.1} µs/req direct, {:.1} µs/req through)",
                100.0 * busy_d / all_d,
                100.0 * busy_v / all_v,
                bench_d * 1e6 / nd as f64,
                bench_v * 1e6 / nv as f64
            );
            let total = secs * rounds as f64;
            let (rd, rb, rv) = (nd as f64 / total, nb as f64 / total, nv as f64 / total);
            row(
                &format!("c={conns} throughput through/direct ({rv:.0}/{rd:.0} req/s)"),
                format!("{:.2}", rv / rd),
                "",
                None,
            );
            all_ok &= row(
                &format!("c={conns} throughput sidecar/bare forwarder ({rv:.0}/{rb:.0})"),
                format!("{:.2}", rv / rb),
                ">= 0.95",
                Some(rv / rb >= 0.95),
            );
            let per_v = cpu_v.as_secs_f64() * 1e6 / nv as f64;
            let per_b = cpu_b.as_secs_f64() * 1e6 / nb as f64;
            all_ok &= row(
                &format!("c={conns} CPU/request sidecar/bare ({per_v:.1}/{per_b:.1} µs)"),
                format!("{:.2}x", per_v / per_b),
                "<= 1.10x",
                Some(per_v / per_b <= 1.10),
            );
            if prior.is_some() {
                let per_0 = cpu_0.as_secs_f64() * 1e6 / n0 as f64;
                let r0 = n0 as f64 / total;
                row(
                    &format!("c={conns} before: throughput/bare ({r0:.0}/{rb:.0})"),
                    format!("{:.2}", r0 / rb),
                    "",
                    None,
                );
                row(
                    &format!("c={conns} before: CPU/request/bare ({per_0:.1}/{per_b:.1} µs)"),
                    format!("{:.2}x", per_0 / per_b),
                    "",
                    None,
                );
            }
        }
        drop(prior);
        drop(bare);
        let peak = sc.status_kib("VmHWM:") as f64 / 1024.0;
        all_ok &= row("peak RSS under load", format!("{peak:.1} MiB"), "<= 20 MiB", Some(peak <= 20.0));
        let idle = idle_rss as f64 / 1024.0;
        all_ok &= row("idle RSS (policy loaded, after warm-up)", format!("{idle:.1} MiB"), "<= 8 MiB", Some(idle <= 8.0));
        row(
            "  of which private / the binary's file pages",
            format!("{:.1} / {:.1} MiB", idle_anon as f64 / 1024.0, idle_file as f64 / 1024.0),
            "",
            None,
        );
        // identity.serviceAccount on: the same load as 8 ServiceAccounts with RS256 tokens, against
        // the same sidecar without identity, interleaved.
        let (jwks, tokens) = identities(&dir);
        let ids = Sidecar::start(
            up,
            &policy_file(&dir, true),
            &["--jwks", jwks.to_str().unwrap()],
        );
        assert!(!load_as(ids.addr, 1, 0.2, &tokens).await.is_empty());
        let (mut n_plain, mut n_ids) = (0usize, 0usize);
        let (mut cpu_plain, mut cpu_ids) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..rounds {
            let before = sc.cpu();
            n_plain += load(sc.addr, 16, secs).await.len();
            cpu_plain += sc.cpu() - before;
            let before = ids.cpu();
            n_ids += load_as(ids.addr, 16, secs, &tokens).await.len();
            cpu_ids += ids.cpu() - before;
        }
        let plain = cpu_plain.as_secs_f64() * 1e6 / n_plain as f64;
        let verified = cpu_ids.as_secs_f64() * 1e6 / n_ids as f64;
        all_ok &= row(
            &format!("c=16 CPU/request with identity.serviceAccount ({plain:.1} -> {verified:.1} µs)"),
            format!("{:.2}x", verified / plain),
            "<= 1.10x",
            Some(verified / plain <= 1.10),
        );
        drop(ids);
        drop(sc);
        println!("{}", if all_ok { "all budgets met" } else { "SOME BUDGETS MISSED" });
        let _ = std::fs::remove_dir_all(&dir);
    });
}
