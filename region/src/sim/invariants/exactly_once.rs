//! Exactly-once (client sessions, Raft dissertation §6.3): a command that a client retried
//! (the same client id and sequence, possibly appended to the log several times) takes
//! effect once, at one log index, on every peer.
//!
//! The state machine reports each time a command really takes effect (the session table
//! ran it, as opposed to answering a duplicate). The first index it took effect at is
//! recorded; taking effect at another index — on any peer — is a violation.

use std::collections::HashMap;

use super::{Check, Violation};

const PROPERTY: &str = "Exactly-once";

/// Where each (client, sequence) took effect.
#[derive(Debug, Default)]
pub struct ExactlyOnce {
    effects: HashMap<(u64, u64), u64>,
    /// Commands that reached the state machine as duplicates and were not applied again.
    pub duplicates_suppressed: u64,
}

impl ExactlyOnce {
    /// Peer `id` applied command (`client`, `seq`) at log index `index`.
    pub fn observe_effect(&mut self, id: u64, client: u64, seq: u64, index: u64) -> Check {
        match self.effects.insert((client, seq), index) {
            Some(first) if first != index => Err(Violation::new(
                PROPERTY,
                format!(
                    "command (client {client}, seq {seq}) took effect at index {first} and again at \
                     index {index} (peer {id})"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The index where (`client`, `seq`) took effect, if it did.
    pub fn effect_index(&self, client: u64, seq: u64) -> Option<u64> {
        self.effects.get(&(client, seq)).copied()
    }

    /// Distinct commands that took effect.
    pub fn commands(&self) -> usize {
        self.effects.len()
    }
}
