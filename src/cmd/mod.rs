//! The command line: one binary, several roles, one module each with its arguments and what
//! runs them — [`sidecar`], [`controller`], [`check`] and [`pin`], [`demo`], [`approve`]
//! (`approvals`, `approve`, `reject`), [`generate`]. Every flag can also be set from an
//! environment variable, so the same image is configured the Kubernetes way.

pub mod approve;
pub mod check;
pub mod controller;
pub mod demo;
pub mod generate;
pub mod pin;
pub mod sidecar;

use approve::{ApprovalsArgs, DecideArgs};
use check::CheckArgs;
use clap::{Args, Parser, Subcommand};
use controller::ControllerArgs;
use demo::DemoArgs;
use generate::GenerateArgs;
use pin::PinArgs;
use sidecar::SidecarArgs;

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
pub struct CrdArgs {
    /// Print the field reference (Markdown) instead of the CRD.
    #[arg(long)]
    pub reference: bool,
}

/// Runs the command; `Ok(false)` when it found something wrong (exit code 1).
pub fn run(command: &Command) -> anyhow::Result<bool> {
    match command {
        Command::Check(a) => check::run(a),
        Command::Sidecar(a) => sidecar::run(a),
        Command::Demo(a) => demo::run_demo(a),
        Command::Controller(a) => controller::run(a),
        Command::Generate(a) => generate::run_generate(a),
        Command::Pin(a) => pin::run(a),
        Command::Approvals(a) => approve::run_approvals(a),
        Command::Approve(a) => approve::run_decide(a, true),
        Command::Reject(a) => approve::run_decide(a, false),
        Command::Crd(a) => {
            if a.reference {
                print!("{}", crate::crd::reference::markdown());
            } else {
                print!(
                    "{}---\n{}",
                    crate::crd::crd_yaml(),
                    crate::crd::approval::crd_yaml()
                );
            }
            Ok(true)
        }
    }
}

/// Runs a future to its end on a runtime of one thread.
pub(crate) fn block_on<T>(
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// A flag's seconds as a duration: a non-negative number.
pub(crate) fn seconds(flag: &str, v: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("--{flag} must be a non-negative number of seconds"))
}

/// A flag's seconds as a duration that is more than zero.
pub(crate) fn positive_seconds(flag: &str, v: f64) -> anyhow::Result<std::time::Duration> {
    let d = seconds(flag, v)?;
    if d.is_zero() {
        anyhow::bail!("--{flag} must be more than zero");
    }
    Ok(d)
}
