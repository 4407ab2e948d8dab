//! What a client request to a node can run into.

use serde::{Deserialize, Serialize};

use super::store::RegionRoute;

/// Why a node could not serve a request. Each is something the client can act on. It
/// travels between nodes as the answer to a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    /// This node's replica is not the leader; `leader_node` is where it is, if known.
    #[error("region {region_id}: not leader (leader on node {leader_node:?})")]
    NotLeader {
        /// The region.
        region_id: u64,
        /// The node hosting the leader, if known.
        leader_node: Option<u64>,
    },
    /// No region on this node holds the key (or the region id is unknown here).
    #[error("no region here for the request")]
    RegionNotFound,
    /// The request was routed with an outdated view of its region (see
    /// [`ExpectedRoute`](super::ExpectedRoute)): the region holding its keys here is
    /// another one, or has another epoch. Nothing was proposed.
    #[error("region {region_id}: epoch changed (now {} region(s) there)", current.len())]
    EpochNotMatch {
        /// The region the request was routed to.
        region_id: u64,
        /// The regions on this node, as they are now, that overlap the range the sender
        /// knew (at least the region now holding the request's first key), in key order.
        current: Vec<RegionRoute>,
    },
    /// A key of the command lies outside the region.
    #[error("key outside region {0}")]
    KeyNotInRegion(u64),
    /// The proposal was dropped (leadership lost, transfer in progress, too large); retry.
    #[error("proposal dropped: {0}; retry")]
    Dropped(String),
    /// The request cannot be served as asked (a split key outside the region, a region
    /// too small to split); sending it again will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// The request did not finish in time.
    #[error("timed out")]
    Timeout,
    /// The node is stopping.
    #[error("node is stopping")]
    Stopped,
    /// The storage failed (an I/O error, a log that contradicts itself); the store drops
    /// its engine and reopens it (see [`NodeError::StorageUnavailable`]).
    #[error("storage failure: {0}")]
    Storage(String),
    /// The disk is full (the engine's `NoSpace`): like [`NodeError::Storage`], told apart
    /// so that clients and operators hear what to fix.
    #[error("disk full (No space left on device): {0}")]
    DiskFull(String),
    /// The node's storage failed and the store is reopening it: every replica on this node
    /// is down until the engine opens again (by itself, once the cause is gone — a full
    /// disk freed). A write that got this may still have been applied (its entry may have
    /// reached other replicas first); retry with the same session, here later or through
    /// another node.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
}

/// The node's error for an engine failure: [`NodeError::DiskFull`] for a full disk, else
/// [`NodeError::Storage`].
pub(crate) fn storage_error(e: flotilla_engine::EngineError) -> NodeError {
    if e.is_no_space() {
        NodeError::DiskFull(e.to_string())
    } else {
        NodeError::Storage(e.to_string())
    }
}
