//! `SCAN` cursors. Redis clients treat a cursor as an unsigned 64-bit number (redis-cli and
//! the `redis` crate parse it as one), but a range scan resumes from a *key*. The server
//! therefore keeps a table from cursor numbers to the key the next page starts at.
//!
//! The table is shared by all connections of a server, so a client that takes a different
//! pooled connection for each page still works. Cursor numbers are never reused (they
//! count up from 1), so a cursor that fell out of the table is reported as unknown, never
//! confused with another scan.

use std::collections::VecDeque;

use bytes::Bytes;
use parking_lot::Mutex;

/// Most cursors kept: enough for thousands of scans in progress at once; the oldest go first.
pub const CURSORS_MAX: usize = 4096;

/// Most bytes of resume keys kept, so that cursors on huge keys cannot hold much memory.
pub const CURSOR_BYTES_MAX: usize = 16 << 20;

/// Cursor numbers and the keys they resume from, oldest first.
#[derive(Debug, Default)]
pub struct CursorTable {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ascending by cursor number, because numbers are handed out in order.
    entries: VecDeque<(u64, Bytes)>,
    bytes: usize,
    last_id: u64,
}

impl CursorTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `resume_key` and returns its cursor number (never 0, which means "start").
    pub fn insert(&self, resume_key: Bytes) -> u64 {
        let mut inner = self.inner.lock();
        inner.last_id += 1;
        let id = inner.last_id;
        inner.bytes += resume_key.len();
        inner.entries.push_back((id, resume_key));
        while inner.entries.len() > CURSORS_MAX || inner.bytes > CURSOR_BYTES_MAX {
            match inner.entries.pop_front() {
                Some((_, key)) => inner.bytes -= key.len(),
                None => break,
            }
        }
        id
    }

    /// The key cursor `id` resumes from, if it is still in the table. The entry stays, so a
    /// client that retries a page gets the same page.
    pub fn get(&self, id: u64) -> Option<Bytes> {
        let inner = self.inner.lock();
        let at = inner.entries.binary_search_by_key(&id, |(i, _)| *i).ok()?;
        Some(inner.entries[at].1.clone())
    }

    /// Number of cursors kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_cursors_go_first() {
        let t = CursorTable::new();
        let first = t.insert(Bytes::from("a"));
        assert_eq!(t.get(first), Some(Bytes::from("a")));
        for _ in 0..CURSORS_MAX {
            t.insert(Bytes::from("b"));
        }
        assert_eq!(t.len(), CURSORS_MAX);
        assert_eq!(t.get(first), None, "evicted, and its number is not reused");
        assert_eq!(t.get(0), None);
    }

    #[test]
    fn bytes_are_bounded() {
        let t = CursorTable::new();
        let big = Bytes::from(vec![0u8; CURSOR_BYTES_MAX / 2 + 1]);
        let a = t.insert(big.clone());
        let b = t.insert(big);
        assert_eq!(t.get(a), None);
        assert!(t.get(b).is_some());
    }
}
