//! A fault-injecting TCP proxy in front of every raft address: partitions and delay without
//! privileges.
//!
//! Node `i` reaches node `j` through its own listener `(i, j)`: each node's
//! `--initial-cluster` names, for every other node, the proxy port of that ordered pair.
//! Raft traffic from `i` to `j` flows on the connection `i` opened (the transport uses one
//! connection per direction), so the link `(i, j)` carries exactly what `i` sends to `j`;
//! cutting it is a one-way partition, cutting both `(i, j)` and `(j, i)` a full one.
//!
//! A cut link behaves like a network that drops packets, not like a refused connection:
//! connections are accepted and whatever arrives is read and thrown away, so the sender
//! sees silence. Data already in flight on a connection when its link is cut is thrown
//! away too, and such a connection is closed when the link heals (its byte stream has a
//! hole, so the receiver could not decode it; the sender reconnects). Delay holds each
//! chunk for the link's delay before forwarding it, keeping the order within a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes read at once from either side of a proxied connection.
const CHUNK_BYTES: usize = 64 << 10;

/// Chunks waiting for their delay per connection direction; bounds memory when a link is
/// slow and the sender is fast (the reader then waits, which is TCP back-pressure).
const DELAY_QUEUE_CHUNKS_MAX: usize = 1024;

/// The state of one directed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    /// Everything sent on the link is dropped.
    pub cut: bool,
    /// Added to every chunk before it is forwarded.
    pub delay: Duration,
    /// Bumped on every heal: connections from an older generation that saw a cut close.
    generation: u64,
}

/// The proxies of a cluster: one listener per ordered pair of nodes.
pub struct Network {
    links: HashMap<(u64, u64), watch::Sender<LinkState>>,
    addrs: HashMap<(u64, u64), SocketAddr>,
    /// Bytes forwarded in all, for the report.
    forwarded: Arc<AtomicU64>,
    /// Bytes dropped by cuts.
    dropped: Arc<AtomicU64>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Network {
    /// Starts a proxy for every ordered pair of `nodes` (id, real raft address), listening on
    /// 127.0.0.1 ports chosen by the system. Must run inside a tokio runtime.
    pub async fn start(nodes: &[(u64, SocketAddr)]) -> std::io::Result<Network> {
        let mut net = Network {
            links: HashMap::new(),
            addrs: HashMap::new(),
            forwarded: Arc::new(AtomicU64::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
            tasks: Mutex::new(Vec::new()),
        };
        for &(from, _) in nodes {
            for &(to, target) in nodes {
                if from == to {
                    continue;
                }
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                net.addrs.insert((from, to), listener.local_addr()?);
                let (tx, rx) = watch::channel(LinkState::default());
                net.links.insert((from, to), tx);
                let (fwd, drop) = (net.forwarded.clone(), net.dropped.clone());
                let task = tokio::spawn(accept_loop(listener, target, rx, fwd, drop));
                net.tasks.lock().push(task);
            }
        }
        Ok(net)
    }

    /// The address node `from` must use to reach node `to`.
    pub fn addr(&self, from: u64, to: u64) -> SocketAddr {
        self.addrs[&(from, to)]
    }

    /// Every directed link.
    pub fn links(&self) -> Vec<(u64, u64)> {
        let mut l: Vec<_> = self.links.keys().copied().collect();
        l.sort();
        l
    }

    fn update(&self, from: u64, to: u64, f: impl FnOnce(&mut LinkState)) {
        if let Some(tx) = self.links.get(&(from, to)) {
            tx.send_modify(f);
        }
    }

    /// Drops everything `from` sends to `to` until [`Network::heal`].
    pub fn cut(&self, from: u64, to: u64) {
        self.update(from, to, |s| s.cut = true);
    }

    /// Cuts every link to and from `node`.
    pub fn isolate(&self, node: u64) {
        for (a, b) in self.links() {
            if a == node || b == node {
                self.cut(a, b);
            }
        }
    }

    /// Adds `delay` to the link `from` → `to`.
    pub fn delay(&self, from: u64, to: u64, delay: Duration) {
        self.update(from, to, |s| s.delay = delay);
    }

    /// Every link up, no delay; connections that lost data to a cut are closed.
    pub fn heal(&self) {
        for tx in self.links.values() {
            tx.send_modify(|s| {
                if s.cut {
                    s.generation += 1;
                }
                s.cut = false;
                s.delay = Duration::ZERO;
            });
        }
    }

    /// Bytes forwarded and bytes dropped so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.forwarded.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    link: watch::Receiver<LinkState>,
    forwarded: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: try again shortly rather than end the link.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = client.set_nodelay(true);
        let (link, fwd, drop) = (link.clone(), forwarded.clone(), dropped.clone());
        tokio::spawn(async move {
            let Ok(Ok(server)) =
                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target)).await
            else {
                return; // the node is down: the client sees the connection close
            };
            let _ = server.set_nodelay(true);
            proxy_connection(client, server, link, fwd, drop).await;
        });
    }
}

/// Forwards both directions until either side closes, the link heals after a cut this
/// connection saw, or a write fails.
async fn proxy_connection(
    client: TcpStream,
    server: TcpStream,
    link: watch::Receiver<LinkState>,
    forwarded: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
) {
    let generation = link.borrow().generation;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(
        cr,
        sw,
        link.clone(),
        generation,
        forwarded.clone(),
        dropped.clone(),
    );
    let down = pump(sr, cw, link, generation, forwarded, dropped);
    // Either direction ending ends both: dropping the halves closes the sockets.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// One direction of a connection: read chunks, drop them while the link is cut, else forward
/// each after the link's delay.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<LinkState>,
    generation: u64,
    forwarded: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
) {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(DELAY_QUEUE_CHUNKS_MAX);
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut saw_cut = false;
        loop {
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                changed = link.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let s = *link.borrow();
                    if s.cut {
                        saw_cut = true;
                    }
                    if saw_cut && s.generation != generation {
                        return; // healed after a hole in this stream: close it
                    }
                    continue;
                }
            };
            let s = *link.borrow();
            if s.cut || saw_cut {
                saw_cut = true;
                dropped.fetch_add(n as u64, Ordering::Relaxed);
                if s.generation != generation && !s.cut {
                    return;
                }
                continue;
            }
            forwarded.fetch_add(n as u64, Ordering::Relaxed);
            let due = tokio::time::Instant::now() + s.delay;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}
