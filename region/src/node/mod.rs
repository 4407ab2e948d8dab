//! The node: every region replica of one process, on one engine and one transport.
//!
//! [`Store`] runs the replicas (one loop; see its module docs for a round's steps);
//! [`NodeHandle`] is how request handlers reach it: it routes a key to its region and
//! waits for the answer with a timeout.

mod command;
mod descriptor;
mod error;
pub mod metrics;
mod peer;
mod peer_storage;
mod runner;
mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam::channel::Sender;
use tokio::sync::oneshot;

pub use command::{KvCommand, KvResponse, PutCondition};
pub use descriptor::{even_boundaries, PeerMeta, PeerRole, RegionDescriptor, RegionEpoch};
pub use error::NodeError;
pub use peer::Reply;
pub use peer_storage::{PeerStorage, RegionSnapshotData, SNAPSHOT_DATA_BYTES_MAX};
pub use runner::{Node, NodeConfig};
pub use store::{
    bootstrap, bootstrap_peer_id, RegionMap, RegionRoute, RegionStatus, Store, StoreConfig,
    StoreMsg, PEER_ID_NODE_SPAN, ROUND_INPUTS_MAX,
};

/// The request side of a node's store.
#[derive(Clone)]
pub struct NodeHandle {
    node_id: u64,
    tx: Sender<StoreMsg>,
    regions: Arc<RegionMap>,
    timeout: Duration,
}

impl NodeHandle {
    /// A handle on the store behind `tx`; every call gives up after `timeout`.
    pub fn new(
        node_id: u64,
        tx: Sender<StoreMsg>,
        regions: Arc<RegionMap>,
        timeout: Duration,
    ) -> Self {
        NodeHandle {
            node_id,
            tx,
            regions,
            timeout,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The routing table.
    pub fn regions(&self) -> &RegionMap {
        &self.regions
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> StoreMsg) -> Result<T, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| match e {
            crossbeam::channel::TrySendError::Full(_) => {
                NodeError::Dropped("node is overloaded".into())
            }
            crossbeam::channel::TrySendError::Disconnected(_) => NodeError::Stopped,
        })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    fn region_of(&self, key: &[u8]) -> Result<u64, NodeError> {
        self.regions
            .route(key)
            .map(|r| r.id)
            .ok_or(NodeError::RegionNotFound)
    }

    /// Applies a write through the log of the region holding its first key. `session`
    /// is the client's (id, sequence): a retry with the same pair is applied once.
    pub async fn write(
        &self,
        cmd: KvCommand,
        session: (u64, u64),
    ) -> Result<KvResponse, NodeError> {
        let key = cmd
            .keys()
            .first()
            .map(|k| Bytes::copy_from_slice(k))
            .unwrap_or_default();
        let region_id = self.region_of(&key)?;
        self.call(|reply| StoreMsg::Propose {
            region_id,
            session,
            cmd,
            reply,
        })
        .await
    }

    /// Reads a key linearizably.
    pub async fn get(&self, key: Bytes) -> Result<Option<Bytes>, NodeError> {
        let region_id = self.region_of(&key)?;
        self.call(|reply| StoreMsg::Get {
            region_id,
            key,
            reply,
        })
        .await
    }

    /// Reads up to `limit` pairs from `start` to `end` (empty: the region's end) within
    /// the region holding `start`.
    pub async fn scan(
        &self,
        start: Bytes,
        end: Bytes,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, NodeError> {
        let region_id = self.region_of(&start)?;
        self.call(|reply| StoreMsg::Scan {
            region_id,
            start,
            end,
            limit,
            reply,
        })
        .await
    }

    /// Asks the region's leader (on this node) to hand leadership to `to_node`.
    pub async fn transfer_leader(&self, region_id: u64, to_node: u64) -> Result<(), NodeError> {
        self.call(|reply| StoreMsg::TransferLeader {
            region_id,
            to_node,
            reply,
        })
        .await
    }

    /// Every replica's state on this node.
    pub async fn status(&self) -> Result<Vec<RegionStatus>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(StoreMsg::Status { reply })
            .map_err(|_| NodeError::Stopped)?;
        tokio::time::timeout(self.timeout, rx)
            .await
            .map_err(|_| NodeError::Timeout)?
            .map_err(|_| NodeError::Stopped)
    }
}
