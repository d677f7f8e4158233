//! The command line: one binary, several roles (DESIGN §1). Every flag can also be set from an
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
    #[arg(long, env = "MCP_WARDEN_LOG_FORMAT", default_value = "json", global = true, value_parser = ["json", "text"])]
    pub log_format: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policy files and McpPolicy manifests; optionally explain a decision.
    Check(CheckArgs),
    /// Run the enforcing proxy in front of an MCP server.
    Sidecar(SidecarArgs),
    /// Show the main job with no cluster: a sample MCP server behind the sidecar, driven by a script.
    Demo(DemoArgs),
    /// Print the McpPolicy CustomResourceDefinition (YAML), generated from the Rust types.
    Crd,
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
    /// The MCP server, e.g. http://127.0.0.1:8888/mcp; its path is the gated MCP path.
    #[arg(long, env = "MCP_WARDEN_UPSTREAM", value_name = "URL")]
    pub upstream: http::Uri,
    /// Where agents connect.
    #[arg(long, env = "MCP_WARDEN_LISTEN", default_value = "0.0.0.0:9480")]
    pub listen: std::net::SocketAddr,
    /// Where /metrics, /livez and /readyz are served.
    #[arg(long, env = "MCP_WARDEN_ADMIN_LISTEN", default_value = "0.0.0.0:9481")]
    pub admin_listen: std::net::SocketAddr,
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
    #[arg(long, env = "MCP_WARDEN_INFLIGHT_BODY_BYTES", default_value_t = 64 << 20)]
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
        c.listen = self.listen;
        c.admin_listen = self.admin_listen;
        c.passthrough_paths = self.passthrough_paths.clone();
        c.max_body_bytes = self.max_body_bytes.max(1);
        c.inflight_body_bytes = self.inflight_body_bytes.max(c.max_body_bytes);
        c.drain_delay = secs("drain-delay-seconds", self.drain_delay_seconds)?;
        c.shutdown_timeout = secs("shutdown-timeout-seconds", self.shutdown_timeout_seconds)?;
        c.engine.max_keys_per_counter = self.max_keys_per_counter.max(1);
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
        crate::sidecar::run(state, listeners, crate::sidecar::shutdown_signal()).await?;
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
    /// Caller identity key for `scope: grant` counters.
    #[arg(long, default_value = "anonymous", requires = "explain")]
    pub identity: String,
    /// Session id for `scope: session` counters.
    #[arg(long, requires = "explain")]
    pub session: Option<String>,
    /// Make the call N times at one instant and explain the last (shows limits acting).
    #[arg(long, default_value_t = 1, value_name = "N", requires = "explain")]
    pub calls: u32,
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
                grant: a.identity.clone(),
                session: a.session.clone(),
                calls: a.calls,
            })
        }
    };
    let mut out = String::new();
    let ok = check::run(&a.files, explain.as_ref(), &mut out);
    print!("{out}");
    Ok(ok)
}
