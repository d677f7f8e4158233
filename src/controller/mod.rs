//! The controller: reconciles each McpPolicy into the ConfigMap its sidecars read, an isolating
//! NetworkPolicy, and a status; serves the admission webhooks on every replica; and, on the
//! replica holding the Lease, manages the webhook certificates. What it writes is computed by
//! the pure functions of [`render`] and [`reconcile::desired`]; the I/O around them stays thin.

pub mod approvals;
pub mod certs;
pub mod events;
pub mod keys;
pub mod leader;
pub mod rbac;
pub mod reconcile;
pub mod render;
pub mod tools;

use crate::cluster::{InjectConfig, MANAGED_BY};
use crate::crd::McpPolicy;
use crate::metrics::ControllerMetrics;
use crate::serve::admin;
use crate::webhook::server::WebhookState;
use futures_util::StreamExt;
use hyper_util::server::graceful::GracefulShutdown;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Reconciles in flight at once: each holds copies of what its policy depends on, so the bound
/// keeps memory flat however many policies change together.
const RECONCILE_CONCURRENCY: u16 = 8;

/// Time a scrape or probe has to send its headers.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often `auto` re-checks the API server and kubelet versions.
const NATIVE_RECHECK: Duration = Duration::from_secs(600);

/// A request whose connection sends nothing for this long fails, and its caller retries on a new
/// connection. Without it a connection that stopped answering (an API server that went away
/// behind its Service, a route that drops packets) would hold the Lease's renewal, a reconcile
/// or a cache's list until the kernel gives up on it, many minutes later.
const API_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Watches end after this and resume from their last resourceVersion, so a healthy watch sends
/// something (its end) well within [`API_READ_TIMEOUT`].
const WATCH_TIMEOUT_SECS: u32 = 45;

/// How long a reconcile waits for the Pod and Service caches before it fails and retries
/// (with a warning naming them) instead of waiting unseen.
const CACHE_WAIT: Duration = Duration::from_secs(30);

/// How the sidecar is injected: always native, never, or native when the cluster supports it
/// (`--native-sidecar auto|true|false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NativeSidecar {
    Auto,
    #[value(name = "true")]
    Always,
    #[value(name = "false")]
    Never,
}

/// The controller's settings (from its flags).
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub identity: String,
    pub webhook_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub certs: certs::CertConfig,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub inject: InjectConfig,
    pub native_sidecar: NativeSidecar,
    pub drain_delay: Duration,
    /// How often every replica re-reads the serving certificate and the leader re-checks the
    /// Secret and `caBundle`.
    pub cert_interval: Duration,
    /// Whether the leader manages the webhook certificate (false under cert-manager).
    pub manage_certificates: bool,
    /// How often the key sets of `identity.serviceAccount` and `identity.jwt` are fetched again.
    pub jwks_refresh: Duration,
    /// Polling sidecars for approval requests, and keeping McpApprovals.
    pub approvals: approvals::ApprovalsConfig,
}

/// Whether native sidecars can be used: API server and every kubelet at 1.32 or newer (older
/// ones do not resolve named ports on native sidecars, or never finish the init container).
pub fn native_supported(api_server: (u32, u32), kubelets: &[String]) -> bool {
    let ok = |(major, minor): (u32, u32)| major > 1 || (major == 1 && minor >= 32);
    ok(api_server) && kubelets.iter().all(|v| parse_version(v).is_some_and(ok))
}

/// `v1.33.2` or `1.33+` → (1, 33).
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let v = v.trim_start_matches('v');
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor: String = it
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

async fn detect_native(client: &kube::Client) -> anyhow::Result<bool> {
    let info = client.apiserver_version().await?;
    let api = parse_version(&format!("{}.{}", info.major, info.minor)).ok_or_else(|| {
        anyhow::anyhow!(
            "unreadable API server version {}.{}",
            info.major,
            info.minor
        )
    })?;
    let nodes: Api<Node> = Api::all(client.clone());
    let kubelets: Vec<String> = nodes
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| {
            n.status
                .and_then(|s| s.node_info)
                .map(|i| i.kubelet_version)
        })
        .collect();
    Ok(native_supported(api, &kubelets))
}

/// Runs the controller until `shutdown` resolves: every replica watches McpPolicies, serves
/// the webhooks and loads the serving certificate; the replica holding the Lease reconciles and
/// manages certificates. On shutdown `/readyz` turns false for the drain delay first.
pub async fn run(
    mut cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = api_client().await?;
    let metrics = ControllerMetrics::new();
    let reporter = Reporter {
        controller: "mcp-warden".into(),
        instance: Some(cfg.identity.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let (stop_tx, stop_rx) = watch::channel(false);

    let (policies, policy_watch) = watch_policies(&client);
    let state = webhook_state(&client, &cfg, policies, &metrics, &recorder).await;
    let native_task = (cfg.native_sidecar == NativeSidecar::Auto).then(|| {
        tokio::spawn(recheck_native(
            client.clone(),
            state.clone(),
            stop_rx.clone(),
        ))
    });
    let draining = Arc::new(AtomicBool::new(false));
    let (webhook_task, admin_task) = serve(&cfg, &state, &draining, &stop_rx).await?;
    let cert_task = tokio::spawn(load_certificates(
        client.clone(),
        cfg.clone(),
        state.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));
    cfg.certs.owner = certs::installation_owner(&client, &cfg.certs.webhook_config).await;
    let (campaign, leading) = elect(&client, &cfg, &metrics, &recorder, &stop_rx);

    shutdown.await;
    draining.store(true, Ordering::Release);
    tracing::info!(
        delay_ms = cfg.drain_delay.as_millis() as u64,
        "draining: /readyz is false"
    );
    tokio::time::sleep(cfg.drain_delay).await;
    let _ = stop_tx.send(true);
    let _ = campaign.await;
    let _ = leading.await;
    let _ = webhook_task.await;
    let _ = admin_task.await;
    cert_task.abort();
    policy_watch.abort();
    if let Some(t) = native_task {
        t.abort();
    }
    tracing::info!("controller stopped");
    Ok(())
}

/// The client every request and watch goes through: in-cluster or KUBECONFIG, with a read
/// timeout (see [`API_READ_TIMEOUT`]).
async fn api_client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!("no Kubernetes API server configured (in-cluster or KUBECONFIG): {e}")
    })?;
    config.read_timeout = Some(API_READ_TIMEOUT);
    // Counted from when a request is written, not from when its pooled connection went idle.
    config.reset_reader_on_write = true;
    Ok(kube::Client::try_from(config)?)
}

/// Every watch's settings: bounded (see [`WATCH_TIMEOUT_SECS`]).
fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

/// A watch failed (it retries with backoff): said once per failure, naming what it watches.
fn watch_failed(whose: &str, e: &watcher::Error) {
    tracing::warn!(error = %e, watch = whose, "watch failed; retrying with backoff");
}

/// Every replica: the McpPolicy cache the webhook reads, and the task filling it.
fn watch_policies(client: &kube::Client) -> (Store<McpPolicy>, tokio::task::JoinHandle<()>) {
    let (policies, writer) = reflector::store::<McpPolicy>();
    let policy_watch = watcher(Api::<McpPolicy>::all(client.clone()), watch_config())
        .default_backoff()
        .reflect(writer)
        .for_each(|event| {
            if let Err(e) = &event {
                watch_failed("McpPolicy (the webhook's)", e);
            }
            std::future::ready(())
        });
    (policies, tokio::spawn(policy_watch))
}

/// The webhook's state, with the injection settings resolved (native sidecars under `auto`
/// when the cluster supports them); marked synced once the McpPolicy cache is.
async fn webhook_state(
    client: &kube::Client,
    cfg: &Config,
    policies: Store<McpPolicy>,
    metrics: &ControllerMetrics,
    recorder: &Recorder,
) -> Arc<WebhookState> {
    let mut inject = cfg.inject.clone();
    inject.native_sidecar = match cfg.native_sidecar {
        NativeSidecar::Always => true,
        NativeSidecar::Never => false,
        NativeSidecar::Auto => detect_native(client).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot tell whether the cluster supports native sidecars; injecting regular containers");
            false
        }),
    };
    tracing::info!(native_sidecar = inject.native_sidecar, "injection settings");
    let state = WebhookState::new(
        policies.clone(),
        inject,
        metrics.clone(),
        Some(recorder.clone()),
    );
    let st = state.clone();
    tokio::spawn(async move {
        if policies.wait_until_ready().await.is_ok() {
            st.synced.store(true, Ordering::Release);
            tracing::info!("McpPolicy cache synced");
        }
    });
    state
}

/// Under `auto`: nodes joining with an older kubelet turn native sidecars off again.
async fn recheck_native(
    client: kube::Client,
    state: Arc<WebhookState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(NATIVE_RECHECK) => {}
            _ = stop.changed() => break,
        }
        let Ok(native) = detect_native(&client).await else {
            continue;
        };
        if native != state.inject.load().native_sidecar {
            tracing::info!(native_sidecar = native, "injection settings changed");
            let mut next = (**state.inject.load()).clone();
            next.native_sidecar = native;
            state.inject.store(Arc::new(next));
        }
    }
}

/// Binds and serves the webhook and admin ports.
async fn serve(
    cfg: &Config,
    state: &Arc<WebhookState>,
    draining: &Arc<AtomicBool>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>)> {
    let webhook = TcpListener::bind(cfg.webhook_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.webhook_listen))?;
    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.admin_listen))?;
    tracing::info!(
        webhook = %webhook.local_addr()?,
        admin = %admin.local_addr()?,
        identity = %cfg.identity,
        version = env!("CARGO_PKG_VERSION"),
        "mcp-warden controller listening"
    );
    let webhook_task = tokio::spawn(crate::webhook::server::serve(
        webhook,
        state.clone(),
        stop.clone(),
    ));
    let admin_task = tokio::spawn(admin::serve(
        admin,
        stop.clone(),
        Arc::new(GracefulShutdown::new()),
        ADMIN_HEADER_TIMEOUT,
        Arc::new(Health {
            state: state.clone(),
            draining: draining.clone(),
        }),
        None,
    ));
    Ok((webhook_task, admin_task))
}

/// Every replica: the serving certificate from the Secret, re-read every `cert_interval` (every
/// second until one is loaded).
async fn load_certificates(
    client: kube::Client,
    cfg: Config,
    state: Arc<WebhookState>,
    metrics: ControllerMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        if let Err(e) = certs::load_serving_cert(
            &client,
            &cfg.namespace,
            &cfg.certs.secret,
            &state.certs,
            &mut last,
            &metrics,
        )
        .await
        {
            tracing::warn!(error = %e, "cannot load the serving certificate");
        }
        let wait = if state.certs.loaded() {
            cfg.cert_interval
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
}

/// Leader election, and the leader's work started and stopped with the Lease.
fn elect(
    client: &kube::Client,
    cfg: &Config,
    metrics: &ControllerMetrics,
    recorder: &Recorder,
    stop: &watch::Receiver<bool>,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let (leader_tx, mut leader_rx) = watch::channel(false);
    let election = leader::Election {
        namespace: cfg.namespace.clone(),
        name: cfg.lease_name.clone(),
        identity: cfg.identity.clone(),
        duration: cfg.lease_duration,
        owner: cfg.certs.owner.clone(),
    };
    let campaign = tokio::spawn(leader::campaign(
        client.clone(),
        election,
        leader_tx,
        stop.clone(),
    ));
    let (client, cfg, metrics, recorder) = (
        client.clone(),
        cfg.clone(),
        metrics.clone(),
        recorder.clone(),
    );
    let leading = tokio::spawn(async move {
        let mut work: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let is_leader = *leader_rx.borrow_and_update();
            match (is_leader, work.is_some()) {
                (true, false) => {
                    tracing::info!("leading: reconciling McpPolicies and managing certificates");
                    work = Some(tokio::spawn(lead(
                        client.clone(),
                        cfg.clone(),
                        metrics.clone(),
                        recorder.clone(),
                    )));
                }
                (false, true) => {
                    tracing::info!("no longer leading");
                    if let Some(w) = work.take() {
                        w.abort();
                    }
                }
                _ => {}
            }
            if leader_rx.changed().await.is_err() {
                break;
            }
        }
        if let Some(w) = work.take() {
            w.abort();
        }
    });
    (campaign, leading)
}

/// The leader's work: the certificate loop and the reconciler, until aborted.
async fn lead(client: kube::Client, cfg: Config, metrics: ControllerMetrics, recorder: Recorder) {
    let (pods, pods_w) = reflector::store::<Pod>();
    let (services, services_w) = reflector::store::<Service>();
    let (configmaps, configmaps_w) = reflector::store::<ConfigMap>();
    let (nps, nps_w) = reflector::store::<NetworkPolicy>();
    let (policies, policies_w) = reflector::store::<McpPolicy>();
    let controller = Controller::for_stream(policy_stream(&client, policies_w), policies)
        .with_config(
            controller::Config::default()
                .debounce(Duration::from_millis(500))
                .concurrency(RECONCILE_CONCURRENCY),
        );
    let store = controller.store();
    let ctx = Arc::new(reconcile::Ctx {
        client: client.clone(),
        metrics,
        recorder,
        policies: controller.store(),
        pods: pods.clone(),
        services: services.clone(),
        configmaps,
        network_policies: nps,
        peer_keys: Mutex::default(),
        version: cfg.inject.version.clone(),
        sidecar_ports: vec![cfg.inject.proxy_port, cfg.inject.admin_port],
        failures: Mutex::default(),
        exported: Mutex::default(),
        keys: keys::KeySets::new(cfg.jwks_refresh),
        admin_subject: cfg.approvals.subject.clone(),
    });
    let keeper = approvals::Keeper::new(
        client.clone(),
        cfg.approvals.clone(),
        controller.store(),
        pods.clone(),
        cfg.inject.clone(),
        ctx.recorder.clone(),
    );
    let in_namespace = policies_in_namespace(store.clone());
    let run = controller
        .owns_stream(configmap_stream(&client, configmaps_w))
        .watches_stream(pod_stream(&client, pods_w), policies_selecting(store))
        .watches_stream(service_stream(&client, services_w), {
            let in_namespace = in_namespace.clone();
            move |s: Service| in_namespace(s.namespace())
        })
        .watches_stream(
            network_policy_stream(&client, nps_w),
            move |np: NetworkPolicy| in_namespace(np.namespace()),
        )
        .run(
            |p, ctx: Arc<reconcile::Ctx>| async move {
                ctx.caches_ready(CACHE_WAIT).await?;
                reconcile::reconcile(p, ctx).await
            },
            reconcile::error_policy,
            ctx,
        )
        // Reconcile errors are logged by `error_policy`, watch errors where they happen.
        .for_each(|_| std::future::ready(()));
    tokio::join!(certs_loop(client, cfg), run, keeper.run());
}

/// The leader keeps the webhook certificates (unless cert-manager does).
async fn certs_loop(client: kube::Client, cfg: Config) {
    if !cfg.manage_certificates {
        return;
    }
    loop {
        if let Err(e) = certs::reconcile_certs(&client, &cfg.certs).await {
            tracing::warn!(error = %e, "webhook certificate work failed; retrying");
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        tokio::time::sleep(cfg.cert_interval).await;
    }
}

/// The reconciler's triggers only ever carry objects: a watch's error is logged and retried
/// with the watch's own backoff here. (An error passed on into the controller's merged
/// trigger stream could leave every watch unpolled after an API server restart: its watches
/// ended and were never listed again, and edits went unrendered until the leader restarted.)
fn kept<K: Send>(
    whose: &'static str,
    s: impl futures_util::Stream<Item = Result<K, watcher::Error>> + Send,
) -> impl futures_util::Stream<Item = Result<K, watcher::Error>> + Send {
    s.filter_map(move |r| {
        std::future::ready(match r {
            Ok(o) => Some(Ok(o)),
            Err(e) => {
                watch_failed(whose, &e);
                None
            }
        })
    })
}

/// The McpPolicies the leader reconciles (a cache of its own, apart from the webhook's).
fn policy_stream(
    client: &kube::Client,
    w: reflector::store::Writer<McpPolicy>,
) -> impl futures_util::Stream<Item = Result<McpPolicy, watcher::Error>> + Send {
    let s = watcher(Api::<McpPolicy>::all(client.clone()), watch_config())
        .default_backoff()
        .reflect(w)
        .applied_objects();
    kept("McpPolicy", s)
}

/// Every pod, keeping what counts and warnings need (and the pod IP, for approvals, and whether
/// its sidecar is ready, for the peer set); the rest is dropped to bound memory.
fn pod_stream(
    client: &kube::Client,
    w: reflector::store::Writer<Pod>,
) -> impl futures_util::Stream<Item = Result<Pod, watcher::Error>> + Send {
    let s = watcher(Api::<Pod>::all(client.clone()), watch_config())
        .default_backoff()
        .modify(|p| {
            p.managed_fields_mut().clear();
            p.status = p.status.take().map(trim_status);
        })
        .reflect(w)
        .touched_objects();
    kept("Pod", s)
}

/// A pod's status as the controller keeps it: its IP and its sidecar's readiness.
fn trim_status(s: k8s_openapi::api::core::v1::PodStatus) -> k8s_openapi::api::core::v1::PodStatus {
    use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};
    let sidecar = |list: Option<Vec<ContainerStatus>>| {
        let kept: Vec<ContainerStatus> = list
            .into_iter()
            .flatten()
            .filter(|c| c.name == crate::cluster::CONTAINER)
            .map(|c| ContainerStatus {
                name: c.name,
                ready: c.ready,
                ..Default::default()
            })
            .collect();
        (!kept.is_empty()).then_some(kept)
    };
    PodStatus {
        pod_ip: s.pod_ip,
        container_statuses: sidecar(s.container_statuses),
        init_container_statuses: sidecar(s.init_container_statuses),
        ..Default::default()
    }
}

fn service_stream(
    client: &kube::Client,
    w: reflector::store::Writer<Service>,
) -> impl futures_util::Stream<Item = Result<Service, watcher::Error>> + Send {
    let s = watcher(Api::<Service>::all(client.clone()), watch_config())
        .default_backoff()
        .modify(|s| s.managed_fields_mut().clear())
        .reflect(w)
        .touched_objects();
    kept("Service", s)
}

/// The ConfigMaps the controller renders (labelled as its own).
fn configmap_stream(
    client: &kube::Client,
    w: reflector::store::Writer<ConfigMap>,
) -> impl futures_util::Stream<Item = Result<ConfigMap, watcher::Error>> + Send {
    let managed = watch_config().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let s = watcher(Api::<ConfigMap>::all(client.clone()), managed)
        .default_backoff()
        .reflect(w)
        .touched_objects();
    kept("ConfigMap", s)
}

/// Every NetworkPolicy, not only the controller's: another one can reopen the upstream port.
fn network_policy_stream(
    client: &kube::Client,
    w: reflector::store::Writer<NetworkPolicy>,
) -> impl futures_util::Stream<Item = Result<NetworkPolicy, watcher::Error>> + Send {
    let s = watcher(Api::<NetworkPolicy>::all(client.clone()), watch_config())
        .default_backoff()
        .modify(|np| np.managed_fields_mut().clear())
        .reflect(w)
        .touched_objects();
    kept("NetworkPolicy", s)
}

/// A pod change re-reconciles the policies that select it (counts, conflicts); a pod whose
/// labels stop matching is dropped from the old policy's counts at its next resync.
fn policies_selecting(store: Store<McpPolicy>) -> impl Fn(Pod) -> Vec<ObjectRef<McpPolicy>> {
    move |pod: Pod| {
        let ns = pod.namespace();
        store
            .state_filter(|p| {
                p.metadata.namespace == ns
                    && crate::cluster::selector_matches(&p.spec.pod_selector, pod.labels())
            })
            .into_iter()
            .map(|p| ObjectRef::from_obj(&*p))
            .collect()
    }
}

/// A Service or NetworkPolicy change re-reconciles every policy of its namespace (bypass and
/// isolation warnings).
fn policies_in_namespace(
    store: Store<McpPolicy>,
) -> impl Fn(Option<String>) -> Vec<ObjectRef<McpPolicy>> + Clone {
    move |ns: Option<String>| {
        store
            .state_filter(|p| p.metadata.namespace == ns)
            .into_iter()
            .map(|p| ObjectRef::from_obj(&*p))
            .collect()
    }
}

/// The admin port's view: ready once the webhook can answer, and not while draining.
struct Health {
    state: Arc<WebhookState>,
    draining: Arc<AtomicBool>,
}

impl admin::Health for Health {
    fn metrics(&self) -> Vec<u8> {
        self.state.metrics.render()
    }

    fn unready(&self) -> Option<String> {
        if self.draining.load(Ordering::Acquire) {
            return Some("draining".into());
        }
        self.state.unready_reason().map(String::from)
    }
}

#[cfg(test)]
mod tests;
