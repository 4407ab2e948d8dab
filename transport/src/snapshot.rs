//! Snapshot streams: one connection per snapshot, chunks under a window of
//! acknowledgements, and a final verdict from the receiver.
//!
//! ```text
//! sender                                   receiver
//!   Handshake(Snapshot)            ->
//!                                  <-      Accepted
//!   Header(envelope sans data, total)  ->          checks total <= snapshot_bytes_max
//!   Chunk(data) x n   (<= window unacked)  ->
//!                                  <-      Ack(chunks) after each chunk
//!   Done                           ->              hands the whole envelope to its node
//!                                  <-      Finished | Failed(reason)
//! ```
//!
//! The stream never shares a connection with raft messages, so heartbeats and appends
//! keep their latency while a snapshot moves.

use crate::error::{FrameError, HandshakeError};
use crate::frame::{decode_value, FrameWriter};
use crate::handshake::{dial, Established, StreamKind};
use crate::metrics::{add, StreamProgress};
use crate::tcp::Shared;
use crate::transport::{Inbound, PeerEvent, SnapshotStatus};
use crate::wire::{write_all_timeout, ReadError};
use bytes::{Bytes, BytesMut};
use flotilla_common::RaftEnvelope;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::tcp::OwnedReadHalf;
use tracing::{debug, warn};

/// Frames from the snapshot's sender.
#[derive(Debug, Serialize, Deserialize)]
pub enum SnapshotFrame {
    /// The snapshot message with its data left out, and the data's length.
    Header {
        /// The envelope; `message.snapshot.data` is empty.
        envelope: Box<RaftEnvelope>,
        /// Bytes of data that follow in chunks.
        total_bytes: u64,
    },
    /// The next piece of the data.
    Chunk(Bytes),
    /// All chunks are sent.
    Done,
}

/// Frames from the snapshot's receiver.
#[derive(Debug, Serialize, Deserialize)]
pub enum SnapshotReply {
    /// This many chunks have been taken in.
    Ack(u64),
    /// The whole snapshot was handed to the receiving node.
    Finished,
    /// The receiver gave up; the reason is for the sender's log.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer went quiet")]
    Timeout,
    #[error("peer closed the stream")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
}

impl From<ReadError> for StreamError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Frame(f) => StreamError::Frame(f),
            ReadError::Io(io) => StreamError::Io(io),
        }
    }
}

async fn next_value<T: serde::de::DeserializeOwned>(
    reader: &mut crate::wire::FrameReader<OwnedReadHalf>,
    timeout: Duration,
) -> Result<T, StreamError> {
    let next = tokio::time::timeout(timeout, reader.next())
        .await
        .map_err(|_| StreamError::Timeout)??;
    let (payload, _) = next.ok_or(StreamError::Closed)?;
    Ok(decode_value(&payload)?)
}

/// Sends one snapshot to `to_node` at `addr` and reports the outcome as an event. `slot`
/// (one of `snapshots_in_flight_max`) is released before the outcome is reported, so that
/// raft can send the next snapshot as soon as it hears.
pub(crate) async fn send(
    shared: &Shared,
    addr: SocketAddr,
    envelope: RaftEnvelope,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let (to_node, region_id, to_peer) = (envelope.to_node, envelope.region_id, envelope.message.to);
    let started = Instant::now();
    let status = match stream_out(shared, addr, envelope).await {
        Ok(bytes) => {
            add(&shared.totals.snapshots_sent, 1);
            debug!(
                to = to_node,
                region = region_id,
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "snapshot sent"
            );
            SnapshotStatus::Finished
        }
        Err(e) => {
            add(&shared.totals.snapshots_failed, 1);
            warn!(to = to_node, region = region_id, error = %e, "snapshot failed");
            SnapshotStatus::Failure
        }
    };
    drop(slot);
    // Awaited, not tried: raft waits for this verdict before it sends another snapshot.
    shared
        .inbound
        .send(Inbound::Event(PeerEvent::SnapshotStatus {
            to_node,
            region_id,
            to_peer,
            status,
        }))
        .await;
}

async fn stream_out(
    shared: &Shared,
    addr: SocketAddr,
    mut envelope: RaftEnvelope,
) -> Result<u64, StreamError> {
    let config = &shared.config;
    let data = envelope
        .message
        .snapshot
        .as_mut()
        .map(|s| std::mem::take(&mut s.data))
        .unwrap_or_default();
    let Established {
        mut reader,
        mut writer,
    } = dial(config, addr, envelope.to_node, StreamKind::Snapshot).await?;
    let idle = config.snapshot_idle_timeout;
    let mut frames = FrameWriter::new();
    let total_bytes = data.len() as u64;
    frames.push_value(&SnapshotFrame::Header {
        envelope: Box::new(envelope),
        total_bytes,
    })?;
    write_all_timeout(&mut writer, frames.bytes(), idle).await?;
    let mut progress = StreamProgress::sending(&shared.totals, total_bytes);
    let started = Instant::now();
    let (mut sent_chunks, mut acked_chunks, mut offset) = (0u64, 0u64, 0usize);
    while offset < data.len() {
        // Flow control: at most `snapshot_window_chunks` chunks in flight.
        while sent_chunks - acked_chunks >= config.snapshot_window_chunks as u64 {
            acked_chunks = expect_ack(&mut reader, idle, sent_chunks).await?;
        }
        let end = (offset + config.snapshot_chunk_bytes).min(data.len());
        frames.clear();
        frames.push_value(&SnapshotFrame::Chunk(data.slice(offset..end)))?;
        write_all_timeout(&mut writer, frames.bytes(), idle).await?;
        progress.moved((end - offset) as u64);
        offset = end;
        sent_chunks += 1;
        // A chunk is milliseconds of copying and checksumming: give the runtime back to
        // the raft connections between chunks, or heartbeats wait for the whole stream.
        tokio::task::yield_now().await;
        if let Some(wait) = pace(
            offset as u64,
            config.snapshot_bytes_per_sec_max,
            started.elapsed(),
        ) {
            tokio::time::sleep(wait).await;
        }
    }
    frames.clear();
    frames.push_value(&SnapshotFrame::Done)?;
    write_all_timeout(&mut writer, frames.bytes(), idle).await?;
    loop {
        match next_value::<SnapshotReply>(&mut reader, idle).await? {
            SnapshotReply::Ack(n) if n <= sent_chunks => {}
            SnapshotReply::Ack(n) => {
                return Err(StreamError::Protocol(format!("ack of unsent chunk {n}")))
            }
            SnapshotReply::Finished => return Ok(total_bytes),
            SnapshotReply::Failed(reason) => return Err(StreamError::Refused(reason)),
        }
    }
}

/// How long a stream that has sent `sent` bytes `elapsed` after its first chunk must wait
/// to stay at `bytes_per_sec` (0: unlimited): the rate is kept over the whole stream, so a
/// chunk that went out late is not made up for by a burst.
pub(crate) fn pace(sent: u64, bytes_per_sec: u64, elapsed: Duration) -> Option<Duration> {
    if bytes_per_sec == 0 {
        return None;
    }
    let due = Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
    due.checked_sub(elapsed).filter(|w| !w.is_zero())
}

async fn expect_ack(
    reader: &mut crate::wire::FrameReader<OwnedReadHalf>,
    idle: Duration,
    sent_chunks: u64,
) -> Result<u64, StreamError> {
    match next_value::<SnapshotReply>(reader, idle).await? {
        SnapshotReply::Ack(n) if n <= sent_chunks => Ok(n),
        SnapshotReply::Ack(n) => Err(StreamError::Protocol(format!("ack of unsent chunk {n}"))),
        SnapshotReply::Finished => Err(StreamError::Protocol("finished before done".into())),
        SnapshotReply::Failed(reason) => Err(StreamError::Refused(reason)),
    }
}

/// Receives one snapshot stream from `from_node` (after the handshake).
pub(crate) async fn receive(shared: &Shared, from_node: u64, addr: SocketAddr, conn: Established) {
    let Established {
        mut reader,
        mut writer,
    } = conn;
    let idle = shared.config.snapshot_idle_timeout;
    let reply = match stream_in(shared, from_node, &mut reader, &mut writer).await {
        Ok(()) => {
            add(&shared.totals.snapshots_received, 1);
            SnapshotReply::Finished
        }
        Err(e) => {
            add(&shared.totals.snapshots_failed, 1);
            if matches!(e, StreamError::Frame(_) | StreamError::Protocol(_)) {
                add(&shared.totals.decode_errors, 1);
            }
            warn!(%addr, peer = from_node, reason = %e, "snapshot stream failed; connection closed");
            SnapshotReply::Failed(e.to_string())
        }
    };
    let mut frames = FrameWriter::new();
    if frames.push_value(&reply).is_ok() {
        // Best effort: if the sender is gone it learns nothing, and its own timeout fails it.
        let _ = write_all_timeout(&mut writer, frames.bytes(), idle).await;
    }
}

async fn stream_in(
    shared: &Shared,
    from_node: u64,
    reader: &mut crate::wire::FrameReader<OwnedReadHalf>,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
) -> Result<(), StreamError> {
    let config = &shared.config;
    let idle = config.snapshot_idle_timeout;
    let SnapshotFrame::Header {
        mut envelope,
        total_bytes,
    } = next_value(reader, idle).await?
    else {
        return Err(StreamError::Protocol(
            "stream does not start with a header".into(),
        ));
    };
    if envelope.from_node != from_node || envelope.to_node != config.node_id {
        return Err(StreamError::Protocol(format!(
            "misaddressed snapshot {} -> {}",
            envelope.from_node, envelope.to_node
        )));
    }
    if total_bytes > config.snapshot_bytes_max {
        return Err(StreamError::Protocol(format!(
            "snapshot of {total_bytes} bytes is over the bound of {}",
            config.snapshot_bytes_max
        )));
    }
    let mut progress = StreamProgress::receiving(&shared.totals, total_bytes);
    // Grow with what actually arrives rather than trusting the header for one allocation.
    let mut data = BytesMut::with_capacity(
        (total_bytes as usize).min(config.snapshot_chunk_bytes * config.snapshot_window_chunks),
    );
    let mut chunks = 0u64;
    let mut frames = FrameWriter::new();
    loop {
        match next_value::<SnapshotFrame>(reader, idle).await? {
            SnapshotFrame::Chunk(chunk) => {
                if data.len() as u64 + chunk.len() as u64 > total_bytes {
                    return Err(StreamError::Protocol("more data than announced".into()));
                }
                data.extend_from_slice(&chunk);
                progress.moved(chunk.len() as u64);
                chunks += 1;
                frames.clear();
                frames.push_value(&SnapshotReply::Ack(chunks))?;
                write_all_timeout(writer, frames.bytes(), idle).await?;
                // As on the sending side: let raft connections run between chunks.
                tokio::task::yield_now().await;
            }
            SnapshotFrame::Done if data.len() as u64 == total_bytes => break,
            SnapshotFrame::Done => {
                return Err(StreamError::Protocol(format!(
                    "done after {} of {total_bytes} bytes",
                    data.len()
                )))
            }
            SnapshotFrame::Header { .. } => {
                return Err(StreamError::Protocol("second header".into()))
            }
        }
    }
    match envelope.message.snapshot.as_mut() {
        Some(snapshot) => snapshot.data = data.freeze(),
        None if total_bytes == 0 => {}
        None => {
            return Err(StreamError::Protocol(
                "data for a message without a snapshot".into(),
            ))
        }
    }
    let taken = shared
        .inbound
        .send(Inbound::Messages {
            from_node,
            envelopes: vec![*envelope],
        })
        .await;
    if taken {
        Ok(())
    } else {
        Err(StreamError::Refused("node is shutting down".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::pace;
    use std::time::Duration;

    #[test]
    fn pacing_keeps_the_rate_over_the_whole_stream() {
        // Unlimited: never waits.
        assert_eq!(pace(64 << 20, 0, Duration::ZERO), None);
        // 4 MiB at 4 MiB/s is due at 1 s.
        let rate = 4 << 20;
        assert_eq!(
            pace(4 << 20, rate, Duration::from_millis(250)),
            Some(Duration::from_millis(750))
        );
        // On time or late: no wait, and no burst owed either.
        assert_eq!(pace(4 << 20, rate, Duration::from_secs(1)), None);
        assert_eq!(pace(4 << 20, rate, Duration::from_secs(3)), None);
    }
}
