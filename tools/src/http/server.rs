//! The status server's listener: HTTP/1.1 on hyper, one task per connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{watch, Semaphore};

use super::routes::{route, State};
use crate::service::StatusSource;

/// Open status connections at once. Scrapers and operators are few; beyond this a connection
/// is closed at once, so a flood cannot take memory from the node.
pub const HTTP_CONNECTIONS_MAX: usize = 256;

/// Time a client has to send its request headers, so an idle or slow connection does not
/// hold one of the [`HTTP_CONNECTIONS_MAX`] slots.
pub const HEADER_READ_TIMEOUT_MILLIS: u64 = 10_000;

/// How often histogram samples are folded into buckets when nobody scrapes `/metrics`; the
/// recorder keeps raw samples until then, so this bounds their memory.
const METRICS_UPKEEP_MILLIS: u64 = 5_000;

/// How long to pause accepting after `accept` fails (out of descriptors, usually).
const ACCEPT_RETRY_DELAY_MILLIS: u64 = 100;

/// The HTTP status server of one node.
pub struct StatusServer {
    listener: TcpListener,
    state: Arc<State>,
}

impl StatusServer {
    /// Binds the listening socket. `metrics` is the handle of the process's recorder (see
    /// [`install_prometheus_recorder`](super::install_prometheus_recorder)).
    pub async fn bind(
        addr: impl ToSocketAddrs,
        status: Arc<dyn StatusSource>,
        metrics: PrometheusHandle,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            state: Arc::new(State { status, metrics }),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; then stops accepting and drops open connections.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let permits = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
        let (_stop_tx, stop_rx) = watch::channel(());
        let mut upkeep = tokio::time::interval(Duration::from_millis(METRICS_UPKEEP_MILLIS));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = upkeep.tick() => {
                    self.state.metrics.run_upkeep();
                    continue;
                }
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "status server accept failed; pausing");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_DELAY_MILLIS)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                tracing::debug!(%peer, "status connection refused: too many open");
                continue;
            };
            let state = Arc::clone(&self.state);
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = Arc::clone(&state);
                    async move {
                        let resp =
                            route(&state, req.method(), req.uri().path(), req.uri().query()).await;
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MILLIS))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    result = conn => if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "status connection ended with an error");
                    },
                    _ = stop.changed() => {}
                }
                drop(permit);
            });
        }
    }
}
