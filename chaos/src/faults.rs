//! The fault schedule: a seeded list of episodes, each one fault held for a while and then
//! healed, with quiet time between them.
//!
//! One seed determines the whole schedule (which fault, which node, when, for how long), so
//! a failing run is replayed with its seed; what depends on the cluster's state at the time
//! (the node leading the most regions, the regions moved by a leader transfer) is decided
//! when the episode starts and written to the schedule as it happens.
//!
//! Besides its fault, an episode carries background churn: leader transfers
//! ([`Episode::transfers`]), region splits ([`Episode::splits`]) and region merges
//! ([`Episode::merges`]), spread over the episode so that they overlap the fault (a split
//! while a node is killed, a merge across a partition). [`Fault::TransfersOnly`] and
//! [`Fault::SplitsAndMerges`] are episodes of churn alone, without another fault. Which
//! region a split or merge picks is decided from `/status` when it happens
//! ([`crate::run`]). Membership changes (issue 9) do not exist in the server yet; when they
//! do, they join the churn the same way.

use std::fmt;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The servers' longest election timeout: 20 ticks of 50 ms. Pauses and outages are longer
/// than this, so that the cluster must elect new leaders.
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(20 * 50);

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL one node; restart it when the episode ends.
    Kill {
        /// The node.
        node: u64,
    },
    /// SIGKILL the node leading the most regions (chosen from `/status` when the episode
    /// starts); restart it when the episode ends.
    KillLeaderHeaviest,
    /// SIGKILL two nodes at once: with three nodes the quorum is lost until they restart.
    KillTwo {
        /// The first node.
        a: u64,
        /// The second node.
        b: u64,
    },
    /// SIGSTOP one node for the episode (longer than the election timeout), then SIGCONT.
    Pause {
        /// The node.
        node: u64,
    },
    /// Cut every link to and from one node.
    Isolate {
        /// The node.
        node: u64,
    },
    /// Cut the links from `from` to `to` only (one-way partition).
    CutOneWay {
        /// Sender whose messages are dropped.
        from: u64,
        /// Receiver.
        to: u64,
    },
    /// Delay every link by `ms` ± 50 %, drawn per link.
    Delay {
        /// Mean delay in milliseconds.
        ms: u64,
    },
    /// Fill one node's data disk (a small tmpfs) for the episode, then free the space.
    DiskFull {
        /// The node.
        node: u64,
    },
    /// Nothing but the background leader transfers of the episode.
    TransfersOnly,
    /// Nothing but the background region splits and merges of the episode (at least one
    /// of each).
    SplitsAndMerges,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill { node } => write!(f, "kill n{node}"),
            Fault::KillLeaderHeaviest => write!(f, "kill the leader-heaviest node"),
            Fault::KillTwo { a, b } => write!(f, "kill n{a} and n{b} (quorum lost)"),
            Fault::Pause { node } => write!(f, "pause n{node} (SIGSTOP)"),
            Fault::Isolate { node } => write!(f, "isolate n{node}"),
            Fault::CutOneWay { from, to } => write!(f, "cut n{from} -> n{to}"),
            Fault::Delay { ms } => write!(f, "delay every link ~{ms} ms"),
            Fault::DiskFull { node } => write!(f, "fill the disk of n{node}"),
            Fault::TransfersOnly => write!(f, "leader transfers only"),
            Fault::SplitsAndMerges => write!(f, "splits and merges only"),
        }
    }
}

/// One fault held from `at` for `duration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// Start, from the start of the workload.
    pub at: Duration,
    /// How long the fault holds.
    pub duration: Duration,
    /// The fault.
    pub fault: Fault,
    /// Leader transfers to ask for during the episode (background churn).
    pub transfers: u32,
    /// Region splits to ask for during the episode (background churn): a region holding
    /// hot keys, split between them or at the middle of its data.
    pub splits: u32,
    /// Region merges to ask for during the episode (background churn): two adjacent
    /// regions, one merged into the other.
    pub merges: u32,
}

/// What the harness can inject on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Data directories are small tmpfs mounts that can be filled.
    pub disk_faults: bool,
}

/// The episodes of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The seed it came from.
    pub seed: u64,
    /// In order of `at`, never overlapping.
    pub episodes: Vec<Episode>,
}

impl Schedule {
    /// The schedule of `seed` for a workload of `seconds`: episodes of 1.5 to 4 s with 1 to
    /// 2.5 s of quiet between them, drawn from every fault the machine supports. The first
    /// episodes go through the fault kinds in a seeded order, so even a long enough run
    /// injects each kind once before any repeats. About half the episodes also carry leader
    /// transfers, a third splits and a third merges; a schedule with any episode has at
    /// least one split and one merge (the first two episodes get one if the draw gave none).
    pub fn generate(seed: u64, seconds: u64, caps: Capabilities) -> Schedule {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nodes: Vec<u64> = (1..=caps.nodes).collect();
        let mut kinds: Vec<u8> = (0..10).collect();
        if !caps.disk_faults {
            kinds.retain(|&k| k != 7);
        }
        if caps.nodes < 3 {
            kinds.retain(|&k| k != 2);
        }
        kinds.shuffle(&mut rng);
        let mut episodes = Vec::new();
        let end = Duration::from_secs(seconds);
        let mut at = Duration::from_millis(rng.gen_range(1000..2000));
        let mut i = 0usize;
        loop {
            let duration = Duration::from_millis(rng.gen_range(1500..4000));
            if at + duration > end {
                break;
            }
            let kind = if i < kinds.len() {
                kinds[i]
            } else {
                *kinds.choose(&mut rng).expect("some fault kind")
            };
            i += 1;
            let node = *nodes.choose(&mut rng).expect("nodes");
            let other = {
                let rest: Vec<u64> = nodes.iter().copied().filter(|&n| n != node).collect();
                rest.choose(&mut rng).copied().unwrap_or(node)
            };
            let fault = match kind {
                0 => Fault::Kill { node },
                1 => Fault::KillLeaderHeaviest,
                2 => Fault::KillTwo { a: node, b: other },
                3 => Fault::Pause { node },
                4 => Fault::Isolate { node },
                5 => Fault::CutOneWay {
                    from: node,
                    to: other,
                },
                6 => Fault::Delay {
                    ms: rng.gen_range(20..150),
                },
                7 => Fault::DiskFull { node },
                8 => Fault::TransfersOnly,
                _ => Fault::SplitsAndMerges,
            };
            let transfers = match fault {
                Fault::TransfersOnly => rng.gen_range(3..8),
                _ if rng.gen_bool(0.5) => rng.gen_range(1..4),
                _ => 0,
            };
            let (splits, merges) = match fault {
                Fault::SplitsAndMerges => (rng.gen_range(1..4), rng.gen_range(1..4)),
                _ => (
                    u32::from(rng.gen_bool(1.0 / 3.0)),
                    u32::from(rng.gen_bool(1.0 / 3.0)),
                ),
            };
            // A pause must outlast the election timeout to force an election.
            let duration = match fault {
                Fault::Pause { .. } => {
                    duration.max(ELECTION_TIMEOUT_MAX + Duration::from_millis(500))
                }
                _ => duration,
            };
            episodes.push(Episode {
                at,
                duration,
                fault,
                transfers,
                splits,
                merges,
            });
            at += duration + Duration::from_millis(rng.gen_range(1000..2500));
        }
        // Every run splits and merges at least once: the first episode splits, the second
        // (or the first, in a run of one episode) merges.
        if !episodes.is_empty() {
            if episodes.iter().all(|e| e.splits == 0) {
                episodes[0].splits = 1;
            }
            if episodes.iter().all(|e| e.merges == 0) {
                let i = 1.min(episodes.len() - 1);
                episodes[i].merges = 1;
            }
        }
        Schedule { seed, episodes }
    }

    /// Splits the schedule asks for, over every episode.
    pub fn splits(&self) -> u32 {
        self.episodes.iter().map(|e| e.splits).sum()
    }

    /// Merges the schedule asks for, over every episode.
    pub fn merges(&self) -> u32 {
        self.episodes.iter().map(|e| e.merges).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_and_every_fault_kind_early() {
        let caps = Capabilities {
            nodes: 3,
            disk_faults: true,
        };
        let a = Schedule::generate(7, 60, caps);
        assert_eq!(a, Schedule::generate(7, 60, caps));
        assert_ne!(a, Schedule::generate(8, 60, caps));
        let first: Vec<String> = a.episodes[..10]
            .iter()
            .map(|e| std::mem::discriminant(&e.fault))
            .map(|d| format!("{d:?}"))
            .collect();
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), 10, "{:?}", a.episodes);
        for w in a.episodes.windows(2) {
            assert!(w[0].at + w[0].duration < w[1].at, "episodes overlap");
        }
        for e in &a.episodes {
            if let Fault::Pause { .. } = e.fault {
                assert!(e.duration > ELECTION_TIMEOUT_MAX);
            }
            if let Fault::KillTwo { a, b } = e.fault {
                assert_ne!(a, b);
            }
            if let Fault::SplitsAndMerges = e.fault {
                assert!(e.splits >= 1 && e.merges >= 1, "{e:?}");
            }
        }
    }

    #[test]
    fn every_schedule_splits_and_merges() {
        let caps = Capabilities {
            nodes: 3,
            disk_faults: false,
        };
        for seed in 0..200 {
            for seconds in [8, 30, 60] {
                let s = Schedule::generate(seed, seconds, caps);
                assert!(!s.episodes.is_empty(), "seed {seed}, {seconds} s");
                assert!(s.splits() >= 1, "seed {seed}, {seconds} s: {s:?}");
                assert!(s.merges() >= 1, "seed {seed}, {seconds} s: {s:?}");
            }
        }
        // Churn also overlaps real faults, not only its own episodes.
        let s = Schedule::generate(1, 600, caps);
        assert!(s
            .episodes
            .iter()
            .any(|e| e.splits > 0
                && !matches!(e.fault, Fault::SplitsAndMerges | Fault::TransfersOnly)));
        assert!(s
            .episodes
            .iter()
            .any(|e| e.merges > 0
                && !matches!(e.fault, Fault::SplitsAndMerges | Fault::TransfersOnly)));
    }

    #[test]
    fn no_disk_faults_without_the_capability() {
        let caps = Capabilities {
            nodes: 3,
            disk_faults: false,
        };
        let s = Schedule::generate(1, 600, caps);
        assert!(!s
            .episodes
            .iter()
            .any(|e| matches!(e.fault, Fault::DiskFull { .. })));
    }
}
