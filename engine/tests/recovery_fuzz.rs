//! WAL recovery on arbitrary bytes (proptest, bounded for CI): a log is written, then its
//! segments are damaged at random — bytes replaced, flipped, cut short, garbage appended,
//! or a segment replaced by random bytes — and reopened. Opening must never panic: it
//! fails with an error, or it opens with, per region, a prefix of what was written (never
//! an entry that was not written, never a gap). Run longer with
//! `PROPTEST_CASES=20000 cargo test --release -p flotilla-engine --test recovery_fuzz`.

mod common;

use std::path::{Path, PathBuf};

use common::entries;
use flotilla_engine::{LogBatch, RaftLog, RegionBatch, Wal, WalConfig};
use proptest::prelude::*;

/// Batches written per case: region 1 gets 2 entries per batch, region 2 one.
const BATCHES: u64 = 12;

/// One way to damage a segment.
#[derive(Debug, Clone)]
enum Damage {
    /// Replace the byte at (offset modulo length).
    Replace(usize, u8),
    /// Flip a bit there.
    Flip(usize, u8),
    /// Cut the file at (offset modulo length).
    Truncate(usize),
    /// Append bytes.
    Append(Vec<u8>),
    /// Replace the whole file.
    Garbage(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(o, b)| Damage::Replace(o, b)),
        4 => (any::<usize>(), 0u8..8).prop_map(|(o, b)| Damage::Flip(o, b)),
        2 => any::<usize>().prop_map(Damage::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Append),
        1 => proptest::collection::vec(any::<u8>(), 0..256).prop_map(Damage::Garbage),
    ]
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    s.sort();
    s
}

/// Writes the log; `reopen_at` splits it over two segments (a reopen starts a new one).
fn write_log(dir: &Path, reopen_at: u64) {
    let mut log = Wal::open(dir, &WalConfig::default()).unwrap();
    for k in 0..BATCHES {
        if k == reopen_at {
            drop(log);
            log = Wal::open(dir, &WalConfig::default()).unwrap();
        }
        let mut batch = LogBatch::new();
        batch.push(RegionBatch::new(1).with_entries(entries(1, k * 2 + 1, 2, 1)));
        batch.push(RegionBatch::new(2).with_entries(entries(2, k + 1, 1, 1)));
        log.write(batch).unwrap();
    }
}

fn apply(path: &Path, d: &Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    match d {
        Damage::Replace(o, b) if !bytes.is_empty() => {
            let i = o % bytes.len();
            bytes[i] = *b;
        }
        Damage::Flip(o, bit) if !bytes.is_empty() => {
            let i = o % bytes.len();
            bytes[i] ^= 1 << bit;
        }
        Damage::Truncate(o) => bytes.truncate(o % (bytes.len() + 1)),
        Damage::Append(more) => bytes.extend_from_slice(more),
        Damage::Garbage(g) => bytes = g.clone(),
        _ => {}
    }
    std::fs::write(path, bytes).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(300),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn damaged_logs_open_to_a_prefix_or_fail_cleanly(
        reopen_at in 0..BATCHES,
        damages in proptest::collection::vec((any::<usize>(), damage()), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), reopen_at);
        let segs = segments(dir.path());
        for (which, d) in &damages {
            apply(&segs[which % segs.len()], d);
        }
        let Ok(log) = Wal::open(dir.path(), &WalConfig::default()) else {
            return Ok(()); // refused with an error: fine
        };
        for (region, per_batch) in [(1u64, 2u64), (2, 1)] {
            let last = log.last_index(region);
            prop_assert!(last <= BATCHES * per_batch, "region {} has {} entries", region, last);
            if last == 0 {
                continue;
            }
            let first = log.first_index(region);
            prop_assert_eq!(first, 1, "region {} starts at {}", region, first);
            let got = log.entries(region, 1, last + 1, u64::MAX);
            prop_assert!(got.is_ok(), "region {}: {:?}", region, got.err());
            prop_assert_eq!(got.unwrap(), entries(region, 1, last, 1));
        }
    }
}
