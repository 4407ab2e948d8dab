//! Fault injection through the WAL's file-system trait: a failed fdatasync fails the
//! writes of its group and poisons the log; reopening recovers what was durable.

mod common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::entries;
use flotilla_engine::{
    EngineError, FileSystem, LogFile, RaftLog, RegionBatch, StdFileSystem, Wal, WalConfig,
};

/// The operating system's files, except that syncs fail once `fail` is set.
struct FailingSync {
    fail: Arc<AtomicBool>,
}

struct File {
    inner: Box<dyn LogFile>,
    fail: Arc<AtomicBool>,
}

impl LogFile for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.append(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        self.inner.sync_data()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
}

impl FileSystem for FailingSync {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(File {
            inner: StdFileSystem.create(path)?,
            fail: self.fail.clone(),
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        StdFileSystem.open_read(path)
    }
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdFileSystem.read_all(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        StdFileSystem.truncate(path, len)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        StdFileSystem.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdFileSystem.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdFileSystem.sync_dir(dir)
    }
}

#[test]
fn a_failed_fdatasync_fails_the_write_and_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let fs = Arc::new(FailingSync { fail: fail.clone() });
    let log = Wal::open_with_fs(dir.path(), &WalConfig::default(), fs).unwrap();
    log.write(RegionBatch::new(1).with_entries(entries(1, 1, 3, 1)).into())
        .unwrap();
    fail.store(true, Ordering::SeqCst);
    let err = log
        .write(RegionBatch::new(1).with_entries(entries(1, 4, 1, 1)).into())
        .unwrap_err();
    assert!(matches!(err, EngineError::Io { .. }), "{err}");
    assert_eq!(
        log.last_index(1),
        3,
        "a write that was not synced is not in the index"
    );
    fail.store(false, Ordering::SeqCst);
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
