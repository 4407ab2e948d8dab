//! Election Safety (Raft §5.2, Figure 3): at most one leader can be elected in a given term.
//!
//! Every time the simulation sees a peer in the leader role (after each Ready it handles
//! and after every step), it reports (term, peer). Two different peers for one term is a
//! violation, whenever they were seen.

use std::collections::BTreeMap;

use super::{Check, Violation};

const PROPERTY: &str = "Election Safety";

/// The leader seen in each term.
#[derive(Debug, Default)]
pub struct ElectionSafety {
    leaders: BTreeMap<u64, u64>,
}

impl ElectionSafety {
    /// Records that `id` is leader in `term`.
    pub fn observe_leader(&mut self, term: u64, id: u64) -> Check {
        match self.leaders.insert(term, id) {
            Some(other) if other != id => Err(Violation::new(
                PROPERTY,
                format!("peers {other} and {id} were both leader in term {term}"),
            )),
            _ => Ok(()),
        }
    }

    /// Terms in which a leader was seen: the number of elections won.
    pub fn elections(&self) -> usize {
        self.leaders.len()
    }

    /// The leader seen in `term`, if any.
    pub fn leader_of(&self, term: u64) -> Option<u64> {
        self.leaders.get(&term).copied()
    }
}
