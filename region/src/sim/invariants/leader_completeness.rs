//! Leader Completeness (Raft §5.4, Figure 3): if a log entry is committed in a given term,
//! that entry will be present in the logs of the leaders for all higher-numbered terms.
//!
//! The checker learns committed entries as peers report them: a leader of term T whose
//! commit index covers an entry committed it in term T at the latest; a follower of term
//! T that applies an entry learned of its commitment from a leader of term T or lower. The
//! smallest such term is kept per index (a safe upper bound of the real commit term, so
//! the check never fails wrongly). Every leader of a higher term must then hold the entry.
//! Leaders are checked incrementally: what a leader's log held once it keeps (Leader
//! Append-Only checks that), so each leader only checks the newly committed indexes.

use std::collections::BTreeMap;

use super::{Check, LogView, Violation};

const PROPERTY: &str = "Leader Completeness";

#[derive(Debug, Clone, Copy)]
struct Committed {
    term: u64,
    commit_term: u64,
}

/// The committed entries known so far and how far each leader was checked.
#[derive(Debug, Default)]
pub struct LeaderCompleteness {
    /// Committed entries from index `base + 1` on.
    committed: Vec<Committed>,
    /// Peer → (term it leads, highest index checked against its log).
    checked: BTreeMap<u64, (u64, u64)>,
}

impl LeaderCompleteness {
    /// The highest index known to be committed.
    pub fn committed_index(&self) -> u64 {
        self.committed.len() as u64
    }

    /// The term of the committed entry at `index`, if known.
    pub fn committed_term(&self, index: u64) -> Option<u64> {
        let i = index.checked_sub(1)?;
        self.committed.get(i as usize).map(|c| c.term)
    }

    /// Entries up to `commit` are committed, as known by a peer in term `observer_term`
    /// whose log is `log`. Indexes the log no longer holds (compacted) are skipped if they
    /// are new; they will be learned from another peer.
    pub fn observe_commit(&mut self, observer_term: u64, commit: u64, log: &dyn LogView) -> Check {
        // Only new indexes are added: a known index keeps the commit term it was first
        // seen with, which is an upper bound and so stays safe.
        let first = log.first_index();
        for index in self.committed.len() as u64 + 1..=commit {
            if index < first {
                // Compacted here and unknown so far: cannot extend past a hole.
                break;
            }
            let Some(term) = log.term_at(index) else {
                break;
            };
            self.committed.push(Committed {
                term,
                commit_term: observer_term,
            });
        }
        Ok(())
    }

    /// Records one committed entry seen by a peer of term `observer_term` (for example when
    /// it applies it). Entries must be reported in index order without holes; others are
    /// ignored until their predecessors are known.
    pub fn observe_committed_entry(&mut self, observer_term: u64, index: u64, term: u64) {
        let known = self.committed.len() as u64;
        if index <= known {
            let c = &mut self.committed[index as usize - 1];
            c.commit_term = c.commit_term.min(observer_term);
        } else if index == known + 1 {
            self.committed.push(Committed {
                term,
                commit_term: observer_term,
            });
        }
    }

    /// Checks that peer `id`, leader of `term` with log `log`, holds every entry committed
    /// in an earlier term.
    pub fn observe_leader(&mut self, id: u64, term: u64, log: &dyn LogView) -> Check {
        let from = match self.checked.get(&id) {
            Some(&(t, upto)) if t == term => upto + 1,
            _ => 1,
        };
        let first = log.first_index();
        let upto = self.committed.len() as u64;
        for index in from.max(first)..=upto {
            let c = self.committed[index as usize - 1];
            if c.commit_term >= term {
                continue;
            }
            let have = log.term_at(index);
            if have != Some(c.term) {
                return Err(Violation::new(
                    PROPERTY,
                    format!(
                        "leader {id} of term {term} lacks entry {index} (term {}) committed by term {}: \
                         its log has {have:?} there",
                        c.term, c.commit_term
                    ),
                ));
            }
        }
        self.checked.insert(id, (term, upto));
        Ok(())
    }

    /// Peer `id` is no longer leader.
    pub fn forget(&mut self, id: u64) {
        self.checked.remove(&id);
    }
}
