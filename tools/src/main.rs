//! `flotilla`: the Flotilla command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flotilla_tools::ctl;

/// Flotilla, a multi-raft storage engine.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and steer a running node through its HTTP status address.
    Ctl(ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Ctl(args) => run_ctl(&args),
    }
}

fn run_ctl(args: &ctl::CtlArgs) -> ExitCode {
    // One request at a time: a single-threaded runtime is all ctl needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flotilla ctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    match runtime.block_on(ctl::run(args, &mut stdout.lock())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla ctl: {e}");
            ExitCode::FAILURE
        }
    }
}
