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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam::channel::Sender;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use command::{KvCommand, KvResponse, PutCondition};
pub use descriptor::{even_boundaries, PeerMeta, PeerRole, RegionDescriptor, RegionEpoch};
pub use error::NodeError;
pub use peer::Reply;
pub use peer_storage::{PeerStorage, RegionSnapshotData, SNAPSHOT_DATA_BYTES_MAX};
pub use runner::{Node, NodeConfig};
pub use store::{
    bootstrap, bootstrap_peer_id, RegionMap, RegionRoute, RegionStatus, Store, StoreConfig,
    StoreMsg, FORWARD_WAIT_ELECTIONS, PEER_ID_NODE_SPAN, ROUND_INPUTS_MAX,
};

/// First pause before a request that found no leader (or was dropped) is sent again.
pub const RETRY_PAUSE_MIN: Duration = Duration::from_millis(10);
/// Longest pause between such retries.
pub const RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);

/// Whether sending the same request again, after a pause, may succeed: an election was
/// on, or the proposal was dropped by a leadership change. (A timeout is not: its time is
/// used up.)
fn retryable(e: &NodeError) -> bool {
    matches!(e, NodeError::NotLeader { .. } | NodeError::Dropped(_))
}

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

    /// Sends the request `make` builds until it succeeds, fails for good, or the call's
    /// time is up. A follower forwards writes and read-index requests to its leader, so
    /// this only waits out elections and dropped proposals; writes carry the same session
    /// on every attempt, so a retry never applies twice.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, NodeError>
    where
        F: FnMut(Instant) -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut pause = RETRY_PAUSE_MIN;
        loop {
            match attempt(deadline).await {
                Err(e) if retryable(&e) && Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
                r => return r,
            }
        }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> StoreMsg) -> Result<T, NodeError> {
        self.call_until(Instant::now() + self.timeout, make).await
    }

    async fn call_until<T>(
        &self,
        deadline: Instant,
        make: impl FnOnce(Reply<T>) -> StoreMsg,
    ) -> Result<T, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| match e {
            crossbeam::channel::TrySendError::Full(_) => {
                NodeError::Dropped("node is overloaded".into())
            }
            crossbeam::channel::TrySendError::Disconnected(_) => NodeError::Stopped,
        })?;
        match tokio::time::timeout_at(deadline, rx).await {
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

    /// Applies a write through the log of the region holding its first key, on any node
    /// with a replica of it (a follower forwards it to the leader). `session` is the
    /// client's (id, sequence): a retry with the same pair is applied once.
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
        self.retrying(|deadline| {
            let cmd = cmd.clone();
            let region = self.region_of(&key);
            async move {
                let region_id = region?;
                self.call_until(deadline, |reply| StoreMsg::Propose {
                    region_id,
                    session,
                    cmd,
                    reply,
                })
                .await
            }
        })
        .await
    }

    /// Reads a key linearizably (a follower confirms the read index with its leader and
    /// reads its own state machine).
    pub async fn get(&self, key: Bytes) -> Result<Option<Bytes>, NodeError> {
        self.retrying(|deadline| {
            let key = key.clone();
            let region = self.region_of(&key);
            async move {
                let region_id = region?;
                self.call_until(deadline, |reply| StoreMsg::Get {
                    region_id,
                    key,
                    reply,
                })
                .await
            }
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
        self.retrying(|deadline| {
            let (start, end) = (start.clone(), end.clone());
            let region = self.region_of(&start);
            async move {
                let region_id = region?;
                self.call_until(deadline, |reply| StoreMsg::Scan {
                    region_id,
                    start,
                    end,
                    limit,
                    reply,
                })
                .await
            }
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
