//! State Machine Safety (Raft §5.4.3, Figure 3): if a server has applied a log entry at a
//! given index to its state machine, no other server will ever apply a different log entry
//! for the same index.
//!
//! Every applied entry is reported with its term and content fingerprint, and with a
//! digest of the state machine after it (a chain over all applied entries). A snapshot
//! installed or restored at an index must carry the digest recorded for that index, so a
//! snapshot that does not match the log it replaces is caught too.

use super::{Check, Violation};

const PROPERTY: &str = "State Machine Safety";

#[derive(Debug, Clone, Copy)]
struct Applied {
    term: u64,
    fingerprint: u64,
    digest: u64,
    by: u64,
}

/// The entry applied at each index.
#[derive(Debug, Default)]
pub struct StateMachineSafety {
    /// `applied[i]` is the entry applied at index `i + 1`.
    applied: Vec<Option<Applied>>,
    /// Total number of (peer, entry) applications seen.
    pub applications: u64,
}

impl StateMachineSafety {
    /// Peer `id` applied the entry (`index`, `term`) with content `fingerprint`; its state
    /// digest afterwards is `digest`.
    pub fn observe_apply(
        &mut self,
        id: u64,
        index: u64,
        term: u64,
        fingerprint: u64,
        digest: u64,
    ) -> Check {
        self.applications += 1;
        let slot = index.checked_sub(1).ok_or_else(|| {
            Violation::new(PROPERTY, format!("peer {id} applied an entry at index 0"))
        })? as usize;
        if self.applied.len() <= slot {
            self.applied.resize(slot + 1, None);
        }
        match self.applied[slot] {
            None => {
                self.applied[slot] = Some(Applied { term, fingerprint, digest, by: id });
                Ok(())
            }
            Some(a) if a.term != term || a.fingerprint != fingerprint => Err(Violation::new(
                PROPERTY,
                format!(
                    "at index {index} peer {} applied (term {}, {:#x}) and peer {id} applied (term {term}, {fingerprint:#x})",
                    a.by, a.term, a.fingerprint
                ),
            )),
            Some(a) if a.digest != digest => Err(Violation::new(
                PROPERTY,
                format!(
                    "after index {index} peer {} has state digest {:#x} and peer {id} has {digest:#x}",
                    a.by, a.digest
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Peer `id` holds a state machine image of index `index` (from a snapshot) with
    /// digest `digest`.
    pub fn observe_state(&mut self, id: u64, index: u64, digest: u64) -> Check {
        let Some(slot) = index.checked_sub(1) else {
            return Ok(());
        };
        match self.applied.get(slot as usize).copied().flatten() {
            Some(a) if a.digest != digest => Err(Violation::new(
                PROPERTY,
                format!(
                    "peer {id} holds a snapshot at index {index} with digest {digest:#x}, but peer {} \
                     reached {:#x} there",
                    a.by, a.digest
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The highest index any peer applied.
    pub fn applied_index(&self) -> u64 {
        self.applied.len() as u64
    }
}
