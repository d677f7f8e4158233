//! One budget across replicas: `cargo bench --bench peers` (add `-- --quick` to skip the
//! three-minute sustained run).
//!
//! Three real `mcp-warden sidecar` processes of one policy, each in front of its own fast
//! upstream, told of each other by a peer file as the controller renders it; a client sends its
//! calls round robin over them. Every peer request passes through a counting TCP relay owned by
//! the bench, so the bytes between sidecars are measured, not estimated. Printed:
//! - allowed calls per window for the seeds' limits (10, 30, 60 a minute and 30 an hour, per
//!   caller), in steady state, when the owner of the key is killed mid-window (before and after
//!   the peer set is updated), and when a fourth replica joins mid-window;
//! - with the sustained run, allowed calls per minute over three minutes of a 10/minute limit;
//! - the latency of a limited call on the key's owner, on a non-owner (one hop), of a leased
//!   limit's call on a non-owner, and of a call to a tool without a limit, beside a sidecar
//!   without peers;
//! - peer bytes per call on a non-owner.

mod common;
use bytes::Bytes;
use common::{free_port, upstream};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mcp_warden::sidecar::peers::owner_among;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLICY: &str = r#"
version: "1"
identity: {header: x-agent}
tools:
  run_cell:
    limits: [{counter: run_cell_rate, window: minute, max: 10, scope: grant}]
  notebook_edit:
    limits: [{counter: notebook_edit_rate, window: minute, max: 30, scope: grant}]
  list_directory:
    limits: [{counter: list_directory_rate, window: minute, max: 60, scope: grant}]
  write_file:
    limits: [{counter: write_file_rate, window: hour, max: 30, scope: grant}]
  warm:
    limits: [{counter: warm_rate, window: minute, max: 50, scope: grant}]
  hot:
    limits: [{counter: hot_rate, window: minute, max: 1000000, scope: grant}]
  free: {}
"#;

/// The seeds' limits: tool, counter, max.
const SEEDS: [(&str, &str, u32); 4] = [
    ("run_cell", "run_cell_rate", 10),
    ("notebook_edit", "notebook_edit_rate", 30),
    ("list_directory", "list_directory_rate", 60),
    ("write_file", "write_file_rate", 30),
];

/// A TCP relay in front of a sidecar's admin port that counts the bytes both ways as they pass.
async fn relay(to: SocketAddr, bytes: Arc<AtomicU64>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                continue;
            };
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let Ok(out) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = out.set_nodelay(true);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = out.into_split();
                tokio::spawn(pipe(ri, wo, bytes.clone()));
                tokio::spawn(pipe(ro, wi, bytes));
            });
        }
    });
    addr
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bytes: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

struct Replica {
    name: String,
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    /// Where peers reach its admin port: the counting relay.
    relayed: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(dir: &Path, name: &str, peers: bool, bytes: &Arc<AtomicU64>) -> Replica {
    let up = upstream().await;
    let (port, admin) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-warden"));
    cmd.args([
        "sidecar",
        "--policy",
        dir.join("policy.yaml").to_str().unwrap(),
    ])
    .args(["--upstream", &format!("http://{up}/mcp")])
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
    .args(["--pod-name", name])
    .env("MCP_WARDEN_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if peers {
        cmd.args(["--peers", dir.join("peers.json").to_str().unwrap()])
            .args(["--peer-key", dir.join("peer.key").to_str().unwrap()]);
    }
    let child = cmd.spawn().expect("the sidecar binary starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    for _ in 0..500 {
        if std::net::TcpStream::connect(addr).is_ok() && std::net::TcpStream::connect(admin).is_ok()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let relayed = relay(admin, bytes.clone()).await;
    Replica {
        name: name.to_owned(),
        child,
        addr,
        admin,
        relayed,
    }
}

/// Writes the peer file (as the controller renders it) and waits until every sidecar read it.
async fn tell(dir: &Path, replicas: &[&Replica], total: usize) {
    let peers: Vec<_> = replicas
        .iter()
        .map(|r| json!({"name": r.name, "address": r.relayed.to_string()}))
        .collect();
    let file = json!({"replicas": total, "peers": peers}).to_string();
    std::fs::write(dir.join("peers.json.tmp"), file).unwrap();
    std::fs::rename(dir.join("peers.json.tmp"), dir.join("peers.json")).unwrap();
    for r in replicas {
        let want = format!("mcp_warden_peers{{policy=\"policy\"}} {}", replicas.len());
        for _ in 0..500 {
            if metrics(r.admin).await.contains(&want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn metrics(admin: SocketAddr) -> String {
    let (status, body) = send(admin, "GET", "/metrics", "", None).await;
    assert_eq!(status, 200);
    body
}

/// One request on a fresh connection (the sidecar's keep-alive is not what is measured).
async fn send(
    to: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    agent: Option<&str>,
) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(to).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", to.to_string())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(a) = agent {
        req = req.header("x-agent", a);
    }
    let resp = s
        .send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&b).into_owned())
}

/// A keep-alive client to one sidecar.
struct Client {
    to: SocketAddr,
    s: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn new(to: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(to).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { to, s }
    }

    /// Calls `tool` as `agent`: whether it ran, and how long the answer took.
    async fn call(&mut self, agent: &str, tool: &str) -> (bool, Duration) {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": {}}})
        .to_string();
        let req = http::Request::post("/mcp")
            .header("host", self.to.to_string())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .header("x-agent", agent)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        // A connection the sidecar closed (its keep-alive ended) is opened again, untimed.
        if self.s.ready().await.is_err() {
            *self = Client::new(self.to).await;
        }
        let t = Instant::now();
        let resp = self.s.send_request(req).await.unwrap();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        let took = t.elapsed();
        let text = String::from_utf8_lossy(&b);
        (!text.contains("\"isError\":true"), took)
    }
}

async fn clients(replicas: &[&Replica]) -> Vec<Client> {
    let mut out = Vec::new();
    for r in replicas {
        out.push(Client::new(r.addr).await);
    }
    out
}

/// `n` calls round robin over `cs`: how many ran.
async fn round_robin(cs: &mut [Client], agent: &str, tool: &str, n: u32) -> u32 {
    let mut ran = 0;
    for i in 0..n as usize {
        let k = i % cs.len();
        ran += u32::from(cs[k].call(agent, tool).await.0);
    }
    ran
}

/// An agent whose key of `counter` is owned by `owner` among `names`.
fn agent_of(names: &[&str], counter: &str, owner: &str, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .find(|a| owner_among(names, counter, a) == Some(owner))
        .unwrap()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

async fn setup(tag: &str) -> (PathBuf, Arc<AtomicU64>, Vec<Replica>) {
    let dir = std::env::temp_dir().join(format!("mcp-warden-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("peer.key"), [7u8; 32]).unwrap();
    let bytes = Arc::new(AtomicU64::new(0));
    let mut replicas = Vec::new();
    for n in ["web-0", "web-1", "web-2"] {
        replicas.push(start(&dir, n, true, &bytes).await);
    }
    tell(&dir, &replicas.iter().collect::<Vec<_>>(), 3).await;
    (dir, bytes, replicas)
}

const NAMES: [&str; 3] = ["web-0", "web-1", "web-2"];

async fn steady() {
    let (_dir, _bytes, replicas) = setup("steady").await;
    let mut cs = clients(&replicas.iter().collect::<Vec<_>>()).await;
    println!("\nsteady state: 3 replicas, 3 x max calls round robin, one caller per limit");
    for (tool, counter, max) in SEEDS {
        let mut runs = Vec::new();
        for owner in NAMES {
            let agent = agent_of(&NAMES, counter, owner, &format!("steady-{tool}"));
            runs.push(round_robin(&mut cs, &agent, tool, 3 * max).await);
        }
        println!(
            "  {tool:<15} {max:>3} per {:<6}  allowed {runs:?} (key owned by web-0, web-1, web-2)",
            if tool == "write_file" {
                "hour"
            } else {
                "minute"
            }
        );
    }
}

async fn kill() {
    println!("\nreplica kill mid-window: the key's owner killed after max/2 calls (peer set not yet updated), then the peer set updated");
    for (tool, counter, max) in SEEDS {
        let (dir, bytes, mut replicas) = setup(&format!("kill-{tool}")).await;
        let _ = bytes;
        let agent = agent_of(&NAMES, counter, "web-0", &format!("kill-{tool}"));
        let mut cs = clients(&replicas.iter().collect::<Vec<_>>()).await;
        let before = round_robin(&mut cs, &agent, tool, max / 2).await;
        drop(replicas.remove(0));
        let mut survivors = clients(&replicas.iter().collect::<Vec<_>>()).await;
        let stale = round_robin(&mut survivors, &agent, tool, 3 * max).await;
        tell(&dir, &replicas.iter().collect::<Vec<_>>(), 2).await;
        let updated = round_robin(&mut survivors, &agent, tool, 3 * max).await;
        println!(
            "  {tool:<15} {max:>3}: {before} before the kill + {stale} on shares + {updated} by the new owner = {} in the window ({:.2} x max)",
            before + stale + updated,
            f64::from(before + stale + updated) / f64::from(max)
        );
    }
}

async fn scale_up() {
    println!("\nscale-up mid-window: a fourth replica joins after max/2 calls and owns the key");
    for (tool, counter, max) in SEEDS {
        let (dir, bytes, mut replicas) = setup(&format!("up-{tool}")).await;
        let four = ["web-0", "web-1", "web-2", "web-3"];
        let agent = (0..)
            .map(|i| format!("up-{tool}-{i}"))
            .find(|a| owner_among(&four, counter, a) == Some("web-3"))
            .unwrap();
        let mut cs = clients(&replicas.iter().collect::<Vec<_>>()).await;
        let before = round_robin(&mut cs, &agent, tool, max / 2).await;
        replicas.push(start(&dir, "web-3", true, &bytes).await);
        tell(&dir, &replicas.iter().collect::<Vec<_>>(), 4).await;
        let mut all = clients(&replicas.iter().collect::<Vec<_>>()).await;
        let after = round_robin(&mut all, &agent, tool, 3 * max).await;
        println!(
            "  {tool:<15} {max:>3}: {before} before + {after} after = {} in the window ({:.2} x max)",
            before + after,
            f64::from(before + after) / f64::from(max)
        );
    }
}

async fn sustained() {
    let (_dir, _bytes, replicas) = setup("sustained").await;
    let mut cs = clients(&replicas.iter().collect::<Vec<_>>()).await;
    let agent = "sustained";
    println!("\nsustained: a call every 100 ms round robin for 3 minutes, run_cell 10 per minute");
    let start = Instant::now();
    let mut per_minute = [0u32; 3];
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(180) {
        let minute = (start.elapsed().as_secs() / 60) as usize;
        let k = i % cs.len();
        if cs[k].call(agent, "run_cell").await.0 {
            per_minute[minute.min(2)] += 1;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  allowed per minute: {per_minute:?} of {i} calls");
}

async fn latency() {
    let (dir, bytes, replicas) = setup("latency").await;
    let _ = dir;
    let alone = start(
        &std::env::temp_dir().join(format!("mcp-warden-bench-latency-{}", std::process::id())),
        "alone",
        false,
        &Arc::new(AtomicU64::new(0)),
    )
    .await;
    let mut owner = Client::new(replicas[0].addr).await;
    let mut other = Client::new(replicas[1].addr).await;
    let mut plain = Client::new(alone.addr).await;
    let n = 3000;
    // Callers whose `warm_rate` key (50 a minute: asked on every call) web-0 owns, one call
    // each on the owner and on web-1; one caller of `hot_rate` (leased) whose key web-0 owns.
    let agents: Vec<String> = (0..n)
        .map(|i| agent_of(&NAMES, "warm_rate", "web-0", &format!("lat-{i}")))
        .collect();
    let hot = agent_of(&NAMES, "hot_rate", "web-0", "lat-hot");
    let mut series: [Vec<Duration>; 6] = Default::default();
    // Interleaved, so every series sees the same machine.
    for a in &agents {
        series[0].push(owner.call(a, "warm").await.1);
        series[1].push(other.call(a, "warm").await.1);
        series[2].push(other.call(&hot, "hot").await.1);
        series[3].push(other.call(a, "free").await.1);
        series[4].push(plain.call(a, "free").await.1);
        series[5].push(plain.call(a, "warm").await.1);
    }
    println!("\nlatency, {n} calls each, interleaved (ms)             p50     p99");
    let names = [
        "limit of 50/min, call on the key's owner",
        "limit of 50/min, call on a non-owner (one hop)",
        "leased limit (1M/min), call on a non-owner",
        "unlimited call, sidecar with peers",
        "unlimited call, sidecar without peers",
        "limit of 50/min, sidecar without peers",
    ];
    for (name, s) in names.iter().zip(series.iter_mut()) {
        s.sort();
        println!("  {name:<46} {:>7.3} {:>7.3}", pct(s, 0.5), pct(s, 0.99));
    }
    // Peer bytes, each kind of call alone.
    let per_call = async |other: &mut Client, tool: &str, agents: &[String]| {
        let before = bytes.load(Ordering::Relaxed);
        for a in agents {
            other.call(a, tool).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        (bytes.load(Ordering::Relaxed) - before) as f64 / agents.len() as f64
    };
    let fresh: Vec<String> = (0..500)
        .map(|i| agent_of(&NAMES, "warm_rate", "web-0", &format!("bytes-{i}")))
        .collect();
    let hop = per_call(&mut other, "warm", &fresh).await;
    let leased = per_call(&mut other, "hot", &vec![hot.clone(); 500]).await;
    let free = per_call(&mut other, "free", &fresh).await;
    println!(
        "\npeer bytes per call on a non-owner (request and answer, HTTP/1.1 keep-alive): \
         {hop:.0} with a hop, {leased:.0} leased, {free:.0} unlimited"
    );
    drop(replicas);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        steady().await;
        kill().await;
        scale_up().await;
        latency().await;
        if !quick {
            sustained().await;
        }
    });
}
