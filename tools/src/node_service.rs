//! The protocol servers' view of a real node: [`KvService`] and [`StatusSource`] over a
//! [`NodeHandle`].
//!
//! Every write carries a client session: the one the client sent (`FLOTILLA.SESSION`, so
//! the client's own retries, through any node, apply once), or else a client id and
//! sequence from this service's [`SessionPool`] (one id per write in flight). A write that
//! is dropped by a leadership change is retried with the *same* session, so it applies at
//! most once. A write whose keys span several regions (DEL, MSET) becomes one write per
//! region, all with the same session (each region has its own session table): each is
//! atomic, the whole is not. Requests for regions led by another node are forwarded there
//! by the node (see docs/architecture.md, "request forwarding").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_common::session_pool::SessionPool;
use flotilla_region::node::{self, final_error, KvCommand, KvResponse, NodeError, NodeHandle};
use parking_lot::RwLock;

use flotilla_region::node::NodeEntry;

use crate::service::{
    AddNodeRequest, ClientRoute, ClientSession, ClusterNodeStatus, ClusterRegionStatus,
    EpochNotMatch, EpochStatus, KvService, MemberRole, NodeStatus, PeerStatus, PutCondition,
    RegionStatus, ReplicaRole, RouteDescriptor, RouteEntry, ServiceError, ServiceFuture,
    SnapshotsStatus, StatusSource,
};

/// Retries of a write dropped by a leadership change, at most (same session each time).
const DROPPED_RETRIES_MAX: u32 = 3;
/// Pause before such a retry: about the time a new leader needs to be known.
const DROPPED_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How often the status snapshot served by [`StatusSource::status`] is refreshed.
pub const STATUS_REFRESH_INTERVAL: Duration = Duration::from_millis(500);

fn service_error(e: NodeError) -> ServiceError {
    match e {
        NodeError::NotLeader {
            region_id,
            leader_node,
        } => ServiceError::NotLeader {
            region: region_id,
            leader_node,
        },
        NodeError::RegionNotFound => ServiceError::TryAgain("no region for the key here".into()),
        NodeError::EpochNotMatch { region_id, current } => {
            ServiceError::EpochNotMatch(EpochNotMatch {
                region_id,
                current: current
                    .into_iter()
                    .take(node::EPOCH_NOT_MATCH_REGIONS_MAX)
                    .map(|r| RouteDescriptor {
                        id: r.id,
                        start_key: r.start_key,
                        end_key: r.end_key,
                        version: r.epoch.version,
                        conf_ver: r.epoch.conf_ver,
                        leader: r.leader_node,
                    })
                    .collect(),
            })
        }
        NodeError::KeyNotInRegion(r) => ServiceError::TryAgain(format!("key left region {r}")),
        NodeError::Dropped(why) => ServiceError::TryAgain(why),
        NodeError::Refused(why) => ServiceError::InvalidArgument(why),
        NodeError::Timeout => ServiceError::Timeout,
        NodeError::Stopped => ServiceError::TryAgain("node is stopping".into()),
        NodeError::Storage(why) => ServiceError::Internal(why),
        // The node reopens its storage by itself (a full disk once space is freed): the same
        // request may succeed later, here or through another node. What to fix is in the
        // message: `TRYAGAIN storage unavailable: disk full (No space left on device); retry`.
        e @ (NodeError::DiskFull(_) | NodeError::StorageUnavailable(_)) => {
            ServiceError::TryAgain(e.to_string())
        }
    }
}

/// The node's form of a client's route.
fn expected(route: ClientRoute) -> Option<node::ExpectedRoute> {
    route.map(|r| node::ExpectedRoute {
        region_id: r.region_id,
        epoch: node::RegionEpoch {
            conf_ver: r.epoch.conf_ver,
            version: r.epoch.version,
        },
    })
}

fn role(name: &str) -> ReplicaRole {
    match name {
        "leader" => ReplicaRole::Leader,
        "candidate" => ReplicaRole::Candidate,
        "pre-candidate" => ReplicaRole::PreCandidate,
        _ => ReplicaRole::Follower,
    }
}

struct Inner {
    node: NodeHandle,
    sessions: Arc<SessionPool>,
    status: RwLock<NodeStatus>,
}

/// [`KvService`] and [`StatusSource`] on a node.
#[derive(Clone)]
pub struct NodeService {
    inner: Arc<Inner>,
}

impl NodeService {
    /// A service over `node`; its writes' client ids are `client_id`, `client_id + 1`, …
    /// (one per write in flight; see [`SessionPool`]), so `client_id` must be unique per
    /// process.
    /// Spawns the status refresher on the current tokio runtime.
    pub fn new(node: NodeHandle, client_id: u64) -> Self {
        let status = NodeStatus {
            node_id: node.node_id(),
            ..Default::default()
        };
        let inner = Arc::new(Inner {
            node,
            sessions: SessionPool::new(client_id),
            status: RwLock::new(status),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(inner) = weak.upgrade() {
                if let Ok(regions) = inner.node.status().await {
                    let node_id = inner.node.node_id();
                    let regions = regions
                        .into_iter()
                        .map(|r| region_status(r, node_id))
                        .collect();
                    let snapshots = match inner.node.snapshot_progress().await {
                        Ok(p) => snapshots_status(&p),
                        Err(_) => SnapshotsStatus::default(),
                    };
                    *inner.status.write() = NodeStatus {
                        node_id,
                        regions,
                        snapshots,
                        ..Default::default()
                    };
                }
                drop(inner);
                tokio::time::sleep(STATUS_REFRESH_INTERVAL).await;
            }
        });
        NodeService { inner }
    }

    /// Submits one region's write now (with the client's session, or one of the pool's)
    /// and returns the future of its answer: submitting at call time keeps a pipelining
    /// connection's writes in flight together (see [`KvService`]'s ordering contract).
    fn write(
        &self,
        cmd: KvCommand,
        client: ClientSession,
        route: ClientRoute,
    ) -> impl std::future::Future<Output = Result<KvResponse, ServiceError>> + Send + 'static {
        let inner = self.inner.clone();
        // Held until the write has its answer: every retry carries the same pair. A
        // client's own session is the client's to keep; the pool is not touched.
        let pooled = client.is_none().then(|| inner.sessions.acquire());
        let pair = client.unwrap_or_else(|| pooled.as_ref().expect("acquired").pair());
        let route = expected(route);
        let first = inner.node.submit_write_routed(cmd.clone(), pair, route);
        async move {
            let _session = pooled;
            let mut attempt = 0;
            let mut outcome = first.await;
            loop {
                match outcome {
                    Ok(KvResponse::Failed(why)) => return Err(ServiceError::InvalidArgument(why)),
                    Ok(r) => return Ok(r),
                    Err(NodeError::Dropped(_)) if attempt < DROPPED_RETRIES_MAX => {
                        attempt += 1;
                        tokio::time::sleep(DROPPED_RETRY_PAUSE).await;
                        outcome = inner
                            .node
                            .submit_write_routed(cmd.clone(), pair, route)
                            .await;
                    }
                    // After a dropped attempt (which may still be applied), a retry's "not
                    // leader" must not tell the client "not applied": the outcome is unknown.
                    Err(e) => return Err(service_error(final_error(e, attempt > 0))),
                }
            }
        }
    }

    /// Groups keys by the region that holds them. A routed request is one group: the
    /// client sent it to one region, and the node checks every key against that region.
    fn by_region<T>(
        &self,
        items: Vec<T>,
        route: ClientRoute,
        key: impl Fn(&T) -> &Bytes,
    ) -> Result<Vec<Vec<T>>, ServiceError> {
        if route.is_some() {
            return Ok(vec![items]);
        }
        let mut groups: BTreeMap<u64, Vec<T>> = BTreeMap::new();
        for item in items {
            // This node's replicas first; a region held elsewhere (the node forwards its
            // requests) as the cluster view shows it.
            let node = &self.inner.node;
            let region_id = node
                .regions()
                .route(key(&item))
                .map(|r| r.id)
                .or_else(|| node.cluster().route(key(&item)).map(|r| r.id))
                .ok_or_else(|| ServiceError::TryAgain("no region for the key here".into()))?;
            groups.entry(region_id).or_default().push(item);
        }
        Ok(groups.into_values().collect())
    }
}

/// The `/status` form of the node's snapshots under way.
fn snapshots_status(p: &node::SnapshotProgress) -> SnapshotsStatus {
    SnapshotsStatus {
        building: p.builds.building,
        building_bytes_read: p.builds.bytes_read,
        sending: p.streams.sending,
        sending_bytes_done: p.streams.send_bytes_done,
        sending_bytes_total: p.streams.send_bytes_total,
        receiving: p.streams.receiving,
        receiving_bytes_done: p.streams.receive_bytes_done,
        receiving_bytes_total: p.streams.receive_bytes_total,
    }
}

/// The `/status` form of one of `node_id`'s replicas. Raft reports a learner as a
/// follower; the descriptor tells them apart.
fn region_status(r: node::RegionStatus, node_id: u64) -> RegionStatus {
    let learner = r
        .peers
        .iter()
        .any(|p| p.node_id == node_id && p.role == node::PeerRole::Learner);
    RegionStatus {
        id: r.route.id,
        start_key: r.route.start_key,
        end_key: r.route.end_key,
        epoch: EpochStatus {
            conf_ver: r.route.epoch.conf_ver,
            version: r.route.epoch.version,
        },
        role: if learner {
            ReplicaRole::Learner
        } else {
            role(&r.role)
        },
        term: r.term,
        commit: r.commit,
        applied: r.applied,
        leader: r.route.leader_node,
        peers: r.peers.iter().map(peer_status).collect(),
    }
}

/// The `/status` form of a directory entry.
fn node_status(n: node::NodeInfo) -> ClusterNodeStatus {
    let a = n.entry.addresses;
    ClusterNodeStatus {
        id: n.entry.node_id,
        raft_addr: a.raft_addr.map(|a| a.to_string()),
        client_addr: a.client_addr.map(|a| a.to_string()),
        status_addr: a.status_addr.map(|a| a.to_string()),
        state: n.entry.state.as_str().to_string(),
        alive: n.alive,
        last_heard_ms: n.last_heard.map(|d| d.as_millis() as u64),
        replicas: n.replicas,
        leaders: n.leaders,
        moves: n.moves,
        snapshots: n.snapshots,
        generation: n.entry.generation,
    }
}

/// The `/status` form of a region of the cluster table.
fn cluster_region(r: node::RegionSummary) -> ClusterRegionStatus {
    ClusterRegionStatus {
        id: r.id,
        start_key: r.start_key,
        end_key: r.end_key,
        epoch: EpochStatus {
            conf_ver: r.epoch.conf_ver,
            version: r.epoch.version,
        },
        leader: r.leader_node,
        term: r.term,
        peers: r.peers.iter().map(peer_status).collect(),
    }
}

fn peer_status(p: &node::PeerMeta) -> PeerStatus {
    PeerStatus {
        node: p.node_id,
        peer: p.peer_id,
        role: match p.role {
            node::PeerRole::Voter => MemberRole::Voter,
            node::PeerRole::Learner => MemberRole::Learner,
        },
    }
}

/// [`service_error`] for an admin call naming `region`: a region this node holds no
/// replica of is "not found" (404), not a routing hiccup to retry.
fn admin_error(region: u64, e: NodeError) -> ServiceError {
    match e {
        NodeError::RegionNotFound => ServiceError::RegionNotFound(region),
        e => service_error(e),
    }
}

fn unexpected(r: KvResponse) -> ServiceError {
    ServiceError::Internal(format!("unexpected answer {r:?}"))
}

impl KvService for NodeService {
    fn get(&self, key: Bytes, route: ClientRoute) -> ServiceFuture<Option<Bytes>> {
        let read = self.inner.node.submit_get_routed(key, expected(route));
        Box::pin(async move { read.await.map_err(service_error) })
    }

    fn put(
        &self,
        key: Bytes,
        value: Bytes,
        cond: PutCondition,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<bool> {
        let cond = match cond {
            PutCondition::Always => node::PutCondition::Always,
            PutCondition::IfAbsent => node::PutCondition::IfAbsent,
            PutCondition::IfPresent => node::PutCondition::IfPresent,
        };
        let w = self.write(KvCommand::Put { key, value, cond }, session, route);
        Box::pin(async move {
            match w.await? {
                KvResponse::Written(ok) => Ok(ok),
                other => Err(unexpected(other)),
            }
        })
    }

    fn delete(
        &self,
        keys: Vec<Bytes>,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<u64> {
        let groups = match self.by_region(keys, route, |k| k) {
            Ok(g) => g,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let writes: Vec<_> = groups
            .into_iter()
            .map(|keys| self.write(KvCommand::Delete { keys }, session, route))
            .collect();
        Box::pin(async move {
            let mut n = 0;
            for w in writes {
                match w.await? {
                    KvResponse::Deleted(d) => n += d,
                    other => return Err(unexpected(other)),
                }
            }
            Ok(n)
        })
    }

    fn incr_by(
        &self,
        key: Bytes,
        delta: i64,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<i64> {
        let w = self.write(KvCommand::IncrBy { key, delta }, session, route);
        Box::pin(async move {
            match w.await? {
                KvResponse::Value(v) => Ok(v),
                other => Err(unexpected(other)),
            }
        })
    }

    fn batch_put(
        &self,
        pairs: Vec<(Bytes, Bytes)>,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<()> {
        let groups = match self.by_region(pairs, route, |(k, _)| k) {
            Ok(g) => g,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let writes: Vec<_> = groups
            .into_iter()
            .map(|pairs| self.write(KvCommand::BatchPut { pairs }, session, route))
            .collect();
        Box::pin(async move {
            for w in writes {
                match w.await? {
                    KvResponse::Done => {}
                    other => return Err(unexpected(other)),
                }
            }
            Ok(())
        })
    }

    fn scan(
        &self,
        start: Bytes,
        end: Option<Bytes>,
        limit: usize,
        route: ClientRoute,
    ) -> ServiceFuture<Vec<(Bytes, Bytes)>> {
        let node = self.inner.node.clone();
        // The client's route is for the region where the scan starts; the pages after it
        // are in regions the node finds by itself.
        let mut route = expected(route);
        Box::pin(async move {
            let end = end.unwrap_or_default();
            let mut out = Vec::new();
            let mut from = start;
            // Region by region, in key order, until the limit or the end. Each step goes on
            // from the end the region's scan covered, as the region was when it served the
            // read: a split between routing and serving shortens the region, and going on
            // from the routed end would skip the keys that moved to the new region.
            loop {
                let mut page = node
                    .scan_page_routed(from.clone(), end.clone(), limit - out.len(), route.take())
                    .await
                    .map_err(service_error)?;
                out.append(&mut page.pairs);
                let covered = page.covered_end;
                let done =
                    out.len() >= limit || covered.is_empty() || (!end.is_empty() && covered >= end);
                if done {
                    return Ok(out);
                }
                if covered <= from {
                    return Err(ServiceError::TryAgain(
                        "a region's scan covered nothing; retry".into(),
                    ));
                }
                from = covered;
            }
        })
    }

    fn node_id(&self) -> u64 {
        self.inner.node.node_id()
    }

    fn routes(&self) -> Vec<RouteEntry> {
        self.inner
            .node
            .regions()
            .all()
            .into_iter()
            .map(|r| RouteEntry {
                id: r.id,
                start_key: r.start_key,
                end_key: r.end_key,
                epoch: EpochStatus {
                    conf_ver: r.epoch.conf_ver,
                    version: r.epoch.version,
                },
                leader: r.leader_node,
            })
            .collect()
    }

    fn cluster_routes(&self) -> Vec<RouteEntry> {
        self.cluster_route_entries()
    }
}

impl NodeService {
    /// The cluster's regions as routes (for [`KvService::cluster_routes`]).
    fn cluster_route_entries(&self) -> Vec<RouteEntry> {
        let local = self.inner.node.regions().all();
        self.inner
            .node
            .cluster()
            .regions_with_local(&local)
            .into_iter()
            .map(|r| RouteEntry {
                id: r.id,
                start_key: r.start_key,
                end_key: r.end_key,
                epoch: EpochStatus {
                    conf_ver: r.epoch.conf_ver,
                    version: r.epoch.version,
                },
                leader: r.leader_node,
            })
            .collect()
    }
}

impl StatusSource for NodeService {
    fn merge(&self, source: u64, target: u64) -> ServiceFuture<()> {
        let handle = self.inner.node.clone();
        Box::pin(async move { handle.merge(source, target).await.map_err(service_error) })
    }

    fn split(&self, region: u64, key: Option<Bytes>) -> ServiceFuture<Vec<u64>> {
        let handle = self.inner.node.clone();
        Box::pin(async move { handle.split(region, key).await.map_err(service_error) })
    }

    fn status(&self) -> NodeStatus {
        let mut status = self.inner.status.read().clone();
        // The cluster view is cheap to read: always current.
        let cluster = self.inner.node.cluster();
        status.nodes = cluster.nodes().into_iter().map(node_status).collect();
        status.cluster_regions = cluster.regions().into_iter().map(cluster_region).collect();
        status
    }

    fn add_node(&self, req: AddNodeRequest) -> ServiceFuture<Vec<NodeEntry>> {
        let cluster = self.inner.node.cluster().clone();
        Box::pin(async move {
            if let Some(id) = req.cluster_id {
                if id != cluster.cluster_id() {
                    return Err(ServiceError::InvalidArgument(format!(
                        "cluster id mismatch: this cluster is {}, the joining node was configured with {id}",
                        cluster.cluster_id()
                    )));
                }
            }
            cluster
                .add_node(req.id, req.addresses, req.cluster_id.is_some())
                .map_err(service_error)
        })
    }

    fn remove_node(&self, node: u64) -> ServiceFuture<NodeEntry> {
        let cluster = self.inner.node.cluster().clone();
        Box::pin(async move { cluster.remove_node(node).map_err(service_error) })
    }

    fn add_learner(&self, region: u64, node: u64) -> ServiceFuture<u64> {
        let handle = self.inner.node.clone();
        Box::pin(async move {
            handle
                .add_learner(region, node)
                .await
                .map_err(|e| admin_error(region, e))
        })
    }

    fn remove_replica(&self, region: u64, node: u64) -> ServiceFuture<()> {
        let handle = self.inner.node.clone();
        Box::pin(async move {
            handle
                .remove_replica(region, node)
                .await
                .map_err(|e| admin_error(region, e))
        })
    }

    fn move_replica(&self, region: u64, from: u64, to: u64, joint: bool) -> ServiceFuture<()> {
        let handle = self.inner.node.clone();
        // A move takes several membership changes; it runs as a task of its own so that a
        // caller giving up (an HTTP client's timeout) does not stop it between two steps.
        let task = tokio::spawn(async move {
            let moved = if joint {
                handle.replace_voter(region, from, to).await
            } else {
                handle.move_replica(region, from, to).await
            };
            moved.map_err(|e| admin_error(region, e))
        });
        Box::pin(async move {
            task.await
                .map_err(|e| ServiceError::Internal(format!("replica move task: {e}")))?
        })
    }

    fn transfer_leader(&self, region: u64, node: u64) -> ServiceFuture<()> {
        let handle = self.inner.node.clone();
        Box::pin(async move {
            handle
                .transfer_leader(region, node)
                .await
                .map_err(service_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::reply::Reply;

    /// `/status` lists every peer with its role, and a replica the descriptor names a
    /// learner shows as one (raft itself reports it as a follower).
    #[test]
    fn status_shows_peers_and_learners() {
        let peers = vec![
            node::PeerMeta {
                peer_id: 65_537,
                node_id: 1,
                role: node::PeerRole::Voter,
            },
            node::PeerMeta {
                peer_id: node::MEMBER_PEER_ID_BIT | 4,
                node_id: 4,
                role: node::PeerRole::Learner,
            },
        ];
        let raw = node::RegionStatus {
            route: node::RegionRoute {
                id: 1,
                start_key: Bytes::new(),
                end_key: Bytes::new(),
                epoch: node::RegionEpoch {
                    conf_ver: 2,
                    version: 1,
                },
                leader_node: Some(1),
                voter_nodes: vec![1],
                merging_into: None,
            },
            role: "follower".into(),
            term: 3,
            commit: 9,
            applied: 9,
            peers,
        };
        let on_4 = region_status(raw.clone(), 4);
        assert_eq!(on_4.role, ReplicaRole::Learner);
        assert_eq!(
            on_4.peers,
            vec![
                PeerStatus {
                    node: 1,
                    peer: 65_537,
                    role: MemberRole::Voter
                },
                PeerStatus {
                    node: 4,
                    peer: node::MEMBER_PEER_ID_BIT | 4,
                    role: MemberRole::Learner
                },
            ]
        );
        assert_eq!(region_status(raw, 1).role, ReplicaRole::Follower);
    }

    /// A client of a node whose disk is full hears so, with the code Redis clients retry on.
    #[test]
    fn a_full_disk_answers_tryagain_naming_it() {
        let e = service_error(NodeError::StorageUnavailable(
            "disk full (No space left on device)".into(),
        ));
        assert_eq!(
            Reply::from_service_error(&e),
            Reply::Error(
                "TRYAGAIN storage unavailable: disk full (No space left on device); retry".into()
            )
        );
        assert!(e.is_retryable());
    }
}
