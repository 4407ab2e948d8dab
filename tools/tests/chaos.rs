//! The fault-tolerance suite's bounded run (flotilla-chaos, docs/operations.md
//! "Fault-tolerance suite"): three `flotilla server` processes (this crate's binary) behind
//! fault-injecting proxies, seven clients, and on fixed seeds kills (one node, the
//! leader-heaviest, two at once), pauses, partitions, delays, leader transfers, and region
//! splits and merges (alone and during the other faults); the history must be linearizable
//! per key, lose no acknowledged write and show no invented value, every node must serve
//! again after the faults, and every node's regions must then tile the key space and agree.
//! Reports go to
//! `$CARGO_TARGET_DIR/chaos/seed-S/` (or `target/chaos`), kept when a run fails.

use std::path::PathBuf;

use flotilla_chaos::run::{run, RunConfig};

/// Fixed seeds. The first episodes go through the fault kinds in a seeded order, and every
/// schedule splits and merges at least once (checked below).
const SEEDS: [u64; 2] = [1, 2];
/// Faulty seconds per seed; with start, recovery, final reads and the check a seed takes
/// about 45 s on 2 cores.
const SECONDS: u64 = 30;

fn out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
            PathBuf::from,
        )
        .join("chaos")
}

fn config(seed: u64) -> RunConfig {
    let mut cfg = RunConfig::new(
        env!("CARGO_BIN_EXE_flotilla").into(),
        out_dir(),
        seed,
        SECONDS,
    );
    // Full-disk faults have a test of their own below (it needs root to mount the tmpfs
    // disks); leaving them out here keeps these seeds' schedules what they were, and the
    // run the same with and without root.
    cfg.disk_faults = false;
    cfg
}

#[test]
fn bounded_chaos_run_on_fixed_seeds() {
    for seed in SEEDS {
        let o = run(&config(seed)).unwrap_or_else(|e| panic!("seed {seed}: harness: {e}"));
        let summary = std::fs::read_to_string(o.dir.join("summary.txt")).unwrap_or_default();
        println!("seed {seed}:\n{summary}");
        assert!(
            o.passed(),
            "seed {seed} failed; report in {}:\n{summary}\n{}",
            o.dir.display(),
            o.verdict.describe()
        );
        // The run did something worth checking.
        assert!(
            o.counts.ok > 1000,
            "seed {seed}: only {} ops ok",
            o.counts.ok
        );
        assert!(o.episodes >= 6, "seed {seed}: {} episodes", o.episodes);
        // Splits and merges were asked for (under faults they may be refused or time out,
        // which is not judged; the layout check above is).
        assert!(o.churn.splits >= 1, "seed {seed}: no split: {:?}", o.churn);
        assert!(o.churn.merges >= 1, "seed {seed}: no merge: {:?}", o.churn);
    }
}

/// A full disk (a small tmpfs, filled) must make writes fail with a clear error, and the
/// node must take writes again once the space is freed — by itself: the store reopens its
/// engine (docs/operations.md, "Full disk"), the harness restarts nothing. Needs root (mount); without it the
/// run reports disk faults as skipped and this test says so and passes.
#[test]
fn a_full_disk_is_survived_and_the_node_recovers() {
    let mut cfg = config(11);
    cfg.disk_faults = true;
    cfg.seconds = 60;
    let o = run(&cfg).unwrap_or_else(|e| panic!("harness: {e}"));
    if let Some(why) = &o.disk_faults_skipped {
        eprintln!("disk faults not available here ({why}); nothing to check");
        return;
    }
    let summary = std::fs::read_to_string(o.dir.join("summary.txt")).unwrap_or_default();
    assert!(o.passed(), "report in {}:\n{summary}", o.dir.display());
}
