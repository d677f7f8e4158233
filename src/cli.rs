//! The command line: one binary, several roles (sidecar, controller, check, demo). Every flag can also be set from an
//! environment variable, so the same image is configured the Kubernetes way.

use crate::check::{self, Explain};
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "mcp-warden", version, about = "A policy gate for MCP servers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing's EnvFilter syntax); default `info` (`warn` for the demo).
    #[arg(long, env = "MCP_WARDEN_LOG", global = true)]
    pub log: Option<String>,
    /// Log format: json (one object per line, for log pipelines) or text.
    #[arg(
        long,
        env = "MCP_WARDEN_LOG_FORMAT",
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policy files and McpPolicy manifests; optionally explain a decision.
    Check(CheckArgs),
    /// Run the enforcing proxy in front of an MCP server.
    Sidecar(Box<SidecarArgs>),
    /// Show the main job with no cluster: a sample MCP server behind the sidecar, driven by a script.
    Demo(DemoArgs),
    /// Run the operator: reconcile McpPolicies and serve the admission webhooks.
    Controller(Box<ControllerArgs>),
    /// Print the McpPolicy and McpApproval CustomResourceDefinitions (YAML), generated from the Rust types.
    Crd(CrdArgs),
    /// Requests for approval: `approvals list` shows McpApprovals (or, with --admin, one sidecar's
    /// pending requests).
    Approvals(ApprovalsArgs),
    /// Approve a call: an McpApproval by name (as the kubeconfig's user), or with --admin a
    /// sidecar's pending request by id.
    Approve(DecideArgs),
    /// Deny a call, the same way.
    Reject(DecideArgs),
    /// Print `pins:` for a live server's tools (the definition hashes a policy pins, so a tool
    /// whose definition changes under the same name is refused).
    Pin(PinArgs),
    /// Regenerate every generated file of a checkout: both CRD copies, the field reference in docs/reference.md,
    /// deploy/mcp-warden.yaml.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The checkout to write into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,
    /// The Helm binary that renders deploy/mcp-warden.yaml (default: MCP_WARDEN_HELM, the one
    /// `.ci/run` installs, or `helm`).
    #[arg(long, value_name = "FILE")]
    pub helm: Option<PathBuf>,
    /// Only report stale files (exit 1 when any is), writing nothing.
    #[arg(long)]
    pub check: bool,
}

/// Regenerates (or checks) the generated files and says which changed.
pub fn run_generate(a: &GenerateArgs) -> anyhow::Result<bool> {
    let helm = a
        .helm
        .clone()
        .unwrap_or_else(|| crate::generate::default_helm(&a.root));
    let changed = crate::generate::run(&a.root, Some(&helm), a.check)?;
    let verb = if a.check { "stale" } else { "regenerated" };
    for path in &changed {
        println!("{verb}: {path}");
    }
    if changed.is_empty() {
        println!("every generated file is current");
    }
    Ok(!a.check || changed.is_empty())
}

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List McpApprovals, pending first (or a sidecar's pending requests with --admin).
    List(ListArgs),
}

/// Where approvals live: the kubeconfig's cluster, or one sidecar's admin API.
#[derive(Debug, Args)]
pub struct Where {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// A sidecar's admin API instead of a cluster, e.g. http://127.0.0.1:9481.
    #[arg(long, value_name = "URL", requires = "admin_token_file")]
    pub admin: Option<String>,
    /// The file holding the sidecar's admin token (its --admin-token-file).
    #[arg(long, value_name = "FILE", requires = "admin")]
    pub admin_token_file: Option<PathBuf>,
}

impl Where {
    fn target(&self, all: bool) -> crate::approve::Target<'_> {
        match (&self.admin, &self.admin_token_file) {
            (Some(url), Some(token_file)) => crate::approve::Target::Admin { url, token_file },
            _ => crate::approve::Target::Cluster {
                namespace: self.namespace.as_deref(),
                all,
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub at: Where,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "admin"])]
    pub all_namespaces: bool,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The McpApproval's name (with --admin: the request's approval id).
    pub name: String,
    #[command(flatten)]
    pub at: Where,
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Runs `approvals list`.
pub fn run_approvals(a: &ApprovalsArgs) -> anyhow::Result<bool> {
    let ApprovalsCommand::List(l) = &a.command;
    print!(
        "{}",
        block_on(crate::approve::list(l.at.target(l.all_namespaces)))?
    );
    Ok(true)
}

/// Runs `approve` (`approve: true`) or `reject`.
pub fn run_decide(a: &DecideArgs, approve: bool) -> anyhow::Result<bool> {
    print!(
        "{}",
        block_on(crate::approve::decide(a.at.target(false), &a.name, approve))?
    );
    Ok(true)
}

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Print the field reference (Markdown) instead of the CRD.
    #[arg(long)]
    pub reference: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Enforce this policy instead of the built-in example (MCP Python Interpreter's).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// Runs the demo and prints its report.
pub fn run_demo(a: &DemoArgs) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(crate::demo::run(a.policy.clone()))?;
    print!("{report}");
    Ok(true)
}

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
        let secs = |name: &str, v: f64| {
            std::time::Duration::try_from_secs_f64(v)
                .map_err(|_| anyhow::anyhow!("--{name} must be a non-negative number of seconds"))
        };
        let mut c = crate::sidecar::Config::new(self.upstream.clone(), self.policy.clone());
        c.jwks_path = self.jwks.clone();
        c.approvals_path = self.approvals.clone();
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
        let positive = |name: &str, v: f64| {
            secs(name, v).and_then(|d| {
                if d.is_zero() {
                    anyhow::bail!("--{name} must be more than zero")
                }
                Ok(d)
            })
        };
        c.limits.header_timeout = positive("header-timeout-seconds", self.header_timeout_seconds)?;
        c.body_timeout = positive("body-timeout-seconds", self.body_timeout_seconds)?;
        c.limits.max_connections = self.max_connections.max(1);
        c.tools_refresh = positive("tools-refresh-seconds", self.tools_refresh_seconds)?;
        c.legacy_sse_path = self.legacy_sse_path.clone();
        Ok(c)
    }
}

/// Runs the sidecar until SIGTERM.
pub fn run_sidecar(a: &SidecarArgs) -> anyhow::Result<bool> {
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

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files (JSON or YAML) or McpPolicy manifests (multi-document YAML).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Explain what each valid policy decides for a call to this tool.
    #[arg(long, value_name = "TOOL")]
    pub explain: Option<String>,
    /// The call's arguments, as a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}", requires = "explain")]
    pub args: String,
    /// The caller's identity (a ServiceAccount's `system:serviceaccount:NS:NAME`, a JWT subject or
    /// a gateway header's value): picks the grant that applies and keys `scope: grant` counters.
    /// Without it the call is anonymous and gets the base rules.
    #[arg(long, requires = "explain")]
    pub identity: Option<String>,
    /// Session id for `scope: session` counters.
    #[arg(long, requires = "explain")]
    pub session: Option<String>,
    /// Make the call N times at one instant and explain the last (shows limits acting).
    #[arg(long, default_value_t = 1, value_name = "N", requires = "explain")]
    pub calls: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A live MCP server to read the tools of.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// An MCP server's URL (streamable HTTP, e.g. http://127.0.0.1:8888/mcp; https works too):
    /// its tools are listed and each policy is checked against them — rule names and globs that
    /// match no tool, conditions on arguments a tool does not take, changed pins (each makes the
    /// exit code non-zero) and tools only `default: allow` lets through.
    #[arg(long, value_name = "URL")]
    pub server: Option<http::Uri>,
    /// Where a legacy (HTTP+SSE) server's event stream is, when the URL takes no POSTs.
    #[arg(long, value_name = "PATH", default_value = "/sse", requires = "server")]
    pub sse_path: String,
}

impl ServerArgs {
    /// The server's tools, when a server is named.
    fn tools(&self) -> anyhow::Result<Option<crate::tools::client::Listing>> {
        let Some(url) = &self.server else {
            return Ok(None);
        };
        let lister = crate::tools::client::Lister::https(url.clone(), &self.sse_path);
        let listing = block_on(async { Ok(lister.list().await?) })
            .with_context(|| format!("cannot list the tools of {url}"))?;
        Ok(Some(listing))
    }
}

#[derive(Debug, Args)]
pub struct PinArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Pin only the tools this policy file (or McpPolicy manifest) lets agents call.
    #[arg(value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// Runs `pin --server URL [FILE]`: prints a `pins:` block to paste into a policy.
pub fn run_pin(a: &PinArgs) -> anyhow::Result<bool> {
    if a.server.server.is_none() {
        bail!("pin needs --server URL");
    }
    let listing = a.server.tools()?.expect("a server was named");
    let policy = match &a.policy {
        Some(path) => Some(check::load_one(path)?),
        None => None,
    };
    print!(
        "{}",
        check::pins_block(
            &listing,
            policy.as_ref(),
            a.server.server.as_ref().expect("named")
        )
    );
    Ok(true)
}

/// Runs `check`; the process exit code is 0 only when every document is valid.
pub fn run_check(a: &CheckArgs) -> anyhow::Result<bool> {
    let explain = match &a.explain {
        None => None,
        Some(tool) => {
            let args: serde_json::Value =
                serde_json::from_str(&a.args).context("--args is not valid JSON")?;
            if !args.is_object() {
                bail!("--args must be a JSON object, like the arguments of a tools/call");
            }
            Some(Explain {
                tool: tool.clone(),
                args,
                identity: a.identity.clone(),
                session: a.session.clone(),
                calls: a.calls,
            })
        }
    };
    let listing = a.server.tools()?;
    let mut out = String::new();
    if let (Some(l), Some(url)) = (&listing, &a.server.server) {
        out.push_str(&check::listing_summary(l, url));
    }
    let ok = check::run(&a.files, explain.as_ref(), listing.as_ref(), &mut out);
    print!("{out}");
    Ok(ok)
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// The controller's own namespace (its Lease and certificate Secret live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mcp-warden")]
    pub namespace: String,
    /// This replica's identity in leader election (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Where the HTTPS webhooks are served (`/mutate`, `/validate`).
    #[arg(
        long,
        env = "MCP_WARDEN_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    pub webhook_listen: std::net::SocketAddr,
    /// Where /metrics, /livez and /readyz are served (plain HTTP).
    #[arg(long, env = "MCP_WARDEN_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: std::net::SocketAddr,
    /// The Service in front of the webhooks (its DNS names go into the serving certificate).
    #[arg(
        long,
        env = "MCP_WARDEN_WEBHOOK_SERVICE",
        default_value = "mcp-warden-webhook"
    )]
    pub webhook_service: String,
    /// The webhook Service's port.
    #[arg(long, env = "MCP_WARDEN_WEBHOOK_SERVICE_PORT", default_value_t = 443)]
    pub webhook_service_port: i32,
    /// Register the webhooks at this URL (https://HOST:PORT) instead of the Service, and serve
    /// on PORT: for running outside the cluster. The controller then applies the webhook
    /// configurations itself.
    #[arg(long, env = "MCP_WARDEN_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Name of the MutatingWebhookConfiguration and ValidatingWebhookConfiguration.
    #[arg(long, env = "MCP_WARDEN_WEBHOOK_CONFIG", default_value = "mcp-warden")]
    pub webhook_config: String,
    /// The Secret holding the webhook CA and serving certificate.
    #[arg(
        long,
        env = "MCP_WARDEN_TLS_SECRET",
        default_value = "mcp-warden-webhook-tls"
    )]
    pub tls_secret: String,
    /// Create, rotate and publish the webhook certificate (false when cert-manager issues it
    /// into the same Secret and injects caBundle).
    #[arg(long, env = "MCP_WARDEN_MANAGE_CERTIFICATES", default_value_t = true, action = clap::ArgAction::Set)]
    pub manage_certificates: bool,
    /// Days the webhook CA is valid (rotated with a third left).
    #[arg(long, env = "MCP_WARDEN_CA_VALIDITY_DAYS", default_value_t = 1825)]
    pub ca_validity_days: u64,
    /// Days a serving certificate is valid (reissued with a third left).
    #[arg(long, env = "MCP_WARDEN_CERT_VALIDITY_DAYS", default_value_t = 365)]
    pub cert_validity_days: u64,
    /// Seconds the webhook CA is valid, overriding --ca-validity-days (short lifetimes, to see
    /// rotation happen in a test cluster).
    #[arg(long, env = "MCP_WARDEN_CA_VALIDITY_SECONDS", value_name = "SECONDS")]
    pub ca_validity_seconds: Option<u64>,
    /// Seconds a serving certificate is valid, overriding --cert-validity-days.
    #[arg(long, env = "MCP_WARDEN_CERT_VALIDITY_SECONDS", value_name = "SECONDS")]
    pub cert_validity_seconds: Option<u64>,
    /// Seconds a new CA is trusted in caBundle before certificates are issued from it.
    #[arg(long, env = "MCP_WARDEN_CA_OVERLAP_SECONDS", default_value_t = 3600)]
    pub ca_overlap_seconds: u64,
    /// Seconds between certificate checks (reload on every replica, Secret and caBundle on the leader).
    #[arg(long, env = "MCP_WARDEN_CERT_INTERVAL_SECONDS", default_value_t = 30)]
    pub cert_interval_seconds: u64,
    /// Seconds between fetches of the key sets sidecars verify tokens with (the cluster's
    /// ServiceAccount keys, an OIDC issuer's `jwksFrom`); a failed fetch is retried after 30 s.
    #[arg(long, env = "MCP_WARDEN_JWKS_REFRESH_SECONDS", default_value_t = 300)]
    pub jwks_refresh_seconds: u64,
    /// The controller's ServiceAccount (the downward API's `spec.serviceAccountName`): the one
    /// subject sidecars' admin APIs accept.
    #[arg(long, env = "SERVICE_ACCOUNT_NAME", default_value = "mcp-warden")]
    pub service_account: String,
    /// A token of that ServiceAccount for audience `mcp-warden-admin` (a projected volume the
    /// kubelet refreshes), sent to sidecars' admin APIs; read before every poll.
    #[arg(
        long,
        env = "MCP_WARDEN_ADMIN_TOKEN_FILE",
        default_value = "/var/run/secrets/mcp-warden/admin/token"
    )]
    pub admin_token_file: PathBuf,
    /// Seconds between polls of the admin APIs of injected pods whose policy has approval rules.
    #[arg(long, env = "MCP_WARDEN_APPROVALS_POLL_SECONDS", default_value_t = 5.0)]
    pub approvals_poll_seconds: f64,
    /// Seconds between reads of injected pods' tool lists (`GET /tools`) into McpPolicy status.
    #[arg(long, env = "MCP_WARDEN_TOOLS_POLL_SECONDS", default_value_t = 30.0)]
    pub tools_poll_seconds: f64,
    /// Seconds a decided, used or expired McpApproval is kept before it is deleted.
    #[arg(
        long,
        env = "MCP_WARDEN_APPROVAL_RETENTION_SECONDS",
        default_value_t = 86_400
    )]
    pub approval_retention_seconds: u64,
    /// The leader-election Lease.
    #[arg(
        long,
        env = "MCP_WARDEN_LEASE_NAME",
        default_value = "mcp-warden-leader"
    )]
    pub lease_name: String,
    /// Seconds a leader may go without renewing before another replica takes over.
    #[arg(long, env = "MCP_WARDEN_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// The sidecar image injected into pods.
    #[arg(long, env = "MCP_WARDEN_SIDECAR_IMAGE", default_value = concat!("ghcr.io/mcp-warden/mcp-warden:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// The sidecar's imagePullPolicy (empty: the cluster default).
    #[arg(long, env = "MCP_WARDEN_SIDECAR_IMAGE_PULL_POLICY", default_value = "")]
    pub sidecar_image_pull_policy: String,
    /// The sidecar's port agents connect to (the pod's `mcp` port).
    #[arg(long, env = "MCP_WARDEN_SIDECAR_PORT", default_value_t = 9480)]
    pub sidecar_port: u16,
    /// The sidecar's /metrics, /livez, /readyz port.
    #[arg(long, env = "MCP_WARDEN_SIDECAR_ADMIN_PORT", default_value_t = 9481)]
    pub sidecar_admin_port: u16,
    /// Sidecar CPU request (a Kubernetes quantity; empty for none).
    #[arg(long, env = "MCP_WARDEN_SIDECAR_CPU_REQUEST", default_value = "20m")]
    pub sidecar_cpu_request: String,
    /// Sidecar memory request.
    #[arg(
        long,
        env = "MCP_WARDEN_SIDECAR_MEMORY_REQUEST",
        default_value = "32Mi"
    )]
    pub sidecar_memory_request: String,
    /// Sidecar CPU limit (empty for none).
    #[arg(long, env = "MCP_WARDEN_SIDECAR_CPU_LIMIT", default_value = "")]
    pub sidecar_cpu_limit: String,
    /// Sidecar memory limit.
    #[arg(long, env = "MCP_WARDEN_SIDECAR_MEMORY_LIMIT", default_value = "64Mi")]
    pub sidecar_memory_limit: String,
    /// The numeric user the sidecar runs as.
    #[arg(long, env = "MCP_WARDEN_SIDECAR_RUN_AS_USER", default_value_t = 65532)]
    pub sidecar_run_as_user: i64,
    /// Inject a native sidecar (init container with restartPolicy Always): true, false, or auto
    /// (when the API server and every kubelet are 1.32 or newer).
    #[arg(long, env = "MCP_WARDEN_NATIVE_SIDECAR", default_value = "auto")]
    pub native_sidecar: crate::controller::NativeSidecar,
    /// Seconds to report not ready before stopping, after SIGTERM.
    #[arg(long, env = "MCP_WARDEN_DRAIN_DELAY_SECONDS", default_value_t = 5.0)]
    pub drain_delay_seconds: f64,
}

impl ControllerArgs {
    pub fn config(&self) -> anyhow::Result<crate::controller::Config> {
        use crate::cluster::webhooks::Endpoint;
        use crate::controller::certs::CertConfig;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        use std::time::Duration;
        let mut webhook_listen = self.webhook_listen;
        let endpoint = match &self.webhook_url {
            Some(url) => {
                let uri: http::Uri = url.parse().context("--webhook-url is not a URL")?;
                if uri.scheme_str() != Some("https") || uri.host().is_none() {
                    bail!("--webhook-url must look like https://HOST:PORT");
                }
                webhook_listen.set_port(uri.port_u16().unwrap_or(443));
                Endpoint::Url(url.trim_end_matches('/').to_string())
            }
            None => Endpoint::Service {
                namespace: self.namespace.clone(),
                name: self.webhook_service.clone(),
                port: self.webhook_service_port,
            },
        };
        let day = |d: u64| Duration::from_secs(d.max(1) * 86_400);
        let quantities = |pairs: [(&str, &String); 2]| {
            let m: std::collections::BTreeMap<String, Quantity> = pairs
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
                .collect();
            (!m.is_empty()).then_some(m)
        };
        let mut inject = crate::cluster::InjectConfig::new(
            self.sidecar_image.clone(),
            env!("CARGO_PKG_VERSION"),
        );
        inject.image_pull_policy =
            Some(self.sidecar_image_pull_policy.clone()).filter(|s| !s.is_empty());
        inject.proxy_port = self.sidecar_port;
        inject.admin_port = self.sidecar_admin_port;
        inject.run_as_user = self.sidecar_run_as_user;
        inject.resources.requests = quantities([
            ("cpu", &self.sidecar_cpu_request),
            ("memory", &self.sidecar_memory_request),
        ]);
        inject.resources.limits = quantities([
            ("cpu", &self.sidecar_cpu_limit),
            ("memory", &self.sidecar_memory_limit),
        ]);
        let identity = match &self.identity {
            Some(i) if !i.is_empty() => i.clone(),
            _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| format!("mcp-warden-{}", std::process::id())),
        };
        Ok(crate::controller::Config {
            namespace: self.namespace.clone(),
            identity,
            webhook_listen,
            admin_listen: self.admin_listen,
            certs: CertConfig {
                namespace: self.namespace.clone(),
                secret: self.tls_secret.clone(),
                webhook_config: self.webhook_config.clone(),
                endpoint,
                lifetimes: crate::webhook::tls::Lifetimes {
                    ca: self
                        .ca_validity_seconds
                        .map_or_else(|| day(self.ca_validity_days), Duration::from_secs),
                    serving: self
                        .cert_validity_seconds
                        .map_or_else(|| day(self.cert_validity_days), Duration::from_secs),
                    overlap: Duration::from_secs(self.ca_overlap_seconds),
                },
                owner: None,
            },
            lease_name: self.lease_name.clone(),
            lease_duration: Duration::from_secs(self.lease_duration_seconds.max(1)),
            inject,
            native_sidecar: self.native_sidecar,
            drain_delay: Duration::try_from_secs_f64(self.drain_delay_seconds).map_err(|_| {
                anyhow::anyhow!("--drain-delay-seconds must be a non-negative number")
            })?,
            cert_interval: Duration::from_secs(self.cert_interval_seconds.max(1)),
            manage_certificates: self.manage_certificates,
            jwks_refresh: Duration::from_secs(self.jwks_refresh_seconds.max(1)),
            approvals: crate::controller::approvals::ApprovalsConfig {
                subject: format!(
                    "system:serviceaccount:{}:{}",
                    self.namespace, self.service_account
                ),
                token_file: self.admin_token_file.clone(),
                poll: Duration::try_from_secs_f64(self.approvals_poll_seconds)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        anyhow::anyhow!("--approvals-poll-seconds must be more than zero")
                    })?,
                tools_poll: Duration::try_from_secs_f64(self.tools_poll_seconds)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        anyhow::anyhow!("--tools-poll-seconds must be more than zero")
                    })?,
                retention: Duration::from_secs(self.approval_retention_seconds),
            },
        })
    }
}

/// Runs the controller until SIGTERM.
pub fn run_controller(a: &ControllerArgs) -> anyhow::Result<bool> {
    let cfg = a.config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::controller::run(cfg, crate::serve::shutdown_signal()))?;
    Ok(true)
}
