//! The engine's errors: the expected failures a caller can act on.

use std::path::PathBuf;

use flotilla_common::codec::CodecError;

/// Everything the engine reports instead of panicking.
///
/// `Compacted` and `Unavailable` are the answers of reads outside a region's log and map
/// one-to-one onto the raft core's storage errors; the others are operating errors (disk,
/// corruption, misuse of the API) that stop the caller's write.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The requested index lies before the region's first index: it was compacted away or
    /// covered by a snapshot.
    #[error("region {region_id}: index {index} is compacted (first index {first_index})")]
    Compacted {
        /// The region read.
        region_id: u64,
        /// The index asked for.
        index: u64,
        /// The region's first index.
        first_index: u64,
    },
    /// The requested index lies after the region's last index.
    #[error("region {region_id}: index {index} is unavailable (last index {last_index})")]
    Unavailable {
        /// The region read.
        region_id: u64,
        /// The index asked for.
        index: u64,
        /// The region's last index.
        last_index: u64,
    },
    /// A batch breaks the log's rules (entries not contiguous, an append before the first
    /// index, a compaction past the end). Nothing of the submission was written.
    #[error("region {region_id}: invalid batch: {reason}")]
    InvalidBatch {
        /// The region whose part of the batch is wrong.
        region_id: u64,
        /// What rule it breaks.
        reason: String,
    },
    /// A compaction was asked for past what the key-value store holds durably.
    #[error(
        "region {region_id}: cannot compact the log below {index}: applied index is {applied}"
    )]
    CompactionAheadOfApplied {
        /// The region.
        region_id: u64,
        /// The first index the compaction would keep.
        index: u64,
        /// The highest applied index the key-value store holds.
        applied: u64,
    },
    /// A record that is not the torn tail of the last segment is bad: the log is corrupt.
    #[error("corrupt log at {}:{offset}: {reason}", file.display())]
    Corruption {
        /// The segment file.
        file: PathBuf,
        /// The byte offset of the bad record in that file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The disk is full (`ENOSPC`, or a quota: `EDQUOT`; `io::ErrorKind::StorageFull` and
    /// `QuotaExceeded`). Nothing of the failed write is
    /// acknowledged; the log that reported it is poisoned (see [`EngineError::Poisoned`]) and
    /// must be reopened once space is back.
    #[error("no space left on device: {context}: {source}")]
    NoSpace {
        /// What the engine was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A value could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A submission is larger than one record may be.
    #[error("batch of {bytes} bytes exceeds the record limit of {limit} bytes")]
    BatchTooLarge {
        /// The encoded size of the submission.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// An earlier write or sync failed; the log refuses further writes because the state of
    /// the file after a failed `fdatasync` is unknown. Reopen to recover.
    #[error("log is poisoned by an earlier failure: {0}")]
    Poisoned(String),
    /// A setting is out of its range.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The log's writer thread has stopped (the log is being closed).
    #[error("log writer has stopped")]
    Closed,
}

impl EngineError {
    /// Wraps an I/O error with what the engine was doing; a full disk becomes
    /// [`EngineError::NoSpace`], so callers can tell it apart without reading messages.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        if is_no_space_io(&source) {
            EngineError::NoSpace { context, source }
        } else {
            EngineError::Io { context, source }
        }
    }

    /// Whether the failure is a full disk: an [`EngineError::NoSpace`], or RocksDB's
    /// `NoSpace` I/O error (rust-rocksdb hands RocksDB's status over as text only, so its
    /// message is what there is to go by; RocksDB writes it as "No space left on device",
    /// the operating system's text for `ENOSPC`, after its own "IO error: No space").
    pub fn is_no_space(&self) -> bool {
        match self {
            EngineError::NoSpace { .. } => true,
            EngineError::Rocks(e) => {
                let text = e.to_string();
                text.contains("No space left on device") || text.contains("IO error: No space")
            }
            _ => false,
        }
    }
}

/// Whether an I/O error says the disk (or the user's quota) is full.
pub(crate) fn is_no_space_io(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.kind() == std::io::ErrorKind::QuotaExceeded
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
