//! The sidecar: a reverse proxy in front of one MCP server that decides every `tools/call`.
//!
//! It serves MCP on `listen` and `/metrics`, `/livez`, `/readyz` on `admin_listen`. Until a valid
//! policy is loaded it is not ready and forwards nothing. The policy file is re-read when it
//! changes (a ConfigMap volume swaps a `..data` symlink); a bad file keeps the last good policy.

mod admin_api;
pub mod approvals;
mod audit;
mod caller;
mod confirm;
mod denial;
mod discovery;
mod filter;
mod gate;
mod headers;
mod legacy;
mod origin;
mod params;
pub mod peers;
mod proxy;
mod record;
mod refusal;
mod reload;
mod sessions;
mod spend;

pub use crate::serve::Limits;
pub use admin_api::ADMIN_AUDIENCE;
pub use origin::Allowed;

pub use crate::policy::sha256_hex;
pub use reload::{load_policy, LoadedPolicy};

use crate::engine::EngineOptions;
use crate::metrics::SidecarMetrics;
use crate::serve::{self, admin, Body};
use arc_swap::ArcSwapOption;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Everything the sidecar is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The MCP server, e.g. `http://127.0.0.1:8888/mcp`. Its path is the gated MCP path.
    pub upstream: http::Uri,
    pub policy_path: PathBuf,
    /// The JSON Web Key Set tokens are verified with (`identity.serviceAccount`/`jwt`).
    pub jwks_path: Option<PathBuf>,
    /// The granted approvals (`approval` rules), re-read when it changes.
    pub approvals_path: Option<PathBuf>,
    /// The policy's record of first-seen tool definitions, re-read when it changes.
    pub seen_path: Option<PathBuf>,
    /// The policy's ready sidecars (rendered by the controller), re-read when it changes: counts
    /// held across pods are asked of their owner among them.
    pub peers_path: Option<PathBuf>,
    /// The key that authenticates peer requests (at least 32 bytes).
    pub peer_key_path: Option<PathBuf>,
    /// The pod this sidecar runs in: approvals naming another pod are not honoured.
    pub pod_name: Option<String>,
    /// The admin API's static token (without a cluster).
    pub admin_token_file: Option<PathBuf>,
    /// The admin API's key file: issuer, keys and the one subject allowed (in a cluster).
    pub admin_keys_path: Option<PathBuf>,
    /// How often the sidecar lists the server's tools itself, besides at start and when told
    /// the list changed.
    pub tools_refresh: Duration,
    /// Where a legacy (HTTP+SSE) server's event stream is, for the sidecar's own listing.
    pub legacy_sse_path: String,
    /// Paths besides the MCP path where POSTs are forwarded ungated (e.g. an OAuth endpoint).
    pub passthrough_paths: Vec<String>,
    /// Largest gated body accepted.
    pub max_body_bytes: usize,
    /// Gated body bytes held in memory at once across all requests; beyond it, 503.
    pub inflight_body_bytes: usize,
    /// How long to keep serving after SIGTERM while endpoints update.
    pub drain_delay: Duration,
    /// How long in-flight requests may take to finish after the drain delay.
    pub shutdown_timeout: Duration,
    /// How often the policy file is checked for changes.
    pub reload_interval: Duration,
    /// Time a client has to send a gated body once its headers are in.
    pub body_timeout: Duration,
    /// Header read timeout (also the keep-alive idle timeout) and the connection cap.
    pub limits: Limits,
    /// Hosts accepted in `Host` (besides loopback names), `name` or `name:port`; `*` for any.
    pub allowed_hosts: Vec<String>,
    /// Origins accepted in `Origin` (besides loopback ones and the allowed hosts'); `*` for any.
    pub allowed_origins: Vec<String>,
    pub engine: EngineOptions,
}

impl Config {
    pub fn new(upstream: http::Uri, policy_path: PathBuf) -> Config {
        Config {
            listen: ([0, 0, 0, 0], 9480).into(),
            admin_listen: ([0, 0, 0, 0], 9481).into(),
            upstream,
            policy_path,
            jwks_path: None,
            approvals_path: None,
            seen_path: None,
            peers_path: None,
            peer_key_path: None,
            pod_name: None,
            admin_token_file: None,
            admin_keys_path: None,
            tools_refresh: Duration::from_secs(300),
            legacy_sse_path: "/sse".into(),
            passthrough_paths: Vec::new(),
            max_body_bytes: 4 << 20,
            inflight_body_bytes: 16 << 20,
            drain_delay: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
            reload_interval: Duration::from_secs(1),
            body_timeout: Duration::from_secs(30),
            limits: Limits {
                header_timeout: Duration::from_secs(30),
                max_connections: 512,
            },
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            engine: EngineOptions::default(),
        }
    }

    /// The gated MCP path: the upstream URL's path (`/mcp` when it has none).
    pub fn mcp_path(&self) -> &str {
        match self.upstream.path() {
            "" | "/" => "/mcp",
            p => p,
        }
    }

    /// Whether `path` is the gated MCP path, with or without a trailing slash (servers that
    /// redirect one to the other are reached either way, and both are gated).
    pub fn is_mcp_path(&self, path: &str) -> bool {
        let mcp = self.mcp_path().trim_end_matches('/');
        path.strip_prefix(mcp)
            .is_some_and(|rest| rest.is_empty() || rest == "/")
    }
}

/// State shared by every request.
pub struct State {
    pub cfg: Config,
    pub policy: ArcSwapOption<LoadedPolicy>,
    pub metrics: SidecarMetrics,
    client: Client<HttpConnector, Body>,
    budget: Semaphore,
    draining: AtomicBool,
    upstream_authority: http::uri::Authority,
    /// `Host` for upstream requests: the upstream's authority.
    upstream_host: http::HeaderValue,
    legacy: legacy::LegacySessions,
    /// Session ids the server issued through this sidecar.
    sessions: sessions::Issued,
    /// Granted approvals, the uses taken of them, and pending requests.
    pub approvals: Arc<approvals::Approvals>,
    /// Who may use the admin API.
    admin: admin_api::AdminAuth,
    /// The server's tools, as the sidecar last listed them.
    pub tools: Arc<crate::tools::catalog::Catalog>,
    /// The policy's other sidecars, which own some counts.
    pub peers: Arc<peers::Peers>,
    /// Questions put to users at their clients (`approval: {by: user}`).
    confirm: Arc<confirm::Confirmations>,
}

impl State {
    pub fn new(cfg: Config, metrics: SidecarMetrics) -> anyhow::Result<Arc<State>> {
        let authority = cfg.upstream.authority().cloned().ok_or_else(|| {
            anyhow::anyhow!("--upstream needs a host and port, like http://127.0.0.1:8888/mcp")
        })?;
        if cfg.upstream.scheme_str() != Some("http") {
            anyhow::bail!("--upstream must be an http:// URL (the MCP server in the same pod)");
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        let budget = Semaphore::new(cfg.inflight_body_bytes.min(Semaphore::MAX_PERMITS));
        Ok(Arc::new(State {
            policy: ArcSwapOption::empty(),
            metrics: metrics.clone(),
            client,
            budget,
            draining: AtomicBool::new(false),
            upstream_host: http::HeaderValue::from_str(authority.as_str())?,
            upstream_authority: authority,
            legacy: legacy::LegacySessions::default(),
            sessions: sessions::Issued::default(),
            approvals: Arc::new(approvals::Approvals::for_pod(
                cfg.pod_name.clone(),
                cfg.peers_path.is_some(),
            )),
            admin: admin_api::AdminAuth::new(
                cfg.admin_token_file.clone(),
                cfg.admin_keys_path.clone(),
            ),
            tools: Arc::default(),
            confirm: Arc::new(confirm::Confirmations::new(cfg.peer_key_path.clone())),
            peers: Arc::new(peers::Peers::new(
                cfg.peers_path.clone(),
                cfg.peer_key_path.clone(),
                cfg.pod_name.clone(),
                metrics.clone(),
            )),
            cfg,
        }))
    }

    /// The hosts and origins accepted under `policy`: the flags' and the policy's.
    pub fn allowed<'p>(&self, policy: &'p LoadedPolicy) -> &'p Allowed {
        policy.allowed.get_or_init(|| {
            let t = &policy.engine.policy().transport;
            let join = |a: &[String], b: &[String]| [a, b].concat();
            let loopback = self.cfg.listen.ip().is_loopback();
            let mut hosts = join(&self.cfg.allowed_hosts, &t.allowed_hosts);
            // Where Host is checked, the address the sidecar listens on is a name clients may
            // use: an IP literal, which no rebinding can point elsewhere.
            if (loopback || !hosts.is_empty()) && !self.cfg.listen.ip().is_unspecified() {
                hosts.push(match self.cfg.listen.ip() {
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                });
            }
            Allowed::new(
                loopback,
                &hosts,
                &join(&self.cfg.allowed_origins, &t.allowed_origins),
            )
        })
    }

    /// Ready: a valid policy is loaded and the sidecar is not draining.
    pub fn ready(&self) -> bool {
        self.policy.load().is_some() && !self.draining.load(Ordering::Relaxed)
    }
}

/// Listeners bound ahead of time, so callers (tests, the demo) can learn the ports.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
        let proxy = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
        let admin = TcpListener::bind(cfg.admin_listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.admin_listen))?;
        Ok(Listeners { proxy, admin })
    }
}

/// Runs until `shutdown` resolves, then drains: not ready, keep serving for the
/// drain delay, stop accepting, finish in-flight requests (bounded by the shutdown timeout).
pub async fn run(
    state: Arc<State>,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    reload::initial_load(&state);
    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(reload::watch(state.clone(), stop_rx.clone()));
    let discovery = tokio::spawn(discovery::run(state.clone(), stop_rx.clone()));
    let graceful = Arc::new(GracefulShutdown::new());
    let proxy_state = state.clone();
    let proxy_loop = tokio::spawn(serve::accept_loop(
        listeners.proxy,
        stop_rx.clone(),
        graceful.clone(),
        state.cfg.limits,
        None,
        move |req| proxy::handle(proxy_state.clone(), req),
    ));
    let admin_loop = tokio::spawn(admin::serve(
        listeners.admin,
        stop_rx.clone(),
        graceful.clone(),
        state.cfg.limits.header_timeout,
        state.clone(),
        Some(admin::Api {
            handles: |path| admin_api::handles(path) || peers::handles(path),
            handle: {
                let state = state.clone();
                Box::new(move |req| match peers::handles(req.uri().path()) {
                    true => Box::pin(peers::handle(state.clone(), req)),
                    false => Box::pin(admin_api::handle(state.clone(), req)),
                })
            },
        }),
    ));

    shutdown.await;
    state.draining.store(true, Ordering::Relaxed);
    tracing::info!(
        delay_ms = state.cfg.drain_delay.as_millis() as u64,
        "draining: /readyz is false"
    );
    tokio::time::sleep(state.cfg.drain_delay).await;
    let _ = stop_tx.send(true);
    let _ = proxy_loop.await;
    let _ = admin_loop.await;
    watcher.abort();
    discovery.abort();
    let graceful = Arc::try_unwrap(graceful)
        .map_err(|_| anyhow::anyhow!("accept loops still hold the shutdown handle"))?;
    match tokio::time::timeout(state.cfg.shutdown_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections finished"),
        Err(_) => tracing::warn!("shutdown timeout reached with connections still open"),
    }
    Ok(())
}

impl admin::Health for State {
    fn metrics(&self) -> Vec<u8> {
        if let Some(p) = self.policy.load_full() {
            self.metrics
                .counter_keys
                .with_label_values(&[&p.label])
                .set(p.engine.counter_keys() as i64);
            let now = caller::unix_now();
            for (policy, tool) in self.approvals.take_lapsed(now) {
                record::approval(self, &policy, &tool, "expired");
            }
            let report = self.approvals.report(now);
            self.metrics
                .approvals_pending
                .with_label_values(&[&p.label])
                .set(report.pending.len() as i64);
            self.metrics
                .approvals_oldest_pending
                .with_label_values(&[&p.label])
                .set(self.approvals.oldest_pending_age(now) as i64);
        }
        self.metrics.render()
    }

    fn unready(&self) -> Option<String> {
        if self.policy.load().is_none() {
            Some("no valid policy loaded".into())
        } else if self.draining.load(Ordering::Relaxed) {
            Some("draining".into())
        } else {
            None
        }
    }
}
