//! Property test of the log's index against a simple model: random appends (which truncate
//! the uncommitted suffix), hard states, compactions, snapshot marks, purges and reopenings
//! of several regions, on both implementations.

mod common;

use std::collections::BTreeMap;

use common::{open, open_kv, permit, Kind};
use flotilla_common::{Entry, EntryKind, HardState};
use flotilla_engine::{EngineError, RaftLog, RegionBatch, SnapshotMark, WalConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append `count` entries of a new term, starting `back` entries before the end.
    Append {
        region: u64,
        back: u64,
        count: u64,
    },
    HardState {
        region: u64,
        commit: u64,
    },
    /// Compact to a point chosen by `frac` (in 0..=100) between first and last + 1.
    Compact {
        region: u64,
        frac: u64,
    },
    Snapshot {
        region: u64,
        ahead: u64,
    },
    Purge,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let region = 1..=4u64;
    prop_oneof![
        6 => (region.clone(), 0..4u64, 1..6u64).prop_map(|(region, back, count)| Op::Append { region, back, count }),
        1 => (region.clone(), 0..50u64).prop_map(|(region, commit)| Op::HardState { region, commit }),
        2 => (region.clone(), 0..=100u64).prop_map(|(region, frac)| Op::Compact { region, frac }),
        1 => (region, 0..5u64).prop_map(|(region, ahead)| Op::Snapshot { region, ahead }),
        1 => Just(Op::Purge),
        1 => Just(Op::Reopen),
    ]
}

/// The model of one region: the boundary and the entries after it.
#[derive(Debug, Clone, Default)]
struct Model {
    mark: SnapshotMark,
    entries: Vec<Entry>,
    hard_state: HardState,
}

impl Model {
    fn first(&self) -> u64 {
        self.mark.index + 1
    }
    fn last(&self) -> u64 {
        self.mark.index + self.entries.len() as u64
    }
}

fn check(log: &dyn RaftLog, models: &BTreeMap<u64, Model>) {
    for (&region, m) in models {
        assert_eq!(log.first_index(region), m.first(), "region {region}");
        assert_eq!(log.last_index(region), m.last(), "region {region}");
        assert_eq!(log.hard_state(region), m.hard_state);
        assert_eq!(log.snapshot_mark(region), m.mark);
        assert_eq!(log.term(region, m.mark.index).unwrap(), m.mark.term);
        if m.mark.index > 0 {
            assert!(matches!(
                log.term(region, m.mark.index - 1),
                Err(EngineError::Compacted { .. })
            ));
            assert!(matches!(
                log.entries(region, m.mark.index, m.last() + 1, u64::MAX),
                Err(EngineError::Compacted { .. })
            ));
        }
        assert!(matches!(
            log.term(region, m.last() + 1),
            Err(EngineError::Unavailable { .. })
        ));
        assert_eq!(
            log.entries(region, m.first(), m.last() + 1, u64::MAX)
                .unwrap(),
            m.entries,
            "region {region}"
        );
        for e in &m.entries {
            assert_eq!(log.term(region, e.index).unwrap(), e.term);
        }
    }
}

fn run(kind: Kind, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let kv = open_kv(dir.path());
    // Tiny segments and cache: rotation, checkpoints, purge and disk reads all happen.
    let cfg = WalConfig {
        segment_bytes_max: 4096,
        entry_cache_bytes_per_region_max: 300,
        ..WalConfig::default()
    };
    let mut log = open(kind, dir.path(), &cfg);
    let mut models: BTreeMap<u64, Model> = BTreeMap::new();
    let mut term = 1;
    for op in ops {
        match op {
            Op::Append {
                region,
                back,
                count,
            } => {
                let m = models.entry(region).or_default();
                let start = (m.last() + 1).saturating_sub(back).max(m.first());
                term += 1;
                let new: Vec<Entry> = (start..start + count)
                    .map(|i| {
                        Entry::new(
                            EntryKind::Normal,
                            term,
                            i,
                            format!("{region}:{i}:{term}").into_bytes(),
                        )
                    })
                    .collect();
                log.write(RegionBatch::new(region).with_entries(new.clone()).into())
                    .unwrap();
                m.entries.truncate((start - m.first()) as usize);
                m.entries.extend(new);
            }
            Op::HardState { region, commit } => {
                let hs = HardState {
                    term,
                    vote: region,
                    commit,
                };
                log.write(RegionBatch::new(region).with_hard_state(hs).into())
                    .unwrap();
                models.entry(region).or_default().hard_state = hs;
            }
            Op::Compact { region, frac } => {
                let Some(m) = models.get_mut(&region) else {
                    continue;
                };
                let to = m.first() + (m.last() + 1 - m.first()) * frac / 100;
                if to == 0 || to > m.last() {
                    continue;
                }
                let p = permit(&kv, region, to);
                log.write(RegionBatch::new(region).with_compaction(to, p).into())
                    .unwrap();
                if to > m.first() {
                    let drop = (to - m.first()) as usize;
                    m.mark = SnapshotMark {
                        index: to - 1,
                        term: m.entries[drop - 1].term,
                    };
                    m.entries.drain(..drop);
                }
            }
            Op::Snapshot { region, ahead } => {
                let m = models.entry(region).or_default();
                term += 1;
                let mark = SnapshotMark {
                    index: m.last() + ahead,
                    term,
                };
                let p = permit(&kv, region, mark.index);
                log.write(RegionBatch::new(region).with_snapshot(mark, p).into())
                    .unwrap();
                m.mark = mark;
                m.entries.clear();
            }
            Op::Purge => {
                log.purge().unwrap();
            }
            Op::Reopen => {
                drop(log);
                log = open(kind, dir.path(), &cfg);
                let present: Vec<u64> = models.keys().copied().collect();
                assert_eq!(log.regions(), present);
            }
        }
        check(log.as_ref(), &models);
    }
    drop(log);
    let log = open(kind, dir.path(), &cfg);
    check(log.as_ref(), &models);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn wal_index_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(Kind::Wal, ops);
    }

    #[test]
    fn rocks_log_index_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(Kind::Rocks, ops);
    }
}
