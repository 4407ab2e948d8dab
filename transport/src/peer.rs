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
//!
//! A batch ([`Peer::push_many`], the store's messages of a round) is written by the
//! sending thread itself when the connection is up and nobody else is writing on it
//! ([`Peer::flush`]): a non-blocking write that the socket takes whole in the common case,
//! instead of waking the task (two context switches and a thread hand-off per batch). What
//! the socket does not take at once, and a write error, are left to the task, which writes
//! the rest first or closes the connection. One writer at a time (`Queue::writing`) keeps
//! the bytes in order.

use crate::batch::push_envelope;
use crate::config::TransportConfig;
use crate::frame::FrameWriter;
use crate::handshake::{dial, StreamKind};
use crate::metrics::{add, OutboundMetrics, Totals};
use crate::tcp::Shared;
use crate::transport::{Inbound, PeerEvent};
use flotilla_common::RaftEnvelope;
use parking_lot::Mutex;
use rand::Rng;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
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
    /// The connection's write half while one is up: a sender that finds nobody writing
    /// may write on it from its own thread.
    conn: Option<Arc<OwnedWriteHalf>>,
    /// Bumped at each connection's start and end: what a sender's write on an older
    /// connection reports is ignored.
    generation: u64,
    /// The task or a sender is writing on the connection.
    writing: bool,
    /// What a sender's write left unwritten (the socket was full): the task writes it
    /// before anything queued after it.
    rest: Option<Unsent>,
    /// A sender's write failed: the task closes the connection.
    broken: Option<std::io::Error>,
    /// An empty buffer to swap in for the frames a sender takes to write.
    spare: FrameWriter,
}

/// Frames a sender could write only in part.
struct Unsent {
    frames: FrameWriter,
    /// Bytes of `frames` already on the wire.
    written: usize,
    messages: usize,
}

/// What the task does next.
enum Next {
    /// Write the frames in its buffer, from this byte on; they hold this many messages.
    Write { from: usize, messages: usize },
    /// Wait to be woken (nothing queued, or a sender is writing).
    Wait,
    /// A sender's write failed: close the connection.
    Broken(std::io::Error),
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

    /// Encodes `envelopes` into the queue under one lock; returns how many were dropped as
    /// too big for any frame, and the envelopes refused at a bound (the tail of
    /// `envelopes`, in order). Wakes nobody: the caller then calls [`Peer::flush`].
    pub fn push_many(
        &self,
        mut envelopes: Vec<RaftEnvelope>,
        config: &TransportConfig,
    ) -> (usize, Vec<RaftEnvelope>) {
        let mut taken = 0;
        let mut too_big = 0;
        {
            let mut q = self.queue.lock();
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
        }
        // Freed here, after the lock, by the thread that built them.
        let refused = envelopes.split_off(taken);
        drop(envelopes);
        (too_big, refused)
    }

    /// Writes what is queued on the calling thread, if the connection is up, nobody is
    /// writing on it and the socket takes the bytes now (a non-blocking write); whatever
    /// it does not take, or a failure, is left to the task, which is woken.
    pub fn flush(&self, totals: &Totals) {
        let (conn, mut frames, messages, generation) = {
            let mut q = self.queue.lock();
            if q.messages == 0 {
                return;
            }
            let free = !q.writing && q.rest.is_none() && q.broken.is_none();
            let Some(conn) = q.conn.clone().filter(|_| free) else {
                drop(q);
                self.wake.notify_one();
                return;
            };
            let mut frames = std::mem::take(&mut q.spare);
            std::mem::swap(&mut q.frames, &mut frames);
            q.writing = true;
            (conn, frames, std::mem::take(&mut q.messages), q.generation)
        };
        frames.finish();
        let bytes = frames.bytes();
        let mut written = 0;
        let failure = loop {
            match conn.try_write(&bytes[written..]) {
                Ok(0) => break Some(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    written += n;
                    if written == bytes.len() {
                        break None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                Err(e) => break Some(e),
            }
        };
        drop(conn);
        let whole = failure.is_none() && written == frames.len();
        add(&totals.writes_inline, 1);
        self.metrics.writes_inline.increment(1);
        if failure.is_none() && !whole {
            add(&totals.writes_inline_partial, 1);
            self.metrics.writes_inline_partial.increment(1);
        }
        let mut dropped = 0;
        let wake = {
            let mut q = self.queue.lock();
            q.writing = false;
            let current = q.generation == generation;
            if whole {
                sent(totals, self, &frames, messages);
                frames.clear_retaining(WRITE_BUFFER_RETAIN_BYTES);
                q.spare = frames;
                q.messages > 0
            } else {
                match failure {
                    Some(e) if current => {
                        q.broken = Some(e);
                        dropped = messages;
                    }
                    None if current => {
                        q.rest = Some(Unsent {
                            frames,
                            written,
                            messages,
                        })
                    }
                    // The connection it was for is gone, and what it carried with it.
                    _ => dropped = messages,
                }
                true
            }
        };
        drop_messages(totals, self, dropped);
        if wake {
            self.wake.notify_one();
        }
    }

    /// What the task does next; takes the frames to write into `frames` (emptied
    /// before).
    fn next(&self, frames: &mut FrameWriter) -> Next {
        let mut q = self.queue.lock();
        if let Some(e) = q.broken.take() {
            return Next::Broken(e);
        }
        if q.writing {
            return Next::Wait;
        }
        let next = if let Some(rest) = q.rest.take() {
            let old = std::mem::replace(frames, rest.frames);
            if q.spare.is_empty() {
                q.spare = old;
            }
            Next::Write {
                from: rest.written,
                messages: rest.messages,
            }
        } else if q.messages > 0 {
            frames.clear();
            std::mem::swap(&mut q.frames, frames);
            frames.finish();
            Next::Write {
                from: 0,
                messages: std::mem::take(&mut q.messages),
            }
        } else {
            return Next::Wait;
        };
        q.writing = true;
        next
    }

    /// A connection is up: senders may write on `conn`.
    fn connected(&self, conn: Arc<OwnedWriteHalf>) {
        let mut q = self.queue.lock();
        q.generation += 1;
        q.conn = Some(conn);
    }

    /// The connection is gone: no sender writes on it any more (one under way finishes on
    /// the old socket). Returns the messages of a sender's unwritten rest, now lost.
    fn disconnected(&self) -> usize {
        let mut q = self.queue.lock();
        q.generation += 1;
        q.conn = None;
        q.broken = None;
        q.rest.take().map_or(0, |r| r.messages)
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

fn drop_messages(totals: &Totals, peer: &Peer, n: usize) {
    if n > 0 {
        add(&totals.messages_dropped, n as u64);
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
        drop_messages(&shared.totals, &peer, peer.clear());
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
    let reader = conn.reader;
    let writer = Arc::new(conn.writer);
    peer.connected(writer.clone());
    let why = send_frames(shared, peer, reader, &writer, frames).await;
    let lost = peer.disconnected();
    drop_messages(&shared.totals, peer, lost);
    why
}

async fn send_frames(
    shared: &Shared,
    peer: &Peer,
    mut reader: crate::wire::FrameReader<tokio::net::tcp::OwnedReadHalf>,
    writer: &OwnedWriteHalf,
    frames: &mut FrameWriter,
) -> String {
    let config = &shared.config;
    let mut probe = [0u8; 1];
    loop {
        if peer.is_removed() {
            return "peer removed".into();
        }
        let (from, messages) = match peer.next(frames) {
            Next::Write { from, messages } => (from, messages),
            Next::Broken(e) => return format!("write: {e}"),
            Next::Wait => {
                tokio::select! {
                    _ = peer.wake.notified() => continue,
                    // The acceptor never writes on a raft stream after the handshake: a
                    // read that completes means it closed (or broke protocol).
                    r = reader.get_mut().read(&mut probe) => {
                        return match r {
                            Ok(0) => "closed by peer".into(),
                            Ok(_) => "peer sent data on a one-way stream".into(),
                            Err(e) => format!("read: {e}"),
                        };
                    }
                }
            }
        };
        peer.metrics.queue_depth.set(messages as f64);
        let written = write_shared(writer, &frames.bytes()[from..], config.write_timeout).await;
        peer.queue.lock().writing = false;
        if let Err(e) = written {
            // What was in this write may or may not have arrived; count it lost.
            drop_messages(&shared.totals, peer, messages);
            return format!("write: {e}");
        }
        sent(&shared.totals, peer, frames, messages);
        frames.clear_retaining(WRITE_BUFFER_RETAIN_BYTES);
        // A writable socket never makes the write wait: yield so that one busy peer does
        // not starve the other tasks of this runtime.
        tokio::task::yield_now().await;
    }
}

/// Counts a written buffer of frames.
fn sent(totals: &Totals, peer: &Peer, frames: &FrameWriter, messages: usize) {
    let (frame_count, bytes) = (frames.frame_count(), frames.len() as u64);
    add(&totals.frames_sent, frame_count);
    add(&totals.messages_sent, messages as u64);
    add(&totals.bytes_sent, bytes);
    peer.metrics.frames.increment(frame_count);
    peer.metrics.messages.increment(messages as u64);
    peer.metrics.bytes.increment(bytes);
}

/// Writes all of `bytes` on a write half shared with the senders (one writer at a time,
/// by `Queue::writing`), failing with `TimedOut` if the peer does not take them in time.
async fn write_shared(w: &OwnedWriteHalf, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
    let write = async {
        let mut rest = bytes;
        while !rest.is_empty() {
            w.writable().await?;
            match w.try_write(rest) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            ErrorKind::TimedOut,
            "peer did not read in time",
        )),
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
        assert!(matches!(
            peer.next(&mut frames),
            Next::Write {
                from: 0,
                messages: 50
            }
        ));
        assert!(peer.is_empty());
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

    /// Decodes the raft frames of `bytes` (whole frames only) and returns the message
    /// indexes, in order.
    fn indexes_in(bytes: &[u8]) -> Vec<u64> {
        let mut rest = bytes;
        let mut out = Vec::new();
        while let Decoded::Frame {
            payload,
            frame_bytes,
        } = decode_frame(rest, 64 << 20).unwrap()
        {
            decode_batch(payload, &mut out).unwrap();
            rest = &rest[frame_bytes..];
        }
        assert!(rest.is_empty(), "a frame cut short");
        out.iter().map(|e| e.message.index).collect()
    }

    /// The hand-over between a sending thread's own write and the peer's task: once the
    /// socket takes a write only in part, no sender writes until the task has written
    /// that write's rest, and the task writes it before anything queued after it.
    #[test]
    fn a_write_taken_in_part_is_finished_by_the_task_before_anything_later() {
        let mut config = TransportConfig::new(1, 1, "127.0.0.1:0".parse().unwrap());
        config.queue_bytes_max = 1 << 30;
        let big = |i: u64| {
            let mut m = Message::new(MessageKind::Append, 1, 2, 1);
            m.index = i;
            m.entries = vec![Entry::new(EntryKind::Normal, 1, i, vec![i as u8; 64 << 10])];
            RaftEnvelope::new(1, 1, 2, m)
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (_read_half, writer) = rt.block_on(async {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.writable().await.unwrap();
            s.into_split()
        });
        // The receiving end reads nothing until the end: the socket fills.
        let (mut server, _) = listener.accept().unwrap();
        let writer = Arc::new(writer);
        let totals = Totals::default();
        let peer = Peer::new(2, addr);
        peer.connected(writer.clone());
        let mut next = 0;
        while totals.writes_inline_partial.load(Ordering::Relaxed) == 0 {
            assert!(next < 4096, "the socket never filled");
            let (too_big, refused) = peer.push_many((next..next + 4).map(big).collect(), &config);
            assert_eq!((too_big, refused.len()), (0, 0));
            peer.flush(&totals);
            next += 4;
        }
        let inline = totals.writes_inline.load(Ordering::Relaxed);
        assert_eq!(
            inline,
            next / 4,
            "every batch so far was written by its sender"
        );
        // A rest is waiting for the task: a later batch is queued, not written.
        let (_, refused) = peer.push_many((next..next + 4).map(big).collect(), &config);
        assert!(refused.is_empty());
        peer.flush(&totals);
        assert_eq!(totals.writes_inline.load(Ordering::Relaxed), inline);
        // What the receiving end reads, on a thread of its own from now on.
        let reading = std::thread::spawn(move || {
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut server, &mut all).unwrap();
            all
        });
        // The task: the rest of the partial write first (from where the socket stopped),
        // then the batch queued after it.
        let mut frames = FrameWriter::new();
        let Next::Write { from, messages } = peer.next(&mut frames) else {
            panic!("the task has the rest to write");
        };
        assert_eq!(
            messages, 4,
            "the rest is the last batch a sender wrote in part"
        );
        rt.block_on(write_shared(
            &writer,
            &frames.bytes()[from..],
            Duration::from_secs(10),
        ))
        .unwrap();
        // While the task writes, a sender does not.
        assert!(matches!(peer.next(&mut FrameWriter::new()), Next::Wait));
        peer.queue.lock().writing = false;
        let Next::Write { from, messages } = peer.next(&mut frames) else {
            panic!("the batch queued after the rest");
        };
        assert_eq!((from, messages), (0, 4));
        rt.block_on(write_shared(
            &writer,
            frames.bytes(),
            Duration::from_secs(10),
        ))
        .unwrap();
        peer.queue.lock().writing = false;
        // Free again: the sender writes itself.
        let (_, refused) = peer.push_many(vec![big(next + 4)], &config);
        assert!(refused.is_empty());
        peer.flush(&totals);
        assert_eq!(totals.writes_inline.load(Ordering::Relaxed), inline + 1);
        assert_eq!(peer.disconnected(), 0);
        drop(writer);
        drop(_read_half);
        let bytes = reading.join().unwrap();
        assert_eq!(indexes_in(&bytes), (0..next + 5).collect::<Vec<_>>());
        assert_eq!(totals.messages_dropped.load(Ordering::Relaxed), 0);
    }
}
