//! The TCP transport: a listener, one task per outbound peer, one task per inbound
//! connection and per snapshot stream, all on the transport's own tokio runtime.
//!
//! The runtime is the transport's own (not the caller's) so that it works the same under
//! actix (whose arbiters are single-threaded tokio runtimes), under plain threads and in
//! tests, and so that the node's actors never share a thread with socket work.

use crate::config::TransportConfig;
use crate::error::{SendError, TransportError};
use crate::inbound::{inbound_channel, InboundReceiver, InboundSender};
use crate::listener;
use crate::metrics::{add, Totals, TransportStats};
use crate::peer::{self, Peer, Pushed};
use crate::snapshot;
use crate::transport::Transport;
use flotilla_common::{MessageKind, RaftEnvelope};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tracing::warn;

/// State shared by the handle and every task.
pub(crate) struct Shared {
    pub config: TransportConfig,
    pub totals: Totals,
    pub inbound: InboundSender,
    pub peers: RwLock<HashMap<u64, Arc<Peer>>>,
    pub snapshot_slots: Arc<Semaphore>,
    pub connection_slots: Arc<Semaphore>,
    pub runtime: tokio::runtime::Handle,
}

/// The TCP implementation of [`Transport`]. Dropping it stops every task and closes
/// every connection.
pub struct TcpTransport {
    shared: Arc<Shared>,
    runtime: Option<Runtime>,
    local_addr: SocketAddr,
}

impl TcpTransport {
    /// Binds `config.listen_addr`, starts the transport's runtime and returns the handle
    /// with the receiver of everything that arrives. `peers` are the nodes known at start
    /// (more can be added with [`Transport::add_peer`]).
    pub fn start(
        config: TransportConfig,
        peers: impl IntoIterator<Item = (u64, SocketAddr)>,
    ) -> Result<(TcpTransport, InboundReceiver), TransportError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.io_threads)
            .thread_name(format!("transport-{}", config.node_id))
            .enable_all()
            .build()?;
        // Bound here (not in a task) so that an address in use is an error from start().
        let std_listener = std::net::TcpListener::bind(config.listen_addr)?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let (tx, rx) = inbound_channel(config.inbound_batches_max);
        let shared = Arc::new(Shared {
            snapshot_slots: Arc::new(Semaphore::new(config.snapshots_in_flight_max)),
            connection_slots: Arc::new(Semaphore::new(config.connections_inbound_max)),
            config,
            totals: Totals::default(),
            inbound: tx,
            peers: RwLock::new(HashMap::new()),
            runtime: runtime.handle().clone(),
        });
        runtime.spawn(listener::run(shared.clone(), listener));
        let transport = TcpTransport {
            shared,
            runtime: Some(runtime),
            local_addr,
        };
        for (node_id, addr) in peers {
            transport.add_peer(node_id, addr);
        }
        Ok((transport, rx))
    }

    /// The address the listener is bound to (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The totals so far.
    pub fn stats(&self) -> TransportStats {
        self.shared.totals.snapshot()
    }

    /// The configuration in force.
    pub fn config(&self) -> &TransportConfig {
        &self.shared.config
    }

    /// Stops the transport and waits (up to `timeout`) for its tasks to end, so that the
    /// listening port is free when this returns. Must not be called from async code;
    /// dropping the transport there stops it without waiting.
    pub fn shutdown(mut self, timeout: Duration) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(timeout);
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Does not block, so dropping is safe inside an async context too.
            rt.shutdown_background();
        }
    }
}

impl TcpTransport {
    /// Counts messages dropped for fitting in no frame.
    fn too_big(&self, p: &Peer, n: u64) {
        // Raft bounds its messages far below a frame; this is a bug upstream.
        warn!(
            to = p.node_id,
            messages = n,
            "message fits in no frame (or does not encode); dropped"
        );
        add(&self.shared.totals.messages_dropped, n);
        p.metrics.dropped.increment(n);
    }

    /// Counts messages refused at the queue's bound.
    fn refused(&self, p: &Peer, n: u64) {
        add(&self.shared.totals.messages_refused, n);
        p.metrics.refused.increment(n);
    }
}

impl Transport for TcpTransport {
    fn node_id(&self) -> u64 {
        self.shared.config.node_id
    }

    fn snapshot_streams(&self) -> crate::metrics::SnapshotStreamStats {
        self.shared.totals.streams()
    }

    fn add_peer(&self, node_id: u64, addr: SocketAddr) {
        let mut peers = self.shared.peers.write();
        if let Some(p) = peers.get(&node_id) {
            p.set_addr(addr);
            return;
        }
        let p = Arc::new(Peer::new(node_id, addr));
        peers.insert(node_id, p.clone());
        self.shared.runtime.spawn(peer::run(self.shared.clone(), p));
    }

    fn remove_peer(&self, node_id: u64) {
        if let Some(p) = self.shared.peers.write().remove(&node_id) {
            p.remove();
        }
    }

    fn knows(&self, node_id: u64) -> bool {
        node_id == self.shared.config.node_id || self.shared.peers.read().contains_key(&node_id)
    }

    fn send(&self, envelope: RaftEnvelope) -> Result<(), SendError> {
        if envelope.message.kind == MessageKind::Snapshot {
            return self.send_snapshot(envelope);
        }
        let peers = self.shared.peers.read();
        let Some(p) = peers.get(&envelope.to_node) else {
            return Err(SendError::UnknownPeer(Box::new(envelope)));
        };
        match p.push(envelope, &self.shared.config) {
            Ok(Pushed::Queued) => Ok(()),
            Ok(Pushed::TooBig) => {
                self.too_big(p, 1);
                Ok(())
            }
            Err(e) => {
                self.refused(p, 1);
                Err(SendError::Full(e))
            }
        }
    }

    fn send_batch(&self, envelopes: Vec<RaftEnvelope>) -> Vec<SendError> {
        let mut errors = Vec::new();
        // Per destination, in the batch's order (few destinations: a short list).
        let mut groups: Vec<(u64, Vec<RaftEnvelope>)> = Vec::new();
        for envelope in envelopes {
            if envelope.message.kind == MessageKind::Snapshot {
                if let Err(e) = self.send_snapshot(envelope) {
                    errors.push(e);
                }
                continue;
            }
            let to = envelope.to_node;
            match groups.iter_mut().find(|(n, _)| *n == to) {
                Some((_, group)) => group.push(envelope),
                None => groups.push((to, vec![envelope])),
            }
        }
        let peers = self.shared.peers.read();
        for (to, group) in groups {
            let Some(p) = peers.get(&to) else {
                errors.extend(
                    group
                        .into_iter()
                        .map(|e| SendError::UnknownPeer(Box::new(e))),
                );
                continue;
            };
            let (too_big, refused) = p.push_many(group, &self.shared.config);
            p.flush(&self.shared.totals);
            if too_big > 0 {
                self.too_big(p, too_big as u64);
            }
            if !refused.is_empty() {
                self.refused(p, refused.len() as u64);
                errors.extend(refused.into_iter().map(|e| SendError::Full(Box::new(e))));
            }
        }
        errors
    }

    fn send_snapshot(&self, envelope: RaftEnvelope) -> Result<(), SendError> {
        let Some(addr) = self
            .shared
            .peers
            .read()
            .get(&envelope.to_node)
            .map(|p| p.addr())
        else {
            return Err(SendError::UnknownPeer(Box::new(envelope)));
        };
        let Ok(permit) = self.shared.snapshot_slots.clone().try_acquire_owned() else {
            return Err(SendError::SnapshotsBusy(Box::new(envelope)));
        };
        let shared = self.shared.clone();
        self.shared
            .runtime
            .spawn(async move { snapshot::send(&shared, addr, envelope, permit).await });
        Ok(())
    }
}
