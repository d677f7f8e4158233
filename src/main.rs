#![forbid(unsafe_code)]

use clap::Parser;
use mcp_warden::cli::{self, Cli, Command};
use mcp_warden::logging;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
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
        Command::Crd(a) => {
            if a.reference {
                print!("{}", mcp_warden::crd::reference::markdown());
            } else {
                print!("{}", mcp_warden::crd::crd_yaml());
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
