//! Flotilla's storage engine: one batched write-ahead log shared by all regions of a node,
//! and the key-value state machine on RocksDB (see docs/architecture.md).
//!
//! - [`RaftLog`] is the raft log of every region of a node, with two implementations:
//!   [`Wal`] (segment files, group commit) and [`RocksLog`] (a RocksDB column family).
//! - [`KvStore`] is the state machine: user data and per-region metadata, written one apply
//!   round at a time, with region snapshots.
//! - The log can only be compacted with a [`CompactPermit`] from the [`KvStore`], which
//!   proves the state machine holds the compacted entries durably.
#![deny(missing_docs)]

mod commit;
mod config;
mod error;
mod index;
mod kv;
mod log;
mod rocks_log;
mod snapshot;
mod wal;

pub use config::{EngineConfig, LogBackend, RocksConfig, WalConfig};
pub use error::{EngineError, Result};
pub use kv::{ApplyRound, KeyRange, KvStore};
pub use log::{
    CompactPermit, DurableMark, HeldBy, LogBatch, LogStats, LogStatsSnapshot, PurgeReport, RaftLog,
    RegionBatch, SnapshotMark, WriteReport, WriteTicket,
};
pub use rocks_log::RocksLog;
pub use snapshot::{SnapshotChunk, SnapshotHeader, SnapshotStream, SNAPSHOT_CHUNK_BYTES_MAX};
pub use wal::{FileSystem, LogFile, StdFileSystem, Wal, SUBMISSION_BYTES_MAX};

use std::path::Path;

/// Opens the raft log a node's config asks for under its data directory: the WAL in
/// `<data>/raft`, or the RocksDB log in `<data>/raftdb`.
pub fn open_log(data_dir: impl AsRef<Path>, config: &EngineConfig) -> Result<Box<dyn RaftLog>> {
    let data_dir = data_dir.as_ref();
    Ok(match config.log_backend {
        LogBackend::Wal => Box::new(Wal::open(data_dir.join("raft"), &config.wal)?),
        LogBackend::Rocksdb => Box::new(RocksLog::open(
            data_dir.join("raftdb"),
            &config.rocksdb,
            &config.wal,
        )?),
    })
}
