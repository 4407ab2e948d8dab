//! One region's replica on a node: its raft core, descriptor, and the client requests
//! waiting on it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use flotilla_common::{codec, ConfChange, ConfState, EntryKind};
use tokio::sync::oneshot;

use super::command::{KvCommand, KvResponse};
use super::descriptor::{PeerMeta, PeerRole, RegionDescriptor};
use super::error::NodeError;
use super::metrics::RegionMetrics;
use super::peer_storage::PeerStorage;
use super::store::RegionRoute;
use crate::raft::{RawNode, Role, SessionTable};

/// Where an answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// A proposal waiting for its entry to be applied.
pub(crate) struct PendingProposal {
    pub term: u64,
    pub index: u64,
    pub reply: Reply<KvResponse>,
    /// Start of the round that received the write (for the proposal latency).
    pub proposed_at: Instant,
}

/// A command accepted this round, proposed (or forwarded) with the others when the round's
/// Readies are taken.
pub(crate) struct BatchedProposal {
    /// The encoded [`crate::raft::Command`].
    pub data: Bytes,
    /// Its client session, which names it when a follower waits for it to apply.
    pub session: (u64, u64),
    pub reply: Reply<KvResponse>,
    /// Start of the round that received the write (for the proposal latency).
    pub proposed_at: Instant,
}

/// A command this follower forwarded to its leader, waiting to see it applied.
pub(crate) struct ForwardedProposal {
    pub reply: Reply<KvResponse>,
    /// The store tick after which it is given up (answered `Dropped`, so the caller
    /// retries with the same session): the leader may have dropped it without a word.
    pub deadline: u64,
}

/// What a scan within one region read: the pairs, and the end of the range it covered (the
/// asked end, or the region's end when that comes first, as the region was when the scan
/// was served; empty: the end of the key space). A caller walking region by region goes on
/// from `covered_end`, not from the end of the region it routed to: a split between routing
/// and serving makes the region shorter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// The pairs read, in key order.
    pub pairs: Vec<(Bytes, Bytes)>,
    /// The end (exclusive) of the range the scan covered.
    pub covered_end: Bytes,
}

/// A read waiting for its read index, then for the state machine to reach it.
pub(crate) enum PendingRead {
    Get {
        key: Bytes,
        reply: Reply<Option<Bytes>>,
    },
    Scan {
        start: Bytes,
        end: Bytes,
        limit: usize,
        reply: Reply<ScanPage>,
    },
}

/// A region's replica.
pub struct Peer {
    pub(crate) raw: RawNode<PeerStorage>,
    pub(crate) desc: RegionDescriptor,
    pub(crate) sessions: SessionTable,
    pub(crate) proposals: VecDeque<PendingProposal>,
    /// Commands accepted this round, proposed together when the round's Readies are taken.
    pub(crate) batched: Vec<BatchedProposal>,
    /// Commands forwarded to the leader, by client session, waiting to be applied here.
    pub(crate) forwarded: HashMap<(u64, u64), Vec<ForwardedProposal>>,
    /// (deadline, session) of every forwarded command, oldest first.
    pub(crate) forwarded_deadlines: VecDeque<(u64, (u64, u64))>,
    /// Reads sent to raft, by context id.
    pub(crate) reads_waiting_index: HashMap<u64, PendingRead>,
    /// (deadline, context id) of reads sent to raft, oldest first: a follower's read
    /// index request can be lost on its way to the leader.
    pub(crate) read_deadlines: VecDeque<(u64, u64)>,
    /// Reads confirmed at an index, waiting for apply.
    pub(crate) reads_waiting_apply: BTreeMap<(u64, u64), PendingRead>,
    pub(crate) applied: u64,
    /// Bytes of commands applied since the last size check (a hint, not a size).
    pub(crate) written_since_check: u64,
    /// Commands applied since the last load check, and how many checks in a row found the
    /// rate over the split threshold.
    pub(crate) commands_since_check: u64,
    pub(crate) hot_checks: u32,
    /// A size check of this region is running.
    pub(crate) checking: bool,
    /// The answer to this (source) region's `CommitMerge`, while it is proposed.
    pub(crate) merge_pending: Option<oneshot::Receiver<Result<KvResponse, NodeError>>>,
    /// This region's metric handles.
    pub(crate) metrics: RegionMetrics,
}

impl Peer {
    pub(crate) fn new(raw: RawNode<PeerStorage>, desc: RegionDescriptor, applied: u64) -> Self {
        let metrics = RegionMetrics::new(desc.id);
        Peer {
            raw,
            desc,
            sessions: SessionTable::new(),
            proposals: VecDeque::new(),
            batched: Vec::new(),
            forwarded: HashMap::new(),
            forwarded_deadlines: VecDeque::new(),
            reads_waiting_index: HashMap::new(),
            read_deadlines: VecDeque::new(),
            reads_waiting_apply: BTreeMap::new(),
            applied,
            written_since_check: 0,
            commands_since_check: 0,
            hot_checks: 0,
            checking: false,
            merge_pending: None,
            metrics,
        }
    }

    /// Whether this replica leads its region.
    pub fn is_leader(&self) -> bool {
        self.raw.raft().role() == Role::Leader
    }

    /// The node hosting the leader, if known.
    pub fn leader_node(&self) -> Option<u64> {
        let leader = self.raw.raft().leader_id();
        if leader == 0 {
            return None;
        }
        self.desc.peer(leader).map(|p| p.node_id)
    }

    /// This region as request routing sees it.
    pub fn route(&self) -> RegionRoute {
        RegionRoute {
            id: self.desc.id,
            start_key: self.desc.start_key.clone(),
            end_key: self.desc.end_key.clone(),
            epoch: self.desc.epoch,
            leader_node: self.leader_node(),
            voter_nodes: self
                .desc
                .peers
                .iter()
                .filter(|p| p.role == PeerRole::Voter)
                .map(|p| p.node_id)
                .collect(),
            merging_into: self.desc.merging.map(|m| m.target),
        }
    }

    pub(crate) fn not_leader(&self) -> NodeError {
        NodeError::NotLeader {
            region_id: self.desc.id,
            leader_node: self.leader_node(),
        }
    }

    /// Fails every waiting request (leadership lost, or the node stops).
    pub(crate) fn fail_all(&mut self, err: NodeError) {
        for p in self.proposals.drain(..) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for b in self.batched.drain(..) {
            let _ = b.reply.send(Err(err.clone()));
        }
        self.fail_forwarded(&err);
        let waiting = std::mem::take(&mut self.reads_waiting_apply).into_values();
        for r in self
            .reads_waiting_index
            .drain()
            .map(|(_, r)| r)
            .chain(waiting)
        {
            r.fail(err.clone());
        }
    }

    /// Fails every forwarded command still waiting (the leader changed: it may never be
    /// appended; the caller retries with the same session, so it applies at most once).
    pub(crate) fn fail_forwarded(&mut self, err: &NodeError) {
        self.forwarded_deadlines.clear();
        for (_, waiting) in self.forwarded.drain() {
            for f in waiting {
                let _ = f.reply.send(Err(err.clone()));
            }
        }
    }

    /// Answers the forwarded commands of `session` with the outcome of applying it.
    pub(crate) fn answer_forwarded(
        &mut self,
        session: (u64, u64),
        result: &Result<KvResponse, NodeError>,
    ) {
        if let Some(waiting) = self.forwarded.remove(&session) {
            for f in waiting {
                let _ = f.reply.send(result.clone());
            }
        }
    }

    /// Gives up on forwarded commands and reads whose deadline passed at store tick `now`.
    pub(crate) fn expire(&mut self, now: u64) {
        while let Some(&(deadline, session)) = self.forwarded_deadlines.front() {
            if deadline > now {
                break;
            }
            self.forwarded_deadlines.pop_front();
            if let Some(waiting) = self.forwarded.get_mut(&session) {
                let (expired, kept): (Vec<_>, Vec<_>) =
                    waiting.drain(..).partition(|f| f.deadline <= now);
                *waiting = kept;
                if waiting.is_empty() {
                    self.forwarded.remove(&session);
                }
                for f in expired {
                    let _ = f.reply.send(Err(NodeError::Dropped(
                        "forwarded to the leader but not applied in time".into(),
                    )));
                }
            }
        }
        while let Some(&(deadline, ctx)) = self.read_deadlines.front() {
            if deadline > now {
                break;
            }
            self.read_deadlines.pop_front();
            if let Some(r) = self.reads_waiting_index.remove(&ctx) {
                r.fail(NodeError::Dropped(
                    "read index not confirmed by the leader in time".into(),
                ));
            }
        }
    }

    /// Updates the descriptor for an applied membership change.
    pub(crate) fn apply_membership(&mut self, cc: &ConfChange, cs: &ConfState) {
        let mut nodes: HashMap<u64, u64> = self
            .desc
            .peers
            .iter()
            .map(|p| (p.peer_id, p.node_id))
            .collect();
        // A new member's node comes with the change.
        if let Ok(meta) = codec::decode::<PeerMeta>(&cc.context) {
            nodes.insert(meta.peer_id, meta.node_id);
        }
        let mut peers = Vec::new();
        for &id in cs.voters.iter().chain(&cs.voters_outgoing) {
            if peers.iter().any(|p: &PeerMeta| p.peer_id == id) {
                continue;
            }
            if let Some(&node_id) = nodes.get(&id) {
                peers.push(PeerMeta {
                    peer_id: id,
                    node_id,
                    role: PeerRole::Voter,
                });
            }
        }
        for &id in cs.learners.iter().chain(&cs.learners_next) {
            if let Some(&node_id) = nodes.get(&id) {
                if !peers.iter().any(|p| p.peer_id == id) {
                    peers.push(PeerMeta {
                        peer_id: id,
                        node_id,
                        role: PeerRole::Learner,
                    });
                }
            }
        }
        self.desc.peers = peers;
        self.desc.epoch.conf_ver += 1;
    }
}

impl PendingRead {
    pub(crate) fn fail(self, err: NodeError) {
        match self {
            PendingRead::Get { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            PendingRead::Scan { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// Whether an entry is a client command (not a no-op or membership change).
pub(crate) fn is_command(kind: EntryKind, data: &[u8]) -> bool {
    kind == EntryKind::Normal && !data.is_empty()
}

/// Checks that every key of `cmd` lies in `desc`.
pub(crate) fn check_keys(desc: &RegionDescriptor, cmd: &KvCommand) -> Result<(), NodeError> {
    if cmd.all_keys(|k| desc.contains(k)) {
        Ok(())
    } else {
        Err(NodeError::KeyNotInRegion(desc.id))
    }
}
