//! The raft core's [`Storage`] for one region, on the node's engine: entries and hard
//! state from the shared raft log, membership and snapshots from the key-value store.

use std::sync::Arc;

use flotilla_common::{ConfState, Entry, Snapshot};
use flotilla_engine::{EngineError, KvStore, RaftLog, SnapshotChunk, SnapshotHeader};
use serde::{Deserialize, Serialize};

use super::descriptor::RegionDescriptor;
use super::snapshot_builder::SnapshotBuilds;
use crate::raft::{RaftState, Storage, StorageError};

/// A region's state-machine image as carried in a raft snapshot's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSnapshotData {
    /// Range, applied index, descriptor and sessions.
    pub header: SnapshotHeader,
    /// The key-value pairs, in key order.
    pub chunks: Vec<SnapshotChunk>,
}

/// Bytes of user data a snapshot carries in one raft message, at most; larger regions
/// must be split first (the transport streams snapshots in chunks under this bound).
pub const SNAPSHOT_DATA_BYTES_MAX: usize = 128 << 20;

pub(crate) fn storage_error(e: EngineError) -> StorageError {
    match e {
        EngineError::Compacted { .. } => StorageError::Compacted,
        EngineError::Unavailable { .. } => StorageError::Unavailable,
        other => StorageError::Other(other.to_string()),
    }
}

/// One region's raft storage on the engine.
#[derive(Clone)]
pub struct PeerStorage {
    region_id: u64,
    log: Arc<dyn RaftLog>,
    kv: Arc<KvStore>,
    builds: SnapshotBuilds,
}

impl PeerStorage {
    /// The storage of `region_id`; its snapshots are built by `builds` (the node's).
    pub fn new(
        region_id: u64,
        log: Arc<dyn RaftLog>,
        kv: Arc<KvStore>,
        builds: SnapshotBuilds,
    ) -> Self {
        PeerStorage {
            region_id,
            log,
            kv,
            builds,
        }
    }

    /// The region's descriptor as of its applied index.
    pub fn descriptor(&self) -> Result<Option<RegionDescriptor>, StorageError> {
        let Some(bytes) = self.kv.descriptor(self.region_id).map_err(storage_error)? else {
            return Ok(None);
        };
        RegionDescriptor::decode(&bytes)
            .map(Some)
            .map_err(|e| StorageError::Other(format!("region {} descriptor: {e}", self.region_id)))
    }
}

impl Storage for PeerStorage {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        let conf_state = self
            .descriptor()?
            .map(|d| d.conf_state())
            .unwrap_or_else(ConfState::default);
        Ok(RaftState {
            hard_state: self.log.hard_state(self.region_id),
            conf_state,
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        self.log
            .entries(self.region_id, low, high, max_size_bytes)
            .map_err(storage_error)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.log.term(self.region_id, index).map_err(storage_error)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.log.first_index(self.region_id))
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.log.last_index(self.region_id))
    }

    /// Never builds on the caller's thread: see [`SnapshotBuilds::take`].
    fn snapshot(&self, request_index: u64) -> Result<Snapshot, StorageError> {
        self.builds
            .take(self.region_id, request_index, &self.log, &self.kv)
    }
}
