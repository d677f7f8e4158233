//! `mcp-warden pin --server URL [FILE]`: the `pins:` block for a live server's tools.

use super::check::ServerArgs;
use anyhow::bail;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct PinArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Pin only the tools this policy file (or McpPolicy manifest) lets agents call.
    #[arg(value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// Runs `pin --server URL [FILE]`: prints a `pins:` block to paste into a policy.
pub fn run(a: &PinArgs) -> anyhow::Result<bool> {
    if a.server.server.is_none() {
        bail!("pin needs --server URL");
    }
    let listing = a.server.tools()?.expect("a server was named");
    let policy = match &a.policy {
        Some(path) => Some(super::check::load_one(path)?),
        None => None,
    };
    print!(
        "{}",
        super::check::pins_block(
            &listing,
            policy.as_ref(),
            a.server.server.as_ref().expect("named")
        )
    );
    Ok(true)
}
