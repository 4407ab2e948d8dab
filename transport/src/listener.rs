//! The accepting side: one task accepts, one task per connection checks the handshake and
//! then reads raft frames (or one snapshot stream) from it.
//!
//! Whatever a peer sends, the worst outcome is that its own connection is closed with a
//! logged reason: frames are checked before decoding, allocation is bounded by the frame
//! bound, and connections beyond `connections_inbound_max` are closed at once.

use crate::batch::decode_batch;
use crate::error::FrameError;
use crate::handshake::{accept, Established, StreamKind};
use crate::metrics::{add, handshake_refused, InboundMetrics};
use crate::snapshot;
use crate::tcp::Shared;
use crate::transport::Inbound;
use crate::wire::ReadError;
use flotilla_common::RaftEnvelope;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// Encoded size of a small raft message with its length prefix (an append with one
/// small entry is ~50 bytes), for sizing a received batch.
const SMALL_MESSAGE_BYTES: usize = 48;
/// Most envelopes handed to the node in one batch (and pre-sized for, ~1.2 MB): frames
/// already buffered beyond it wait for the next batch.
const BATCH_MESSAGES_MAX: usize = 4096;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Accepts connections until the runtime shuts down.
pub(crate) async fn run(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (socket, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = shared.connection_slots.clone().try_acquire_owned() else {
            warn!(%addr, max = shared.config.connections_inbound_max, "too many inbound connections; closed");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(&shared, socket, addr).await;
            drop(permit);
        });
    }
}

async fn serve(shared: &Shared, socket: TcpStream, addr: SocketAddr) {
    let (hello, conn) = match accept(&shared.config, socket).await {
        Ok(x) => x,
        Err(e) => {
            add(&shared.totals.handshakes_refused, 1);
            handshake_refused();
            warn!(%addr, reason = %e, "handshake refused; connection closed");
            return;
        }
    };
    debug!(%addr, peer = hello.node_id, stream = ?hello.stream, "inbound connection");
    match hello.stream {
        StreamKind::Raft => serve_raft(shared, hello.node_id, addr, conn).await,
        StreamKind::Snapshot => snapshot::receive(shared, hello.node_id, addr, conn).await,
    }
}

/// Reads raft frames from `from_node` and hands their envelopes to the node: every frame
/// already whole in the buffer goes into one batch (up to `BATCH_MESSAGES_MAX`), so a busy
/// connection costs one channel send and one wake-up per read, not per frame.
async fn serve_raft(shared: &Shared, from_node: u64, addr: SocketAddr, conn: Established) {
    let metrics = InboundMetrics::new(from_node);
    let mut reader = conn.reader;
    loop {
        let first = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                debug!(%addr, peer = from_node, "raft connection closed by peer");
                return;
            }
            Err(e) => return read_failed(shared, &metrics, from_node, addr, e),
        };
        let mut envelopes =
            Vec::with_capacity((first.0.len() / SMALL_MESSAGE_BYTES).min(BATCH_MESSAGES_MAX));
        let (mut frames, mut wire_bytes) = (0u64, 0u64);
        let mut next = Some(first);
        // Why the connection must close after this batch is handed over (the frames
        // before a bad one are good and delivered).
        let mut failure: Option<ReadError> = None;
        while let Some((payload, bytes)) = next.take() {
            if let Err(reason) = decode_checked(shared, from_node, &payload, &mut envelopes) {
                failure = Some(ReadError::Frame(FrameError::Payload(reason)));
                break;
            }
            frames += 1;
            wire_bytes += bytes as u64;
            if envelopes.len() < BATCH_MESSAGES_MAX {
                match reader.next_buffered() {
                    Ok(more) => next = more,
                    Err(e) => failure = Some(e),
                }
            }
        }
        let n = envelopes.len() as u64;
        add(&shared.totals.frames_received, frames);
        add(&shared.totals.messages_received, n);
        add(&shared.totals.bytes_received, wire_bytes);
        metrics.frames.increment(frames);
        metrics.messages.increment(n);
        metrics.bytes.increment(wire_bytes);
        // Awaiting capacity here is the back-pressure: this reader stops, TCP fills up,
        // and the sender's bounded queue starts refusing.
        if !envelopes.is_empty()
            && !shared
                .inbound
                .send(Inbound::Messages {
                    from_node,
                    envelopes,
                })
                .await
        {
            return; // the node dropped its receiver: shutting down
        }
        if let Some(e) = failure {
            return read_failed(shared, &metrics, from_node, addr, e);
        }
        // A busy connection always has a next frame buffered, so this loop would never
        // reach a pending read; yield so handshakes and other peers on this runtime run.
        tokio::task::yield_now().await;
    }
}

/// Decodes one frame's payload onto `out`, checking that every envelope is from the
/// authenticated node and for this one. On error `out` is left as it was.
fn decode_checked(
    shared: &Shared,
    from_node: u64,
    payload: &[u8],
    out: &mut Vec<RaftEnvelope>,
) -> Result<(), String> {
    let before = out.len();
    let node_id = shared.config.node_id;
    let result = match decode_batch(payload, out) {
        Err(e) => Err(e.to_string()),
        // The handshake authenticated the node: it may not speak for another.
        Ok(()) => match out[before..]
            .iter()
            .find(|e| e.from_node != from_node || e.to_node != node_id)
        {
            Some(e) => Err(format!(
                "misaddressed envelope {} -> {}",
                e.from_node, e.to_node
            )),
            None => Ok(()),
        },
    };
    if result.is_err() {
        out.truncate(before);
    }
    result
}

fn read_failed(
    shared: &Shared,
    metrics: &InboundMetrics,
    from_node: u64,
    addr: SocketAddr,
    e: ReadError,
) {
    match e {
        ReadError::Io(e) => debug!(%addr, peer = from_node, error = %e, "raft connection broke"),
        ReadError::Frame(e) => {
            add(&shared.totals.decode_errors, 1);
            metrics.decode_errors.increment(1);
            warn!(%addr, peer = from_node, reason = %e, "bad frame; connection closed");
        }
    }
}
