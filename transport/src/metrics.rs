//! Counters of what the transport did: totals as plain atomics (for tests, benches and
//! `/status`), and the same events per peer through the `metrics` crate (for Prometheus).
//!
//! Counters move once per frame, not per message, so that counting costs nothing next to
//! the syscall that moved the frame.

use metrics::{counter, gauge, Counter, Gauge};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// A point-in-time copy of a transport's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Raft frames written.
    pub frames_sent: u64,
    /// Raft messages written.
    pub messages_sent: u64,
    /// Raft frame bytes written (headers included).
    pub bytes_sent: u64,
    /// Writes a sending thread made itself, without waking the peer's task.
    pub writes_inline: u64,
    /// Of those, writes the socket took only in part (the task wrote the rest).
    pub writes_inline_partial: u64,
    /// Raft frames read and accepted.
    pub frames_received: u64,
    /// Raft messages read and handed to the node.
    pub messages_received: u64,
    /// Raft frame bytes read (headers included).
    pub bytes_received: u64,
    /// Raft connections established to peers (the first one and every reconnect).
    pub connects: u64,
    /// Failed connect or handshake attempts.
    pub connect_failures: u64,
    /// Messages `send` refused because the peer's queue was full (the caller got them
    /// back in [`SendError::Full`](crate::SendError::Full)).
    pub messages_refused: u64,
    /// Messages accepted by `send` and then lost: flushed when the peer was unreachable,
    /// in a write that failed, or too big for any frame.
    pub messages_dropped: u64,
    /// Inbound connections closed for a bad frame or payload.
    pub decode_errors: u64,
    /// Inbound handshakes refused (wrong cluster, secret or node id) or timed out.
    pub handshakes_refused: u64,
    /// Snapshots the receiver confirmed.
    pub snapshots_sent: u64,
    /// Snapshot streams that failed on either side.
    pub snapshots_failed: u64,
    /// Snapshots received whole and handed to the node.
    pub snapshots_received: u64,
    /// Snapshot streams under way now, both ways.
    pub streams: SnapshotStreamStats,
}

/// Snapshot streams under way at one moment, with their bytes moved so far and in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStreamStats {
    /// Snapshots being sent.
    pub sending: u64,
    /// Bytes of the snapshots being sent that were written so far.
    pub send_bytes_done: u64,
    /// Bytes of the snapshots being sent, in all.
    pub send_bytes_total: u64,
    /// Snapshots being received.
    pub receiving: u64,
    /// Bytes of the snapshots being received that arrived so far.
    pub receive_bytes_done: u64,
    /// Bytes of the snapshots being received, in all (as their headers announced).
    pub receive_bytes_total: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub frames_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub writes_inline: AtomicU64,
    pub writes_inline_partial: AtomicU64,
    pub frames_received: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub messages_refused: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub decode_errors: AtomicU64,
    pub handshakes_refused: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshots_failed: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub sending: AtomicU64,
    pub send_bytes_done: AtomicU64,
    pub send_bytes_total: AtomicU64,
    pub receiving: AtomicU64,
    pub receive_bytes_done: AtomicU64,
    pub receive_bytes_total: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Totals {
    pub fn snapshot(&self) -> TransportStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: g(&self.frames_sent),
            messages_sent: g(&self.messages_sent),
            bytes_sent: g(&self.bytes_sent),
            writes_inline: g(&self.writes_inline),
            writes_inline_partial: g(&self.writes_inline_partial),
            frames_received: g(&self.frames_received),
            messages_received: g(&self.messages_received),
            bytes_received: g(&self.bytes_received),
            connects: g(&self.connects),
            connect_failures: g(&self.connect_failures),
            messages_refused: g(&self.messages_refused),
            messages_dropped: g(&self.messages_dropped),
            decode_errors: g(&self.decode_errors),
            handshakes_refused: g(&self.handshakes_refused),
            snapshots_sent: g(&self.snapshots_sent),
            snapshots_failed: g(&self.snapshots_failed),
            snapshots_received: g(&self.snapshots_received),
            streams: self.streams(),
        }
    }

    pub fn streams(&self) -> SnapshotStreamStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SnapshotStreamStats {
            sending: g(&self.sending),
            send_bytes_done: g(&self.send_bytes_done),
            send_bytes_total: g(&self.send_bytes_total),
            receiving: g(&self.receiving),
            receive_bytes_done: g(&self.receive_bytes_done),
            receive_bytes_total: g(&self.receive_bytes_total),
        }
    }
}

/// One snapshot stream's share of the in-progress counts: added when it starts, taken
/// back whatever way it ends.
pub(crate) struct StreamProgress<'a> {
    count: &'a AtomicU64,
    done: &'a AtomicU64,
    total: &'a AtomicU64,
    bytes_done: u64,
    bytes_total: u64,
}

impl<'a> StreamProgress<'a> {
    /// A send of `bytes_total` bytes.
    pub fn sending(totals: &'a Totals, bytes_total: u64) -> Self {
        Self::start(
            &totals.sending,
            &totals.send_bytes_done,
            &totals.send_bytes_total,
            bytes_total,
        )
    }

    /// A receipt of `bytes_total` bytes.
    pub fn receiving(totals: &'a Totals, bytes_total: u64) -> Self {
        Self::start(
            &totals.receiving,
            &totals.receive_bytes_done,
            &totals.receive_bytes_total,
            bytes_total,
        )
    }

    fn start(
        count: &'a AtomicU64,
        done: &'a AtomicU64,
        total: &'a AtomicU64,
        bytes_total: u64,
    ) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes_total, Ordering::Relaxed);
        StreamProgress {
            count,
            done,
            total,
            bytes_done: 0,
            bytes_total,
        }
    }

    /// `n` more bytes moved.
    pub fn moved(&mut self, n: u64) {
        self.bytes_done += n;
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for StreamProgress<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.done.fetch_sub(self.bytes_done, Ordering::Relaxed);
        self.total.fetch_sub(self.bytes_total, Ordering::Relaxed);
    }
}

/// Per-peer handles of the outbound side, registered once per peer so the hot path does
/// not look names up.
pub(crate) struct OutboundMetrics {
    pub frames: Counter,
    pub messages: Counter,
    pub bytes: Counter,
    pub connects: Counter,
    pub refused: Counter,
    pub dropped: Counter,
    pub writes_inline: Counter,
    pub writes_inline_partial: Counter,
    pub queue_depth: Gauge,
}

impl OutboundMetrics {
    pub fn new(peer: u64) -> Self {
        let p = peer.to_string();
        OutboundMetrics {
            frames: counter!("flotilla_transport_frames_sent_total", "peer" => p.clone()),
            messages: counter!("flotilla_transport_messages_sent_total", "peer" => p.clone()),
            bytes: counter!("flotilla_transport_bytes_sent_total", "peer" => p.clone()),
            connects: counter!("flotilla_transport_connects_total", "peer" => p.clone()),
            refused: counter!("flotilla_transport_messages_refused_total", "peer" => p.clone()),
            dropped: counter!("flotilla_transport_messages_dropped_total", "peer" => p.clone()),
            writes_inline: counter!("flotilla_transport_writes_inline_total", "peer" => p.clone()),
            writes_inline_partial: counter!(
                "flotilla_transport_writes_inline_partial_total",
                "peer" => p.clone()
            ),
            queue_depth: gauge!("flotilla_transport_queue_messages", "peer" => p),
        }
    }
}

/// Per-peer handles of the inbound side.
pub(crate) struct InboundMetrics {
    pub frames: Counter,
    pub messages: Counter,
    pub bytes: Counter,
    pub decode_errors: Counter,
}

impl InboundMetrics {
    pub fn new(peer: u64) -> Self {
        let p = peer.to_string();
        InboundMetrics {
            frames: counter!("flotilla_transport_frames_received_total", "peer" => p.clone()),
            messages: counter!("flotilla_transport_messages_received_total", "peer" => p.clone()),
            bytes: counter!("flotilla_transport_bytes_received_total", "peer" => p.clone()),
            decode_errors: counter!("flotilla_transport_decode_errors_total", "peer" => p),
        }
    }
}

/// Counts a refused inbound handshake (no peer label: the peer is not trusted yet).
pub(crate) fn handshake_refused() {
    counter!("flotilla_transport_handshakes_refused_total").increment(1);
}
