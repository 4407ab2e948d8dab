//! A deterministic, randomized simulation of a raft group, after tigerbeetle's VOPR: one
//! seed determines the group, the faults and the workload, and any failure replays exactly
//! from its seed.
//!
//! The simulation runs several [`crate::raft::RawNode`]s over in-memory storage
//! ([`node`]), connects them through a packet simulator that loses, duplicates, delays and
//! reorders messages and cuts partitions ([`network`]), crashes and restarts peers (a crash
//! loses everything not yet written to storage, including between sending a Ready's
//! messages and persisting its entries), and drives clients, membership changes, leader
//! transfers and forced elections ([`workload`]). After every step — one tick of every
//! peer plus the message rounds within it — the properties in [`invariants`] are checked.
//!
//! All peers tick in lockstep: there is no clock drift, which lease reads assume to be
//! bounded (the core keeps a margin of `LEASE_MARGIN_TICKS`). Core settings (heartbeat
//! interval, PreVote, CheckQuorum, flow-control window, message size) vary per seed.
//!
//! A run has two phases. In the fault phase everything above happens. In the liveness
//! phase the faults stop (partitions heal, no loss, every peer that was not removed is
//! restarted, no new client operations), and within [`LIVENESS_TICKS_MAX`] ticks a leader
//! must be elected, every write still pending must be acknowledged, and every member must
//! have applied the leader's whole log.
//!
//! ```
//! use flotilla_region::sim::{SimConfig, Simulation};
//!
//! let config = SimConfig { fault_ticks: 200, ..SimConfig::random(3, 42) };
//! let report = Simulation::new(config).run().expect("all properties hold");
//! assert!(report.stats.elections >= 1);
//! ```

pub mod invariants;
pub mod network;
pub mod node;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt;

use flotilla_common::{ConfState, MessageKind};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::raft::{Config, ReadOnlyOption};
use invariants::{Invariants, Violation};
use network::{DropReason, Dropped, Network, NetworkFaults};
use node::{CoreLog, CrashPoint, ReadyCtx, SimNode};
use workload::{Env, Workload, WorkloadConfig};

/// Base election timeout of the simulated peers, in ticks (the core's default).
pub const ELECTION_TICKS: usize = 10;

/// Leader heartbeat interval, in ticks (the core's default; runs vary it from 1 to 3).
pub const HEARTBEAT_TICKS: usize = 2;

/// Message-delivery rounds within one tick: a message sent with zero delay arrives in the
/// next round of the same tick, so a request and its answer can both happen within a tick,
/// as on a real network whose round trip is shorter than a tick.
pub const ROUNDS_PER_TICK: usize = 3;

/// A crashed peer stays down at least this long: one tick, so restarts can be immediate.
/// Lease reads assume a voter that acknowledged a leader does not vote for another within
/// the lease; a restart wipes the memory of that acknowledgement, and the core must guard
/// against it (it refuses votes for an election timeout after a restart) — fast restarts
/// test that guard.
pub const DOWN_TICKS_MIN: u64 = 1;

/// The longest delay of the rare long-delayed messages: five election timeouts, so that
/// a message can arrive after the timeout that gave up on it (a leader transfer abandoned,
/// a term long over).
pub const LONG_DELAY_TICKS_MAX: u64 = 5 * ELECTION_TICKS as u64;

/// A crashed peer stays down at most this long.
pub const DOWN_TICKS_MAX: u64 = 15 * ELECTION_TICKS as u64;

/// A peer removed from the group keeps running this long before it is shut down for good,
/// so that removed peers get the chance to disrupt the group (they must not).
pub const REMOVED_LINGER_TICKS: u64 = 5 * ELECTION_TICKS as u64;

/// Within this many ticks after the faults stop, a leader must be elected, every pending
/// write acknowledged, and every member of the leader's configuration caught up (applied the
/// leader's whole log). Why this bound: an election needs at most a few randomized timeouts
/// of < 2T = 20 ticks each (a split vote or a stale leader's CheckQuorum step-down costs one
/// more), a lagging peer catches up within a few heartbeats (or one snapshot), and a client
/// whose proposal was lost notices after one client timeout (40 ticks) and retries. Ten
/// election timeouts plus three client timeouts covers all of that with a wide margin (the
/// worst case measured over 15,000 seeds was 117 ticks; the tests print it).
pub const LIVENESS_TICKS_MAX: u64 =
    10 * 2 * ELECTION_TICKS as u64 + 3 * workload::CLIENT_TIMEOUT_TICKS;

/// Everything a run depends on besides the seed; [`SimConfig::random`] draws it from the seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed: the same config and seed replay the same run.
    pub seed: u64,
    /// Voters the group starts with (ids 1..=nodes).
    pub nodes: usize,
    /// Ticks of the fault phase.
    pub fault_ticks: u64,
    /// Network faults during the fault phase.
    pub network: NetworkFaults,
    /// Probability per tick that a running peer is crashed (between Readies).
    pub crash_probability: f64,
    /// Probability per Ready that the peer crashes while handling it.
    pub crash_in_ready_probability: f64,
    /// Probability per tick that the partition changes (a new cut, or healing).
    pub partition_probability: f64,
    /// How reads are confirmed.
    pub read_only: ReadOnlyOption,
    /// The clients and the operator.
    pub workload: WorkloadConfig,
    /// Settings of the cores that vary between runs.
    pub core: CoreTuning,
    /// Chance that a peer leaves a Ready's write in flight and goes on (pipelined
    /// persistence, as the node's store does); 0 writes every Ready before the next.
    pub write_lag: f64,
    /// Chance, each time a peer's Readies are handled, that its oldest write in flight
    /// finishes (then the next, and so on).
    pub write_finish: f64,
}

/// The core settings a run varies: safety must hold under all of them, and timing and flow
/// control shapes differ enough to reach different interleavings.
#[derive(Debug, Clone, Copy)]
pub struct CoreTuning {
    /// Ticks between heartbeats (the election timeout is [`ELECTION_TICKS`]).
    pub heartbeat_tick: usize,
    /// PreVote on.
    pub pre_vote: bool,
    /// CheckQuorum on (always on with lease reads, which need it).
    pub check_quorum: bool,
    /// Append messages in flight per follower, at most.
    pub max_inflight_msgs: usize,
    /// Bytes of entries per append message, at most.
    pub max_size_per_msg: u64,
}

impl SimConfig {
    /// A configuration for a group of `nodes` voters, its faults and workload drawn from
    /// `seed`.
    pub fn random(nodes: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0f1_9000_0000);
        // Every fault is on in every run, at a strength drawn from the seed ("swarm
        // testing": some seeds are gentle, some brutal, so both long stable leaderships and
        // constant churn are covered).
        let network = NetworkFaults {
            loss: rng.gen_range(0.0..0.12),
            duplicate: rng.gen_range(0.0..0.05),
            delay_ticks_max: rng.gen_range(0..=3),
            long_delay: rng.gen_range(0.0..0.01),
            long_delay_ticks_max: LONG_DELAY_TICKS_MAX,
        };
        let mut config = SimConfig {
            seed,
            nodes,
            fault_ticks: 1500,
            network,
            crash_probability: rng.gen_range(0.0005..0.01),
            crash_in_ready_probability: rng.gen_range(0.0005..0.005),
            partition_probability: rng.gen_range(0.002..0.02),
            read_only: if rng.gen_bool(0.5) {
                ReadOnlyOption::Safe
            } else {
                ReadOnlyOption::LeaseBased
            },
            workload: WorkloadConfig {
                clients: rng.gen_range(2..=6),
                op_probability: rng.gen_range(0.2..0.9),
                read_fraction: rng.gen_range(0.1..0.5),
                membership_probability: rng.gen_range(0.003..0.03),
                transfer_probability: rng.gen_range(0.001..0.01),
                campaign_probability: rng.gen_range(0.0..0.005),
                target_voters: nodes,
                node_id_max: nodes as u64 + 12,
            },
            write_lag: 0.0,
            write_finish: 0.5,
            core: CoreTuning {
                heartbeat_tick: HEARTBEAT_TICKS,
                pre_vote: true,
                check_quorum: true,
                max_inflight_msgs: 8,
                max_size_per_msg: 1024,
            },
        };
        // Drawn last so that the draws above keep their meaning.
        config.core = CoreTuning {
            heartbeat_tick: rng.gen_range(1..=3),
            pre_vote: rng.gen_bool(0.85),
            check_quorum: config.read_only == ReadOnlyOption::LeaseBased || rng.gen_bool(0.8),
            // Small windows and messages make flow control and multi-message catch-up happen.
            max_inflight_msgs: rng.gen_range(1..=16),
            max_size_per_msg: rng.gen_range(64..=4096),
        };
        // Drawn after the core's settings, for the same reason. Half the runs pipeline.
        config.write_lag = if rng.gen_bool(0.5) {
            rng.gen_range(0.1..0.9)
        } else {
            0.0
        };
        // Slow disks too: writes that stay in flight for many rounds widen the windows a
        // crash or a premature acknowledgement can hit.
        config.write_finish = rng.gen_range(0.05..0.6);
        config
    }
}

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimStats {
    /// Steps (ticks) run.
    pub steps: u64,
    /// Terms in which a leader was elected.
    pub elections: u64,
    /// Highest committed index reached.
    pub committed_index: u64,
    /// Entries applied, summed over all peers (entries through the cores).
    pub entries_applied: u64,
    /// Writes acknowledged to clients.
    pub writes_acked: u64,
    /// Retried writes (same sequence).
    pub retries: u64,
    /// Writes a follower forwarded to its leader.
    pub forwarded: u64,
    /// Retried commands that reached a state machine and were not applied again.
    pub duplicates_suppressed: u64,
    /// Reads answered and checked for linearizability.
    pub reads_checked: u64,
    /// Membership changes accepted by a leader.
    pub conf_changes: u64,
    /// Leader transfers requested.
    pub transfers: u64,
    /// Crashes (between Readies or within one).
    pub crashes: u64,
    /// Crashes after sending a Ready's messages and before persisting it.
    pub crashes_before_persist: u64,
    /// Partitions cut.
    pub partitions: u64,
    /// Snapshots sent by leaders and installed by followers.
    pub snapshots_installed: u64,
    /// Writes that stayed in flight while their peer went on, then finished.
    pub writes_lagged: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages dropped (loss, partitions, receiver down).
    pub messages_dropped: u64,
    /// Messages the core refused (stale, from unknown peers, …), counted not checked.
    pub messages_refused: u64,
    /// Ticks the liveness phase needed.
    pub liveness_ticks: u64,
}

impl SimStats {
    /// Adds another run's counters (the liveness ticks keep the maximum).
    pub fn add(&mut self, o: &SimStats) {
        self.steps += o.steps;
        self.elections += o.elections;
        self.committed_index += o.committed_index;
        self.entries_applied += o.entries_applied;
        self.writes_acked += o.writes_acked;
        self.retries += o.retries;
        self.forwarded += o.forwarded;
        self.duplicates_suppressed += o.duplicates_suppressed;
        self.reads_checked += o.reads_checked;
        self.conf_changes += o.conf_changes;
        self.transfers += o.transfers;
        self.crashes += o.crashes;
        self.crashes_before_persist += o.crashes_before_persist;
        self.partitions += o.partitions;
        self.snapshots_installed += o.snapshots_installed;
        self.writes_lagged += o.writes_lagged;
        self.messages_sent += o.messages_sent;
        self.messages_dropped += o.messages_dropped;
        self.messages_refused += o.messages_refused;
        self.liveness_ticks = self.liveness_ticks.max(o.liveness_ticks);
    }
}

impl fmt::Display for SimStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} steps, {} elections, {} entries committed, {} applied over all peers, {} writes acked \
             ({} retries, {} forwarded by followers, {} duplicates suppressed), {} reads checked, {} membership changes, \
             {} transfers, {} crashes ({} before persisting), {} partitions, {} snapshots installed, \
             {} writes finished after their peer went on, {} messages ({} dropped), liveness in at most {} ticks",
            self.steps,
            self.elections,
            self.committed_index,
            self.entries_applied,
            self.writes_acked,
            self.retries,
            self.forwarded,
            self.duplicates_suppressed,
            self.reads_checked,
            self.conf_changes,
            self.transfers,
            self.crashes,
            self.crashes_before_persist,
            self.partitions,
            self.snapshots_installed,
            self.writes_lagged,
            self.messages_sent,
            self.messages_dropped,
            self.liveness_ticks,
        )
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Its counters.
    pub stats: SimStats,
}

/// A failed run: the seed and what broke.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed that replays it.
    pub seed: u64,
    /// Voters the group started with.
    pub nodes: usize,
    /// The tick at which it was found.
    pub step: u64,
    /// What broke (a safety property, or liveness).
    pub violation: Violation,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} ({} nodes), tick {}: {}",
            self.seed, self.nodes, self.step, self.violation
        )
    }
}

impl std::error::Error for SimFailure {}

/// One simulated group.
pub struct Simulation {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    nodes: BTreeMap<u64, SimNode>,
    net: Network,
    inv: Invariants,
    workload: Workload,
    initial_conf: ConfState,
    core_config: Config,
    /// Down peers and the tick they restart at.
    restart_at: BTreeMap<u64, u64>,
    /// Removed peers and the tick they were first seen removed.
    removed_at: BTreeMap<u64, u64>,
    /// The membership as of the highest applied index seen, and that index.
    latest_conf: (u64, ConfState),
    faults_active: bool,
    liveness_started: Option<u64>,
    stats: SimStats,
}

impl Simulation {
    /// Builds the group and starts every peer.
    pub fn new(config: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let ids: Vec<u64> = (1..=config.nodes as u64).collect();
        let initial_conf = ConfState::with_voters(ids.clone());
        let mut core_config = Config::new(1);
        core_config.election_tick = ELECTION_TICKS;
        core_config.heartbeat_tick = config.core.heartbeat_tick;
        core_config.read_only_option = config.read_only;
        core_config.pre_vote = config.core.pre_vote;
        core_config.check_quorum = config.core.check_quorum;
        core_config.max_size_per_msg = config.core.max_size_per_msg;
        core_config.max_inflight_msgs = config.core.max_inflight_msgs;
        let mut inv = Invariants::default();
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let mut n = SimNode::new(
                id,
                initial_conf.clone(),
                Config {
                    id,
                    ..core_config.clone()
                },
            );
            n.joined = true;
            n.write_lag = config.write_lag;
            n.write_finish = config.write_finish;
            n.snapshot_every = rng.gen_range(20..100);
            n.compact_keep = rng.gen_range(0..20);
            n.start(rng.gen(), &mut inv).expect("a fresh peer starts");
            nodes.insert(id, n);
        }
        let net = Network::new(config.network);
        let workload = Workload::new(config.workload.clone(), config.nodes as u64 + 1);
        Simulation {
            config,
            rng,
            now: 0,
            nodes,
            net,
            inv,
            workload,
            initial_conf: initial_conf.clone(),
            core_config,
            restart_at: BTreeMap::new(),
            removed_at: BTreeMap::new(),
            latest_conf: (0, initial_conf.clone()),
            faults_active: true,
            liveness_started: None,
            stats: SimStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The current tick.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The counters so far.
    pub fn stats(&self) -> SimStats {
        let mut s = self.stats;
        s.steps = self.now;
        s.elections = self.inv.election_safety.elections() as u64;
        s.committed_index = self.inv.leader_completeness.committed_index();
        s.entries_applied = self.inv.state_machine_safety.applications;
        s.writes_acked = self.workload.stats.writes_acked;
        s.retries = self.workload.stats.retries;
        s.forwarded = self.workload.stats.forwarded;
        s.duplicates_suppressed = self.inv.exactly_once.duplicates_suppressed;
        s.reads_checked = self.inv.linearizable_reads.reads_checked;
        s.conf_changes = self.workload.stats.conf_changes;
        s.transfers = self.workload.stats.transfers;
        s.messages_sent = self.net.sent;
        s.messages_dropped = self.net.dropped;
        s.snapshots_installed = self.nodes.values().map(|n| n.snapshots_installed).sum();
        s.writes_lagged = self.nodes.values().map(|n| n.writes_lagged).sum();
        s
    }

    /// The peers.
    pub fn nodes(&self) -> &BTreeMap<u64, SimNode> {
        &self.nodes
    }

    /// Whether the group has converged: the leader has committed its whole log, and every
    /// member of its configuration runs and has applied all of it.
    fn converged(&self) -> bool {
        let Some(raw) = Workload::leader(&self.nodes).and_then(|id| self.nodes[&id].raw.as_ref())
        else {
            return false;
        };
        let r = raw.raft();
        let commit = r.commit_index();
        if commit != r.last_index() {
            return false;
        }
        let conf = r.conf_state();
        let members = conf
            .voters
            .iter()
            .chain(&conf.learners)
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners_next);
        members.into_iter().all(|id| {
            self.nodes
                .get(id)
                .is_some_and(|n| n.is_up() && n.sm.applied >= commit)
        })
    }

    /// One line per peer: whether it runs, its role, term, vote, log and membership.
    pub fn describe_peers(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.values() {
            let line = match n.raw.as_ref() {
                None if n.decommissioned => format!("  peer {}: removed and shut down\n", n.id),
                None => format!("  peer {}: down\n", n.id),
                Some(raw) => {
                    let r = raw.raft();
                    format!(
                        "  peer {}: {:?} term {} vote {} leader {} commit {} applied {} log {}..={} (last term {}) \
                         election elapsed {}/{} conf {:?}\n",
                        n.id,
                        r.role(),
                        r.term(),
                        r.vote(),
                        r.leader_id(),
                        r.commit_index(),
                        n.sm.applied,
                        r.first_index(),
                        r.last_index(),
                        r.last_term(),
                        r.election_elapsed(),
                        r.randomized_election_timeout(),
                        r.conf_state()
                    )
                }
            };
            out.push_str(&line);
        }
        out
    }

    fn fail(&self, violation: Violation) -> SimFailure {
        SimFailure {
            seed: self.config.seed,
            nodes: self.config.nodes,
            step: self.now,
            violation,
        }
    }

    /// Runs the fault phase, then the liveness phase.
    pub fn run(mut self) -> Result<SimReport, SimFailure> {
        while self.now < self.config.fault_ticks {
            self.step()?;
        }
        self.stop_faults();
        while !self.step()? {}
        Ok(SimReport {
            seed: self.config.seed,
            stats: self.stats(),
        })
    }

    /// Ends the fault phase: heals partitions, makes the network reliable, restarts every
    /// peer that was not removed, and stops new client operations.
    pub fn stop_faults(&mut self) {
        self.faults_active = false;
        self.liveness_started = Some(self.now);
        self.net.heal();
        self.net.set_faults(NetworkFaults {
            delay_ticks_max: 1,
            ..NetworkFaults::RELIABLE
        });
        self.workload.active = false;
        let now = self.now;
        for t in self.restart_at.values_mut() {
            *t = now;
        }
    }

    /// Whether the liveness phase is on.
    pub fn in_liveness_phase(&self) -> bool {
        self.liveness_started.is_some()
    }

    /// One tick: faults, workload, every peer ticks, messages are delivered in rounds and
    /// Readies handled, then the per-step properties are checked. In the liveness phase,
    /// returns `Ok(true)` once a leader is elected and every pending write is acknowledged.
    pub fn step(&mut self) -> Result<bool, SimFailure> {
        self.now += 1;
        self.step_inner().map_err(|v| self.fail(v))?;
        if let Some(started) = self.liveness_started {
            let waited = self.now - started;
            let leader = Workload::leader(&self.nodes);
            if leader.is_some() && self.workload.all_idle() && self.converged() {
                self.stats.liveness_ticks = waited;
                return Ok(true);
            }
            if waited > LIVENESS_TICKS_MAX {
                let v = Violation::new(
                    "Liveness",
                    format!(
                        "{waited} ticks after the faults stopped: leader: {leader:?}; writes still \
                         pending (client, seq): {:?}; every member caught up: {}; peers:\n{}",
                        self.workload.pending_writes(),
                        self.converged(),
                        self.describe_peers()
                    ),
                );
                return Err(self.fail(v));
            }
        }
        Ok(false)
    }

    fn step_inner(&mut self) -> Result<(), Violation> {
        if self.faults_active {
            self.inject_faults()?;
        }
        self.restart_due()?;
        self.create_wanted_peers()?;
        {
            let mut env = Env {
                nodes: &mut self.nodes,
                rng: &mut self.rng,
                inv: &mut self.inv,
                now: self.now,
            };
            self.workload.tick(&mut env);
        }
        for n in self.nodes.values_mut() {
            if let Some(raw) = n.raw.as_mut() {
                raw.tick();
            }
        }
        for _ in 0..ROUNDS_PER_TICK {
            self.handle_readies()?;
            self.deliver()?;
        }
        self.handle_readies()?;
        self.decommission_removed()?;
        self.check_step()
    }

    fn inject_faults(&mut self) -> Result<(), Violation> {
        let up: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.is_up())
            .map(|n| n.id)
            .collect();
        if self.rng.gen_bool(self.config.crash_probability) {
            if let Some(&id) = up.choose(&mut self.rng) {
                self.crash(id)?;
            }
        }
        if self.rng.gen_bool(self.config.partition_probability) {
            if self.net.is_partitioned() && self.rng.gen_bool(0.5) {
                self.net.heal();
            } else {
                self.stats.partitions += 1;
                let ids: Vec<u64> = self.nodes.keys().copied().collect();
                let mut groups = BTreeMap::new();
                match self.rng.gen_range(0..3) {
                    // Isolate the leader: the classic stale-leader scenario.
                    0 => {
                        if let Some(l) = Workload::leader(&self.nodes) {
                            groups.insert(l, 1);
                        }
                    }
                    // Isolate one random peer.
                    1 => {
                        if let Some(&id) = ids.choose(&mut self.rng) {
                            groups.insert(id, 1);
                        }
                    }
                    // A random split into up to three sides.
                    _ => {
                        for &id in &ids {
                            groups.insert(id, self.rng.gen_range(0..3));
                        }
                    }
                }
                self.net.partition(groups);
            }
        }
        Ok(())
    }

    fn crash(&mut self, id: u64) -> Result<(), Violation> {
        let Some(n) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        n.crash(&mut self.inv, &mut self.rng)?;
        self.stats.crashes += 1;
        let down = self.rng.gen_range(DOWN_TICKS_MIN..=DOWN_TICKS_MAX);
        self.restart_at.insert(id, self.now + down);
        Ok(())
    }

    fn restart_due(&mut self) -> Result<(), Violation> {
        let due: Vec<u64> = self
            .restart_at
            .iter()
            .filter(|(_, &t)| t <= self.now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.restart_at.remove(&id);
            let seed = self.rng.gen();
            let n = self.nodes.get_mut(&id).expect("a down peer exists");
            if !n.decommissioned {
                n.start(seed, &mut self.inv)?;
            }
        }
        Ok(())
    }

    fn create_wanted_peers(&mut self) -> Result<(), Violation> {
        for id in self.workload.take_wanted_peers() {
            if self.nodes.contains_key(&id) {
                continue;
            }
            let mut n = SimNode::new(
                id,
                self.initial_conf.clone(),
                Config {
                    id,
                    ..self.core_config.clone()
                },
            );
            n.write_lag = self.config.write_lag;
            n.write_finish = self.config.write_finish;
            n.snapshot_every = self.rng.gen_range(20..100);
            n.compact_keep = self.rng.gen_range(0..20);
            n.start(self.rng.gen(), &mut self.inv)?;
            self.nodes.insert(id, n);
        }
        Ok(())
    }

    fn handle_readies(&mut self) -> Result<(), Violation> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut events = Vec::new();
        let mut dropped = Vec::new();
        for id in ids {
            let crash = if self.faults_active
                && self.rng.gen_bool(self.config.crash_in_ready_probability)
            {
                // Half the crashes hit between sending and persisting: the window that
                // tests durability before acknowledgement.
                Some(
                    *[
                        CrashPoint::AfterSend,
                        CrashPoint::AfterSend,
                        CrashPoint::AfterPersist,
                        CrashPoint::AfterApply,
                    ]
                    .choose(&mut self.rng)
                    .expect("not empty"),
                )
            } else {
                None
            };
            let node = self.nodes.get_mut(&id).expect("listed");
            if !node.is_up() {
                continue;
            }
            let mut ctx = ReadyCtx {
                net: &mut self.net,
                rng: &mut self.rng,
                now: self.now,
                inv: &mut self.inv,
                events: &mut events,
                dropped: &mut dropped,
            };
            node.finish_some_writes(&mut ctx)?;
            let crashed = node.handle_readies(&mut ctx, crash)?;
            if let Some(raw) = node
                .raw
                .as_ref()
                .filter(|r| r.raft().role() == crate::raft::Role::Leader)
            {
                self.inv
                    .election_safety
                    .observe_leader(raw.raft().term(), id)?;
            }
            if crashed {
                self.stats.crashes += 1;
                if crash == Some(CrashPoint::AfterSend) {
                    self.stats.crashes_before_persist += 1;
                }
                let down = self.rng.gen_range(DOWN_TICKS_MIN..=DOWN_TICKS_MAX);
                self.restart_at.insert(id, self.now + down);
            }
        }
        for e in events {
            self.workload.on_event(e, &mut self.inv)?;
        }
        self.report_dropped(dropped);
        Ok(())
    }

    /// Tells senders what a real transport would notice about lost messages: a snapshot
    /// stream that failed, a peer that cannot be reached.
    fn report_dropped(&mut self, dropped: Vec<Dropped>) {
        for d in dropped {
            let Some(raw) = self.nodes.get_mut(&d.msg.from).and_then(|n| n.raw.as_mut()) else {
                continue;
            };
            if d.msg.kind == MessageKind::Snapshot {
                raw.report_snapshot(d.msg.to, false);
            } else if d.reason != DropReason::Lost && d.msg.kind == MessageKind::Append {
                raw.report_unreachable(d.msg.to);
            }
        }
    }

    fn deliver(&mut self) -> Result<(), Violation> {
        let mut dropped = Vec::new();
        let msgs = self.net.take_due(self.now, &mut dropped);
        let mut snapshots_done = Vec::new();
        for m in msgs {
            let (from, to, kind) = (m.from, m.to, m.kind);
            match self.nodes.get_mut(&to).and_then(|n| n.raw.as_mut()) {
                Some(raw) => {
                    if raw.step(m).is_err() {
                        self.stats.messages_refused += 1;
                    }
                    if kind == MessageKind::Snapshot {
                        snapshots_done.push((from, to));
                    }
                }
                None => {
                    self.net.note_receiver_down();
                    dropped.push(Dropped {
                        msg: m,
                        reason: DropReason::ReceiverDown,
                    });
                }
            }
        }
        for (from, to) in snapshots_done {
            if let Some(raw) = self.nodes.get_mut(&from).and_then(|n| n.raw.as_mut()) {
                raw.report_snapshot(to, true);
            }
        }
        self.report_dropped(dropped);
        Ok(())
    }

    /// Marks peers that appear in the latest membership as joined, and shuts down for good
    /// the joined peers that have been out of it for [`REMOVED_LINGER_TICKS`].
    fn decommission_removed(&mut self) -> Result<(), Violation> {
        // The membership as of the highest index any peer applied: committed, so a peer
        // missing from it is out of the group for good.
        for n in self.nodes.values().filter(|n| n.is_up()) {
            if n.sm.applied > self.latest_conf.0 {
                self.latest_conf = (n.sm.applied, n.sm.conf.clone());
            }
        }
        let conf = self.latest_conf.1.clone();
        let member = |id: u64| {
            conf.voters.contains(&id)
                || conf.learners.contains(&id)
                || conf.voters_outgoing.contains(&id)
                || conf.learners_next.contains(&id)
        };
        let mut shut = Vec::new();
        for n in self.nodes.values_mut() {
            if member(n.id) {
                n.joined = true;
                self.removed_at.remove(&n.id);
            } else if n.joined && !n.decommissioned {
                let since = *self.removed_at.entry(n.id).or_insert(self.now);
                if self.now - since >= REMOVED_LINGER_TICKS {
                    shut.push(n.id);
                }
            }
        }
        for id in shut {
            let n = self.nodes.get_mut(&id).expect("listed");
            n.crash(&mut self.inv, &mut self.rng)?;
            n.decommissioned = true;
            self.restart_at.remove(&id);
        }
        Ok(())
    }

    /// The per-step properties: every running leader is checked for Election Safety,
    /// Leader Append-Only and Leader Completeness, and its commit index feeds the committed
    /// history.
    fn check_step(&mut self) -> Result<(), Violation> {
        for n in self.nodes.values() {
            let Some(raw) = n.raw.as_ref() else { continue };
            let raft = raw.raft();
            if raft.role() != crate::raft::Role::Leader {
                self.inv.leader_append_only.forget(n.id);
                self.inv.leader_completeness.forget(n.id);
                continue;
            }
            let term = raft.term();
            let log = CoreLog(raft);
            self.inv.election_safety.observe_leader(term, n.id)?;
            self.inv
                .leader_append_only
                .observe_leader(n.id, term, &log)?;
            self.inv
                .leader_completeness
                .observe_commit(term, raft.commit_index(), &log)?;
            self.inv
                .leader_completeness
                .observe_leader(n.id, term, &log)?;
        }
        Ok(())
    }
}
