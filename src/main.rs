#![forbid(unsafe_code)]

use clap::{CommandFactory, FromArgMatches};
use mcp_warden::cli::{self, Cli, Command};
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
        cli.log_format == mcp_warden::cli::LogFormat::Json,
    );
    let result = match &cli.command {
        Command::Check(a) => cli::run_check(a),
        Command::Sidecar(a) => cli::run_sidecar(a),
        Command::Demo(a) => cli::run_demo(a),
        Command::Controller(a) => cli::run_controller(a),
        Command::Generate(a) => cli::run_generate(a),
        Command::Pin(a) => cli::run_pin(a),
        Command::Approvals(a) => cli::run_approvals(a),
        Command::Approve(a) => cli::run_decide(a, true),
        Command::Reject(a) => cli::run_decide(a, false),
        Command::Crd(a) => {
            if a.reference {
                print!("{}", mcp_warden::crd::reference::markdown());
            } else {
                print!(
                    "{}---\n{}",
                    mcp_warden::crd::crd_yaml(),
                    mcp_warden::crd::approval::crd_yaml()
                );
            }
            Ok(true)
        }
    };
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
