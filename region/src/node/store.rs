//! The store: every region replica of one node, driven by one loop.
//!
//! Each round of the loop:
//! 1. takes every queued input (raft messages from the transport, client requests, the
//!    tick, the log's notice that a write is done) and feeds it to the replica it is for;
//!    finishes the log writes that are done (sends the votes and acknowledgements that
//!    waited for them, tells each replica's core what is durable);
//! 2. takes a Ready from every replica that has one; sends the messages that may leave at
//!    once (a leader's appends);
//! 3. hands the entries and hard states of **all** replicas to the shared raft log as one
//!    batch (one fdatasync, group commit), without waiting for it: the messages that
//!    promise durability (acknowledgements, votes) leave from the log's writer thread the
//!    moment the write is durable; what else waits for it (each core learning what is
//!    durable) waits for step 1 of a later round;
//! 4. applies the committed entries of all replicas to RocksDB in one WriteBatch that also
//!    records every touched region's applied index, then answers the waiting clients;
//! 5. serves reads whose read index is now applied.
//!
//! DESIGN.md puts every region in its own actix actor. One loop per node that owns all
//! replicas batches naturally (a round *is* the group of Readies to commit together) and
//! costs no message hop per region; see docs/architecture.md.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
// std's channel rather than crossbeam's: see engine/src/commit.rs.
use flotilla_common::{codec, ConfChange, EntryKind, HardState, MessageKind, RaftEnvelope};
use flotilla_engine::{
    ApplyRound, KeyRange, KvStore, LogBatch, LogWaker, RaftLog, RegionBatch, SnapshotMark,
    WriteTicket,
};
use flotilla_transport::{Inbound, PeerEvent, SnapshotStatus, Transport};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender as Sender};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::command::{KvCommand, KvResponse, PutCondition};
use super::descriptor::MergeState;
use super::descriptor::{even_boundaries, PeerMeta, PeerRole, RegionDescriptor, RegionEpoch};
use super::directory::SharedDirectory;
use super::error::{storage_error, NodeError};
use super::membership::{is_member_peer_id, ChangeOutcome, PeerChange};
use super::merge::{merge_client_id, plan_merge, MergeCommandKind, MergePlan};
use super::metrics::{NodeMetrics, NodeSample, ProposalLatencies};
use super::peer::{
    check_keys, is_command, BatchedProposal, ForwardedProposal, Peer, PendingProposal, PendingRead,
    Reply, ScanPage,
};
use super::peer_storage::{PeerStorage, RegionSnapshotData};
use super::snapshot_builder::{SnapshotBuildHook, SnapshotBuilds, SnapshotProgress};
use super::split::{plan_split, split_region_id, SplitPlan};
use crate::raft::{self, Command, ReadOnlyOption, Role, SessionOutcome};

mod membership;
mod recovery;

use membership::{is_membership_message, membership_applied, MembershipApplied};
use recovery::StoreShell;
pub use recovery::{EngineOpener, LogSlot, REOPEN_PAUSE_MAX, REOPEN_PAUSE_MIN, REOPEN_PAUSE_RESET};

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

/// Bytes of keys and values read, at most, to find the middle of a region to split.
pub const SPLIT_SCAN_BYTES_MAX: usize = 64 << 20;

/// Ticks between two split checks (sizes and loads of the regions this node leads).
pub const SPLIT_CHECK_TICKS: u64 = 20;
/// Checks in a row a region must be over `region_split_qps` to be split for load.
pub const SPLIT_HOT_CHECKS: u32 = 3;
/// A region is measured once this fraction (1/n) of `region_max_bytes` was written to it
/// since its last measurement.
pub const SPLIT_CHECK_WRITTEN_FRACTION: u64 = 16;

/// Ticks between two checks for raft logs to compact (and WAL segments to delete).
pub const COMPACT_CHECK_TICKS: u64 = 20;

/// Regions without a replica on this node whose messages are held, at most.
pub const ORPHAN_REGIONS_MAX: usize = 256;
/// Messages held per such region, at most.
pub const ORPHAN_MESSAGES_MAX: usize = 32;
/// How long such messages are held, in election timeouts.
pub const ORPHAN_WAIT_ELECTIONS: u64 = 2;

/// Entries a replica may lag behind its leader and still be given the leadership by the
/// balancer.
pub const BALANCE_LAG_MAX: u64 = 64;

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
    /// A region's raft log is compacted once it holds more than this many applied entries.
    pub log_compact_trigger_entries: u64,
    /// Applied entries a compaction keeps, for followers a little behind (one further
    /// behind gets a snapshot).
    pub log_keep_entries: u64,
    /// A region whose keys and values pass this many bytes is split in two (by its leader,
    /// at the middle of its data).
    pub region_max_bytes: u64,
    /// A region applying more than this many commands per second for
    /// [`SPLIT_HOT_CHECKS`] checks in a row is split in two; 0 turns load splits off.
    pub region_split_qps: u64,
    /// Merge adjacent regions automatically when both hold fewer bytes than
    /// `region_merge_bytes`.
    pub auto_merge: bool,
    /// The size under which two neighbours are merged (with `auto_merge`).
    pub region_merge_bytes: u64,
    /// Each node moves leaderships off itself when it leads more than its share of the
    /// regions it holds. Off when the cluster's balancer runs (it balances leaders over
    /// the whole cluster, and two balancers would undo each other's moves).
    #[serde(default = "default_true")]
    pub balance_leaders: bool,
    /// Runs in every snapshot build (tests only; see [`SnapshotBuildHook`]).
    #[serde(skip)]
    pub snapshot_build_hook: SnapshotBuildHook,
}

fn default_true() -> bool {
    true
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            node_id: 1,
            tick_interval: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
            lease_reads: true,
            log_compact_trigger_entries: 20_000,
            log_keep_entries: 5_000,
            region_max_bytes: 96 << 20,
            region_split_qps: 0,
            auto_merge: false,
            region_merge_bytes: 16 << 20,
            balance_leaders: true,
            snapshot_build_hook: SnapshotBuildHook::default(),
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
    /// The region it is being merged into, if it is frozen for a merge.
    pub merging_into: Option<u64>,
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
    /// The region's replicas (voters and learners), as this replica knows them.
    pub peers: Vec<PeerMeta>,
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
        self.replace([r]);
    }

    /// Publishes several regions' routes in one step (a split's: the old region's and its
    /// new neighbours').
    pub(crate) fn replace(&self, routes: impl IntoIterator<Item = RegionRoute>) {
        let mut map = self.by_start.write();
        for r in routes {
            // A region whose start moved (it took in a merged neighbour on its left) leaves
            // its old entry behind: drop it.
            map.retain(|start, old| old.id != r.id || *start == r.start_key);
            map.insert(r.start_key.clone(), r);
        }
    }

    /// Forgets every region's leader (this node no longer hears from any).
    fn forget_leaders(&self) {
        for r in self.by_start.write().values_mut() {
            r.leader_node = None;
        }
    }

    /// Keeps only the regions `keep` says yes to.
    fn retain(&self, keep: impl Fn(u64) -> bool) {
        self.by_start.write().retain(|_, r| keep(r.id));
    }

    /// Forgets merged-away regions and updates the region that took them in, in one step:
    /// no reader ever sees their range uncovered.
    pub(crate) fn merge(&self, gone: &[u64], r: RegionRoute) {
        let mut map = self.by_start.write();
        map.retain(|_, old| !gone.contains(&old.id) && old.id != r.id);
        map.insert(r.start_key.clone(), r);
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
        reply: Reply<ScanPage>,
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
    /// Pick a split key (if none is given) and a new region id, and check the split:
    /// answers the `Split` command to propose.
    PrepareSplit {
        /// The region to split.
        region_id: u64,
        /// Where (`None`: the middle of its data).
        key: Option<Bytes>,
        /// The command.
        reply: Reply<KvCommand>,
    },
    /// The outcome of measuring a region and its right neighbour for an automatic merge.
    MergeCheck {
        /// The region to merge away.
        source: u64,
        /// Its right neighbour, to take it in.
        target: u64,
        /// The source's epoch version when measured.
        version: u64,
        /// Whether both were under `region_merge_bytes`.
        small: bool,
    },
    /// The outcome of a region's size measurement (sent by the store's own check thread).
    SplitCheck {
        /// The region.
        region_id: u64,
        /// Its epoch version when measured (a split since then makes the result stale).
        version: u64,
        /// Bytes of keys and values (at least this many).
        size: u64,
        /// The key that halves it, if it has two keys or more.
        middle: Option<Bytes>,
    },
    /// A value of the node's durable counter (unique, increasing).
    AllocateId {
        /// Where it goes.
        reply: Reply<u64>,
    },
    /// This node's replica's descriptor of a region.
    Descriptor {
        /// The region.
        region_id: u64,
        /// Where the descriptor goes.
        reply: Reply<RegionDescriptor>,
    },
    /// Ask for a membership change of a region (see the membership module).
    ChangePeer {
        /// The region.
        region_id: u64,
        /// The change.
        change: PeerChange,
        /// Check it for the caller's errors first (its first ask).
        check: bool,
        /// What was done.
        reply: Reply<ChangeOutcome>,
    },
    /// Report the node's snapshot builds and streams under way.
    SnapshotProgress {
        /// Where the report goes.
        reply: oneshot::Sender<SnapshotProgress>,
    },
    /// Report every replica's state.
    Status {
        /// Where the report goes.
        reply: oneshot::Sender<Vec<RegionStatus>>,
    },
    /// A log write of the store's is done (sent by the log's writer thread).
    LogWritten,
    /// Stop the loop.
    Stop,
}

/// The raft peer id of `node_id`'s replica of a bootstrap region.
pub fn bootstrap_peer_id(region_id: u64, node_id: u64) -> u64 {
    region_id * PEER_ID_NODE_SPAN + node_id
}

/// A region this node has no replica of, but hears from.
struct Orphan {
    /// Tick of its first message (since it was last forgotten).
    first_seen: u64,
    /// Tick of its latest message.
    last_seen: u64,
    /// Tick this node last asked its leader for a snapshot.
    asked: Option<u64>,
    /// Messages held for delivery, if the replica is created soon.
    held: Vec<RaftEnvelope>,
}

/// The store of one node.
pub struct Store {
    cfg: StoreConfig,
    peers: BTreeMap<u64, Peer>,
    log: Arc<dyn RaftLog>,
    kv: Arc<KvStore>,
    transport: Arc<dyn Transport>,
    /// The node directory (its states: no new replica goes to a node that is not `Up`).
    directory: SharedDirectory,
    rx: Receiver<StoreMsg>,
    regions: Arc<RegionMap>,
    next_read_ctx: u64,
    /// Messages for regions without a replica here yet: region → (tick first held, messages).
    orphans: std::collections::HashMap<u64, Orphan>,
    /// The store's own input, for its background measurements to report to.
    self_tx: Sender<StoreMsg>,
    /// A size measurement is running (one at a time per node).
    split_check_running: bool,
    /// The region the last merge check looked at (they go round robin).
    merge_cursor: u64,
    stopping: bool,
    ticks: u64,
    metrics: NodeMetrics,
    /// How the engine is opened again after a storage failure (recovery.rs).
    opener: EngineOpener,
    /// The raft log, for readers outside the store; emptied while the engine is down.
    log_slot: LogSlot,
    /// The pause before the first reopen attempt after the next failure.
    reopen_pause: Duration,
    /// When the engine was opened.
    opened_at: Instant,
    /// When the current round took its first input: the receive time of its writes.
    round_started: Instant,
    /// Receive times of the writes answered in the current round.
    latencies: ProposalLatencies,
    /// The node's snapshot builds, off this thread (every replica's storage shares them).
    snapshot_builds: SnapshotBuilds,
    /// The rounds' log writes under way, oldest first.
    writes: std::collections::VecDeque<WriteInFlight>,
    /// Set by the log's writer thread when a write of this store failed: from then on no
    /// write's acknowledgements leave from the writer thread (see [`Store::round`]).
    log_failed: Arc<AtomicBool>,
    /// The last round's end finished writes: their effects wait for a round.
    reaped: bool,
}

/// The nodes of a new cluster's region `i` (0-based) when each region gets `replicas`
/// voters out of the `sorted` initial nodes: `replicas` nodes in a row, starting at node
/// `i mod n`, so every node holds the same number of replicas (within one). With as many
/// replicas as nodes, every node holds every region.
pub fn bootstrap_nodes(sorted: &[u64], i: usize, replicas: usize) -> Vec<u64> {
    let n = sorted.len();
    let r = replicas.clamp(1, n.max(1));
    (0..r).map(|k| sorted[(i + k) % n]).collect()
}

/// Writes the first regions of a new cluster on node `me`: `regions` regions evenly
/// splitting the key space, each replicated on `replicas` of `nodes`
/// ([`bootstrap_nodes`]; every node when there are no more than `replicas`); `me` stores
/// only the regions it holds a replica of. Every initial node runs it with the same
/// inputs and so writes the same descriptors. A data directory that already holds regions
/// is left as it is (the bootstrap record, `bootstrap.txt`, refuses other flags).
pub fn bootstrap(
    log: &dyn RaftLog,
    kv: &KvStore,
    me: u64,
    nodes: &[u64],
    regions: usize,
    replicas: usize,
) -> Result<(), NodeError> {
    let storage = storage_error;
    if !log.regions().is_empty() {
        // Bootstrapped before (a crash after the write): the same regions of this node.
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
        let members = bootstrap_nodes(&sorted, i, replicas);
        if !members.contains(&me) {
            continue;
        }
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
            peers: members
                .iter()
                .map(|&n| PeerMeta {
                    peer_id: bootstrap_peer_id(id, n),
                    node_id: n,
                    role: PeerRole::Voter,
                })
                .collect(),
            merging: None,
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

/// Log writes a store keeps in flight while it goes on with its next rounds, at most; a
/// round that finds more waits for them (see `Store::round`).
const WRITES_IN_FLIGHT_MAX: usize = 4;

/// A round's log write on its way to the disk, and what waits for it.
struct WriteInFlight {
    /// The write (`None`: the round wrote nothing, but what it sends waits for the writes
    /// before it).
    ticket: Option<WriteTicket>,
    /// Messages that promise durability (votes, acknowledgements) of a round that wrote
    /// nothing; a round's write sends its own from the writer thread.
    outbound: Vec<RaftEnvelope>,
    /// (region, raft peer id, term, index) of what the write makes durable, for each
    /// region's core. The peer id tells a replica destroyed and created again while the
    /// write was in flight (peer ids are never reused) from the one that wrote.
    marks: Vec<(u64, u64, u64, u64)>,
    /// Regions in the write.
    regions: usize,
    /// When it was submitted.
    submitted: Instant,
}

/// Per-round overlay of writes not yet in RocksDB, so commands in one apply round see the
/// effects of those before them.
struct ApplyContext<'a> {
    kv: &'a KvStore,
    round: ApplyRound,
    overlay: std::collections::HashMap<Bytes, Option<Bytes>>,
    /// The round's writes already in `overlay`: it is brought up to date only when a
    /// command reads, so a round of plain puts builds no map.
    indexed: usize,
}

impl ApplyContext<'_> {
    fn read(&mut self, key: &Bytes) -> Result<Option<Bytes>, NodeError> {
        for (k, v) in self.round.writes_from(self.indexed) {
            self.overlay.insert(k.clone(), v.cloned());
        }
        self.indexed = self.round.writes();
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.kv
            .get(key)
            .map(|v| v.map(Bytes::from))
            .map_err(storage_error)
    }

    fn put(&mut self, region: u64, key: Bytes, value: Bytes) {
        self.round.put(region, key, value);
    }

    fn delete(&mut self, region: u64, key: Bytes) {
        self.round.delete(region, key);
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
            // Splits and merges change regions, not data: `apply_command` handles them.
            KvCommand::Split { .. }
            | KvCommand::PrepareMerge { .. }
            | KvCommand::CommitMerge { .. }
            | KvCommand::RollbackMerge => KvResponse::Failed("not a data command".into()),
        })
    }
}

impl Store {
    /// Opens the store over a node's engine (`log` and `kv`, opened by `opener`, which
    /// opens them again after a storage failure): every region found in the log whose
    /// descriptor lists a replica on this node gets one. Returns the store (run it with
    /// [`Store::run`]), the sender of its inputs, its routing table and the slot through
    /// which the current raft log can be read.
    pub fn open(
        cfg: StoreConfig,
        opener: EngineOpener,
        log: Arc<dyn RaftLog>,
        kv: Arc<KvStore>,
        transport: Arc<dyn Transport>,
        directory: SharedDirectory,
    ) -> Result<(Store, Sender<StoreMsg>, Arc<RegionMap>, LogSlot), NodeError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(64 * 1024);
        let regions = Arc::new(RegionMap::default());
        let log_slot: LogSlot = Default::default();
        let shell = StoreShell {
            cfg,
            transport,
            directory,
            rx,
            self_tx: tx.clone(),
            regions: regions.clone(),
            metrics: NodeMetrics::new(),
            next_read_ctx: 1,
            opener,
            log_slot: log_slot.clone(),
            reopen_pause: REOPEN_PAUSE_MIN,
            opened_at: Instant::now(),
        };
        let store = Store::build(shell, log, kv).map_err(|failed| failed.1)?;
        Ok((store, tx, regions, log_slot))
    }

    /// Builds the store's replicas from what the engine holds on disk: at start, and again
    /// after a storage failure (recovery.rs) — the same code, so a recovery is a restart.
    /// On failure, hands the shell back (the engine dropped again).
    fn build(
        shell: StoreShell,
        log: Arc<dyn RaftLog>,
        kv: Arc<KvStore>,
    ) -> Result<Store, Box<(StoreShell, NodeError)>> {
        let snapshot_builds = SnapshotBuilds::new(shell.cfg.snapshot_build_hook.clone());
        let mut store = Store {
            snapshot_builds,
            cfg: shell.cfg,
            peers: BTreeMap::new(),
            log,
            kv,
            transport: shell.transport,
            directory: shell.directory,
            rx: shell.rx,
            regions: shell.regions,
            next_read_ctx: shell.next_read_ctx,
            orphans: Default::default(),
            self_tx: shell.self_tx,
            split_check_running: false,
            merge_cursor: 0,
            stopping: false,
            ticks: 0,
            metrics: shell.metrics,
            opener: shell.opener,
            log_slot: shell.log_slot,
            reopen_pause: shell.reopen_pause,
            opened_at: Instant::now(),
            round_started: Instant::now(),
            latencies: ProposalLatencies::default(),
            writes: Default::default(),
            log_failed: Arc::new(AtomicBool::new(false)),
            reaped: false,
        };
        if let Err(e) = store.load_regions() {
            return Err(Box::new((store.into_shell(), e)));
        }
        *store.log_slot.write() = Some(store.log.clone());
        store.sample_gauges();
        info!(
            node = store.cfg.node_id,
            regions = store.peers.len(),
            "store opened"
        );
        Ok(store)
    }

    /// Creates a replica of every region on this node, and drops the routes of regions it
    /// no longer has (after a recovery: ones merged away in memory only, say).
    fn load_regions(&mut self) -> Result<(), NodeError> {
        // A region split off in the last apply round before a crash has a descriptor but
        // may not have written anything to the raft log yet: load both sets.
        let mut ids: std::collections::BTreeSet<u64> = self.log.regions().into_iter().collect();
        ids.extend(self.kv.region_ids().map_err(storage_error)?);
        for &region_id in &ids {
            self.load_region(region_id, None)?;
        }
        let ids: Vec<u64> = ids.into_iter().collect();
        self.destroy_leftovers(&ids)?;
        let peers = &self.peers;
        self.regions.retain(|id| peers.contains_key(&id));
        Ok(())
    }

    /// Creates the replica of `region_id` from its stored descriptor. `campaign`: whether
    /// it starts an election at once (`None`: only a new cluster's preferred replica does).
    fn load_region(&mut self, region_id: u64, campaign: Option<bool>) -> Result<(), NodeError> {
        self.load_region_routed(region_id, campaign, true)
    }

    /// [`Store::load_region`]; `route`: publish its route now (a split publishes its new
    /// regions' routes together with the old region's, in one step).
    fn load_region_routed(
        &mut self,
        region_id: u64,
        campaign: Option<bool>,
        route: bool,
    ) -> Result<(), NodeError> {
        let ps = PeerStorage::new(
            region_id,
            self.log.clone(),
            self.kv.clone(),
            self.snapshot_builds.clone(),
        );
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
        if campaign.unwrap_or(fresh && preferred == Some(self.cfg.node_id)) {
            // Only a region that never had a leader campaigns here (new from a split, or a
            // new cluster's): no pre-vote round, which would only cost a round trip.
            let _ = raw.campaign_without_pre_vote();
        }
        let mut peer = Peer::new(raw, desc, applied);
        // Every client session, so that a retry is recognised from the first command on.
        let sessions = self
            .kv
            .sessions(region_id)
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        for (client, s) in sessions {
            match codec::decode::<(u64, Bytes)>(&s) {
                Ok((seq, answer)) => peer.sessions.restore(client, seq, answer),
                Err(e) => warn!(region_id, client, "undecodable client session skipped: {e}"),
            }
        }
        // Measured at the first check: it may have grown past the limit while down.
        peer.written_since_check = self.cfg.region_max_bytes / SPLIT_CHECK_WRITTEN_FRACTION;
        if route {
            self.refresh_route(&peer);
        }
        self.peers.insert(region_id, peer);
        // Messages that arrived before this replica existed (a vote from a replica that
        // applied the split first) are delivered now.
        if let Some(orphan) = self.orphans.remove(&region_id) {
            for env in orphan.held {
                self.step_envelope(env);
            }
        }
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

    /// Runs the loop until [`StoreMsg::Stop`] or until every sender is gone. A storage
    /// failure does not end it: the store drops its engine and replicas and reopens them
    /// (recovery.rs), answering requests with [`NodeError::StorageUnavailable`] meanwhile.
    pub fn run(self) {
        let mut store = self;
        loop {
            let failure = match store.serve() {
                None => return store.finish(),
                Some(e) => e,
            };
            let (shell, reason) = store.fail(&failure);
            match shell.recover(&reason) {
                Some(reopened) => store = reopened,
                None => return,
            }
        }
    }

    /// The loop proper: runs until stopped (`None`) or until the storage fails (the error).
    fn serve(&mut self) -> Option<NodeError> {
        let tick = self.cfg.tick_interval;
        let mut next_tick = Instant::now() + tick;
        while !self.stopping {
            // Writes finished at the end of the last round may have left work (a leader's
            // commit to apply and announce): then the loop does not sleep.
            let wait = if std::mem::take(&mut self.reaped) {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            let first = self.rx.recv_timeout(wait);
            self.round_started = Instant::now();
            match first {
                Ok(m) => self.handle(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
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
                self.expire_orphans();
                self.drive_merges();
                self.sample_gauges();
                if self.ticks.is_multiple_of(SPLIT_CHECK_TICKS) {
                    self.check_splits();
                }
                if self.ticks.is_multiple_of(COMPACT_CHECK_TICKS) {
                    self.snapshot_builds.expire();
                    if let Err(e) = self.compact_logs() {
                        error!(node = self.cfg.node_id, "log compaction failed: {e}");
                        return Some(e);
                    }
                }
                if self.cfg.balance_leaders && self.ticks.is_multiple_of(BALANCE_INTERVAL_TICKS) {
                    self.balance_leaders();
                }
                if self
                    .ticks
                    .is_multiple_of(self.cfg.election_ticks.max(1) as u64)
                {
                    self.probe_membership();
                }
                next_tick += tick;
                if next_tick < Instant::now() {
                    // Fell behind (a long fsync): do not fire a burst of catch-up ticks.
                    next_tick = Instant::now() + tick;
                }
            }
            let round = self.round();
            self.metrics.round_done(self.round_started);
            if let Err(e) = round {
                return Some(e);
            }
        }
        // Stopping: the writes under way finish, and what waited for them leaves.
        if let Err(e) = self.reap_writes(true) {
            warn!(node = self.cfg.node_id, "a last log write failed: {e}");
        }
        None
    }

    /// Fails everything still waiting: the store stops.
    fn finish(mut self) {
        *self.log_slot.write() = None;
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
            StoreMsg::SplitCheck {
                region_id,
                version,
                size,
                middle,
            } => self.split_checked(region_id, version, size, middle),
            StoreMsg::MergeCheck {
                source,
                target,
                version,
                small,
            } => self.merge_checked(source, target, version, small),
            StoreMsg::PrepareSplit {
                region_id,
                key,
                reply,
            } => self.prepare_split(region_id, key, reply),
            StoreMsg::Descriptor { region_id, reply } => {
                let _ = reply.send(self.descriptor_of(region_id));
            }
            StoreMsg::ChangePeer {
                region_id,
                change,
                check,
                reply,
            } => {
                let _ = reply.send(self.change_peer(region_id, change, check));
            }
            StoreMsg::AllocateId { reply } => {
                let r = self.kv.next_id().map_err(storage_error);
                let _ = reply.send(r);
            }
            StoreMsg::SnapshotProgress { reply } => {
                let _ = reply.send(SnapshotProgress {
                    builds: self.snapshot_builds.stats(),
                    streams: self.transport.snapshot_streams(),
                });
            }
            StoreMsg::Status { reply } => {
                let out = self
                    .peers
                    .values()
                    .map(|p| {
                        let r = p.raw.raft();
                        RegionStatus {
                            route: p.route(),
                            peers: p.desc.peers.clone(),
                            role: role_name(r.role()).into(),
                            term: r.term(),
                            commit: r.commit_index(),
                            applied: p.applied,
                        }
                    })
                    .collect();
                let _ = reply.send(out);
            }
            // Reaped at the start of the next round.
            StoreMsg::LogWritten => {}
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
        // Only nodes this node hears from are given leaderships: a transfer to a node that
        // is down or cut off never finishes, and the region refuses writes until it is
        // abandoned (an election timeout later).
        let mut reachable: std::collections::BTreeSet<u64> = Default::default();
        for p in self.peers.values().filter(|p| p.is_leader()) {
            for peer in &p.desc.peers {
                if p.raw
                    .raft()
                    .progress(peer.peer_id)
                    .is_some_and(|pr| pr.recent_active)
                {
                    reachable.insert(peer.node_id);
                }
            }
        }
        for _ in 0..BALANCE_TRANSFERS_MAX {
            let mine = led.get(&me).copied().unwrap_or(0);
            let Some((target, target_count)) = led
                .iter()
                .filter(|(&n, _)| n != me && reachable.contains(&n))
                .min_by_key(|(_, &c)| c)
                .map(|(&n, &c)| (n, c))
            else {
                return;
            };
            // Balanced, as far as this node can help: within one region of the least loaded.
            if mine <= target_count + 1 {
                return;
            }
            // A region whose replica there is active and caught up (within a round's worth
            // of entries), so the transfer finishes at once.
            let candidate = self.peers.values_mut().find(|p| {
                let r = p.raw.raft();
                p.is_leader()
                    && r.lead_transferee().is_none()
                    && p.desc
                        .peer_on_node(target)
                        .filter(|t| t.role == PeerRole::Voter)
                        .and_then(|t| r.progress(t.peer_id))
                        .is_some_and(|pr| {
                            pr.recent_active && pr.matched + BALANCE_LAG_MAX >= r.last_index()
                        })
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
        // Membership traffic is the node's, not the raft core's (membership.rs).
        let env = if is_membership_message(&env.message) {
            match self.take_membership_message(env) {
                Some(env) => env,
                None => return,
            }
        } else {
            env
        };
        let Some(p) = self.peers.get_mut(&env.region_id) else {
            self.hold_orphan(env);
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

    /// Compacts the raft log of every region holding more than
    /// `log_compact_trigger_entries` applied entries, down to `log_keep_entries`, in one
    /// write; then deletes the WAL segments no region needs any more. The key-value store
    /// issues the permits, so a log is never cut above what is durably applied.
    fn compact_logs(&mut self) -> Result<(), NodeError> {
        let storage = storage_error;
        let mut batch = LogBatch::new();
        for (&region_id, p) in &self.peers {
            let first = self.log.first_index(region_id);
            if p.applied <= first + self.cfg.log_compact_trigger_entries {
                continue;
            }
            let to = p.applied - self.cfg.log_keep_entries.min(p.applied);
            if to <= first {
                continue;
            }
            let permit = self.kv.compaction_permit(region_id, to).map_err(storage)?;
            batch.push(RegionBatch::new(region_id).with_compaction(to, permit));
        }
        if batch.regions.is_empty() {
            return Ok(());
        }
        let regions = batch.regions.len();
        self.log.write(batch).map_err(storage)?;
        let purged = self.log.purge().map_err(storage)?;
        tracing::debug!(
            node = self.cfg.node_id,
            regions,
            ?purged,
            "raft logs compacted"
        );
        Ok(())
    }

    /// Ends the raft log of a region merged away here: it restarts empty after the source's
    /// last applied entry, so no WAL segment stays pinned by it.
    fn retire_log(&self, region_id: u64, prepare_index: u64) -> Result<(), NodeError> {
        let storage = storage_error;
        let term = self.log.term(region_id, prepare_index).map_err(storage)?;
        let permit = self
            .kv
            .compaction_permit(region_id, prepare_index)
            .map_err(storage)?;
        let mut batch = LogBatch::new();
        batch.push(RegionBatch::new(region_id).with_snapshot(
            SnapshotMark {
                index: prepare_index,
                term,
            },
            permit,
        ));
        self.log.write(batch).map_err(storage)?;
        Ok(())
    }

    /// Drives the merges of the regions this node leads that are frozen for one: once every
    /// replica has the `PrepareMerge`, proposes `CommitMerge` in the target (the same
    /// session each time, so it applies once) until it has an answer; a refusal rolls the
    /// source back.
    fn drive_merges(&mut self) {
        enum Step {
            Commit(u64, RegionDescriptor, u64),
            Rollback(u64, u64),
        }
        let mut steps = Vec::new();
        for p in self.peers.values_mut() {
            let Some(m) = p.desc.merging else {
                p.merge_pending = None;
                continue;
            };
            if !p.is_leader() || p.applied < m.prepare_index {
                continue;
            }
            if let Some(rx) = &mut p.merge_pending {
                match rx.try_recv() {
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => continue,
                    Ok(Ok(KvResponse::Done)) => continue, // the target takes the range
                    Ok(Ok(KvResponse::Failed(why))) => {
                        warn!(
                            source = p.desc.id,
                            target = m.target,
                            "merge refused, rolling back: {why}"
                        );
                        p.merge_pending = None;
                        steps.push(Step::Rollback(p.desc.id, m.prepare_index));
                        continue;
                    }
                    _ => p.merge_pending = None, // not answered: propose again
                }
            }
            let r = p.raw.raft();
            let everywhere = p.desc.peers.iter().all(|x| {
                x.peer_id == r.id()
                    || r.progress(x.peer_id)
                        .is_some_and(|pr| pr.matched >= m.prepare_index)
            });
            if everywhere {
                steps.push(Step::Commit(m.target, p.desc.clone(), m.prepare_index));
            }
        }
        for step in steps {
            match step {
                Step::Commit(target, source, prepare_index) => {
                    let sid = source.id;
                    if !self.peers.contains_key(&target) {
                        // Replicas moved: this node has none of the target to propose to.
                        self.hand_off_merge(sid);
                        continue;
                    }
                    let (reply, rx) = oneshot::channel();
                    let session = (
                        merge_client_id(MergeCommandKind::Commit, sid),
                        prepare_index,
                    );
                    let cmd = KvCommand::CommitMerge {
                        source,
                        prepare_index,
                    };
                    self.propose(target, session, cmd, reply);
                    if let Some(p) = self.peers.get_mut(&sid) {
                        p.merge_pending = Some(rx);
                    }
                }
                Step::Rollback(sid, prepare_index) => {
                    let (reply, _) = oneshot::channel();
                    let session = (
                        merge_client_id(MergeCommandKind::Rollback, sid),
                        prepare_index,
                    );
                    self.propose(sid, session, KvCommand::RollbackMerge, reply);
                }
            }
        }
    }

    /// Measures (on a thread of its own) one region this node leads that was written
    /// enough since its last measurement, or that has been busy for a while.
    fn check_splits(&mut self) {
        let per_second = 1000 / self.cfg.tick_interval.as_millis().max(1) as u64;
        let interval_commands = self.cfg.region_split_qps * SPLIT_CHECK_TICKS / per_second.max(1);
        let written_trigger = self.cfg.region_max_bytes / SPLIT_CHECK_WRITTEN_FRACTION;
        // The most urgent first: busy regions, then the most written.
        let mut pick: Option<((bool, u64), u64)> = None;
        for p in self.peers.values_mut() {
            let hot = self.cfg.region_split_qps > 0 && p.commands_since_check > interval_commands;
            p.hot_checks = if hot && p.is_leader() {
                p.hot_checks + 1
            } else {
                0
            };
            p.commands_since_check = 0;
            let busy = p.hot_checks >= SPLIT_HOT_CHECKS;
            let due = p.written_since_check >= written_trigger || busy;
            let urgency = (busy, p.written_since_check);
            if due
                && p.is_leader()
                && !p.checking
                && p.desc.merging.is_none()
                && pick.is_none_or(|(u, _)| urgency > u)
            {
                pick = Some((urgency, p.desc.id));
            }
        }
        if self.split_check_running {
            return;
        }
        // With automatic merges on, every other check looks for two small neighbours, so
        // neither kind waits for the other.
        let merge_turn = (self.ticks / SPLIT_CHECK_TICKS) % 2 == 1;
        if self.cfg.auto_merge && (pick.is_none() || merge_turn) {
            self.check_merge();
            return;
        }
        let Some((_, region_id)) = pick else {
            return;
        };
        let p = self
            .peers
            .get_mut(&region_id)
            .expect("picked from the peers");
        p.checking = true;
        p.written_since_check = 0;
        self.split_check_running = true;
        let kv = self.kv.clone();
        let tx = self.self_tx.clone();
        let range = KeyRange::new(p.desc.start_key.clone(), p.desc.end_key.clone());
        let version = p.desc.epoch.version;
        let cap = (self.cfg.region_max_bytes.saturating_mul(2)).min(usize::MAX as u64) as usize;
        let spawned = std::thread::Builder::new()
            .name("split-check".into())
            .spawn(move || {
                let (size, middle) = match kv.size_and_middle(&range, cap) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(region = region_id, "split check failed: {e}");
                        (0, None)
                    }
                };
                let _ = tx.send(StoreMsg::SplitCheck {
                    region_id,
                    version,
                    size,
                    middle,
                });
            });
        if let Err(e) = spawned {
            warn!("cannot start a split check: {e}");
            p.checking = false;
            self.split_check_running = false;
        }
    }

    /// Measures, off the loop, the next region this node leads (round robin) and its right
    /// neighbour, for an automatic merge of two small regions on the same nodes.
    fn check_merge(&mut self) {
        let routes = self.regions.all();
        let after = self.merge_cursor;
        let candidate = self
            .peers
            .range(after + 1..)
            .chain(self.peers.range(..=after))
            .map(|(_, p)| p)
            .find(|p| p.is_leader() && p.desc.merging.is_none() && !p.desc.end_key.is_empty());
        let Some(p) = candidate else { return };
        self.merge_cursor = p.desc.id;
        let Some(next) = routes.iter().find(|r| r.start_key == p.desc.end_key) else {
            return;
        };
        let mut nodes = p.desc.nodes();
        nodes.dedup();
        let mut next_nodes = next.voter_nodes.clone();
        next_nodes.sort_unstable();
        if next.merging_into.is_some() || nodes != next_nodes {
            return;
        }
        let (source, target, version) = (p.desc.id, next.id, p.desc.epoch.version);
        let ranges = [
            KeyRange::new(p.desc.start_key.clone(), p.desc.end_key.clone()),
            KeyRange::new(next.start_key.clone(), next.end_key.clone()),
        ];
        let limit = self.cfg.region_merge_bytes;
        let (kv, tx) = (self.kv.clone(), self.self_tx.clone());
        self.split_check_running = true;
        let spawned = std::thread::Builder::new()
            .name("merge-check".into())
            .spawn(move || {
                let small = ranges.iter().all(|r| {
                    kv.size_and_middle(r, limit as usize)
                        .is_ok_and(|(size, _)| size < limit)
                });
                let _ = tx.send(StoreMsg::MergeCheck {
                    source,
                    target,
                    version,
                    small,
                });
            });
        if let Err(e) = spawned {
            warn!("cannot start a merge check: {e}");
            self.split_check_running = false;
        }
    }

    /// Starts the merge of a measured small region into its small right neighbour, if it
    /// is still as measured and this node still leads it.
    fn merge_checked(&mut self, source: u64, target: u64, version: u64, small: bool) {
        self.split_check_running = false;
        let Some(p) = self.peers.get(&source) else {
            return;
        };
        if !small || !p.is_leader() || p.desc.epoch.version != version || p.desc.merging.is_some() {
            return;
        }
        let seq = match self.kv.next_id() {
            Ok(n) => n,
            Err(e) => {
                error!(region = source, "no id for a merge: {e}");
                return;
            }
        };
        info!(source, target, "merging two small regions automatically");
        let (reply, _) = oneshot::channel();
        let session = (merge_client_id(MergeCommandKind::Prepare, source), seq);
        self.propose(source, session, KvCommand::PrepareMerge { target }, reply);
    }

    /// Splits a measured region that is too big (or too busy) at its middle, if it is
    /// still as measured and this node still leads it.
    fn split_checked(&mut self, region_id: u64, version: u64, size: u64, middle: Option<Bytes>) {
        self.split_check_running = false;
        let max = self.cfg.region_max_bytes;
        let Some(p) = self.peers.get_mut(&region_id) else {
            return;
        };
        p.checking = false;
        let hot = p.hot_checks >= SPLIT_HOT_CHECKS;
        let (Some(key), true) = (middle, p.is_leader() && p.desc.epoch.version == version) else {
            return;
        };
        if size <= max && !hot {
            return;
        }
        p.hot_checks = 0;
        // Each half is about this big: measured first at the next checks (ahead of regions
        // that were merely written to).
        p.written_since_check = p.written_since_check.max(size / 2);
        let id = match self.kv.next_id() {
            Ok(n) => split_region_id(n, self.cfg.node_id),
            Err(e) => {
                error!(region = region_id, "no id for a split: {e}");
                return;
            }
        };
        info!(
            region = region_id,
            size,
            max,
            hot,
            new = id,
            "splitting a region automatically"
        );
        let cmd = KvCommand::Split {
            split_keys: vec![key],
            new_region_ids: vec![id],
        };
        // Nobody waits for the answer: a split that fails is tried again at a later check.
        let (reply, _) = oneshot::channel();
        self.propose(region_id, (super::SPLIT_CLIENT_BIT | id, 1), cmd, reply);
    }

    /// Answers `reply` with the `Split` command for `region_id` at `key` (`None`: the
    /// middle of its data). Reading the region's data for the middle (up to
    /// [`SPLIT_SCAN_BYTES_MAX`]) and taking a new id (a synced write) happen on a thread of
    /// their own: on the store's thread they stalled every region of the node for the
    /// scan's milliseconds. The key is checked against the range as it is now, and again
    /// where the split applies.
    fn prepare_split(&self, region_id: u64, key: Option<Bytes>, reply: Reply<KvCommand>) {
        let Some(p) = self.peers.get(&region_id) else {
            let _ = reply.send(Err(NodeError::RegionNotFound));
            return;
        };
        let desc = p.desc.clone();
        let kv = self.kv.clone();
        let node_id = self.cfg.node_id;
        let prepare = move || -> Result<KvCommand, NodeError> {
            let key = match key {
                Some(k) => k,
                None => {
                    let range = KeyRange::new(desc.start_key.clone(), desc.end_key.clone());
                    kv.middle_key(&range, SPLIT_SCAN_BYTES_MAX)
                        .map_err(storage_error)?
                        .ok_or_else(|| {
                            NodeError::Refused(format!(
                                "region {region_id} holds fewer than two keys: give a split key"
                            ))
                        })?
                }
            };
            let probe = [super::split::REGION_ID_MAX];
            plan_split(&desc, std::slice::from_ref(&key), &probe).map_err(NodeError::Refused)?;
            let id = split_region_id(kv.next_id().map_err(storage_error)?, node_id);
            Ok(KvCommand::Split {
                split_keys: vec![key],
                new_region_ids: vec![id],
            })
        };
        // The reply moves into the thread; if the thread cannot start, it is answered here.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Reply<KvCommand>>(1);
        let spawned = std::thread::Builder::new()
            .name("split-prepare".into())
            .spawn(move || {
                if let Ok(reply) = rx.recv() {
                    let _ = reply.send(prepare());
                }
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send(reply);
            }
            Err(e) => {
                let _ = reply.send(Err(NodeError::Dropped(format!(
                    "cannot start preparing the split: {e}"
                ))));
            }
        }
    }

    /// Handles a message for a region this node has no replica of.
    ///
    /// For a while it is held: after a split, the replicas that applied it first campaign in
    /// the new regions, and their votes reach replicas that have not applied it yet; the
    /// message is delivered if the split creates the region in time. A held message never
    /// creates a replica (the range is still served by the old region here).
    ///
    /// If the region stays unknown longer than that, this node is missing a replica it
    /// should have — it skipped the split by installing a snapshot of the old region taken
    /// after it. It then answers the region's leader with a snapshot request (at most once
    /// per wait), and creates the replica from the snapshot that comes back, provided the
    /// snapshot's range overlaps no region of this node: never a second copy of a range.
    fn hold_orphan(&mut self, env: RaftEnvelope) {
        let now = self.ticks;
        let wait = ORPHAN_WAIT_ELECTIONS * self.cfg.election_ticks as u64;
        if !self.orphans.contains_key(&env.region_id) && self.orphans.len() >= ORPHAN_REGIONS_MAX {
            return;
        }
        let orphan = self.orphans.entry(env.region_id).or_insert_with(|| Orphan {
            first_seen: now,
            last_seen: now,
            asked: None,
            held: Vec::new(),
        });
        orphan.last_seen = now;
        // A replica added by a membership change (its peer id says so) has nothing to wait
        // for: no split of a region here will create it. It asks for its snapshot at once
        // (and again every election timeout until one names it).
        let prompt = is_member_peer_id(env.message.to);
        let ask_wait = if prompt {
            self.cfg.election_ticks as u64
        } else {
            wait
        };
        if !prompt && now < orphan.first_seen + wait {
            if orphan.held.len() < ORPHAN_MESSAGES_MAX {
                orphan.held.push(env);
            }
            return;
        }
        orphan.held.clear();
        match env.message.kind {
            MessageKind::Snapshot => self.adopt_from_snapshot(env),
            MessageKind::Append | MessageKind::Heartbeat => {
                if orphan.asked.is_some_and(|t| now < t + ask_wait) {
                    return;
                }
                orphan.asked = Some(now);
                let m = &env.message;
                let mut ask = flotilla_common::Message::new(
                    MessageKind::AppendResponse,
                    m.to,
                    m.from,
                    m.term,
                );
                ask.reject = true;
                ask.request_snapshot = true;
                ask.index = m.index;
                let reply = RaftEnvelope::new(env.region_id, self.cfg.node_id, env.from_node, ask);
                if let Err(e) = self.transport.send(reply) {
                    tracing::debug!(region = env.region_id, "snapshot request not sent: {e}");
                }
            }
            _ => {}
        }
    }

    /// Creates the replica a snapshot is for, from the descriptor it carries, if that
    /// names this node and overlaps no region here; then hands it the snapshot.
    fn adopt_from_snapshot(&mut self, env: RaftEnvelope) {
        let region_id = env.region_id;
        let Some(snap) = env.message.snapshot.as_deref() else {
            return;
        };
        let desc = codec::decode::<RegionSnapshotData>(&snap.data)
            .ok()
            .and_then(|d| d.header.descriptor)
            .and_then(|d| RegionDescriptor::decode(&d).ok());
        let Some(desc) = desc else {
            warn!(
                region = region_id,
                "snapshot for an unknown region without a descriptor"
            );
            return;
        };
        let mine = desc.peer_on_node(self.cfg.node_id);
        if desc.id != region_id || mine.map(|p| p.peer_id) != Some(env.message.to) {
            warn!(
                region = region_id,
                "snapshot descriptor does not name this replica"
            );
            return;
        }
        let overlaps = self.peers.values().find(|p| {
            let a = &p.desc;
            (desc.end_key.is_empty() || a.start_key < desc.end_key)
                && (a.end_key.is_empty() || desc.start_key < a.end_key)
        });
        if let Some(p) = overlaps {
            info!(
                region = region_id,
                overlapping = p.desc.id,
                "not creating a replica from a snapshot: its range is still served here"
            );
            return;
        }
        // What a replica of this region destroyed here before may have left (data dirs
        // written before destruction did this itself).
        if let Err(e) = self.forget_commit_past_log(region_id) {
            error!(region = region_id, "cannot create a replica: {e}");
            return;
        }
        let mut round = ApplyRound::new();
        round.set_descriptor(region_id, desc.encode());
        round.set_applied(region_id, 0);
        if let Err(e) = self.kv.apply(round) {
            error!(region = region_id, "cannot create a replica: {e}");
            return;
        }
        info!(region = region_id, "replica created from a snapshot");
        self.orphans.remove(&region_id);
        match self.load_region(region_id, Some(false)) {
            Ok(()) => self.step_envelope(env),
            Err(e) => error!(region = region_id, "cannot load the new replica: {e}"),
        }
    }

    /// Forgets held messages after [`ORPHAN_WAIT_ELECTIONS`] election timeouts, and a
    /// region without traffic for as long.
    fn expire_orphans(&mut self) {
        let wait = ORPHAN_WAIT_ELECTIONS * self.cfg.election_ticks as u64;
        let now = self.ticks;
        self.orphans.retain(|_, o| {
            if now >= o.first_seen + wait {
                o.held.clear();
            }
            now < o.last_seen + wait
        });
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
        if p.desc.merging.is_some() && !matches!(cmd, KvCommand::RollbackMerge) {
            let e = NodeError::Dropped(format!("region {region_id} is merging"));
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
        let deadline = self.ticks + self.forward_wait_ticks();
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
                    p.read_deadlines.push_back((deadline, ctx));
                }
            }
            Err(e) => {
                self.metrics.reads_failed(1);
                read.fail(NodeError::Dropped(e.to_string()))
            }
        }
    }

    /// The loop's steps after taking the inputs: finishing the writes that are done,
    /// then steps 2–5 (see the module docs).
    fn round(&mut self) -> Result<(), NodeError> {
        let storage = storage_error;
        let node_id = self.cfg.node_id;
        self.reap_writes(false)?;
        self.flush_proposals();
        let mut batch = LogBatch::new();
        let mut readies = Vec::new();
        // Messages that need nothing durable (a leader's appends): they leave before the
        // log write, so that followers persist while this node does.
        let mut outbound = Vec::new();
        for (&region_id, p) in self.peers.iter_mut() {
            if !p.raw.has_ready() {
                continue;
            }
            let mut rd = p.raw.ready();
            if let Some(ss) = rd.soft_state {
                // Commands forwarded to a former leader may never be appended.
                p.fail_forwarded(&NodeError::Dropped("the region's leader changed".into()));
                if ss.role == Role::Leader {
                    // A new leader measures the region at its next split check: the check
                    // the old leader started (resetting its own count) may have been
                    // discarded when leadership moved, and a region left over its limit
                    // with no more writes would then never be measured again.
                    let trigger = self.cfg.region_max_bytes / SPLIT_CHECK_WRITTEN_FRACTION;
                    p.written_since_check = p.written_since_check.max(trigger);
                }
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
            envelopes_into(
                node_id,
                &p.desc,
                std::mem::take(&mut rd.messages),
                &mut outbound,
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
                        // The range may have shrunk (a split this replica skipped).
                        p.desc = desc;
                        self.regions.update(p.route());
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
            // A hard state that moved only its commit index is not written (the Ready says
            // no sync is needed): the commit index need not be durable — after a restart
            // the applied index vouches for what was applied, and the leader tells the
            // rest again. At low load every write would otherwise cost each replica a
            // second fdatasync, for the round that learns it committed.
            if let Some(hs) = rd.hard_state.filter(|_| rd.must_sync || any) {
                rb = rb.with_hard_state(hs);
                any = true;
            }
            if any {
                batch.push(rb);
            }
            readies.push((region_id, rd));
        }
        send_envelopes(&*self.transport, outbound);
        if readies.is_empty() {
            return Ok(());
        }
        // What must wait for the write (votes, append responses) is encoded now, while
        // every region of the round is still here (a merge may remove one), and leaves
        // once the write is durable.
        let mut persisted_outbound = Vec::new();
        for (region_id, rd) in readies.iter_mut() {
            if let Some(p) = self.peers.get(region_id) {
                let msgs = std::mem::take(&mut rd.persisted_messages);
                envelopes_into(node_id, &p.desc, msgs, &mut persisted_outbound);
            }
        }
        // 3. One write, one fdatasync, for every region of this round, on the log's writer
        // thread. The store does not wait for it: while it syncs, the store applies (step
        // 4) and goes on with the next rounds — proposals become appends, acknowledgements
        // commit and answer clients — instead of every input waiting for the sync under
        // way. What depends on the write (this round's acknowledgements and votes, and the
        // core learning its entries are durable) waits in `writes` until the writer
        // thread reports it done (`reap_writes`). The committed entries applied below
        // were durable here before this round (a Ready hands out only entries this node
        // has persisted), so their clients need not wait for any sync; on a restart the
        // applied index vouches for the commit index the write would have stored.
        let regions = batch.regions.len();
        let ticket = if regions > 0 {
            let wake = self.log_wake(std::mem::take(&mut persisted_outbound));
            Some(self.log.submit_with(batch, Some(wake)).map_err(storage)?)
        } else {
            None
        };
        let marks: Vec<(u64, u64, u64, u64)> = readies
            .iter()
            .filter_map(|(id, rd)| Some((*id, self.peers.get(id)?.raw.raft().id(), rd)))
            .flat_map(|(id, peer, rd)| rd.persisted_marks().map(move |(t, i)| (id, peer, t, i)))
            .collect();
        let snapshot_round = readies.iter().any(|(_, rd)| rd.snapshot.is_some());
        // 4. Apply everything committed, and answer its clients.
        let applied = self.apply_readies(&mut readies);
        if ticket.is_some() || !self.writes.is_empty() || !persisted_outbound.is_empty() {
            // Also a round that writes nothing waits for the writes before it: its
            // acknowledgements may promise entries those carry.
            self.writes.push_back(WriteInFlight {
                ticket,
                outbound: persisted_outbound,
                marks,
                regions,
                submitted: Instant::now(),
            });
        }
        let (merged_away, membership) = match applied {
            Ok(done) => done,
            Err(e) => {
                // The store must not reopen its log under a write in flight.
                let _ = self.reap_writes(true);
                return Err(e);
            }
        };
        // A round that installs a snapshot, changes membership or merges waits for its
        // write: what follows (destroying a removed replica, cutting a merged-away log)
        // must come after it, and these rounds are rare. So does a round that finds
        // `WRITES_IN_FLIGHT_MAX` writes under way: memory and the replies they hold stay
        // bounded.
        let wait = snapshot_round
            || !membership.is_empty()
            || !merged_away.is_empty()
            || self.writes.len() > WRITES_IN_FLIGHT_MAX;
        self.reaped = self.reap_writes(wait)? > 0;
        // Membership changes applied in this round: removal notices, and a replica removed
        // from this node destroyed — after the write, which may still carry its entries
        // (destroying cuts its raft log).
        if !membership.is_empty() {
            self.finish_membership(membership);
        }
        // A merged-away source's log is cut to nothing (it pins no WAL segment).
        for (sid, prepare_index) in merged_away {
            if let Err(e) = self.retire_log(sid, prepare_index) {
                warn!(region = sid, "merged region's log not cut: {e}");
            }
        }
        // 6. Reads.
        for (region_id, rd) in readies {
            let Some(p) = self.peers.get_mut(&region_id) else {
                continue; // merged away in this round
            };
            for rs in &rd.read_states {
                let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_ref()) else {
                    continue;
                };
                let id = u64::from_le_bytes(bytes);
                if let Some(r) = p.reads_waiting_index.remove(&id) {
                    p.reads_waiting_apply.insert((rs.index, id), r);
                }
            }
            p.raw.advance_apply(&rd);
            let (served, failed) = serve_reads(&self.kv, p);
            self.metrics.reads_served(served);
            self.metrics.reads_failed(failed);
        }
        Ok(())
    }

    /// What the log's writer thread does when this round's write is done: sends the
    /// round's acknowledgements and votes (`acks`) at once, instead of leaving them for
    /// this loop to send when it reaps the write — which, on a busy node, is at the end
    /// of the round under way, up to a round later for every write a leader waits on —
    /// then wakes the loop to reap it. Not after a failed write, nor after any write that
    /// follows one (an acknowledgement may promise entries an earlier write carried): the
    /// store then fails, and nothing that waited on a write leaves. The log answers the
    /// accepted writes in order, and a refused one no later than those ahead of it, so the
    /// flag is set before any later write's waker runs.
    fn log_wake(&self, acks: Vec<RaftEnvelope>) -> LogWaker {
        acks_when_durable(
            self.log_failed.clone(),
            self.transport.clone(),
            self.self_tx.clone(),
            acks,
        )
    }

    /// Finishes the log writes that are done, oldest first — all of them, waiting, when
    /// `wait` — and returns how many: sends the acknowledgements and votes of the rounds
    /// that wrote nothing (a written round's left with its write, [`Store::log_wake`]),
    /// and tells each region's raft core which of its entries are now durable (a leader
    /// may then commit). Writes finish in the order they were submitted, so a write
    /// is finished only after every write before it. A failed write fails the store: the
    /// writes after it are waited for (nothing that waited for them is sent) before the
    /// error is returned, so the store never reopens its log under a write in flight.
    fn reap_writes(&mut self, wait: bool) -> Result<usize, NodeError> {
        let mut reaped = 0;
        while let Some(front) = self.writes.front() {
            let done = match &front.ticket {
                Some(t) if !wait => match t.try_wait() {
                    None => break,
                    done => done,
                },
                // Nothing to wait for, or waited for below.
                _ => None,
            };
            let Some(w) = self.writes.pop_front() else {
                break;
            };
            let result = match (done, w.ticket) {
                (Some(result), _) => Some(result),
                (None, Some(ticket)) => Some(ticket.wait()),
                (None, None) => None,
            };
            if let Some(result) = result {
                if let Err(e) = result {
                    for later in self.writes.drain(..) {
                        if let Some(ticket) = later.ticket {
                            let _ = ticket.wait();
                        }
                    }
                    return Err(storage_error(e));
                }
                self.metrics.log_written(w.submitted.elapsed(), w.regions);
            }
            send_envelopes(&*self.transport, w.outbound);
            for (region_id, peer_id, term, index) in w.marks {
                if let Some(p) = self.peers.get_mut(&region_id) {
                    if p.raw.raft().id() == peer_id {
                        p.raw.on_persisted(term, index);
                    }
                }
            }
            reaped += 1;
        }
        Ok(reaped)
    }

    /// Step 4 of a round: applies the committed entries of `readies` (one RocksDB write for
    /// all of them), creates the regions of the splits they hold, and answers their
    /// clients. Answers the merged-away sources and the membership changes, which the
    /// round finishes after its log write.
    #[allow(clippy::type_complexity)]
    fn apply_readies(
        &mut self,
        readies: &mut [(u64, raft::Ready)],
    ) -> Result<(Vec<(u64, u64)>, Vec<MembershipApplied>), NodeError> {
        let storage = storage_error;
        let node_id = self.cfg.node_id;
        // 4. Apply everything committed, and answer its clients.
        let mut ctx = ApplyContext {
            kv: &self.kv,
            round: ApplyRound::new(),
            overlay: Default::default(),
            indexed: 0,
        };
        let mut answers: Vec<(Reply<KvResponse>, Result<KvResponse, NodeError>)> = Vec::new();
        let mut splits: Vec<SplitPlan> = Vec::new();
        let apply_started = Instant::now();
        let mut applied_entries = 0;
        let mut merged_away: Vec<(u64, u64)> = Vec::new();
        let mut membership: Vec<MembershipApplied> = Vec::new();
        for (region_id, rd) in readies.iter_mut() {
            // Out of the map while its entries apply, so a merge can reach its source.
            let Some(mut p) = self.peers.remove(region_id) else {
                continue; // merged away earlier in this round
            };
            let shape = (p.desc.epoch, p.desc.merging);
            let mut commands = 0;
            for e in &rd.committed_entries {
                match e.kind {
                    EntryKind::ConfChange => {
                        if let Ok(cc) = codec::decode::<ConfChange>(&e.data) {
                            if let Ok(cs) = p.raw.apply_conf_change(&cc) {
                                let before = p.desc.peers.clone();
                                p.apply_membership(&cc, &cs);
                                ctx.round.set_descriptor(*region_id, p.desc.encode());
                                membership_applied(node_id, &before, &p, &mut membership);
                            }
                        }
                    }
                    _ if is_command(e.kind, &e.data) => {
                        let mut merge = None;
                        let (result, session) = apply_command(
                            &mut ctx,
                            &mut p,
                            *region_id,
                            e.index,
                            &e.data,
                            &mut splits,
                            &mut merge,
                        )?;
                        if let Some(plan) = merge {
                            let before = merged_away.len();
                            take_in_source(
                                &mut ctx,
                                &*self.log,
                                &mut self.peers,
                                &mut p,
                                &plan,
                                &mut splits,
                                &mut merged_away,
                            )?;
                            let gone: Vec<u64> =
                                merged_away[before..].iter().map(|(id, _)| *id).collect();
                            self.regions.merge(&gone, p.route());
                        }
                        commands += 1;
                        p.written_since_check += e.data.len() as u64;
                        p.commands_since_check += 1;
                        if let Some(session) = session {
                            if !p.forwarded.is_empty() {
                                p.answer_forwarded(session, &result);
                            }
                        }
                        while p.proposals.front().is_some_and(|f| f.index <= e.index) {
                            let f = p.proposals.pop_front().expect("checked");
                            if f.index == e.index && f.term == e.term {
                                self.latencies.push(f.proposed_at);
                                answers.push((f.reply, result.clone()));
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
            if commands > 0 && ctx.kv.sessions_fold_due(*region_id).map_err(storage)? {
                // The region's session log has outgrown its base: this round writes every
                // session as the new base (from the table in memory, which holds them all;
                // a record that could not be decoded at load is not in it, and goes).
                let all = p
                    .sessions
                    .iter()
                    .map(|(client, seq, answer)| {
                        let s = codec::encode(&(seq, answer)).expect("a session encodes");
                        (client, Bytes::from(s))
                    })
                    .collect();
                ctx.round.set_all_sessions(*region_id, all);
            }
            let committed = rd.committed_entries.len() as u64;
            p.metrics.applied(committed, commands);
            applied_entries += committed;
            // (A split's routes change after the round, with its new regions, so that no
            // reader sees the range between them uncovered.)
            let split_here = splits.iter().any(|s| s.left.id == *region_id);
            if (p.desc.epoch, p.desc.merging) != shape && !split_here {
                self.regions.update(p.route());
            }
            self.peers.insert(*region_id, p);
        }
        if !ctx.round.is_empty() {
            self.kv.apply(ctx.round).map_err(storage)?;
        }
        // The new regions of a split exist once the round that holds their descriptors is
        // written; the old region's leader campaigns in them at once.
        for plan in splits {
            let trigger = self.cfg.region_max_bytes / SPLIT_CHECK_WRITTEN_FRACTION;
            let (campaign, written) = match self.peers.get_mut(&plan.left.id) {
                Some(p) => {
                    // Measured again: the part it kept may still be over the limit.
                    p.written_since_check = p.written_since_check.max(trigger);
                    (p.is_leader(), p.written_since_check)
                }
                None => (false, trigger),
            };
            let mut routes = Vec::with_capacity(plan.new.len() + 1);
            for d in &plan.new {
                self.load_region_routed(d.id, Some(campaign), false)?;
                if let Some(p) = self.peers.get_mut(&d.id) {
                    p.written_since_check = written;
                    routes.push(p.route());
                }
            }
            // The old region's range shrinks as the new ones appear, in one step: no
            // reader sees the ranges overlap or a gap between them.
            if let Some(p) = self.peers.get(&plan.left.id) {
                routes.push(p.route());
            }
            self.regions.replace(routes);
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
        Ok((merged_away, membership))
    }
}

/// The answer to a client for one applied entry.
type Answer = Result<KvResponse, NodeError>;

/// Applies one command entry; returns the client's answer and the command's session (if
/// the entry decoded far enough to name one). A split's plan goes to `splits`, for the
/// store to create the new regions once the round is applied. An `Err` is a storage
/// failure (the store stops).
#[allow(clippy::too_many_arguments)]
fn apply_command(
    ctx: &mut ApplyContext<'_>,
    p: &mut Peer,
    region_id: u64,
    index: u64,
    data: &[u8],
    splits: &mut Vec<SplitPlan>,
    merge: &mut Option<MergePlan>,
) -> Result<(Answer, Option<(u64, u64)>), NodeError> {
    let Ok(command) = Command::decode(data) else {
        return Ok((Ok(KvResponse::Failed("undecodable command".into())), None));
    };
    let session = Some((command.client_id, command.seq));
    let cmd = match KvCommand::decode(&command.payload) {
        Ok(c) => c,
        Err(e) => {
            return Ok((
                Ok(KvResponse::Failed(format!("undecodable command: {e}"))),
                session,
            ))
        }
    };
    if check_keys(&p.desc, &cmd).is_err() {
        // The region shrank (a split) after the command was proposed: nothing is applied
        // or remembered, and the client retries in the region that holds the key now.
        return Ok((Err(NodeError::KeyNotInRegion(region_id)), session));
    }
    if p.desc.merging.is_some() && !matches!(cmd, KvCommand::RollbackMerge) {
        // Frozen for a merge: nothing after the PrepareMerge changes the source (the
        // target applies its log only that far). The client retries, in the target once
        // the merge is done.
        return Ok((
            Err(NodeError::Dropped(format!("region {region_id} is merging"))),
            session,
        ));
    }
    let mut failure = None;
    let mut fresh = None;
    let mut plan = None;
    let mut new_desc = None;
    let mut merge_plan = None;
    let desc = &p.desc;
    let outcome = p.sessions.apply(command.client_id, command.seq, || {
        let r = match cmd {
            KvCommand::Split {
                split_keys,
                new_region_ids,
            } => match plan_split(desc, &split_keys, &new_region_ids) {
                Ok(pl) => {
                    plan = Some(pl);
                    Ok(KvResponse::Split(new_region_ids))
                }
                Err(why) => Ok(KvResponse::Failed(why)),
            },
            KvCommand::PrepareMerge { target } => {
                if target == region_id || target == 0 {
                    Ok(KvResponse::Failed(format!("bad merge target {target}")))
                } else {
                    new_desc = Some(RegionDescriptor {
                        merging: Some(MergeState {
                            target,
                            prepare_index: index,
                        }),
                        ..desc.clone()
                    });
                    Ok(KvResponse::Done)
                }
            }
            KvCommand::RollbackMerge => match desc.merging {
                None => Ok(KvResponse::Failed("the region is not merging".into())),
                Some(_) => {
                    let mut d = desc.clone();
                    d.merging = None;
                    d.epoch.version += 1;
                    new_desc = Some(d);
                    Ok(KvResponse::Done)
                }
            },
            KvCommand::CommitMerge {
                source,
                prepare_index,
            } => match plan_merge(desc, &source, prepare_index) {
                Ok(merged) => {
                    new_desc = Some(merged);
                    merge_plan = Some(MergePlan {
                        source,
                        prepare_index,
                    });
                    Ok(KvResponse::Done)
                }
                Err(why) => Ok(KvResponse::Failed(why)),
            },
            cmd => ctx.exec(region_id, cmd),
        };
        match r {
            Ok(r) => {
                let encoded = r.encode();
                fresh = Some(r);
                encoded
            }
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
            match fresh {
                Some(r) => r,
                None => KvResponse::Failed("storage failure".into()),
            }
        }
        SessionOutcome::Duplicate(b) => {
            KvResponse::decode(&b).unwrap_or(KvResponse::Failed("bad stored answer".into()))
        }
        SessionOutcome::Stale => KvResponse::Failed("stale request sequence".into()),
    };
    if let Some(plan) = plan {
        apply_split(ctx, p, region_id, &plan)?;
        splits.push(plan);
    }
    if let Some(d) = new_desc {
        p.desc = d;
        ctx.round.set_descriptor(region_id, p.desc.encode());
    }
    *merge = merge_plan;
    Ok((Ok(answer), session))
}

/// A target replica's side of a merge, at its `CommitMerge`: applies the rest of the local
/// source replica's log (up to its `PrepareMerge`; the entries are on every node, since the
/// source's leader waited for that), hands the source's client sessions to the target
/// (the higher sequence of each client wins), and removes the source's records — all in
/// the round that changes the target's range.
fn take_in_source(
    ctx: &mut ApplyContext<'_>,
    log: &dyn RaftLog,
    peers: &mut BTreeMap<u64, Peer>,
    target: &mut Peer,
    plan: &MergePlan,
    splits: &mut Vec<SplitPlan>,
    merged_away: &mut Vec<(u64, u64)>,
) -> Result<(), NodeError> {
    let source = peers.remove(&plan.source.id);
    merged_away.push((plan.source.id, plan.prepare_index));
    let storage = storage_error;
    let sid = plan.source.id;
    let tid = target.desc.id;
    let Some(mut s) = source else {
        error!(
            source = sid,
            target = tid,
            "merge: no replica of the source on this node; its range may be missing data here"
        );
        ctx.round.remove_region(sid);
        return Ok(());
    };
    if s.applied < plan.prepare_index {
        let entries = log
            .entries(sid, s.applied + 1, plan.prepare_index + 1, u64::MAX)
            .map_err(storage)?;
        if entries.first().map(|e| e.index) != Some(s.applied + 1)
            || entries.last().map(|e| e.index) != Some(plan.prepare_index)
        {
            return Err(NodeError::Storage(format!(
                "merge of region {sid}: its log here lacks entries {}..={}",
                s.applied + 1,
                plan.prepare_index
            )));
        }
        for e in entries {
            if is_command(e.kind, &e.data) {
                let mut nested = None;
                let _ = apply_command(ctx, &mut s, sid, e.index, &e.data, splits, &mut nested)?;
                // The source took in a region of its own before it was frozen.
                if let Some(inner) = nested {
                    take_in_source(ctx, log, peers, &mut s, &inner, splits, merged_away)?;
                }
            }
            ctx.round.set_applied(sid, e.index);
            s.applied = e.index;
        }
    }
    let mut sessions: BTreeMap<u64, (u64, Bytes)> = BTreeMap::new();
    for (client, bytes) in ctx.kv.sessions(sid).map_err(storage)? {
        if let Ok(v) = codec::decode::<(u64, Bytes)>(&bytes) {
            sessions.insert(client, v);
        }
    }
    for (client, seq, answer) in s.sessions.iter() {
        sessions.insert(client, (seq, answer));
    }
    for (client, (seq, answer)) in sessions {
        // (The target's table is whole: a replica loads every session when it starts.)
        if target.sessions.last_seq(client).is_none_or(|t| seq > t) {
            let bytes = codec::encode(&(seq, answer.clone())).expect("a session encodes");
            ctx.round.set_session(tid, client, bytes);
            target.sessions.restore(client, seq, answer);
        }
    }
    ctx.round.remove_region(sid);
    s.fail_all(NodeError::Dropped(format!(
        "region {sid} merged into {tid}"
    )));
    info!(source = sid, target = tid, "regions merged");
    Ok(())
}

/// Writes a split into the apply round: the old region's new descriptor, and for each new
/// region its descriptor, an applied index of 0 (its log starts empty) and a copy of the
/// old region's client sessions (a retry of a write the old region applied must not apply
/// again in the region that holds its key now).
fn apply_split(
    ctx: &mut ApplyContext<'_>,
    p: &mut Peer,
    region_id: u64,
    plan: &SplitPlan,
) -> Result<(), NodeError> {
    let storage = storage_error;
    let mut sessions: BTreeMap<u64, Vec<u8>> = ctx
        .kv
        .sessions(region_id)
        .map_err(storage)?
        .into_iter()
        .collect();
    for (client, seq, answer) in p.sessions.iter() {
        let s = codec::encode(&(seq, answer)).expect("a session encodes");
        sessions.insert(client, s);
    }
    p.desc = plan.left.clone();
    ctx.round.set_descriptor(region_id, p.desc.encode());
    for d in &plan.new {
        ctx.round.set_descriptor(d.id, d.encode());
        ctx.round.set_applied(d.id, 0);
        for (client, s) in &sessions {
            ctx.round.set_session(d.id, *client, s.clone());
        }
    }
    info!(
        region = region_id,
        new = ?plan.new.iter().map(|d| d.id).collect::<Vec<_>>(),
        "region split"
    );
    Ok(())
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
                    .map_err(storage_error);
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
                    .scan(&KeyRange::new(start, end.clone()), limit)
                    .map(|v| ScanPage {
                        pairs: v,
                        covered_end: end,
                    })
                    .map_err(storage_error);
                count(r.is_ok());
                let _ = reply.send(r);
            }
        }
    }
    (served, failed)
}

/// Addresses a region's messages to the nodes of their peers (a message to a peer the
/// descriptor does not know is left out).
fn envelopes_into(
    node_id: u64,
    desc: &RegionDescriptor,
    msgs: Vec<flotilla_common::Message>,
    out: &mut Vec<RaftEnvelope>,
) {
    for m in msgs {
        let Some(to) = desc.peer(m.to) else { continue };
        out.push(RaftEnvelope::new(desc.id, node_id, to.node_id, m));
    }
}

/// Sends a round's envelopes in one batch: each node's sender wakes once for all of them.
/// [`Store::log_wake`]'s waker: sends `acks` once the write is durable, unless it or an
/// earlier write `failed` (which a failed write sets), then wakes the loop (`wake_tx`).
fn acks_when_durable(
    failed: Arc<AtomicBool>,
    transport: Arc<dyn Transport>,
    wake_tx: Sender<StoreMsg>,
    acks: Vec<RaftEnvelope>,
) -> LogWaker {
    Box::new(move |durable| {
        if !durable {
            failed.store(true, Ordering::Release);
        } else if !failed.load(Ordering::Acquire) {
            send_envelopes(&*transport, acks);
        }
        // A full inbox means the loop has inputs to take and reaps the write in its round.
        let _ = wake_tx.try_send(StoreMsg::LogWritten);
    })
}

fn send_envelopes(transport: &dyn Transport, envelopes: Vec<RaftEnvelope>) {
    if envelopes.is_empty() {
        return;
    }
    for e in transport.send_batch(envelopes) {
        // Raft retries whatever is lost; the transport counts the drop.
        tracing::debug!("send failed: {e}");
    }
}

#[cfg(test)]
mod bootstrap_tests {
    use super::bootstrap_nodes;

    #[test]
    fn bootstrap_spreads_replicas_evenly_over_the_initial_nodes() {
        let nodes = [1, 2, 3, 4, 5];
        let mut held = std::collections::BTreeMap::new();
        for i in 0..64 {
            let members = bootstrap_nodes(&nodes, i, 3);
            let mut distinct = members.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "region {i}: {members:?}");
            for n in members {
                *held.entry(n).or_insert(0) += 1;
            }
        }
        let (min, max) = (held.values().min(), held.values().max());
        assert!(max.unwrap() - min.unwrap() <= 1, "{held:?}");
        // No more replicas than nodes; at least one.
        assert_eq!(bootstrap_nodes(&[1, 2, 3], 7, 5), vec![2, 3, 1]);
        assert_eq!(bootstrap_nodes(&[4, 9], 0, 0), vec![4]);
    }
}

#[cfg(test)]
mod region_map_tests {
    use super::{RegionMap, RegionRoute};
    use bytes::Bytes;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn route(id: u64, start: &'static [u8], end: &'static [u8]) -> RegionRoute {
        RegionRoute {
            id,
            start_key: Bytes::from_static(start),
            end_key: Bytes::from_static(end),
            epoch: Default::default(),
            leader_node: None,
            voter_nodes: Vec::new(),
            merging_into: None,
        }
    }

    /// Whether the routes, in key order, cover the key space once: no gap, no overlap.
    fn tiles(routes: &[RegionRoute]) -> bool {
        routes.first().is_some_and(|r| r.start_key.is_empty())
            && routes.last().is_some_and(|r| r.end_key.is_empty())
            && routes.windows(2).all(|w| w[0].end_key == w[1].start_key)
    }

    /// A split published with `replace` is seen whole or not at all: a reader looking at
    /// the table while regions split and merge back never finds two ranges overlapping or
    /// a gap (two separate updates, the new region's first, showed an overlap).
    #[test]
    fn readers_never_see_a_split_half_published() {
        let map = Arc::new(RegionMap::default());
        map.update(route(1, b"", b""));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (map, done) = (map.clone(), done.clone());
            std::thread::spawn(move || {
                let mut looks = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let all = map.all();
                    assert!(tiles(&all), "after {looks} looks: {all:?}");
                    looks += 1;
                }
                looks
            })
        };
        for _ in 0..20_000 {
            map.replace(vec![route(2, b"m", b""), route(1, b"", b"m")]);
            map.merge(&[2], route(1, b"", b""));
        }
        done.store(true, Ordering::Relaxed);
        let looks = reader
            .join()
            .expect("the reader saw the table tile every time");
        assert!(looks > 0);
    }
}

#[cfg(test)]
mod ack_tests {
    use super::{acks_when_durable, StoreMsg};
    use flotilla_common::{Message, MessageKind, RaftEnvelope};
    use flotilla_transport::{Inbound, MemoryNetwork, Transport};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn ack(index: u64) -> Vec<RaftEnvelope> {
        let mut m = Message::new(MessageKind::AppendResponse, 2, 1, 3);
        m.index = index;
        vec![RaftEnvelope::new(7, 2, 1, m)]
    }

    /// A round's acknowledgements leave from the writer thread once its write is durable —
    /// and never for a failed write, nor for any write after one, whose acknowledgements
    /// may promise entries the failed write carried. The loop is woken every time.
    #[test]
    fn acknowledgements_leave_with_a_durable_write_and_never_after_a_failed_one() {
        let net = MemoryNetwork::new(1);
        let (leader_side, mut leader_inbox) = net.join(1, 64);
        let (follower, _follower_inbox) = net.join(2, 64);
        drop(leader_side);
        let transport: Arc<dyn Transport> = Arc::new(follower);
        let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel(16);
        let failed = Arc::new(AtomicBool::new(false));
        let waker = |index| {
            acks_when_durable(
                failed.clone(),
                transport.clone(),
                wake_tx.clone(),
                ack(index),
            )
        };
        let received = |inbox: &mut flotilla_transport::InboundReceiver| {
            let mut indexes = Vec::new();
            while let Ok(m) = inbox.try_recv() {
                if let Inbound::Messages { envelopes, .. } = m {
                    indexes.extend(envelopes.iter().map(|e| e.message.index));
                }
            }
            indexes
        };
        waker(10)(true);
        assert_eq!(received(&mut leader_inbox), vec![10]);
        waker(11)(false);
        waker(12)(true);
        assert_eq!(received(&mut leader_inbox), Vec::<u64>::new());
        let wakes = wake_rx
            .try_iter()
            .filter(|m| matches!(m, StoreMsg::LogWritten));
        assert_eq!(wakes.count(), 3);
    }
}
