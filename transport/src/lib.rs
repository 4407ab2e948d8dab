//! Flotilla's transport: one TCP connection per pair of nodes, carrying batched raft
//! messages of all regions in checksummed frames.
//!
//! A node sends [`RaftEnvelope`]s (a region's raft message addressed node to node)
//! through the [`Transport`] trait and reads everything that arrives, received batches and
//! [`PeerEvent`]s alike, from one [`InboundReceiver`]. Two implementations:
//! [`TcpTransport`] (the real one) and [`MemoryNetwork`] / [`MemoryTransport`] (in
//! process, with hooks to drop, delay, duplicate and partition).
//!
//! The loop a node runs, here over the in-process network:
//!
//! ```
//! use flotilla_common::{Message, MessageKind, RaftEnvelope};
//! use flotilla_transport::{Inbound, MemoryNetwork, Transport};
//!
//! let network = MemoryNetwork::new(7);
//! let (a, _a_inbox) = network.join(1, 1024);
//! let (_b, mut b_inbox) = network.join(2, 1024);
//! // Region 10's peer 1 (on node 1) sends a heartbeat to its peer 2 (on node 2).
//! let hb = Message::new(MessageKind::Heartbeat, 1, 2, 5);
//! a.send(RaftEnvelope::new(10, 1, 2, hb.clone())).unwrap();
//! match b_inbox.try_recv().unwrap() {
//!     // The node routes each envelope to its region by `region_id`.
//!     Inbound::Messages { from_node, envelopes } => {
//!         assert_eq!(from_node, 1);
//!         assert_eq!(envelopes, vec![RaftEnvelope::new(10, 1, 2, hb)]);
//!     }
//!     // Unreachable peers and snapshot outcomes go to the regions' raft cores.
//!     Inbound::Event(event) => panic!("unexpected {event:?}"),
//! }
//! ```
//!
//! Wire format: see [`frame`] (frames) and [`batch`] (a raft frame's payload); every value
//! is encoded through `flotilla_common::codec`.
#![deny(missing_docs)]

pub mod batch;
mod config;
mod error;
pub mod frame;
pub mod fuzz;
mod handshake;
mod inbound;
mod listener;
mod memory;
mod metrics;
mod peer;
mod snapshot;
mod tcp;
mod transport;
mod wire;

pub use config::{TransportConfig, HANDSHAKE_FRAME_BYTES_MAX, IO_THREADS_DEFAULT};
pub use error::{FrameError, HandshakeError, SendError, TransportError};
pub use flotilla_common::RaftEnvelope;
pub use handshake::{Handshake, HandshakeReply, StreamKind};
pub use inbound::{InboundReceiver, InboundSink, SinkRefused};
pub use memory::{DropFilter, MemoryNetwork, MemoryStats, MemoryTransport};
pub use metrics::{SnapshotStreamStats, TransportStats};
pub use snapshot::{SnapshotFrame, SnapshotReply};
pub use tcp::TcpTransport;
pub use transport::{Inbound, PeerEvent, SnapshotStatus, Transport};
