//! Fault injection through the WAL's file-system trait: a failed fdatasync fails the
//! writes of its group and poisons the log; reopening recovers what was durable. A full
//! disk (`ENOSPC` in mid-record, at fdatasync, at a segment's creation) is reported as
//! `EngineError::NoSpace`, never leaves a good record behind a torn one, and reopening
//! once space is back recovers every acknowledged entry and nothing else.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::entries;
use flotilla_engine::{
    DiskFaults, EngineError, FaultyFileSystem, RaftLog, RegionBatch, Wal, WalConfig,
};

#[test]
fn a_failed_fdatasync_fails_the_write_and_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let faults = DiskFaults::new();
    let fs = Arc::new(FaultyFileSystem::new(faults.clone()));
    let log = Wal::open_with_fs(dir.path(), &WalConfig::default(), fs).unwrap();
    log.write(RegionBatch::new(1).with_entries(entries(1, 1, 3, 1)).into())
        .unwrap();
    faults.fail_syncs_with_eio(true);
    let err = log
        .write(RegionBatch::new(1).with_entries(entries(1, 4, 1, 1)).into())
        .unwrap_err();
    assert!(matches!(err, EngineError::Io { .. }), "{err}");
    assert_eq!(
        log.last_index(1),
        3,
        "a write that was not synced is not in the index"
    );
    faults.fail_syncs_with_eio(false);
    let err = log
        .write(RegionBatch::new(1).with_entries(entries(1, 4, 1, 1)).into())
        .unwrap_err();
    assert!(matches!(err, EngineError::Poisoned(_)), "{err}");
    drop(log);
    let log = Wal::open(dir.path(), &WalConfig::default()).unwrap();
    assert!(log.last_index(1) >= 3);
    assert_eq!(log.entries(1, 1, 4, u64::MAX).unwrap(), entries(1, 1, 3, 1));
    log.write(RegionBatch::new(1).with_entries(entries(1, 4, 1, 2)).into())
        .unwrap();
    assert_eq!(log.term(1, 4).unwrap(), 2);
}

/// Region 1's entries `1..=n` written one batch each (term 1), every one acknowledged.
fn write_acknowledged(log: &Wal, n: u64) {
    for i in 1..=n {
        log.write(RegionBatch::new(1).with_entries(entries(1, i, 1, 1)).into())
            .unwrap();
    }
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

/// Reopens with the plain file system and checks region 1 holds exactly `1..=acked`, then
/// that the log takes writes again (and that those survive one more reopen).
fn reopen_and_check(dir: &Path, acked: u64) {
    let log = Wal::open(dir, &WalConfig::default()).unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_eq!(log.last_index(1), acked, "exactly the acknowledged entries");
    assert_eq!(
        log.entries(1, 1, acked + 1, u64::MAX).unwrap(),
        entries(1, 1, acked, 1)
    );
    log.write(
        RegionBatch::new(1)
            .with_entries(entries(1, acked + 1, 2, 2))
            .into(),
    )
    .unwrap();
    drop(log);
    let log = Wal::open(dir, &WalConfig::default()).unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_eq!(log.last_index(1), acked + 2);
    assert_eq!(
        log.entries(1, acked + 1, acked + 3, u64::MAX).unwrap(),
        entries(1, acked + 1, 2, 2)
    );
}

fn assert_no_space(err: &EngineError) {
    assert!(err.is_no_space(), "not reported as a full disk: {err}");
    assert!(matches!(err, EngineError::NoSpace { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no space left on device"),
        "the message says so: {err}"
    );
}

/// A disk that fills up in the middle of a record: the write fails with `NoSpace`, the
/// log is poisoned — a later write, even once space is back, never lands behind the torn
/// record — and the segment is cut back to its last good record at once.
#[test]
fn enospc_in_mid_write_is_reported_and_leaves_no_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let faults = DiskFaults::new();
    let fs = Arc::new(FaultyFileSystem::new(faults.clone()));
    let log = Wal::open_with_fs(dir.path(), &WalConfig::default(), fs).unwrap();
    write_acknowledged(&log, 5);
    let files = segment_files(dir.path());
    let len_before = std::fs::metadata(files.last().unwrap()).unwrap().len();
    faults.fail_writes_after(13);
    let err = log
        .write(RegionBatch::new(1).with_entries(entries(1, 6, 3, 1)).into())
        .unwrap_err();
    assert_no_space(&err);
    assert_eq!(log.last_index(1), 5, "a failed write is not in the index");
    assert_eq!(
        std::fs::metadata(files.last().unwrap()).unwrap().len(),
        len_before,
        "the torn record was cut off"
    );
    // Space is back, but this log stays poisoned: appending now would put a good record
    // behind whatever the failed write left.
    faults.clear();
    let err = log
        .write(RegionBatch::new(1).with_entries(entries(1, 6, 1, 1)).into())
        .unwrap_err();
    assert!(matches!(err, EngineError::Poisoned(_)), "{err}");
    drop(log);
    reopen_and_check(dir.path(), 5);
}

/// The same, when the cut after the failure fails too: the torn record stays in the
/// file, and recovery cuts it off as a torn tail (no corruption, nothing invented).
#[test]
fn enospc_in_mid_write_without_the_cut_is_a_torn_tail_for_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let faults = DiskFaults::new();
    let fs = Arc::new(FaultyFileSystem::new(faults.clone()));
    let log = Wal::open_with_fs(dir.path(), &WalConfig::default(), fs).unwrap();
    write_acknowledged(&log, 4);
    let files = segment_files(dir.path());
    let len_before = std::fs::metadata(files.last().unwrap()).unwrap().len();
    faults.fail_truncates(true);
    faults.fail_writes_after(40);
    let err = log
        .write(RegionBatch::new(1).with_entries(entries(1, 5, 2, 1)).into())
        .unwrap_err();
    assert_no_space(&err);
    assert_eq!(
        std::fs::metadata(files.last().unwrap()).unwrap().len(),
        len_before + 40,
        "the torn record is still there"
    );
    drop(log);
    faults.clear();
    reopen_and_check(dir.path(), 4);
}

/// `ENOSPC` from fdatasync (delayed allocation): the write fails with `NoSpace`, and the
/// record whose sync failed — complete in the page cache, acknowledged to no one — is cut
/// off, so a reopen never takes it for durable.
#[test]
fn enospc_at_fdatasync_is_reported_and_the_unsynced_record_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let faults = DiskFaults::new();
    let fs = Arc::new(FaultyFileSystem::new(faults.clone()));
    let log = Wal::open_with_fs(dir.path(), &WalConfig::default(), fs).unwrap();
    write_acknowledged(&log, 3);
    faults.fail_syncs(true);
    let err = log
        .write(RegionBatch::new(1).with_entries(entries(1, 4, 2, 1)).into())
        .unwrap_err();
    assert_no_space(&err);
    faults.clear();
    let err = log
        .write(RegionBatch::new(1).with_entries(entries(1, 4, 1, 1)).into())
        .unwrap_err();
    assert!(matches!(err, EngineError::Poisoned(_)), "{err}");
    drop(log);
    reopen_and_check(dir.path(), 3);
}

/// A full disk when a new segment is started (rotation, or the fresh segment every open
/// begins with): the write that filled the old one was acknowledged and stays; opening
/// while the disk is still full fails with `NoSpace` and leaves nothing a later open
/// trips over; once space is back the open succeeds with every acknowledged entry.
#[test]
fn enospc_when_starting_a_segment_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let faults = DiskFaults::new();
    let config = WalConfig {
        segment_bytes_max: 4096,
        ..WalConfig::default()
    };
    let fs = Arc::new(FaultyFileSystem::new(faults.clone()));
    let log = Wal::open_with_fs(dir.path(), &config, fs.clone()).unwrap();
    write_acknowledged(&log, 10);
    faults.fail_creates(true);
    // Writes go on until the segment is full and the next one cannot be created.
    let mut acked = 10;
    let err = loop {
        match log.write(
            RegionBatch::new(1)
                .with_entries(entries(1, acked + 1, 1, 1))
                .into(),
        ) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 10_000, "the segment never filled");
    };
    assert!(matches!(err, EngineError::Poisoned(_)), "{err}");
    drop(log);
    // Still full: every open fails, and says why.
    for _ in 0..3 {
        let err = Wal::open_with_fs(dir.path(), &config, fs.clone())
            .err()
            .expect("no room for the new segment");
        assert_no_space(&err);
    }
    faults.clear();
    reopen_and_check(dir.path(), acked);
}
