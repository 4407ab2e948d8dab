//! The shared write-ahead log: one append-only log of segment files for every region of a
//! node, written by one group-commit thread, read through an in-memory index.
//!
//! Files: `segment.rs` (segment files, the I/O trait), `faulty.rs` (an I/O trait that
//! injects disk faults, for tests), `record.rs` (framing),
//! `payload.rs` (what records hold), `writer.rs` (group commit), `recovery.rs` (open),
//! `purge.rs` (deleting old segments).

mod faulty;
mod payload;
mod purge;
mod record;
mod recovery;
mod segment;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use flotilla_common::{Entry, EntryKind, HardState};
use parking_lot::{Mutex, RwLock};

use crate::commit::GroupCommitter;
use crate::config::WalConfig;
use crate::error::{EngineError, Result};
use crate::index::{Planned, RegionIndex};
use crate::log::{
    LogBatch, LogStats, LogStatsSnapshot, LogWaker, PurgeReport, RaftLog, SnapshotMark,
    WriteReport, WriteTicket,
};

pub use faulty::{DiskFaults, FaultyFileSystem};
pub use segment::{FileSystem, LogFile, StdFileSystem};

/// The largest encoded submission, in bytes. A record holds a group of at most
/// `batch_bytes_max` plus one submission, and must stay under the record limit that
/// recovery uses to tell a corrupt length from a real one.
pub const SUBMISSION_BYTES_MAX: u64 = 16 << 20;

/// Where an entry lives in the segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalLoc {
    /// The segment's sequence number; [`WalLoc::MISSING`] for an entry that recovery knows
    /// only from a checkpoint (it must be compacted or overwritten before recovery ends).
    pub seq: u64,
    /// The record's offset in the segment.
    pub rec_off: u64,
    /// The record's payload length.
    pub rec_len: u32,
    /// The entry's data offset in the record's payload.
    pub data_off: u32,
    /// The entry's data length.
    pub data_len: u32,
    /// The entry's kind.
    pub kind: EntryKind,
}

impl WalLoc {
    /// The location of an entry whose segment was purged.
    pub const MISSING: WalLoc = WalLoc {
        seq: u64::MAX,
        rec_off: 0,
        rec_len: 0,
        data_off: 0,
        data_len: 0,
        kind: EntryKind::Normal,
    };
}

/// What the WAL keeps about one segment.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentInfo {
    /// The file's size.
    pub bytes: u64,
    /// For each region with entries in the segment, the highest index among them.
    pub holds: HashMap<u64, u64>,
}

/// State shared by the writer thread, readers and purge.
pub(crate) struct WalShared {
    pub dir: PathBuf,
    pub fs: Arc<dyn FileSystem>,
    pub index: RwLock<HashMap<u64, RegionIndex<WalLoc>>>,
    pub segments: Mutex<BTreeMap<u64, SegmentInfo>>,
    pub readers: Mutex<HashMap<u64, Arc<dyn LogFile>>>,
    /// The segment the writer appends to; purge never deletes it.
    pub active_seq: AtomicU64,
    pub stats: LogStats,
    pub cache_bytes_max: u64,
}

/// The encoded form of a submission, made on the submitter's thread.
pub(crate) struct Prepared {
    pub blob: Vec<u8>,
    pub data_starts: Vec<usize>,
}

/// The shared write-ahead log (see the module docs). Closing it (drop) lets the writer
/// finish the queued batches.
pub struct Wal {
    committer: GroupCommitter<writer::WalWriter>,
    shared: Arc<WalShared>,
}

impl Wal {
    /// Opens (or creates) the log whose segments live in `dir` (a node keeps it at
    /// `<data>/raft`), recovering every region's log.
    pub fn open(dir: impl AsRef<Path>, config: &WalConfig) -> Result<Wal> {
        Self::open_with_fs(dir, config, Arc::new(StdFileSystem))
    }

    /// [`Wal::open`] with the I/O going through `fs` (tests inject failures with it).
    pub fn open_with_fs(
        dir: impl AsRef<Path>,
        config: &WalConfig,
        fs: Arc<dyn FileSystem>,
    ) -> Result<Wal> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let recovered = recovery::recover(fs.as_ref(), &dir)?;
        let shared = Arc::new(WalShared {
            dir,
            fs,
            index: RwLock::new(recovered.regions),
            segments: Mutex::new(recovered.segments),
            readers: Mutex::new(HashMap::new()),
            active_seq: AtomicU64::new(recovered.next_seq),
            stats: LogStats::default(),
            cache_bytes_max: config.entry_cache_bytes_per_region_max,
        });
        let writer =
            writer::WalWriter::start(shared.clone(), recovered.next_seq, config.segment_bytes_max)?;
        let committer = GroupCommitter::start("flotilla-wal", writer, config.batch_bytes_max)?;
        Ok(Wal { committer, shared })
    }

    /// The directory of the segment files.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn with_region<T>(&self, region_id: u64, f: impl FnOnce(&RegionIndex<WalLoc>) -> T) -> T {
        let index = self.shared.index.read();
        match index.get(&region_id) {
            Some(region) => f(region),
            None => f(&RegionIndex::default()),
        }
    }

    /// Reads the stored entries of a plan, one record read per record.
    fn fetch(
        &self,
        region_id: u64,
        plan: Vec<Planned<WalLoc>>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(plan.len());
        let mut total = 0u64;
        let mut record: Option<((u64, u64), Vec<u8>)> = None;
        for planned in plan {
            let entry = match planned {
                Planned::Cached(entry) => entry,
                Planned::Stored { index, term, loc } => {
                    let key = (loc.seq, loc.rec_off);
                    if record.as_ref().map(|(k, _)| *k) != Some(key) {
                        record = Some((key, self.read_record(region_id, index, &loc)?));
                    }
                    let payload = record
                        .as_ref()
                        .map(|(_, p)| p.as_slice())
                        .unwrap_or_default();
                    let start = loc.data_off as usize;
                    let data = payload
                        .get(start..start + loc.data_len as usize)
                        .ok_or_else(|| {
                            self.corruption(
                                loc.seq,
                                loc.rec_off,
                                format!("entry {index} lies outside its record"),
                            )
                        })?;
                    Entry {
                        term,
                        index,
                        kind: loc.kind,
                        data: Bytes::copy_from_slice(data),
                    }
                }
            };
            total += entry.size_bytes();
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn corruption(&self, seq: u64, offset: u64, reason: String) -> EngineError {
        EngineError::Corruption {
            file: segment::segment_path(&self.shared.dir, seq),
            offset,
            reason,
        }
    }

    /// Reads and checks the record holding an entry; returns its payload.
    fn read_record(&self, region_id: u64, index: u64, loc: &WalLoc) -> Result<Vec<u8>> {
        if loc.seq == WalLoc::MISSING.seq {
            return Err(EngineError::Compacted {
                region_id,
                index,
                first_index: index + 1,
            });
        }
        let file = {
            let mut readers = self.shared.readers.lock();
            match readers.get(&loc.seq) {
                Some(file) => file.clone(),
                None => {
                    let path = segment::segment_path(&self.shared.dir, loc.seq);
                    match self.shared.fs.open_read(&path) {
                        Ok(file) => {
                            let file: Arc<dyn LogFile> = Arc::from(file);
                            readers.insert(loc.seq, file.clone());
                            file
                        }
                        Err(e) => {
                            drop(readers);
                            // Purged meanwhile: the region compacted past the entry.
                            let first = self.first_index(region_id);
                            if index < first {
                                return Err(EngineError::Compacted {
                                    region_id,
                                    index,
                                    first_index: first,
                                });
                            }
                            return Err(EngineError::io(format!("open {}", path.display()), e));
                        }
                    }
                }
            }
        };
        let mut buf = vec![0; record::RECORD_HEADER_BYTES + loc.rec_len as usize];
        file.read_exact_at(&mut buf, loc.rec_off).map_err(|e| {
            EngineError::io(format!("read segment {} at {}", loc.seq, loc.rec_off), e)
        })?;
        match record::parse(&buf) {
            record::Parsed::Record { payload, .. } => Ok(payload.to_vec()),
            record::Parsed::Incomplete => {
                Err(self.corruption(loc.seq, loc.rec_off, "record cut short".into()))
            }
            record::Parsed::Bad(reason) => Err(self.corruption(loc.seq, loc.rec_off, reason)),
        }
    }
}

/// Checks a batch's shape and encodes it on the submitter's thread; returns the encoding
/// and its size.
fn prepare(batch: &LogBatch) -> Result<(Prepared, u64)> {
    for part in &batch.regions {
        part.check_shape()?;
    }
    let mut blob = Vec::with_capacity(batch.size_bytes() as usize);
    let data_starts = payload::encode_parts(batch, &mut blob)?;
    let bytes = blob.len() as u64;
    if bytes > SUBMISSION_BYTES_MAX {
        return Err(EngineError::BatchTooLarge {
            bytes,
            limit: SUBMISSION_BYTES_MAX,
        });
    }
    Ok((Prepared { blob, data_starts }, bytes))
}

impl RaftLog for Wal {
    fn submit_with(&self, batch: LogBatch, wake: Option<LogWaker>) -> Result<WriteTicket> {
        let (prepared, bytes) = prepare(&batch)?;
        self.committer.submit(batch, prepared, bytes, wake)
    }

    fn write(&self, batch: LogBatch) -> Result<WriteReport> {
        let (prepared, bytes) = prepare(&batch)?;
        self.committer.write(batch, prepared, bytes)
    }

    fn entries(&self, region_id: u64, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        let plan = self.with_region(region_id, |r| r.plan(region_id, low, high))?;
        self.fetch(region_id, plan, max_bytes)
    }

    fn term(&self, region_id: u64, index: u64) -> Result<u64> {
        self.with_region(region_id, |r| r.term(region_id, index))
    }

    fn first_index(&self, region_id: u64) -> u64 {
        self.with_region(region_id, |r| r.first_index())
    }

    fn last_index(&self, region_id: u64) -> u64 {
        self.with_region(region_id, |r| r.last_index())
    }

    fn hard_state(&self, region_id: u64) -> HardState {
        self.with_region(region_id, |r| r.hard_state())
    }

    fn snapshot_mark(&self, region_id: u64) -> SnapshotMark {
        self.with_region(region_id, |r| r.mark())
    }

    fn regions(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.shared.index.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn purge(&self) -> Result<PurgeReport> {
        purge::purge(&self.shared)
    }

    fn stats(&self) -> LogStatsSnapshot {
        self.shared.stats.snapshot()
    }
}

impl WalShared {
    pub(crate) fn active_seq(&self) -> u64 {
        self.active_seq.load(Ordering::Acquire)
    }
}
