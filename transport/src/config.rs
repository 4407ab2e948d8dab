//! What an operator can set on a transport, with every limit named and explained.

use crate::error::TransportError;
use std::net::SocketAddr;
use std::time::Duration;

/// A node's transport settings. Every bound has its unit last in its name.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The cluster this node belongs to; a peer that names another cluster is refused, so
    /// two clusters sharing hosts never exchange raft messages.
    pub cluster_id: u64,
    /// This node's id; peers check it in the handshake reply.
    pub node_id: u64,
    /// Where to listen for raft and snapshot connections (port 0: an ephemeral port).
    pub listen_addr: SocketAddr,
    /// A shared secret every peer must present in its handshake; empty: none required.
    pub secret: Vec<u8>,
    /// Largest frame payload accepted or sent after the handshake. Bounds what one peer
    /// can make this node allocate per connection; far above a raft append batch (regions
    /// cap a message at about 1 MiB) and above one snapshot chunk plus its header.
    pub frame_bytes_max: usize,
    /// A sender closes a frame once its payload reaches this size and starts the next, so
    /// one checksum pass and one decode stay short and the receiver delivers in steps.
    pub frame_target_bytes: usize,
    /// Messages queued for one peer before `send` refuses more: raft retries what is lost,
    /// so a slow or dead peer costs drops, never unbounded memory.
    pub queue_messages_max: usize,
    /// Encoded bytes queued for one peer before `send` refuses more (same reason).
    pub queue_bytes_max: usize,
    /// Capacity of the channel that hands received batches and events to the node; when it
    /// is full, readers stop reading and TCP pushes back on the senders.
    pub inbound_batches_max: usize,
    /// First reconnect delay after a failed connect or a broken connection.
    pub reconnect_backoff_min: Duration,
    /// The reconnect delay doubles up to this (±50% jitter, so nodes do not retry in step).
    pub reconnect_backoff_max: Duration,
    /// How long a TCP connect may take before the attempt counts as failed.
    pub connect_timeout: Duration,
    /// How long a new connection may take to present its handshake (either side), so a
    /// silent client cannot hold a connection slot.
    pub handshake_timeout: Duration,
    /// How long one write may block on a peer that stopped reading before the connection
    /// is closed and its messages dropped.
    pub write_timeout: Duration,
    /// Inbound connections served at once; more are closed at accept, so a flood of
    /// connections cannot exhaust tasks and buffers.
    pub connections_inbound_max: usize,
    /// Size of one snapshot chunk on the wire.
    pub snapshot_chunk_bytes: usize,
    /// Chunks a snapshot sender may have unacknowledged: the stream's own flow control,
    /// which keeps a snapshot from filling socket buffers shared with nothing else and
    /// lets a receiver slow it down.
    pub snapshot_window_chunks: usize,
    /// Largest snapshot a receiver reassembles; a header announcing more is refused.
    pub snapshot_bytes_max: u64,
    /// Snapshot streams this node sends at once; raft retries a refused one later.
    pub snapshots_in_flight_max: usize,
    /// How long a snapshot stream may wait for the other side's next frame.
    pub snapshot_idle_timeout: Duration,
    /// Sending rate of one snapshot stream in bytes per second (0: unlimited), so a big
    /// snapshot can be kept from saturating a real link shared with raft traffic.
    pub snapshot_bytes_per_sec_max: u64,
    /// Worker threads of the transport's own tokio runtime.
    pub io_threads: usize,
}

/// Frame payload bound for the handshake: nothing is allocated for an unauthenticated
/// connection beyond this.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 4096;
/// Default of [`TransportConfig::io_threads`].
pub const IO_THREADS_DEFAULT: usize = 2;

impl TransportConfig {
    /// Defaults for a node of `cluster_id` with id `node_id` listening on `listen_addr`.
    pub fn new(cluster_id: u64, node_id: u64, listen_addr: SocketAddr) -> Self {
        TransportConfig {
            cluster_id,
            node_id,
            listen_addr,
            secret: Vec::new(),
            frame_bytes_max: 16 << 20,
            frame_target_bytes: 256 << 10,
            queue_messages_max: 64 << 10,
            queue_bytes_max: 64 << 20,
            inbound_batches_max: 256,
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            connections_inbound_max: 1024,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_window_chunks: 4,
            snapshot_bytes_max: 1 << 30,
            snapshots_in_flight_max: 4,
            snapshot_idle_timeout: Duration::from_secs(10),
            snapshot_bytes_per_sec_max: 0,
            io_threads: IO_THREADS_DEFAULT,
        }
    }

    /// Checks that the limits are usable together.
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |why: &str| Err(TransportError::Config(why.to_string()));
        if self.node_id == 0 {
            return bad("node_id 0 is reserved for 'none'");
        }
        if self.frame_bytes_max < HANDSHAKE_FRAME_BYTES_MAX
            || self.frame_bytes_max > u32::MAX as usize
        {
            return bad("frame_bytes_max must be in 4 KiB ..= 4 GiB");
        }
        if self.frame_target_bytes == 0 || self.frame_target_bytes > self.frame_bytes_max {
            return bad("frame_target_bytes must be in 1 ..= frame_bytes_max");
        }
        // A chunk frame carries the chunk plus a few bytes of framing.
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes + 64 > self.frame_bytes_max {
            return bad("snapshot_chunk_bytes must be in 1 ..= frame_bytes_max - 64");
        }
        if self.queue_messages_max == 0
            || self.queue_bytes_max == 0
            || self.inbound_batches_max == 0
            || self.connections_inbound_max == 0
            || self.snapshot_window_chunks == 0
            || self.snapshots_in_flight_max == 0
            || self.io_threads == 0
        {
            return bad(
                "queue, channel, connection, window, snapshot and thread bounds must be > 0",
            );
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_min > self.reconnect_backoff_max
        {
            return bad("need 0 < reconnect_backoff_min <= reconnect_backoff_max");
        }
        Ok(())
    }
}
