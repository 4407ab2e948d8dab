//! The workload: clients that write and read, and an operator that changes membership,
//! transfers leadership and forces elections — all driven by the simulation's seeded RNG.
//!
//! A client has one operation outstanding at a time. A write carries (client id, sequence)
//! and, when no answer comes within [`CLIENT_TIMEOUT_TICKS`], is sent again — possibly to
//! another peer — with the SAME sequence, so the log may hold it several times and client
//! sessions must make it take effect once. A write sent to a follower is, half the time,
//! forwarded by it to its leader (`forward_proposals`). A write is acknowledged when a peer
//! it was proposed to (or forwarded by) applies it. A read goes through ReadIndex (or the lease, per the group's
//! configuration) on the peer the client believes leads, or on a follower, which forwards it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use flotilla_common::{ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::invariants::{Invariants, ReadToken, Violation};
use super::node::{parse_read_ctx, read_ctx, NodeEvent, SimNode};
use crate::raft::session::Command;
use crate::raft::{Error, Role};

/// Ticks a client waits for an answer before it sends its write again (same sequence) or
/// gives up on a read: four base election timeouts, long enough for a leader change and a
/// commit round under delays, short enough to retry many times per run.
pub const CLIENT_TIMEOUT_TICKS: u64 = 40;

/// Ticks after a `NotLeader` or dropped proposal before the client tries again: it follows
/// the leader hint at once, but without spinning within one tick.
pub const CLIENT_BACKOFF_TICKS: u64 = 1;

/// Keys the clients write and read: few, so reads often meet concurrent writes.
pub const KEYS: u64 = 4;

/// How the workload behaves.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Number of clients.
    pub clients: usize,
    /// Probability that an idle client starts an operation in a tick.
    pub op_probability: f64,
    /// Fraction of operations that are reads.
    pub read_fraction: f64,
    /// Probability per tick of a membership change.
    pub membership_probability: f64,
    /// Probability per tick of a leader transfer.
    pub transfer_probability: f64,
    /// Probability per tick that a random voter campaigns at once.
    pub campaign_probability: f64,
    /// Voters the operator aims for (the group's initial size).
    pub target_voters: usize,
    /// Peer ids go up to this (fresh ids for new members; removed ids are never reused).
    pub node_id_max: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Idle,
    Write {
        seq: u64,
        data: Bytes,
        proposed_to: BTreeSet<u64>,
        retry_at: u64,
        attempts: u64,
    },
    Read {
        read_id: u64,
        give_up_at: u64,
    },
}

#[derive(Debug, Clone)]
struct Client {
    id: u64,
    seq: u64,
    op: Op,
    leader_hint: u64,
}

#[derive(Debug, Clone)]
struct PendingRead {
    client: u64,
    token: ReadToken,
    forget_at: u64,
}

/// Counters of what the workload did.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkloadStats {
    /// Writes acknowledged to clients.
    pub writes_acked: u64,
    /// Proposals handed to a core (first tries and retries).
    pub proposals: u64,
    /// Retries of a write with the same sequence after a timeout.
    pub retries: u64,
    /// Writes a follower forwarded to its leader (counted in `proposals` too).
    pub forwarded: u64,
    /// Reads answered and checked.
    pub reads_answered: u64,
    /// Reads abandoned (no answer in time).
    pub reads_abandoned: u64,
    /// Membership changes proposed and accepted by a leader.
    pub conf_changes: u64,
    /// Leader transfers requested.
    pub transfers: u64,
    /// Forced campaigns.
    pub campaigns: u64,
}

/// Everything the workload acts on.
pub struct Env<'a> {
    /// All peers by id.
    pub nodes: &'a mut BTreeMap<u64, SimNode>,
    /// The simulation's RNG.
    pub rng: &'a mut ChaCha8Rng,
    /// The checkers.
    pub inv: &'a mut Invariants,
    /// The current tick.
    pub now: u64,
}

/// Clients and the operator.
#[derive(Debug)]
pub struct Workload {
    config: WorkloadConfig,
    clients: Vec<Client>,
    reads: BTreeMap<u64, PendingRead>,
    next_read_id: u64,
    /// Whether clients start new operations and the operator acts (off once faults stop,
    /// so that liveness is judged on the operations already pending).
    pub active: bool,
    /// Counters.
    pub stats: WorkloadStats,
    /// The next fresh peer id.
    pub next_node_id: u64,
    /// Fresh peers the operator wants created.
    wanted: Vec<u64>,
}

impl Workload {
    /// Clients with ids 1..=n; new peers get ids after `first_free_node_id - 1`.
    pub fn new(config: WorkloadConfig, first_free_node_id: u64) -> Self {
        let clients = (1..=config.clients as u64)
            .map(|id| Client {
                id,
                seq: 0,
                op: Op::Idle,
                leader_hint: 0,
            })
            .collect();
        Workload {
            config,
            clients,
            reads: BTreeMap::new(),
            next_read_id: 1,
            active: true,
            stats: WorkloadStats::default(),
            next_node_id: first_free_node_id,
            wanted: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &WorkloadConfig {
        &self.config
    }

    /// Writes not yet acknowledged, as (client, seq).
    pub fn pending_writes(&self) -> Vec<(u64, u64)> {
        self.clients
            .iter()
            .filter_map(|c| match c.op {
                Op::Write { seq, .. } => Some((c.id, seq)),
                _ => None,
            })
            .collect()
    }

    /// Whether every client is idle (all writes acknowledged, no read waiting).
    pub fn all_idle(&self) -> bool {
        self.clients.iter().all(|c| matches!(c.op, Op::Idle))
    }

    /// One tick of client and operator activity.
    pub fn tick(&mut self, env: &mut Env<'_>) {
        let now = env.now;
        self.reads.retain(|_, r| r.forget_at > now);
        for ci in 0..self.clients.len() {
            self.client_tick(ci, env);
        }
        if !self.active {
            return;
        }
        if env.rng.gen_bool(self.config.membership_probability) {
            self.change_membership(env);
        }
        if env.rng.gen_bool(self.config.transfer_probability) {
            self.transfer(env);
        }
        if env.rng.gen_bool(self.config.campaign_probability) {
            let voters: Vec<u64> = env
                .nodes
                .values()
                .filter(|n| n.raw.as_ref().is_some_and(|r| r.raft().promotable()))
                .map(|n| n.id)
                .collect();
            if let Some(&id) = voters.choose(env.rng) {
                if let Some(raw) = env.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
                    if raw.campaign().is_ok() {
                        self.stats.campaigns += 1;
                    }
                }
            }
        }
    }

    /// Picks the peer a client sends to: its leader hint if that peer is up, else a random
    /// running member.
    fn pick_target(hint: u64, env: &mut Env<'_>) -> Option<u64> {
        if env.nodes.get(&hint).is_some_and(|n| n.is_up()) && env.rng.gen_bool(0.9) {
            return Some(hint);
        }
        let up: Vec<u64> = env
            .nodes
            .values()
            .filter(|n| n.is_up() && n.joined)
            .map(|n| n.id)
            .collect();
        up.choose(env.rng).copied()
    }

    fn client_tick(&mut self, ci: usize, env: &mut Env<'_>) {
        let now = env.now;
        let client = &mut self.clients[ci];
        match &mut client.op {
            Op::Idle => {
                if !self.active || !env.rng.gen_bool(self.config.op_probability) {
                    return;
                }
                if env.rng.gen_bool(self.config.read_fraction) {
                    let key = env.rng.gen_range(0..KEYS);
                    let Some(target) = Self::pick_target(client.leader_hint, env) else {
                        return;
                    };
                    let read_id = self.next_read_id;
                    self.next_read_id += 1;
                    let token = env.inv.linearizable_reads.issue(key);
                    let raw = env
                        .nodes
                        .get_mut(&target)
                        .and_then(|n| n.raw.as_mut())
                        .expect("target is up");
                    if raw.read_index(read_ctx(read_id, key)).is_ok() {
                        // Late answers are still checked until the entry is forgotten.
                        let forget_at = now + 4 * CLIENT_TIMEOUT_TICKS;
                        self.reads.insert(
                            read_id,
                            PendingRead {
                                client: client.id,
                                token,
                                forget_at,
                            },
                        );
                        client.op = Op::Read {
                            read_id,
                            give_up_at: now + CLIENT_TIMEOUT_TICKS,
                        };
                    }
                } else {
                    client.seq += 1;
                    let key = env.rng.gen_range(0..KEYS);
                    let cmd = Command {
                        client_id: client.id,
                        seq: client.seq,
                        payload: Bytes::from(vec![key as u8]),
                    };
                    client.op = Op::Write {
                        seq: client.seq,
                        data: Bytes::from(cmd.encode()),
                        proposed_to: BTreeSet::new(),
                        retry_at: now,
                        attempts: 0,
                    };
                    self.propose(ci, env);
                }
            }
            Op::Write { retry_at, .. } => {
                if now >= *retry_at {
                    self.propose(ci, env);
                }
            }
            Op::Read { give_up_at, .. } => {
                if now >= *give_up_at {
                    client.op = Op::Idle;
                    self.stats.reads_abandoned += 1;
                }
            }
        }
    }

    /// Sends client `ci`'s write (first try or retry with the same sequence).
    fn propose(&mut self, ci: usize, env: &mut Env<'_>) {
        let now = env.now;
        let hint = self.clients[ci].leader_hint;
        let target = Self::pick_target(hint, env);
        let client = &mut self.clients[ci];
        let Op::Write {
            data,
            proposed_to,
            retry_at,
            attempts,
            ..
        } = &mut client.op
        else {
            return;
        };
        let Some(target) = target else {
            *retry_at = now + CLIENT_BACKOFF_TICKS;
            return;
        };
        // Half the writes that reach a follower are forwarded by it to its leader (as a
        // node does); the other half are refused, and the client follows the hint.
        let forward = env.rng.gen_bool(0.5);
        let raw = env
            .nodes
            .get_mut(&target)
            .and_then(|n| n.raw.as_mut())
            .expect("target is up");
        let mut outcome = raw.propose(data.clone()).map(|_| ());
        if forward && matches!(outcome, Err(Error::NotLeader { leader_hint }) if leader_hint != 0) {
            outcome = raw.forward_proposals([data.clone()]).map(|_| ());
            if outcome.is_ok() {
                self.stats.forwarded += 1;
            }
        }
        match outcome {
            Ok(()) => {
                self.stats.proposals += 1;
                if *attempts > 0 {
                    self.stats.retries += 1;
                }
                *attempts += 1;
                proposed_to.insert(target);
                client.leader_hint = target;
                *retry_at = now + CLIENT_TIMEOUT_TICKS;
            }
            Err(Error::NotLeader { leader_hint }) => {
                client.leader_hint = leader_hint;
                *retry_at = now + CLIENT_BACKOFF_TICKS;
            }
            Err(_) => {
                *retry_at = now + CLIENT_BACKOFF_TICKS;
            }
        }
    }

    /// Routes what a peer did to the clients and the read checker.
    pub fn on_event(&mut self, event: NodeEvent, inv: &mut Invariants) -> Result<(), Violation> {
        match event {
            NodeEvent::Applied {
                node,
                client,
                seq,
                key,
                ..
            } => {
                let Some(c) = self.clients.iter_mut().find(|c| c.id == client) else {
                    return Ok(());
                };
                if let Op::Write {
                    seq: s,
                    proposed_to,
                    ..
                } = &c.op
                {
                    if *s == seq && proposed_to.contains(&node) {
                        inv.linearizable_reads.observe_ack(key, client, seq);
                        c.op = Op::Idle;
                        self.stats.writes_acked += 1;
                    }
                }
                Ok(())
            }
            NodeEvent::ReadAnswered {
                node,
                ctx,
                read_index,
                applied,
                value,
            } => {
                let Some((read_id, _key)) = parse_read_ctx(&ctx) else {
                    return Ok(());
                };
                let Some(read) = self.reads.remove(&read_id) else {
                    return Ok(());
                };
                let exactly_once = &inv.exactly_once;
                inv.linearizable_reads.observe_answer(
                    node,
                    &read.token,
                    read_index,
                    applied,
                    &value,
                    |c, s| exactly_once.effect_index(c, s),
                )?;
                self.stats.reads_answered += 1;
                if let Some(c) = self.clients.iter_mut().find(|c| c.id == read.client) {
                    if matches!(c.op, Op::Read { read_id: r, .. } if r == read_id) {
                        c.op = Op::Idle;
                    }
                }
                Ok(())
            }
        }
    }

    /// The running leader with the highest term, if any.
    pub fn leader(nodes: &BTreeMap<u64, SimNode>) -> Option<u64> {
        nodes
            .values()
            .filter(|n| n.is_leader())
            .max_by_key(|n| n.raw.as_ref().map(|r| r.raft().term()))
            .map(|n| n.id)
    }

    /// Asks for a new peer id: a started peer that never joined (an earlier add that did not
    /// commit), or a fresh id. The caller creates and starts the peer.
    pub fn peer_for_adding(&mut self, nodes: &BTreeMap<u64, SimNode>) -> Option<u64> {
        if let Some(n) = nodes
            .values()
            .find(|n| !n.joined && !n.decommissioned && n.is_up())
        {
            return Some(n.id);
        }
        if self.next_node_id > self.config.node_id_max {
            return None;
        }
        self.next_node_id += 1;
        Some(self.next_node_id - 1)
    }

    /// The operator proposes one membership change on the leader: promote a learner, swap a
    /// learner for a voter through a joint configuration, remove or demote a voter, add or
    /// remove a learner, or leave an explicit joint configuration. A fresh peer is first
    /// asked for (see [`Workload::take_wanted_peers`]) and added on a later try.
    fn change_membership(&mut self, env: &mut Env<'_>) {
        let Some(lid) = Self::leader(env.nodes) else {
            return;
        };
        let (conf, pending, applied) = {
            let raft = env.nodes[&lid].raw.as_ref().expect("leader is up").raft();
            (raft.conf_state(), raft.pending_conf_index(), raft.applied())
        };
        let rng = &mut *env.rng;
        let cc = if !conf.voters_outgoing.is_empty() {
            if conf.auto_leave {
                return;
            }
            ConfChange::leave_joint()
        } else {
            if pending > applied {
                return;
            }
            let voters = conf.voters.clone();
            let learners = conf.learners.clone();
            let target = self.config.target_voters;
            let roll: f64 = rng.gen();
            if !learners.is_empty() && roll < 0.5 {
                let l = *learners.choose(rng).expect("not empty");
                if voters.len() <= target && rng.gen_bool(0.5) {
                    ConfChange::single(ConfChangeKind::AddVoter, l)
                } else {
                    // Swap a voter out and the learner in, through the joint configuration.
                    let v = *voters.choose(rng).expect("a group has voters");
                    let out_kind = if rng.gen_bool(0.5) {
                        ConfChangeKind::RemoveNode
                    } else {
                        ConfChangeKind::AddLearner
                    };
                    let transition = *[
                        ConfChangeTransition::Auto,
                        ConfChangeTransition::JointImplicit,
                        ConfChangeTransition::JointExplicit,
                    ]
                    .choose(rng)
                    .expect("not empty");
                    ConfChange {
                        transition,
                        changes: vec![
                            ConfChangeSingle {
                                kind: ConfChangeKind::AddVoter,
                                node_id: l,
                            },
                            ConfChangeSingle {
                                kind: out_kind,
                                node_id: v,
                            },
                        ],
                        ..Default::default()
                    }
                }
            } else if voters.len() > target
                || (voters.len() == target && roll < 0.6 && voters.len() > 1 && learners.len() > 1)
            {
                let v = *voters.choose(rng).expect("a group has voters");
                let kind = if rng.gen_bool(0.7) {
                    ConfChangeKind::RemoveNode
                } else {
                    ConfChangeKind::AddLearner
                };
                ConfChange::single(kind, v)
            } else if learners.len() < 2 {
                let Some(id) = self.peer_for_adding(env.nodes) else {
                    return;
                };
                if !env.nodes.contains_key(&id) {
                    // The simulation creates the peer on its next step (see `wanted_peers`).
                    self.wanted.push(id);
                    return;
                }
                ConfChange::single(ConfChangeKind::AddLearner, id)
            } else {
                let l = *learners.choose(rng).expect("not empty");
                ConfChange::single(ConfChangeKind::RemoveNode, l)
            }
        };
        let raw = env
            .nodes
            .get_mut(&lid)
            .and_then(|n| n.raw.as_mut())
            .expect("leader is up");
        if raw.propose_conf_change(cc).is_ok() {
            self.stats.conf_changes += 1;
        }
    }

    /// Peers the operator wants created and started (drained by the simulation).
    pub fn take_wanted_peers(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.wanted)
    }

    /// Asks the leader (directly, or through a follower that forwards it) to hand
    /// leadership to a random other voter.
    fn transfer(&mut self, env: &mut Env<'_>) {
        let Some(lid) = Self::leader(env.nodes) else {
            return;
        };
        let conf = env.nodes[&lid]
            .raw
            .as_ref()
            .expect("leader is up")
            .raft()
            .conf_state();
        let others: Vec<u64> = conf.voters.iter().copied().filter(|&v| v != lid).collect();
        let Some(&to) = others.choose(env.rng) else {
            return;
        };
        let via = if env.rng.gen_bool(0.7) {
            lid
        } else {
            let followers: Vec<u64> = env
                .nodes
                .values()
                .filter(|n| n.role() == Some(Role::Follower) && n.joined)
                .map(|n| n.id)
                .collect();
            followers.choose(env.rng).copied().unwrap_or(lid)
        };
        if let Some(raw) = env.nodes.get_mut(&via).and_then(|n| n.raw.as_mut()) {
            if raw.transfer_leader(to).is_ok() {
                self.stats.transfers += 1;
            }
        }
    }
}
