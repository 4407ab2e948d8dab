//! The in-process implementation of [`Transport`], for tests that need no sockets.
//!
//! Nodes join a [`MemoryNetwork`]; a send is delivered straight into the receiving node's
//! inbound channel, unless the network's fault hooks say otherwise: cut links (partitions,
//! one way or both), a drop predicate, a drop and a duplicate probability (from a seeded
//! generator, so a run replays from its seed), and a fixed delivery delay. Each delivered
//! envelope arrives as a one-envelope [`Inbound::Messages`].

use crate::error::SendError;
use crate::inbound::{inbound_channel, InboundReceiver, InboundSender};
use crate::transport::{Inbound, PeerEvent, SnapshotStatus, Transport};
use flotilla_common::{MessageKind, RaftEnvelope};
use parking_lot::{Condvar, Mutex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Envelopes held back by a delay at once; more are dropped, so a test that sets a long
/// delay under heavy load cannot grow memory without bound.
const DELAYED_MESSAGES_MAX: usize = 1 << 16;
/// Longest the delay thread sleeps before checking whether the network is gone.
const DELAY_POLL: Duration = Duration::from_millis(50);

/// A drop predicate: returns true for envelopes the network must lose.
pub type DropFilter = Box<dyn Fn(&RaftEnvelope) -> bool + Send>;

/// Counts of what the in-process network did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Envelopes put into a node's inbound channel (duplicates included).
    pub delivered: u64,
    /// Envelopes lost: partition, drop hook, full or closed inbound channel.
    pub dropped: u64,
    /// Extra copies made by the duplicate hook.
    pub duplicated: u64,
    /// Envelopes held back by the delay hook.
    pub delayed: u64,
}

struct Faults {
    rng: StdRng,
    drop_probability: f64,
    duplicate_probability: f64,
    delay: Duration,
    /// Directed links (from, to) that lose everything.
    cut: HashSet<(u64, u64)>,
    /// Cut links already reported unreachable to their sender (once per cut).
    reported: HashSet<(u64, u64)>,
    filter: Option<DropFilter>,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
}

struct Delayed {
    due: Instant,
    seq: u64,
    envelope: RaftEnvelope,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
struct DelayQueue {
    heap: Mutex<(BinaryHeap<Reverse<Delayed>>, u64)>,
    ready: Condvar,
    stop: AtomicBool,
}

struct Net {
    nodes: Mutex<HashMap<u64, InboundSender>>,
    faults: Mutex<Faults>,
    counters: Counters,
    delays: Arc<DelayQueue>,
    delay_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// An in-process network that nodes join. Cloning shares the network.
#[derive(Clone)]
pub struct MemoryNetwork {
    net: Arc<Net>,
}

/// One node's handle on a [`MemoryNetwork`].
pub struct MemoryTransport {
    node_id: u64,
    net: Arc<Net>,
    removed: Mutex<HashSet<u64>>,
}

impl MemoryNetwork {
    /// An empty network whose random faults come from `seed`.
    pub fn new(seed: u64) -> Self {
        MemoryNetwork {
            net: Arc::new(Net {
                nodes: Mutex::new(HashMap::new()),
                faults: Mutex::new(Faults {
                    rng: StdRng::seed_from_u64(seed),
                    drop_probability: 0.0,
                    duplicate_probability: 0.0,
                    delay: Duration::ZERO,
                    cut: HashSet::new(),
                    reported: HashSet::new(),
                    filter: None,
                }),
                counters: Counters::default(),
                delays: Arc::new(DelayQueue::default()),
                delay_thread: Mutex::new(None),
            }),
        }
    }

    /// Adds node `node_id` (replacing an earlier one of that id, as a restart would) with
    /// an inbound channel of `inbound_batches_max` batches.
    pub fn join(
        &self,
        node_id: u64,
        inbound_batches_max: usize,
    ) -> (MemoryTransport, InboundReceiver) {
        let (tx, rx) = inbound_channel(inbound_batches_max);
        self.net.nodes.lock().insert(node_id, tx);
        let t = MemoryTransport {
            node_id,
            net: self.net.clone(),
            removed: Mutex::new(HashSet::new()),
        };
        (t, rx)
    }

    /// Takes `node_id` off the network (a crash): envelopes to it are dropped.
    pub fn leave(&self, node_id: u64) {
        self.net.nodes.lock().remove(&node_id);
    }

    /// Loses each envelope with probability `p` (0.0 ..= 1.0).
    pub fn set_drop_probability(&self, p: f64) {
        self.net.faults.lock().drop_probability = p.clamp(0.0, 1.0);
    }

    /// Delivers each envelope twice with probability `p` (0.0 ..= 1.0).
    pub fn set_duplicate_probability(&self, p: f64) {
        self.net.faults.lock().duplicate_probability = p.clamp(0.0, 1.0);
    }

    /// Holds every envelope back for `delay` (zero: deliver at once). Order between two
    /// nodes is kept, since every envelope waits the same time.
    pub fn set_delay(&self, delay: Duration) {
        self.net.faults.lock().delay = delay;
        if !delay.is_zero() {
            self.net.start_delay_thread();
        }
    }

    /// Loses every envelope for which `filter` returns true (`None`: no filter).
    pub fn set_drop_filter(&self, filter: Option<DropFilter>) {
        self.net.faults.lock().filter = filter;
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: u64, to: u64) {
        self.net.faults.lock().cut.insert((from, to));
    }

    /// Cuts every link between a node of `side_a` and a node of `side_b`, both ways.
    pub fn partition(&self, side_a: &[u64], side_b: &[u64]) {
        let mut f = self.net.faults.lock();
        for &a in side_a {
            for &b in side_b {
                f.cut.insert((a, b));
                f.cut.insert((b, a));
            }
        }
    }

    /// Cuts `node` off from every other node that has joined.
    pub fn isolate(&self, node: u64) {
        let others: Vec<u64> = self
            .net
            .nodes
            .lock()
            .keys()
            .copied()
            .filter(|&n| n != node)
            .collect();
        self.partition(&[node], &others);
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        let mut f = self.net.faults.lock();
        f.cut.clear();
        f.reported.clear();
    }

    /// What the network has done so far.
    pub fn stats(&self) -> MemoryStats {
        let c = &self.net.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MemoryStats {
            delivered: g(&c.delivered),
            dropped: g(&c.dropped),
            duplicated: g(&c.duplicated),
            delayed: g(&c.delayed),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.delays.stop.store(true, Ordering::Release);
        self.delays.ready.notify_all();
        if let Some(t) = self.delay_thread.lock().take() {
            // The thread only holds a Weak to the network, and this may run on it.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Net {
    fn start_delay_thread(self: &Arc<Self>) {
        let mut slot = self.delay_thread.lock();
        if slot.is_some() {
            return;
        }
        let weak: Weak<Net> = Arc::downgrade(self);
        let delays = self.delays.clone();
        let spawned = std::thread::Builder::new()
            .name("memory-net-delay".into())
            .spawn(move || delay_loop(&delays, &weak));
        match spawned {
            Ok(handle) => *slot = Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the delay thread; delays are ignored")
            }
        }
    }

    fn drop_one(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Puts `envelope` into its node's channel now.
    fn put(&self, envelope: RaftEnvelope) -> bool {
        self.deliver(envelope.to_node, envelope.from_node, vec![envelope])
    }

    /// Hands `envelopes` (all from `from_node` to `to_node`) to that node in one delivery;
    /// counts them delivered, or dropped if its inbox is gone or full.
    fn deliver(&self, to_node: u64, from_node: u64, envelopes: Vec<RaftEnvelope>) -> bool {
        let n = envelopes.len() as u64;
        let inbox = self.nodes.lock().get(&to_node).cloned();
        let ok = inbox.is_some_and(|tx| {
            tx.try_send(Inbound::Messages {
                from_node,
                envelopes,
            })
            .is_ok()
        });
        if ok {
            self.counters.delivered.fetch_add(n, Ordering::Relaxed);
        } else {
            for _ in 0..n {
                self.drop_one();
            }
        }
        ok
    }

    fn event(&self, node: u64, event: PeerEvent) {
        if let Some(tx) = self.nodes.lock().get(&node) {
            let _ = tx.try_send(Inbound::Event(event));
        }
    }

    /// Delivers `envelopes` (in order) as one batch per destination node, as the TCP
    /// transport hands a peer's frame over: one wake-up of each receiver, not one per
    /// envelope.
    fn put_batch(&self, envelopes: Vec<RaftEnvelope>) {
        let mut by_node: Vec<(u64, Vec<RaftEnvelope>)> = Vec::new();
        for e in envelopes {
            match by_node.iter_mut().find(|(node, _)| *node == e.to_node) {
                Some((_, list)) => list.push(e),
                None => by_node.push((e.to_node, vec![e])),
            }
        }
        for (node, list) in by_node {
            let from_node = list[0].from_node;
            self.deliver(node, from_node, list);
        }
    }

    /// Runs the fault hooks on `envelope` and delivers what survives. Returns whether at
    /// least one copy was delivered or scheduled.
    fn route(&self, envelope: RaftEnvelope) -> bool {
        let mut now = Vec::new();
        let mut any = self.route_into(envelope, &mut now);
        for e in now {
            any |= self.put(e);
        }
        any
    }

    /// Runs the fault hooks on `envelope`: schedules the delayed copies and adds to `now`
    /// those to deliver at once. Returns whether a delayed copy was scheduled.
    fn route_into(&self, envelope: RaftEnvelope, now: &mut Vec<RaftEnvelope>) -> bool {
        let link = (envelope.from_node, envelope.to_node);
        let (lose, duplicate, delay, newly_cut) = {
            let mut f = self.faults.lock();
            let cut = f.cut.contains(&link);
            let newly_cut = cut && f.reported.insert(link);
            let (p_drop, p_dup) = (f.drop_probability, f.duplicate_probability);
            let filtered = f
                .filter
                .as_ref()
                .is_some_and(|keep_out| keep_out(&envelope));
            let lose = cut || filtered || (p_drop > 0.0 && f.rng.gen_bool(p_drop));
            let duplicate = !lose && p_dup > 0.0 && f.rng.gen_bool(p_dup);
            (lose, duplicate, f.delay, newly_cut)
        };
        if newly_cut {
            self.event(link.0, PeerEvent::Unreachable { node_id: link.1 });
        }
        if lose {
            self.drop_one();
            return false;
        }
        let copies = if duplicate {
            self.counters.duplicated.fetch_add(1, Ordering::Relaxed);
            vec![envelope.clone(), envelope]
        } else {
            vec![envelope]
        };
        let mut scheduled = false;
        for e in copies {
            if delay.is_zero() {
                now.push(e);
            } else {
                scheduled |= self.schedule(e, delay);
            }
        }
        scheduled
    }

    fn schedule(&self, envelope: RaftEnvelope, delay: Duration) -> bool {
        let mut guard = self.delays.heap.lock();
        let (heap, seq) = &mut *guard;
        if heap.len() >= DELAYED_MESSAGES_MAX {
            self.drop_one();
            return false;
        }
        *seq += 1;
        heap.push(Reverse(Delayed {
            due: Instant::now() + delay,
            seq: *seq,
            envelope,
        }));
        self.counters.delayed.fetch_add(1, Ordering::Relaxed);
        self.delays.ready.notify_one();
        true
    }
}

fn delay_loop(delays: &DelayQueue, net: &Weak<Net>) {
    loop {
        if delays.stop.load(Ordering::Acquire) {
            return;
        }
        let mut due = Vec::new();
        {
            let mut guard = delays.heap.lock();
            let now = Instant::now();
            while guard.0.peek().is_some_and(|d| d.0.due <= now) {
                if let Some(Reverse(d)) = guard.0.pop() {
                    due.push(d.envelope);
                }
            }
            if due.is_empty() {
                let wait = guard.0.peek().map_or(DELAY_POLL, |d| {
                    d.0.due.saturating_duration_since(now).min(DELAY_POLL)
                });
                delays.ready.wait_for(&mut guard, wait);
                continue;
            }
        }
        let Some(net) = net.upgrade() else { return };
        for e in due {
            net.put(e);
        }
    }
}

impl MemoryTransport {
    fn check_peer(&self, envelope: RaftEnvelope) -> Result<RaftEnvelope, SendError> {
        if self.removed.lock().contains(&envelope.to_node)
            || !self.net.nodes.lock().contains_key(&envelope.to_node)
        {
            return Err(SendError::UnknownPeer(Box::new(envelope)));
        }
        Ok(envelope)
    }
}

impl Transport for MemoryTransport {
    fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Addresses mean nothing in process: nodes are reached by id once they joined. This
    /// only undoes [`Transport::remove_peer`].
    fn add_peer(&self, node_id: u64, _addr: SocketAddr) {
        self.removed.lock().remove(&node_id);
    }

    fn remove_peer(&self, node_id: u64) {
        self.removed.lock().insert(node_id);
    }

    fn knows(&self, node_id: u64) -> bool {
        node_id == self.node_id
            || (!self.removed.lock().contains(&node_id)
                && self.net.nodes.lock().contains_key(&node_id))
    }

    /// One batch per destination node for the envelopes that pass the fault hooks at once
    /// (snapshots still go one by one, with their status).
    fn send_batch(&self, envelopes: Vec<RaftEnvelope>) -> Vec<SendError> {
        let mut errors = Vec::new();
        let mut now = Vec::new();
        for e in envelopes {
            if e.message.kind == MessageKind::Snapshot {
                errors.extend(self.send_snapshot(e).err());
                continue;
            }
            match self.check_peer(e) {
                Ok(e) => {
                    self.net.route_into(e, &mut now);
                }
                Err(err) => errors.push(err),
            }
        }
        self.net.put_batch(now);
        errors
    }

    fn send(&self, envelope: RaftEnvelope) -> Result<(), SendError> {
        if envelope.message.kind == MessageKind::Snapshot {
            return self.send_snapshot(envelope);
        }
        let envelope = self.check_peer(envelope)?;
        self.net.route(envelope);
        Ok(())
    }

    /// Delivers the snapshot like any envelope and reports at once whether it went out
    /// (`Finished`) or was lost to a fault hook (`Failure`).
    fn send_snapshot(&self, envelope: RaftEnvelope) -> Result<(), SendError> {
        let envelope = self.check_peer(envelope)?;
        let (to_node, region_id, to_peer) =
            (envelope.to_node, envelope.region_id, envelope.message.to);
        let status = if self.net.route(envelope) {
            SnapshotStatus::Finished
        } else {
            SnapshotStatus::Failure
        };
        self.net.event(
            self.node_id,
            PeerEvent::SnapshotStatus {
                to_node,
                region_id,
                to_peer,
                status,
            },
        );
        Ok(())
    }
}
