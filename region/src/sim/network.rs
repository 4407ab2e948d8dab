//! The packet simulator: every raft message between simulated peers passes through here.
//!
//! Modeled on tigerbeetle's `packet_simulator.zig`: the network owns every message in
//! flight and decides, with the simulation's one seeded RNG, whether each is lost,
//! duplicated, how many ticks it is delayed (which also reorders messages), and whether a
//! partition cuts it off. Nothing here reads a clock or a socket, so a seed replays exactly.

use std::collections::BTreeMap;

use flotilla_common::{Message, MessageKind};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// How unreliable the network is. Probabilities are per message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkFaults {
    /// Probability that a message is dropped.
    pub loss: f64,
    /// Probability that a message is delivered twice (each copy with its own delay).
    pub duplicate: f64,
    /// Each message is delayed by a uniform number of ticks in `[0, delay_ticks_max]`;
    /// different delays reorder messages.
    pub delay_ticks_max: u64,
    /// Probability that a message is held much longer instead: up to
    /// `long_delay_ticks_max` ticks (a stale message from a congested or reconnecting link,
    /// arriving after timeouts that assumed it lost).
    pub long_delay: f64,
    /// The longest delay of a long-delayed message, in ticks.
    pub long_delay_ticks_max: u64,
}

impl NetworkFaults {
    /// A perfect network: nothing lost or duplicated, every message arrives within the tick.
    pub const RELIABLE: NetworkFaults = NetworkFaults {
        loss: 0.0,
        duplicate: 0.0,
        delay_ticks_max: 0,
        long_delay: 0.0,
        long_delay_ticks_max: 0,
    };
}

/// A message in flight.
#[derive(Debug, Clone)]
struct Packet {
    /// The tick from which it may be delivered.
    deliver_at: u64,
    /// Random tie-breaker among packets due at the same tick: reorders them.
    order: u64,
    msg: Message,
}

/// Why a message did not arrive; the simulation tells the sender what a real transport
/// would notice (a failed snapshot stream, an unreachable peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Random loss.
    Lost,
    /// The sender and receiver are on different sides of a partition.
    Partitioned,
    /// The receiver is down.
    ReceiverDown,
}

/// A message the network dropped, and why.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// The message.
    pub msg: Message,
    /// Why it was dropped.
    pub reason: DropReason,
}

/// Packets in flight at most. Beyond this, new messages are dropped as lost: bounds memory
/// when a long partition makes a leader retry forever (a real transport's queue is bounded
/// too).
pub const PACKETS_IN_FLIGHT_MAX: usize = 100_000;

/// The simulated network between peers.
#[derive(Debug, Default)]
pub struct Network {
    faults: Option<NetworkFaults>,
    in_flight: Vec<Packet>,
    /// Partition group of each peer; peers absent from the map are in group 0. Two peers
    /// can talk only when they are in the same group.
    groups: BTreeMap<u64, u32>,
    /// Messages handed to `send`.
    pub sent: u64,
    /// Messages dropped by loss or partitions.
    pub dropped: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Snapshot messages handed to `send`.
    pub snapshots_sent: u64,
}

impl Network {
    /// A network with the given faults and no partition.
    pub fn new(faults: NetworkFaults) -> Self {
        Network {
            faults: Some(faults),
            ..Default::default()
        }
    }

    /// The current faults.
    pub fn faults(&self) -> NetworkFaults {
        self.faults.unwrap_or(NetworkFaults::RELIABLE)
    }

    /// Changes the faults from now on (messages in flight keep their fate).
    pub fn set_faults(&mut self, faults: NetworkFaults) {
        self.faults = Some(faults);
    }

    /// Puts each listed peer in the given partition group; unlisted peers go to group 0.
    pub fn partition(&mut self, groups: BTreeMap<u64, u32>) {
        self.groups = groups;
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.groups.clear();
    }

    /// Whether any partition is in place.
    pub fn is_partitioned(&self) -> bool {
        self.groups.values().any(|&g| g != 0)
    }

    /// Whether `a` and `b` can currently exchange messages.
    pub fn connected(&self, a: u64, b: u64) -> bool {
        self.groups.get(&a).copied().unwrap_or(0) == self.groups.get(&b).copied().unwrap_or(0)
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Hands a message to the network at tick `now`. Returns it back if it was lost at once.
    pub fn send(&mut self, rng: &mut ChaCha8Rng, now: u64, msg: Message) -> Option<Dropped> {
        self.sent += 1;
        if msg.kind == MessageKind::Snapshot {
            self.snapshots_sent += 1;
        }
        let faults = self.faults();
        if rng.gen_bool(faults.loss) || self.in_flight.len() >= PACKETS_IN_FLIGHT_MAX {
            self.dropped += 1;
            return Some(Dropped {
                msg,
                reason: DropReason::Lost,
            });
        }
        // A snapshot is a stream in a real transport: it is not duplicated packet-wise.
        let copies = if msg.kind != MessageKind::Snapshot && rng.gen_bool(faults.duplicate) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let delay = if faults.long_delay > 0.0 && rng.gen_bool(faults.long_delay) {
                rng.gen_range(0..=faults.long_delay_ticks_max)
            } else {
                rng.gen_range(0..=faults.delay_ticks_max)
            };
            let packet = Packet {
                deliver_at: now + delay,
                order: rng.gen(),
                msg: msg.clone(),
            };
            if copy + 1 == copies {
                self.in_flight.push(Packet { msg, ..packet });
                break;
            }
            self.in_flight.push(packet);
        }
        None
    }

    /// Takes the messages due at tick `now`, in a random order. Messages whose endpoints are
    /// partitioned apart at delivery time go to `dropped` instead.
    pub fn take_due(&mut self, now: u64, dropped: &mut Vec<Dropped>) -> Vec<Message> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].deliver_at <= now {
                due.push(self.in_flight.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // swap_remove scrambles positions; sort by the random key so the order depends only
        // on the seed.
        due.sort_by_key(|p| (p.order, p.msg.from, p.msg.to));
        let mut out = Vec::with_capacity(due.len());
        for p in due {
            if self.connected(p.msg.from, p.msg.to) {
                self.delivered += 1;
                out.push(p.msg);
            } else {
                self.dropped += 1;
                dropped.push(Dropped {
                    msg: p.msg,
                    reason: DropReason::Partitioned,
                });
            }
        }
        out
    }

    /// Counts a message that reached a peer that was down.
    pub fn note_receiver_down(&mut self) {
        self.delivered -= 1;
        self.dropped += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn msg(from: u64, to: u64) -> Message {
        Message::new(MessageKind::Heartbeat, from, to, 1)
    }

    #[test]
    fn partitions_cut_and_heal() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut net = Network::new(NetworkFaults::RELIABLE);
        net.partition(BTreeMap::from([(1, 1)]));
        assert!(net.send(&mut rng, 0, msg(1, 2)).is_none());
        assert!(net.send(&mut rng, 0, msg(2, 3)).is_none());
        let mut dropped = Vec::new();
        let got = net.take_due(0, &mut dropped);
        assert_eq!(got.len(), 1);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].reason, DropReason::Partitioned);
        net.heal();
        net.send(&mut rng, 0, msg(1, 2));
        assert_eq!(net.take_due(0, &mut dropped).len(), 1);
    }

    #[test]
    fn delays_hold_messages_and_same_seed_same_order() {
        let faults = NetworkFaults {
            loss: 0.2,
            duplicate: 0.2,
            delay_ticks_max: 3,
            long_delay: 0.0,
            long_delay_ticks_max: 0,
        };
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut net = Network::new(faults);
            for i in 0..100 {
                net.send(&mut rng, 0, msg(1, 2 + i % 3));
            }
            let mut dropped = Vec::new();
            let first: Vec<u64> = net.take_due(0, &mut dropped).iter().map(|m| m.to).collect();
            let mut all = first.clone();
            for t in 1..=3 {
                all.extend(net.take_due(t, &mut dropped).iter().map(|m| m.to));
            }
            assert_eq!(net.in_flight(), 0);
            (first.len(), all)
        };
        let (now, all) = run(7);
        assert!(now < all.len(), "some messages must be delayed");
        assert_eq!(run(7).1, all);
    }
}
