//! Workloads: what each operation of a stream is (a write, a read, a scan) and on which key.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::keys::{key_bytes, KeyChoice, Zipf, ZIPF_THETA};

/// Pairs one `scan` operation asks for.
pub const SCAN_PAIRS: u32 = 10;

/// A workload of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// SETs of uniformly chosen keys.
    Write,
    /// Linearizable GETs of uniformly chosen, loaded keys.
    Read,
    /// GETs and SETs of uniformly chosen, loaded keys; `read_percent` of them are GETs.
    Mixed {
        /// Share of reads, in percent.
        read_percent: u8,
    },
    /// Range reads of [`SCAN_PAIRS`] pairs from a uniformly chosen loaded key.
    Scan,
    /// SETs of keys chosen with a Zipfian skew ([`ZIPF_THETA`]): a few keys (and so a few
    /// regions) take most of the writes.
    Hot,
}

impl Workload {
    /// Whether the keys must hold values before it runs.
    pub fn needs_load(self) -> bool {
        matches!(
            self,
            Workload::Read | Workload::Mixed { .. } | Workload::Scan
        )
    }

    /// Whether it writes at all (and so measures durable replication).
    pub fn writes(self) -> bool {
        !matches!(self, Workload::Read | Workload::Scan)
    }

    /// Parses a `--workload` list; `mixed` stands for both mixes of the issue (90/10 and
    /// 50/50), `mixed-N` for N % reads.
    pub fn parse_list(s: &str) -> Result<Vec<Workload>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "mixed" {
                out.push(Workload::Mixed { read_percent: 90 });
                out.push(Workload::Mixed { read_percent: 50 });
            } else {
                out.push(part.parse()?);
            }
        }
        if out.is_empty() {
            return Err("no workload named".into());
        }
        Ok(out)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Write => f.write_str("write"),
            Workload::Read => f.write_str("read"),
            Workload::Mixed { read_percent } => write!(f, "mixed-{read_percent}"),
            Workload::Scan => f.write_str("scan"),
            Workload::Hot => f.write_str("hot"),
        }
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "write" => Ok(Workload::Write),
            "read" => Ok(Workload::Read),
            "scan" => Ok(Workload::Scan),
            "hot" => Ok(Workload::Hot),
            _ => {
                let pct = s
                    .strip_prefix("mixed-")
                    .and_then(|p| p.parse::<u8>().ok())
                    .filter(|p| *p <= 100);
                match pct {
                    Some(read_percent) => Ok(Workload::Mixed { read_percent }),
                    None => Err(format!(
                        "unknown workload {s:?}: write, read, mixed (90/10 and 50/50), mixed-N \
                         (N % reads), scan or hot"
                    )),
                }
            }
        }
    }
}

/// One operation, ready for a driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write `value` under `key`.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Read `key`, linearizably.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Read at most `limit` pairs from `start` on, in key order.
    Scan {
        /// First key.
        start: Bytes,
        /// Most pairs.
        limit: u32,
    },
}

/// The operations of one stream (a connection, or one slot of one): deterministic given the
/// seed and the stream number.
#[derive(Debug, Clone)]
pub struct OpGen {
    workload: Workload,
    keys: KeyChoice,
    value: Bytes,
    rng: ChaCha8Rng,
}

impl OpGen {
    /// The operations of `workload` over `keys` keys, writing `value`, for stream `stream`.
    pub fn new(workload: Workload, keys: u64, value: Bytes, seed: u64, stream: u64) -> OpGen {
        let choice = match workload {
            Workload::Hot => KeyChoice::Zipfian(Zipf::new(keys, ZIPF_THETA)),
            _ => KeyChoice::Uniform { n: keys },
        };
        OpGen::with_choice(workload, choice, value, seed, stream)
    }

    /// Writes of stream `stream`'s share of `0..keys`, each key once (the load phase).
    pub fn load(keys: u64, value: Bytes, stream: u64, streams: u64) -> OpGen {
        let choice = KeyChoice::sequence_share(keys, stream, streams);
        OpGen::with_choice(Workload::Write, choice, value, 0, stream)
    }

    fn with_choice(
        workload: Workload,
        keys: KeyChoice,
        value: Bytes,
        seed: u64,
        stream: u64,
    ) -> OpGen {
        let rng = ChaCha8Rng::seed_from_u64(seed ^ crate::keys::mix64(stream));
        OpGen {
            workload,
            keys,
            value,
            rng,
        }
    }

    /// The next operation, or `None` when a load stream is done.
    pub fn next_op(&mut self) -> Option<Op> {
        let key = key_bytes(self.keys.next(&mut self.rng)?);
        Some(match self.workload {
            Workload::Write | Workload::Hot => Op::Set {
                key,
                value: self.value.clone(),
            },
            Workload::Read => Op::Get { key },
            Workload::Mixed { read_percent } => {
                if self.rng.gen_range(0..100u8) < read_percent {
                    Op::Get { key }
                } else {
                    Op::Set {
                        key,
                        value: self.value.clone(),
                    }
                }
            }
            Workload::Scan => Op::Scan {
                start: key,
                limit: SCAN_PAIRS,
            },
        })
    }
}

/// A value of `size` bytes of printable noise from `seed` (one per cell, shared by every
/// write: building values must not cost the driver time).
pub fn value_of(size: usize, seed: u64) -> Bytes {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Bytes::from(
        (0..size)
            .map(|_| rng.gen_range(b'a'..=b'z'))
            .collect::<Vec<u8>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_lists_parse_and_print_back() {
        let w = Workload::parse_list("write,mixed,scan,hot,read,mixed-70").unwrap();
        let names: Vec<String> = w.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            ["write", "mixed-90", "mixed-50", "scan", "hot", "read", "mixed-70"]
        );
        for n in &names {
            assert_eq!(n.parse::<Workload>().unwrap().to_string(), *n);
        }
        assert!(Workload::parse_list("writes")
            .unwrap_err()
            .contains("unknown"));
        assert!(Workload::parse_list("mixed-101").is_err());
        assert!(Workload::parse_list("").is_err());
    }

    #[test]
    fn mixed_reads_about_the_asked_share() {
        let mut g = OpGen::new(
            Workload::Mixed { read_percent: 90 },
            1000,
            value_of(4, 1),
            9,
            0,
        );
        let reads = (0..10_000)
            .filter(|_| matches!(g.next_op(), Some(Op::Get { .. })))
            .count();
        assert!((8_700..9_300).contains(&reads), "{reads} reads of 10 000");
    }

    #[test]
    fn streams_differ_and_repeat_with_the_seed() {
        let take = |seed, stream| {
            let mut g = OpGen::new(Workload::Write, 1 << 20, value_of(16, 0), seed, stream);
            (0..8).map(|_| g.next_op().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(take(1, 0), take(1, 0));
        assert_ne!(take(1, 0), take(1, 1));
        assert_ne!(take(1, 0), take(2, 0));
    }

    #[test]
    fn load_streams_end() {
        let mut g = OpGen::load(10, value_of(1, 0), 1, 2);
        let ops: Vec<Op> = std::iter::from_fn(|| g.next_op()).collect();
        assert_eq!(ops.len(), 5);
        assert!(matches!(&ops[0], Op::Set { key, .. } if key == &key_bytes(5)));
    }

    #[test]
    fn values_have_the_asked_size() {
        assert_eq!(value_of(4096, 3).len(), 4096);
        assert!(value_of(0, 3).is_empty());
    }
}
