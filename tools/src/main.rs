//! `flotilla`: the Flotilla command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flotilla_tools::{cluster, ctl};

/// Flotilla, a multi-raft storage engine.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node: the store, the transport, the RESP and HTTP servers.
    Server(flotilla_tools::server::ServerArgs),
    /// Start a local cluster of server processes on 127.0.0.1; Ctrl-C stops it.
    Cluster(cluster::ClusterArgs),
    /// Inspect and steer a running node through its HTTP status address.
    Ctl(ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Ctl(args) => run_ctl(&args),
        Command::Cluster(args) => match cluster::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flotilla cluster: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Server(args) => {
            init_logging();
            match flotilla_tools::server::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flotilla server: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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

/// Logs to stderr, `info` and up unless `RUST_LOG` says otherwise; colours only on a
/// terminal (`flotilla cluster` sends each node's stderr to a log file).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
