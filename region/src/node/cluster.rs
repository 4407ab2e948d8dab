//! The cluster layer of a node: the node directory, gossip, and the global region table.
//!
//! [`ClusterView`] is the shared, cheaply readable state (the directory, when each node was
//! last heard from, every region of the cluster); the cluster thread ([`start`], run by
//! `Node::start`) sends every `gossip_interval` a [`Gossip`] to every other node that is not
//! removed, and merges what it receives. Any component can send a [`NodeMessage`] with
//! [`ClusterView::send`] and receive the ones addressed to this node with
//! [`ClusterView::subscribe`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flotilla_common::RaftEnvelope;
use flotilla_transport::Transport;
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::balancer::{ActiveMoves, BalancerConfig};
use super::directory::{NodeAddresses, NodeDirectory, NodeEntry, NodeState, SharedDirectory};
use super::error::NodeError;
use super::forward::{ForwardRequest, Forwarder};
use super::metrics::NODE_MESSAGES_MALFORMED_TOTAL;
use super::node_message::{Gossip, NodeMessage, RegionSummary};
use super::region_table::RegionTable;
use super::store::{RegionRoute, RegionStatus, StoreMsg};

/// Where the cluster thread hands requests forwarded to this node: (asking node, its id of
/// the request, the request).
pub(crate) type ForwardSender = tokio::sync::mpsc::Sender<(u64, u64, ForwardRequest)>;

/// Forwarded requests queued for serving, at most; more are refused (`Dropped`).
pub const FORWARD_QUEUE_MAX: usize = 4096;

/// Gossip intervals without a word from a node after which it counts as not alive.
pub const ALIVE_INTERVALS: u32 = 3;
/// A malformed node message is logged at `warn` at most once per this long (else `debug`).
pub const MALFORMED_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Node messages queued for one subscriber, at most; more are dropped for it.
pub const SUBSCRIBER_QUEUE_MAX: usize = 1024;

/// The cluster layer's settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How often this node gossips to every other node.
    pub gossip_interval: Duration,
    /// This node's own addresses (it is their authority).
    pub addresses: NodeAddresses,
    /// The directory a new data directory starts from (the initial cluster's nodes, or
    /// what the node it joined through answered). Ignored once `<data_dir>/nodes` exists.
    pub seed: Vec<NodeEntry>,
    /// The node joined a running cluster (`--join`) instead of bootstrapping one.
    pub joined: bool,
    /// The cluster's id (a joining node must name the same).
    pub cluster_id: u64,
    /// The balancer (replica placement, draining, re-replication); off by default, so a
    /// node embedded in a test moves nothing by itself. `flotilla server` turns it on.
    pub balancer: BalancerConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            gossip_interval: Duration::from_secs(1),
            addresses: NodeAddresses::default(),
            seed: Vec::new(),
            joined: false,
            cluster_id: 1,
            balancer: BalancerConfig::default(),
        }
    }
}

/// One node as the cluster view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its directory entry.
    pub entry: NodeEntry,
    /// How long ago its last gossip arrived (zero for this node; `None`: never).
    pub last_heard: Option<Duration>,
    /// Heard from within [`ALIVE_INTERVALS`] gossip intervals (this node: always).
    pub alive: bool,
    /// Replicas on it, as its last gossip said.
    pub replicas: u64,
    /// Regions it leads, as its last gossip said.
    pub leaders: u64,
    /// Replica moves it is carrying out for the balancer, as its last gossip said.
    pub moves: u64,
    /// Snapshot streams it is sending or receiving, as its last gossip said.
    pub snapshots: u64,
}

/// What was last heard from a node.
#[derive(Debug, Clone, Copy)]
struct Heard {
    at: Instant,
    replicas: u64,
    leaders: u64,
    moves: u64,
    snapshots: u64,
}

/// The cluster as this node knows it; shared (`Arc`) between the cluster thread, the
/// store (node states) and request handlers.
pub struct ClusterView {
    node_id: u64,
    cluster_id: u64,
    interval: Duration,
    own: NodeAddresses,
    /// Raft addresses given for other nodes in this node's own configuration (its
    /// `--initial-cluster`): they are how this node reaches them (through a proxy, a NAT),
    /// so what a node says of its own address never replaces them.
    pinned: std::collections::BTreeMap<u64, std::net::SocketAddr>,
    data_dir: PathBuf,
    directory: SharedDirectory,
    transport: Arc<dyn Transport>,
    heard: RwLock<HashMap<u64, Heard>>,
    own_counts: RwLock<(u64, u64)>,
    active_moves: ActiveMoves,
    forwarder: Forwarder,
    forward_server: Mutex<Option<ForwardSender>>,
    table: RwLock<RegionTable>,
    subscribers: Mutex<Vec<SyncSender<(u64, NodeMessage)>>>,
    last_malformed_warn: Mutex<Option<Instant>>,
    malformed: metrics::Counter,
}

impl ClusterView {
    /// The view of node `node_id` over `directory` (already loaded), persisting it under
    /// `data_dir`. Makes the transport reach every listed node.
    pub(crate) fn new(
        node_id: u64,
        cfg: &ClusterConfig,
        data_dir: PathBuf,
        directory: SharedDirectory,
        transport: Arc<dyn Transport>,
    ) -> Self {
        let view = ClusterView {
            node_id,
            cluster_id: cfg.cluster_id,
            interval: cfg.gossip_interval,
            own: cfg.addresses,
            pinned: if cfg.joined {
                Default::default()
            } else {
                cfg.seed
                    .iter()
                    .filter(|e| e.node_id != node_id)
                    .filter_map(|e| e.addresses.raft_addr.map(|a| (e.node_id, a)))
                    .collect()
            },
            data_dir,
            directory,
            transport,
            heard: RwLock::new(HashMap::new()),
            own_counts: RwLock::new((0, 0)),
            active_moves: ActiveMoves::default(),
            forwarder: Forwarder::default(),
            forward_server: Mutex::new(None),
            table: RwLock::new(RegionTable::default()),
            subscribers: Mutex::new(Vec::new()),
            last_malformed_warn: Mutex::new(None),
            malformed: metrics::counter!(NODE_MESSAGES_MALFORMED_TOTAL),
        };
        let all = view.directory.read().entries();
        view.reach(&all);
        view
    }

    /// The replica moves this node is carrying out for the balancer (gossiped, shown by
    /// `ctl status`).
    pub fn active_moves(&self) -> &ActiveMoves {
        &self.active_moves
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The cluster's id (as this node was configured).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The gossip interval.
    pub fn gossip_interval(&self) -> Duration {
        self.interval
    }

    /// Every directory entry (by node id).
    pub fn directory(&self) -> Vec<NodeEntry> {
        self.directory.read().entries()
    }

    /// The directory entry of `node_id`.
    pub fn node(&self, node_id: u64) -> Option<NodeEntry> {
        self.directory.read().get(node_id).cloned()
    }

    /// Every node with its liveness and counts (by node id).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let heard = self.heard.read();
        let own = *self.own_counts.read();
        let alive_within = self.interval * ALIVE_INTERVALS;
        self.directory()
            .into_iter()
            .map(|entry| {
                if entry.node_id == self.node_id {
                    return NodeInfo {
                        entry,
                        last_heard: Some(Duration::ZERO),
                        alive: true,
                        replicas: own.0,
                        leaders: own.1,
                        moves: self.active_moves.lock().len() as u64,
                        snapshots: self.own_snapshot_streams(),
                    };
                }
                let h = heard.get(&entry.node_id);
                let age = h.map(|h| h.at.elapsed());
                NodeInfo {
                    alive: age.is_some_and(|a| a < alive_within),
                    last_heard: age,
                    replicas: h.map_or(0, |h| h.replicas),
                    leaders: h.map_or(0, |h| h.leaders),
                    moves: h.map_or(0, |h| h.moves),
                    snapshots: h.map_or(0, |h| h.snapshots),
                    entry,
                }
            })
            .collect()
    }

    /// Every region of the cluster known here, in key order: the newest of what gossip
    /// and this node's own replicas say (this node's view wins a tie).
    pub fn regions(&self) -> Vec<RegionSummary> {
        self.table.read().all()
    }

    /// Every region of the cluster as [`ClusterView::regions`], with `local` (this node's
    /// own routes, always current) merged in where the table has nothing newer: the table
    /// takes this node's replicas in only at each gossip round, so until the first one
    /// after a start, or a split, a client asking for the whole table would miss regions
    /// this node holds. (Merged into a copy; the table itself is unchanged.)
    pub fn regions_with_local(&self, local: &[RegionRoute]) -> Vec<RegionSummary> {
        let mut table = self.table.read().clone();
        for r in local {
            table.merge(
                RegionSummary {
                    id: r.id,
                    start_key: r.start_key.clone(),
                    end_key: r.end_key.clone(),
                    epoch: r.epoch,
                    peers: Vec::new(),
                    leader_node: r.leader_node,
                    term: 0,
                },
                false,
            );
        }
        table.all()
    }

    /// The region holding `key`, with its leader's node, whether or not this node holds
    /// a replica of it.
    pub fn route(&self, key: &[u8]) -> Option<RegionSummary> {
        self.table.read().route(key)
    }

    /// Adds a node (`add-node`; `readdress`: the node registers itself, a `--join`, and
    /// may change its own addresses). Answers the directory afterwards. The entry spreads
    /// by gossip.
    pub fn add_node(
        &self,
        node_id: u64,
        addresses: NodeAddresses,
        readdress: bool,
    ) -> Result<Vec<NodeEntry>, NodeError> {
        if readdress && node_id != self.node_id {
            // A node may change its addresses only while the old ones are silent: a second
            // process with a live node's id must not take its place.
            let alive = self
                .nodes()
                .iter()
                .any(|n| n.entry.node_id == node_id && n.alive);
            let same = self
                .node(node_id)
                .is_some_and(|e| e.addresses.raft_addr == addresses.raft_addr);
            if alive && !same {
                return Err(NodeError::Refused(format!(
                    "node {node_id} is alive at other addresses; stop it before it joins again"
                )));
            }
        }
        self.update(|d| d.add_node(node_id, addresses, readdress))?;
        Ok(self.directory())
    }

    /// Marks a node `Removing` (`remove-node`): it gets no new replicas; a balancer drains
    /// it and then marks it removed. Refused when fewer than three `Up` nodes would remain.
    pub fn remove_node(&self, node_id: u64) -> Result<NodeEntry, NodeError> {
        self.update(|d| d.remove_node(node_id))?;
        self.node(node_id)
            .ok_or_else(|| NodeError::Storage(format!("node {node_id} left the directory")))
    }

    /// Marks a drained (`Removing`) node `Removed`: terminal; its id is retired.
    pub fn mark_removed(&self, node_id: u64) -> Result<(), NodeError> {
        self.update(|d| d.mark_removed(node_id))
    }

    /// Applies one change to the directory: persisted and made reachable if it changed.
    fn update(
        &self,
        change: impl FnOnce(&mut NodeDirectory) -> Result<Option<NodeEntry>, NodeError>,
    ) -> Result<(), NodeError> {
        let mut d = self.directory.write();
        let Some(e) = change(&mut d)? else {
            return Ok(());
        };
        d.save(&self.data_dir)?;
        drop(d);
        info!(node = self.node_id, changed = ?e, "node directory changed");
        self.reach(&[e]);
        Ok(())
    }

    /// Tells the transport about `entries`: their raft addresses, removed nodes gone.
    fn reach(&self, entries: &[NodeEntry]) {
        for e in entries.iter().filter(|e| e.node_id != self.node_id) {
            if e.state == NodeState::Removed {
                self.transport.remove_peer(e.node_id);
            } else if let Some(&a) = self.pinned.get(&e.node_id) {
                self.transport.add_peer(e.node_id, a);
            } else if let Some(a) = e.addresses.raft_addr {
                self.transport.add_peer(e.node_id, a);
            }
        }
    }

    /// Sends `msg` to node `to` (over the raft connection, in order with its other traffic).
    pub fn send(&self, to: u64, msg: &NodeMessage) -> Result<(), NodeError> {
        let env = msg
            .to_envelope(self.node_id, to)
            .map_err(|e| NodeError::Storage(format!("node message: {e}")))?;
        self.transport
            .send(env)
            .map_err(|e| NodeError::Dropped(format!("node message to node {to}: {e}")))
    }

    /// A channel of every node message this node receives, with its sender's id, after
    /// the cluster layer took in what it needs (gossip included). A subscriber that falls
    /// [`SUBSCRIBER_QUEUE_MAX`] messages behind misses the newer ones; one that drops its
    /// receiver is forgotten.
    pub fn subscribe(&self) -> Receiver<(u64, NodeMessage)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(SUBSCRIBER_QUEUE_MAX);
        self.subscribers.lock().push(tx);
        rx
    }

    /// Takes in a node message from `from_node` (what the inbound thread hands over). A
    /// payload that does not decode is counted, logged (rate-limited) and dropped.
    pub(crate) fn receive(&self, from_node: u64, env: &RaftEnvelope) {
        let msg = match NodeMessage::from_envelope(env) {
            Ok(m) => m,
            Err(e) => {
                self.malformed.increment(1);
                let mut last = self.last_malformed_warn.lock();
                if last.is_none_or(|t| t.elapsed() >= MALFORMED_WARN_INTERVAL) {
                    *last = Some(Instant::now());
                    warn!(node = self.node_id, from_node, error = %e, "dropped a malformed node message");
                } else {
                    debug!(node = self.node_id, from_node, error = %e, "dropped a malformed node message");
                }
                return;
            }
        };
        let msg = match msg {
            // Forwarded requests and their answers go straight where they are awaited.
            NodeMessage::ForwardReply { id, answer } => {
                self.forwarder.complete(id, answer);
                return;
            }
            NodeMessage::Forward { id, request } => {
                self.take_forward(from_node, id, request);
                return;
            }
            m => m,
        };
        match &msg {
            NodeMessage::Gossip(g) => self.take_gossip(from_node, g),
            NodeMessage::Forward { .. } | NodeMessage::ForwardReply { .. } => {}
            // The balancer's orders and reports: for the balancer thread, a subscriber.
            NodeMessage::MoveReplica { .. }
            | NodeMessage::TransferLeader { .. }
            | NodeMessage::RemoveReplica { .. }
            | NodeMessage::AddReplica { .. }
            | NodeMessage::MoveDone { .. } => {}
        }
        self.subscribers.lock().retain(|s| {
            !matches!(
                s.try_send((from_node, msg.clone())),
                Err(std::sync::mpsc::TrySendError::Disconnected(_))
            )
        });
    }

    /// Hands a request forwarded by `from_node` to the node's server of forwarded requests
    /// (started with the balancer); answers at once when there is none or it is full.
    fn take_forward(&self, from_node: u64, id: u64, request: ForwardRequest) {
        let refused = match &*self.forward_server.lock() {
            None => Some(NodeError::Stopped),
            Some(tx) => match tx.try_send((from_node, id, request)) {
                Ok(()) => None,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Some(NodeError::Dropped(
                    "node is overloaded (forwarded requests)".into(),
                )),
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Some(NodeError::Stopped),
            },
        };
        if let Some(e) = refused {
            let reply = NodeMessage::ForwardReply { id, answer: Err(e) };
            if let Err(e) = self.send(from_node, &reply) {
                debug!(
                    node = self.node_id,
                    from_node, "forward refusal not sent: {e}"
                );
            }
        }
    }

    /// Snapshot streams this node is sending or receiving now.
    fn own_snapshot_streams(&self) -> u64 {
        let s = self.transport.snapshot_streams();
        s.sending + s.receiving
    }

    /// The requests this node forwarded and waits for.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Registers where requests forwarded to this node go (replacing any before).
    pub(crate) fn serve_forwards(&self, tx: ForwardSender) {
        *self.forward_server.lock() = Some(tx);
    }

    fn take_gossip(&self, from_node: u64, g: &Gossip) {
        self.heard.write().insert(
            from_node,
            Heard {
                at: Instant::now(),
                replicas: g.replicas,
                leaders: g.leaders,
                moves: g.moves,
                snapshots: g.snapshots,
            },
        );
        let changed = {
            let mut d = self.directory.write();
            let mut changed = d.merge(g.directory.iter().cloned());
            if !changed.is_empty() {
                // Someone wrote this node's entry with other addresses: its own win.
                match d.assert_own(self.node_id, self.own) {
                    Ok(Some(e)) => changed.push(e),
                    Ok(None) => {}
                    Err(e) => warn!(node = self.node_id, "{e}"),
                }
                if let Err(e) = d.save(&self.data_dir) {
                    warn!(node = self.node_id, error = %e, "node directory not saved");
                }
            }
            changed
        };
        if !changed.is_empty() {
            debug!(
                node = self.node_id,
                from_node,
                ?changed,
                "node directory merged"
            );
            self.reach(&changed);
        }
        let mut t = self.table.write();
        for r in &g.regions {
            t.merge(r.clone(), false);
        }
    }

    /// Takes in this node's own replicas (each gossip round): counts, and their view of
    /// their regions, which wins ties in the table. Answers the summaries of the regions
    /// this node leads.
    fn take_local(&self, local: &[RegionStatus]) -> Vec<RegionSummary> {
        let mut led = Vec::new();
        let mut t = self.table.write();
        for r in local {
            let s = summary(r);
            if r.role == "leader" {
                led.push(s.clone());
            }
            t.merge(s, true);
        }
        *self.own_counts.write() = (local.len() as u64, led.len() as u64);
        led
    }

    /// One gossip round: this node's view to every other node that is not removed.
    fn gossip(&self, local: &[RegionStatus]) {
        let regions = self.take_local(local);
        let (replicas, leaders) = *self.own_counts.read();
        let directory = self.directory();
        let msg = NodeMessage::Gossip(Gossip {
            directory: directory.clone(),
            regions,
            replicas,
            leaders,
            moves: self.active_moves.lock().len() as u64,
            snapshots: self.own_snapshot_streams(),
        });
        for e in directory {
            if e.node_id == self.node_id
                || e.state == NodeState::Removed
                || !self.transport.knows(e.node_id)
            {
                continue;
            }
            if let Err(err) = self.send(e.node_id, &msg) {
                debug!(node = self.node_id, to = e.node_id, error = %err, "gossip not sent");
            }
        }
    }
}

/// The cluster layer's summary of a replica's view of its region.
fn summary(r: &RegionStatus) -> RegionSummary {
    RegionSummary {
        id: r.route.id,
        start_key: r.route.start_key.clone(),
        end_key: r.route.end_key.clone(),
        epoch: r.route.epoch,
        peers: r.peers.clone(),
        leader_node: r.route.leader_node,
        term: if r.route.leader_node.is_some() {
            r.term
        } else {
            0
        },
    }
}

/// What the cluster thread is handed.
pub(crate) enum ClusterInput {
    /// A node message from `from_node`.
    Message(u64, RaftEnvelope),
    /// Stop the thread.
    Stop,
}

/// Loads the directory of a node from `<data_dir>/nodes`, or seeds it (first start): the
/// seed entries, an address-less entry for each initial node not among them, and this
/// node's own entry with its addresses. Persists it. A removed node is refused.
pub(crate) fn open_directory(
    node_id: u64,
    cfg: &ClusterConfig,
    initial_nodes: &[u64],
    data_dir: &std::path::Path,
) -> Result<SharedDirectory, NodeError> {
    let mut d = match NodeDirectory::load(data_dir)? {
        Some(d) => d,
        None => {
            let mut d = NodeDirectory::from_entries(cfg.seed.iter().cloned());
            for &n in initial_nodes {
                if d.get(n).is_none() {
                    d.merge_entry(NodeEntry::new(n, NodeAddresses::default()));
                }
            }
            d
        }
    };
    d.assert_own(node_id, cfg.addresses)?;
    d.save(data_dir)?;
    Ok(Arc::new(RwLock::new(d)))
}

/// Starts the cluster thread: gossips every interval (with this node's replicas, asked of
/// the store through `store`), takes in the node messages `rx` brings.
pub(crate) fn start(
    view: Arc<ClusterView>,
    rx: Receiver<ClusterInput>,
    store: SyncSender<StoreMsg>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("cluster-{}", view.node_id))
        .spawn(move || {
            let mut next = Instant::now();
            loop {
                let now = Instant::now();
                if now >= next {
                    let local = local_status(&store);
                    view.gossip(&local);
                    next = now + view.interval;
                }
                match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Ok(ClusterInput::Message(from, env)) => view.receive(from, &env),
                    Ok(ClusterInput::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {}
                }
            }
        })
}

/// This node's replicas, from the store (none if it does not answer).
fn local_status(store: &SyncSender<StoreMsg>) -> Vec<RegionStatus> {
    let (reply, rx) = oneshot::channel();
    if store.try_send(StoreMsg::Status { reply }).is_err() {
        return Vec::new();
    }
    rx.blocking_recv().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use flotilla_common::{Message, MessageKind};
    use flotilla_transport::MemoryNetwork;

    fn view(dir: &std::path::Path) -> (ClusterView, MemoryNetwork) {
        let net = MemoryNetwork::new(1);
        let (t, _rx) = net.join(1, 16);
        let cfg = ClusterConfig::default();
        let d = open_directory(1, &cfg, &[1, 2, 3], dir).unwrap();
        (
            ClusterView::new(1, &cfg, dir.to_path_buf(), d, Arc::new(t)),
            net,
        )
    }

    /// A transport that only records the addresses it is given.
    #[derive(Default)]
    struct Addresses(Mutex<HashMap<u64, std::net::SocketAddr>>);

    impl Transport for Addresses {
        fn node_id(&self) -> u64 {
            1
        }
        fn add_peer(&self, node_id: u64, addr: std::net::SocketAddr) {
            self.0.lock().insert(node_id, addr);
        }
        fn remove_peer(&self, node_id: u64) {
            self.0.lock().remove(&node_id);
        }
        fn knows(&self, node_id: u64) -> bool {
            self.0.lock().contains_key(&node_id)
        }
        fn send(&self, _: RaftEnvelope) -> Result<(), flotilla_transport::SendError> {
            Ok(())
        }
        fn send_snapshot(&self, _: RaftEnvelope) -> Result<(), flotilla_transport::SendError> {
            Ok(())
        }
    }

    #[test]
    fn an_address_from_the_nodes_own_configuration_is_never_replaced_by_gossip() {
        let dir = tempfile::tempdir().unwrap();
        let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        let with_raft = |n: u64, p: u16| {
            NodeEntry::new(
                n,
                NodeAddresses {
                    raft_addr: Some(addr(p)),
                    ..Default::default()
                },
            )
        };
        // Node 1 reaches node 2 through a proxy at port 9102; node 4 is not configured.
        let cfg = ClusterConfig {
            seed: vec![with_raft(1, 9001), with_raft(2, 9102)],
            ..Default::default()
        };
        let d = open_directory(1, &cfg, &[1, 2], dir.path()).unwrap();
        let t = Arc::new(Addresses::default());
        let v = ClusterView::new(1, &cfg, dir.path().to_path_buf(), d, t.clone());
        assert_eq!(t.0.lock().get(&2), Some(&addr(9102)));
        // Node 2 says it is at 9002 (its real address), node 4 at 9004.
        let mut two = with_raft(2, 9002);
        two.generation = 7;
        let g = NodeMessage::Gossip(Gossip {
            directory: vec![two, with_raft(4, 9004)],
            regions: vec![],
            replicas: 0,
            leaders: 0,
            moves: 0,
            snapshots: 0,
        });
        v.receive(2, &g.to_envelope(2, 1).unwrap());
        assert_eq!(v.node(2).unwrap().addresses.raft_addr, Some(addr(9002)));
        assert_eq!(
            t.0.lock().get(&2),
            Some(&addr(9102)),
            "still through the proxy"
        );
        assert_eq!(
            t.0.lock().get(&4),
            Some(&addr(9004)),
            "a node learned by gossip"
        );
    }

    /// Before the first gossip round has taken in this node's replicas, the whole-cluster
    /// table still lists them (a client connecting then got an empty table); a newer
    /// entry from gossip is not replaced by an older local one; the table is not changed.
    #[test]
    fn the_cluster_table_lists_this_nodes_regions_before_gossip_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _net) = view(dir.path());
        let route = |id: u64, start: &'static [u8], end: &'static [u8], version: u64| RegionRoute {
            id,
            start_key: Bytes::from_static(start),
            end_key: Bytes::from_static(end),
            epoch: super::super::descriptor::RegionEpoch {
                conf_ver: 1,
                version,
            },
            leader_node: Some(1),
            voter_nodes: vec![1, 2, 3],
            merging_into: None,
        };
        assert!(v.regions().is_empty());
        let local = [route(1, b"", b"m", 2), route(2, b"m", b"", 2)];
        let listed = v.regions_with_local(&local);
        assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(listed[0].leader_node, Some(1));
        assert!(v.regions().is_empty(), "the table itself is unchanged");

        // Gossip knows region 2 split further (version 3): the stale local view loses.
        let newer = RegionSummary {
            id: 2,
            start_key: Bytes::from_static(b"m"),
            end_key: Bytes::from_static(b"t"),
            epoch: super::super::descriptor::RegionEpoch {
                conf_ver: 1,
                version: 3,
            },
            peers: vec![],
            leader_node: Some(2),
            term: 5,
        };
        v.table.write().merge(newer.clone(), false);
        let listed = v.regions_with_local(&local);
        assert!(listed.contains(&newer), "{listed:?}");
        assert_eq!(listed.len(), 2, "{listed:?}");
    }

    #[test]
    fn a_malformed_node_message_is_counted_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _net) = view(dir.path());
        let sub = v.subscribe();
        let before = v.directory();
        for junk in [&b""[..], &[0xff; 40][..], &[7, 1, 2][..]] {
            let mut m = Message::new(MessageKind::Node, 0, 0, 0);
            m.context = Bytes::copy_from_slice(junk);
            v.receive(2, &RaftEnvelope::new(0, 2, 1, m));
        }
        assert_eq!(v.directory(), before);
        assert!(sub.try_recv().is_err(), "nothing delivered");
        assert!(
            v.nodes().iter().all(|n| n.entry.node_id == 1 || !n.alive),
            "not heard"
        );
        // A good one is taken in, and delivered to subscribers.
        let g = NodeMessage::Gossip(Gossip {
            directory: vec![NodeEntry::new(4, NodeAddresses::default())],
            regions: vec![],
            replicas: 5,
            leaders: 2,
            moves: 3,
            snapshots: 1,
        });
        v.receive(2, &g.to_envelope(2, 1).unwrap());
        assert_eq!(sub.try_recv().unwrap(), (2, g));
        let n2 = v
            .nodes()
            .into_iter()
            .find(|n| n.entry.node_id == 2)
            .unwrap();
        assert!(n2.alive);
        assert_eq!(
            (n2.replicas, n2.leaders, n2.moves, n2.snapshots),
            (5, 2, 3, 1)
        );
        assert!(v.node(4).is_some(), "gossip spread node 4");
        // And persisted.
        let d = NodeDirectory::load(dir.path()).unwrap().unwrap();
        assert!(d.get(4).is_some());
    }
}
