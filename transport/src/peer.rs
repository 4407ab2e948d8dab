//! One outbound peer: its bounded queue and the task that owns its raft connection.
//!
//! `send` pushes under a short lock and wakes the task only when the queue goes from empty
//! to non-empty. The task swaps the whole queue out in one step, encodes it into frames of
//! about `frame_target_bytes` back to back in one buffer and writes that buffer with one
//! call: while a write is on the wire, new messages pile up and leave together in the
//! next one, so the batch size follows the load by itself.

use crate::batch::push_envelope;
use crate::frame::FrameWriter;
use crate::handshake::{dial, StreamKind};
use crate::metrics::{add, OutboundMetrics};
use crate::tcp::Shared;
use crate::transport::{Inbound, PeerEvent};
use crate::wire::write_all_timeout;
use flotilla_common::RaftEnvelope;
use parking_lot::Mutex;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tracing::{debug, warn};

/// Fixed cost counted per queued message on top of its payload bytes.
const MESSAGE_OVERHEAD_BYTES: usize = 64;

/// Bytes an envelope counts for against `queue_bytes_max`.
pub(crate) fn estimated_bytes(e: &RaftEnvelope) -> usize {
    let m = &e.message;
    let entries: usize = m.entries.iter().map(|x| x.size_bytes() as usize).sum();
    let snapshot = m.snapshot.as_ref().map_or(0, |s| s.data.len());
    MESSAGE_OVERHEAD_BYTES + entries + snapshot + m.context.len()
}

#[derive(Default)]
struct Queue {
    envelopes: Vec<RaftEnvelope>,
    bytes: usize,
}

/// An outbound peer, shared by `send` callers and the peer's task.
pub(crate) struct Peer {
    pub node_id: u64,
    addr: Mutex<SocketAddr>,
    queue: Mutex<Queue>,
    wake: Notify,
    removed: AtomicBool,
    pub metrics: OutboundMetrics,
}

impl Peer {
    pub fn new(node_id: u64, addr: SocketAddr) -> Self {
        Peer {
            node_id,
            addr: Mutex::new(addr),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            removed: AtomicBool::new(false),
            metrics: OutboundMetrics::new(node_id),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        *self.addr.lock()
    }

    pub fn set_addr(&self, addr: SocketAddr) {
        *self.addr.lock() = addr;
    }

    /// Queues `envelope`, or hands it back if the queue is at a bound.
    pub fn push(
        &self,
        envelope: RaftEnvelope,
        messages_max: usize,
        bytes_max: usize,
    ) -> Result<(), Box<RaftEnvelope>> {
        let size = estimated_bytes(&envelope);
        let was_empty = {
            let mut q = self.queue.lock();
            if q.envelopes.len() >= messages_max || q.bytes + size > bytes_max {
                return Err(Box::new(envelope));
            }
            q.bytes += size;
            q.envelopes.push(envelope);
            q.envelopes.len() == 1
        };
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Moves everything queued into `out` (which must be empty), keeping `out`'s old
    /// allocation as the new queue.
    fn take(&self, out: &mut Vec<RaftEnvelope>) {
        debug_assert!(out.is_empty());
        let mut q = self.queue.lock();
        std::mem::swap(&mut q.envelopes, out);
        q.bytes = 0;
    }

    /// Empties the queue; returns how many messages were dropped.
    fn clear(&self) -> usize {
        let mut q = self.queue.lock();
        let n = q.envelopes.len();
        q.envelopes.clear();
        q.bytes = 0;
        n
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().envelopes.is_empty()
    }

    /// Stops the peer's task and drops its queue.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Release);
        self.clear();
        self.wake.notify_one();
    }

    fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

/// Exponential back-off with ±50% jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }
}

fn drop_messages(shared: &Shared, peer: &Peer, n: usize) {
    if n > 0 {
        add(&shared.totals.messages_dropped, n as u64);
        peer.metrics.dropped.increment(n as u64);
    }
}

fn event(shared: &Shared, e: PeerEvent) {
    // Connection events are advisory; if the node is not keeping up with its inbound
    // channel, losing one is better than stalling this peer's sending.
    let _ = shared.inbound.try_send(Inbound::Event(e));
}

/// The peer's task: waits for messages, connects, sends, reconnects. Ends when the peer
/// is removed (or the runtime shuts down).
pub(crate) async fn run(shared: Arc<Shared>, peer: Arc<Peer>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect_backoff_min, config.reconnect_backoff_max);
    let mut batch = Vec::new();
    loop {
        // Lazy: no connection until there is something to send.
        while peer.is_empty() && !peer.is_removed() {
            peer.wake.notified().await;
        }
        if peer.is_removed() {
            return;
        }
        let addr = peer.addr();
        match dial(config, addr, peer.node_id, StreamKind::Raft).await {
            Ok(conn) => {
                add(&shared.totals.connects, 1);
                peer.metrics.connects.increment(1);
                event(
                    &shared,
                    PeerEvent::Connected {
                        node_id: peer.node_id,
                    },
                );
                debug!(peer = peer.node_id, %addr, "raft connection up");
                let since = Instant::now();
                let why = send_loop(&shared, &peer, conn, &mut batch).await;
                if peer.is_removed() {
                    return;
                }
                warn!(peer = peer.node_id, %addr, reason = %why, "raft connection closed");
                // A connection that lived long enough proves the peer is back: start the
                // back-off over. One that breaks at once keeps growing it.
                if since.elapsed() > config.reconnect_backoff_max {
                    backoff.reset();
                }
            }
            Err(e) => {
                add(&shared.totals.connect_failures, 1);
                warn!(peer = peer.node_id, %addr, error = %e, "cannot connect");
            }
        }
        // The peer is down (or was): what waits for it is stale by the time it is back,
        // and raft resends what matters.
        drop_messages(&shared, &peer, peer.clear());
        event(
            &shared,
            PeerEvent::Unreachable {
                node_id: peer.node_id,
            },
        );
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wait_removed(&peer) => return,
        }
    }
}

async fn wait_removed(peer: &Peer) {
    while !peer.is_removed() {
        peer.wake.notified().await;
    }
}

/// Sends until the connection breaks or the peer is removed; returns why it stopped.
async fn send_loop(
    shared: &Shared,
    peer: &Peer,
    conn: crate::handshake::Established,
    batch: &mut Vec<RaftEnvelope>,
) -> String {
    let config = &shared.config;
    let mut reader = conn.reader;
    let mut writer = conn.writer;
    let mut frames = FrameWriter::new();
    let mut probe = [0u8; 1];
    loop {
        if peer.is_removed() {
            return "peer removed".into();
        }
        peer.take(batch);
        if batch.is_empty() {
            tokio::select! {
                _ = peer.wake.notified() => continue,
                // The acceptor never writes on a raft stream after the handshake: a read
                // that completes means it closed (or broke protocol).
                r = reader.get_mut().read(&mut probe) => {
                    return match r {
                        Ok(0) => "closed by peer".into(),
                        Ok(_) => "peer sent data on a one-way stream".into(),
                        Err(e) => format!("read: {e}"),
                    };
                }
            }
        }
        peer.metrics.queue_depth.set(batch.len() as f64);
        let (frame_count, sent, too_big) = encode(batch, &mut frames, config);
        drop_messages(shared, peer, too_big);
        batch.clear();
        if frames.is_empty() {
            continue;
        }
        if let Err(e) = write_all_timeout(&mut writer, frames.bytes(), config.write_timeout).await {
            // What was in this write may or may not have arrived; count it lost.
            drop_messages(shared, peer, sent);
            return format!("write: {e}");
        }
        let bytes = frames.bytes().len() as u64;
        add(&shared.totals.frames_sent, frame_count);
        add(&shared.totals.messages_sent, sent as u64);
        add(&shared.totals.bytes_sent, bytes);
        peer.metrics.frames.increment(frame_count);
        peer.metrics.messages.increment(sent as u64);
        peer.metrics.bytes.increment(bytes);
        frames.clear();
        // A writable socket never makes write_all wait: yield so that one busy peer does
        // not starve the other tasks of this runtime.
        tokio::task::yield_now().await;
    }
}

/// Encodes `batch` into frames of about `frame_target_bytes`. Returns (frames, messages
/// encoded, messages dropped because they fit in no frame or did not encode).
fn encode(
    batch: &[RaftEnvelope],
    frames: &mut FrameWriter,
    config: &crate::config::TransportConfig,
) -> (u64, usize, usize) {
    let (mut frame_count, mut sent, mut dropped) = (0u64, 0usize, 0usize);
    frames.begin();
    for envelope in batch {
        if frames.payload_bytes() >= config.frame_target_bytes {
            frames.finish();
            frame_count += 1;
            frames.begin();
        }
        let before = frames.payload_bytes();
        let pushed = push_envelope(frames, envelope);
        if pushed.is_ok() && frames.payload_bytes() <= config.frame_bytes_max {
            sent += 1;
            continue;
        }
        frames.truncate_payload(before);
        if pushed.is_ok() && before > 0 {
            // It fits alone: close this frame and put it first in the next.
            frames.finish();
            frame_count += 1;
            frames.begin();
            if push_envelope(frames, envelope).is_ok()
                && frames.payload_bytes() <= config.frame_bytes_max
            {
                sent += 1;
                continue;
            }
            frames.truncate_payload(0);
        }
        warn!(
            region = envelope.region_id,
            to = envelope.to_node,
            "message fits in no frame (or does not encode); dropped"
        );
        dropped += 1;
    }
    if frames.finish() > 0 {
        frame_count += 1;
    }
    (frame_count, sent, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::decode_batch;
    use crate::config::TransportConfig;
    use crate::frame::{decode_frame, Decoded};
    use flotilla_common::{Entry, EntryKind, Message, MessageKind};

    #[test]
    fn encode_splits_frames_and_drops_only_the_oversized() {
        let mut config = TransportConfig::new(1, 1, "127.0.0.1:0".parse().unwrap());
        config.frame_bytes_max = 8 << 10;
        config.frame_target_bytes = 1 << 10;
        let small = |i: u64| {
            let mut m = Message::new(MessageKind::Append, 1, 2, 1);
            m.index = i;
            m.entries = vec![Entry::new(EntryKind::Normal, 1, i, vec![0u8; 100])];
            RaftEnvelope::new(1, 1, 2, m)
        };
        let mut batch: Vec<_> = (0..50).map(small).collect();
        let mut huge = small(1000);
        huge.message.entries[0].data = vec![0u8; 10 << 10].into();
        batch.insert(20, huge);
        let mut w = FrameWriter::new();
        let (frames, sent, dropped) = encode(&batch, &mut w, &config);
        assert_eq!((sent, dropped), (50, 1));
        let mut rest = w.bytes();
        let mut out = Vec::new();
        let mut seen_frames = 0;
        while let Decoded::Frame {
            payload,
            frame_bytes,
        } = decode_frame(rest, config.frame_bytes_max).unwrap()
        {
            assert!(payload.len() <= config.frame_target_bytes + 200);
            decode_batch(payload, &mut out).unwrap();
            rest = &rest[frame_bytes..];
            seen_frames += 1;
        }
        assert!(rest.is_empty());
        assert_eq!(seen_frames, frames);
        assert!(frames > 1);
        let indexes: Vec<u64> = out.iter().map(|e| e.message.index).collect();
        assert_eq!(indexes, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn backoff_grows_to_its_bound_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_millis(10 << i.min(3));
            assert!(*d >= base / 2 && *d <= base * 3 / 2, "{i}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(15));
    }
}
