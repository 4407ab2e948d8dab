//! The raft core's [`Storage`] for one region, on the node's engine: entries and hard
//! state from the shared raft log, membership and snapshots from the key-value store.

use std::sync::Arc;

use bytes::Bytes;
use flotilla_common::{codec, ConfState, Entry, Snapshot, SnapshotMetadata};
use flotilla_engine::{EngineError, KeyRange, KvStore, RaftLog, SnapshotChunk, SnapshotHeader};
use serde::{Deserialize, Serialize};

use super::descriptor::RegionDescriptor;
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

fn storage_error(e: EngineError) -> StorageError {
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
}

impl PeerStorage {
    /// The storage of `region_id`.
    pub fn new(region_id: u64, log: Arc<dyn RaftLog>, kv: Arc<KvStore>) -> Self {
        PeerStorage { region_id, log, kv }
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

    /// Builds the region's snapshot from the key-value store at its applied index.
    pub fn build_snapshot(&self) -> Result<Snapshot, StorageError> {
        let desc = self.descriptor()?.ok_or_else(|| {
            StorageError::Other(format!("region {} has no descriptor", self.region_id))
        })?;
        let range = KeyRange::new(desc.start_key.clone(), desc.end_key.clone());
        let stream = self
            .kv
            .snapshot_region(self.region_id, range)
            .map_err(storage_error)?;
        let header = stream.header().clone();
        let mut chunks = Vec::new();
        let mut bytes = 0usize;
        for chunk in stream {
            let chunk = chunk.map_err(storage_error)?;
            bytes += chunk
                .pairs
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
            if bytes > SNAPSHOT_DATA_BYTES_MAX {
                return Err(StorageError::Other(format!(
                    "region {} is over {SNAPSHOT_DATA_BYTES_MAX} bytes: split it before snapshotting",
                    self.region_id
                )));
            }
            chunks.push(chunk);
        }
        let index = header.applied_index;
        let term = self
            .log
            .term(self.region_id, index)
            .map_err(storage_error)?;
        let conf_state = match &header.descriptor {
            Some(d) => RegionDescriptor::decode(d)
                .map_err(|e| StorageError::Other(e.to_string()))?
                .conf_state(),
            None => desc.conf_state(),
        };
        let data = codec::encode(&RegionSnapshotData { header, chunks })
            .map_err(|e| StorageError::Other(e.to_string()))?;
        Ok(Snapshot {
            metadata: SnapshotMetadata {
                index,
                term,
                conf_state,
            },
            data: Bytes::from(data),
        })
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

    fn snapshot(&self, _request_index: u64) -> Result<Snapshot, StorageError> {
        self.build_snapshot()
    }
}
