//! Flotilla's storage engine: one batched write-ahead log shared by all regions of a node,
//! and the key-value state machine on RocksDB (see docs/architecture.md).
//!
//! - [`RaftLog`] is the raft log of every region of a node, with two implementations:
//!   [`Wal`] (segment files, group commit) and [`RocksLog`] (a RocksDB column family).
//! - [`KvStore`] is the state machine: user data and per-region metadata, written one apply
//!   round at a time, with region snapshots.
//! - The log can only be compacted with a [`CompactPermit`] from the [`KvStore`], which
//!   proves the state machine holds the compacted entries durably.
//!
//! One region's loop against the engine (see docs/architecture.md, "Engine"):
//!
//! ```
//! use flotilla_common::{Entry, EntryKind, HardState};
//! use flotilla_engine::{ApplyRound, KvStore, RaftLog, RegionBatch, RocksConfig, Wal, WalConfig};
//!
//! # fn main() -> flotilla_engine::Result<()> {
//! let data = tempfile::tempdir().expect("temp dir");
//! let log = Wal::open(data.path().join("raft"), &WalConfig::default())?;
//! let kv = KvStore::open(data.path().join("kv"), &RocksConfig::default())?;
//! let region = 1;
//!
//! // 1. Persist a ready's entries and hard state; many regions' batches share one fsync.
//! let entries: Vec<Entry> = (1..=3).map(|i| Entry::new(EntryKind::Normal, 1, i, vec![i as u8])).collect();
//! let ticket = log.submit(
//!     RegionBatch::new(region).with_entries(entries).with_hard_state(HardState { term: 1, vote: 1, commit: 3 }).into(),
//! )?;
//! // 2. Once durable, the messages that depend on it may go out.
//! let report = ticket.wait()?;
//! assert_eq!(report.durable[0].last_index, 3);
//!
//! // 3. Apply committed entries: data and applied index in one WriteBatch.
//! let mut round = ApplyRound::new();
//! for e in log.entries(region, 1, 4, u64::MAX)? {
//!     round.put(region, format!("key{}", e.index), e.data);
//! }
//! round.set_applied(region, 3);
//! kv.apply(round)?;
//!
//! // 4. Compact: the permit syncs RocksDB first, so the log never drops unapplied entries.
//! let permit = kv.compaction_permit(region, 3)?;
//! log.write(RegionBatch::new(region).with_compaction(3, permit).into())?;
//! assert_eq!(log.first_index(region), 3);
//! assert_eq!(log.term(region, 2)?, 1);
//! let report = log.purge()?;
//! assert!(report.held_by.is_empty());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod commit;
mod config;
mod error;
mod index;
mod kv;
mod log;
pub mod metrics;
mod rocks_log;
mod sessions;
mod snapshot;
mod wal;

pub use config::{EngineConfig, LogBackend, RocksConfig, RocksLogLevel, WalConfig};
pub use error::{EngineError, Result};
pub use kv::{ApplyRound, KeyRange, KvStore};
pub use log::{
    CompactPermit, DurableMark, HeldBy, LogBatch, LogStats, LogStatsSnapshot, LogWaker,
    PurgeReport, RaftLog, RegionBatch, SnapshotMark, WriteReport, WriteTicket,
};
pub use rocks_log::RocksLog;
pub use snapshot::{SnapshotChunk, SnapshotHeader, SnapshotStream, SNAPSHOT_CHUNK_BYTES_MAX};
pub use wal::{
    DiskFaults, FaultyFileSystem, FileSystem, LogFile, StdFileSystem, Wal, SUBMISSION_BYTES_MAX,
};

use std::path::Path;
use std::sync::Arc;

/// Opens the raft log a node's config asks for under its data directory: the WAL in
/// `<data>/raft`, or the RocksDB log in `<data>/raftdb`.
pub fn open_log(data_dir: impl AsRef<Path>, config: &EngineConfig) -> Result<Box<dyn RaftLog>> {
    open_log_with_fs(data_dir, config, Arc::new(StdFileSystem))
}

/// [`open_log`] with the WAL's I/O going through `fs` (tests inject disk faults with it);
/// the RocksDB backend does its own I/O and ignores `fs`.
pub fn open_log_with_fs(
    data_dir: impl AsRef<Path>,
    config: &EngineConfig,
    fs: Arc<dyn FileSystem>,
) -> Result<Box<dyn RaftLog>> {
    let data_dir = data_dir.as_ref();
    Ok(match config.log_backend {
        LogBackend::Wal => Box::new(Wal::open_with_fs(data_dir.join("raft"), &config.wal, fs)?),
        LogBackend::Rocksdb => Box::new(RocksLog::open(
            data_dir.join("raftdb"),
            &config.rocksdb,
            &config.wal,
        )?),
    })
}
