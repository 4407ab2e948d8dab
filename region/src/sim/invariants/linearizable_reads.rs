//! Linearizable reads (Raft dissertation §6.4): a read answered through ReadIndex or a
//! lease must see every write acknowledged before the read was issued, and nothing that
//! was not committed.
//!
//! The workload writes `(client, seq)` into keys; a key's value is, per client, the last
//! sequence written to it (clients write in sequence order, one at a time, so seeing
//! sequence s of a client means seeing all its earlier writes to that key). When a read is
//! issued, [`LinearizableReads::issue`] captures what must be visible: the last
//! acknowledged sequence of every client on that key. When the read is answered, the answer
//! must reach those sequences, and each sequence in it must have taken effect at an index
//! no higher than the index the answering peer had applied.

use std::collections::BTreeMap;

use super::{Check, Violation};

const PROPERTY: &str = "Linearizable reads";

/// What a read must see: captured when it is issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadToken {
    /// The key read.
    pub key: u64,
    /// Client → last sequence acknowledged on `key` before the read was issued.
    pub must_see: BTreeMap<u64, u64>,
}

/// Acknowledged writes, per key and client.
#[derive(Debug, Default)]
pub struct LinearizableReads {
    acked: BTreeMap<u64, BTreeMap<u64, u64>>,
    /// Reads checked.
    pub reads_checked: u64,
}

impl LinearizableReads {
    /// The write (`client`, `seq`) to `key` was acknowledged to its client.
    pub fn observe_ack(&mut self, key: u64, client: u64, seq: u64) {
        let last = self
            .acked
            .entry(key)
            .or_default()
            .entry(client)
            .or_insert(0);
        *last = (*last).max(seq);
    }

    /// A read of `key` is issued now.
    pub fn issue(&self, key: u64) -> ReadToken {
        ReadToken {
            key,
            must_see: self.acked.get(&key).cloned().unwrap_or_default(),
        }
    }

    /// Peer `id` answered the read `token` with `value` (client → last sequence) from its
    /// state machine at applied index `applied`, for read index `read_index`. `effect_index`
    /// tells where a command took effect (None: it never did).
    pub fn observe_answer(
        &mut self,
        id: u64,
        token: &ReadToken,
        read_index: u64,
        applied: u64,
        value: &BTreeMap<u64, u64>,
        effect_index: impl Fn(u64, u64) -> Option<u64>,
    ) -> Check {
        self.reads_checked += 1;
        if applied < read_index {
            return Err(Violation::new(
                PROPERTY,
                format!("peer {id} answered a read at applied {applied} below its read index {read_index}"),
            ));
        }
        for (&client, &seq) in &token.must_see {
            let seen = value.get(&client).copied().unwrap_or(0);
            if seen < seq {
                return Err(Violation::new(
                    PROPERTY,
                    format!(
                        "peer {id} answered a read of key {} (read index {read_index}, applied {applied}) \
                         with client {client} at seq {seen}, but seq {seq} was acknowledged before the \
                         read was issued",
                        token.key
                    ),
                ));
            }
        }
        for (&client, &seq) in value {
            match effect_index(client, seq) {
                Some(i) if i <= applied => {}
                other => {
                    return Err(Violation::new(
                        PROPERTY,
                        format!(
                            "peer {id} answered a read of key {} with (client {client}, seq {seq}), which \
                             took effect at {other:?}, not at or below its applied index {applied}",
                            token.key
                        ),
                    ))
                }
            }
        }
        Ok(())
    }
}
