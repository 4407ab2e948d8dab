//! How the raft core reads the durable log, and an in-memory implementation for tests and
//! simulations.
//!
//! The core keeps entries it has not yet seen persisted in memory (`log_unstable`) and reads
//! everything older through [`Storage`]. The caller writes to its storage when it handles a
//! Ready (entries, hard state, snapshot) and only then tells the core what is durable.

use std::sync::Arc;

use flotilla_common::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use parking_lot::RwLock;

use super::errors::StorageError;

/// What a peer finds in storage when it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftState {
    /// The durable term, vote and commit.
    pub hard_state: HardState,
    /// The membership as of the last applied configuration.
    pub conf_state: ConfState,
}

/// Read access to a peer's durable raft log.
///
/// To ensure correctness an implementation must:
/// - return in `entries`, `term`, `first_index` and `last_index` only entries that are durable;
/// - answer `term(first_index - 1)` (the boundary left by compaction or a snapshot);
/// - return [`StorageError::Compacted`] below that boundary and
///   [`StorageError::Unavailable`] past the last index, never panic.
pub trait Storage {
    /// The hard state and membership to start from.
    fn initial_state(&self) -> Result<RaftState, StorageError>;
    /// Entries in `[low, high)`, stopping once `max_size_bytes` is passed (at least one
    /// entry is returned when the range is not empty).
    fn entries(&self, low: u64, high: u64, max_size_bytes: u64)
        -> Result<Vec<Entry>, StorageError>;
    /// The term of the entry at `index`.
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// The index of the first entry still available.
    fn first_index(&self) -> Result<u64, StorageError>;
    /// The index of the last entry (first_index - 1 when the log is empty).
    fn last_index(&self) -> Result<u64, StorageError>;
    /// A snapshot at or after `request_index` if possible (the latest one otherwise), or
    /// [`StorageError::SnapshotTemporarilyUnavailable`] while one is being built.
    fn snapshot(&self, request_index: u64) -> Result<Snapshot, StorageError>;
}

/// The contents of a [`MemStorage`].
#[derive(Debug, Default)]
pub struct MemStorageCore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the entry just before `entries[0]` (compaction/snapshot boundary).
    boundary: (u64, u64),
    entries: Vec<Entry>,
    snapshot: Snapshot,
}

impl MemStorageCore {
    fn last_index(&self) -> u64 {
        self.boundary.0 + self.entries.len() as u64
    }

    /// Appends entries; an entry at index i replaces the suffix from i on (the uncommitted
    /// tail a new leader overrules).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.boundary.0 {
            return Err(StorageError::Compacted);
        }
        if first.index > self.last_index() + 1 {
            return Err(StorageError::Other(format!(
                "append at {} leaves a gap after {}",
                first.index,
                self.last_index()
            )));
        }
        let keep = (first.index - self.boundary.0 - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Sets the durable hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// The durable hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Sets the membership (after a configuration change was applied).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Stores a snapshot of the state machine at `index` (which must be in the log) for
    /// lagging followers, without dropping entries.
    pub fn create_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: bytes::Bytes,
    ) -> Result<(), StorageError> {
        if index <= self.snapshot.metadata.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        let term = self.term(index)?;
        self.snapshot = Snapshot {
            metadata: SnapshotMetadata {
                index,
                term,
                conf_state,
            },
            data,
        };
        Ok(())
    }

    /// Drops entries below `compact_index`. A snapshot covering `compact_index - 1` must
    /// exist, so that a follower that needs the dropped entries can be sent one.
    pub fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        if compact_index <= self.boundary.0 + 1 {
            return Ok(());
        }
        if compact_index > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        if compact_index - 1 > self.snapshot.metadata.index {
            return Err(StorageError::Other(format!(
                "compaction to {compact_index} passes the latest snapshot at {}",
                self.snapshot.metadata.index
            )));
        }
        let term = self.term(compact_index - 1)?;
        let drop = (compact_index - 1 - self.boundary.0) as usize;
        self.entries.drain(..drop);
        self.boundary = (compact_index - 1, term);
        Ok(())
    }

    /// Replaces the log with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let meta = &snapshot.metadata;
        if meta.index <= self.snapshot.metadata.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        self.boundary = (meta.index, meta.term);
        self.entries.clear();
        self.conf_state = meta.conf_state.clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.snapshot = snapshot;
        Ok(())
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index < self.boundary.0 {
            return Err(StorageError::Compacted);
        }
        if index == self.boundary.0 {
            return Ok(self.boundary.1);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        Ok(self.entries[(index - self.boundary.0 - 1) as usize].term)
    }
}

/// A thread-safe in-memory [`Storage`]; clones share the same contents, so a test can keep
/// a handle and write to it while the core reads from it.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    core: Arc<RwLock<MemStorageCore>>,
}

impl MemStorage {
    /// An empty log with no members (a peer that waits to be told its membership).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty log whose group starts with `conf_state`.
    pub fn new_with_conf_state(conf_state: ConfState) -> Self {
        let s = Self::default();
        s.wl().conf_state = conf_state;
        s
    }

    /// Read access to the contents.
    pub fn rl(&self) -> parking_lot::RwLockReadGuard<'_, MemStorageCore> {
        self.core.read()
    }

    /// Write access to the contents.
    pub fn wl(&self) -> parking_lot::RwLockWriteGuard<'_, MemStorageCore> {
        self.core.write()
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        let core = self.rl();
        Ok(RaftState {
            hard_state: core.hard_state,
            conf_state: core.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let core = self.rl();
        if low <= core.boundary.0 {
            return Err(StorageError::Compacted);
        }
        if high > core.last_index() + 1 || low > high {
            return Err(StorageError::Unavailable);
        }
        let from = (low - core.boundary.0 - 1) as usize;
        let to = (high - core.boundary.0 - 1) as usize;
        Ok(super::raft_log::limit_size(&core.entries[from..to], max_size_bytes).to_vec())
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.rl().term(index)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.rl().boundary.0 + 1)
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.rl().last_index())
    }

    fn snapshot(&self, _request_index: u64) -> Result<Snapshot, StorageError> {
        let core = self.rl();
        if core.snapshot.is_empty() {
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        Ok(core.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_common::EntryKind;

    fn ents(range: std::ops::Range<u64>, term: u64) -> Vec<Entry> {
        range
            .map(|i| Entry::new(EntryKind::Normal, term, i, vec![0u8; 4]))
            .collect()
    }

    #[test]
    fn append_truncates_conflicting_suffix() {
        let s = MemStorage::new();
        s.wl().append(&ents(1..6, 1)).unwrap();
        s.wl().append(&ents(3..5, 2)).unwrap();
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(2).unwrap(), 1);
        assert_eq!(s.term(3).unwrap(), 2);
        let gap = s.wl().append(&ents(7..8, 2)).unwrap_err();
        assert!(gap.to_string().contains("gap"), "{gap}");
    }

    #[test]
    fn compaction_needs_a_snapshot_and_bounds_reads() {
        let s = MemStorage::new();
        s.wl().append(&ents(1..11, 1)).unwrap();
        assert!(s.wl().compact(5).is_err(), "no snapshot covers index 4 yet");
        s.wl()
            .create_snapshot(6, ConfState::with_voters([1]), bytes::Bytes::new())
            .unwrap();
        s.wl().compact(5).unwrap();
        assert_eq!(s.first_index().unwrap(), 5);
        assert_eq!(s.term(4).unwrap(), 1);
        assert_eq!(s.term(3), Err(StorageError::Compacted));
        assert_eq!(s.entries(4, 6, u64::MAX), Err(StorageError::Compacted));
        assert_eq!(s.entries(5, 12, u64::MAX), Err(StorageError::Unavailable));
        assert_eq!(
            s.entries(5, 11, 0).unwrap().len(),
            1,
            "one entry always fits"
        );
        assert_eq!(s.snapshot(0).unwrap().metadata.index, 6);
    }

    #[test]
    fn apply_snapshot_resets_the_log() {
        let s = MemStorage::new();
        s.wl().append(&ents(1..4, 1)).unwrap();
        let snap = Snapshot {
            metadata: SnapshotMetadata {
                index: 10,
                term: 3,
                conf_state: ConfState::with_voters([1, 2]),
            },
            data: bytes::Bytes::from_static(b"x"),
        };
        s.wl().apply_snapshot(snap.clone()).unwrap();
        assert_eq!(s.first_index().unwrap(), 11);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(10).unwrap(), 3);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2]);
        assert_eq!(
            s.wl().apply_snapshot(snap),
            Err(StorageError::SnapshotOutOfDate)
        );
    }
}
