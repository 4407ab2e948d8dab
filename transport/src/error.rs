//! What can go wrong, as values the caller can act on.

use flotilla_common::codec::CodecError;
use flotilla_common::RaftEnvelope;

/// A frame (or the payload inside one) is not acceptable. The connection that carried it
/// is closed with this as the logged reason.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame does not start with the protocol's magic number.
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// The peer speaks a protocol version this node does not.
    #[error("unsupported protocol version {0}")]
    BadVersion(u16),
    /// The announced payload is bigger than this connection accepts.
    #[error("frame of {len} bytes is over the bound of {max} bytes")]
    TooLong {
        /// Announced payload length.
        len: usize,
        /// The bound in force.
        max: usize,
    },
    /// The payload's checksum does not match the header.
    #[error("checksum mismatch: header {expected:#010x}, payload {actual:#010x}")]
    Checksum {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the received payload.
        actual: u32,
    },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// A message's length prefix runs past the end of its frame.
    #[error("message length {len} runs past the frame ({left} bytes left)")]
    BadMessageLength {
        /// The announced length.
        len: usize,
        /// Bytes left in the frame.
        left: usize,
    },
    /// The payload decoded but breaks the protocol (e.g. an envelope the sender may not
    /// send).
    #[error("bad payload: {0}")]
    Payload(String),
    /// The payload's bytes do not decode.
    #[error("payload does not decode: {0}")]
    Decode(#[from] CodecError),
}

/// A handshake failed; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer belongs to another cluster.
    #[error("wrong cluster id {got} (this cluster is {expected})")]
    WrongCluster {
        /// This node's cluster id.
        expected: u64,
        /// The id the peer sent.
        got: u64,
    },
    /// The peer did not present the configured shared secret.
    #[error("wrong or missing shared secret")]
    WrongSecret,
    /// The peer claims node id 0 or this node's own id.
    #[error("invalid sender node id {0}")]
    BadNodeId(u64),
    /// The node that answered is not the one this address was configured for.
    #[error("expected node {expected} at this address, found node {got}")]
    WrongPeer {
        /// The node id this side meant to reach.
        expected: u64,
        /// The node id the peer announced.
        got: u64,
    },
    /// The peer refused this node's handshake.
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The handshake did not complete in time.
    #[error("handshake timed out")]
    Timeout,
    /// The handshake frame itself was bad.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// `send` did not take the envelope. The envelope is handed back so the caller can retry
/// or drop it; raft itself tolerates the loss.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer's queue is at its bound (a slow or unreachable peer). Counted as a drop.
    #[error("queue to node {} is full", .0.to_node)]
    Full(Box<RaftEnvelope>),
    /// No address is known for the envelope's `to_node`.
    #[error("unknown node {}", .0.to_node)]
    UnknownPeer(Box<RaftEnvelope>),
    /// `snapshots_in_flight_max` snapshot streams are already running.
    #[error("too many snapshots in flight")]
    SnapshotsBusy(Box<RaftEnvelope>),
}

impl SendError {
    /// The envelope that was not sent.
    pub fn into_envelope(self) -> RaftEnvelope {
        match self {
            SendError::Full(e) | SendError::UnknownPeer(e) | SendError::SnapshotsBusy(e) => *e,
        }
    }
}

/// Starting or configuring the transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration's limits do not fit together.
    #[error("invalid transport config: {0}")]
    Config(String),
    /// Binding the listener or building the runtime failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
