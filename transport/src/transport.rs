//! The interface the node programs against, shared by the TCP and in-process transports.

use crate::error::SendError;
use crate::metrics::SnapshotStreamStats;
use flotilla_common::{MessageKind, RaftEnvelope};
use std::net::SocketAddr;

/// Moves raft envelopes to other nodes. Every method returns at once: sending never
/// blocks on the network, and a full queue is an error the caller may ignore (raft
/// retries) or retry.
pub trait Transport: Send + Sync {
    /// This node's id.
    fn node_id(&self) -> u64;

    /// Makes `node_id` reachable at `addr` (replacing a previous address; the next
    /// connection uses the new one). The connection is opened lazily on first send.
    fn add_peer(&self, node_id: u64, addr: SocketAddr);

    /// Forgets `node_id`: its queue is dropped and its connection closed.
    fn remove_peer(&self, node_id: u64);

    /// Whether `node_id` is a node this transport can reach (added and not removed):
    /// membership changes refuse to place a replica on a node nobody can send to.
    fn knows(&self, node_id: u64) -> bool;

    /// Queues `envelope` for `envelope.to_node`. Messages to one node, from all regions,
    /// leave in order, batched into as few frames as the queue allows. A message of kind
    /// `Snapshot` goes through [`Transport::send_snapshot`].
    fn send(&self, envelope: RaftEnvelope) -> Result<(), SendError>;

    /// Streams `envelope` (a `Snapshot` message whose `snapshot.data` holds the image) in
    /// chunks on its own connection, so it never delays other messages. The outcome comes
    /// back as [`PeerEvent::SnapshotStatus`].
    fn send_snapshot(&self, envelope: RaftEnvelope) -> Result<(), SendError>;

    /// Sends many envelopes, in order per destination, as [`Transport::send`] would each
    /// (snapshots as [`Transport::send_snapshot`]); returns the errors of those that were
    /// not taken. An implementation may wake each destination's sender once for the whole
    /// batch instead of once per envelope.
    fn send_batch(&self, envelopes: Vec<RaftEnvelope>) -> Vec<SendError> {
        envelopes
            .into_iter()
            .filter_map(|e| {
                if e.message.kind == MessageKind::Snapshot {
                    self.send_snapshot(e).err()
                } else {
                    self.send(e).err()
                }
            })
            .collect()
    }

    /// The snapshot streams under way now. An implementation that delivers a snapshot in
    /// one step (the in-memory network) has none to report.
    fn snapshot_streams(&self) -> SnapshotStreamStats {
        SnapshotStreamStats::default()
    }
}

/// What the transport hands to the node, in one channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Envelopes received from `from_node`, in the order that node sent them. A received
    /// snapshot arrives as a one-envelope batch with its data reassembled.
    Messages {
        /// The sending node (as authenticated by the handshake).
        from_node: u64,
        /// The envelopes, each addressed to this node.
        envelopes: Vec<RaftEnvelope>,
    },
    /// Something happened to a peer or a snapshot this node sent.
    Event(PeerEvent),
}

/// News about a peer, for the raft layer (raft-rs's `report_unreachable` and
/// `report_snapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// A raft connection to `node_id` was established.
    Connected {
        /// The peer node.
        node_id: u64,
    },
    /// `node_id` could not be reached, or its connection broke; queued messages to it were
    /// dropped. Regions should report their peers on that node unreachable.
    Unreachable {
        /// The peer node.
        node_id: u64,
    },
    /// A snapshot sent with [`Transport::send_snapshot`] finished or failed.
    SnapshotStatus {
        /// The node it was sent to.
        to_node: u64,
        /// Its region.
        region_id: u64,
        /// The raft peer it was for (the message's `to`).
        to_peer: u64,
        /// The outcome.
        status: SnapshotStatus,
    },
}

/// The outcome of a snapshot stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotStatus {
    /// The receiver got the whole snapshot and handed it to its node.
    Finished,
    /// The stream failed (refused, broken, timed out); raft should retry later.
    Failure,
}
