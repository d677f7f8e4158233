//! Admission benchmark: `cargo bench --bench webhook` (add `-- --quick` for a short run).
//!
//! The real HTTPS webhook server (rustls, the controller's own CA) with 1,000 McpPolicies in its
//! cache (10 in the pod's namespace, one of which selects the pod) answers pod AdmissionReviews
//! from the fixture, the way the API server sends them: over keep-alive TLS connections, and over
//! a new connection per review (the worst case). Prints p50/p99/max against the 10 ms budget.

use kube::runtime::{reflector, watcher};
use mcp_warden::cluster::InjectConfig;
use mcp_warden::crd::build::PolicyBuilder;
use mcp_warden::crd::McpPolicy;
use mcp_warden::metrics::ControllerMetrics;
use mcp_warden::webhook::server::{serve, WebhookState};
use mcp_warden::webhook::tls::{self, Lifetimes};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::rustls;

fn policy(ns: &str, name: &str, app: &str, created: u32) -> McpPolicy {
    let mut tools = serde_json::Map::new();
    for t in 0..20 {
        tools.insert(
            format!("tool_{t}"),
            json!({"limits": [{"counter": format!("c{t}"), "window": "minute", "max": 10}]}),
        );
    }
    PolicyBuilder::new(ns, name)
        .app(app)
        .created(created % 3600)
        .metadata(json!({"uid": format!("{ns}-{name}")}))
        .spec(json!({ "tools": tools }))
        .build()
}

async fn one(
    stream: &mut BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    body: &[u8],
) -> usize {
    let head = format!(
        "POST /mutate?timeout=10s HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
    stream.get_mut().write_all(body).await.unwrap();
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut buf = vec![0; len];
    stream.read_exact(&mut buf).await.unwrap();
    assert!(
        buf.windows(7).any(|w| w == b"\"patch\""),
        "the review was not answered with a patch"
    );
    len
}

/// Prints one mode's latency percentiles against the budget.
fn report(mode: &str, mut lat: Vec<u64>) {
    lat.sort_unstable();
    let p99 = pct(&lat, 0.99);
    let verdict = if p99 <= 10.0 { "met" } else { "NOT met" };
    println!(
        "{mode:<28} {:>10.3} {:>10.3} {:>10.3}   p99 <= 10 ms: {verdict}",
        pct(&lat, 0.5),
        p99,
        pct(&lat, 1.0)
    );
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 500 } else { 5000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let names = vec!["mcp-warden-webhook.mcp-warden.svc".to_string()];
        let material = tls::next(None, &names, now(), &Lifetimes::default())
            .unwrap()
            .unwrap();
        let (store, mut writer) = reflector::store::<McpPolicy>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for i in 0..1000u32 {
            let ns = if i < 10 {
                "notebooks".to_string()
            } else {
                format!("team-{}", i % 99)
            };
            let app = if i == 7 {
                "jupyter-mcp".to_string()
            } else {
                format!("app-{i}")
            };
            writer.apply_watcher_event(&watcher::Event::InitApply(policy(
                &ns,
                &format!("p{i}"),
                &app,
                i,
            )));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let state = WebhookState::new(
            store,
            InjectConfig::new("ghcr.io/mcp-warden/mcp-warden:0.1.0", "0.1.0"),
            ControllerMetrics::new(),
            None,
        );
        state.certs.set(tls::certified_key(&material).unwrap());
        state.synced.store(true, Ordering::Release);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(listener, state, rx));
        let _w = writer;

        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in
            rustls::pki_types::CertificateDer::pem_slice_iter(material[tls::CA_BUNDLE].as_bytes())
        {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        let connector = tokio_rustls::TlsConnector::from(cfg);
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/admission/pod-create.json"
        ))
        .unwrap();
        let connect = || async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = rustls::pki_types::ServerName::try_from("mcp-warden-webhook.mcp-warden.svc")
                .unwrap();
            BufReader::new(connector.connect(name, tcp).await.unwrap())
        };

        println!(
            "admission: 1,000 McpPolicies cached, pod review {} bytes, {n} reviews per mode",
            body.len()
        );
        println!(
            "{:<28} {:>10} {:>10} {:>10}   budget",
            "mode", "p50 ms", "p99 ms", "max ms"
        );
        // Keep-alive: the API server reuses connections to a webhook.
        let mut s = connect().await;
        for _ in 0..100 {
            one(&mut s, &body).await;
        }
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            one(&mut s, &body).await;
            lat.push(t.elapsed().as_micros() as u64);
        }
        report("keep-alive TLS", lat);
        // A TLS handshake per review.
        let mut lat = Vec::with_capacity(n / 5);
        for _ in 0..n / 5 {
            let t = Instant::now();
            let mut s = connect().await;
            one(&mut s, &body).await;
            lat.push(t.elapsed().as_micros() as u64);
        }
        report("new TLS connection each", lat);
    });
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
