//! The deterministic randomized simulation of raft groups (issue 2, tests 2 and 3).
//!
//! For each seed, a group of 3, 5 or 7 voters runs with message loss, duplication, delay
//! and reordering, partitions, crash-restarts (also between sending a Ready's messages and
//! persisting it), client writes with retries, ReadIndex and lease reads, membership changes
//! (learners, promotion, joint changes), leader transfers, snapshots and compaction. After
//! every step the properties of `flotilla_region::sim::invariants` are checked; then the
//! faults stop and a leader must be elected and every pending write acknowledged within
//! `LIVENESS_TICKS_MAX` ticks.
//!
//! Environment: `SIM_SEEDS` (seeds per group size) and `SIM_SEED_BASE` (first seed, 0).
//! A failure prints the seed and the command that replays it alone.

use std::time::Instant;

use flotilla_common::{Entry, EntryKind};
use flotilla_region::sim::invariants::{
    ElectionSafety, LeaderAppendOnly, LeaderCompleteness, LinearizableReads, LogMatching,
    StateMachineSafety, TermLog,
};
use flotilla_region::sim::node::entry_fingerprint;
use flotilla_region::sim::{SimConfig, SimStats, Simulation, LIVENESS_TICKS_MAX};

/// Seeds per group size when `SIM_SEEDS` is not set: chosen so that this whole file takes
/// under two minutes in a debug build on a 2-core machine (CI runs `cargo test --workspace`
/// in debug). Measured with other work on the machine: 180 seeds x ~1,510 steps = ~272,000
/// steps in about a minute.
const DEFAULT_SEEDS: u64 = 60;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

fn run_seeds(nodes: usize) {
    let seeds = env_u64("SIM_SEEDS", DEFAULT_SEEDS);
    let base = env_u64("SIM_SEED_BASE", 0);
    let started = Instant::now();
    let mut total = SimStats::default();
    for seed in base..base + seeds {
        // A run is named by its group size and seed: the same pair replays it exactly.
        let config = SimConfig::random(nodes, seed);
        match Simulation::new(config).run() {
            Ok(report) => total.add(&report.stats),
            Err(failure) => panic!(
                "simulation failed: {failure}\nreplay it alone with:\n  SIM_SEED_BASE={seed} SIM_SEEDS=1 \
                 cargo test -p flotilla-region --test simulation -- {} --nocapture",
                test_name(nodes)
            ),
        }
    }
    println!(
        "{nodes} nodes: {seeds} seeds x {} steps on average ({} steps) in {:.1?}: {total}",
        total.steps / seeds.max(1),
        total.steps,
        started.elapsed()
    );
    assert!(total.liveness_ticks <= LIVENESS_TICKS_MAX);
    assert!(
        total.forwarded > 0,
        "no write was forwarded by a follower: forwarding went untested"
    );
}

fn test_name(nodes: usize) -> &'static str {
    match nodes {
        3 => "three_nodes",
        5 => "five_nodes",
        _ => "seven_nodes",
    }
}

#[test]
fn three_nodes() {
    run_seeds(3);
}

#[test]
fn five_nodes() {
    run_seeds(5);
}

#[test]
fn seven_nodes() {
    run_seeds(7);
}

/// The same seed gives the same run: the statistics of two runs are identical.
#[test]
fn a_seed_replays_exactly() {
    let run = || {
        let config = SimConfig {
            fault_ticks: 300,
            ..SimConfig::random(5, 77)
        };
        Simulation::new(config)
            .run()
            .expect("all properties hold")
            .stats
    };
    let (a, b) = (run(), run());
    assert_eq!(format!("{a}"), format!("{b}"));
    assert!(
        a.elections >= 1 && a.committed_index > 0,
        "the run did something: {a}"
    );
}

// The checkers are not vacuous: each one, fed a hand-built bad history, reports it.

#[test]
fn election_safety_catches_two_leaders_in_one_term() {
    let mut c = ElectionSafety::default();
    c.observe_leader(3, 1).unwrap();
    c.observe_leader(3, 1).unwrap();
    c.observe_leader(4, 2).unwrap();
    let v = c.observe_leader(3, 2).unwrap_err();
    assert_eq!(v.property, "Election Safety");
}

#[test]
fn log_matching_catches_diverging_logs() {
    let e = |index, term, data: &'static str| {
        let e = Entry::new(EntryKind::Normal, term, index, data);
        (e.index, e.term, entry_fingerprint(&e))
    };
    let mut c = LogMatching::default();
    c.observe_append(1, 0, &[e(1, 1, "a"), e(2, 1, "b"), e(3, 2, "c")])
        .unwrap();
    // Same entries on another peer: fine.
    c.observe_append(2, 0, &[e(1, 1, "a"), e(2, 1, "b")])
        .unwrap();
    // Entry (3, term 2) on peer 3 follows an entry of term 3: the logs before it differ.
    let v = c.observe_append(3, 3, &[e(3, 2, "c")]).unwrap_err();
    assert_eq!(v.property, "Log Matching");
    // Same index and term, different content.
    assert!(c.observe_append(3, 1, &[e(2, 1, "x")]).is_err());
}

#[test]
fn leader_append_only_catches_a_truncating_leader() {
    let mut c = LeaderAppendOnly::default();
    let log = TermLog {
        offset: 0,
        offset_term: 0,
        terms: vec![1, 1, 2, 2],
    };
    c.observe_leader(1, 2, &log).unwrap();
    let shorter = TermLog {
        offset: 0,
        offset_term: 0,
        terms: vec![1, 1, 2],
    };
    assert_eq!(
        c.observe_leader(1, 2, &shorter).unwrap_err().property,
        "Leader Append-Only"
    );
    // A durable entry replaced by a different one.
    assert!(c.observe_persist(1, 2, &[(4, 2, 7)], &[(4, 2, 8)]).is_err());
    c.observe_persist(1, 2, &[(4, 2, 7)], &[(4, 2, 7), (5, 2, 9)])
        .unwrap();
}

#[test]
fn leader_completeness_catches_a_leader_missing_a_committed_entry() {
    let mut c = LeaderCompleteness::default();
    let old_leader = TermLog {
        offset: 0,
        offset_term: 0,
        terms: vec![1, 1, 1],
    };
    c.observe_commit(1, 3, &old_leader).unwrap();
    // The leader of term 2 only has two of the three entries committed in term 1.
    let new_leader = TermLog {
        offset: 0,
        offset_term: 0,
        terms: vec![1, 1],
    };
    let v = c.observe_leader(2, 2, &new_leader).unwrap_err();
    assert_eq!(v.property, "Leader Completeness");
}

#[test]
fn state_machine_safety_catches_different_entries_at_one_index() {
    let mut c = StateMachineSafety::default();
    c.observe_apply(1, 1, 1, 0xa, 100).unwrap();
    c.observe_apply(2, 1, 1, 0xa, 100).unwrap();
    assert!(c.observe_apply(3, 1, 2, 0xb, 101).is_err());
    assert!(
        c.observe_state(3, 1, 999).is_err(),
        "a snapshot that does not match the log"
    );
}

#[test]
fn linearizable_reads_catch_a_stale_read() {
    let mut c = LinearizableReads::default();
    c.observe_ack(0, 7, 1);
    c.observe_ack(0, 7, 2);
    let token = c.issue(0);
    let stale = [(7, 1)].into_iter().collect();
    let effect = |_c, s| Some(s);
    let v = c
        .observe_answer(1, &token, 5, 5, &stale, effect)
        .unwrap_err();
    assert_eq!(v.property, "Linearizable reads");
    let fresh = [(7, 2)].into_iter().collect();
    c.observe_answer(1, &token, 5, 5, &fresh, effect).unwrap();
    // A value that never took effect is an uncommitted read.
    let phantom = [(7, 3)].into_iter().collect();
    assert!(c
        .observe_answer(1, &token, 5, 5, &phantom, |_, _| None)
        .is_err());
}

#[test]
fn exactly_once_catches_a_command_applied_twice() {
    let mut c = flotilla_region::sim::invariants::ExactlyOnce::default();
    c.observe_effect(1, 9, 1, 10).unwrap();
    c.observe_effect(2, 9, 1, 10).unwrap();
    assert!(c.observe_effect(2, 9, 1, 12).is_err());
}
