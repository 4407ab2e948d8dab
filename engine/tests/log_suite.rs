//! The conformance suite of the raft log: every test runs against both implementations.

mod common;

use common::{entries, open, open_kv, permit, Kind, KINDS};
use flotilla_common::HardState;
use flotilla_engine::{EngineError, LogBatch, RaftLog, RegionBatch, SnapshotMark, WalConfig};

fn write(log: &dyn RaftLog, batch: impl Into<LogBatch>) {
    log.write(batch.into()).expect("write");
}

#[test]
fn an_unknown_region_reads_as_an_empty_log() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(kind, dir.path(), &WalConfig::default());
        assert_eq!((log.first_index(7), log.last_index(7)), (1, 0), "{kind:?}");
        assert_eq!(log.term(7, 0).unwrap(), 0);
        assert!(log.entries(7, 1, 1, u64::MAX).unwrap().is_empty());
        assert!(matches!(
            log.entries(7, 1, 2, u64::MAX),
            Err(EngineError::Unavailable { .. })
        ));
        assert!(matches!(
            log.term(7, 1),
            Err(EngineError::Unavailable { .. })
        ));
        assert_eq!(log.hard_state(7), HardState::default());
        assert!(log.regions().is_empty());
    }
}

#[test]
fn append_truncate_hard_state_survive_reopen() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 4,
        };
        {
            let log = open(kind, dir.path(), &WalConfig::default());
            let mut batch = LogBatch::new();
            batch.push(RegionBatch::new(1).with_entries(entries(1, 1, 10, 1)));
            batch.push(RegionBatch::new(2).with_entries(entries(2, 1, 3, 1)));
            let report = log.write(batch).unwrap();
            assert_eq!(report.durable[0].last_index, 10);
            assert_eq!(report.durable[1].last_index, 3);
            // A new leader overwrites the uncommitted suffix 6..=10 with 6..=7 of term 3.
            let report = log
                .write(
                    RegionBatch::new(1)
                        .with_entries(entries(1, 6, 2, 3))
                        .with_hard_state(hs)
                        .into(),
                )
                .unwrap();
            assert_eq!(
                (report.durable[0].last_index, report.durable[0].last_term),
                (7, 3)
            );
        }
        let log = open(kind, dir.path(), &WalConfig::default());
        assert_eq!(log.regions(), vec![1, 2], "{kind:?}");
        assert_eq!(log.last_index(1), 7);
        assert_eq!(log.hard_state(1), hs);
        let mut expect = entries(1, 1, 5, 1);
        expect.extend(entries(1, 6, 2, 3));
        assert_eq!(log.entries(1, 1, 8, u64::MAX).unwrap(), expect);
        assert_eq!(log.term(1, 5).unwrap(), 1);
        assert_eq!(log.term(1, 6).unwrap(), 3);
        // A byte limit still returns at least one entry.
        assert_eq!(log.entries(1, 2, 8, 1).unwrap(), expect[1..2].to_vec());
        let limit = expect[2].size_bytes() + expect[3].size_bytes();
        assert_eq!(log.entries(1, 3, 8, limit).unwrap(), expect[2..4].to_vec());
        // The log still accepts writes after reopening.
        write(
            log.as_ref(),
            RegionBatch::new(2).with_entries(entries(2, 4, 1, 1)),
        );
        assert_eq!(log.entries(2, 1, 5, u64::MAX).unwrap(), entries(2, 1, 4, 1));
    }
}

#[test]
fn compaction_needs_a_permit_and_keeps_the_boundary_term() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let kv = open_kv(dir.path());
        {
            let log = open(kind, dir.path(), &WalConfig::default());
            let mut es = entries(1, 1, 5, 1);
            es.extend(entries(1, 6, 5, 2));
            write(log.as_ref(), RegionBatch::new(1).with_entries(es));
            // Without the state machine holding index 7, no permit.
            assert!(matches!(
                kv.compaction_permit(1, 7),
                Err(EngineError::CompactionAheadOfApplied { .. })
            ));
            let p = permit(&kv, 1, 5);
            let err = log
                .submit(RegionBatch::new(1).with_compaction(7, p).into())
                .unwrap_err();
            assert!(
                matches!(err, EngineError::CompactionAheadOfApplied { .. }),
                "{kind:?}: {err}"
            );
            let err = log
                .submit(RegionBatch::new(2).with_compaction(3, p).into())
                .unwrap_err();
            assert!(
                matches!(err, EngineError::InvalidBatch { .. }),
                "{kind:?}: {err}"
            );
            write(
                log.as_ref(),
                RegionBatch::new(1).with_compaction(7, permit(&kv, 1, 7)),
            );
        }
        let log = open(kind, dir.path(), &WalConfig::default());
        assert_eq!(log.first_index(1), 7, "{kind:?}");
        assert_eq!(log.snapshot_mark(1), SnapshotMark { index: 6, term: 2 });
        assert_eq!(log.term(1, 6).unwrap(), 2);
        assert!(matches!(log.term(1, 5), Err(EngineError::Compacted { .. })));
        assert!(matches!(
            log.entries(1, 6, 8, u64::MAX),
            Err(EngineError::Compacted { .. })
        ));
        assert_eq!(
            log.entries(1, 7, 11, u64::MAX).unwrap(),
            entries(1, 7, 4, 2)
        );
        // Appending before the first index is refused, on the ticket.
        let err = log
            .write(RegionBatch::new(1).with_entries(entries(1, 5, 1, 3)).into())
            .unwrap_err();
        assert!(
            matches!(err, EngineError::InvalidBatch { .. }),
            "{kind:?}: {err}"
        );
    }
}

#[test]
fn a_snapshot_mark_restarts_the_log() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let kv = open_kv(dir.path());
        {
            let log = open(kind, dir.path(), &WalConfig::default());
            write(
                log.as_ref(),
                RegionBatch::new(4).with_entries(entries(4, 1, 3, 1)),
            );
            let mark = SnapshotMark { index: 20, term: 5 };
            let batch = RegionBatch::new(4)
                .with_snapshot(mark, permit(&kv, 4, 20))
                .with_entries(entries(4, 21, 2, 5));
            write(log.as_ref(), batch);
        }
        let log = open(kind, dir.path(), &WalConfig::default());
        assert_eq!(
            (log.first_index(4), log.last_index(4)),
            (21, 22),
            "{kind:?}"
        );
        assert_eq!(log.term(4, 20).unwrap(), 5);
        assert!(matches!(
            log.entries(4, 3, 22, u64::MAX),
            Err(EngineError::Compacted { .. })
        ));
        assert_eq!(
            log.entries(4, 21, 23, u64::MAX).unwrap(),
            entries(4, 21, 2, 5)
        );
    }
}

#[test]
fn a_bad_submission_fails_alone_in_its_group() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(kind, dir.path(), &WalConfig::default());
        let good = log
            .submit(RegionBatch::new(1).with_entries(entries(1, 1, 2, 1)).into())
            .unwrap();
        let gap = log
            .submit(RegionBatch::new(1).with_entries(entries(1, 9, 1, 1)).into())
            .unwrap();
        let next = log
            .submit(RegionBatch::new(1).with_entries(entries(1, 3, 1, 1)).into())
            .unwrap();
        assert!(good.wait().is_ok());
        assert!(
            matches!(gap.wait(), Err(EngineError::InvalidBatch { .. })),
            "{kind:?}"
        );
        assert_eq!(next.wait().unwrap().durable[0].last_index, 3);
        let mut not_contiguous = entries(1, 4, 2, 1);
        not_contiguous[1].index = 9;
        assert!(log
            .submit(RegionBatch::new(1).with_entries(not_contiguous).into())
            .is_err());
    }
}

/// `submit_with` a waker: each submission's waker runs once its ticket holds the answer, told whether the batch is durable — for a
/// refused batch too — and the accepted submissions are answered in the order they were
/// made (one the log refuses may be answered before those ahead of it), so a submitter
/// can go on working and collect its writes when woken.
#[test]
fn a_woken_submitter_finds_its_answer_waiting_in_submission_order() {
    use std::sync::mpsc::sync_channel;
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(kind, dir.path(), &WalConfig::default());
        let (tx, rx) = sync_channel::<(usize, bool)>(16);
        let batches = [
            RegionBatch::new(1).with_entries(entries(1, 1, 2, 1)),
            RegionBatch::new(1).with_entries(entries(1, 9, 1, 1)), // a gap: refused
            RegionBatch::new(1).with_entries(entries(1, 3, 1, 1)),
        ];
        let tickets: Vec<_> = batches
            .into_iter()
            .enumerate()
            .map(|(n, b)| {
                let tx = tx.clone();
                let wake: flotilla_engine::LogWaker = Box::new(move |durable| {
                    let _ = tx.send((n, durable));
                });
                log.submit_with(b.into(), Some(wake)).unwrap()
            })
            .collect();
        let mut woken = Vec::new();
        for _ in 0..tickets.len() {
            let (n, durable) = rx.recv().unwrap();
            let answer = tickets[n]
                .try_wait()
                .expect("the answer is there when woken");
            assert_eq!(
                answer.is_ok(),
                n != 1,
                "{kind:?}: submission {n}: {answer:?}"
            );
            assert_eq!(durable, answer.is_ok(), "{kind:?}: submission {n}");
            woken.push(n);
        }
        assert!(rx.try_recv().is_err(), "{kind:?}: one wake each");
        woken.retain(|&n| n != 1);
        assert_eq!(woken, vec![0, 2], "{kind:?}: accepted ones in order");
        assert_eq!(log.last_index(1), 3);
    }
}

#[test]
fn old_entries_are_read_back_from_disk() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        // A tiny cache and small segments: most reads go to disk, across segments.
        let cfg = WalConfig {
            entry_cache_bytes_per_region_max: 256,
            segment_bytes_max: 4096,
            ..WalConfig::default()
        };
        let log = open(kind, dir.path(), &cfg);
        for k in 0..50 {
            let mut batch = LogBatch::new();
            for region in 1..=3 {
                batch.push(RegionBatch::new(region).with_entries(entries(region, k * 4 + 1, 4, 1)));
            }
            write(log.as_ref(), batch);
        }
        for region in 1..=3 {
            assert_eq!(
                log.entries(region, 1, 201, u64::MAX).unwrap(),
                entries(region, 1, 200, 1),
                "{kind:?}"
            );
        }
        if kind == Kind::Wal {
            let segments = std::fs::read_dir(dir.path().join("raft")).unwrap().count();
            assert!(segments > 3, "expected several segments, found {segments}");
        }
    }
}
