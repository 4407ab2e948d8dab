//! What the store's loop records through the `metrics` crate (exported by whatever recorder
//! the process installs, e.g. Prometheus on the status server's `/metrics`).
//!
//! The loop runs tens of thousands of rounds a second, so nothing here is recorded per
//! entry: counters move once per round (or once per region with a Ready), gauges are
//! sampled once per tick, and proposal latencies are recorded once per group of proposals
//! that arrived in the same round. Handles are registered once — the node's when the
//! store opens, a region's when its replica is created — so the loop never builds a label
//! or looks a name up. A recorder installed after the store opened never sees its samples.
//!
//! Node series carry no label except the fixed `reason` of failed proposals; region series
//! carry `region` = the region id. No label ever comes from a client.

use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use super::error::NodeError;

/// Counter: rounds of the store's loop (each: inputs, Readies, one log write, apply,
/// answers, reads), idle ones included.
pub const ROUNDS_TOTAL: &str = "flotilla_node_rounds_total";
/// Histogram: seconds one round took, from its first input to its last answer.
pub const ROUND_DURATION_SECONDS: &str = "flotilla_node_round_duration_seconds";
/// Histogram: seconds from a round's hand-off of its log write to the writer thread until
/// the store reaped it (queueing behind earlier writes, the write, the sync), in rounds
/// that wrote. The store does not wait for it: later rounds run meanwhile.
pub const LOG_WRITE_DURATION_SECONDS: &str = "flotilla_node_log_write_duration_seconds";
/// Histogram: regions in a round's log write, in rounds that wrote.
pub const LOG_WRITE_REGIONS: &str = "flotilla_node_log_write_regions";
/// Histogram: seconds a round spent applying committed entries (executing the commands
/// and writing the WriteBatch), in rounds that applied.
pub const APPLY_DURATION_SECONDS: &str = "flotilla_node_apply_duration_seconds";
/// Histogram: committed entries applied in one round, in rounds that applied.
pub const APPLY_ENTRIES: &str = "flotilla_node_apply_entries";
/// Counter: write requests the store received (accepted or not).
pub const PROPOSALS_TOTAL: &str = "flotilla_node_proposals_total";
/// Counter: write requests answered with an error, by `reason`: `not_leader` (this
/// replica did not lead, or lost leadership before the entry applied), `wrong_region`
/// (no such region here, or a key outside it), `dropped` (raft refused the proposal, or a
/// new leader replaced its entry), `stopped` (the store stopped first), `storage` (the
/// node's storage failed; it is reopening it).
pub const PROPOSALS_FAILED_TOTAL: &str = "flotilla_node_proposals_failed_total";
/// Histogram: seconds from the round that received a write to its answer, for writes
/// that applied (a command the state machine refused, e.g. INCR of a non-integer, still
/// applied). Time queued in the store's channel before that round is not included.
pub const PROPOSAL_DURATION_SECONDS: &str = "flotilla_node_proposal_duration_seconds";
/// Counter: linearizable reads (gets and scans) the store answered with data.
pub const READS_TOTAL: &str = "flotilla_node_reads_total";
/// Counter: reads answered with an error (not leader, wrong region, leadership lost,
/// storage error, store stopped).
pub const READS_FAILED_TOTAL: &str = "flotilla_node_reads_failed_total";
/// Counter: storage failures of the store (a full disk, a failed write or sync): each one
/// drops the node's engine and replicas and starts reopening them.
pub const STORAGE_FAILURES_TOTAL: &str = "flotilla_node_storage_failures_total";
/// Counter: times the store reopened its engine and restored its replicas after a storage
/// failure. Below [`STORAGE_FAILURES_TOTAL`] while the node is recovering.
pub const STORE_RECOVERIES_TOTAL: &str = "flotilla_node_store_recoveries_total";
/// Counter: node messages (of the cluster layer) dropped because their payload did not
/// decode.
pub const NODE_MESSAGES_MALFORMED_TOTAL: &str = "flotilla_node_messages_malformed_total";
/// Gauge: regions this node leads (sampled every tick).
pub const LEADERS: &str = "flotilla_node_leaders";
/// Gauge: region replicas on this node (sampled every tick).
pub const REGIONS: &str = "flotilla_node_regions";
/// Gauge: writes waiting for their entry to apply, over all regions (sampled every tick).
pub const PROPOSALS_PENDING: &str = "flotilla_node_proposals_pending";
/// Gauge: reads waiting for their read index or for apply (sampled every tick).
pub const READS_PENDING: &str = "flotilla_node_reads_pending";

/// Counter: commands this replica appended to its region's raft log as leader, by
/// `region`.
pub const REGION_PROPOSALS_TOTAL: &str = "flotilla_region_proposals_total";
/// Counter: committed entries raft handed this replica to apply (commands, leaders'
/// no-ops and membership changes), by `region`.
pub const REGION_ENTRIES_COMMITTED_TOTAL: &str = "flotilla_region_entries_committed_total";
/// Counter: client commands executed on this replica's state machine, by `region`
/// (committed entries minus no-ops and membership changes).
pub const REGION_COMMANDS_APPLIED_TOTAL: &str = "flotilla_region_commands_applied_total";
/// Gauge: 1 while this replica leads its region, else 0, by `region` (sampled every tick).
pub const REGION_LEADER: &str = "flotilla_region_leader";
/// Gauge: this replica's raft term, by `region` (sampled every tick).
pub const REGION_TERM: &str = "flotilla_region_term";
/// Gauge: this replica's commit index, by `region` (sampled every tick).
pub const REGION_COMMIT_INDEX: &str = "flotilla_region_commit_index";
/// Gauge: this replica's applied index, by `region` (sampled every tick).
pub const REGION_APPLIED_INDEX: &str = "flotilla_region_applied_index";

/// Why a write failed, as the fixed `reason` label of [`PROPOSALS_FAILED_TOTAL`].
fn failure_reason(e: &NodeError) -> Reason {
    match e {
        NodeError::NotLeader { .. } => Reason::NotLeader,
        NodeError::RegionNotFound
        | NodeError::KeyNotInRegion(_)
        | NodeError::EpochNotMatch { .. } => Reason::WrongRegion,
        NodeError::Stopped => Reason::Stopped,
        NodeError::StorageUnavailable(_) | NodeError::DiskFull(_) | NodeError::Storage(_) => {
            Reason::Storage
        }
        _ => Reason::Dropped,
    }
}

#[derive(Clone, Copy)]
enum Reason {
    NotLeader,
    WrongRegion,
    Dropped,
    Stopped,
    Storage,
}

/// The node's handles, registered when the store opens.
pub(crate) struct NodeMetrics {
    rounds: Counter,
    round_duration: Histogram,
    log_write_duration: Histogram,
    log_write_regions: Histogram,
    apply_duration: Histogram,
    apply_entries: Histogram,
    proposals: Counter,
    failed_not_leader: Counter,
    failed_wrong_region: Counter,
    failed_dropped: Counter,
    failed_stopped: Counter,
    failed_storage: Counter,
    storage_failures: Counter,
    store_recoveries: Counter,
    proposal_duration: Histogram,
    reads: Counter,
    reads_failed: Counter,
    leaders: Gauge,
    regions: Gauge,
    proposals_pending: Gauge,
    reads_pending: Gauge,
}

impl NodeMetrics {
    pub fn new() -> Self {
        let failed = |reason: &'static str| counter!(PROPOSALS_FAILED_TOTAL, "reason" => reason);
        NodeMetrics {
            rounds: counter!(ROUNDS_TOTAL),
            round_duration: histogram!(ROUND_DURATION_SECONDS),
            log_write_duration: histogram!(LOG_WRITE_DURATION_SECONDS),
            log_write_regions: histogram!(LOG_WRITE_REGIONS),
            apply_duration: histogram!(APPLY_DURATION_SECONDS),
            apply_entries: histogram!(APPLY_ENTRIES),
            proposals: counter!(PROPOSALS_TOTAL),
            failed_not_leader: failed("not_leader"),
            failed_wrong_region: failed("wrong_region"),
            failed_dropped: failed("dropped"),
            failed_stopped: failed("stopped"),
            failed_storage: failed("storage"),
            storage_failures: counter!(STORAGE_FAILURES_TOTAL),
            store_recoveries: counter!(STORE_RECOVERIES_TOTAL),
            proposal_duration: histogram!(PROPOSAL_DURATION_SECONDS),
            reads: counter!(READS_TOTAL),
            reads_failed: counter!(READS_FAILED_TOTAL),
            leaders: gauge!(LEADERS),
            regions: gauge!(REGIONS),
            proposals_pending: gauge!(PROPOSALS_PENDING),
            reads_pending: gauge!(READS_PENDING),
        }
    }

    /// One round of the loop ended; it started at `started`.
    pub fn round_done(&self, started: Instant) {
        self.rounds.increment(1);
        self.round_duration.record(started.elapsed().as_secs_f64());
    }

    /// A round's write of `regions` regions to the log was reaped `took` after its hand-off.
    pub fn log_written(&self, took: Duration, regions: usize) {
        self.log_write_duration.record(took.as_secs_f64());
        self.log_write_regions.record(regions as f64);
    }

    /// A round applied `entries` committed entries in `took`.
    pub fn applied(&self, took: Duration, entries: u64) {
        self.apply_duration.record(took.as_secs_f64());
        self.apply_entries.record(entries as f64);
    }

    /// The store received a write request.
    pub fn proposal_received(&self) {
        self.proposals.increment(1);
    }

    /// `n` write requests were answered with `err`.
    pub fn proposals_failed(&self, err: &NodeError, n: u64) {
        if n == 0 {
            return;
        }
        let c = match failure_reason(err) {
            Reason::NotLeader => &self.failed_not_leader,
            Reason::WrongRegion => &self.failed_wrong_region,
            Reason::Dropped => &self.failed_dropped,
            Reason::Stopped => &self.failed_stopped,
            Reason::Storage => &self.failed_storage,
        };
        c.increment(n);
    }

    /// The storage failed; the store drops its engine and starts reopening it.
    pub fn storage_failed(&self) {
        self.storage_failures.increment(1);
    }

    /// The store reopened its engine after a storage failure.
    pub fn store_recovered(&self) {
        self.store_recoveries.increment(1);
    }

    /// `n` reads were answered with data.
    pub fn reads_served(&self, n: u64) {
        if n > 0 {
            self.reads.increment(n);
        }
    }

    /// `n` reads were answered with an error.
    pub fn reads_failed(&self, n: u64) {
        if n > 0 {
            self.reads_failed.increment(n);
        }
    }

    /// Sets the node's gauges (called once per tick).
    pub fn sample(&self, sample: &NodeSample) {
        self.leaders.set(sample.leaders as f64);
        self.regions.set(sample.regions as f64);
        self.proposals_pending.set(sample.proposals_pending as f64);
        self.reads_pending.set(sample.reads_pending as f64);
    }

    /// Records the latencies gathered in `latencies` as of `now`, and empties it.
    pub fn proposals_answered(&self, latencies: &mut ProposalLatencies, now: Instant) {
        for (proposed_at, n) in latencies.runs.drain(..) {
            self.proposal_duration
                .record_many(now.saturating_duration_since(proposed_at).as_secs_f64(), n);
        }
    }
}

/// The node-wide values behind the gauges, summed over the replicas.
#[derive(Debug, Default)]
pub(crate) struct NodeSample {
    pub leaders: usize,
    pub regions: usize,
    pub proposals_pending: usize,
    pub reads_pending: usize,
}

/// The receive times of a round's answered writes, as runs of equal times: writes
/// received in one round share that round's start time, so a round's answers make a few
/// runs and the histogram is touched once per run, not once per write.
#[derive(Default)]
pub(crate) struct ProposalLatencies {
    runs: Vec<(Instant, usize)>,
}

impl ProposalLatencies {
    /// Adds one answered write received at `proposed_at`.
    pub fn push(&mut self, proposed_at: Instant) {
        match self.runs.last_mut() {
            Some((t, n)) if *t == proposed_at => *n += 1,
            _ => self.runs.push((proposed_at, 1)),
        }
    }
}

/// A region's handles, registered when its replica is created on this node.
pub(crate) struct RegionMetrics {
    proposals: Counter,
    committed: Counter,
    applied: Counter,
    leader: Gauge,
    term: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
}

impl RegionMetrics {
    pub fn new(region_id: u64) -> Self {
        let r = region_id.to_string();
        RegionMetrics {
            proposals: counter!(REGION_PROPOSALS_TOTAL, "region" => r.clone()),
            committed: counter!(REGION_ENTRIES_COMMITTED_TOTAL, "region" => r.clone()),
            applied: counter!(REGION_COMMANDS_APPLIED_TOTAL, "region" => r.clone()),
            leader: gauge!(REGION_LEADER, "region" => r.clone()),
            term: gauge!(REGION_TERM, "region" => r.clone()),
            commit_index: gauge!(REGION_COMMIT_INDEX, "region" => r.clone()),
            applied_index: gauge!(REGION_APPLIED_INDEX, "region" => r),
        }
    }

    /// The replica appended `n` commands to its log.
    pub fn proposed(&self, n: u64) {
        self.proposals.increment(n);
    }

    /// A Ready handed over `committed` committed entries, of which `commands` were client
    /// commands the state machine executed.
    pub fn applied(&self, committed: u64, commands: u64) {
        if committed > 0 {
            self.committed.increment(committed);
        }
        if commands > 0 {
            self.applied.increment(commands);
        }
    }

    /// Sets the region's gauges (called once per tick).
    pub fn sample(&self, leader: bool, term: u64, commit: u64, applied: u64) {
        self.leader.set(if leader { 1.0 } else { 0.0 });
        self.term.set(term as f64);
        self.commit_index.set(commit as f64);
        self.applied_index.set(applied as f64);
    }
}
