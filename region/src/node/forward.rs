//! Requests for a key whose region has no replica on this node, forwarded to a node that
//! has one.
//!
//! Once the balancer spreads regions over more nodes than each region has replicas, a
//! node no longer holds every region, yet a client (a plain Redis client above all) may
//! send any key to any node. [`NodeHandle`](super::NodeHandle)'s writes, reads and scans
//! therefore look up the key's region in the cluster view when this node's routing table
//! has none, and send the request to the node leading it (or, leader unknown, to a node
//! with a replica) as a [`NodeMessage::Forward`](super::NodeMessage::Forward). That node
//! serves it as a request of its own — never forwarding it again — and answers with a
//! [`NodeMessage::ForwardReply`](super::NodeMessage::ForwardReply) carrying the outcome.
//! A write keeps its client session, so a retry of a forwarded write applies once, as any
//! other.
//!
//! The waiting side is a table of pending requests by id ([`Forwarder`]); an answer for an
//! id no longer waited for (its caller timed out) is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::command::{KvCommand, KvResponse};
use super::error::NodeError;
use super::node_message::NodeMessage;
use super::NodeHandle;

/// A request forwarded to a node holding the key's region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// A write, with the client's session.
    Write {
        /// The command.
        cmd: KvCommand,
        /// The client's (id, sequence).
        session: (u64, u64),
    },
    /// A linearizable read of one key.
    Get {
        /// The key.
        key: Bytes,
    },
    /// A scan within the region holding `start`.
    Scan {
        /// First key.
        start: Bytes,
        /// End key (empty: the region's end).
        end: Bytes,
        /// Pairs at most.
        limit: usize,
    },
}

/// The answer to a [`ForwardRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardAnswer {
    /// What a write did.
    Written(KvResponse),
    /// The value read.
    Value(Option<Bytes>),
    /// The pairs scanned, and up to where.
    Page {
        /// The pairs.
        pairs: Vec<(Bytes, Bytes)>,
        /// The end of the range the page covers (see [`super::ScanPage`]).
        covered_end: Bytes,
    },
}

impl ForwardAnswer {
    /// Which answer it is, for an error message.
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardAnswer::Written(_) => "written",
            ForwardAnswer::Value(_) => "value",
            ForwardAnswer::Page { .. } => "page",
        }
    }
}

/// Forwarded requests this node waits for, at most; more are refused at once
/// ([`NodeError::Dropped`]), so a node cut off from the others cannot pile them up.
pub const FORWARDS_PENDING_MAX: usize = 65_536;

type Waiter = oneshot::Sender<Result<ForwardAnswer, NodeError>>;

/// The requests this node forwarded and waits for, by id.
#[derive(Debug, Default)]
pub struct Forwarder {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Waiter>>,
}

impl Forwarder {
    /// Registers a request; answers its id and where its answer will arrive.
    pub fn register(
        &self,
    ) -> Result<(u64, oneshot::Receiver<Result<ForwardAnswer, NodeError>>), NodeError> {
        let mut pending = self.pending.lock();
        if pending.len() >= FORWARDS_PENDING_MAX {
            return Err(NodeError::Dropped(
                "too many forwarded requests waiting".into(),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        pending.insert(id, tx);
        Ok((id, rx))
    }

    /// Forgets a request nobody waits for any more.
    pub fn forget(&self, id: u64) {
        self.pending.lock().remove(&id);
    }

    /// Hands the answer of request `id` to its caller (if it still waits).
    pub fn complete(&self, id: u64, answer: Result<ForwardAnswer, NodeError>) {
        if let Some(tx) = self.pending.lock().remove(&id) {
            let _ = tx.send(answer);
        }
    }

    /// Requests waiting for their answer.
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }
}

/// Serves the requests other nodes forward to this one, until the channel closes: each is
/// submitted at once, in arrival order (so a connection's pipelined writes keep their
/// order), as a request of this node that is never forwarded again, and answered when done.
/// Runs on a `LocalSet` (the balancer's thread).
pub(crate) async fn serve(
    handle: NodeHandle,
    mut rx: tokio::sync::mpsc::Receiver<(u64, u64, ForwardRequest)>,
) {
    while let Some((from, id, request)) = rx.recv().await {
        let answer: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<ForwardAnswer, NodeError>>>,
        > = match request {
            ForwardRequest::Write { cmd, session } => {
                let f = handle.submit_write_here(cmd, session);
                Box::pin(async move { f.await.map(ForwardAnswer::Written) })
            }
            ForwardRequest::Get { key } => {
                let f = handle.submit_get_here(key);
                Box::pin(async move { f.await.map(ForwardAnswer::Value) })
            }
            ForwardRequest::Scan { start, end, limit } => {
                let h = handle.clone();
                Box::pin(async move {
                    h.scan_page_here(start, end, limit)
                        .await
                        .map(|p| ForwardAnswer::Page {
                            pairs: p.pairs,
                            covered_end: p.covered_end,
                        })
                })
            }
        };
        let view = handle.cluster().clone();
        tokio::task::spawn_local(async move {
            let reply = NodeMessage::ForwardReply {
                id,
                answer: answer.await,
            };
            if let Err(e) = view.send(from, &reply) {
                tracing::debug!(to = from, "forwarded request's answer not sent: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_reaches_its_caller_once_and_a_late_one_is_dropped() {
        let f = Forwarder::default();
        let (a, rx_a) = f.register().unwrap();
        let (b, rx_b) = f.register().unwrap();
        assert_ne!(a, b);
        assert_eq!(f.pending(), 2);
        f.complete(b, Ok(ForwardAnswer::Value(None)));
        assert_eq!(rx_b.await.unwrap(), Ok(ForwardAnswer::Value(None)));
        f.complete(b, Err(NodeError::Timeout)); // twice: nobody waits, nothing happens
        f.forget(a);
        f.complete(a, Ok(ForwardAnswer::Value(None)));
        assert!(rx_a.await.is_err(), "a forgotten request gets no answer");
        assert_eq!(f.pending(), 0);
    }
}
