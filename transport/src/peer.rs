//! One outbound peer: its bounded queue and the task that owns its raft connection.
//!
//! The queue holds *encoded frames*, not envelopes: `send` encodes the envelope into the
//! peer's open frame under a short lock, on the caller's thread (so encoding spreads over
//! the threads that send, and each envelope is freed by the thread that allocated it),
//! closing the frame and opening the next once it reaches `frame_target_bytes`. It wakes
//! the task only when the queue goes from empty to non-empty. The task swaps the whole
//! buffer out in one step, closes the last frame and writes everything with one call:
//! while a write is on the wire new messages pile up and leave together in the next one,
//! so batches grow with the load and a lone heartbeat still leaves at once.

use crate::batch::push_envelope;
use crate::config::TransportConfig;
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

/// Buffer a peer keeps between writes; a burst's bigger buffer is given back.
const WRITE_BUFFER_RETAIN_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Queue {
    /// Finished frames and one open frame.
    frames: FrameWriter,
    /// Messages in `frames`.
    messages: usize,
}

/// What became of an envelope `push` took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Encoded into the queue.
    Queued,
    /// Bigger than any frame (or did not encode): dropped.
    TooBig,
}

/// Appends `envelope` to the open frame of `frames`, starting a new frame when the open one
/// has reached `target_bytes` or when the envelope does not fit in it.
fn append(
    frames: &mut FrameWriter,
    envelope: &RaftEnvelope,
    target_bytes: usize,
    max_bytes: usize,
) -> Pushed {
    if !frames.is_open() {
        frames.begin();
    } else if frames.payload_bytes() >= target_bytes {
        frames.finish();
        frames.begin();
    }
    let before = frames.payload_bytes();
    let pushed = push_envelope(frames, envelope).is_ok();
    if pushed && frames.payload_bytes() <= max_bytes {
        return Pushed::Queued;
    }
    frames.truncate_payload(before);
    if pushed && before > 0 {
        // It may fit alone: close this frame and put it first in the next.
        frames.finish();
        frames.begin();
        if push_envelope(frames, envelope).is_ok() && frames.payload_bytes() <= max_bytes {
            return Pushed::Queued;
        }
        frames.truncate_payload(0);
    }
    Pushed::TooBig
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

    /// Encodes `envelope` into the queue, or hands it back if the queue is at a bound.
    pub fn push(
        &self,
        envelope: RaftEnvelope,
        config: &TransportConfig,
    ) -> Result<Pushed, Box<RaftEnvelope>> {
        let (pushed, wake) = {
            let mut q = self.queue.lock();
            if q.messages >= config.queue_messages_max || q.frames.len() >= config.queue_bytes_max {
                return Err(Box::new(envelope));
            }
            let pushed = append(
                &mut q.frames,
                &envelope,
                config.frame_target_bytes,
                config.frame_bytes_max,
            );
            if pushed == Pushed::Queued {
                q.messages += 1;
            }
            (pushed, pushed == Pushed::Queued && q.messages == 1)
        };
        // Freed here, after the lock, by the thread that built it.
        drop(envelope);
        if wake {
            self.wake.notify_one();
        }
        Ok(pushed)
    }

    /// Encodes `envelopes` into the queue under one lock and wakes the task at most once;
    /// returns how many were dropped as too big for any frame, and the envelopes refused at
    /// a bound (the tail of `envelopes`, in order).
    pub fn push_many(
        &self,
        mut envelopes: Vec<RaftEnvelope>,
        config: &TransportConfig,
    ) -> (usize, Vec<RaftEnvelope>) {
        let mut taken = 0;
        let mut too_big = 0;
        let wake = {
            let mut q = self.queue.lock();
            let was_empty = q.messages == 0;
            for envelope in &envelopes {
                if q.messages >= config.queue_messages_max
                    || q.frames.len() >= config.queue_bytes_max
                {
                    break;
                }
                match append(
                    &mut q.frames,
                    envelope,
                    config.frame_target_bytes,
                    config.frame_bytes_max,
                ) {
                    Pushed::Queued => q.messages += 1,
                    Pushed::TooBig => too_big += 1,
                }
                taken += 1;
            }
            was_empty && q.messages > 0
        };
        // Freed here, after the lock, by the thread that built them.
        let refused = envelopes.split_off(taken);
        drop(envelopes);
        if wake {
            self.wake.notify_one();
        }
        (too_big, refused)
    }

    /// Swaps the queued frames into `out` (whose old buffer, cleared, becomes the queue's)
    /// and returns how many messages they hold. The last frame is left open.
    fn take(&self, out: &mut FrameWriter) -> usize {
        out.clear();
        let mut q = self.queue.lock();
        std::mem::swap(&mut q.frames, out);
        std::mem::take(&mut q.messages)
    }

    /// Empties the queue; returns how many messages were dropped.
    fn clear(&self) -> usize {
        let mut q = self.queue.lock();
        q.frames.clear_retaining(WRITE_BUFFER_RETAIN_BYTES);
        std::mem::take(&mut q.messages)
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().messages == 0
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
    let mut frames = FrameWriter::new();
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
                let why = send_loop(&shared, &peer, conn, &mut frames).await;
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
    frames: &mut FrameWriter,
) -> String {
    let config = &shared.config;
    let mut reader = conn.reader;
    let mut writer = conn.writer;
    let mut probe = [0u8; 1];
    loop {
        if peer.is_removed() {
            return "peer removed".into();
        }
        let sent = peer.take(frames);
        frames.finish();
        if sent == 0 {
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
        peer.metrics.queue_depth.set(sent as f64);
        if let Err(e) = write_all_timeout(&mut writer, frames.bytes(), config.write_timeout).await {
            // What was in this write may or may not have arrived; count it lost.
            drop_messages(shared, peer, sent);
            return format!("write: {e}");
        }
        let (frame_count, bytes) = (frames.frame_count(), frames.len() as u64);
        add(&shared.totals.frames_sent, frame_count);
        add(&shared.totals.messages_sent, sent as u64);
        add(&shared.totals.bytes_sent, bytes);
        peer.metrics.frames.increment(frame_count);
        peer.metrics.messages.increment(sent as u64);
        peer.metrics.bytes.increment(bytes);
        frames.clear_retaining(WRITE_BUFFER_RETAIN_BYTES);
        // A writable socket never makes write_all wait: yield so that one busy peer does
        // not starve the other tasks of this runtime.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::decode_batch;
    use crate::frame::{decode_frame, Decoded};
    use flotilla_common::{Entry, EntryKind, Message, MessageKind};

    #[test]
    fn queue_splits_frames_drops_only_the_oversized_and_is_bounded() {
        let mut config = TransportConfig::new(1, 1, "127.0.0.1:0".parse().unwrap());
        config.frame_bytes_max = 8 << 10;
        config.frame_target_bytes = 1 << 10;
        config.queue_messages_max = 60;
        let small = |i: u64| {
            let mut m = Message::new(MessageKind::Append, 1, 2, 1);
            m.index = i;
            m.entries = vec![Entry::new(EntryKind::Normal, 1, i, vec![0u8; 100])];
            RaftEnvelope::new(1, 1, 2, m)
        };
        let peer = Peer::new(2, "127.0.0.1:1".parse().unwrap());
        for i in 0..50 {
            if i == 20 {
                let mut huge = small(1000);
                huge.message.entries[0].data = vec![0u8; 10 << 10].into();
                assert_eq!(peer.push(huge, &config).unwrap(), Pushed::TooBig);
            }
            assert_eq!(peer.push(small(i), &config).unwrap(), Pushed::Queued);
        }
        let mut frames = FrameWriter::new();
        assert_eq!(peer.take(&mut frames), 50);
        assert!(peer.is_empty());
        frames.finish();
        let mut rest = frames.bytes();
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
        assert_eq!(seen_frames, frames.frame_count());
        assert!(seen_frames > 1);
        let indexes: Vec<u64> = out.iter().map(|e| e.message.index).collect();
        assert_eq!(indexes, (0..50).collect::<Vec<_>>());
        // The message bound refuses and hands the envelope back.
        for i in 0..60 {
            peer.push(small(i), &config).unwrap();
        }
        let back = peer.push(small(60), &config).unwrap_err();
        assert_eq!(back.message.index, 60);
        assert_eq!(peer.clear(), 60);
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
