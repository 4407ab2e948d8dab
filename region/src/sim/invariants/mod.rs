//! The safety properties the simulation checks, one file per property (as openraft's
//! `tests-turmoil/src/invariants/`).
//!
//! Each checker keeps only the history it needs and is fed *observations* by the
//! simulation: a leader seen in a term, entries written to a peer's durable log, an entry
//! applied, a read answered. Every observation is checked at once, and the per-step
//! observations run after every simulation step, so a violation is reported at the step
//! that caused it. The checkers know nothing about the simulation, so a test can feed them
//! a hand-built bad history and see them fail.

mod election_safety;
mod exactly_once;
mod leader_append_only;
mod leader_completeness;
mod linearizable_reads;
mod log_matching;
mod state_machine_safety;

pub use election_safety::ElectionSafety;
pub use exactly_once::ExactlyOnce;
pub use leader_append_only::LeaderAppendOnly;
pub use leader_completeness::LeaderCompleteness;
pub use linearizable_reads::{LinearizableReads, ReadToken};
pub use log_matching::LogMatching;
pub use state_machine_safety::StateMachineSafety;

use std::fmt;

/// A broken safety property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The property's name, for example "Election Safety".
    pub property: &'static str,
    /// What was observed.
    pub detail: String,
}

impl Violation {
    /// A violation of `property`.
    pub fn new(property: &'static str, detail: impl Into<String>) -> Self {
        Violation {
            property,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated: {}", self.property, self.detail)
    }
}

impl std::error::Error for Violation {}

/// The result of one check.
pub type Check = Result<(), Violation>;

/// Read access to one peer's log as the checkers need it (in-memory log of a live core).
pub trait LogView {
    /// The first index still in the log (entries below were compacted into a snapshot).
    fn first_index(&self) -> u64;
    /// The last index in the log.
    fn last_index(&self) -> u64;
    /// The term of the entry at `index`, if it is in the log (`first_index - 1` included).
    fn term_at(&self, index: u64) -> Option<u64>;
}

/// A log given as a plain list of entry terms: index `offset + 1 + i` has term `terms[i]`.
/// For tests of the checkers.
#[derive(Debug, Clone, Default)]
pub struct TermLog {
    /// Index of the entry just before `terms[0]` (the compaction boundary).
    pub offset: u64,
    /// Term of the entry at `offset`.
    pub offset_term: u64,
    /// Terms of the entries.
    pub terms: Vec<u64>,
}

impl LogView for TermLog {
    fn first_index(&self) -> u64 {
        self.offset + 1
    }
    fn last_index(&self) -> u64 {
        self.offset + self.terms.len() as u64
    }
    fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        let i = index.checked_sub(self.offset + 1)?;
        self.terms.get(i as usize).copied()
    }
}

/// A 64-bit FNV-1a hash: a stable content fingerprint for entries and state (the standard
/// library's hasher is randomly keyed per process, which would break replay).
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate the parts so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Every checker of the simulation.
#[derive(Debug, Default)]
pub struct Invariants {
    /// At most one leader per term.
    pub election_safety: ElectionSafety,
    /// A leader never overwrites or deletes its entries.
    pub leader_append_only: LeaderAppendOnly,
    /// Same index and term means the same log up to there.
    pub log_matching: LogMatching,
    /// A committed entry is in the log of every later leader.
    pub leader_completeness: LeaderCompleteness,
    /// No two peers apply different entries at one index.
    pub state_machine_safety: StateMachineSafety,
    /// Reads see every acknowledged write and nothing uncommitted.
    pub linearizable_reads: LinearizableReads,
    /// No command takes effect twice.
    pub exactly_once: ExactlyOnce,
}
