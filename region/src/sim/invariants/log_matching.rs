//! Log Matching (Raft §5.3, Figure 3): if two logs contain an entry with the same index
//! and term, the logs are identical in all entries up through that index.
//!
//! Checked on durable logs, incrementally: every entry written to any peer's storage is
//! reported with the term of the entry before it. By induction on the index, Log Matching
//! holds for all durable logs exactly when each (index, term) pair always comes with the same
//! content and the same previous term — so one table keyed by (index, term) checks every
//! pair of peers, past and present, at the cost of one lookup per written entry.

use std::collections::HashMap;

use super::{Check, Violation};

const PROPERTY: &str = "Log Matching";

/// What was first seen at each (index, term).
#[derive(Debug, Default)]
pub struct LogMatching {
    /// (index, term) → (previous entry's term, content fingerprint, first peer seen with it).
    seen: HashMap<(u64, u64), (u64, u64, u64)>,
}

impl LogMatching {
    /// Peer `id` wrote entries to its durable log: `prev_term` is the term of the entry
    /// just before the first one, then each entry as (index, term, fingerprint), in order.
    pub fn observe_append(
        &mut self,
        id: u64,
        prev_term: u64,
        entries: &[(u64, u64, u64)],
    ) -> Check {
        let mut prev_term = prev_term;
        let mut prev_index = entries.first().map_or(0, |e| e.0.saturating_sub(1));
        for &(index, term, fp) in entries {
            if index != prev_index + 1 {
                return Err(Violation::new(
                    PROPERTY,
                    format!("peer {id} wrote entry {index} right after entry {prev_index}"),
                ));
            }
            if term < prev_term {
                return Err(Violation::new(
                    PROPERTY,
                    format!("peer {id}: entry {index} has term {term} below its predecessor's {prev_term}"),
                ));
            }
            match self.seen.get(&(index, term)) {
                Some(&(p, f, other)) if p != prev_term || f != fp => {
                    return Err(Violation::new(
                        PROPERTY,
                        format!(
                            "entry ({index}, term {term}) differs between peers {other} and {id}: \
                             previous term {p} vs {prev_term}, content {f:#x} vs {fp:#x}"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    self.seen.insert((index, term), (prev_term, fp, id));
                }
            }
            prev_term = term;
            prev_index = index;
        }
        Ok(())
    }

    /// Distinct (index, term) pairs seen.
    pub fn distinct_entries(&self) -> usize {
        self.seen.len()
    }
}
