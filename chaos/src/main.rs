//! `flotilla-chaos`: runs the fault-tolerance suite against `flotilla server` processes.
//!
//! ```text
//! flotilla-chaos [--seed S] [--runs N] [--seconds 60] [--flotilla target/debug/flotilla]
//!                [--out target/chaos] [--nodes 3] [--regions 8] [--no-disk-faults]
//! flotilla-chaos --check HISTORY.jsonl   # re-check a recorded history
//! ```
//!
//! Exit code 0 when every run passed, 1 when one failed (its report directory says why),
//! 2 when the harness could not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flotilla_chaos::run::{run, RunConfig};
use flotilla_chaos::{checker, history, workload};

/// Flotilla's fault-tolerance suite.
#[derive(Debug, Parser)]
#[command(name = "flotilla-chaos")]
struct Args {
    /// Re-check a recorded history.jsonl instead of running.
    #[arg(long)]
    check: Option<PathBuf>,
    /// The seed of the schedule and the workload (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Runs, with consecutive seeds from --seed (or random ones).
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Length of the faulty part of each run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The flotilla binary (default: $FLOTILLA_BIN, else target/debug/flotilla under
    /// $CARGO_TARGET_DIR or ./target).
    #[arg(long)]
    flotilla: Option<PathBuf>,
    /// Report directory; each run writes OUT/seed-S/.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Regions.
    #[arg(long, default_value_t = 8)]
    regions: usize,
    /// Do not try to mount tmpfs data directories for full-disk faults.
    #[arg(long)]
    no_disk_faults: bool,
}

fn default_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOTILLA_BIN") {
        return p.into();
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("debug").join("flotilla")
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check {
        let records = match history::read_jsonl(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("flotilla-chaos: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        let verdict = checker::check(&records, &workload::hot_keys());
        println!("{} operations, keys {:?}", records.len(), verdict.keys);
        if verdict.ok() {
            println!("PASS");
            return ExitCode::SUCCESS;
        }
        print!("{}", verdict.describe());
        return ExitCode::FAILURE;
    }
    let first = args.seed.unwrap_or_else(rand::random);
    let bin = args.flotilla.clone().unwrap_or_else(default_bin);
    let mut failed = false;
    for i in 0..args.runs {
        let seed = if args.seed.is_some() {
            first + i
        } else if i == 0 {
            first
        } else {
            rand::random()
        };
        let mut cfg = RunConfig::new(bin.clone(), args.out.clone(), seed, args.seconds);
        cfg.nodes = args.nodes;
        cfg.regions = args.regions;
        cfg.disk_faults = !args.no_disk_faults;
        cfg.think_max = Duration::from_millis(40);
        println!("seed {seed}: running {} s of faults", args.seconds);
        match run(&cfg) {
            Ok(o) => {
                let summary =
                    std::fs::read_to_string(o.dir.join("summary.txt")).unwrap_or_default();
                print!("{summary}");
                println!("report: {}", o.dir.display());
                if !o.passed() {
                    failed = true;
                    print!("{}", o.verdict.describe());
                }
            }
            Err(e) => {
                eprintln!("flotilla-chaos: seed {seed}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
