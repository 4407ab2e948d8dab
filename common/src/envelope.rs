//! The unit nodes exchange: a raft message of one region, addressed node to node.
//!
//! A [`Message`]'s `from`/`to` are peer ids inside one region; a node hosts peers of many
//! regions and shares one connection per other node between all of them, so the transport
//! routes by node and the receiving node routes by `region_id`.

use crate::Message;
use serde::{Deserialize, Serialize};

/// A raft message of one region, travelling from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RaftEnvelope {
    /// The region (raft group) the message belongs to.
    pub region_id: u64,
    /// The sending node.
    pub from_node: u64,
    /// The receiving node.
    pub to_node: u64,
    /// The raft message; its `from` and `to` are peer ids of the region.
    pub message: Message,
}

impl RaftEnvelope {
    /// Wraps `message` of `region_id` for the trip from `from_node` to `to_node`.
    pub fn new(region_id: u64, from_node: u64, to_node: u64, message: Message) -> Self {
        RaftEnvelope {
            region_id,
            from_node,
            to_node,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_stays_small() {
        // Envelopes are moved several times between the codec and the node, by the million
        // per second: a field held inline that most messages leave empty (as the snapshot
        // was, nearly doubling this to 296 bytes) costs throughput. Box rare, large fields.
        assert!(
            std::mem::size_of::<RaftEnvelope>() <= 160,
            "{} bytes",
            std::mem::size_of::<RaftEnvelope>()
        );
    }
}
