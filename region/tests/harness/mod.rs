//! An in-memory network of raft peers for the rule tests.
//!
//! Every peer is a `RawNode` over a `MemStorage`; the network handles each peer's Ready the
//! way a real node does (send, persist, then send what needed persisting, apply, advance) and
//! carries messages between peers. Tests drive it step by step: deliver what is in flight
//! (`round`), deliver until nothing moves (`stabilize`), drop or hold messages, cut links,
//! isolate a peer, crash a peer (losing what it had not persisted) and restart it.
//!
//! Messages are checked against the faults when they are delivered, not when they are sent,
//! so cutting a link also loses what is already on the wire, as with a real partition.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use flotilla_common::{codec, ConfChange, ConfState, Entry, EntryKind, Message, MessageKind};
use flotilla_region::raft::{
    Config, Error, MemStorage, ProgressState, Raft, RawNode, ReadState, Role, Storage,
};

/// Base election timeout T used by the tests, in ticks.
pub const ELECTION_TICK: usize = 10;
/// Heartbeat interval H used by the tests, in ticks.
pub const HEARTBEAT_TICK: usize = 2;

/// Delivery rounds `stabilize` allows: a cluster still exchanging messages after this many
/// rounds without ticks is livelocked, which is a bug worth a loud failure.
const STABILIZE_ROUNDS_MAX: usize = 1_000;
/// Readies one `flush` handles for a peer: each advance may produce at most a few more.
const READIES_PER_FLUSH_MAX: usize = 100;

/// The test configuration of peer `id`: T = 10, H = 2, PreVote and CheckQuorum on.
pub fn config(id: u64) -> Config {
    let mut c = Config::new(id);
    c.election_tick = ELECTION_TICK;
    c.heartbeat_tick = HEARTBEAT_TICK;
    c
}

/// `count` entries of `term`, starting at `first`, each carrying its index as data.
pub fn entries(first: u64, terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let index = first + i as u64;
            Entry::new(
                EntryKind::Normal,
                t,
                index,
                format!("e{index}").into_bytes(),
            )
        })
        .collect()
}

/// A storage already holding `terms` (entry i+1 has term terms[i]) and a hard state at
/// `term`, for a group of `voters`.
pub fn storage_with_log(voters: &[u64], terms: &[u64], term: u64) -> MemStorage {
    let s = MemStorage::new_with_conf_state(ConfState::with_voters(voters.iter().copied()));
    s.wl().append(&entries(1, terms)).unwrap();
    let mut hs = s.wl().hard_state();
    hs.term = term;
    s.wl().set_hard_state(hs);
    s
}

/// One peer: its raft core, its storage, and a trivial state machine (the list of applied
/// command payloads) so that tests can check what was applied, and in which order.
pub struct Peer {
    pub id: u64,
    pub node: RawNode<MemStorage>,
    pub store: MemStorage,
    pub cfg: Config,
    /// Applied non-empty normal entries: (index, data).
    pub applied: Vec<(u64, Bytes)>,
    /// The highest index applied (entries, no-ops, conf changes, snapshots).
    pub applied_index: u64,
    /// Read states handed out by the core, in order.
    pub read_states: Vec<ReadState>,
    /// Every membership the application installed, in order (after each applied change).
    pub conf_history: Vec<ConfState>,
    /// Errors from `apply_conf_change` (an invalid change that reached the log).
    pub conf_errors: Vec<Error>,
}

impl Peer {
    /// A peer over `store`, started with `cfg`.
    pub fn new(cfg: Config, store: MemStorage) -> Peer {
        let node = RawNode::new(&cfg, store.clone()).expect("a valid config and storage");
        Peer {
            id: cfg.id,
            node,
            store,
            cfg,
            applied: Vec::new(),
            applied_index: 0,
            read_states: Vec::new(),
            conf_history: Vec::new(),
            conf_errors: Vec::new(),
        }
    }

    pub fn raft(&self) -> &Raft<MemStorage> {
        self.node.raft()
    }

    /// Handles every pending Ready as a node does and returns the messages to send, in the
    /// order they may leave: first the ones that need nothing durable, then the others.
    pub fn flush(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        for _ in 0..READIES_PER_FLUSH_MAX {
            if !self.node.has_ready() {
                return out;
            }
            let mut rd = self.node.ready();
            // 1. Messages that may leave before anything is durable.
            out.append(&mut rd.messages);
            // 2. Persist: snapshot, entries, hard state.
            if let Some(snap) = rd.snapshot.clone() {
                if !snap.is_empty() {
                    self.store
                        .wl()
                        .apply_snapshot(snap.clone())
                        .expect("snapshot installs");
                    self.applied = decode_state_machine(&snap.data);
                    self.applied_index = snap.metadata.index;
                }
            }
            self.store.wl().append(&rd.entries).expect("entries append");
            if let Some(hs) = rd.hard_state {
                self.store.wl().set_hard_state(hs);
            }
            // 3. Only now the messages that promise durability (votes, append acks).
            out.append(&mut rd.persisted_messages);
            // 4. Apply.
            let committed = std::mem::take(&mut rd.committed_entries);
            for e in committed {
                self.apply(&e);
            }
            self.read_states.append(&mut rd.read_states);
            self.node.advance(rd);
        }
        panic!("peer {} kept producing Readies", self.id);
    }

    fn apply(&mut self, e: &Entry) {
        assert!(
            e.index > self.applied_index,
            "peer {} applies index {} again (applied {})",
            self.id,
            e.index,
            self.applied_index
        );
        self.applied_index = e.index;
        match e.kind {
            EntryKind::Normal => {
                if !e.data.is_empty() {
                    self.applied.push((e.index, e.data.clone()));
                }
            }
            EntryKind::ConfChange => {
                let cc: ConfChange = codec::decode(&e.data).expect("conf change decodes");
                match self.node.apply_conf_change(&cc) {
                    Ok(cs) => {
                        self.store.wl().set_conf_state(cs.clone());
                        self.conf_history.push(cs);
                    }
                    Err(err) => self.conf_errors.push(err),
                }
            }
        }
    }

    /// The payloads applied, in order.
    pub fn applied_data(&self) -> Vec<Bytes> {
        self.applied.iter().map(|(_, d)| d.clone()).collect()
    }

    /// Stores a snapshot of the state machine at the applied index (for members that need
    /// one: lagging followers, new peers), keeping the log.
    pub fn snapshot_at_applied(&mut self) {
        let index = self.applied_index;
        let r = self.raft();
        let cs = r.conf_state_at(index).unwrap_or_else(|| r.conf_state());
        let image: Vec<(u64, Bytes)> = self
            .applied
            .iter()
            .filter(|(i, _)| *i <= index)
            .cloned()
            .collect();
        let data = codec::encode(&image).unwrap();
        self.store
            .wl()
            .create_snapshot(index, cs, Bytes::from(data))
            .unwrap();
    }

    /// Snapshots the state machine at the applied index and drops the log below it
    /// (compaction below applied).
    pub fn compact_to_applied(&mut self) {
        self.snapshot_at_applied();
        self.store.wl().compact(self.applied_index).unwrap();
    }
}

fn decode_state_machine(data: &[u8]) -> Vec<(u64, Bytes)> {
    if data.is_empty() {
        return Vec::new();
    }
    codec::decode(data).expect("state machine image decodes")
}

/// What happened to a message the network tried to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    Dropped,
    Held,
}

type Filter = Box<dyn FnMut(&Message) -> bool>;

/// What survives a crash: the config, the storage, the state machine and the index of the
/// storage's snapshot (the state machine restarts from there).
type Crashed = (Config, MemStorage, Vec<(u64, Bytes)>, u64);

/// The in-memory network.
pub struct Network {
    pub peers: BTreeMap<u64, Peer>,
    /// Storage, config and state machine of crashed peers (what survives a crash).
    crashed: BTreeMap<u64, Crashed>,
    /// Messages sent and not yet delivered, in send order.
    pub in_flight: Vec<Message>,
    /// Messages held back by `hold`, waiting for `release`.
    pub held: Vec<Message>,
    /// Directed links that lose everything.
    cut: BTreeSet<(u64, u64)>,
    /// Message kinds that are lost.
    ignored: Vec<MessageKind>,
    /// Drops the messages it returns true for.
    drop_filter: Option<Filter>,
    /// Holds back the messages it returns true for.
    hold_filter: Option<Filter>,
    /// Every message any peer emitted, in order (for counting rounds and kinds).
    pub sent: Vec<Message>,
    /// Every message delivered, in order.
    pub delivered: Vec<Message>,
    /// Messages a peer refused with an error.
    pub step_errors: Vec<(Message, Error)>,
}

impl Network {
    /// A group of `ids`, all voters, with the test configuration.
    pub fn new(ids: &[u64]) -> Network {
        Network::with(ids, &[], |_| {})
    }

    /// A group of `voters` and `learners`; `tweak` adjusts each peer's configuration.
    pub fn with(voters: &[u64], learners: &[u64], tweak: impl Fn(&mut Config)) -> Network {
        let cs = ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..Default::default()
        };
        let mut net = Network::empty();
        for &id in voters.iter().chain(learners) {
            let mut cfg = config(id);
            tweak(&mut cfg);
            net.add_peer(cfg, MemStorage::new_with_conf_state(cs.clone()));
        }
        net
    }

    /// A network of peers started over the given storages.
    pub fn from_storages(stores: Vec<(u64, MemStorage)>, tweak: impl Fn(&mut Config)) -> Network {
        let mut net = Network::empty();
        for (id, s) in stores {
            let mut cfg = config(id);
            tweak(&mut cfg);
            net.add_peer(cfg, s);
        }
        net
    }

    pub fn empty() -> Network {
        Network {
            peers: BTreeMap::new(),
            crashed: BTreeMap::new(),
            in_flight: Vec::new(),
            held: Vec::new(),
            cut: BTreeSet::new(),
            ignored: Vec::new(),
            drop_filter: None,
            hold_filter: None,
            sent: Vec::new(),
            delivered: Vec::new(),
            step_errors: Vec::new(),
        }
    }

    /// Adds a peer (for example a new member) over `store`.
    pub fn add_peer(&mut self, cfg: Config, store: MemStorage) {
        let id = cfg.id;
        self.peers.insert(id, Peer::new(cfg, store));
    }

    /// Adds a brand-new peer that knows no membership yet (it learns it from a snapshot).
    pub fn add_new_peer(&mut self, id: u64) {
        self.add_peer(config(id), MemStorage::new());
    }

    pub fn peer(&self, id: u64) -> &Peer {
        self.peers
            .get(&id)
            .unwrap_or_else(|| panic!("no live peer {id}"))
    }

    pub fn peer_mut(&mut self, id: u64) -> &mut Peer {
        self.peers
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no live peer {id}"))
    }

    pub fn raft(&self, id: u64) -> &Raft<MemStorage> {
        self.peer(id).raft()
    }

    pub fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        &mut self.peer_mut(id).node
    }

    pub fn role(&self, id: u64) -> Role {
        self.raft(id).role()
    }

    pub fn term(&self, id: u64) -> u64 {
        self.raft(id).term()
    }

    /// The (term, index) of every entry in peer `id`'s log, from its first index.
    pub fn log(&self, id: u64) -> Vec<(u64, u64)> {
        let r = self.raft(id);
        let (lo, hi) = (r.first_index(), r.last_index() + 1);
        if lo >= hi {
            return Vec::new();
        }
        r.entries(lo, hi)
            .unwrap()
            .iter()
            .map(|e| (e.term, e.index))
            .collect()
    }

    /// The terms of peer `id`'s log from index 1 (the log must not be compacted).
    pub fn log_terms(&self, id: u64) -> Vec<u64> {
        let r = self.raft(id);
        assert_eq!(r.first_index(), 1, "log of {id} is compacted");
        self.log(id).iter().map(|(t, _)| *t).collect()
    }

    /// The live leaders.
    pub fn leaders(&self) -> Vec<u64> {
        self.peers
            .values()
            .filter(|p| p.raft().role() == Role::Leader)
            .map(|p| p.id)
            .collect()
    }

    /// The one live leader with the highest term.
    pub fn leader(&self) -> u64 {
        self.peers
            .values()
            .filter(|p| p.raft().role() == Role::Leader)
            .max_by_key(|p| p.raft().term())
            .map(|p| p.id)
            .expect("a leader")
    }

    /// Handles peer `id`'s Readies and puts its messages on the wire.
    pub fn flush(&mut self, id: u64) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let msgs = p.flush();
        self.sent.extend(msgs.iter().cloned());
        self.in_flight.extend(msgs);
    }

    pub fn flush_all(&mut self) {
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            self.flush(id);
        }
    }

    fn lost(&mut self, m: &Message) -> bool {
        if self.cut.contains(&(m.from, m.to)) || self.ignored.contains(&m.kind) {
            return true;
        }
        if !self.peers.contains_key(&m.to) {
            return true;
        }
        match self.drop_filter.as_mut() {
            Some(f) => f(m),
            None => false,
        }
    }

    /// Tries to deliver one message; the receiver's Ready is handled afterwards by the caller.
    pub fn deliver(&mut self, m: Message) -> Fate {
        if self.hold_filter.as_mut().is_some_and(|f| f(&m)) {
            self.held.push(m);
            return Fate::Held;
        }
        self.deliver_now(m)
    }

    /// Delivers the held messages `pick` selects (the hold stays on for the others).
    pub fn deliver_held_where(&mut self, mut pick: impl FnMut(&Message) -> bool) -> usize {
        let (chosen, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|m| pick(m));
        self.held = rest;
        let mut n = 0;
        for m in chosen {
            if self.deliver_now(m) == Fate::Delivered {
                n += 1;
            }
        }
        self.flush_all();
        n
    }

    fn deliver_now(&mut self, m: Message) -> Fate {
        let lost = self.lost(&m);
        // Like a transport, tell the leader whether its snapshot got through.
        if m.kind == MessageKind::Snapshot {
            if let Some(sender) = self.peers.get_mut(&m.from) {
                sender.node.report_snapshot(m.to, !lost);
            }
        }
        if lost {
            return Fate::Dropped;
        }
        let to = m.to;
        self.delivered.push(m.clone());
        if let Err(e) = self.node(to).step(m.clone()) {
            self.step_errors.push((m, e));
        }
        Fate::Delivered
    }

    /// Delivers everything now in flight (not what that produces), handles every Ready,
    /// and returns how many messages arrived.
    pub fn round(&mut self) -> usize {
        self.flush_all();
        let batch = std::mem::take(&mut self.in_flight);
        let mut n = 0;
        for m in batch {
            if self.deliver(m) == Fate::Delivered {
                n += 1;
            }
        }
        self.flush_all();
        n
    }

    /// Delivers until nothing is in flight; returns the number of rounds it took.
    pub fn stabilize(&mut self) -> usize {
        for rounds in 0..STABILIZE_ROUNDS_MAX {
            self.flush_all();
            if self.in_flight.is_empty() {
                return rounds;
            }
            self.round();
        }
        panic!("the network did not stabilize within {STABILIZE_ROUNDS_MAX} rounds");
    }

    /// Delivers only the in-flight messages `pick` selects (the rest stay in flight).
    pub fn deliver_where(&mut self, mut pick: impl FnMut(&Message) -> bool) -> usize {
        self.flush_all();
        let (chosen, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|m| pick(m));
        self.in_flight = rest;
        let mut n = 0;
        for m in chosen {
            if self.deliver(m) == Fate::Delivered {
                n += 1;
            }
        }
        self.flush_all();
        n
    }

    /// Removes from the wire, and returns, the in-flight messages `pick` selects.
    pub fn take_where(&mut self, mut pick: impl FnMut(&Message) -> bool) -> Vec<Message> {
        self.flush_all();
        let (chosen, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|m| pick(m));
        self.in_flight = rest;
        chosen
    }

    /// Puts a message on the wire as if a peer had sent it.
    pub fn send(&mut self, m: Message) {
        self.in_flight.push(m);
    }

    /// Ticks peer `id` once and handles its Ready (nothing is delivered).
    pub fn tick(&mut self, id: u64) {
        self.node(id).tick();
        self.flush(id);
    }

    /// `n` ticks of peer `id` alone.
    pub fn tick_n(&mut self, id: u64, n: usize) {
        for _ in 0..n {
            self.tick(id);
        }
    }

    /// `n` ticks of every live peer; after each tick the network stabilizes (messages take
    /// less than a tick).
    pub fn tick_all(&mut self, n: usize) {
        for _ in 0..n {
            let ids: Vec<u64> = self.peers.keys().copied().collect();
            for id in ids {
                self.node(id).tick();
            }
            self.stabilize();
        }
    }

    /// Peer `id` starts an election now; the network stabilizes.
    pub fn campaign(&mut self, id: u64) {
        self.node(id).campaign().unwrap();
        self.stabilize();
    }

    /// Elects `id` (campaigning again if it lost a round to an earlier vote) and asserts it won.
    pub fn elect(&mut self, id: u64) {
        for _ in 0..3 {
            self.campaign(id);
            if self.role(id) == Role::Leader {
                return;
            }
        }
        panic!("peer {id} was not elected: role {:?}", self.role(id));
    }

    /// Proposes `data` on `id` and stabilizes; returns the entry's index.
    pub fn propose(&mut self, id: u64, data: &str) -> u64 {
        let index = self.node(id).propose(data.as_bytes().to_vec()).unwrap();
        self.stabilize();
        index
    }

    /// Proposes a membership change on `id` and stabilizes; returns the entry's index.
    pub fn change(&mut self, id: u64, cc: ConfChange) -> u64 {
        let index = self.node(id).propose_conf_change(cc).unwrap();
        self.stabilize();
        index
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn cut(&mut self, a: u64, b: u64) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Cuts `id` from every other peer (present or future, up to id 16).
    pub fn isolate(&mut self, id: u64) {
        for other in 1..=16 {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Loses every message of `kind`.
    pub fn ignore(&mut self, kind: MessageKind) {
        self.ignored.push(kind);
    }

    /// Drops the messages `f` selects, from now on.
    pub fn drop_if(&mut self, f: impl FnMut(&Message) -> bool + 'static) {
        self.drop_filter = Some(Box::new(f));
    }

    /// Holds back the messages `f` selects, from now on, until `release`.
    pub fn hold_if(&mut self, f: impl FnMut(&Message) -> bool + 'static) {
        self.hold_filter = Some(Box::new(f));
    }

    /// Stops holding and puts the held messages back on the wire.
    pub fn release(&mut self) {
        self.hold_filter = None;
        let held = std::mem::take(&mut self.held);
        self.in_flight.extend(held);
    }

    /// Loses the held messages (a snapshot among them is reported as failed to its sender).
    pub fn drop_held(&mut self) {
        for m in std::mem::take(&mut self.held) {
            if m.kind == MessageKind::Snapshot {
                if let Some(sender) = self.peers.get_mut(&m.from) {
                    sender.node.report_snapshot(m.to, false);
                }
            }
        }
    }

    /// Removes every fault: cuts, ignored kinds, drop and hold filters.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.ignored.clear();
        self.drop_filter = None;
        self.release();
    }

    /// Crashes `id`: everything it had not written to its storage is gone, and so is
    /// everything on the wire to it.
    pub fn crash(&mut self, id: u64) {
        let p = self.peers.remove(&id).expect("a live peer to crash");
        self.in_flight.retain(|m| m.to != id);
        let snap_index = p.store.snapshot(0).map(|s| s.metadata.index).unwrap_or(0);
        self.crashed
            .insert(id, (p.cfg, p.store, p.applied, snap_index));
    }

    /// Restarts a crashed peer from its storage: the state machine restarts from the
    /// storage's snapshot, and the core hands out the committed entries after it again.
    pub fn restart(&mut self, id: u64) {
        let (mut cfg, store, applied, snap_index) =
            self.crashed.remove(&id).expect("a crashed peer");
        cfg.applied = snap_index;
        let mut p = Peer::new(cfg, store);
        p.applied = applied
            .into_iter()
            .filter(|(i, _)| *i <= snap_index)
            .collect();
        p.applied_index = snap_index;
        self.peers.insert(id, p);
    }

    /// The messages of `kind` sent from `from` to `to` so far.
    pub fn sent_of(&self, kind: MessageKind, from: u64, to: u64) -> Vec<&Message> {
        self.sent
            .iter()
            .filter(|m| m.kind == kind && m.from == from && m.to == to)
            .collect()
    }

    /// The leader's replication state for `follower`.
    pub fn progress_state(&self, leader: u64, follower: u64) -> ProgressState {
        self.raft(leader)
            .progress(follower)
            .expect("a tracked follower")
            .state
    }

    pub fn matched(&self, leader: u64, follower: u64) -> u64 {
        self.raft(leader)
            .progress(follower)
            .expect("a tracked follower")
            .matched
    }
}

/// A message of `kind` from `from` to `to` in `term`, other fields default.
pub fn msg(kind: MessageKind, from: u64, to: u64, term: u64) -> Message {
    Message::new(kind, from, to, term)
}

/// Handles one Ready of a lone RawNode: persists it to `store` and returns it unchanged
/// (fields intact) for the test to inspect, after calling advance on a copy-free path.
pub fn ready_of(node: &mut RawNode<MemStorage>, store: &MemStorage) -> ReadyParts {
    let mut rd = node.ready();
    let parts = ReadyParts {
        hard_state: rd.hard_state,
        entries: rd.entries.clone(),
        messages: std::mem::take(&mut rd.messages),
        persisted_messages: std::mem::take(&mut rd.persisted_messages),
        committed: rd.committed_entries.clone(),
        read_states: rd.read_states.clone(),
    };
    store.wl().append(&rd.entries).unwrap();
    if let Some(hs) = rd.hard_state {
        store.wl().set_hard_state(hs);
    }
    node.advance(rd);
    parts
}

/// The parts of a Ready the tests look at.
#[derive(Debug, Clone)]
pub struct ReadyParts {
    pub hard_state: Option<flotilla_common::HardState>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub committed: Vec<Entry>,
    pub read_states: Vec<ReadState>,
}

impl ReadyParts {
    /// All messages, whatever their durability needs.
    pub fn all_messages(&self) -> Vec<Message> {
        self.messages
            .iter()
            .chain(&self.persisted_messages)
            .cloned()
            .collect()
    }
}
