//! Client sessions: exactly-once application of retried commands.
//!
//! Every command carries (client id, sequence). The state machine remembers, per client,
//! the last sequence it applied and that command's answer; a retry of that sequence gets
//! the stored answer without being applied again, and an older sequence is refused. The
//! table is part of the state machine, so it travels in snapshots.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use bytes::Bytes;
use flotilla_common::codec::{self, CodecError};
use serde::{Deserialize, Serialize};

/// A client command as stored in a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The client's id (unique per client process).
    pub client_id: u64,
    /// The client's sequence number for this command; grows by one per new command.
    pub seq: u64,
    /// The operation, opaque here.
    pub payload: Bytes,
}

impl Command {
    /// Encodes the command for a log entry.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of integers and bytes always encodes; an error would be a codec bug.
        codec::encode(self).expect("a command always encodes")
    }

    /// Decodes a command from a log entry.
    pub fn decode(bytes: &[u8]) -> Result<Command, CodecError> {
        codec::decode(bytes)
    }
}

/// What applying a command through the session table did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    /// A new command: it was applied and this is its answer.
    Applied(Bytes),
    /// A retry of the last command: not applied again; the stored answer.
    Duplicate(Bytes),
    /// A sequence older than the last one: the client already moved on; nothing applied.
    Stale,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    answer: Bytes,
}

/// The last applied sequence and answer of every client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTable {
    sessions: HashMap<u64, Session>,
}

impl SessionTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the command (`apply` runs only for a new sequence) and records its answer.
    pub fn apply(
        &mut self,
        client_id: u64,
        seq: u64,
        apply: impl FnOnce() -> Bytes,
    ) -> SessionOutcome {
        // One lookup: the entry is both checked and updated.
        let entry = self.sessions.entry(client_id);
        if let Entry::Occupied(e) = &entry {
            let s = e.get();
            if seq == s.last_seq {
                return SessionOutcome::Duplicate(s.answer.clone());
            }
            if seq < s.last_seq {
                return SessionOutcome::Stale;
            }
        }
        let answer = apply();
        entry.insert_entry(Session {
            last_seq: seq,
            answer: answer.clone(),
        });
        SessionOutcome::Applied(answer)
    }

    /// Reinstalls a client's session loaded from durable state (after a restart).
    pub fn restore(&mut self, client_id: u64, last_seq: u64, answer: Bytes) {
        self.sessions
            .insert(client_id, Session { last_seq, answer });
    }

    /// The last sequence and answer of `client_id`, for persisting next to the data.
    pub fn get(&self, client_id: u64) -> Option<(u64, Bytes)> {
        self.sessions
            .get(&client_id)
            .map(|s| (s.last_seq, s.answer.clone()))
    }

    /// Every client's (id, last sequence, answer), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, Bytes)> + '_ {
        self.sessions
            .iter()
            .map(|(&c, s)| (c, s.last_seq, s.answer.clone()))
    }

    /// The last sequence applied for `client_id`.
    pub fn last_seq(&self, client_id: u64) -> Option<u64> {
        self.sessions.get(&client_id).map(|s| s.last_seq)
    }

    /// Clients with a session.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no client has a session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_is_applied_once_and_old_sequence_is_stale() {
        let mut t = SessionTable::new();
        let mut applied = 0;
        let mut run = |t: &mut SessionTable, seq| {
            t.apply(9, seq, || {
                applied += 1;
                Bytes::from(format!("ok{seq}"))
            })
        };
        assert_eq!(run(&mut t, 1), SessionOutcome::Applied(Bytes::from("ok1")));
        assert_eq!(
            run(&mut t, 1),
            SessionOutcome::Duplicate(Bytes::from("ok1"))
        );
        assert_eq!(run(&mut t, 2), SessionOutcome::Applied(Bytes::from("ok2")));
        assert_eq!(run(&mut t, 1), SessionOutcome::Stale);
        assert_eq!(applied, 2);
        let back: SessionTable = codec::decode(&codec::encode(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }
}
