//! The in-memory index of every region's log, shared by both log implementations: for each
//! entry its term and where it is stored, plus a cache of each region's most recent entries.
//!
//! Invariants of one region's index:
//! - `slots[k]` is the entry at `first_index() + k`; there are no holes;
//! - the cached entries are a suffix: every slot from `cache_from` to the end has its entry,
//!   none before, and `cached_bytes` is their total [`Entry::size_bytes`].

use std::collections::VecDeque;

use flotilla_common::{Entry, HardState};

use crate::error::{EngineError, Result};
use crate::log::{DurableMark, RegionBatch, SnapshotMark};

/// One entry in the index.
#[derive(Debug, Clone)]
pub(crate) struct Slot<L> {
    /// The entry's term.
    pub term: u64,
    /// Where the implementation stored it.
    pub loc: L,
    /// The entry itself while it is in the cache.
    pub cached: Option<Entry>,
}

/// What a read needs: entries from the cache, and where to find the others.
#[derive(Debug, Clone)]
pub(crate) enum Planned<L> {
    /// In the cache.
    Cached(Entry),
    /// Stored at `loc`.
    Stored {
        /// The entry's index.
        index: u64,
        /// The entry's term.
        term: u64,
        /// Where it is.
        loc: L,
    },
}

/// The first and last index of a region's log: enough to validate a batch before writing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub first: u64,
    pub last: u64,
}

impl Shape {
    /// The shape after `batch`, or why the batch is invalid for a log of this shape.
    pub fn after(self, batch: &RegionBatch) -> Result<Shape> {
        let invalid = |reason: String| EngineError::InvalidBatch {
            region_id: batch.region_id,
            reason,
        };
        let mut shape = self;
        if let Some(mark) = batch.snapshot {
            shape = Shape {
                first: mark.index + 1,
                last: mark.index,
            };
        }
        if let (Some(first), Some(last)) = (batch.entries.first(), batch.entries.last()) {
            if first.index < shape.first || first.index > shape.last + 1 {
                return Err(invalid(format!(
                    "append at {} outside {}..={}",
                    first.index,
                    shape.first,
                    shape.last + 1
                )));
            }
            shape.last = last.index;
        }
        if let Some(to) = batch.compact_to {
            if to > shape.last + 1 {
                return Err(invalid(format!(
                    "compaction to {to} past the last index {}",
                    shape.last
                )));
            }
            shape.first = shape.first.max(to);
        }
        Ok(shape)
    }
}

/// One region's log index.
#[derive(Debug, Clone)]
pub(crate) struct RegionIndex<L> {
    mark: SnapshotMark,
    slots: VecDeque<Slot<L>>,
    hard_state: HardState,
    cache_from: u64,
    cached_bytes: u64,
}

impl<L: Clone> Default for RegionIndex<L> {
    fn default() -> Self {
        RegionIndex {
            mark: SnapshotMark::default(),
            slots: VecDeque::new(),
            hard_state: HardState::default(),
            cache_from: 1,
            cached_bytes: 0,
        }
    }
}

impl<L: Clone> RegionIndex<L> {
    /// A region restored from a checkpoint: its marks, and placeholder slots at `loc`.
    pub fn restored(mark: SnapshotMark, hard_state: HardState, terms: &[u64], loc: L) -> Self {
        let slots = terms
            .iter()
            .map(|&term| Slot {
                term,
                loc: loc.clone(),
                cached: None,
            })
            .collect();
        let mut index = RegionIndex {
            mark,
            slots,
            hard_state,
            cache_from: 0,
            cached_bytes: 0,
        };
        index.cache_from = index.last_index() + 1;
        index
    }

    pub fn first_index(&self) -> u64 {
        self.mark.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.mark.index + self.slots.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.slots.back().map_or(self.mark.term, |s| s.term)
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn mark(&self) -> SnapshotMark {
        self.mark
    }

    pub fn shape(&self) -> Shape {
        Shape {
            first: self.first_index(),
            last: self.last_index(),
        }
    }

    pub fn slots(&self) -> impl Iterator<Item = (u64, &Slot<L>)> {
        let first = self.first_index();
        self.slots
            .iter()
            .enumerate()
            .map(move |(k, s)| (first + k as u64, s))
    }

    pub fn term(&self, region_id: u64, index: u64) -> Result<u64> {
        if index == self.mark.index {
            return Ok(self.mark.term);
        }
        if index < self.mark.index {
            return Err(EngineError::Compacted {
                region_id,
                index,
                first_index: self.first_index(),
            });
        }
        if index > self.last_index() {
            return Err(EngineError::Unavailable {
                region_id,
                index,
                last_index: self.last_index(),
            });
        }
        Ok(self.slots[(index - self.first_index()) as usize].term)
    }

    /// Where the entries `low..high` are.
    pub fn plan(&self, region_id: u64, low: u64, high: u64) -> Result<Vec<Planned<L>>> {
        if low < self.first_index() {
            return Err(EngineError::Compacted {
                region_id,
                index: low,
                first_index: self.first_index(),
            });
        }
        if high > self.last_index() + 1 || low > high {
            return Err(EngineError::Unavailable {
                region_id,
                index: high.saturating_sub(1).max(low),
                last_index: self.last_index(),
            });
        }
        let start = (low - self.first_index()) as usize;
        let end = (high - self.first_index()) as usize;
        Ok(self
            .slots
            .range(start..end)
            .enumerate()
            .map(|(k, slot)| match &slot.cached {
                Some(entry) => Planned::Cached(entry.clone()),
                None => Planned::Stored {
                    index: low + k as u64,
                    term: slot.term,
                    loc: slot.loc.clone(),
                },
            })
            .collect())
    }

    /// Restarts the log after a snapshot at `mark`.
    pub fn apply_snapshot(&mut self, mark: SnapshotMark) {
        self.slots.clear();
        self.mark = mark;
        self.cache_from = mark.index + 1;
        self.cached_bytes = 0;
    }

    /// Appends entries starting at `first`, truncating the log's entries `>= first`.
    /// `new` yields (term, location, entry to cache). The caller validated the position.
    pub fn append(
        &mut self,
        first: u64,
        new: impl IntoIterator<Item = Slot<L>>,
        cache_bytes_max: u64,
    ) {
        debug_assert!(first >= self.first_index() && first <= self.last_index() + 1);
        let keep = (first - self.first_index()) as usize;
        for slot in self.slots.drain(keep..) {
            if let Some(e) = slot.cached {
                self.cached_bytes -= e.size_bytes();
            }
        }
        self.cache_from = self.cache_from.min(first);
        for slot in new {
            match slot.cached.as_ref().map(Entry::size_bytes) {
                Some(bytes) => {
                    self.cached_bytes += bytes;
                    self.slots.push_back(slot);
                }
                None => {
                    // Not cached: keep the cache a suffix by dropping everything before it.
                    self.drop_cache_before(self.last_index() + 1);
                    self.slots.push_back(slot);
                    self.cache_from = self.last_index() + 1;
                }
            }
        }
        while self.cached_bytes > cache_bytes_max && self.cache_from <= self.last_index() {
            self.drop_cache_before(self.cache_from + 1);
        }
    }

    /// Applies a validated part: snapshot mark, entries (each stored at `loc_of(entry)` and
    /// cached), hard state, compaction. Returns what is now the region's end.
    pub fn apply_part(
        &mut self,
        part: &mut RegionBatch,
        mut loc_of: impl FnMut(&Entry) -> L,
        cache_bytes_max: u64,
    ) -> DurableMark {
        if let Some(mark) = part.snapshot {
            self.apply_snapshot(mark);
        }
        if let Some(first) = part.entries.first().map(|e| e.index) {
            let entries = std::mem::take(&mut part.entries);
            let slots = entries.into_iter().map(|e| Slot {
                term: e.term,
                loc: loc_of(&e),
                cached: Some(e),
            });
            self.append(first, slots, cache_bytes_max);
        }
        if let Some(hs) = part.hard_state {
            self.set_hard_state(hs);
        }
        if let Some(to) = part.compact_to {
            self.compact(to);
        }
        DurableMark {
            region_id: part.region_id,
            last_index: self.last_index(),
            last_term: self.last_term(),
        }
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Drops the entries before `to`; the caller validated `to <= last_index + 1`.
    pub fn compact(&mut self, to: u64) {
        if to <= self.first_index() {
            return;
        }
        debug_assert!(to <= self.last_index() + 1);
        let term = self.slots[(to - 1 - self.first_index()) as usize].term;
        let count = (to - self.first_index()) as usize;
        for slot in self.slots.drain(..count) {
            if let Some(e) = slot.cached {
                self.cached_bytes -= e.size_bytes();
            }
        }
        self.mark = SnapshotMark {
            index: to - 1,
            term,
        };
        self.cache_from = self.cache_from.max(to);
    }

    /// Removes entries before index `to` from the cache (they stay in the log).
    fn drop_cache_before(&mut self, to: u64) {
        let first = self.first_index();
        while self.cache_from < to && self.cache_from <= self.last_index() {
            let k = (self.cache_from - first) as usize;
            if let Some(e) = self.slots[k].cached.take() {
                self.cached_bytes -= e.size_bytes();
            }
            self.cache_from += 1;
        }
        self.cache_from = self.cache_from.max(to.min(self.last_index() + 1));
    }

    #[cfg(test)]
    pub fn check_invariants(&self) {
        let mut bytes = 0;
        for (index, slot) in self.slots() {
            assert_eq!(
                slot.cached.is_some(),
                index >= self.cache_from,
                "cache is a suffix"
            );
            if let Some(e) = &slot.cached {
                assert_eq!(e.index, index);
                bytes += e.size_bytes();
            }
        }
        assert_eq!(bytes, self.cached_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_common::EntryKind;

    fn slot(term: u64, index: u64) -> Slot<()> {
        Slot {
            term,
            loc: (),
            cached: Some(Entry::new(EntryKind::Normal, term, index, vec![0u8; 8])),
        }
    }

    #[test]
    fn cache_stays_a_bounded_suffix_through_truncation_and_compaction() {
        let mut idx = RegionIndex::<()>::default();
        let per = Entry::new(EntryKind::Normal, 1, 1, vec![0u8; 8]).size_bytes();
        idx.append(1, (1..=10).map(|i| slot(1, i)), per * 4);
        idx.check_invariants();
        assert_eq!(
            idx.plan(1, 1, 11)
                .unwrap()
                .iter()
                .filter(|p| matches!(p, Planned::Cached(_)))
                .count(),
            4
        );
        idx.append(9, (9..=12).map(|i| slot(2, i)), per * 4);
        idx.check_invariants();
        assert_eq!(idx.last_index(), 12);
        assert_eq!(idx.term(1, 8).unwrap(), 1);
        assert_eq!(idx.term(1, 9).unwrap(), 2);
        idx.compact(11);
        idx.check_invariants();
        assert_eq!(idx.mark(), SnapshotMark { index: 10, term: 2 });
        assert!(matches!(idx.term(1, 9), Err(EngineError::Compacted { .. })));
        assert!(matches!(
            idx.term(1, 13),
            Err(EngineError::Unavailable { .. })
        ));
        // An uncached append (recovery) leaves nothing cached before it.
        idx.append(
            13,
            [Slot {
                term: 2,
                loc: (),
                cached: None,
            }],
            per * 4,
        );
        idx.check_invariants();
        assert!(idx
            .plan(1, 11, 14)
            .unwrap()
            .iter()
            .all(|p| matches!(p, Planned::Stored { .. })));
    }
}
