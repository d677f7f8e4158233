#![forbid(unsafe_code)]

use clap::{CommandFactory, FromArgMatches};
use mcp_warden::cmd::{self, Cli, Command};
use mcp_warden::logging;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Installed as `kubectl-mcp_warden`, the binary is the kubectl plugin `kubectl mcp-warden`.
    let plugin = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().starts_with("kubectl-"))
        })
        .unwrap_or(false);
    let mut command = Cli::command();
    if plugin {
        command = command
            .name("kubectl mcp-warden")
            .bin_name("kubectl mcp-warden");
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        // The demo prints its rug pull itself; the sidecar's warning about it would repeat it.
        "warn,mcp_warden::sidecar::discovery=error"
    } else {
        "info"
    };
    logging::init(
        cli.log.as_deref().unwrap_or(default_level),
        cli.log_format == cmd::LogFormat::Json,
    );
    let result = cmd::run(&cli.command);
    logging::flush();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
