//! `mcp-warden sidecar`: the enforcing proxy's flags, and running it until SIGTERM.

use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SidecarArgs {
    /// The policy file (JSON or YAML); reloaded when it changes.
    #[arg(long, env = "MCP_WARDEN_POLICY", value_name = "FILE")]
    pub policy: PathBuf,
    /// The JSON Web Key Set that `identity.serviceAccount` and `identity.jwt` tokens are verified
    /// with (in a cluster the controller renders it beside the policy; its `issuer` member names
    /// a ServiceAccount token's issuer). Reloaded when it changes.
    #[arg(long, env = "MCP_WARDEN_JWKS", value_name = "FILE")]
    pub jwks: Option<PathBuf>,
    /// Granted approvals for tools that need one (`{"approvals": [{"id", "uses", "expires_at"}]}`;
    /// in a cluster the controller renders it). Reloaded when it changes.
    #[arg(long, env = "MCP_WARDEN_APPROVALS", value_name = "FILE")]
    pub approvals: Option<PathBuf>,
    /// The policy's record of the definitions its tools were first seen with, across its pods
    /// (`{"tools": {"NAME": "sha256:…"}}`; in a cluster the controller renders it under
    /// `pinning: firstSeen`): a tool it names is held to the recorded definition. Reloaded when
    /// it changes.
    #[arg(long, env = "MCP_WARDEN_SEEN", value_name = "FILE")]
    pub seen: Option<PathBuf>,
    /// The policy's ready sidecars (`{"replicas": N, "peers": [{"name", "address"}]}`; in a
    /// cluster the controller renders it): limits whose scope is not `pod` hold across them, each
    /// key counted by its owner among them. Reloaded when it changes. Without it the sidecar
    /// counts alone.
    #[arg(long, env = "MCP_WARDEN_PEERS", value_name = "FILE")]
    pub peers: Option<PathBuf>,
    /// The key (at least 32 bytes) that authenticates requests between the policy's sidecars (in
    /// a cluster the controller renders it into a Secret only the policy's pods mount).
    #[arg(long, env = "MCP_WARDEN_PEER_KEY", value_name = "FILE")]
    pub peer_key: Option<PathBuf>,
    /// This pod's name (the downward API's `metadata.name`): approvals rendered for another pod
    /// are not honoured here.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The admin API (`/approvals` on the admin port) accepts ServiceAccount tokens for audience
    /// `mcp-warden-admin` verified with this file (`{"issuer", "subject", "keys"}`; in a cluster
    /// the controller renders it, naming its own ServiceAccount).
    #[arg(long, env = "MCP_WARDEN_ADMIN_KEYS", value_name = "FILE")]
    pub admin_keys: Option<PathBuf>,
    /// The admin API accepts the bearer token in this file (without a cluster); read on every
    /// request.
    #[arg(long, env = "MCP_WARDEN_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The MCP server, e.g. http://127.0.0.1:8888/mcp; its path is the gated MCP path.
    #[arg(long, env = "MCP_WARDEN_UPSTREAM", value_name = "URL")]
    pub upstream: http::Uri,
    /// Where agents connect.
    #[arg(long, env = "MCP_WARDEN_LISTEN", default_value = "0.0.0.0:9480")]
    pub listen: std::net::SocketAddr,
    /// Where /metrics, /livez and /readyz are served.
    #[arg(long, env = "MCP_WARDEN_ADMIN_LISTEN", default_value = "0.0.0.0:9481")]
    pub admin_listen: std::net::SocketAddr,
    /// Seconds between the sidecar's own lists of the server's tools (it also lists at start,
    /// on `notifications/tools/list_changed`, and when a call names a tool it has not seen).
    #[arg(
        long,
        env = "MCP_WARDEN_TOOLS_REFRESH_SECONDS",
        default_value_t = 300.0
    )]
    pub tools_refresh_seconds: f64,
    /// Where a legacy (HTTP+SSE) MCP server's event stream is, for the sidecar's own tool
    /// listing when the MCP path takes no POSTs.
    #[arg(long, env = "MCP_WARDEN_LEGACY_SSE_PATH", default_value = "/sse")]
    pub legacy_sse_path: String,
    /// A path besides the MCP path where POSTs are forwarded ungated (repeatable).
    #[arg(
        long = "passthrough-path",
        env = "MCP_WARDEN_PASSTHROUGH_PATHS",
        value_delimiter = ','
    )]
    pub passthrough_paths: Vec<String>,
    /// Largest request body accepted on the MCP path, in bytes.
    #[arg(long, env = "MCP_WARDEN_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Request body bytes held at once across all requests before answering 503.
    #[arg(long, env = "MCP_WARDEN_INFLIGHT_BODY_BYTES", default_value_t = 16 << 20)]
    pub inflight_body_bytes: usize,
    /// Seconds to keep serving after SIGTERM while endpoints update.
    #[arg(long, env = "MCP_WARDEN_DRAIN_DELAY_SECONDS", default_value_t = 5.0)]
    pub drain_delay_seconds: f64,
    /// Seconds in-flight requests may take to finish after the drain delay.
    #[arg(
        long,
        env = "MCP_WARDEN_SHUTDOWN_TIMEOUT_SECONDS",
        default_value_t = 30.0
    )]
    pub shutdown_timeout_seconds: f64,
    /// Live counter keys kept per rate-limit counter.
    #[arg(
        long,
        env = "MCP_WARDEN_MAX_KEYS_PER_COUNTER",
        default_value_t = 10_000
    )]
    pub max_keys_per_counter: usize,
    /// A host clients may name in `Host`, as `name` or `name:port` (repeatable; `*` for any).
    /// Loopback names are always accepted. `Host` is checked only when listening on loopback or
    /// when hosts are listed; in a cluster the controller lists the Services that select the pod.
    #[arg(
        long = "allowed-host",
        env = "MCP_WARDEN_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// An origin browsers may send in `Origin`, as `scheme://host[:port]` (repeatable; `*` for
    /// any). Loopback origins and the allowed hosts' are always accepted; any other is refused.
    #[arg(
        long = "allowed-origin",
        env = "MCP_WARDEN_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open.
    #[arg(
        long,
        env = "MCP_WARDEN_HEADER_TIMEOUT_SECONDS",
        default_value_t = 30.0
    )]
    pub header_timeout_seconds: f64,
    /// Seconds a client has to send a gated request's body once its headers are in.
    #[arg(long, env = "MCP_WARDEN_BODY_TIMEOUT_SECONDS", default_value_t = 30.0)]
    pub body_timeout_seconds: f64,
    /// Open client connections at most; at the cap the oldest one not inside a request is closed.
    #[arg(long, env = "MCP_WARDEN_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// Threads serving requests. One suits a sidecar's usual CPU limit and avoids cross-thread
    /// wake-ups; raise it for a server with many cores to itself.
    #[arg(long, env = "MCP_WARDEN_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
}

impl SidecarArgs {
    pub fn config(&self) -> anyhow::Result<crate::sidecar::Config> {
        use super::{positive_seconds as positive, seconds as secs};
        let mut c = crate::sidecar::Config::new(self.upstream.clone(), self.policy.clone());
        c.jwks_path = self.jwks.clone();
        c.approvals_path = self.approvals.clone();
        c.seen_path = self.seen.clone();
        c.peers_path = self.peers.clone();
        c.peer_key_path = self.peer_key.clone();
        c.pod_name = self.pod_name.clone();
        c.admin_keys_path = self.admin_keys.clone();
        c.admin_token_file = self.admin_token_file.clone();
        c.listen = self.listen;
        c.admin_listen = self.admin_listen;
        c.passthrough_paths = self.passthrough_paths.clone();
        c.max_body_bytes = self.max_body_bytes.max(1);
        c.inflight_body_bytes = self.inflight_body_bytes.max(c.max_body_bytes);
        c.drain_delay = secs("drain-delay-seconds", self.drain_delay_seconds)?;
        c.shutdown_timeout = secs("shutdown-timeout-seconds", self.shutdown_timeout_seconds)?;
        c.engine.max_keys_per_counter = self.max_keys_per_counter.max(1);
        c.allowed_hosts = self.allowed_hosts.clone();
        c.allowed_origins = self.allowed_origins.clone();
        c.limits.header_timeout = positive("header-timeout-seconds", self.header_timeout_seconds)?;
        c.body_timeout = positive("body-timeout-seconds", self.body_timeout_seconds)?;
        c.limits.max_connections = self.max_connections.max(1);
        c.tools_refresh = positive("tools-refresh-seconds", self.tools_refresh_seconds)?;
        c.legacy_sse_path = self.legacy_sse_path.clone();
        Ok(c)
    }
}

/// Runs the sidecar until SIGTERM.
pub fn run(a: &SidecarArgs) -> anyhow::Result<bool> {
    let cfg = a.config()?;
    let rt = if a.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.worker_threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async {
        let listeners = crate::sidecar::Listeners::bind(&cfg).await?;
        tracing::info!(
            listen = %listeners.proxy.local_addr()?,
            admin = %listeners.admin.local_addr()?,
            upstream = %cfg.upstream,
            version = env!("CARGO_PKG_VERSION"),
            "mcp-warden sidecar listening"
        );
        let state = crate::sidecar::State::new(cfg, crate::metrics::SidecarMetrics::new())?;
        crate::sidecar::run(state, listeners, crate::serve::shutdown_signal()).await?;
        Ok(true)
    })
}
