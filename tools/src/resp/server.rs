//! The RESP listener: accepts connections up to a limit and serves each on its own task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{watch, Semaphore};

use super::connection::serve_connection;
use super::cursor::CursorTable;
use super::execute::Shared;
use super::metric;
use crate::service::KvService;

/// Default of [`RespLimits::connections_max`]: redis-benchmark's `-c 64` against each of a
/// few nodes fits many times over, while the descriptors and buffers stay within what a
/// laptop allows one process (`ulimit -n` is often 1024 on a desktop, so raise it first).
pub const CONNECTIONS_MAX: usize = 4096;

/// Default of [`RespLimits::pipeline_depth_max`]: commands of one connection in flight at
/// once. Well above redis-benchmark's `-P 16`; it bounds the answers one connection holds.
pub const PIPELINE_DEPTH_MAX: usize = 1024;

/// How long to pause accepting after `accept` fails (out of descriptors, usually), so the
/// loop does not spin while connections close.
const ACCEPT_RETRY_DELAY_MILLIS: u64 = 100;

/// The reply to a connection over the limit, as Redis words it.
const TOO_MANY_CLIENTS: &[u8] = b"-ERR max number of clients reached\r\n";

/// Bounds of one RESP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    /// Open connections at once; one more is answered with an error and closed.
    pub connections_max: usize,
    /// Commands of one connection in flight at once.
    pub pipeline_depth_max: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX,
            pipeline_depth_max: PIPELINE_DEPTH_MAX,
        }
    }
}

/// A RESP2 server in front of a [`KvService`].
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use std::sync::Arc;
/// use flotilla_tools::{MemoryKvService, RespServer};
///
/// let server = RespServer::bind("127.0.0.1:6379", Arc::new(MemoryKvService::new())).await?;
/// server.serve(std::future::pending()).await
/// # }
/// ```
pub struct RespServer {
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: RespLimits,
}

impl RespServer {
    /// Binds the listening socket (port 0 picks a free port; see [`RespServer::local_addr`]).
    pub async fn bind(addr: impl ToSocketAddrs, service: Arc<dyn KvService>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let shared = Arc::new(Shared {
            service,
            cursors: Arc::new(CursorTable::new()),
        });
        Ok(Self {
            listener,
            shared,
            limits: RespLimits::default(),
        })
    }

    /// Replaces the default limits.
    pub fn with_limits(mut self, limits: RespLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts and serves connections until `shutdown` completes. Then it stops accepting,
    /// and each open connection closes once it has answered what it already read.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let permits = Arc::new(Semaphore::new(self.limits.connections_max));
        // Dropping the sender is the stop signal for every connection task.
        let (_stop_tx, stop_rx) = watch::channel(());
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "RESP accept failed; pausing");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_DELAY_MILLIS)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                metric::connection_rejected();
                tracing::debug!(%peer, "RESP connection refused: max number of clients reached");
                // A fresh socket's send buffer is empty, so this never blocks; if it fails the
                // client just sees the close.
                let _ = stream.try_write(TOO_MANY_CLIENTS);
                continue;
            };
            // Answers are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            let shared = Arc::clone(&self.shared);
            let stop = stop_rx.clone();
            let depth = self.limits.pipeline_depth_max;
            tokio::spawn(async move {
                metric::connection_opened();
                serve_connection(stream, shared, depth, stop).await;
                metric::connection_closed();
                drop(permit);
            });
        }
    }
}
