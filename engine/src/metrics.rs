//! What the raft log's writer thread records through the `metrics` crate (exported by
//! whatever recorder the process installs, e.g. Prometheus on the status server's
//! `/metrics`).
//!
//! Everything is recorded once per group commit (one write and one sync), never per entry,
//! so that recording costs nothing next to the `fdatasync` it describes. Every series has
//! the label `backend`: `wal` for [`Wal`](crate::Wal), `rocksdb` for
//! [`RocksLog`](crate::RocksLog). The handles are registered when the log opens: a
//! recorder installed after that never sees this log's samples.

use std::time::Duration;

use metrics::{counter, histogram, Counter, Histogram};

/// Counter: group commits written and synced (for the WAL, one `fdatasync` each; for
/// RocksDB, one synced WriteBatch each).
pub const LOG_SYNCS_TOTAL: &str = "flotilla_raft_log_syncs_total";
/// Counter: group commits whose write or sync failed (the log refuses writes afterwards).
pub const LOG_SYNC_FAILURES_TOTAL: &str = "flotilla_raft_log_sync_failures_total";
/// Histogram: seconds one group commit spent in its write and sync (the disk's part of a
/// write's latency; queueing before the writer thread is not included).
pub const LOG_SYNC_DURATION_SECONDS: &str = "flotilla_raft_log_sync_duration_seconds";
/// Histogram: raft entries written per sync (how well group commit batches).
pub const LOG_SYNC_ENTRIES: &str = "flotilla_raft_log_sync_entries";
/// Histogram: bytes written per sync (record headers and hard states included).
pub const LOG_SYNC_BYTES: &str = "flotilla_raft_log_sync_bytes";
/// Histogram: submitted batches per sync (how many writers one sync served; a node's
/// store submits one batch per round holding every region).
pub const LOG_SYNC_SUBMISSIONS: &str = "flotilla_raft_log_sync_submissions";

/// The writer thread's handles, registered once when the log opens.
pub(crate) struct SyncMetrics {
    syncs: Counter,
    failures: Counter,
    duration: Histogram,
    entries: Histogram,
    bytes: Histogram,
    submissions: Histogram,
}

impl SyncMetrics {
    /// Registers the handles of one log; `backend` names its implementation.
    pub fn new(backend: &'static str) -> Self {
        SyncMetrics {
            syncs: counter!(LOG_SYNCS_TOTAL, "backend" => backend),
            failures: counter!(LOG_SYNC_FAILURES_TOTAL, "backend" => backend),
            duration: histogram!(LOG_SYNC_DURATION_SECONDS, "backend" => backend),
            entries: histogram!(LOG_SYNC_ENTRIES, "backend" => backend),
            bytes: histogram!(LOG_SYNC_BYTES, "backend" => backend),
            submissions: histogram!(LOG_SYNC_SUBMISSIONS, "backend" => backend),
        }
    }

    /// Records one successful group commit.
    pub fn synced(&self, took: Duration, submissions: u64, entries: u64, bytes: u64) {
        self.syncs.increment(1);
        self.duration.record(took.as_secs_f64());
        self.submissions.record(submissions as f64);
        self.entries.record(entries as f64);
        self.bytes.record(bytes as f64);
    }

    /// Records a group commit whose write or sync failed.
    pub fn failed(&self) {
        self.failures.increment(1);
    }
}
