//! A simulated peer: a [`RawNode`] over a [`MemStorage`], and a state machine that applies
//! [`Command`]s through a [`SessionTable`].
//!
//! The storage is the peer's disk: it survives crashes. Everything else — the core, the
//! state machine, reads waiting to be answered — is memory, and a crash drops it. The state
//! machine is made durable only by snapshots: each peer snapshots its state into its
//! storage every few dozen applied entries and compacts its log below that point, and a
//! restart rebuilds the state machine from the storage's latest snapshot, after which the
//! core hands out the committed entries that follow it again.
//!
//! [`SimNode::handle_readies`] follows the Ready protocol of the core step by step (send,
//! install snapshot, persist, send persisted messages, apply, answer reads, advance), and
//! can crash between any two of those steps: after sending but before persisting is the
//! case that loses entries a peer already told others about.
//!
//! Like the node's store, a peer may also pipeline its writes (`write_lag`): a Ready's
//! entries and hard state then stay in flight while the peer applies, answers reads and
//! takes further Readies; the writes finish later, in order — each persists, sends the
//! messages that waited for it and reports its marks to the core with `on_persisted`. A
//! crash makes a prefix of the writes in flight durable and loses the rest.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use flotilla_common::{
    codec, ConfChange, ConfState, Entry, EntryKind, HardState, Message, Snapshot,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::invariants::{fingerprint, Invariants, LogView, Violation};
use super::network::{Dropped, Network};
use crate::raft::session::{Command, SessionOutcome, SessionTable};
use crate::raft::{Config, MemStorage, RawNode, Role, Storage};

/// The state machine of a simulated peer: keys hold, per client, the last sequence written
/// to them.
#[derive(Debug, Clone, Default)]
pub struct StateMachine {
    /// Key → (client → last sequence written to the key).
    pub kv: BTreeMap<u64, BTreeMap<u64, u64>>,
    /// Writes that took effect. Not idempotent on purpose: a command applied twice changes
    /// the state, not only the session table.
    pub writes: u64,
    /// Client sessions: make retried commands take effect once.
    pub sessions: SessionTable,
    /// The index of the last applied entry.
    pub applied: u64,
    /// A chain over every applied entry and whether it took effect: equal on two peers at
    /// the same index exactly when they applied the same history.
    pub digest: u64,
    /// The membership as of `applied`.
    pub conf: ConfState,
}

/// The image stored in a snapshot's data.
type Image = (
    BTreeMap<u64, BTreeMap<u64, u64>>,
    u64,
    SessionTable,
    u64,
    u64,
);

impl StateMachine {
    /// The state of a peer that has applied nothing, in a group that started as `conf`.
    pub fn initial(conf: ConfState) -> Self {
        StateMachine {
            conf,
            ..Default::default()
        }
    }

    /// Encodes the state for a snapshot.
    pub fn encode(&self) -> Bytes {
        let image: Image = (
            self.kv.clone(),
            self.writes,
            self.sessions.clone(),
            self.applied,
            self.digest,
        );
        // Maps of integers and the session table always encode; failure is a codec bug.
        Bytes::from(codec::encode(&image).expect("a state machine image always encodes"))
    }

    /// Rebuilds the state from a snapshot.
    pub fn restore(snap: &Snapshot) -> Result<Self, String> {
        let (kv, writes, sessions, applied, digest): Image = codec::decode(&snap.data)
            .map_err(|e| format!("snapshot at {} does not decode: {e}", snap.metadata.index))?;
        if applied != snap.metadata.index {
            return Err(format!(
                "snapshot at {} holds a state machine applied to {applied}",
                snap.metadata.index
            ));
        }
        Ok(StateMachine {
            kv,
            writes,
            sessions,
            applied,
            digest,
            conf: snap.metadata.conf_state.clone(),
        })
    }

    fn chain(&mut self, e: &Entry, effect: u8) {
        self.digest = fingerprint(&[
            &self.digest.to_le_bytes(),
            &e.index.to_le_bytes(),
            &e.term.to_le_bytes(),
            &e.data,
            &[effect],
        ]);
    }
}

/// The fingerprint of an entry's kind and data.
pub fn entry_fingerprint(e: &Entry) -> u64 {
    let kind = match e.kind {
        EntryKind::Normal => 0u8,
        EntryKind::ConfChange => 1u8,
    };
    fingerprint(&[&[kind], &e.data])
}

/// The key a write command's payload names.
pub fn command_key(payload: &[u8]) -> u64 {
    payload.first().copied().unwrap_or(0) as u64
}

/// Where in the Ready protocol a crash strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// After `rd.messages` were sent, before anything was persisted: the entries and hard
    /// state of this Ready are lost although followers may already have them.
    AfterSend,
    /// After persisting, before the persisted messages (votes, acks) were sent.
    AfterPersist,
    /// After applying, before `advance`.
    AfterApply,
}

/// Something a peer did that the workload or the checkers care about.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A client command reached the state machine.
    Applied {
        /// The peer.
        node: u64,
        /// The command's client.
        client: u64,
        /// The command's sequence.
        seq: u64,
        /// The key it wrote.
        key: u64,
        /// The log index of the entry.
        index: u64,
        /// Whether it took effect now (false: answered as a duplicate or stale).
        effect: bool,
    },
    /// A read was answered.
    ReadAnswered {
        /// The peer.
        node: u64,
        /// The request context given to `read_index`.
        ctx: Bytes,
        /// The read index the core returned.
        read_index: u64,
        /// The state machine's applied index when answering.
        applied: u64,
        /// The value of the key read (client → last sequence).
        value: BTreeMap<u64, u64>,
    },
}

/// A read context names a request id and the key read.
pub fn read_ctx(read_id: u64, key: u64) -> Bytes {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&read_id.to_le_bytes());
    v.extend_from_slice(&key.to_le_bytes());
    Bytes::from(v)
}

/// Splits a read context into (request id, key).
pub fn parse_read_ctx(ctx: &[u8]) -> Option<(u64, u64)> {
    if ctx.len() != 16 {
        return None;
    }
    let id = u64::from_le_bytes(ctx[..8].try_into().ok()?);
    let key = u64::from_le_bytes(ctx[8..].try_into().ok()?);
    Some((id, key))
}

/// Everything `handle_ready` touches outside the peer.
pub struct ReadyCtx<'a> {
    /// The network to send on.
    pub net: &'a mut Network,
    /// The simulation's RNG.
    pub rng: &'a mut ChaCha8Rng,
    /// The current tick.
    pub now: u64,
    /// The checkers.
    pub inv: &'a mut Invariants,
    /// Events for the workload.
    pub events: &'a mut Vec<NodeEvent>,
    /// Messages lost when sent, for the sender's transport reports.
    pub dropped: &'a mut Vec<Dropped>,
}

/// The peer's log as the checkers read it.
pub struct CoreLog<'a>(pub &'a crate::raft::Raft<MemStorage>);

impl LogView for CoreLog<'_> {
    fn first_index(&self) -> u64 {
        self.0.first_index()
    }
    fn last_index(&self) -> u64 {
        self.0.last_index()
    }
    fn term_at(&self, index: u64) -> Option<u64> {
        self.0.term_at(index)
    }
}

/// Ready handling is a programmer-facing contract: a broken step is reported like a
/// property violation so that the seed is printed.
const READY_PROTOCOL: &str = "Ready protocol";

/// A Ready's write still on its way to the disk (pipelined persistence), and what waits
/// for it.
struct WriteInFlight {
    /// Entries to append.
    entries: Vec<Entry>,
    /// Hard state to store.
    hard_state: Option<HardState>,
    /// Votes and acknowledgements: they leave once the write is durable.
    persisted_messages: Vec<Message>,
    /// (term, index) the core learns are durable then.
    marks: Vec<(u64, u64)>,
    /// The term the peer led throughout the Ready, if it did (Leader Append-Only).
    led: Option<u64>,
}

/// A simulated peer.
pub struct SimNode {
    /// The peer id.
    pub id: u64,
    /// Its disk: survives crashes.
    pub storage: MemStorage,
    /// The running core; `None` while the peer is down.
    pub raw: Option<RawNode<MemStorage>>,
    /// The state machine (memory: rebuilt from the snapshot on restart).
    pub sm: StateMachine,
    /// The group's membership at bootstrap (what an empty state machine starts from).
    initial_conf: ConfState,
    /// The core's settings (applied and seed are set at each start).
    config: Config,
    /// Reads answered by the core, waiting for the state machine to reach their index.
    pending_reads: Vec<(u64, Bytes)>,
    /// The term this peer led at the end of the last Ready, if it was leader.
    led_term: Option<u64>,
    /// Snapshot the state machine after this many applied entries.
    pub snapshot_every: u64,
    /// How many entries to keep in the log below the snapshot on compaction.
    pub compact_keep: u64,
    /// Times started (for the core's seed).
    pub incarnation: u64,
    /// Taken out of the group for good: never restarted.
    pub decommissioned: bool,
    /// Ever seen as a member of the group.
    pub joined: bool,
    /// Ready batches handled.
    pub readies: u64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: u64,
    /// Chance that a Ready's write stays in flight instead of finishing at once.
    pub write_lag: f64,
    /// Chance, each time the peer's Readies are handled, that its oldest write in flight
    /// finishes (and then the next, and so on): small values keep writes in flight long.
    pub write_finish: f64,
    /// Writes in flight, oldest first.
    writes: VecDeque<WriteInFlight>,
    /// Writes that finished after the peer had gone on (stayed in flight at least once).
    pub writes_lagged: u64,
}

impl SimNode {
    /// A peer with an empty disk in a group that started as `initial_conf`; not started.
    pub fn new(id: u64, initial_conf: ConfState, config: Config) -> Self {
        SimNode {
            id,
            storage: MemStorage::new_with_conf_state(initial_conf.clone()),
            raw: None,
            sm: StateMachine::initial(initial_conf.clone()),
            initial_conf,
            config,
            pending_reads: Vec::new(),
            led_term: None,
            snapshot_every: 50,
            compact_keep: 5,
            incarnation: 0,
            decommissioned: false,
            joined: false,
            readies: 0,
            snapshots_installed: 0,
            write_lag: 0.0,
            write_finish: 0.5,
            writes: VecDeque::new(),
            writes_lagged: 0,
        }
    }

    /// Whether the peer is running.
    pub fn is_up(&self) -> bool {
        self.raw.is_some()
    }

    /// The running core's role, if up.
    pub fn role(&self) -> Option<Role> {
        self.raw.as_ref().map(|r| r.raft().role())
    }

    /// Whether the peer is up and leader.
    pub fn is_leader(&self) -> bool {
        self.role() == Some(Role::Leader)
    }

    /// Starts the peer from what its disk holds: the state machine from the latest
    /// snapshot (or empty), the core from the durable log and hard state.
    pub fn start(&mut self, seed: u64, inv: &mut Invariants) -> Result<(), Violation> {
        self.incarnation += 1;
        let snap = self.storage.snapshot(0).ok().filter(|s| !s.is_empty());
        self.sm = match &snap {
            Some(s) => StateMachine::restore(s).map_err(|e| Violation::new(READY_PROTOCOL, e))?,
            None => StateMachine::initial(self.initial_conf.clone()),
        };
        // The durable membership is the one of the durable state machine: the core
        // re-applies the configuration changes after the snapshot.
        self.storage.wl().set_conf_state(self.sm.conf.clone());
        inv.state_machine_safety
            .observe_state(self.id, self.sm.applied, self.sm.digest)?;
        let mut config = self.config.clone();
        config.applied = self.sm.applied;
        config.seed = seed;
        let raw = RawNode::new(&config, self.storage.clone()).map_err(|e| {
            Violation::new(
                READY_PROTOCOL,
                format!("peer {} cannot restart: {e}", self.id),
            )
        })?;
        self.raw = Some(raw);
        self.pending_reads.clear();
        self.led_term = None;
        Ok(())
    }

    /// Crashes the peer: everything not in its storage is gone. Of its writes in flight, a
    /// random prefix made it to the disk (none reported); the rest are lost.
    pub fn crash(&mut self, inv: &mut Invariants, rng: &mut ChaCha8Rng) -> Result<(), Violation> {
        let durable = rng.gen_range(0..=self.writes.len());
        let writes: Vec<WriteInFlight> = self.writes.drain(..).collect();
        self.raw = None;
        for w in writes.iter().take(durable) {
            self.persist(w, inv)?;
        }
        self.sm = StateMachine::default();
        self.pending_reads.clear();
        self.led_term = None;
        inv.leader_append_only.forget(self.id);
        inv.leader_completeness.forget(self.id);
        Ok(())
    }

    /// Handles Ready batches until the core has none (at most a few rounds). Returns
    /// `Ok(true)` if the peer crashed at `crash` on the first batch.
    pub fn handle_readies(
        &mut self,
        ctx: &mut ReadyCtx<'_>,
        mut crash: Option<CrashPoint>,
    ) -> Result<bool, Violation> {
        // Bounded: each round either empties the Ready or makes progress; a core that
        // keeps producing Readies with no input would be a bug, caught by the bound.
        const READY_ROUNDS_MAX: usize = 16;
        for _ in 0..READY_ROUNDS_MAX {
            let Some(raw) = self.raw.as_ref() else {
                return Ok(false);
            };
            if !raw.has_ready() {
                return Ok(false);
            }
            if self.handle_ready(ctx, crash.take())? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Handles one Ready, following the core's protocol. Returns `Ok(true)` if the peer
    /// crashed at `crash`.
    fn handle_ready(
        &mut self,
        ctx: &mut ReadyCtx<'_>,
        crash: Option<CrashPoint>,
    ) -> Result<bool, Violation> {
        let id = self.id;
        // The core is taken out while its Ready is handled so that a crash can drop it.
        let mut raw = self.raw.take().expect("handle_ready on a running peer");
        let leader_now = (raw.raft().role() == Role::Leader).then(|| raw.raft().term());
        let led_throughout = leader_now.is_some() && leader_now == self.led_term;
        let mut rd = raw.ready();
        self.readies += 1;

        // 1-2. Messages may leave before anything is persisted.
        for m in std::mem::take(&mut rd.messages) {
            send(ctx, m);
        }
        if crash == Some(CrashPoint::AfterSend) {
            self.crash(ctx.inv, ctx.rng)?;
            return Ok(true);
        }

        // 3. Install a snapshot — after every write in flight, which come first.
        if rd.snapshot.is_some() {
            self.finish_writes(&mut raw, ctx, usize::MAX)?;
        }
        if let Some(snap) = rd.snapshot.clone() {
            if led_throughout {
                return Err(Violation::new(
                    "Leader Append-Only",
                    format!(
                        "leader {id} of term {:?} was told to install a snapshot",
                        leader_now
                    ),
                ));
            }
            self.storage
                .wl()
                .apply_snapshot(snap.clone())
                .map_err(|e| {
                    Violation::new(
                        READY_PROTOCOL,
                        format!(
                            "peer {id}: installing snapshot {}: {e}",
                            snap.metadata.index
                        ),
                    )
                })?;
            self.sm =
                StateMachine::restore(&snap).map_err(|e| Violation::new(READY_PROTOCOL, e))?;
            self.snapshots_installed += 1;
            ctx.inv
                .state_machine_safety
                .observe_state(id, self.sm.applied, self.sm.digest)?;
            ctx.inv.leader_completeness.observe_committed_entry(
                snap.metadata.term.max(1),
                snap.metadata.index,
                snap.metadata.term,
            );
        }

        // 4. Persist entries and hard state: at once (after the writes in flight), or left
        // in flight while the peer goes on.
        let write = WriteInFlight {
            entries: rd.entries.clone(),
            hard_state: rd.hard_state,
            persisted_messages: std::mem::take(&mut rd.persisted_messages),
            marks: rd.persisted_marks().collect(),
            led: leader_now.filter(|_| led_throughout),
        };
        let lagging = rd.snapshot.is_none() && ctx.rng.gen_bool(self.write_lag);
        if lagging {
            self.writes.push_back(write);
        } else {
            self.finish_writes(&mut raw, ctx, usize::MAX)?;
            self.persist(&write, ctx.inv)?;
            if crash == Some(CrashPoint::AfterPersist) {
                self.crash(ctx.inv, ctx.rng)?;
                return Ok(true);
            }
            // 5. Votes and acks leave only now.
            for m in write.persisted_messages {
                send(ctx, m);
            }
        }

        // 6. Apply committed entries.
        let term = raw.raft().term();
        for e in &rd.committed_entries {
            if e.index != self.sm.applied + 1 {
                return Err(Violation::new(
                    READY_PROTOCOL,
                    format!(
                        "peer {id} was handed entry {} to apply after applying {}",
                        e.index, self.sm.applied
                    ),
                ));
            }
            let mut effect = 0u8;
            match e.kind {
                EntryKind::Normal if e.data.is_empty() => {}
                EntryKind::Normal => {
                    let cmd = Command::decode(&e.data).map_err(|err| {
                        Violation::new(
                            READY_PROTOCOL,
                            format!("peer {id}: entry {} is not a command: {err}", e.index),
                        )
                    })?;
                    let key = command_key(&cmd.payload);
                    let StateMachine {
                        kv,
                        writes,
                        sessions,
                        ..
                    } = &mut self.sm;
                    let outcome = sessions.apply(cmd.client_id, cmd.seq, || {
                        kv.entry(key).or_default().insert(cmd.client_id, cmd.seq);
                        *writes += 1;
                        Bytes::new()
                    });
                    let took_effect = matches!(outcome, SessionOutcome::Applied(_));
                    if took_effect {
                        effect = 1;
                        ctx.inv
                            .exactly_once
                            .observe_effect(id, cmd.client_id, cmd.seq, e.index)?;
                    } else {
                        ctx.inv.exactly_once.duplicates_suppressed += 1;
                    }
                    if !matches!(outcome, SessionOutcome::Stale) {
                        ctx.events.push(NodeEvent::Applied {
                            node: id,
                            client: cmd.client_id,
                            seq: cmd.seq,
                            key,
                            index: e.index,
                            effect: took_effect,
                        });
                    }
                }
                EntryKind::ConfChange => {
                    let cc: ConfChange = codec::decode(&e.data).map_err(|err| {
                        Violation::new(
                            READY_PROTOCOL,
                            format!("peer {id}: entry {} is not a conf change: {err}", e.index),
                        )
                    })?;
                    // A change the core refuses leaves the membership as it was, on every
                    // peer alike (the refusal depends only on the log).
                    if let Ok(cs) = raw.apply_conf_change(&cc) {
                        effect = 1;
                        self.storage.wl().set_conf_state(cs.clone());
                        self.sm.conf = cs;
                    }
                }
            }
            self.sm.applied = e.index;
            self.sm.chain(e, effect);
            ctx.inv.state_machine_safety.observe_apply(
                id,
                e.index,
                e.term,
                entry_fingerprint(e),
                self.sm.digest,
            )?;
            ctx.inv
                .leader_completeness
                .observe_committed_entry(term, e.index, e.term);
        }
        if crash == Some(CrashPoint::AfterApply) {
            self.crash(ctx.inv, ctx.rng)?;
            return Ok(true);
        }

        // 7. Reads are answered once the state machine reached their index.
        for rs in std::mem::take(&mut rd.read_states) {
            self.pending_reads.push((rs.index, rs.request_ctx));
        }
        let applied = self.sm.applied;
        let mut waiting = Vec::new();
        for (read_index, rctx) in std::mem::take(&mut self.pending_reads) {
            if read_index > applied {
                waiting.push((read_index, rctx));
                continue;
            }
            let key = parse_read_ctx(&rctx).map_or(0, |(_, k)| k);
            let value = self.sm.kv.get(&key).cloned().unwrap_or_default();
            ctx.events.push(NodeEvent::ReadAnswered {
                node: id,
                ctx: rctx,
                read_index,
                applied,
                value,
            });
        }
        self.pending_reads = waiting;

        // 8. Done: what the Ready persisted is reported now, or when its write finishes.
        if lagging {
            raw.advance_apply(&rd);
        } else {
            raw.advance(rd);
        }
        self.led_term = (raw.raft().role() == Role::Leader).then(|| raw.raft().term());
        self.raw = Some(raw);
        self.maybe_snapshot(ctx.rng);
        Ok(false)
    }

    /// Finishes some of the writes in flight, oldest first: each with probability
    /// `write_finish`, and the first that does not ends the turn.
    pub fn finish_some_writes(&mut self, ctx: &mut ReadyCtx<'_>) -> Result<(), Violation> {
        let Some(mut raw) = self.raw.take() else {
            return Ok(());
        };
        let mut n = 0;
        while n < self.writes.len() && ctx.rng.gen_bool(self.write_finish) {
            n += 1;
        }
        let done = self.finish_writes(&mut raw, ctx, n);
        self.raw = Some(raw);
        done
    }

    /// Finishes the oldest `n` writes in flight (all of them for `usize::MAX`): each is
    /// persisted, then the messages that waited for it leave, then the core learns what is
    /// durable.
    fn finish_writes(
        &mut self,
        raw: &mut RawNode<MemStorage>,
        ctx: &mut ReadyCtx<'_>,
        n: usize,
    ) -> Result<(), Violation> {
        for _ in 0..n {
            let Some(w) = self.writes.pop_front() else {
                break;
            };
            self.persist(&w, ctx.inv)?;
            self.writes_lagged += 1;
            for m in w.persisted_messages {
                send(ctx, m);
            }
            for (term, index) in w.marks {
                raw.on_persisted(term, index);
            }
        }
        Ok(())
    }

    /// Makes a write durable: its entries (an entry at index i replaces the stored suffix
    /// from i) and hard state go to the storage, checked for Leader Append-Only and Log
    /// Matching.
    fn persist(&mut self, w: &WriteInFlight, inv: &mut Invariants) -> Result<(), Violation> {
        let id = self.id;
        if let Some(first) = w.entries.first() {
            let first_index = first.index;
            let written: Vec<(u64, u64, u64)> = w
                .entries
                .iter()
                .map(|e| (e.index, e.term, entry_fingerprint(e)))
                .collect();
            let durable_last = self.storage.last_index().unwrap_or(0);
            if let Some(term) = w.led.filter(|_| first_index <= durable_last) {
                let old = self
                    .storage
                    .entries(first_index, durable_last + 1, u64::MAX)
                    .unwrap_or_default();
                let overwritten: Vec<(u64, u64, u64)> = old
                    .iter()
                    .map(|e| (e.index, e.term, entry_fingerprint(e)))
                    .collect();
                inv.leader_append_only
                    .observe_persist(id, term, &overwritten, &written)?;
            }
            self.storage.wl().append(&w.entries).map_err(|e| {
                Violation::new(
                    READY_PROTOCOL,
                    format!("peer {id}: appending at {first_index}: {e}"),
                )
            })?;
            let prev_term = self.storage.term(first_index - 1).unwrap_or(0);
            inv.log_matching.observe_append(id, prev_term, &written)?;
        }
        if let Some(hs) = w.hard_state {
            self.storage.wl().set_hard_state(hs);
        }
        Ok(())
    }

    /// Snapshots the state machine into storage and compacts the log below it, every
    /// `snapshot_every` applied entries.
    fn maybe_snapshot(&mut self, rng: &mut ChaCha8Rng) {
        let snap_index = self
            .storage
            .snapshot(0)
            .map(|s| s.metadata.index)
            .unwrap_or(0);
        if self.sm.applied < snap_index + self.snapshot_every {
            return;
        }
        let applied = self.sm.applied;
        let created =
            self.storage
                .wl()
                .create_snapshot(applied, self.sm.conf.clone(), self.sm.encode());
        if created.is_ok() {
            let keep = rng.gen_range(0..=self.compact_keep);
            let compact_to = (applied + 1).saturating_sub(keep).max(1);
            // Failure only means there is nothing to compact yet.
            let _ = self.storage.wl().compact(compact_to);
        }
    }
}

fn send(ctx: &mut ReadyCtx<'_>, m: Message) {
    if let Some(d) = ctx.net.send(ctx.rng, ctx.now, m) {
        ctx.dropped.push(d);
    }
}
