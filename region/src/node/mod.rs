//! The node: every region replica of one process, on one engine and one transport.
//!
//! [`Store`] runs the replicas (one loop; see its module docs for a round's steps);
//! [`NodeHandle`] is how request handlers reach it: it routes a key to its region and
//! waits for the answer with a timeout.

mod balancer;
mod cluster;
mod command;
mod descriptor;
mod directory;
mod error;
mod forward;
mod membership;
mod merge;
pub mod metrics;
mod node_message;
mod peer;
mod peer_storage;
mod placement;
mod region_table;
mod runner;
mod snapshot_builder;
mod split;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use std::sync::mpsc::SyncSender as Sender;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use balancer::{ActiveMove, ActiveMoves, BalancerConfig};
pub use cluster::{
    ClusterConfig, ClusterView, NodeInfo, ALIVE_INTERVALS, MALFORMED_WARN_INTERVAL,
    SUBSCRIBER_QUEUE_MAX,
};
pub use command::{KvCommand, KvResponse, PutCondition};
pub use descriptor::{
    even_boundaries, MergeState, PeerMeta, PeerRole, RegionDescriptor, RegionEpoch,
};
pub use directory::{
    check_node_id, NodeAddresses, NodeDirectory, NodeEntry, NodeState, SharedDirectory,
    DIRECTORY_FILE, UP_NODES_MIN,
};
pub use error::NodeError;
pub use forward::{ForwardAnswer, ForwardRequest, Forwarder, FORWARDS_PENDING_MAX};
pub use membership::{
    change_done, check_change, is_member_peer_id, member_peer_id, ChangeOutcome, PeerChange,
    LEADER_ON_TARGET, MEMBER_PEER_COUNTER_MAX, MEMBER_PEER_ID_BIT, PROMOTE_LAG_MAX,
};
pub use merge::{merge_client_id, plan_merge, MergeCommandKind, MergePlan};
pub use node_message::{is_node_message, Gossip, NodeMessage, RegionSummary, NODE_MESSAGE_REGION};
pub use peer::{Reply, ScanPage};
pub use peer_storage::{PeerStorage, RegionSnapshotData, SNAPSHOT_DATA_BYTES_MAX};
pub use placement::{
    plan as plan_placement, PlacementAction, PlacementConfig, PlacementNode, PlacementReason,
    PlacementRegion,
};
pub use region_table::RegionTable;
pub use runner::{Node, NodeConfig, BOOTSTRAP_RECORD};
pub use snapshot_builder::{
    SnapshotBuildHook, SnapshotBuildStats, SnapshotBuilds, SnapshotProgress, SNAPSHOT_BUILDS_MAX,
    SNAPSHOT_QUEUE_MAX, SNAPSHOT_READY_TTL, SNAPSHOT_RETRY_PAUSE,
};
pub use split::{plan_split, split_region_id, SplitPlan, REGION_ID_MAX};
pub use store::{
    bootstrap, bootstrap_nodes, bootstrap_peer_id, EngineOpener, LogSlot, RegionMap, RegionRoute,
    RegionStatus, Store, StoreConfig, StoreMsg, FORWARD_WAIT_ELECTIONS, PEER_ID_NODE_SPAN,
    REOPEN_PAUSE_MAX, REOPEN_PAUSE_MIN, REOPEN_PAUSE_RESET, ROUND_INPUTS_MAX,
};

/// First pause before a request that found no leader (or was dropped) is sent again.
pub const RETRY_PAUSE_MIN: Duration = Duration::from_millis(10);
/// Longest pause between such retries.
pub const RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);

/// Retries of a request refused because its key left the region it was sent to (a split
/// or a merge applied meanwhile), at most. One is enough for a split (the routing table changes when
/// the split applies here); a request whose keys span regions never fits and fails after
/// these.
pub const REROUTE_RETRIES_MAX: u32 = 3;

/// The region a request was routed to, as its sender knew it: the sender's cache said
/// the request's keys are in region `region_id` at `epoch`. A request that carries one is
/// answered [`NodeError::EpochNotMatch`], with the regions as they are now, when this
/// node's routing table disagrees (another region holds a key, or the region's epoch
/// changed), instead of being re-routed behind the sender's back: the sender fixes its
/// cache from the answer and retries at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedRoute {
    /// The region the sender routed to.
    pub region_id: u64,
    /// Its epoch as the sender knew it.
    pub epoch: RegionEpoch,
}

/// Regions one [`NodeError::EpochNotMatch`] describes, at most (as many as the RESP error
/// line carries).
pub const EPOCH_NOT_MATCH_REGIONS_MAX: usize = flotilla_common::epoch_not_match::DESCRIPTORS_MAX;

/// Whether sending the same request again, after a pause, may succeed: an election was
/// on, or the proposal was dropped by a leadership change, or (a bounded number of times)
/// the routing changed under it. A timeout is not: its time is used up. Nor is
/// `EpochNotMatch`: only a request that names its route gets it, and then it is the
/// sender's to re-route (with the regions the error carries).
fn retryable(e: &NodeError, reroutes: &mut u32) -> bool {
    match e {
        NodeError::NotLeader { .. } | NodeError::Dropped(_) => true,
        NodeError::EpochNotMatch { .. } => false,
        NodeError::KeyNotInRegion(_) | NodeError::RegionNotFound => {
            *reroutes += 1;
            *reroutes <= REROUTE_RETRIES_MAX
        }
        _ => false,
    }
}

/// Client ids of the sessions split commands carry: this bit and the first new region id,
/// which is unique in the cluster, so a split's session never meets a client's.
pub const SPLIT_CLIENT_BIT: u64 = 1 << 63;

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

/// Times a forwarded request is sent, at most (each answered by a node that routed it as
/// well as it could; another try helps only when the cluster view was behind).
pub const FORWARD_ATTEMPTS_MAX: u32 = 3;

/// A forwarded request's answer to come.
struct ForwardWait {
    id: u64,
    rx: oneshot::Receiver<Result<ForwardAnswer, NodeError>>,
}

/// How a request started: submitted here, or forwarded.
enum AttemptFirst<F> {
    Local(F),
    Forwarded(Result<ForwardWait, NodeError>),
}

/// A request started by [`NodeHandle::local_or_forwarded`].
struct Attempt<F> {
    handle: NodeHandle,
    /// The key and the request, for a request that may be forwarded (none: it names its
    /// route, and is only ever served here).
    forward: Option<(Bytes, ForwardRequest)>,
    first: AttemptFirst<F>,
}

impl<T, F> Attempt<F>
where
    F: Future<Output = Result<T, NodeError>> + Send + 'static,
    T: Send + 'static,
{
    /// Its answer: the local one, or — when this node turned out to hold no replica of the
    /// region (it moved away meanwhile) or the request was forwarded from the start — the
    /// forwarded one, taken apart by `unpack` (an answer of the wrong kind is an error).
    fn finish(
        self,
        unpack: impl FnOnce(ForwardAnswer) -> Option<T> + Send + 'static,
    ) -> impl Future<Output = Result<T, NodeError>> + Send + 'static {
        let Attempt {
            handle,
            forward,
            first,
        } = self;
        async move {
            let first = match first {
                AttemptFirst::Local(f) => match f.await {
                    Err(NodeError::RegionNotFound) if forward.is_some() => None,
                    r => return r,
                },
                AttemptFirst::Forwarded(sent) => Some(sent),
            };
            let Some((key, request)) = forward else {
                return Err(NodeError::RegionNotFound);
            };
            let answer = handle.forwarded(key, request, first).await?;
            let kind = answer.kind();
            unpack(answer).ok_or_else(|| {
                NodeError::Storage(format!(
                    "a forwarded request got an answer of another kind: {kind}"
                ))
            })
        }
    }
}

/// The request side of a node's store.
#[derive(Clone)]
pub struct NodeHandle {
    node_id: u64,
    tx: Sender<StoreMsg>,
    regions: Arc<RegionMap>,
    cluster: Arc<ClusterView>,
    timeout: Duration,
}

impl NodeHandle {
    /// A handle on the store behind `tx` and the node's cluster view; every call gives up
    /// after `timeout`.
    pub fn new(
        node_id: u64,
        tx: Sender<StoreMsg>,
        regions: Arc<RegionMap>,
        cluster: Arc<ClusterView>,
        timeout: Duration,
    ) -> Self {
        NodeHandle {
            node_id,
            tx,
            regions,
            cluster,
            timeout,
        }
    }

    /// The cluster as this node knows it: the node directory, liveness, every region.
    pub fn cluster(&self) -> &Arc<ClusterView> {
        &self.cluster
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
            std::sync::mpsc::TrySendError::Full(_) => {
                NodeError::Dropped("node is overloaded".into())
            }
            std::sync::mpsc::TrySendError::Disconnected(_) => NodeError::Stopped,
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
            let mut reroutes = 0;
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
                    Err(e) if Instant::now() + pause < deadline && retryable(&e, &mut reroutes) => {
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
            std::sync::mpsc::TrySendError::Full(_) => {
                NodeError::Dropped("node is overloaded".into())
            }
            std::sync::mpsc::TrySendError::Disconnected(_) => NodeError::Stopped,
        })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// The node a request for `key` goes to when this node holds no replica of its
    /// region: the one leading it as the cluster view shows it, or else one with a
    /// replica; never this node. `None`: serve it here.
    fn forward_target(&self, key: &[u8]) -> Option<u64> {
        if self.regions.route(key).is_some() {
            return None;
        }
        let r = self.cluster.route(key)?;
        let me = self.node_id;
        r.leader_node
            .filter(|&n| n != me && r.peers.iter().any(|p| p.node_id == n))
            .or_else(|| r.peers.iter().map(|p| p.node_id).find(|&n| n != me))
    }

    /// Sends `request` to node `to` now; answers where its answer will arrive.
    fn forward_send(&self, to: u64, request: ForwardRequest) -> Result<ForwardWait, NodeError> {
        let (id, rx) = self.cluster.forwarder().register()?;
        if let Err(e) = self.cluster.send(to, &NodeMessage::Forward { id, request }) {
            self.cluster.forwarder().forget(id);
            return Err(e);
        }
        Ok(ForwardWait { id, rx })
    }

    /// Starts a request: here when this node holds the key's region (or the request names
    /// its route), else forwarded now (see the `forward` module).
    /// `request` builds the forwardable form only when it may be needed (a request that
    /// names its route never is), so a routed request pays nothing for forwarding.
    fn local_or_forwarded<T, F>(
        &self,
        key: &[u8],
        expected: Option<ExpectedRoute>,
        request: impl FnOnce() -> ForwardRequest,
        local: impl FnOnce() -> F,
    ) -> Attempt<F>
    where
        F: Future<Output = Result<T, NodeError>>,
    {
        if expected.is_some() {
            return Attempt {
                handle: self.clone(),
                forward: None,
                first: AttemptFirst::Local(local()),
            };
        }
        let request = request();
        let first = match self.forward_target(key) {
            None => AttemptFirst::Local(local()),
            Some(to) => AttemptFirst::Forwarded(self.forward_send(to, request.clone())),
        };
        Attempt {
            handle: self.clone(),
            forward: Some((Bytes::copy_from_slice(key), request)),
            first,
        }
    }

    /// Waits for a forwarded request's answer, and sends it again (routed afresh) while it
    /// may still succeed elsewhere — the region moved, its leader changed — until this
    /// handle's time is up. A write carries the same session each time: it applies once.
    async fn forwarded(
        &self,
        key: Bytes,
        request: ForwardRequest,
        first: Option<Result<ForwardWait, NodeError>>,
    ) -> Result<ForwardAnswer, NodeError> {
        let deadline = Instant::now() + self.timeout;
        let mut pending = first;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let sent = match pending.take() {
                Some(s) => s,
                None => match self.forward_target(&key) {
                    Some(to) => self.forward_send(to, request.clone()),
                    None => Err(NodeError::RegionNotFound),
                },
            };
            let r = match sent {
                Err(e) => Err(e),
                Ok(wait) => match tokio::time::timeout_at(deadline, wait.rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err(NodeError::Stopped),
                    Err(_) => {
                        self.cluster.forwarder().forget(wait.id);
                        Err(NodeError::Timeout)
                    }
                },
            };
            match r {
                Err(
                    NodeError::RegionNotFound
                    | NodeError::NotLeader { .. }
                    | NodeError::Dropped(_)
                    | NodeError::KeyNotInRegion(_),
                ) if attempts < FORWARD_ATTEMPTS_MAX
                    && Instant::now() + RETRY_PAUSE_MAX < deadline =>
                {
                    tokio::time::sleep(RETRY_PAUSE_MAX).await;
                }
                r => return r,
            }
        }
    }

    fn region_of(&self, key: &[u8]) -> Result<u64, NodeError> {
        self.regions
            .route(key)
            .map(|r| r.id)
            .ok_or(NodeError::RegionNotFound)
    }

    /// The region to send a request for `keys` to. Without `expected`, the region holding
    /// the first key (the store checks the others). With it, every key must be in that
    /// region at that epoch in this node's routing table, or the answer is
    /// [`NodeError::EpochNotMatch`] — a comparison per key, and nothing is proposed.
    ///
    /// This runs on every attempt of a request, so a routed proposal that the store
    /// refused because its key left the region (a split or merge applied between routing
    /// and applying: `KeyNotInRegion`, from the propose-time key check or at apply) is
    /// answered `EpochNotMatch` once this node's table shows the change, and is sent again
    /// unchanged while it does not yet (this node has not applied the split).
    fn route_checked(
        &self,
        keys: &[&[u8]],
        expected: Option<ExpectedRoute>,
    ) -> Result<u64, NodeError> {
        let Some(expected) = expected else {
            return self.region_of(keys.first().copied().unwrap_or_default());
        };
        for key in keys {
            let route = self.regions.route(key).ok_or(NodeError::RegionNotFound)?;
            if route.id != expected.region_id || route.epoch != expected.epoch {
                return Err(NodeError::EpochNotMatch {
                    region_id: expected.region_id,
                    current: self.current_regions(expected, route),
                });
            }
        }
        Ok(expected.region_id)
    }

    /// What an `EpochNotMatch` for a request routed to `expected` tells the sender: the
    /// regions of this node's table, as they are now, from the region `holder` that holds
    /// the request's key to the region the sender named (if it is still here), widened on
    /// both sides by adjacent regions with a newer version than the sender's (the other
    /// parts of a split the sender did not see). So the sender's old entry is replaced by
    /// every region now in its range, as far as this node can tell without knowing that
    /// range. At most [`EPOCH_NOT_MATCH_REGIONS_MAX`] regions; if the two alone are further
    /// apart, just the two.
    ///
    /// It reads the whole table: this runs only for a request routed with a stale view.
    fn current_regions(&self, expected: ExpectedRoute, holder: RegionRoute) -> Vec<RegionRoute> {
        let all = self.regions.all();
        let Some(h) = all.iter().position(|r| r.id == holder.id) else {
            return vec![holder];
        };
        let (mut lo, mut hi) = (h, h);
        if let Some(n) = all.iter().position(|r| r.id == expected.region_id) {
            if n.abs_diff(h) >= EPOCH_NOT_MATCH_REGIONS_MAX {
                let mut two = vec![all[n.min(h)].clone(), all[n.max(h)].clone()];
                two.dedup_by_key(|r| r.id);
                return two;
            }
            (lo, hi) = (n.min(h), n.max(h));
        }
        let newer = |r: &RegionRoute| r.epoch.version > expected.epoch.version;
        let room = |lo: usize, hi: usize| hi - lo + 1 < EPOCH_NOT_MATCH_REGIONS_MAX;
        while lo > 0
            && room(lo, hi)
            && newer(&all[lo - 1])
            && all[lo - 1].end_key == all[lo].start_key
        {
            lo -= 1;
        }
        while hi + 1 < all.len()
            && room(lo, hi)
            && newer(&all[hi + 1])
            && all[hi].end_key == all[hi + 1].start_key
        {
            hi += 1;
        }
        all[lo..=hi].to_vec()
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
        self.submit_write_routed(cmd, session, None)
    }

    /// [`NodeHandle::submit_write`] for a sender that routed the write to a region: with
    /// `expected`, every key of `cmd` must be in that region at that epoch here, else the
    /// answer is [`NodeError::EpochNotMatch`] (see [`ExpectedRoute`]); without, as
    /// `submit_write`.
    ///
    /// A write whose region has no replica on this node (and that names no route) is
    /// forwarded to a node with one (see the `forward` module).
    pub fn submit_write_routed(
        &self,
        cmd: KvCommand,
        session: (u64, u64),
        expected: Option<ExpectedRoute>,
    ) -> impl Future<Output = Result<KvResponse, NodeError>> + Send + 'static {
        let key = cmd.keys().first().copied().unwrap_or_default();
        let attempt = self.local_or_forwarded(
            key,
            expected,
            || ForwardRequest::Write {
                cmd: cmd.clone(),
                session,
            },
            || self.submit_write_local(cmd.clone(), session, expected),
        );
        attempt.finish(|a| match a {
            ForwardAnswer::Written(r) => Some(r),
            _ => None,
        })
    }

    /// [`NodeHandle::submit_write`] on this node's replicas only (a forwarded request).
    pub(crate) fn submit_write_here(
        &self,
        cmd: KvCommand,
        session: (u64, u64),
    ) -> impl Future<Output = Result<KvResponse, NodeError>> + Send + 'static {
        self.submit_write_local(cmd, session, None)
    }

    fn submit_write_local(
        &self,
        cmd: KvCommand,
        session: (u64, u64),
        expected: Option<ExpectedRoute>,
    ) -> impl Future<Output = Result<KvResponse, NodeError>> + Send + 'static {
        self.submit(move |h, reply| {
            Ok(StoreMsg::Propose {
                region_id: h.route_checked(&cmd.keys(), expected)?,
                session,
                cmd: cmd.clone(),
                reply,
            })
        })
    }

    /// Splits region `region_id` at `key` (`None`: at the middle of its data, by bytes) into
    /// two regions with the same replicas; returns the new region's id. The node picks the
    /// new id; the split goes through the region's log like a write. This is
    /// [`NodeHandle::prepare_split`] followed by [`NodeHandle::propose_split`].
    pub async fn split(&self, region_id: u64, key: Option<Bytes>) -> Result<Vec<u64>, NodeError> {
        let cmd = self.prepare_split(region_id, key).await?;
        self.propose_split(region_id, cmd).await
    }

    /// The split command for region `region_id` at `key` (`None`: the middle of its data,
    /// found by scanning it off the store thread), with a new region id taken from this
    /// node's counter. Nothing changes until it is proposed.
    pub async fn prepare_split(
        &self,
        region_id: u64,
        key: Option<Bytes>,
    ) -> Result<KvCommand, NodeError> {
        self.call(|reply| StoreMsg::PrepareSplit {
            region_id,
            key,
            reply,
        })
        .await
    }

    /// Proposes a split command made by [`NodeHandle::prepare_split`] through the region's
    /// log; answers the new regions' ids once it is applied here, or `Refused` if it does
    /// not fit the region where it applies (a key no longer strictly inside it, which may
    /// have split or merged in between; keys and ids that do not pair up; a bad id).
    pub async fn propose_split(
        &self,
        region_id: u64,
        cmd: KvCommand,
    ) -> Result<Vec<u64>, NodeError> {
        let first_id = match &cmd {
            KvCommand::Split { new_region_ids, .. } => new_region_ids.first().copied(),
            _ => None,
        }
        .ok_or_else(|| NodeError::Refused("not a split command with a new region id".into()))?;
        let session = (SPLIT_CLIENT_BIT | first_id, 1);
        let answer = self
            .submit(move |_, reply| {
                Ok(StoreMsg::Propose {
                    region_id,
                    session,
                    cmd: cmd.clone(),
                    reply,
                })
            })
            .await?;
        match answer {
            KvResponse::Split(ids) => Ok(ids),
            KvResponse::Failed(why) => Err(NodeError::Refused(why)),
            other => Err(NodeError::Storage(format!("split answered {other:?}"))),
        }
    }

    /// Merges region `source` into the adjacent region `target` (both with replicas on the
    /// same nodes): `source` is frozen through its log, and once every replica has that,
    /// `target` takes its range through its own log (see the merge module). Answers once
    /// the source is gone from this node's routing table, or with `Refused` if the target
    /// refused it (the source was rolled back and serves again).
    pub async fn merge(&self, source: u64, target: u64) -> Result<(), NodeError> {
        let known = |id| self.regions.all().into_iter().any(|r| r.id == id);
        if !known(source) || !known(target) {
            return Err(NodeError::RegionNotFound);
        }
        if source == target {
            return Err(NodeError::Refused(
                "a region cannot merge into itself".into(),
            ));
        }
        // Checked again where the merge applies; here for a clear answer at once (and so
        // that no merge of regions on different nodes freezes the source meanwhile).
        let (s, t) = (
            self.descriptor(source).await?,
            self.descriptor(target).await?,
        );
        if s.nodes() != t.nodes() {
            return Err(NodeError::Refused(format!(
                "regions {source} and {target} have replicas on different nodes ({:?} and {:?})",
                s.nodes(),
                t.nodes()
            )));
        }
        let version_before = self
            .regions
            .all()
            .into_iter()
            .find(|r| r.id == source)
            .map_or(0, |r| r.epoch.version);
        let seq = self.call(|reply| StoreMsg::AllocateId { reply }).await?;
        let session = (merge_client_id(MergeCommandKind::Prepare, source), seq);
        let answer = self
            .submit(move |_, reply| {
                Ok(StoreMsg::Propose {
                    region_id: source,
                    session,
                    cmd: KvCommand::PrepareMerge { target },
                    reply,
                })
            })
            .await;
        match answer {
            Ok(KvResponse::Failed(why)) => return Err(NodeError::Refused(why)),
            Ok(_) => {}
            // The prepare's outcome is unknown: its answer was lost to a leadership change,
            // or the merge went through so fast that the source was gone before a retry
            // (whose `RegionNotFound` then reads as "timed out": an earlier attempt may have
            // applied). The routing table tells: a source that is gone or frozen for this
            // target is being merged, and is watched below like any other.
            Err(e @ (NodeError::Timeout | NodeError::Dropped(_))) => {
                let route = self.regions.all().into_iter().find(|r| r.id == source);
                if route.is_some_and(|r| r.merging_into != Some(target)) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.regions.all().into_iter().find(|r| r.id == source) {
                None => return Ok(()),
                // A rollback bumps the version; a source still unfrozen at its old version
                // has not applied its PrepareMerge here yet.
                Some(r) if r.merging_into.is_none() && r.epoch.version > version_before => {
                    return Err(NodeError::Refused(format!(
                        "region {target} refused to take in region {source}; the merge was rolled back"
                    )))
                }
                Some(_) if Instant::now() >= deadline => return Err(NodeError::Timeout),
                Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
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
        self.submit_get_routed(key, None)
    }

    /// [`NodeHandle::submit_get`] for a sender that routed the read to a region: with
    /// `expected`, answered [`NodeError::EpochNotMatch`] when the key is not in that region
    /// at that epoch here.
    pub fn submit_get_routed(
        &self,
        key: Bytes,
        expected: Option<ExpectedRoute>,
    ) -> impl Future<Output = Result<Option<Bytes>, NodeError>> + Send + 'static {
        let attempt = self.local_or_forwarded(
            &key,
            expected,
            || ForwardRequest::Get { key: key.clone() },
            || self.submit_get_local(key.clone(), expected),
        );
        attempt.finish(|a| match a {
            ForwardAnswer::Value(v) => Some(v),
            _ => None,
        })
    }

    /// A read on this node's replicas only (a forwarded request).
    pub(crate) fn submit_get_here(
        &self,
        key: Bytes,
    ) -> impl Future<Output = Result<Option<Bytes>, NodeError>> + Send + 'static {
        self.submit_get_local(key, None)
    }

    fn submit_get_local(
        &self,
        key: Bytes,
        expected: Option<ExpectedRoute>,
    ) -> impl Future<Output = Result<Option<Bytes>, NodeError>> + Send + 'static {
        self.submit(move |h, reply| {
            Ok(StoreMsg::Get {
                region_id: h.route_checked(&[&key], expected)?,
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
        Ok(self.scan_page(start, end, limit).await?.pairs)
    }

    /// Like [`NodeHandle::scan`], and also answers the end of the range the scan covered
    /// (the region's end as it was when the read was served, if that came before `end`):
    /// where a scan over several regions goes on.
    pub async fn scan_page(
        &self,
        start: Bytes,
        end: Bytes,
        limit: usize,
    ) -> Result<ScanPage, NodeError> {
        self.scan_page_routed(start, end, limit, None).await
    }

    /// [`NodeHandle::scan_page`] for a sender that routed the scan to a region: with
    /// `expected`, answered [`NodeError::EpochNotMatch`] when `start` is not in that region
    /// at that epoch here.
    pub async fn scan_page_routed(
        &self,
        start: Bytes,
        end: Bytes,
        limit: usize,
        expected: Option<ExpectedRoute>,
    ) -> Result<ScanPage, NodeError> {
        let attempt = self.local_or_forwarded(
            &start,
            expected,
            || ForwardRequest::Scan {
                start: start.clone(),
                end: end.clone(),
                limit,
            },
            || {
                let (h, start, end) = (self.clone(), start.clone(), end.clone());
                async move { h.scan_page_local(start, end, limit, expected).await }
            },
        );
        attempt
            .finish(|a| match a {
                ForwardAnswer::Page { pairs, covered_end } => Some(ScanPage { pairs, covered_end }),
                _ => None,
            })
            .await
    }

    /// A scan on this node's replicas only (a forwarded request).
    pub(crate) async fn scan_page_here(
        &self,
        start: Bytes,
        end: Bytes,
        limit: usize,
    ) -> Result<ScanPage, NodeError> {
        self.scan_page_local(start, end, limit, None).await
    }

    async fn scan_page_local(
        &self,
        start: Bytes,
        end: Bytes,
        limit: usize,
        expected: Option<ExpectedRoute>,
    ) -> Result<ScanPage, NodeError> {
        self.submit(move |h, reply| {
            Ok(StoreMsg::Scan {
                region_id: h.route_checked(&[&start], expected)?,
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

    /// The node's snapshots under way: builds, and streams sent and received.
    pub async fn snapshot_progress(&self) -> Result<SnapshotProgress, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(StoreMsg::SnapshotProgress { reply })
            .map_err(|_| NodeError::Stopped)?;
        tokio::time::timeout(self.timeout, rx)
            .await
            .map_err(|_| NodeError::Timeout)?
            .map_err(|_| NodeError::Stopped)
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
