//! Entries and a snapshot the core holds in memory until the caller reports them durable.
//!
//! Lifecycle of an entry: appended here → handed to the caller in a Ready (it is then "in
//! progress") → reported durable with `on_persisted` → dropped from here (storage serves
//! it from then on). A conflicting append from a new leader can truncate entries at any
//! stage; entries in progress that were replaced are handed out again.

use flotilla_common::{Entry, Snapshot};

#[derive(Debug, Default)]
pub(crate) struct Unstable {
    /// A snapshot received from the leader, not yet durable.
    pub snapshot: Option<Snapshot>,
    /// Whether `snapshot` has been handed out in a Ready.
    pub snapshot_in_progress: bool,
    /// Entries not yet durable; `entries[0].index == offset`.
    pub entries: Vec<Entry>,
    /// Index of `entries[0]` (or where the next entry goes).
    pub offset: u64,
    /// Entries below this index have been handed out in a Ready.
    pub offset_in_progress: u64,
}

impl Unstable {
    pub fn new(offset: u64) -> Self {
        Unstable {
            offset,
            offset_in_progress: offset,
            ..Default::default()
        }
    }

    pub fn maybe_first_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.metadata.index + 1)
    }

    pub fn maybe_last_index(&self) -> Option<u64> {
        if !self.entries.is_empty() {
            return Some(self.offset + self.entries.len() as u64 - 1);
        }
        self.snapshot.as_ref().map(|s| s.metadata.index)
    }

    pub fn maybe_term(&self, index: u64) -> Option<u64> {
        if index < self.offset {
            let snap = self.snapshot.as_ref()?;
            return (snap.metadata.index == index).then_some(snap.metadata.term);
        }
        let last = self.maybe_last_index()?;
        if index > last {
            return None;
        }
        Some(self.entries[(index - self.offset) as usize].term)
    }

    /// Entries not yet handed out.
    pub fn next_entries(&self) -> &[Entry] {
        let start = (self.offset_in_progress - self.offset) as usize;
        &self.entries[start.min(self.entries.len())..]
    }

    /// The snapshot if it has not been handed out.
    pub fn next_snapshot(&self) -> Option<&Snapshot> {
        if self.snapshot_in_progress {
            return None;
        }
        self.snapshot.as_ref()
    }

    /// Marks everything current as handed out.
    pub fn accept_in_progress(&mut self) {
        self.offset_in_progress = self.offset + self.entries.len() as u64;
        if self.snapshot.is_some() {
            self.snapshot_in_progress = true;
        }
    }

    /// Entries up to `index` (of `term`) are durable: drop them. Ignored if the entry at
    /// `index` has since been replaced by one of another term.
    pub fn stable_to(&mut self, index: u64, term: u64) -> bool {
        if self.maybe_term(index) != Some(term) || index < self.offset {
            return false;
        }
        let n = (index + 1 - self.offset) as usize;
        self.entries.drain(..n);
        self.offset = index + 1;
        self.offset_in_progress = self.offset_in_progress.max(self.offset);
        true
    }

    /// The snapshot at `index` is durable.
    pub fn stable_snap_to(&mut self, index: u64) -> bool {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.metadata.index == index)
        {
            self.snapshot = None;
            self.snapshot_in_progress = false;
            return true;
        }
        false
    }

    pub fn restore(&mut self, snapshot: Snapshot) {
        self.entries.clear();
        self.offset = snapshot.metadata.index + 1;
        self.offset_in_progress = self.offset;
        self.snapshot = Some(snapshot);
        self.snapshot_in_progress = false;
    }

    /// Appends `ents`, replacing whatever was at and after `ents[0].index`.
    pub fn truncate_and_append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        let after = first.index;
        if after == self.offset + self.entries.len() as u64 {
            self.entries.extend_from_slice(ents);
        } else if after <= self.offset {
            // The whole unstable tail (and possibly some durable entries) is replaced.
            self.offset = after;
            self.offset_in_progress = after;
            self.entries.clear();
            self.entries.extend_from_slice(ents);
        } else {
            self.entries.truncate((after - self.offset) as usize);
            self.entries.extend_from_slice(ents);
            self.offset_in_progress = self.offset_in_progress.min(after);
        }
    }

    /// Entries in `[lo, hi)`, all of which must be held here.
    pub fn slice(&self, lo: u64, hi: u64) -> &[Entry] {
        debug_assert!(lo >= self.offset && hi <= self.offset + self.entries.len() as u64);
        &self.entries[(lo - self.offset) as usize..(hi - self.offset) as usize]
    }
}
