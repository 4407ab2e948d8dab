//! A [`FileSystem`] that injects disk faults at run time, for tests of the WAL and of
//! whatever runs on it (a node's recovery from a full disk): the operating system's files,
//! with a full disk, failing syncs, failing file creation and failing truncation switched on
//! and off while the log runs.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::segment::{FileSystem, LogFile, StdFileSystem};

/// `ENOSPC` (Linux).
const ENOSPC: i32 = 28;
/// `EIO` (Linux).
const EIO: i32 = 5;

/// The faults a [`FaultyFileSystem`] injects; each applies while it is set.
#[derive(Debug)]
pub struct DiskFaults {
    /// Appends land this many bytes of their buffer (at most), then fail with `ENOSPC`;
    /// `u64::MAX`: off.
    write_enospc_after: AtomicU64,
    /// Appends land half their buffer, then fail with `ENOSPC`.
    write_enospc_half: AtomicBool,
    /// Syncs fail with `ENOSPC` (a file system that allocates lazily reports a full disk
    /// when the data is flushed).
    sync_enospc: AtomicBool,
    /// Syncs fail with `EIO` (the device failed the flush).
    sync_eio: AtomicBool,
    /// Creating a file fails with `ENOSPC` (the empty file is left behind, as when the
    /// directory entry fit but its first block did not).
    create_enospc: AtomicBool,
    /// Truncating a file fails with `EIO`.
    truncate_eio: AtomicBool,
}

impl DiskFaults {
    /// No faults yet.
    pub fn new() -> Arc<DiskFaults> {
        Arc::new(DiskFaults {
            write_enospc_after: AtomicU64::new(u64::MAX),
            write_enospc_half: AtomicBool::new(false),
            sync_enospc: AtomicBool::new(false),
            sync_eio: AtomicBool::new(false),
            create_enospc: AtomicBool::new(false),
            truncate_eio: AtomicBool::new(false),
        })
    }

    /// The disk is full: appends land half their buffer and fail, syncs and file creation
    /// fail, all with `ENOSPC`.
    pub fn fill(&self) {
        self.write_enospc_half.store(true, Ordering::SeqCst);
        self.sync_enospc.store(true, Ordering::SeqCst);
        self.create_enospc.store(true, Ordering::SeqCst);
    }

    /// Every fault off: space is back.
    pub fn clear(&self) {
        self.write_enospc_after.store(u64::MAX, Ordering::SeqCst);
        self.write_enospc_half.store(false, Ordering::SeqCst);
        self.sync_enospc.store(false, Ordering::SeqCst);
        self.sync_eio.store(false, Ordering::SeqCst);
        self.create_enospc.store(false, Ordering::SeqCst);
        self.truncate_eio.store(false, Ordering::SeqCst);
    }

    /// Appends land `bytes` of their buffer (at most), then fail with `ENOSPC`.
    pub fn fail_writes_after(&self, bytes: u64) {
        self.write_enospc_after.store(bytes, Ordering::SeqCst);
    }

    /// Syncs fail with `ENOSPC` (`true`) or work (`false`).
    pub fn fail_syncs(&self, on: bool) {
        self.sync_enospc.store(on, Ordering::SeqCst);
    }

    /// Syncs fail with `EIO` while `on`.
    pub fn fail_syncs_with_eio(&self, on: bool) {
        self.sync_eio.store(on, Ordering::SeqCst);
    }

    /// Creating a file fails with `ENOSPC` (`true`) or works (`false`).
    pub fn fail_creates(&self, on: bool) {
        self.create_enospc.store(on, Ordering::SeqCst);
    }

    /// Truncating a file fails with `EIO` (`true`) or works (`false`).
    pub fn fail_truncates(&self, on: bool) {
        self.truncate_eio.store(on, Ordering::SeqCst);
    }

    /// How many bytes of a `len`-byte append land before it fails, if it fails.
    fn append_cut(&self, len: usize) -> Option<usize> {
        let mut cut = None;
        if self.write_enospc_half.load(Ordering::SeqCst) {
            cut = Some(len / 2);
        }
        let after = self.write_enospc_after.load(Ordering::SeqCst);
        if after != u64::MAX && (after as usize) < len {
            cut = Some(cut.map_or(after as usize, |c: usize| c.min(after as usize)));
        }
        cut
    }
}

/// The operating system's files with the faults of a [`DiskFaults`].
#[derive(Debug, Clone)]
pub struct FaultyFileSystem {
    faults: Arc<DiskFaults>,
}

impl FaultyFileSystem {
    /// A file system whose faults `faults` switches.
    pub fn new(faults: Arc<DiskFaults>) -> Self {
        FaultyFileSystem { faults }
    }
}

struct FaultyFile {
    inner: Box<dyn LogFile>,
    faults: Arc<DiskFaults>,
}

impl LogFile for FaultyFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.faults.append_cut(buf.len()) {
            None => self.inner.append(buf),
            Some(n) => {
                self.inner.append(&buf[..n])?;
                Err(io::Error::from_raw_os_error(ENOSPC))
            }
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        if self.faults.sync_eio.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        if self.faults.sync_enospc.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        self.inner.sync_data()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
}

impl FileSystem for FaultyFileSystem {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = StdFileSystem.create(path)?;
        if self.faults.create_enospc.load(Ordering::SeqCst) {
            drop(file);
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(Box::new(FaultyFile {
            inner: file,
            faults: self.faults.clone(),
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        StdFileSystem.open_read(path)
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdFileSystem.read_all(path)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        if self.faults.truncate_eio.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
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
