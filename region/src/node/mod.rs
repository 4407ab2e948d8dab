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
pub use runner::{Node, NodeConfig, BOOTSTRAP_RECORD};
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

/// Whether an attempt that failed with `e` certainly had no effect: the request was
/// refused before anything was appended (no leader here, the wrong region). Anything else
/// (a dropped proposal, a timeout) may still be applied.
pub fn certainly_not_applied(e: &NodeError) -> bool {
    matches!(
        e,
        NodeError::NotLeader { .. }
            | NodeError::RegionNotFound
            | NodeError::EpochNotMatch { .. }
            | NodeError::KeyNotInRegion(_)
    )
}

/// The error a request answers with after its last attempt failed with `last`. When an
/// earlier attempt may have been applied, a last error that says "not applied" would be a
/// lie (a client retrying on it would apply the write twice), so the outcome is reported
/// as unknown: [`NodeError::Timeout`].
pub fn final_error(last: NodeError, earlier_maybe_applied: bool) -> NodeError {
    if earlier_maybe_applied && certainly_not_applied(&last) {
        NodeError::Timeout
    } else {
        last
    }
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

    /// Puts the request `make` builds in the store's queue now; the answer arrives on the
    /// returned receiver.
    fn try_submit<T, M>(
        &self,
        make: &M,
    ) -> Result<oneshot::Receiver<Result<T, NodeError>>, NodeError>
    where
        M: Fn(&NodeHandle, Reply<T>) -> Result<StoreMsg, NodeError>,
    {
        let (reply, rx) = oneshot::channel();
        let msg = make(self, reply)?;
        self.tx.try_send(msg).map_err(|e| match e {
            crossbeam::channel::TrySendError::Full(_) => {
                NodeError::Dropped("node is overloaded".into())
            }
            crossbeam::channel::TrySendError::Disconnected(_) => NodeError::Stopped,
        })?;
        Ok(rx)
    }

    /// Submits the request `make` builds *now*, so requests reach the store in the order
    /// they were submitted even when their futures are awaited later (a pipelining client
    /// keeps many in flight); the future waits for the answer, and sends the request again
    /// while it is retryable (an election, a dropped proposal, a full queue) until the
    /// call's time is up. Writes carry the same session on every attempt, so a retry never
    /// applies twice.
    fn submit<T, M>(&self, make: M) -> impl Future<Output = Result<T, NodeError>> + Send + 'static
    where
        T: Send + 'static,
        M: Fn(&NodeHandle, Reply<T>) -> Result<StoreMsg, NodeError> + Send + 'static,
    {
        let deadline = Instant::now() + self.timeout;
        let first = self.try_submit(&make);
        let this = self.clone();
        async move {
            let mut pending = first;
            let mut pause = RETRY_PAUSE_MIN;
            let mut maybe_applied = false;
            loop {
                let r = match pending {
                    Ok(rx) => match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(_)) => Err(NodeError::Stopped),
                        Err(_) => Err(NodeError::Timeout),
                    },
                    Err(e) => Err(e),
                };
                match r {
                    Err(e) if retryable(&e) && Instant::now() + pause < deadline => {
                        maybe_applied |= !certainly_not_applied(&e);
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RETRY_PAUSE_MAX);
                        pending = this.try_submit(&make);
                    }
                    Err(e) => return Err(final_error(e, maybe_applied)),
                    r => return r,
                }
            }
        }
    }

    async fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> StoreMsg,
    ) -> Result<T, NodeError> {
        // Not retried (a status request or a transfer is cheap to ask again).
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

    /// Submits a write now (see [`NodeHandle::submit_write`]) and waits for its answer.
    pub async fn write(
        &self,
        cmd: KvCommand,
        session: (u64, u64),
    ) -> Result<KvResponse, NodeError> {
        self.submit_write(cmd, session).await
    }

    /// Submits a write through the log of the region holding its first key, on any node
    /// with a replica of it (a follower forwards it to the leader), and returns the future
    /// of its answer. `session` is the client's (id, sequence): a retry with the same pair
    /// is applied once. Writes submitted one after another reach their region in that order.
    pub fn submit_write(
        &self,
        cmd: KvCommand,
        session: (u64, u64),
    ) -> impl Future<Output = Result<KvResponse, NodeError>> + Send + 'static {
        let key = cmd
            .keys()
            .first()
            .map(|k| Bytes::copy_from_slice(k))
            .unwrap_or_default();
        self.submit(move |h, reply| {
            Ok(StoreMsg::Propose {
                region_id: h.region_of(&key)?,
                session,
                cmd: cmd.clone(),
                reply,
            })
        })
    }

    /// Reads a key linearizably (a follower confirms the read index with its leader and
    /// reads its own state machine).
    pub async fn get(&self, key: Bytes) -> Result<Option<Bytes>, NodeError> {
        self.submit_get(key).await
    }

    /// Submits a linearizable read of `key` now; returns the future of its answer.
    pub fn submit_get(
        &self,
        key: Bytes,
    ) -> impl Future<Output = Result<Option<Bytes>, NodeError>> + Send + 'static {
        self.submit(move |h, reply| {
            Ok(StoreMsg::Get {
                region_id: h.region_of(&key)?,
                key: key.clone(),
                reply,
            })
        })
    }

    /// Reads up to `limit` pairs from `start` to `end` (empty: the region's end) within
    /// the region holding `start`.
    pub async fn scan(
        &self,
        start: Bytes,
        end: Bytes,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, NodeError> {
        self.submit(move |h, reply| {
            Ok(StoreMsg::Scan {
                region_id: h.region_of(&start)?,
                start: start.clone(),
                end: end.clone(),
                limit,
                reply,
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found by the fault-tolerance suite, seed 1): a write whose first attempt
    /// was dropped by a leadership change and whose retry found no leader was answered
    /// "not leader", which says "not applied"; the first attempt's entry then committed.
    #[test]
    fn a_retry_after_an_ambiguous_attempt_never_answers_not_applied() {
        let not_leader = NodeError::NotLeader {
            region_id: 4,
            leader_node: None,
        };
        assert_eq!(final_error(not_leader.clone(), true), NodeError::Timeout);
        assert_eq!(final_error(not_leader.clone(), false), not_leader);
        assert_eq!(
            final_error(NodeError::RegionNotFound, true),
            NodeError::Timeout
        );
        let dropped = NodeError::Dropped("x".into());
        assert_eq!(final_error(dropped.clone(), false), dropped);
        assert!(!certainly_not_applied(&dropped));
        assert!(!certainly_not_applied(&NodeError::Timeout));
        assert!(certainly_not_applied(&not_leader));
    }
}
