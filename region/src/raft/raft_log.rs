//! A peer's view of its log: durable entries through [`Storage`], newer ones in memory.
//!
//! Invariants (checked in debug builds after each change):
//! `applied <= applying <= committed`, `committed <= last_index`,
//! `first_index - 1 <= applied`.

use flotilla_common::{Entry, Snapshot};

use super::errors::{Error, Result, StorageError};
use super::log_unstable::Unstable;
use super::storage::Storage;

/// Keeps a prefix of `entries` whose total size does not pass `max_bytes`; the first entry
/// is always kept so progress is possible with any limit.
pub fn limit_size(entries: &[Entry], max_bytes: u64) -> &[Entry] {
    let mut size = 0u64;
    let mut n = 0;
    for e in entries {
        size += e.size_bytes();
        if n > 0 && size > max_bytes {
            break;
        }
        n += 1;
    }
    &entries[..n]
}

/// The log of one peer.
#[derive(Debug)]
pub struct RaftLog<S: Storage> {
    /// Durable entries.
    pub store: S,
    pub(crate) unstable: Unstable,
    /// Highest index known committed.
    pub committed: u64,
    /// Highest index known durable (and matching this log).
    pub persisted: u64,
    /// Highest index handed to the application to apply.
    pub applying: u64,
    /// Highest index the application reported applied.
    pub applied: u64,
}

impl<S: Storage> RaftLog<S> {
    /// A log over `store`, which holds everything durable.
    pub fn new(store: S) -> Result<Self> {
        let first = store.first_index()?;
        let last = store.last_index()?;
        Ok(RaftLog {
            store,
            unstable: Unstable::new(last + 1),
            committed: first - 1,
            persisted: last,
            applying: first - 1,
            applied: first - 1,
        })
    }

    /// The first index still in the log.
    pub fn first_index(&self) -> u64 {
        match self.unstable.maybe_first_index() {
            Some(i) => i,
            None => self.store.first_index().unwrap_or(1),
        }
    }

    /// The index of the last entry.
    pub fn last_index(&self) -> u64 {
        match self.unstable.maybe_last_index() {
            Some(i) => i,
            None => self.store.last_index().unwrap_or(0),
        }
    }

    /// The term of the entry at `index`.
    pub fn term(&self, index: u64) -> std::result::Result<u64, StorageError> {
        let boundary = self.first_index() - 1;
        if index < boundary {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if let Some(t) = self.unstable.maybe_term(index) {
            return Ok(t);
        }
        self.store.term(index)
    }

    /// The term at `index`, or 0 if the log does not hold it.
    pub fn term_or_zero(&self, index: u64) -> u64 {
        self.term(index).unwrap_or(0)
    }

    /// The term of the last entry.
    pub fn last_term(&self) -> u64 {
        self.term_or_zero(self.last_index())
    }

    /// Whether the entry at `index` has term `term`.
    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index).map(|t| t == term).unwrap_or(false)
    }

    /// §5.4.1: whether a log ending at (`last_index`, `term`) is at least as up to date as
    /// this one — later last term wins, then the longer log.
    pub fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        term > self.last_term() || (term == self.last_term() && last_index >= self.last_index())
    }

    /// The first index at which `ents` disagree with this log (a different term or past
    /// the end), 0 if they all match.
    pub fn find_conflict(&self, ents: &[Entry]) -> u64 {
        for e in ents {
            if !self.match_term(e.index, e.term) {
                return e.index;
            }
        }
        0
    }

    /// The fast back-off hint: the largest index ≤ `index` whose term is ≤ `term`, with its
    /// term. Every entry after it has a bigger term, so none of them can match an entry of
    /// a log whose entry at `index` has `term` — the whole range can be skipped at once.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t > term => i -= 1,
                Ok(t) => return (i, t),
                Err(_) => return (i, 0),
            }
        }
    }

    /// Follower side of AppendEntries: if this log holds (`index`, `log_term`), appends
    /// `ents` after it (truncating a conflicting suffix) and advances the commit to
    /// `min(committed, last new index)`. `None` when the consistency check fails; else the
    /// last new index and, if anything was written, the index writing started at.
    pub fn maybe_append(
        &mut self,
        index: u64,
        log_term: u64,
        committed: u64,
        ents: &[Entry],
    ) -> Result<Option<(u64, Option<u64>)>> {
        if !self.match_term(index, log_term) {
            return Ok(None);
        }
        let last_new = index + ents.len() as u64;
        let conflict = self.find_conflict(ents);
        if conflict != 0 {
            if conflict <= self.committed {
                return Err(Error::InvalidMessage(format!(
                    "append conflicts with committed entry {conflict} (committed {})",
                    self.committed
                )));
            }
            let start = (conflict - index - 1) as usize;
            self.append(&ents[start..]);
        }
        self.commit_to(committed.min(last_new));
        Ok(Some((last_new, (conflict != 0).then_some(conflict))))
    }

    /// Appends entries (their first index must follow something in the log above the
    /// commit) and returns the new last index.
    pub fn append(&mut self, ents: &[Entry]) -> u64 {
        if let Some(first) = ents.first() {
            assert!(
                first.index > self.committed,
                "append at {} would overwrite committed {}",
                first.index,
                self.committed
            );
            self.unstable.truncate_and_append(ents);
            // Entries at and after the truncation point are no longer durable as they were.
            self.persisted = self.persisted.min(first.index - 1);
        }
        self.last_index()
    }

    /// Raises the commit index (clamped to the last index: a bad peer may claim more).
    pub fn commit_to(&mut self, to_commit: u64) {
        let to = to_commit.min(self.last_index());
        if to > self.committed {
            self.committed = to;
        }
    }

    /// Leader side: commits `max_index` if it is of the current `term` (§5.4.2).
    pub fn maybe_commit(&mut self, max_index: u64, term: u64) -> bool {
        if max_index > self.committed && self.term_or_zero(max_index) == term {
            self.commit_to(max_index);
            return true;
        }
        false
    }

    /// The application applied everything up to `index`.
    pub fn applied_to(&mut self, index: u64) {
        if index == 0 || index <= self.applied {
            return;
        }
        let index = index.min(self.committed);
        self.applied = index;
        self.applying = self.applying.max(index);
    }

    /// Entries up to (`index`, `term`) are durable. Ignored unless the entry at `index` is
    /// still held in memory with that term: one that left memory was reported durable
    /// already, and one replaced since (a new leader's append truncated it) is not what the
    /// write made durable. Storage is not asked: with writes in flight it may still hold the
    /// replaced entry while its replacement is on its way to the disk.
    pub fn stable_to(&mut self, index: u64, term: u64) {
        if !self.unstable.stable_to(index, term) {
            return;
        }
        self.persisted = self.persisted.max(index.min(self.last_index()));
    }

    /// The snapshot at `index` is durable.
    pub fn stable_snap_to(&mut self, index: u64) {
        if self.unstable.stable_snap_to(index) {
            self.persisted = self.persisted.max(index);
        }
    }

    /// Replaces the log with a snapshot; entries come after it.
    pub fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.metadata.index;
        self.committed = index;
        self.persisted = self.persisted.min(index.saturating_sub(1));
        self.unstable.restore(snapshot);
    }

    /// Entries not yet handed to the caller to persist.
    pub fn unstable_entries(&self) -> &[Entry] {
        self.unstable.next_entries()
    }

    /// Whether committed, durable entries wait to be applied.
    pub fn has_next_committed(&self) -> bool {
        let lo = (self.applying + 1).max(self.first_index());
        lo <= self.committed.min(self.persisted)
    }

    /// Committed, durable entries not yet handed out to apply, at most `max_bytes`.
    pub fn next_committed(&self, max_bytes: u64) -> Result<Vec<Entry>> {
        let lo = (self.applying + 1).max(self.first_index());
        let hi = self.committed.min(self.persisted) + 1;
        if lo >= hi {
            return Ok(Vec::new());
        }
        self.slice(lo, hi, max_bytes)
    }

    /// Entries from `index` to the end, at most `max_bytes`.
    pub fn entries(&self, index: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        let last = self.last_index();
        if index > last {
            return Ok(Vec::new());
        }
        self.slice(index, last + 1, max_bytes)
    }

    /// Entries in `[lo, hi)`, at most `max_bytes` (one entry always).
    pub fn slice(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        if lo < self.first_index() {
            return Err(StorageError::Compacted.into());
        }
        if hi > self.last_index() + 1 || lo > hi {
            return Err(StorageError::Unavailable.into());
        }
        if lo == hi {
            return Ok(Vec::new());
        }
        let offset = self.unstable.offset;
        let mut out = Vec::new();
        if lo < offset {
            let stored = self.store.entries(lo, hi.min(offset), max_bytes)?;
            let complete = stored.len() as u64 == hi.min(offset) - lo;
            out = stored;
            if !complete {
                return Ok(out);
            }
        }
        if hi > offset {
            let from = lo.max(offset);
            out.extend_from_slice(self.unstable.slice(from, hi));
        }
        let n = limit_size(&out, max_bytes).len();
        out.truncate(n);
        Ok(out)
    }
}
