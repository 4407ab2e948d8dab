//! Runs the deterministic raft simulation with faults for a number of wall-clock seconds,
//! seed after seed, and reports whether every property held.
//!
//! ```text
//! cargo run --release -p flotilla-region --example simulate -- --nodes 5 --seconds 10 [--seed N]
//! ```
//!
//! Each seed is one run of `flotilla_region::sim`: a group of `--nodes` voters under message
//! loss, duplication, delay and reordering, partitions and crash-restarts, with clients,
//! membership changes and leader transfers, checked after every step; then the faults stop
//! and the group must elect a leader and finish every pending write. A violation prints its
//! seed and the command that replays it, and the exit code is 1.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use flotilla_region::sim::{SimConfig, SimStats, Simulation};
use indicatif::{ProgressBar, ProgressStyle};

/// Run the raft simulation with faults and check its safety and liveness properties.
#[derive(Debug, Parser)]
struct Args {
    /// Voters the group starts with.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Wall-clock seconds to run for (the seed running when time is up is finished).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// First seed (default: from the clock, printed so that the run can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many seeds even if time is left.
    #[arg(long)]
    seeds: Option<u64>,
}

/// Steps between two refreshes of the progress line (a power of two): frequent enough for
/// a smooth line, rare enough to cost nothing next to the steps.
const STEPS_PER_REFRESH: u64 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    if !(1..=15).contains(&args.nodes) {
        eprintln!("--nodes must be between 1 and 15");
        return ExitCode::from(2);
    }
    let first_seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    println!(
        "simulating a group of {} voters for {} s, seeds from {first_seed}: loss, duplication, delay, \
         reordering, partitions, crash-restarts, membership changes, leader transfers, reads",
        args.nodes, args.seconds
    );
    let budget = Duration::from_secs(args.seconds);
    let bar = ProgressBar::new(budget.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut total = SimStats::default();
    let mut seeds_run = 0u64;
    let mut seed = first_seed;
    while started.elapsed() < budget && seeds_left(args.seeds, seeds_run) {
        let mut sim = Simulation::new(SimConfig::random(args.nodes, seed));
        let fault_ticks = sim.config().fault_ticks;
        let outcome = loop {
            let done = match sim.step() {
                Ok(done) => done,
                Err(failure) => break Err(failure),
            };
            if !sim.in_liveness_phase() && sim.now() >= fault_ticks {
                sim.stop_faults();
            }
            if done {
                break Ok(sim.stats());
            }
            if sim.now() & (STEPS_PER_REFRESH - 1) == 0 {
                let mut now = total;
                now.add(&sim.stats());
                refresh(&bar, started, seed, &now);
            }
        };
        match outcome {
            Ok(stats) => total.add(&stats),
            Err(failure) => {
                bar.abandon();
                println!("\nPROPERTY VIOLATED: {failure}");
                println!(
                    "replay it with:\n  cargo run --release -p flotilla-region --example simulate -- --nodes {} \
                     --seed {seed} --seeds 1",
                    args.nodes
                );
                println!("or: SIM_SEED_BASE={seed} SIM_SEEDS=1 cargo test -p flotilla-region --test simulation");
                return ExitCode::from(1);
            }
        }
        seeds_run += 1;
        seed += 1;
        refresh(&bar, started, seed, &total);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!("{seeds_run} seeds ({first_seed}..{seed}) in {secs:.1} s");
    println!("{total}");
    println!(
        "throughput: {:.0} ticks/s, {:.0} entries/s through the cores ({:.0} committed entries/s)",
        total.steps as f64 / secs,
        total.entries_applied as f64 / secs,
        total.committed_index as f64 / secs,
    );
    println!(
        "all properties held: Election Safety, Leader Append-Only, Log Matching, Leader Completeness, \
         State Machine Safety, linearizable reads, exactly-once, liveness after faults"
    );
    ExitCode::SUCCESS
}

fn seeds_left(limit: Option<u64>, run: u64) -> bool {
    match limit {
        Some(n) => run < n,
        None => true,
    }
}

fn refresh(bar: &ProgressBar, started: Instant, seed: u64, s: &SimStats) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    bar.set_position(started.elapsed().as_millis() as u64);
    bar.set_message(format!(
        "seed {seed} | {} elections | {} commits | {} ticks | {:.0} entries/s",
        s.elections,
        s.committed_index,
        s.steps,
        s.entries_applied as f64 / secs
    ));
}
