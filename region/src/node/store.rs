//! The store: every region replica of one node, driven by one loop.
//!
//! Each round of the loop:
//! 1. takes every queued input (raft messages from the transport, client requests, the
//!    tick) and feeds it to the replica it is for;
//! 2. takes a Ready from every replica that has one; sends the messages that may leave at
//!    once (a leader's appends);
//! 3. writes the entries and hard states of **all** replicas to the shared raft log as one
//!    batch with one fdatasync (group commit);
//! 4. sends the messages that promise durability (votes, acknowledgements);
//! 5. applies the committed entries of all replicas to RocksDB in one WriteBatch that also
//!    records every touched region's applied index, then answers the waiting clients;
//! 6. serves reads whose read index is now applied.
//!
//! DESIGN.md puts every region in its own actix actor. One loop per node that owns all
//! replicas batches naturally (a round *is* the group of Readies to commit together) and
//! costs no message hop per region; see docs/architecture.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use flotilla_common::{codec, ConfChange, EntryKind, HardState, MessageKind, RaftEnvelope};
use flotilla_engine::{
    ApplyRound, KeyRange, KvStore, LogBatch, RaftLog, RegionBatch, SnapshotMark,
};
use flotilla_transport::{Inbound, PeerEvent, SnapshotStatus, Transport};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::command::{KvCommand, KvResponse, PutCondition};
use super::descriptor::{even_boundaries, PeerMeta, PeerRole, RegionDescriptor, RegionEpoch};
use super::error::NodeError;
use super::metrics::{NodeMetrics, NodeSample, ProposalLatencies};
use super::peer::{
    check_keys, is_command, BatchedProposal, ForwardedProposal, Peer, PendingProposal, PendingRead,
    Reply,
};
use super::peer_storage::{PeerStorage, RegionSnapshotData};
use crate::raft::{self, Command, ReadOnlyOption, Role, SessionOutcome};

/// Inputs handled per round before the Readies are collected, at most: bounds the latency
/// a burst adds to the round that is already under way.
pub const ROUND_INPUTS_MAX: usize = 4096;

/// Ticks between two leader-balancing checks: long enough for the previous transfer to
/// finish and be seen by the other nodes (a transfer takes about one round trip).
pub const BALANCE_INTERVAL_TICKS: u64 = 20;

/// Leadership transfers one node starts per balancing check, at most: enough to undo a
/// large skew within seconds, few enough that nodes acting on each other's slightly stale
/// views do not overshoot far.
pub const BALANCE_TRANSFERS_MAX: usize = 8;

/// How long a follower waits, in election timeouts, to see a command it forwarded to the
/// leader (or a read index it asked the leader for) come back before it gives up and lets
/// the caller retry: the leader drops proposals silently (during a transfer, say).
pub const FORWARD_WAIT_ELECTIONS: u64 = 2;

/// Raft peer ids are `region_id * PEER_ID_NODE_SPAN + node_id`, so node ids must stay
/// below this.
pub const PEER_ID_NODE_SPAN: u64 = 1 << 16;

/// Settings of a node's store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreConfig {
    /// This node's id (1..PEER_ID_NODE_SPAN).
    pub node_id: u64,
    /// Wall-clock length of one raft tick.
    pub tick_interval: Duration,
    /// Election timeout in ticks.
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// Serve reads from a leader lease instead of a heartbeat round per read.
    pub lease_reads: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            node_id: 1,
            tick_interval: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
            lease_reads: true,
        }
    }
}

/// A region as seen by request routing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRoute {
    /// The region.
    pub id: u64,
    /// First key.
    pub start_key: Bytes,
    /// End key (empty: unbounded).
    pub end_key: Bytes,
    /// Epoch.
    pub epoch: RegionEpoch,
    /// The node hosting its leader, if known.
    pub leader_node: Option<u64>,
    /// The nodes hosting its voting replicas.
    pub voter_nodes: Vec<u64>,
}

/// A region replica's state, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionStatus {
    /// Routing view.
    pub route: RegionRoute,
    /// This replica's role.
    pub role: String,
    /// Raft term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
}

/// Key → region routing table of one node, shared with the request handlers.
#[derive(Debug, Default)]
pub struct RegionMap {
    by_start: RwLock<BTreeMap<Bytes, RegionRoute>>,
}

impl RegionMap {
    /// The region whose range holds `key`.
    pub fn route(&self, key: &[u8]) -> Option<RegionRoute> {
        let map = self.by_start.read();
        use std::ops::Bound;
        let upper: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Unbounded, Bound::Included(key));
        let (_, r) = map.range::<[u8], _>(upper).next_back()?;
        (r.end_key.is_empty() || key < r.end_key.as_ref()).then(|| r.clone())
    }

    /// Every region, in key order.
    pub fn all(&self) -> Vec<RegionRoute> {
        self.by_start.read().values().cloned().collect()
    }

    fn update(&self, r: RegionRoute) {
        self.by_start.write().insert(r.start_key.clone(), r);
    }
}

/// What the store's loop is asked to do.
pub enum StoreMsg {
    /// Traffic from the transport.
    Inbound(Inbound),
    /// A write through the log.
    Propose {
        /// The region.
        region_id: u64,
        /// The client's session (id, sequence): retries with the same pair apply once.
        session: (u64, u64),
        /// The write.
        cmd: KvCommand,
        /// Where the answer goes.
        reply: Reply<KvResponse>,
    },
    /// A linearizable read of one key.
    Get {
        /// The region.
        region_id: u64,
        /// The key.
        key: Bytes,
        /// Where the value goes.
        reply: Reply<Option<Bytes>>,
    },
    /// A linearizable read of a key range within one region.
    Scan {
        /// The region.
        region_id: u64,
        /// First key.
        start: Bytes,
        /// End key (empty: the region's end).
        end: Bytes,
        /// Pairs, at most.
        limit: usize,
        /// Where the pairs go.
        reply: Reply<Vec<(Bytes, Bytes)>>,
    },
    /// Move a region's leadership to `to_node`.
    TransferLeader {
        /// The region.
        region_id: u64,
        /// The node to lead it.
        to_node: u64,
        /// Done (the transfer itself finishes asynchronously).
        reply: Reply<()>,
    },
    /// Report every replica's state.
    Status {
        /// Where the report goes.
        reply: oneshot::Sender<Vec<RegionStatus>>,
    },
    /// Stop the loop.
    Stop,
}

/// The raft peer id of `node_id`'s replica of a bootstrap region.
pub fn bootstrap_peer_id(region_id: u64, node_id: u64) -> u64 {
    region_id * PEER_ID_NODE_SPAN + node_id
}

/// The store of one node.
pub struct Store {
    cfg: StoreConfig,
    peers: BTreeMap<u64, Peer>,
    log: Arc<dyn RaftLog>,
    kv: Arc<KvStore>,
    transport: Arc<dyn Transport>,
    rx: Receiver<StoreMsg>,
    regions: Arc<RegionMap>,
    next_read_ctx: u64,
    stopping: bool,
    ticks: u64,
    metrics: NodeMetrics,
    /// When the current round took its first input: the receive time of its writes.
    round_started: Instant,
    /// Receive times of the writes answered in the current round.
    latencies: ProposalLatencies,
}

/// Writes the first regions of a new cluster: `regions` regions evenly splitting the key
/// space, each replicated on every node of `nodes`. Idempotent on the same inputs; an
/// error if the data directory already holds a different cluster.
pub fn bootstrap(
    log: &dyn RaftLog,
    kv: &KvStore,
    nodes: &[u64],
    regions: usize,
) -> Result<(), NodeError> {
    let storage = |e: flotilla_engine::EngineError| NodeError::Storage(e.to_string());
    if !log.regions().is_empty() {
        let existing = log.regions().len();
        if existing != regions {
            return Err(NodeError::Storage(format!(
                "data directory already holds {existing} regions, but {regions} were asked to be bootstrapped"
            )));
        }
        return Ok(());
    }
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() || sorted.iter().any(|&n| n == 0 || n >= PEER_ID_NODE_SPAN) {
        return Err(NodeError::Storage(format!(
            "bad node ids for bootstrap: {nodes:?}"
        )));
    }
    let bounds = even_boundaries(regions);
    let mut round = ApplyRound::new();
    let mut batch = LogBatch::new();
    for i in 0..regions.max(1) {
        let id = i as u64 + 1;
        let desc = RegionDescriptor {
            id,
            start_key: if i == 0 {
                Bytes::new()
            } else {
                bounds[i - 1].clone()
            },
            end_key: bounds.get(i).cloned().unwrap_or_default(),
            epoch: RegionEpoch {
                conf_ver: 1,
                version: 1,
            },
            peers: sorted
                .iter()
                .map(|&n| PeerMeta {
                    peer_id: bootstrap_peer_id(id, n),
                    node_id: n,
                    role: PeerRole::Voter,
                })
                .collect(),
        };
        round.set_descriptor(id, desc.encode());
        round.set_applied(id, 0);
        batch.push(RegionBatch::new(id).with_hard_state(HardState::default()));
    }
    kv.apply(round).map_err(storage)?;
    kv.sync().map_err(storage)?;
    log.write(batch).map_err(storage)?;
    Ok(())
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

/// Per-round overlay of writes not yet in RocksDB, so commands in one apply round see the
/// effects of those before them.
struct ApplyContext<'a> {
    kv: &'a KvStore,
    round: ApplyRound,
    overlay: std::collections::HashMap<Bytes, Option<Bytes>>,
}

impl ApplyContext<'_> {
    fn read(&self, key: &Bytes) -> Result<Option<Bytes>, NodeError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.kv
            .get(key)
            .map(|v| v.map(Bytes::from))
            .map_err(|e| NodeError::Storage(e.to_string()))
    }

    fn put(&mut self, region: u64, key: Bytes, value: Bytes) {
        self.round.put(region, key.clone(), value.clone());
        self.overlay.insert(key, Some(value));
    }

    fn delete(&mut self, region: u64, key: Bytes) {
        self.round.delete(region, key.clone());
        self.overlay.insert(key, None);
    }

    fn exec(&mut self, region: u64, cmd: KvCommand) -> Result<KvResponse, NodeError> {
        Ok(match cmd {
            KvCommand::Put { key, value, cond } => {
                // Only a conditional put needs to read the key first.
                let ok = match cond {
                    PutCondition::Always => true,
                    PutCondition::IfAbsent => self.read(&key)?.is_none(),
                    PutCondition::IfPresent => self.read(&key)?.is_some(),
                };
                if ok {
                    self.put(region, key, value);
                }
                KvResponse::Written(ok)
            }
            KvCommand::Delete { keys } => {
                let mut n = 0;
                for k in keys {
                    if self.read(&k)?.is_some() {
                        n += 1;
                        self.delete(region, k);
                    }
                }
                KvResponse::Deleted(n)
            }
            KvCommand::IncrBy { key, delta } => {
                let cur = match self.read(&key)? {
                    None => 0,
                    Some(v) => match std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => return Ok(KvResponse::Failed("value is not an integer".into())),
                    },
                };
                let Some(next) = cur.checked_add(delta) else {
                    return Ok(KvResponse::Failed("increment would overflow".into()));
                };
                self.put(region, key, Bytes::from(next.to_string()));
                KvResponse::Value(next)
            }
            KvCommand::BatchPut { pairs } => {
                for (k, v) in pairs {
                    self.put(region, k, v);
                }
                KvResponse::Done
            }
        })
    }
}

impl Store {
    /// Opens the store over a node's engine: every region found in the log whose
    /// descriptor lists a replica on this node gets one. Returns the store (run it with
    /// [`Store::run`]), the sender of its inputs and its routing table.
    pub fn open(
        cfg: StoreConfig,
        log: Arc<dyn RaftLog>,
        kv: Arc<KvStore>,
        transport: Arc<dyn Transport>,
    ) -> Result<(Store, Sender<StoreMsg>, Arc<RegionMap>), NodeError> {
        let (tx, rx) = crossbeam::channel::bounded(64 * 1024);
        let regions = Arc::new(RegionMap::default());
        let mut store = Store {
            cfg,
            peers: BTreeMap::new(),
            log,
            kv,
            transport,
            rx,
            regions,
            next_read_ctx: 1,
            stopping: false,
            ticks: 0,
            metrics: NodeMetrics::new(),
            round_started: Instant::now(),
            latencies: ProposalLatencies::default(),
        };
        for region_id in store.log.regions() {
            store.load_region(region_id)?;
        }
        store.sample_gauges();
        info!(
            node = store.cfg.node_id,
            regions = store.peers.len(),
            "store opened"
        );
        let map = store.regions.clone();
        Ok((store, tx, map))
    }

    fn load_region(&mut self, region_id: u64) -> Result<(), NodeError> {
        let ps = PeerStorage::new(region_id, self.log.clone(), self.kv.clone());
        let Some(desc) = ps
            .descriptor()
            .map_err(|e| NodeError::Storage(e.to_string()))?
        else {
            warn!(region_id, "region in the log without a descriptor; skipped");
            return Ok(());
        };
        let Some(me) = desc.peer_on_node(self.cfg.node_id) else {
            info!(region_id, "no replica on this node any more; skipped");
            return Ok(());
        };
        let applied = self.kv.applied_index(region_id);
        let mut rc = raft::Config::new(me.peer_id);
        rc.election_tick = self.cfg.election_ticks;
        rc.heartbeat_tick = self.cfg.heartbeat_ticks;
        rc.applied = applied;
        rc.seed = me.peer_id;
        if self.cfg.lease_reads {
            rc.read_only_option = ReadOnlyOption::LeaseBased;
        }
        let fresh = self.log.hard_state(region_id).term == 0;
        let mut raw = raft::RawNode::new(&rc, ps).map_err(|e| NodeError::Storage(e.to_string()))?;
        // A new cluster spreads its first leaders: region r is first campaigned for by the
        // (r mod n)-th replica, so every node starts out leading about 1/n of the regions.
        let preferred = desc
            .peers
            .get(region_id as usize % desc.peers.len().max(1))
            .map(|p| p.node_id);
        if fresh && preferred == Some(self.cfg.node_id) {
            let _ = raw.campaign();
        }
        let peer = Peer::new(raw, desc, applied);
        self.refresh_route(&peer);
        self.peers.insert(region_id, peer);
        Ok(())
    }

    fn refresh_route(&self, peer: &Peer) {
        self.regions.update(peer.route());
    }

    /// Sets the node's and every region's gauges; once per tick, since it walks every
    /// replica.
    fn sample_gauges(&self) {
        let mut node = NodeSample {
            regions: self.peers.len(),
            ..Default::default()
        };
        for p in self.peers.values() {
            let r = p.raw.raft();
            let leader = r.role() == Role::Leader;
            node.leaders += usize::from(leader);
            node.proposals_pending += p.proposals.len() + p.batched.len();
            node.reads_pending += p.reads_waiting_index.len() + p.reads_waiting_apply.len();
            p.metrics
                .sample(leader, r.term(), r.commit_index(), p.applied);
        }
        self.metrics.sample(&node);
    }

    /// Runs the loop until [`StoreMsg::Stop`] or until every sender is gone.
    pub fn run(mut self) {
        let tick = self.cfg.tick_interval;
        let mut next_tick = Instant::now() + tick;
        while !self.stopping {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = self.rx.recv_timeout(wait);
            self.round_started = Instant::now();
            match first {
                Ok(m) => self.handle(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let mut n = 1;
            while n < ROUND_INPUTS_MAX {
                match self.rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
                n += 1;
            }
            if Instant::now() >= next_tick {
                self.ticks += 1;
                for p in self.peers.values_mut() {
                    p.raw.tick();
                    p.expire(self.ticks);
                }
                self.sample_gauges();
                if self.ticks.is_multiple_of(BALANCE_INTERVAL_TICKS) {
                    self.balance_leaders();
                }
                next_tick += tick;
                if next_tick < Instant::now() {
                    // Fell behind (a long fsync): do not fire a burst of catch-up ticks.
                    next_tick = Instant::now() + tick;
                }
            }
            if let Err(e) = self.round() {
                error!(
                    node = self.cfg.node_id,
                    "storage failure, stopping the store: {e}"
                );
                self.stopping = true;
            }
            self.metrics.round_done(self.round_started);
        }
        for p in self.peers.values_mut() {
            let proposals = p.proposals.len() + p.batched.len();
            let reads = p.reads_waiting_index.len() + p.reads_waiting_apply.len();
            self.metrics
                .proposals_failed(&NodeError::Stopped, proposals as u64);
            self.metrics.reads_failed(reads as u64);
            p.fail_all(NodeError::Stopped);
        }
        info!(node = self.cfg.node_id, "store stopped");
    }

    fn handle(&mut self, m: StoreMsg) {
        match m {
            StoreMsg::Inbound(Inbound::Messages { envelopes, .. }) => {
                for env in envelopes {
                    self.step_envelope(env);
                }
            }
            StoreMsg::Inbound(Inbound::Event(ev)) => self.handle_event(ev),
            StoreMsg::Propose {
                region_id,
                session,
                cmd,
                reply,
            } => self.propose(region_id, session, cmd, reply),
            StoreMsg::Get {
                region_id,
                key,
                reply,
            } => {
                let read = PendingRead::Get {
                    key: key.clone(),
                    reply,
                };
                self.read(region_id, &key, read)
            }
            StoreMsg::Scan {
                region_id,
                start,
                end,
                limit,
                reply,
            } => {
                let read = PendingRead::Scan {
                    start: start.clone(),
                    end,
                    limit,
                    reply,
                };
                self.read(region_id, &start, read)
            }
            StoreMsg::TransferLeader {
                region_id,
                to_node,
                reply,
            } => {
                let r = match self.peers.get_mut(&region_id) {
                    None => Err(NodeError::RegionNotFound),
                    Some(p) => match p.desc.peer_on_node(to_node) {
                        None => Err(NodeError::Dropped(format!(
                            "no replica of region {region_id} on node {to_node}"
                        ))),
                        Some(t) => p
                            .raw
                            .transfer_leader(t.peer_id)
                            .map_err(|e| NodeError::Dropped(e.to_string())),
                    },
                };
                let _ = reply.send(r);
            }
            StoreMsg::Status { reply } => {
                let out = self
                    .peers
                    .values()
                    .map(|p| {
                        let r = p.raw.raft();
                        RegionStatus {
                            route: p.route(),
                            role: role_name(r.role()).into(),
                            term: r.term(),
                            commit: r.commit_index(),
                            applied: p.applied,
                        }
                    })
                    .collect();
                let _ = reply.send(out);
            }
            StoreMsg::Stop => self.stopping = true,
        }
    }

    /// Moves one leadership from this node to the node leading the fewest regions, when
    /// this node leads more than its share. Every node sees each region's leader through
    /// its own replica, so each can judge the balance alone; one transfer per interval per
    /// node keeps them from overshooting on each other's stale views.
    fn balance_leaders(&mut self) {
        let me = self.cfg.node_id;
        let mut led: BTreeMap<u64, usize> = BTreeMap::new();
        for p in self.peers.values() {
            for peer in &p.desc.peers {
                if peer.role == PeerRole::Voter {
                    led.entry(peer.node_id).or_insert(0);
                }
            }
            if let Some(n) = p.leader_node() {
                *led.entry(n).or_insert(0) += 1;
            }
        }
        for _ in 0..BALANCE_TRANSFERS_MAX {
            let mine = led.get(&me).copied().unwrap_or(0);
            let Some((target, target_count)) = led
                .iter()
                .filter(|(&n, _)| n != me)
                .min_by_key(|(_, &c)| c)
                .map(|(&n, &c)| (n, c))
            else {
                return;
            };
            // Balanced, as far as this node can help: within one region of the least loaded.
            if mine <= target_count + 1 {
                return;
            }
            let candidate = self.peers.values_mut().find(|p| {
                p.is_leader()
                    && p.raw.raft().lead_transferee().is_none()
                    && p.desc
                        .peer_on_node(target)
                        .is_some_and(|t| t.role == PeerRole::Voter)
            });
            let Some(p) = candidate else { return };
            let to = p.desc.peer_on_node(target).expect("checked").peer_id;
            info!(
                node = me,
                region = p.desc.id,
                to_node = target,
                "balancing leadership"
            );
            if p.raw.transfer_leader(to).is_err() {
                return;
            }
            *led.entry(me).or_insert(0) -= 1;
            *led.entry(target).or_insert(0) += 1;
        }
    }

    fn step_envelope(&mut self, env: RaftEnvelope) {
        let Some(p) = self.peers.get_mut(&env.region_id) else {
            // Region creation by a message (a new replica) arrives with membership
            // changes; until then an unknown region's traffic is dropped.
            return;
        };
        if let Err(e) = p.raw.step(env.message) {
            warn!(
                region = env.region_id,
                from = env.from_node,
                "raft message refused: {e}"
            );
        }
    }

    fn handle_event(&mut self, ev: PeerEvent) {
        match ev {
            PeerEvent::Unreachable { node_id } => {
                for p in self.peers.values_mut() {
                    if let Some(peer) = p.desc.peer_on_node(node_id) {
                        p.raw.report_unreachable(peer.peer_id);
                    }
                }
            }
            PeerEvent::SnapshotStatus {
                region_id,
                to_peer,
                status,
                ..
            } => {
                if let Some(p) = self.peers.get_mut(&region_id) {
                    p.raw
                        .report_snapshot(to_peer, status == SnapshotStatus::Finished);
                }
            }
            PeerEvent::Connected { .. } => {}
        }
    }

    fn propose(
        &mut self,
        region_id: u64,
        session: (u64, u64),
        cmd: KvCommand,
        reply: Reply<KvResponse>,
    ) {
        self.metrics.proposal_received();
        let Some(p) = self.peers.get_mut(&region_id) else {
            self.metrics.proposals_failed(&NodeError::RegionNotFound, 1);
            let _ = reply.send(Err(NodeError::RegionNotFound));
            return;
        };
        if let Err(e) = check_keys(&p.desc, &cmd) {
            self.metrics.proposals_failed(&e, 1);
            let _ = reply.send(Err(e));
            return;
        }
        // A follower forwards the command to its leader; only a replica that knows no
        // leader (an election is on) turns it away.
        if !p.is_leader() && p.leader_node().is_none() {
            let e = p.not_leader();
            self.metrics.proposals_failed(&e, 1);
            let _ = reply.send(Err(e));
            return;
        }
        let data = Command {
            client_id: session.0,
            seq: session.1,
            payload: Bytes::from(cmd.encode()),
        }
        .encode();
        // Proposed together at the start of the next round: one append per follower per
        // round, not one per request.
        p.batched.push(BatchedProposal {
            data: Bytes::from(data),
            session,
            reply,
            proposed_at: self.round_started,
        });
    }

    /// Ticks a forwarded command or read may wait for its outcome.
    fn forward_wait_ticks(&self) -> u64 {
        FORWARD_WAIT_ELECTIONS * self.cfg.election_ticks as u64
    }

    /// Proposes every region's batched commands as one append each (a leader), or forwards
    /// them to the leader as one message (a follower).
    fn flush_proposals(&mut self) {
        let deadline = self.ticks + self.forward_wait_ticks();
        for p in self.peers.values_mut() {
            if p.batched.is_empty() {
                continue;
            }
            let mut batched = std::mem::take(&mut p.batched);
            if !p.is_leader() {
                let failed = forward(p, batched, deadline);
                if let Some((err, n)) = failed {
                    self.metrics.proposals_failed(&err, n);
                }
                continue;
            }
            let data: Vec<Bytes> = batched
                .iter_mut()
                .map(|b| std::mem::take(&mut b.data))
                .collect();
            let n = data.len() as u64;
            match p.raw.propose_batch(data) {
                Ok(last) => {
                    p.metrics.proposed(n);
                    let term = p.raw.raft().term();
                    for (i, b) in batched.into_iter().enumerate() {
                        let index = last + 1 - n + i as u64;
                        p.proposals.push_back(PendingProposal {
                            term,
                            index,
                            reply: b.reply,
                            proposed_at: b.proposed_at,
                        });
                    }
                }
                Err(e) => {
                    let err = match e {
                        raft::Error::NotLeader { .. } => p.not_leader(),
                        other => NodeError::Dropped(other.to_string()),
                    };
                    self.metrics.proposals_failed(&err, n);
                    for b in batched {
                        let _ = b.reply.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    fn read(&mut self, region_id: u64, key: &[u8], read: PendingRead) {
        let Some(p) = self.peers.get_mut(&region_id) else {
            self.metrics.reads_failed(1);
            read.fail(NodeError::RegionNotFound);
            return;
        };
        if !p.desc.contains(key) {
            self.metrics.reads_failed(1);
            read.fail(NodeError::KeyNotInRegion(region_id));
            return;
        }
        // A follower asks its leader for the read index (raft forwards the request) and
        // serves the read itself once it has applied that far.
        if !p.is_leader() && p.leader_node().is_none() {
            self.metrics.reads_failed(1);
            let e = p.not_leader();
            read.fail(e);
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        match p.raw.read_index(Bytes::copy_from_slice(&ctx.to_le_bytes())) {
            Ok(()) => {
                p.reads_waiting_index.insert(ctx, read);
                if !p.is_leader() {
                    let deadline =
                        self.ticks + FORWARD_WAIT_ELECTIONS * self.cfg.election_ticks as u64;
                    p.read_deadlines.push_back((deadline, ctx));
                }
            }
            Err(e) => {
                self.metrics.reads_failed(1);
                read.fail(NodeError::Dropped(e.to_string()))
            }
        }
    }

    /// Steps 2–6 of the loop (see the module docs).
    fn round(&mut self) -> Result<(), NodeError> {
        let storage = |e: flotilla_engine::EngineError| NodeError::Storage(e.to_string());
        let node_id = self.cfg.node_id;
        self.flush_proposals();
        let mut batch = LogBatch::new();
        let mut readies = Vec::new();
        for (&region_id, p) in self.peers.iter_mut() {
            if !p.raw.has_ready() {
                continue;
            }
            let mut rd = p.raw.ready();
            if let Some(ss) = rd.soft_state {
                // Commands forwarded to a former leader may never be appended.
                p.fail_forwarded(&NodeError::Dropped("the region's leader changed".into()));
                if ss.role != Role::Leader {
                    // Entries of these proposals may still commit under the new leader, so
                    // their outcome is unknown: `Dropped`, never `NotLeader`, which tells a
                    // client the write was not applied (a client without its own session
                    // would then apply it twice by retrying). Retries with the same
                    // session apply once.
                    let err = NodeError::Dropped(format!(
                        "region {region_id}: leadership lost; the write may still be applied"
                    ));
                    self.metrics
                        .proposals_failed(&err, p.proposals.len() as u64);
                    self.metrics
                        .reads_failed(p.reads_waiting_index.len() as u64);
                    for pr in p.proposals.drain(..) {
                        let _ = pr.reply.send(Err(err.clone()));
                    }
                    for (_, r) in p.reads_waiting_index.drain() {
                        r.fail(err.clone());
                    }
                }
                self.regions.update(p.route());
            }
            send_all(
                &*self.transport,
                node_id,
                &p.desc,
                std::mem::take(&mut rd.messages),
            );
            let mut rb = RegionBatch::new(region_id);
            let mut any = false;
            if let Some(snap) = &rd.snapshot {
                let mut data: RegionSnapshotData = codec::decode(&snap.data)
                    .map_err(|e| NodeError::Storage(format!("region {region_id} snapshot: {e}")))?;
                let permit = self
                    .kv
                    .install_snapshot(
                        &data.header,
                        std::mem::take(&mut data.chunks).into_iter().map(Ok),
                    )
                    .map_err(storage)?;
                rb = rb.with_snapshot(
                    SnapshotMark {
                        index: snap.metadata.index,
                        term: snap.metadata.term,
                    },
                    permit,
                );
                any = true;
                if let Some(d) = &data.header.descriptor {
                    if let Ok(desc) = RegionDescriptor::decode(d) {
                        p.desc = desc;
                    }
                }
                p.sessions = raft::SessionTable::new();
                for (client, s) in &data.header.sessions {
                    if let Ok((seq, answer)) = codec::decode::<(u64, Bytes)>(s) {
                        p.sessions.restore(*client, seq, answer);
                    }
                }
                p.applied = snap.metadata.index;
            }
            if !rd.entries.is_empty() {
                // The Ready keeps its entries: `advance` reports them durable to the core.
                rb = rb.with_entries(rd.entries.clone());
                any = true;
            }
            if let Some(hs) = rd.hard_state {
                rb = rb.with_hard_state(hs);
                any = true;
            }
            if any {
                batch.push(rb);
            }
            readies.push((region_id, rd));
        }
        if readies.is_empty() {
            return Ok(());
        }
        // 3. One write, one fdatasync, for every region of this round.
        if !batch.regions.is_empty() {
            let regions = batch.regions.len();
            let started = Instant::now();
            self.log.write(batch).map_err(storage)?;
            self.metrics.log_written(started.elapsed(), regions);
        }
        // 4–5. Durable: acknowledgements may leave; apply everything committed.
        let mut ctx = ApplyContext {
            kv: &self.kv,
            round: ApplyRound::new(),
            overlay: Default::default(),
        };
        let mut answers: Vec<(Reply<KvResponse>, Result<KvResponse, NodeError>)> = Vec::new();
        let apply_started = Instant::now();
        let mut applied_entries = 0;
        for (region_id, rd) in readies.iter_mut() {
            let p = self
                .peers
                .get_mut(region_id)
                .expect("ready of a loaded region");
            send_all(
                &*self.transport,
                node_id,
                &p.desc,
                std::mem::take(&mut rd.persisted_messages),
            );
            let mut commands = 0;
            for e in &rd.committed_entries {
                match e.kind {
                    EntryKind::ConfChange => {
                        if let Ok(cc) = codec::decode::<ConfChange>(&e.data) {
                            if let Ok(cs) = p.raw.apply_conf_change(&cc) {
                                p.apply_membership(&cc, &cs);
                                ctx.round.set_descriptor(*region_id, p.desc.encode());
                            }
                        }
                    }
                    _ if is_command(e.kind, &e.data) => {
                        let (result, session) = apply_command(&mut ctx, p, *region_id, &e.data)?;
                        commands += 1;
                        if let Some(session) = session {
                            if !p.forwarded.is_empty() {
                                p.answer_forwarded(session, &Ok(result.clone()));
                            }
                        }
                        while p.proposals.front().is_some_and(|f| f.index <= e.index) {
                            let f = p.proposals.pop_front().expect("checked");
                            if f.index == e.index && f.term == e.term {
                                self.latencies.push(f.proposed_at);
                                answers.push((f.reply, Ok(result.clone())));
                            } else {
                                let err =
                                    NodeError::Dropped("entry was replaced by a new leader".into());
                                self.metrics.proposals_failed(&err, 1);
                                answers.push((f.reply, Err(err)));
                            }
                        }
                    }
                    _ => {}
                }
                ctx.round.set_applied(*region_id, e.index);
                p.applied = e.index;
            }
            let committed = rd.committed_entries.len() as u64;
            p.metrics.applied(committed, commands);
            applied_entries += committed;
        }
        if !ctx.round.is_empty() {
            self.kv.apply(ctx.round).map_err(storage)?;
        }
        if applied_entries > 0 {
            self.metrics
                .applied(apply_started.elapsed(), applied_entries);
        }
        for (reply, r) in answers {
            let _ = reply.send(r);
        }
        self.metrics
            .proposals_answered(&mut self.latencies, Instant::now());
        // 6. Reads.
        for (region_id, rd) in readies {
            let p = self
                .peers
                .get_mut(&region_id)
                .expect("ready of a loaded region");
            for rs in &rd.read_states {
                let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_ref()) else {
                    continue;
                };
                let id = u64::from_le_bytes(bytes);
                if let Some(r) = p.reads_waiting_index.remove(&id) {
                    p.reads_waiting_apply.insert((rs.index, id), r);
                }
            }
            p.raw.advance(rd);
            let (served, failed) = serve_reads(&self.kv, p);
            self.metrics.reads_served(served);
            self.metrics.reads_failed(failed);
        }
        Ok(())
    }
}

/// Applies one command entry; returns its answer and its client session (if the entry
/// decoded far enough to name one).
fn apply_command(
    ctx: &mut ApplyContext<'_>,
    p: &mut Peer,
    region_id: u64,
    data: &[u8],
) -> Result<(KvResponse, Option<(u64, u64)>), NodeError> {
    let Ok(command) = Command::decode(data) else {
        return Ok((KvResponse::Failed("undecodable command".into()), None));
    };
    let session = Some((command.client_id, command.seq));
    let cmd = match KvCommand::decode(&command.payload) {
        Ok(c) => c,
        Err(e) => {
            return Ok((
                KvResponse::Failed(format!("undecodable command: {e}")),
                session,
            ))
        }
    };
    if check_keys(&p.desc, &cmd).is_err() {
        return Ok((KvResponse::Failed("key outside the region".into()), session));
    }
    if p.sessions.last_seq(command.client_id).is_none() {
        // After a restart the session lives only in RocksDB until first used.
        if let Ok(Some(s)) = ctx.kv.session(region_id, command.client_id) {
            if let Ok((seq, answer)) = codec::decode::<(u64, Bytes)>(&s) {
                p.sessions.restore(command.client_id, seq, answer);
            }
        }
    }
    let mut failure = None;
    let outcome = p.sessions.apply(command.client_id, command.seq, || {
        match ctx.exec(region_id, cmd) {
            Ok(r) => r.encode(),
            Err(e) => {
                failure = Some(e);
                KvResponse::Failed("storage failure".into()).encode()
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let answer = match outcome {
        SessionOutcome::Applied(b) => {
            let s = codec::encode(&(command.seq, b.clone())).expect("a session encodes");
            ctx.round.set_session(region_id, command.client_id, s);
            KvResponse::decode(&b).unwrap_or(KvResponse::Failed("bad stored answer".into()))
        }
        SessionOutcome::Duplicate(b) => {
            KvResponse::decode(&b).unwrap_or(KvResponse::Failed("bad stored answer".into()))
        }
        SessionOutcome::Stale => KvResponse::Failed("stale request sequence".into()),
    };
    Ok((answer, session))
}

/// Sends a follower's batched commands to its leader and waits for them to apply here;
/// on failure, answers them and returns the error and how many failed.
fn forward(p: &mut Peer, batch: Vec<BatchedProposal>, deadline: u64) -> Option<(NodeError, u64)> {
    let data: Vec<Bytes> = batch.iter().map(|b| b.data.clone()).collect();
    let n = data.len() as u64;
    match p.raw.forward_proposals(data) {
        Ok(_) => {
            p.metrics.proposed(n);
            for b in batch {
                p.forwarded
                    .entry(b.session)
                    .or_default()
                    .push(ForwardedProposal {
                        reply: b.reply,
                        deadline,
                    });
                p.forwarded_deadlines.push_back((deadline, b.session));
            }
            None
        }
        Err(e) => {
            let err = match e {
                raft::Error::NotLeader { .. } => p.not_leader(),
                other => NodeError::Dropped(other.to_string()),
            };
            for b in batch {
                let _ = b.reply.send(Err(err.clone()));
            }
            Some((err, n))
        }
    }
}

/// Answers the reads whose index is applied; returns how many got data and how many an
/// error.
fn serve_reads(kv: &KvStore, p: &mut Peer) -> (u64, u64) {
    let (mut served, mut failed) = (0, 0);
    let mut count = |ok: bool| {
        if ok {
            served += 1;
        } else {
            failed += 1;
        }
    };
    while let Some(entry) = p.reads_waiting_apply.first_entry() {
        if entry.key().0 > p.applied {
            break;
        }
        match entry.remove() {
            PendingRead::Get { key, reply } => {
                let r = kv
                    .get(&key)
                    .map(|v| v.map(Bytes::from))
                    .map_err(|e| NodeError::Storage(e.to_string()));
                count(r.is_ok());
                let _ = reply.send(r);
            }
            PendingRead::Scan {
                start,
                end,
                limit,
                reply,
            } => {
                let end = if end.is_empty() || (!p.desc.end_key.is_empty() && end > p.desc.end_key)
                {
                    p.desc.end_key.clone()
                } else {
                    end
                };
                let r = kv
                    .scan(&KeyRange::new(start, end))
                    .map(|mut v| {
                        v.truncate(limit);
                        v
                    })
                    .map_err(|e| NodeError::Storage(e.to_string()));
                count(r.is_ok());
                let _ = reply.send(r);
            }
        }
    }
    (served, failed)
}

fn send_all(
    transport: &dyn Transport,
    node_id: u64,
    desc: &RegionDescriptor,
    msgs: Vec<flotilla_common::Message>,
) {
    for m in msgs {
        let Some(to) = desc.peer(m.to) else { continue };
        let snapshot = m.kind == MessageKind::Snapshot;
        let env = RaftEnvelope::new(desc.id, node_id, to.node_id, m);
        let r = if snapshot {
            transport.send_snapshot(env)
        } else {
            transport.send(env)
        };
        if let Err(e) = r {
            // Raft retries whatever is lost; the transport counts the drop.
            tracing::debug!(region = desc.id, to = to.node_id, "send failed: {e}");
        }
    }
}
