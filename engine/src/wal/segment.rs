//! Segment files and the file-system trait the WAL does all its I/O through (so tests can
//! inject failures).
//!
//! A segment is `<data>/raft/<seq, 20 digits>.wal`: a 16-byte header (magic and sequence
//! number) followed by records. Every segment starts with a checkpoint record.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of a segment's header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 16;

const SEGMENT_MAGIC: &[u8; 8] = b"FLTWAL01";

/// The header of segment `seq`.
pub(crate) fn header(seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..].copy_from_slice(&seq.to_le_bytes());
    h
}

/// Whether `bytes` is the header of segment `seq`.
pub(crate) fn header_matches(bytes: &[u8], seq: u64) -> bool {
    bytes.len() >= SEGMENT_HEADER_BYTES && bytes[..SEGMENT_HEADER_BYTES] == header(seq)
}

/// The path of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// The sequence number in a segment's file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok()
}

/// An open log file: appended by the writer, read at offsets by readers.
pub trait LogFile: Send + Sync {
    /// Appends `buf` at the end of the file.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything appended durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// The file operations of the WAL.
pub trait FileSystem: Send + Sync {
    /// Creates `path` (which must not exist) for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Opens `path` for reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Reads the whole file.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Cuts the file to `len` bytes and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Deletes the file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the files in `dir`, creating it if absent.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries durable (after creating or deleting files).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// [`FileSystem`] on the operating system's files.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFileSystem;

struct StdLogFile(File);

impl LogFile for StdLogFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }
}

impl FileSystem for StdFileSystem {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .open(path)?;
        Ok(Box::new(StdLogFile(file)))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(StdLogFile(File::open(path)?)))
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = segment_path(Path::new("/x"), 42);
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert!(header_matches(&header(7), 7));
        assert!(!header_matches(&header(7), 8));
    }
}
