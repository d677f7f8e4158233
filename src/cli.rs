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
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "MCP_WARDEN_LOG", default_value = "info", global = true)]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policy files and McpPolicy manifests; optionally explain a decision.
    Check(CheckArgs),
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
