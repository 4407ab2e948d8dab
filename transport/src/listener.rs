//! The accepting side: one task accepts, one task per connection checks the handshake and
//! then reads raft frames (or one snapshot stream) from it.
//!
//! Whatever a peer sends, the worst outcome is that its own connection is closed with a
//! logged reason: frames are checked before decoding, allocation is bounded by the frame
//! bound, and connections beyond `connections_inbound_max` are closed at once.

use crate::batch::decode_batch;
use crate::handshake::{accept, Established, StreamKind};
use crate::metrics::{add, handshake_refused, InboundMetrics};
use crate::snapshot;
use crate::tcp::Shared;
use crate::transport::Inbound;
use crate::wire::ReadError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// Encoded size of a small raft message with its length prefix (an append with one
/// small entry is ~50 bytes), for sizing a received batch.
const SMALL_MESSAGE_BYTES: usize = 48;
/// Most envelopes a batch is pre-sized for (~2.4 MB), whatever the frame claims.
const BATCH_PRESIZE_MAX: usize = 8192;

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

/// Reads raft frames from `from_node` and hands each frame's batch to the node.
async fn serve_raft(shared: &Shared, from_node: u64, addr: SocketAddr, conn: Established) {
    let metrics = InboundMetrics::new(from_node);
    let mut reader = conn.reader;
    let node_id = shared.config.node_id;
    loop {
        let (payload, wire_bytes) = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                debug!(%addr, peer = from_node, "raft connection closed by peer");
                return;
            }
            Err(ReadError::Io(e)) => {
                debug!(%addr, peer = from_node, error = %e, "raft connection broke");
                return;
            }
            Err(ReadError::Frame(e)) => {
                add(&shared.totals.decode_errors, 1);
                metrics.decode_errors.increment(1);
                warn!(%addr, peer = from_node, reason = %e, "bad frame; connection closed");
                return;
            }
        };
        // Sized from the payload so that a frame of small messages decodes without
        // regrowing (and copying) the vector, capped so a frame cannot make it big.
        let mut envelopes =
            Vec::with_capacity((payload.len() / SMALL_MESSAGE_BYTES).min(BATCH_PRESIZE_MAX));
        let bad = match decode_batch(&payload, &mut envelopes) {
            Err(e) => Some(e.to_string()),
            // The handshake authenticated the node: it may not speak for another.
            Ok(()) => envelopes
                .iter()
                .find(|e| e.from_node != from_node || e.to_node != node_id)
                .map(|e| format!("misaddressed envelope {} -> {}", e.from_node, e.to_node)),
        };
        if let Some(reason) = bad {
            add(&shared.totals.decode_errors, 1);
            metrics.decode_errors.increment(1);
            warn!(%addr, peer = from_node, %reason, "bad payload; connection closed");
            return;
        }
        let n = envelopes.len() as u64;
        add(&shared.totals.frames_received, 1);
        add(&shared.totals.messages_received, n);
        add(&shared.totals.bytes_received, wire_bytes as u64);
        metrics.frames.increment(1);
        metrics.messages.increment(n);
        metrics.bytes.increment(wire_bytes as u64);
        // Awaiting capacity here is the back-pressure: this reader stops, TCP fills up,
        // and the sender's bounded queue starts refusing.
        if shared
            .inbound
            .send(Inbound::Messages {
                from_node,
                envelopes,
            })
            .await
            .is_err()
        {
            return; // the node dropped its receiver: shutting down
        }
        // A busy connection always has a next frame buffered, so this loop would never
        // reach a pending read; yield so handshakes and other peers on this runtime run.
        tokio::task::yield_now().await;
    }
}
