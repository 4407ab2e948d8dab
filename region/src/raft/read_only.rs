//! Pending ReadIndex requests on a leader: each waits for a quorum of heartbeat answers
//! that carry its context, which proves this peer was still the leader when the read
//! arrived.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use flotilla_common::Message;

/// A read the application can serve once it has applied up to `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    /// The commit index when the read was confirmed.
    pub index: u64,
    /// The context the read was requested with.
    pub request_ctx: Bytes,
}

#[derive(Debug)]
pub(crate) struct ReadIndexStatus {
    /// The request: `from` is the peer to answer (this peer for local reads).
    pub req: Message,
    pub index: u64,
    pub acks: HashSet<u64>,
}

/// Reads waiting for their heartbeat quorum, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    pending: HashMap<Bytes, ReadIndexStatus>,
    queue: VecDeque<Bytes>,
}

/// Pending reads on one leader, at most: more are refused rather than queued without bound.
pub(crate) const READ_INDEX_PENDING_MAX: usize = 65_536;

impl ReadOnly {
    /// Queues a read at `index`; false if the context is already pending or the queue is
    /// full.
    pub fn add_request(&mut self, index: u64, req: Message, self_id: u64) -> bool {
        let ctx = req.context.clone();
        if self.pending.contains_key(&ctx) || self.queue.len() >= READ_INDEX_PENDING_MAX {
            return false;
        }
        let acks = HashSet::from([self_id]);
        self.pending
            .insert(ctx.clone(), ReadIndexStatus { req, index, acks });
        self.queue.push_back(ctx);
        true
    }

    /// Records a heartbeat answer carrying `ctx`; returns the acks so far.
    pub fn recv_ack(&mut self, id: u64, ctx: &[u8]) -> Option<&HashSet<u64>> {
        let status = self.pending.get_mut(ctx)?;
        status.acks.insert(id);
        Some(&status.acks)
    }

    /// Releases the read with `ctx` and every read queued before it (confirming a later
    /// read confirms the earlier ones too).
    pub fn advance(&mut self, ctx: &[u8]) -> Vec<ReadIndexStatus> {
        let Some(pos) = self.queue.iter().position(|c| c.as_ref() == ctx) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(pos + 1);
        for c in self.queue.drain(..=pos) {
            if let Some(s) = self.pending.remove(&c) {
                out.push(s);
            }
        }
        out
    }

    /// The context of the newest pending read.
    pub fn last_pending_ctx(&self) -> Option<Bytes> {
        self.queue.back().cloned()
    }

    /// Drops everything (leadership changed: the reads must be retried).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.queue.clear();
    }

    /// Reads waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}
