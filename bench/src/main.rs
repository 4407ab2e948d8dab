//! `flotilla-bench`: `run` measures, `report` renders (see the crate docs and
//! docs/benchmarks.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flotilla_bench::{compare, report, run};

#[derive(Parser)]
#[command(
    name = "flotilla-bench",
    about = "Throughput and latency of Flotilla, etcd and Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the systems (or use --target), run the sweep, write a JSON file per run.
    Run(Box<run::RunArgs>),
    /// Run the same sweep on two or more Flotilla builds (or settings), alternated, and
    /// print each cell's runs, medians and ratios.
    Compare(Box<compare::CompareArgs>),
    /// Turn the JSON files into markdown tables (in the doc) and SVG plots.
    Report {
        /// Directory of run files.
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
        /// Markdown file whose generated section is replaced (appended if absent).
        #[arg(long, default_value = "docs/benchmarks.md")]
        doc: PathBuf,
        /// Directory for the SVG plots.
        #[arg(long, default_value = "docs/bench")]
        plots: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(args) => {
            let plan = match run::Plan::new(&args) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("flotilla-bench: {e}");
                    return ExitCode::from(2);
                }
            };
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(run::run(&plan, command_line())) {
                Ok((result, path)) => {
                    run::print_summary(&result, &path);
                    if plan.config.quick {
                        println!("{}", run::quick_line(&result));
                    }
                    if result.cells.iter().all(|c| c.measured().is_none()) {
                        eprintln!("flotilla-bench: no cell was measured (see the reasons above)");
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flotilla-bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Compare(args) => {
            let comparison = match compare::Comparison::new(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("flotilla-bench: {e}");
                    return ExitCode::from(2);
                }
            };
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(compare::compare(&comparison, &command_line())) {
                Ok((table, path)) => {
                    println!();
                    print!("{table}");
                    println!("summary: {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flotilla-bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Report {
            results,
            doc,
            plots,
        } => match report::write_report(&results, &doc, &plots) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("flotilla-bench: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The async runtime the runs use; `None` (said on stderr) if it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("flotilla-bench: cannot start the async runtime: {e}");
            None
        }
    }
}

/// This program's command line, as the result files record it.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}
