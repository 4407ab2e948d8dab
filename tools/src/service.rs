//! The boundary between the protocol servers (RESP, HTTP) and whatever serves the data: the
//! node, or [`MemoryKvService`](crate::MemoryKvService) in tests and single-process dev mode.
//!
//! The protocol servers only parse, check and answer; every decision about regions, leaders
//! and storage lies behind these traits.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
pub use flotilla_common::epoch_not_match::{EpochNotMatch, RouteDescriptor};
use flotilla_region::node::{NodeAddresses, NodeEntry};
use serde::{Deserialize, Serialize};

/// The future a service method returns: owned, `Send`, resolving to the outcome.
pub type ServiceFuture<T> = Pin<Box<dyn Future<Output = Result<T, ServiceError>> + Send + 'static>>;

/// When a put writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutCondition {
    /// Always (plain `SET`).
    #[default]
    Always,
    /// Only if the key has no value (`SET … NX`).
    IfAbsent,
    /// Only if the key has a value (`SET … XX`).
    IfPresent,
}

/// Why a service call failed. Each variant is an expected operating condition the client can
/// act on; none of them means the process is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request reached a replica that does not lead its region and could not be forwarded.
    #[error("region {region}: not leader{}; retry", leader_hint(*.leader_node))]
    NotLeader {
        /// The region.
        region: u64,
        /// The node that leads it, if known.
        leader_node: Option<u64>,
    },
    /// A transient condition (election in progress, region splitting, proposal dropped); the
    /// same request may succeed when sent again.
    #[error("{0}; retry")]
    TryAgain(String),
    /// The request was routed (`FLOTILLA.ROUTE`) with an outdated view of its region; the
    /// error carries the regions as they are now, so the client fixes its cache and sends
    /// the request again at once. Nothing was applied. RESP renders it as
    /// `-TRYAGAIN EPOCHNOTMATCH region 7: epoch changed; now …` (format in
    /// [`flotilla_common::epoch_not_match`]).
    #[error("{0}")]
    EpochNotMatch(EpochNotMatch),
    /// The request did not finish in time; it may or may not have been applied.
    #[error("request timed out")]
    Timeout,
    /// No region with that id is hosted here.
    #[error("region {0} not found")]
    RegionNotFound(u64),
    /// The request is well formed but cannot be served as asked (a value that is not an
    /// integer, an overflow, an unknown node).
    #[error("{0}")]
    InvalidArgument(String),
    /// A configured size limit was reached; nothing was written.
    #[error("{0}")]
    Full(String),
    /// Anything else: a storage failure, the node stopping.
    #[error("internal error: {0}")]
    Internal(String),
}

fn leader_hint(leader_node: Option<u64>) -> String {
    leader_node.map_or_else(String::new, |n| format!(" (leader on node {n})"))
}

impl ServiceError {
    /// Whether sending the same request again may succeed without the client changing
    /// anything (RESP renders these as `-TRYAGAIN`, HTTP as 503).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ServiceError::NotLeader { .. }
                | ServiceError::TryAgain(_)
                | ServiceError::EpochNotMatch(_)
                | ServiceError::Timeout
        )
    }
}

/// A client's own session for one write: `(client id, sequence)`.
///
/// A client that retries a write itself (possibly through another node) sends the same pair
/// every time, and the region's state machine applies the write once and answers the retries
/// from its session table. `None` means the service picks a session of its own, which makes
/// the service's internal retries safe but not the client's.
pub type ClientSession = Option<(u64, u64)>;

/// The region a client routed a request to, as its cache knew it (`FLOTILLA.ROUTE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedRoute {
    /// The region's id.
    pub region_id: u64,
    /// The region's epoch as the client knew it.
    pub epoch: EpochStatus,
}

/// The route a client sent with a request: with `Some`, a service that has regions answers
/// [`ServiceError::EpochNotMatch`] when a key of the request is not in that region at that
/// epoch, instead of routing the request by key itself (`None`).
pub type ClientRoute = Option<ExpectedRoute>;

/// Key-value access, as the client protocols need it.
///
/// Ordering contract, which lets the RESP server pipeline without breaking Redis' "commands
/// of one connection run in order": an operation is *submitted when the method is called*;
/// the returned future only waits for its outcome. Writes submitted by one caller take effect
/// in call order, even when the caller submits several before awaiting the first. A read is
/// only guaranteed to observe a write of the same caller whose future has resolved (so the
/// RESP server awaits outstanding writes before it submits a read, and outstanding reads
/// before it submits a write). An implementation that does its work lazily, inside the
/// future, is still correct; it only loses the overlap.
///
/// Reads are linearizable unless the implementation documents otherwise.
///
/// Every keyed call takes a [`ClientRoute`]: the region the client routed it to, checked
/// against the service's own routing (see [`ServiceError::EpochNotMatch`]).
///
/// Every write takes a [`ClientSession`]: with `Some((id, seq))` a retry of the same write
/// with the same pair applies once. A write spanning several regions uses the same pair in
/// each region (each region keeps its own session table), so the pair must only ever be
/// sent again with the *same* command.
pub trait KvService: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get(&self, key: Bytes, route: ClientRoute) -> ServiceFuture<Option<Bytes>>;

    /// Writes `value` under `key` if `cond` holds; answers whether it wrote.
    fn put(
        &self,
        key: Bytes,
        value: Bytes,
        cond: PutCondition,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<bool>;

    /// Deletes each key that has a value; answers how many did. A key listed twice counts once.
    /// Keys of different regions are deleted region by region, not atomically as a whole.
    fn delete(
        &self,
        keys: Vec<Bytes>,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<u64>;

    /// Adds `delta` to the decimal integer stored under `key` (a missing key counts as 0) and
    /// answers the new value. Atomic: the read and the write happen in the state machine.
    /// A value that is not a decimal `i64`, or a sum that overflows, is `InvalidArgument`.
    fn incr_by(
        &self,
        key: Bytes,
        delta: i64,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<i64>;

    /// Writes every pair (a key listed twice keeps its last value). Each region's share is
    /// written atomically; pairs of different regions are not atomic as a whole.
    fn batch_put(
        &self,
        pairs: Vec<(Bytes, Bytes)>,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<()>;

    /// Up to `limit` pairs with `start <= key < end` (no `end`: to the end of the key space),
    /// in key order. A `route` applies to the region holding `start` (where the scan
    /// begins); the scan goes on into the regions after it by itself.
    fn scan(
        &self,
        start: Bytes,
        end: Option<Bytes>,
        limit: usize,
        route: ClientRoute,
    ) -> ServiceFuture<Vec<(Bytes, Bytes)>>;

    /// The id of the node this service runs on (`FLOTILLA.NODE`), so a client can tell which
    /// of its connections leads a region.
    fn node_id(&self) -> u64;

    /// The node's routing table in key order (`FLOTILLA.REGIONS`): what a client caches to
    /// send each request to its region's leader. It is this node's view, so its leaders may
    /// lag behind an election.
    fn routes(&self) -> Vec<RouteEntry>;

    /// Every region of the cluster the service knows of, in key order
    /// (`FLOTILLA.REGIONS ALL`), including those with no replica here: where to send a
    /// request this node cannot serve. A service of one node answers its own table.
    fn cluster_routes(&self) -> Vec<RouteEntry> {
        self.routes()
    }
}

/// One region as a client routes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// The region's id.
    pub id: u64,
    /// First key of the range (inclusive).
    pub start_key: Bytes,
    /// End of the range (exclusive); empty means the end of the key space.
    pub end_key: Bytes,
    /// The region's epoch.
    pub epoch: EpochStatus,
    /// The node that leads the region, if known.
    pub leader: Option<u64>,
}

/// What the HTTP status server shows and the admin actions it takes.
pub trait StatusSource: Send + Sync + 'static {
    /// A snapshot of the node and its regions.
    fn status(&self) -> NodeStatus;

    /// Asks the leader of `region` to hand leadership to its replica on `node`. Resolves when
    /// the request has been accepted, not when the transfer has finished.
    fn transfer_leader(&self, region: u64, node: u64) -> ServiceFuture<()>;

    /// Splits `region` at `key` (`None`: at the middle of its data) and answers the new
    /// region ids, once the split is applied on this node.
    fn split(&self, region: u64, key: Option<Bytes>) -> ServiceFuture<Vec<u64>>;

    /// Merges region `source` into the adjacent region `target`; resolves once the source
    /// is gone (or with the reason the target refused it, the source rolled back).
    fn merge(&self, source: u64, target: u64) -> ServiceFuture<()>;

    /// Adds a learner (non-voting) replica of `region` on `node`, which must hold none of
    /// it yet; answers the new replica's raft peer id once this node's replica has applied
    /// the change. The replica is created on `node` from a snapshot as soon as that node
    /// hears from the region's leader (its address must be known to the transport).
    fn add_learner(&self, region: u64, node: u64) -> ServiceFuture<u64>;

    /// Removes the replica of `region` on `node` (refused for the last voter and for the
    /// leader's replica: move the leadership first); resolves once this node's replica has
    /// applied the change.
    fn remove_replica(&self, region: u64, node: u64) -> ServiceFuture<()>;

    /// Moves the replica of `region` from node `from` to node `to`: learner on `to`,
    /// promoted once caught up, leadership moved off `from` if it is there, replica on
    /// `from` removed — one membership change at a time. Resolves when the move is done;
    /// each step may take up to the node's request timeout. An interrupted move can be
    /// asked again (a learner already on `to` is reused). With `joint`, a voter is moved
    /// through a joint configuration instead: once the learner has caught up, it is
    /// promoted and the voter on `from` removed in one change, so the region never counts
    /// a voter more than before.
    fn move_replica(&self, region: u64, from: u64, to: u64, joint: bool) -> ServiceFuture<()>;

    /// Adds a node to the cluster's directory (`add-node`, or a node joining): state up,
    /// spread by gossip. `cluster_id` is given by a node joining by itself (`--join`): it
    /// must match this cluster's, and such a node may change its own addresses. Answers the
    /// directory. A service without a cluster layer refuses.
    fn add_node(&self, req: AddNodeRequest) -> ServiceFuture<Vec<NodeEntry>> {
        let _ = req;
        Box::pin(async {
            Err(ServiceError::InvalidArgument(
                "this server has no cluster layer".into(),
            ))
        })
    }

    /// Marks a node removing (`remove-node`): it takes no new replicas; refused when fewer
    /// than three up nodes would remain. Answers its entry.
    fn remove_node(&self, node: u64) -> ServiceFuture<NodeEntry> {
        let _ = node;
        Box::pin(async {
            Err(ServiceError::InvalidArgument(
                "this server has no cluster layer".into(),
            ))
        })
    }
}

/// What `POST /admin/add-node` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddNodeRequest {
    /// The node's id.
    pub id: u64,
    /// Its addresses (the raft address is required).
    pub addresses: NodeAddresses,
    /// The cluster id a joining node was configured with (`None`: an operator's
    /// `add-node`).
    pub cluster_id: Option<u64>,
}

/// One node of the cluster's directory, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNodeStatus {
    /// The node's id.
    pub id: u64,
    /// Its raft address, if known.
    pub raft_addr: Option<String>,
    /// Its RESP address, if known.
    pub client_addr: Option<String>,
    /// Its status (HTTP) address, if known.
    pub status_addr: Option<String>,
    /// `up`, `removing` or `removed`.
    pub state: String,
    /// Heard from recently (gossip); the answering node is always alive.
    pub alive: bool,
    /// Milliseconds since its last gossip arrived (`None`: never).
    pub last_heard_ms: Option<u64>,
    /// Replicas on it, from its gossip.
    pub replicas: u64,
    /// Regions it leads, from its gossip.
    pub leaders: u64,
    /// Replica moves it is carrying out for the balancer, from its gossip.
    #[serde(default)]
    pub moves: u64,
    /// Snapshot streams it is sending or receiving, from its gossip.
    #[serde(default)]
    pub snapshots: u64,
    /// Its entry's generation.
    pub generation: u64,
}

/// One region of the whole cluster (from gossip and this node's replicas), as `/status`
/// shows it under `cluster_regions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRegionStatus {
    /// The region's id.
    pub id: u64,
    /// First key of the range (inclusive), escaped.
    #[serde(with = "crate::escape::serde_bytes")]
    pub start_key: Bytes,
    /// End of the range (exclusive); empty means the end of the key space.
    #[serde(with = "crate::escape::serde_bytes")]
    pub end_key: Bytes,
    /// The region's epoch.
    pub epoch: EpochStatus,
    /// The node that leads it, if known.
    pub leader: Option<u64>,
    /// That leader's term.
    pub term: u64,
    /// Its replicas.
    pub peers: Vec<PeerStatus>,
}

/// One node, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub node_id: u64,
    /// The regions with a replica on this node, in the order the node lists them.
    pub regions: Vec<RegionStatus>,
    /// The cluster's node directory, by node id (empty from a server without one).
    #[serde(default)]
    pub nodes: Vec<ClusterNodeStatus>,
    /// Every region of the cluster this node knows of, in key order, wherever its
    /// replicas are (empty from a server without a cluster layer).
    #[serde(default)]
    pub cluster_regions: Vec<ClusterRegionStatus>,
    /// The node's snapshots under way. All zero in the answers of servers older than
    /// this field.
    #[serde(default)]
    pub snapshots: SnapshotsStatus,
}

/// A node's snapshots under way, as `/status` shows them under `snapshots`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotsStatus {
    /// Snapshots being built (read from the node's engine).
    pub building: u64,
    /// Bytes those builds have read so far.
    pub building_bytes_read: u64,
    /// Snapshots being sent.
    pub sending: u64,
    /// Bytes of them sent so far.
    pub sending_bytes_done: u64,
    /// Bytes of them in all.
    pub sending_bytes_total: u64,
    /// Snapshots being received.
    pub receiving: u64,
    /// Bytes of them received so far.
    pub receiving_bytes_done: u64,
    /// Bytes of them in all.
    pub receiving_bytes_total: u64,
}

impl SnapshotsStatus {
    /// One line for `flotilla ctl status`:
    /// `building 0, sending 1 (12.3/64.0 MiB), receiving 0`.
    pub fn summary(&self) -> String {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let part = |what: &str, n: u64, done: u64, total: Option<u64>| match (n, total) {
            (0, _) => format!("{what} 0"),
            (n, Some(total)) => format!("{what} {n} ({:.1}/{:.1} MiB)", mib(done), mib(total)),
            (n, None) => format!("{what} {n} ({:.1} MiB read)", mib(done)),
        };
        [
            part("building", self.building, self.building_bytes_read, None),
            part(
                "sending",
                self.sending,
                self.sending_bytes_done,
                Some(self.sending_bytes_total),
            ),
            part(
                "receiving",
                self.receiving,
                self.receiving_bytes_done,
                Some(self.receiving_bytes_total),
            ),
        ]
        .join(", ")
    }
}

/// One replica of a region on this node, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionStatus {
    /// The region's id.
    pub id: u64,
    /// First key of the range (inclusive), in the escaped form of [`crate::escape`].
    #[serde(with = "crate::escape::serde_bytes")]
    pub start_key: Bytes,
    /// End of the range (exclusive); empty means the end of the key space.
    #[serde(with = "crate::escape::serde_bytes")]
    pub end_key: Bytes,
    /// The region's epoch.
    pub epoch: EpochStatus,
    /// This replica's role.
    pub role: ReplicaRole,
    /// The replica's current term.
    pub term: u64,
    /// The replica's commit index.
    pub commit: u64,
    /// The replica's applied index.
    pub applied: u64,
    /// The node that leads the region, if known.
    pub leader: Option<u64>,
    /// Every replica of the region (voters and learners), as this replica's descriptor
    /// lists them. Empty in the answers of servers older than this field.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
}

/// One replica of a region, as `/status` lists it under `peers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The node hosting the replica.
    pub node: u64,
    /// The replica's raft peer id (unique across the cluster).
    pub peer: u64,
    /// Whether it votes.
    pub role: MemberRole,
}

/// Whether a replica is a voting member of its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Votes and counts toward the quorum.
    Voter,
    /// Receives the log but does not vote (a replica being added).
    Learner,
}

impl MemberRole {
    /// The name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        }
    }
}

/// A region's epoch: `version` grows on split and merge, `conf_ver` on membership changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EpochStatus {
    /// Membership changes so far.
    pub conf_ver: u64,
    /// Splits and merges so far.
    pub version: u64,
}

/// The role a replica plays in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaRole {
    /// Leads the current term.
    Leader,
    /// A voter following a leader (or waiting for one).
    Follower,
    /// Asking whether it could win an election (PreVote).
    PreCandidate,
    /// Campaigning in a new term.
    Candidate,
    /// Receives the log but does not vote.
    Learner,
}

impl ReplicaRole {
    /// The name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaRole::Leader => "leader",
            ReplicaRole::Follower => "follower",
            ReplicaRole::PreCandidate => "pre_candidate",
            ReplicaRole::Candidate => "candidate",
            ReplicaRole::Learner => "learner",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_summary_shows_counts_and_mebibytes() {
        assert_eq!(
            SnapshotsStatus::default().summary(),
            "building 0, sending 0, receiving 0"
        );
        let s = SnapshotsStatus {
            building: 1,
            building_bytes_read: 3 << 19,
            sending: 1,
            sending_bytes_done: (123 << 20) / 10,
            sending_bytes_total: 64 << 20,
            receiving: 2,
            receiving_bytes_done: 1 << 20,
            receiving_bytes_total: 4 << 20,
        };
        assert_eq!(
            s.summary(),
            "building 1 (1.5 MiB read), sending 1 (12.3/64.0 MiB), receiving 2 (1.0/4.0 MiB)"
        );
    }
}
