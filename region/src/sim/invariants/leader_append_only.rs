//! Leader Append-Only (Raft §5.3, Figure 3): a leader never overwrites or deletes entries
//! in its log; it only appends new entries.
//!
//! Two views are checked while a peer stays leader of one term:
//! - its durable log: every write it makes to storage while leader must start after its
//!   durable last index, or rewrite identical entries ([`LeaderAppendOnly::observe_persist`]);
//! - its in-memory log, after every step: the last index never goes down, and the entry at
//!   the last index seen keeps its term ([`LeaderAppendOnly::observe_leader`]).
//!
//! A follower's uncommitted suffix may legitimately be truncated, and a crashed leader is
//! not a leader any more: [`LeaderAppendOnly::forget`] drops the view of a peer that
//! crashed or lost leadership.

use std::collections::BTreeMap;

use super::{Check, LogView, Violation};

const PROPERTY: &str = "Leader Append-Only";

#[derive(Debug, Clone, Copy)]
struct View {
    term: u64,
    last_index: u64,
    last_term: u64,
}

/// What each current leader's log looked like when last seen.
#[derive(Debug, Default)]
pub struct LeaderAppendOnly {
    views: BTreeMap<u64, View>,
}

impl LeaderAppendOnly {
    /// Checks the in-memory log of peer `id`, which is leader in `term`, against what it
    /// was when last seen as leader of that term, and remembers it.
    pub fn observe_leader(&mut self, id: u64, term: u64, log: &dyn LogView) -> Check {
        let last_index = log.last_index();
        let last_term = log.term_at(last_index).unwrap_or(0);
        if let Some(v) = self.views.get(&id).copied().filter(|v| v.term == term) {
            if last_index < v.last_index {
                return Err(Violation::new(
                    PROPERTY,
                    format!(
                        "leader {id} of term {term}: last index went from {} down to {last_index}",
                        v.last_index
                    ),
                ));
            }
            if v.last_index >= log.first_index().saturating_sub(1) {
                let now = log.term_at(v.last_index);
                if now != Some(v.last_term) {
                    return Err(Violation::new(
                        PROPERTY,
                        format!(
                            "leader {id} of term {term}: entry {} had term {} and now has {now:?}",
                            v.last_index, v.last_term
                        ),
                    ));
                }
            }
        }
        self.views.insert(
            id,
            View {
                term,
                last_index,
                last_term,
            },
        );
        Ok(())
    }

    /// Checks a write to the durable log of peer `id`, leader of `term` both before and
    /// after the inputs that produced the write. `overwritten` are the durable entries at
    /// indexes the write replaces or drops, as (index, term, fingerprint); `written` the new
    /// ones in the same form. An entry may only be replaced by an identical one.
    pub fn observe_persist(
        &mut self,
        id: u64,
        term: u64,
        overwritten: &[(u64, u64, u64)],
        written: &[(u64, u64, u64)],
    ) -> Check {
        for &(index, old_term, old_fp) in overwritten {
            let same = written
                .iter()
                .any(|&(i, t, fp)| i == index && t == old_term && fp == old_fp);
            if !same {
                return Err(Violation::new(
                    PROPERTY,
                    format!(
                        "leader {id} of term {term} replaced or dropped its durable entry {index} \
                         (term {old_term})"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Peer `id` is no longer leader (it stepped down or crashed).
    pub fn forget(&mut self, id: u64) {
        self.views.remove(&id);
    }
}
