//! Corruption in the middle of the WAL is an error naming the file and offset; a torn tail
//! of the last segment is cut off and the log opens.

mod common;

use std::path::PathBuf;

use common::entries;
use flotilla_engine::{EngineError, LogBatch, RaftLog, RegionBatch, Wal, WalConfig};

/// Writes 20 batches into one segment; returns the segment's path and the offsets of its
/// records (the first is the checkpoint).
fn write_log(dir: &std::path::Path) -> (PathBuf, Vec<u64>) {
    let log = Wal::open(dir, &WalConfig::default()).unwrap();
    for k in 0..20 {
        let mut batch = LogBatch::new();
        batch.push(RegionBatch::new(1).with_entries(entries(1, k * 2 + 1, 2, 1)));
        batch.push(RegionBatch::new(2).with_entries(entries(2, k + 1, 1, 1)));
        log.write(batch).unwrap();
    }
    drop(log);
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    assert_eq!(segments.len(), 1);
    let bytes = std::fs::read(&segments[0]).unwrap();
    let mut offsets = Vec::new();
    let mut pos = 16usize;
    while pos < bytes.len() {
        offsets.push(pos as u64);
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 9 + len;
    }
    assert_eq!(pos, bytes.len());
    assert_eq!(offsets.len(), 21);
    (segments[0].clone(), offsets)
}

#[test]
fn a_flipped_bit_in_a_middle_record_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = write_log(dir.path());
    // Reopening starts a new segment: the written one is now in the middle of the log.
    drop(Wal::open(dir.path(), &WalConfig::default()).unwrap());
    let target = offsets[10];
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[target as usize + 9 + 5] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    match Wal::open(dir.path(), &WalConfig::default()) {
        Err(EngineError::Corruption {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, segment);
            assert_eq!(offset, target);
            assert!(reason.contains("checksum"), "{reason}");
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("a corrupt log opened"),
    }
}

#[test]
fn a_flipped_bit_in_the_last_segment_before_good_records_is_still_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = write_log(dir.path());
    // The segment is the last one, where a torn tail is allowed: a corrupt length field
    // could pass for one if the good records after it were not looked for.
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[offsets[5] as usize + 3] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    match Wal::open(dir.path(), &WalConfig::default()) {
        Err(EngineError::Corruption { file, offset, .. }) => {
            assert_eq!((file, offset), (segment, offsets[5]));
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("a corrupt log opened"),
    }
}

#[test]
fn a_torn_tail_is_cut_off_and_the_log_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = write_log(dir.path());
    let bytes = std::fs::read(&segment).unwrap();
    // The last record was half written when the process died.
    let cut = offsets[20] as usize + (bytes.len() - offsets[20] as usize) / 2;
    std::fs::write(&segment, &bytes[..cut]).unwrap();
    let log = Wal::open(dir.path(), &WalConfig::default()).unwrap();
    assert_eq!(
        log.last_index(1),
        38,
        "the torn batch is gone, the ones before stay"
    );
    assert_eq!(log.last_index(2), 19);
    assert_eq!(
        log.entries(1, 1, 39, u64::MAX).unwrap(),
        entries(1, 1, 38, 1)
    );
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), offsets[20]);
    log.write(
        RegionBatch::new(1)
            .with_entries(entries(1, 39, 2, 2))
            .into(),
    )
    .unwrap();
    drop(log);
    let log = Wal::open(dir.path(), &WalConfig::default()).unwrap();
    assert_eq!(log.last_index(1), 40);
}

#[test]
fn a_segment_torn_at_creation_is_removed_and_a_missing_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, _) = write_log(dir.path());
    // A crash while creating segment 2: only part of its header reached the disk.
    let next = dir.path().join("00000000000000000002.wal");
    std::fs::write(&next, b"FLTW").unwrap();
    let log = Wal::open(dir.path(), &WalConfig::default()).unwrap();
    assert_eq!(log.last_index(1), 40);
    drop(log);
    // Numbers stay contiguous after the torn one was replaced.
    let log = Wal::open(dir.path(), &WalConfig::default()).unwrap();
    assert_eq!(log.last_index(2), 20);
    drop(log);
    // Losing a segment in the middle is not silently skipped.
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    assert_eq!(names[0], segment);
    std::fs::remove_file(&names[1]).unwrap();
    match Wal::open(dir.path(), &WalConfig::default()) {
        Err(EngineError::Corruption { file, reason, .. }) => {
            assert_eq!(file, names[1]);
            assert!(reason.contains("missing"), "{reason}");
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("a log with a hole opened"),
    }
}
