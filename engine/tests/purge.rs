//! Purge and compaction across regions: segments go once every region compacted past
//! them; a lagging region holds them and is named in the report; recovery after a purge
//! restores every region from the oldest remaining segment's checkpoint.

mod common;

use common::{entries, open, open_kv, permit, Kind, KINDS};
use flotilla_common::HardState;
use flotilla_engine::{LogBatch, RegionBatch, WalConfig};

fn segment_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("raft")).map_or(0, |d| d.count())
}

#[test]
fn a_lagging_region_holds_segments_until_it_compacts() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let kv = open_kv(dir.path());
        let cfg = WalConfig {
            segment_bytes_max: 4096,
            ..WalConfig::default()
        };
        // Region 3 writes its hard state once, at the start: after its segment is purged,
        // only the checkpoints carry it.
        let hs3 = HardState {
            term: 1,
            vote: 3,
            commit: 5,
        };
        {
            let log = open(kind, dir.path(), &cfg);
            log.write(RegionBatch::new(3).with_hard_state(hs3).into())
                .unwrap();
            for k in 0..100 {
                let mut batch = LogBatch::new();
                for region in 1..=3 {
                    batch.push(RegionBatch::new(region).with_entries(entries(
                        region,
                        k * 3 + 1,
                        3,
                        1,
                    )));
                }
                log.write(batch).unwrap();
            }
            // Regions 1 and 2 compact almost everything; region 3 lags at its start.
            for region in 1..=2 {
                log.write(
                    RegionBatch::new(region)
                        .with_compaction(290, permit(&kv, region, 290))
                        .into(),
                )
                .unwrap();
            }
            let before = segment_count(dir.path());
            let report = log.purge().unwrap();
            if kind == Kind::Wal {
                assert!(before > 5, "expected many segments, found {before}");
                assert!(
                    report.files_deleted.is_empty(),
                    "region 3 holds the first segment"
                );
                assert_eq!(report.held_by.len(), 1, "{:?}", report.held_by);
                assert_eq!(report.held_by[0].region_id, 3);
                assert_eq!(report.held_by[0].first_index, 1);
                assert_eq!(segment_count(dir.path()), before);
            } else {
                assert!(report.held_by.is_empty());
            }
            // Region 3 catches up: now everything but the recent segments can go.
            log.write(
                RegionBatch::new(3)
                    .with_compaction(280, permit(&kv, 3, 280))
                    .into(),
            )
            .unwrap();
            let report = log.purge().unwrap();
            if kind == Kind::Wal {
                assert!(
                    report.files_deleted.len() >= before - 3,
                    "deleted {:?} of {before}",
                    report.files_deleted
                );
                assert!(report.bytes_freed > 0);
                assert_eq!(
                    segment_count(dir.path()),
                    before - report.files_deleted.len()
                );
                for held in &report.held_by {
                    assert!(held.index_in_file >= held.first_index, "{held:?}");
                }
            }
        }
        // Recovery starts at the oldest remaining segment and rebuilds all three regions.
        let log = open(kind, dir.path(), &cfg);
        assert_eq!(log.regions(), vec![1, 2, 3], "{kind:?}");
        assert_eq!(log.hard_state(3), hs3, "{kind:?}");
        for (region, first) in [(1, 290), (2, 290), (3, 280)] {
            assert_eq!(
                (log.first_index(region), log.last_index(region)),
                (first, 300),
                "{kind:?} region {region}"
            );
            assert_eq!(log.term(region, first - 1).unwrap(), 1);
            assert_eq!(
                log.entries(region, first, 301, u64::MAX).unwrap(),
                entries(region, first, 301 - first, 1)
            );
        }
        log.write(
            RegionBatch::new(3)
                .with_entries(entries(3, 301, 1, 2))
                .into(),
        )
        .unwrap();
    }
}
