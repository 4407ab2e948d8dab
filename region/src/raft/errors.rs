//! Expected failures of the raft core: the caller can act on each of them.
//!
//! Programmer errors (a broken invariant) are assertions and stop the process; everything a
//! peer, a client or the storage can cause is one of these values.

/// Why a storage read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The requested index is below the first index: it was compacted away.
    #[error("log compacted: index is below the first available entry")]
    Compacted,
    /// The requested index is past the last entry.
    #[error("log unavailable: index is past the last entry")]
    Unavailable,
    /// A snapshot is being generated; ask again later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// The requested snapshot is older than the one already stored.
    #[error("snapshot out of date")]
    SnapshotOutOfDate,
    /// Any other storage failure (I/O, corruption), with its description.
    #[error("storage failure: {0}")]
    Other(String),
}

/// Why the raft core refused an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A proposal was made on a peer that is not the leader.
    #[error("not leader (leader hint: {leader_hint})")]
    NotLeader {
        /// The leader this peer knows of, 0 if none.
        leader_hint: u64,
    },
    /// The proposal was dropped; the reason says why (transfer in progress, too large, …).
    #[error("proposal dropped: {0}")]
    ProposalDropped(&'static str),
    /// A membership change is already pending or the change is not valid now.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
    /// A message came from or was addressed to a peer this group does not know.
    #[error("peer {0} is not a member of this group")]
    UnknownPeer(u64),
    /// The message was malformed or does not fit this peer's state.
    #[error("message rejected: {0}")]
    InvalidMessage(String),
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StorageError),
}

/// Results of the raft core.
pub type Result<T> = std::result::Result<T, Error>;
