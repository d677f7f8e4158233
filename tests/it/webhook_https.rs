//! The admission webhooks through the real HTTPS server: TLS with the controller's own CA,
//! AdmissionReview round trips, the not-ready refusal, and certificate rotation seen by a client
//! that trusts only the published `caBundle`.

use kube::runtime::reflector;
use kube::runtime::watcher;
use mcp_warden::cluster::InjectConfig;
use mcp_warden::crd::build::PolicyBuilder;
use mcp_warden::crd::McpPolicy;
use mcp_warden::metrics::ControllerMetrics;
use mcp_warden::webhook::server::{serve, WebhookState};
use mcp_warden::webhook::tls::{self, Lifetimes, Material};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

const NAMES: &[&str] = &["mcp-warden-webhook.mcp-warden.svc", "localhost"];

fn names() -> Vec<String> {
    NAMES.iter().map(|s| s.to_string()).collect()
}

fn policy(ns: &str, name: &str, app: &str) -> McpPolicy {
    PolicyBuilder::new(ns, name)
        .app(app)
        .created(0)
        .metadata(json!({"uid": "u-1"}))
        .build()
}

/// A webhook server on 127.0.0.1 with the given certificate material and policies.
async fn start(
    material: &Material,
    policies: Vec<McpPolicy>,
    synced: bool,
) -> (
    std::net::SocketAddr,
    Arc<WebhookState>,
    tokio::sync::watch::Sender<bool>,
) {
    let (store, mut writer) = reflector::store::<McpPolicy>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in policies {
        writer.apply_watcher_event(&watcher::Event::InitApply(p));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // The store must outlive the test: keep the writer alive in a task.
    tokio::spawn(async move {
        let _w = writer;
        std::future::pending::<()>().await
    });
    let state = WebhookState::new(
        store,
        InjectConfig::new("ghcr.io/mcp-warden/mcp-warden:0.1.0", "0.1.0"),
        ControllerMetrics::new(),
        None,
    );
    state.certs.set(tls::certified_key(material).unwrap());
    state.synced.store(synced, Ordering::Release);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, state.clone(), rx));
    (addr, state, tx)
}

fn client_config(bundle: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// POSTs `body` to `path` over TLS, trusting only `bundle`, as the API server does.
async fn post(
    addr: std::net::SocketAddr,
    bundle: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Value), String> {
    let connector = tokio_rustls::TlsConnector::from(client_config(bundle));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from("mcp-warden-webhook.mcp-warden.svc").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // Write the body while reading the answer, as HTTP clients do: a server may answer (and
    // close) before it has read a body it refuses, and a client that only writes would wait on
    // a full socket forever.
    let (mut rd, mut wr) = tokio::io::split(tls);
    let body = body.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&body).await;
        wr
    });
    let mut out = Vec::new();
    let _ = rd.read_to_end(&mut out).await;
    writer.abort();
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let json = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let v = serde_json::from_str(json).unwrap_or(Value::Null);
    Ok((status, v))
}

/// New certificate material, valid now.
fn fresh() -> Material {
    tls::next(None, &names(), now(), &Lifetimes::default())
        .unwrap()
        .unwrap()
}

/// The fixture's pod review, posted to `/mutate` trusting the material's bundle.
async fn mutate_fixture(addr: std::net::SocketAddr, m: &Material) -> Value {
    post(addr, &m[tls::CA_BUNDLE], "/mutate", &pod_review())
        .await
        .unwrap()
        .1
}

fn pod_review() -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/admission/pod-create.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test]
async fn a_pod_review_over_https_gets_its_patch() {
    let m = fresh();
    let (addr, state, _stop) = start(
        &m,
        vec![policy("notebooks", "jupyter", "jupyter-mcp")],
        true,
    )
    .await;
    let (status, v) = post(addr, &m[tls::CA_BUNDLE], "/mutate", &pod_review())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    use base64::Engine as _;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(
            v["response"]["patch"]
                .as_str()
                .expect("the patch is base64 text"),
        )
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    assert!(
        patch
            .as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/spec/containers/1" && op["value"]["name"] == "mcp-warden"),
        "{patch}"
    );
    let text = String::from_utf8(state.metrics.render()).unwrap();
    assert!(
        text.contains("mcp_warden_injections_total{result=\"injected\"} 1"),
        "{text}"
    );
    assert!(text.contains("mcp_warden_admission_duration_seconds_count{webhook=\"mutate\"} 1"));
}

#[tokio::test]
async fn a_pod_no_policy_selects_is_allowed_unchanged() {
    let m = fresh();
    let (addr, _state, _stop) = start(
        &m,
        vec![
            policy("notebooks", "other", "something-else"),
            policy("elsewhere", "jupyter", "jupyter-mcp"),
        ],
        true,
    )
    .await;
    let v = mutate_fixture(addr, &m).await;
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none(), "{v}");
}

#[tokio::test]
async fn an_unsynced_replica_refuses_instead_of_skipping_injection() {
    let m = fresh();
    let (addr, state, _stop) = start(
        &m,
        vec![policy("notebooks", "jupyter", "jupyter-mcp")],
        false,
    )
    .await;
    let v = mutate_fixture(addr, &m).await;
    assert_eq!(v["response"]["allowed"], false);
    // The API server discards an answer that does not echo the request's uid.
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    let msg = v["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("not ready") && msg.contains("McpPolicy cache"),
        "{msg}"
    );
    assert!(v["response"].get("patch").is_none());
    // Once synced it injects.
    state.synced.store(true, Ordering::Release);
    let v = mutate_fixture(addr, &m).await;
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"]["patch"].is_string());
}

#[tokio::test]
async fn the_validating_webhook_names_the_field_of_a_bad_regex() {
    let m = fresh();
    let (addr, _state, _stop) = start(&m, vec![], true).await;
    let mut bad: Value = serde_json::from_slice(
        &std::fs::read(format!(
            "{}/tests/fixtures/admission/mcppolicy-create.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    bad["request"]["object"]["spec"]["tools"] = json!({"run_cell": {"denyIf": [{"conditions": [
        {"path": "args.code", "op": "regex", "value": "(unclosed"}]}]}});
    let (_, v) = post(
        addr,
        &m[tls::CA_BUNDLE],
        "/validate",
        &serde_json::to_vec(&bad).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(v["response"]["uid"], "3c1b6d4e-9a7f-4e21-8d55-2f0a8c9e1b77");
    assert_eq!(v["response"]["allowed"], false);
    let msg = v["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.tools.run_cell.denyIf[0].conditions[0].value"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_oversized_or_unreadable_review_is_refused_not_allowed() {
    let m = fresh();
    let (addr, _state, _stop) = start(&m, vec![], true).await;
    let (_, v) = post(addr, &m[tls::CA_BUNDLE], "/mutate", b"{not json")
        .await
        .unwrap();
    assert_eq!(v["response"]["allowed"], false);
    let big = vec![b' '; mcp_warden::webhook::server::MAX_REVIEW_BYTES + 10];
    let (_, v) = post(addr, &m[tls::CA_BUNDLE], "/mutate", &big)
        .await
        .unwrap();
    assert_eq!(v["response"]["allowed"], false);
    assert!(v["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains("limit"));
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn certs_in(bundle: &str) -> usize {
    bundle.matches("-----BEGIN CERTIFICATE-----").count()
}

/// Rotation with overlap: at every step, a client trusting only the published bundle accepts
/// whatever certificate a replica may still be serving.
#[tokio::test]
async fn certificates_rotate_with_an_overlap_the_api_server_never_notices() {
    let day = 86_400;
    let life = Lifetimes {
        ca: Duration::from_secs(90 * day as u64),
        serving: Duration::from_secs(30 * day as u64),
        overlap: Duration::from_secs(3600),
    };
    // Timed so that the last two states are valid now, for real handshakes.
    let t0 = now() - 61 * day - 3600;
    let m0 = tls::next(None, &names(), t0, &life).unwrap().unwrap();
    assert_eq!(certs_in(&m0[tls::CA_BUNDLE]), 1);
    // Nothing to do while everything is fresh.
    assert!(tls::next(Some(&m0), &names(), t0 + day, &life)
        .unwrap()
        .is_none());

    // The serving certificate is reissued with a third of its life left, from the same CA.
    let t1 = t0 + 21 * day;
    let m1 = tls::next(Some(&m0), &names(), t1, &life).unwrap().unwrap();
    assert_ne!(m1[tls::TLS_CERT], m0[tls::TLS_CERT]);
    assert_eq!(m1[tls::CA_CERT], m0[tls::CA_CERT]);
    let leaf = tls::info(tls::TLS_CERT, &m1[tls::TLS_CERT]).unwrap();
    assert_eq!(leaf.not_after, t1 + 30 * day);

    let m1 = tls::next(Some(&m1), &names(), t0 + 45 * day, &life)
        .unwrap()
        .unwrap();

    // Step 1: the CA has a third of its life left: a next CA joins the bundle, the serving
    // certificate stays.
    let t2 = t0 + 61 * day;
    let m2 = tls::next(Some(&m1), &names(), t2, &life).unwrap().unwrap();
    assert_eq!(certs_in(&m2[tls::CA_BUNDLE]), 2);
    assert_eq!(m2[tls::TLS_CERT], m1[tls::TLS_CERT]);
    assert!(m2.contains_key(tls::NEXT_CA_CERT));
    // Within the overlap nothing more happens.
    assert!(tls::next(Some(&m2), &names(), t2 + 60, &life)
        .unwrap()
        .is_none());

    // Step 2: after the overlap the next CA becomes the CA and issues a new certificate; the old
    // CA stays trusted until it expires.
    let t3 = t2 + 3600;
    let m3 = tls::next(Some(&m2), &names(), t3, &life).unwrap().unwrap();
    assert_eq!(m3[tls::CA_CERT], m2[tls::NEXT_CA_CERT]);
    assert_ne!(m3[tls::TLS_CERT], m2[tls::TLS_CERT]);
    assert_eq!(certs_in(&m3[tls::CA_BUNDLE]), 2);
    let new_ca = tls::info(tls::CA_CERT, &m3[tls::CA_CERT]).unwrap();
    let new_leaf = tls::info(tls::TLS_CERT, &m3[tls::TLS_CERT]).unwrap();
    assert_eq!(new_leaf.issuer, new_ca.subject);

    // Real handshakes: the bundle of m2 (published before any replica serves the new
    // certificate) trusts both the old and the new serving certificate.
    let (old_addr, _s1, _t1) = start(&m2, vec![], true).await;
    let (new_addr, _s2, _t2) = start(&m3, vec![], true).await;
    for (addr, bundle) in [
        (old_addr, &m2[tls::CA_BUNDLE]),
        (new_addr, &m2[tls::CA_BUNDLE]),
        (old_addr, &m3[tls::CA_BUNDLE]),
        (new_addr, &m3[tls::CA_BUNDLE]),
    ] {
        let r = post(addr, bundle, "/mutate", b"{}").await;
        assert!(r.is_ok(), "{r:?}");
    }
    // And the check is real: the first CA alone does not trust the new certificate.
    let r = post(new_addr, &m0[tls::CA_CERT], "/mutate", b"{}").await;
    assert!(r.as_ref().is_err_and(|e| e.contains("TLS")), "{r:?}");

    // Step 3: once the old CA has expired it leaves the bundle.
    let t4 = t0 + 91 * day;
    let m4 = tls::next(Some(&m3), &names(), t4, &life).unwrap().unwrap();
    assert!(!m4.contains_key(tls::PREVIOUS_CA_CERT));
    assert_eq!(certs_in(&m4[tls::CA_BUNDLE]), 1);
}

#[test]
fn a_change_of_names_reissues_the_serving_certificate() {
    let life = Lifetimes::default();
    let m = tls::next(None, &names(), now(), &life).unwrap().unwrap();
    let other = vec!["127.0.0.1".to_string()];
    let m2 = tls::next(Some(&m), &other, now(), &life).unwrap().unwrap();
    assert_eq!(m2[tls::CA_CERT], m[tls::CA_CERT]);
    assert_eq!(
        tls::info(tls::TLS_CERT, &m2[tls::TLS_CERT]).unwrap().names,
        other
    );
}

#[test]
fn unreadable_material_is_replaced_whole() {
    let life = Lifetimes::default();
    let mut m = tls::next(None, &names(), now(), &life).unwrap().unwrap();
    m.insert(tls::CA_CERT.into(), "garbage".into());
    let m2 = tls::next(Some(&m), &names(), now(), &life)
        .unwrap()
        .unwrap();
    assert!(tls::info(tls::CA_CERT, &m2[tls::CA_CERT]).is_ok());
    assert_eq!(certs_in(&m2[tls::CA_BUNDLE]), 1);
}

/// Lifetimes of seconds (the cluster test's rotation flags) rotate on schedule: a fresh serving
/// certificate is not due at once (its `notBefore` is backdated, which must not count as life),
/// and is reissued in its last third.
#[test]
fn short_lifetimes_rotate_on_schedule_not_at_once() {
    let life = Lifetimes {
        ca: Duration::from_secs(45),
        serving: Duration::from_secs(15),
        overlap: Duration::from_secs(5),
    };
    let t0 = 1_900_000_000;
    let m0 = tls::next(None, &names(), t0, &life).unwrap().unwrap();
    assert!(
        tls::next(Some(&m0), &names(), t0 + 9, &life)
            .unwrap()
            .is_none(),
        "nothing is due 9 s into a 15 s certificate and a 45 s CA"
    );
    let m1 = tls::next(Some(&m0), &names(), t0 + 11, &life)
        .unwrap()
        .expect("the serving certificate is due in its last third");
    assert_ne!(m1[tls::TLS_CERT], m0[tls::TLS_CERT]);
    assert_eq!(
        m1[tls::CA_BUNDLE],
        m0[tls::CA_BUNDLE],
        "the CA is not due yet"
    );
}
