//! Messages between nodes that belong to no region: the cluster layer's gossip (and, later,
//! a balancer's orders). One travels as a raft envelope of kind [`MessageKind::Node`] with
//! `region_id == 0`, its [`NodeMessage`] encoded with the codec in `message.context`, so it
//! shares the connection, batching and handshake of the raft traffic.

use bytes::Bytes;
use flotilla_common::{codec, Message, MessageKind, RaftEnvelope};
use serde::{Deserialize, Serialize};

use super::descriptor::{PeerMeta, RegionEpoch};
use super::directory::NodeEntry;
use super::error::NodeError;
use super::forward::{ForwardAnswer, ForwardRequest};

/// The region id node messages travel under (no region has it).
pub const NODE_MESSAGE_REGION: u64 = 0;

/// A message of the cluster layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeMessage {
    /// What a node knows of the cluster, sent to every other node each gossip interval.
    Gossip(Gossip),
    /// Balancer → the node leading `region_id`: move its replica on node `from` to node
    /// `to` (`NodeHandle::move_replica`), then answer [`NodeMessage::MoveDone`].
    MoveReplica {
        /// The region.
        region_id: u64,
        /// The node whose replica goes away.
        from: u64,
        /// The node that gets one.
        to: u64,
    },
    /// Balancer → the node leading `region_id`: hand the leadership to the replica on `to`.
    TransferLeader {
        /// The region.
        region_id: u64,
        /// The node to lead it.
        to: u64,
    },
    /// Balancer → the node leading `region_id`: remove its replica on `node` (a learner
    /// left behind by a move that died).
    RemoveReplica {
        /// The region.
        region_id: u64,
        /// The node whose replica goes away.
        node: u64,
    },
    /// Balancer → the node leading `region_id`: add a voter on `to` (a learner, promoted
    /// once caught up), then answer [`NodeMessage::MoveDone`]. For a region left with
    /// fewer voters than it should have.
    AddReplica {
        /// The region.
        region_id: u64,
        /// The node that gets a voter.
        to: u64,
    },
    /// A node without a replica of a key's region → a node with one: serve this request
    /// (never forwarding it again) and answer [`NodeMessage::ForwardReply`] with `id`.
    Forward {
        /// The asker's id of the request.
        id: u64,
        /// The request.
        request: ForwardRequest,
    },
    /// The answer to a [`NodeMessage::Forward`].
    ForwardReply {
        /// The asker's id of the request.
        id: u64,
        /// Its outcome.
        answer: Result<ForwardAnswer, NodeError>,
    },
    /// The node that carried out a [`NodeMessage::MoveReplica`] or
    /// [`NodeMessage::AddReplica`] → the balancer that ordered it: it ended, with `error`
    /// if it failed.
    MoveDone {
        /// The region.
        region_id: u64,
        /// Why it failed (`None`: it succeeded).
        error: Option<String>,
    },
}

/// One node's view, gossiped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gossip {
    /// The sender's node directory.
    pub directory: Vec<NodeEntry>,
    /// The regions the sender leads.
    pub regions: Vec<RegionSummary>,
    /// Replicas on the sender.
    pub replicas: u64,
    /// Regions the sender leads.
    pub leaders: u64,
    /// Replica moves the sender is carrying out for the balancer.
    pub moves: u64,
    /// Snapshot streams the sender is sending or receiving.
    pub snapshots: u64,
}

/// A region as the cluster layer knows it (from its leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSummary {
    /// The region.
    pub id: u64,
    /// First key.
    pub start_key: Bytes,
    /// End key (empty: unbounded).
    pub end_key: Bytes,
    /// Its epoch.
    pub epoch: RegionEpoch,
    /// Its replicas, with their roles and nodes.
    pub peers: Vec<PeerMeta>,
    /// The node of its leader, if known.
    pub leader_node: Option<u64>,
    /// The term of that leader (0: unknown).
    pub term: u64,
}

impl RegionSummary {
    /// Whether `key` lies in the region's range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_ref() && (self.end_key.is_empty() || key < self.end_key.as_ref())
    }

    /// Whether the ranges of `self` and `other` share a key.
    pub fn overlaps(&self, other: &RegionSummary) -> bool {
        let below_end = |k: &Bytes, end: &Bytes| end.is_empty() || k < end;
        below_end(&self.start_key, &other.end_key) && below_end(&other.start_key, &self.end_key)
    }
}

impl NodeMessage {
    /// The message as it travels from `from_node` to `to_node`.
    pub fn to_envelope(
        &self,
        from_node: u64,
        to_node: u64,
    ) -> Result<RaftEnvelope, codec::CodecError> {
        let mut m = Message::new(MessageKind::Node, 0, 0, 0);
        m.context = Bytes::from(codec::encode(self)?);
        Ok(RaftEnvelope::new(
            NODE_MESSAGE_REGION,
            from_node,
            to_node,
            m,
        ))
    }

    /// The message an envelope of kind [`MessageKind::Node`] carries.
    pub fn from_envelope(e: &RaftEnvelope) -> Result<NodeMessage, codec::CodecError> {
        codec::decode(&e.message.context)
    }
}

/// Whether an envelope carries a node message (for the cluster component, not the store).
pub fn is_node_message(e: &RaftEnvelope) -> bool {
    e.message.kind == MessageKind::Node
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::directory::NodeAddresses;
    use crate::node::PeerRole;

    #[test]
    fn a_node_message_round_trips_through_an_envelope() {
        let g = NodeMessage::Gossip(Gossip {
            directory: vec![NodeEntry::new(3, NodeAddresses::default())],
            regions: vec![RegionSummary {
                id: 9,
                start_key: Bytes::from_static(b"a"),
                end_key: Bytes::new(),
                epoch: RegionEpoch {
                    conf_ver: 2,
                    version: 3,
                },
                peers: vec![PeerMeta {
                    peer_id: 9 << 16 | 3,
                    node_id: 3,
                    role: PeerRole::Learner,
                }],
                leader_node: Some(3),
                term: 7,
            }],
            replicas: 4,
            leaders: 1,
            moves: 0,
            snapshots: 0,
        });
        let env = g.to_envelope(3, 1).unwrap();
        assert!(is_node_message(&env));
        assert_eq!((env.region_id, env.from_node, env.to_node), (0, 3, 1));
        // Through the transport's own envelope encoding, too.
        let mut buf = Vec::new();
        codec::encode_envelope_into(&env, &mut buf).unwrap();
        let back = codec::decode_envelope(&buf).unwrap();
        assert_eq!(NodeMessage::from_envelope(&back).unwrap(), g);
    }

    #[test]
    fn ranges_overlap_and_contain() {
        let r = |s: &'static [u8], e: &'static [u8]| RegionSummary {
            id: 1,
            start_key: Bytes::from_static(s),
            end_key: Bytes::from_static(e),
            epoch: RegionEpoch::default(),
            peers: vec![],
            leader_node: None,
            term: 0,
        };
        assert!(r(b"", b"").contains(b"zz"));
        assert!(!r(b"b", b"c").contains(b"c"));
        assert!(r(b"b", b"c").contains(b"b"));
        assert!(r(b"a", b"c").overlaps(&r(b"b", b"")));
        assert!(!r(b"a", b"b").overlaps(&r(b"b", b"")));
        assert!(r(b"", b"").overlaps(&r(b"x", b"y")));
    }
}
