//! The raft log's interface: what a region may write in one batch, what it may read back,
//! and the trait both log implementations ([`crate::Wal`] and [`crate::RocksLog`]) provide.
//!
//! The calling order for one region, as the raft core's ready loop drives it:
//! 1. build a [`RegionBatch`] from a ready (new entries, hard state) and [`RaftLog::submit`]
//!    it — batches of many regions are written together by one writer thread;
//! 2. [`WriteTicket::wait`] (or poll [`WriteTicket::try_wait`]) until the log reports what is
//!    durable, then send the messages that depend on it;
//! 3. apply committed entries to the key-value store ([`crate::KvStore::apply`]);
//! 4. later, compact the log with a [`CompactPermit`] from [`crate::KvStore::compaction_permit`],
//!    and call [`RaftLog::purge`] to delete what nothing needs any more.

use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_common::{Entry, HardState};
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{Receiver, TryRecvError};

use crate::error::{EngineError, Result};

/// The position a region's log restarts after: the index and term of the last entry that was
/// compacted away or covered by an installed snapshot. A fresh region has `(0, 0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotMark {
    /// The last index the snapshot (or compaction) covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
}

/// Proof that the key-value store durably holds a region's applied index: the only way to
/// drop raft log entries. Made by [`crate::KvStore::compaction_permit`], which flushes and
/// syncs RocksDB's WAL first when needed, so a crash can never leave the log compacted past
/// what the state machine holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactPermit {
    region_id: u64,
    durable_applied: u64,
}

impl CompactPermit {
    /// Only the key-value store makes permits, after checking durability.
    pub(crate) fn new(region_id: u64, durable_applied: u64) -> Self {
        CompactPermit {
            region_id,
            durable_applied,
        }
    }

    /// The region the permit is for.
    pub fn region_id(&self) -> u64 {
        self.region_id
    }

    /// The applied index the key-value store holds durably: the log may drop entries up to
    /// (and including) this index, so compaction may go to `durable_applied` at most.
    pub fn durable_applied(&self) -> u64 {
        self.durable_applied
    }
}

/// One region's part of a write. Its pieces take effect in this order: the snapshot mark,
/// then the entries, then the hard state, then the compaction.
#[derive(Debug, Clone, Default)]
pub struct RegionBatch {
    /// The region written.
    pub region_id: u64,
    /// A snapshot was installed at this position: the log restarts empty after it
    /// (`first_index = index + 1`, `term(index)` known). Needs `permit` with
    /// `durable_applied >= index`.
    pub snapshot: Option<SnapshotMark>,
    /// Entries to append, contiguous and in index order. The first one's index `i` must lie
    /// in `first_index..=last_index + 1`; the region's entries `>= i` (an uncommitted suffix
    /// that a new leader overwrote) are truncated first.
    pub entries: Vec<Entry>,
    /// A new hard state (term, vote, commit).
    pub hard_state: Option<HardState>,
    /// Drop the entries before this index (`first_index` becomes `compact_to`). Needs
    /// `permit` with `durable_applied >= compact_to`. A mark at or below the first index does
    /// nothing.
    pub compact_to: Option<u64>,
    /// Proof of durability that `snapshot` and `compact_to` need.
    pub permit: Option<CompactPermit>,
}

impl RegionBatch {
    /// An empty batch for `region_id`.
    pub fn new(region_id: u64) -> Self {
        RegionBatch {
            region_id,
            ..Default::default()
        }
    }

    /// Sets the entries to append.
    pub fn with_entries(mut self, entries: Vec<Entry>) -> Self {
        self.entries = entries;
        self
    }

    /// Sets the hard state.
    pub fn with_hard_state(mut self, hard_state: HardState) -> Self {
        self.hard_state = Some(hard_state);
        self
    }

    /// Compacts the log to `compact_to` under `permit`.
    pub fn with_compaction(mut self, compact_to: u64, permit: CompactPermit) -> Self {
        self.compact_to = Some(compact_to);
        self.permit = Some(permit);
        self
    }

    /// Restarts the log after an installed snapshot at `mark`, under `permit`.
    pub fn with_snapshot(mut self, mark: SnapshotMark, permit: CompactPermit) -> Self {
        self.snapshot = Some(mark);
        self.permit = Some(permit);
        self
    }

    /// The bytes the batch counts for in queue limits.
    pub(crate) fn size_bytes(&self) -> u64 {
        64 + self.entries.iter().map(Entry::size_bytes).sum::<u64>()
    }

    /// Checks what can be checked without the log's state: contiguous entries and permits
    /// that cover the marks.
    pub(crate) fn check_shape(&self) -> Result<()> {
        let invalid = |reason: String| EngineError::InvalidBatch {
            region_id: self.region_id,
            reason,
        };
        for pair in self.entries.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return Err(invalid(format!(
                    "entries not contiguous: {} follows {}",
                    pair[1].index, pair[0].index
                )));
            }
        }
        if let Some(first) = self.entries.first() {
            if first.index == 0 {
                return Err(invalid(
                    "entry index 0 (the first entry has index 1)".into(),
                ));
            }
        }
        let needed = self
            .snapshot
            .map(|s| s.index)
            .into_iter()
            .chain(self.compact_to)
            .max();
        if let Some(needed) = needed {
            match self.permit {
                None => {
                    return Err(invalid(
                        "a compaction or snapshot mark needs a permit".into(),
                    ))
                }
                Some(p) if p.region_id != self.region_id => {
                    return Err(invalid(format!("permit is for region {}", p.region_id)))
                }
                Some(p) if p.durable_applied < needed => {
                    return Err(EngineError::CompactionAheadOfApplied {
                        region_id: self.region_id,
                        index: needed,
                        applied: p.durable_applied,
                    })
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// What one submission writes: the parts of one or more regions.
#[derive(Debug, Clone, Default)]
pub struct LogBatch {
    /// The regions' parts, applied in order (a region may appear more than once).
    pub regions: Vec<RegionBatch>,
}

impl LogBatch {
    /// An empty batch.
    pub fn new() -> Self {
        LogBatch::default()
    }

    /// Adds one region's part.
    pub fn push(&mut self, region: RegionBatch) {
        self.regions.push(region);
    }

    /// The number of entries in all parts.
    pub fn entry_count(&self) -> usize {
        self.regions.iter().map(|r| r.entries.len()).sum()
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.regions.iter().map(RegionBatch::size_bytes).sum()
    }
}

impl From<RegionBatch> for LogBatch {
    fn from(region: RegionBatch) -> Self {
        LogBatch {
            regions: vec![region],
        }
    }
}

/// What is durable for one region after a submission: its log's last index and term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableMark {
    /// The region.
    pub region_id: u64,
    /// Its last durable index.
    pub last_index: u64,
    /// The term of that entry.
    pub last_term: u64,
}

/// The answer to a submission once its group was synced: one mark per [`RegionBatch`], in
/// the submission's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteReport {
    /// The durable marks.
    pub durable: Vec<DurableMark>,
}

/// Called by the log's writer thread, once, when a submission's answer is in its
/// [`WriteTicket`] ([`RaftLog::submit_with`]), with whether the batch is durable (false:
/// the ticket holds the error): a submitter that does other work while its batch is
/// written learns of the answer without blocking on the ticket, and may send at once what
/// waited for the batch (a store sends its acknowledgements). It runs on the writer
/// thread, between two group commits, so it must be quick and must not block.
pub type LogWaker = Box<dyn FnOnce(bool) + Send>;

/// A submitted batch on its way to the disk.
#[derive(Debug)]
pub struct WriteTicket {
    pub(crate) rx: Receiver<Result<WriteReport>>,
}

impl WriteTicket {
    /// Blocks until the batch is durable (or failed).
    pub fn wait(self) -> Result<WriteReport> {
        self.rx.recv().map_err(|_| EngineError::Closed)?
    }

    /// The result if the batch's group has been synced, `None` while it is still queued.
    pub fn try_wait(&self) -> Option<Result<WriteReport>> {
        match self.rx.try_recv() {
            Ok(result) => Some(result),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(EngineError::Closed)),
        }
    }
}

/// What a purge did, and what keeps the rest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PurgeReport {
    /// Files deleted (segment files for the WAL; none for the RocksDB log, which deletes at
    /// compaction and leaves space reclaim to RocksDB).
    pub files_deleted: Vec<std::path::PathBuf>,
    /// Bytes those files held.
    pub bytes_freed: u64,
    /// The regions that keep the oldest remaining file alive, with the lowest index each
    /// still holds there: compact these regions to free more space.
    pub held_by: Vec<HeldBy>,
}

/// A region that keeps an old log file alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldBy {
    /// The region.
    pub region_id: u64,
    /// Its first index (it has not compacted past the file's entries).
    pub first_index: u64,
    /// The highest of its entries that the held file contains.
    pub index_in_file: u64,
    /// The sequence number of the held file.
    pub segment: u64,
}

/// Counters of a log's writer, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Group commits done (each is one write and one sync).
    pub syncs: AtomicU64,
    /// Submissions written.
    pub submissions: AtomicU64,
    /// Entries written.
    pub entries: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
}

/// A copy of [`LogStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStatsSnapshot {
    /// Group commits done.
    pub syncs: u64,
    /// Submissions written.
    pub submissions: u64,
    /// Entries written.
    pub entries: u64,
    /// Bytes written.
    pub bytes: u64,
}

impl LogStats {
    /// Reads the counters.
    pub fn snapshot(&self) -> LogStatsSnapshot {
        LogStatsSnapshot {
            syncs: self.syncs.load(Ordering::Relaxed),
            submissions: self.submissions.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn record(&self, submissions: u64, entries: u64, bytes: u64) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.submissions.fetch_add(submissions, Ordering::Relaxed);
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// The raft log of every region of a node. Both implementations pass the same tests.
///
/// Reads of a region that never wrote anything see an empty log: first index 1, last
/// index 0, `term(0) == 0`, default hard state. Reads outside the log return
/// [`EngineError::Compacted`] or [`EngineError::Unavailable`].
pub trait RaftLog: Send + Sync {
    /// Queues a batch for the next group commit. Cheap checks (contiguous entries, permits)
    /// fail here; checks against the log's state fail on the ticket. `wake`, if given, is
    /// called once the ticket holds the answer (also when the batch failed). Accepted
    /// submissions are written, and answered, in the order they were made; one refused by
    /// the checks against the log's state may be answered before those ahead of it.
    fn submit_with(&self, batch: LogBatch, wake: Option<LogWaker>) -> Result<WriteTicket>;

    /// [`RaftLog::submit_with`] without a waker.
    fn submit(&self, batch: LogBatch) -> Result<WriteTicket> {
        self.submit_with(batch, None)
    }

    /// Submits and waits until the batch is durable.
    fn write(&self, batch: LogBatch) -> Result<WriteReport> {
        self.submit(batch)?.wait()
    }

    /// The entries `low..high` of a region, stopping before the total
    /// [`Entry::size_bytes`] passes `max_bytes` (but always at least one entry).
    fn entries(&self, region_id: u64, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>>;

    /// The term of the entry at `index`; `first_index - 1` (the snapshot mark) is known too.
    fn term(&self, region_id: u64, index: u64) -> Result<u64>;

    /// The index of the region's first entry (the snapshot mark's index + 1 when empty).
    fn first_index(&self, region_id: u64) -> u64;

    /// The index of the region's last entry (the snapshot mark's index when empty).
    fn last_index(&self, region_id: u64) -> u64;

    /// The last hard state the region wrote.
    fn hard_state(&self, region_id: u64) -> HardState;

    /// The position before the region's first entry (see [`SnapshotMark`]).
    fn snapshot_mark(&self, region_id: u64) -> SnapshotMark;

    /// Every region with anything in the log (found on recovery or written since).
    fn regions(&self) -> Vec<u64>;

    /// Deletes what no region needs any more and reports what keeps the rest.
    fn purge(&self) -> Result<PurgeReport>;

    /// The writer's counters.
    fn stats(&self) -> LogStatsSnapshot;
}
