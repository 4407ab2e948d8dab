//! A loopback TCP proxy on every link between nodes whose transports are TCP, so a test
//! can fail the network the way a real one fails: cut a node off (its connections closed,
//! new ones closed as soon as they arrive) and cut a region's snapshot stream part-way,
//! after a given number of chunks went through.
//!
//! Node `i` reaches node `j` through the proxy's listener for the link `(i, j)`. The proxy
//! reads the dialer's frames just enough to tell a raft connection from a snapshot stream
//! (the handshake) and, on a snapshot stream, its region (the header) and its chunks.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use flotilla_transport::frame::{decode_frame, decode_value, Decoded};
use flotilla_transport::{Handshake, SnapshotFrame, StreamKind};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest frame the proxy parses (the transport's default bound).
const FRAME_BYTES_MAX: usize = 16 << 20;

/// Which snapshot streams to cut, and how far to let them run first.
#[derive(Debug, Clone, Copy)]
struct StreamCut {
    to_node: u64,
    region_id: u64,
    after_chunks: u64,
    /// Streams still to cut.
    remaining: u64,
}

/// What the proxy saw of the snapshot streams to one (node, region).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamLog {
    /// Streams that started (a header went through).
    pub started: u64,
    /// Streams the proxy cut.
    pub cut: u64,
    /// Chunks forwarded on each cut stream before it was cut.
    pub chunks_before_cut: Vec<u64>,
    /// Streams whose `Done` went through.
    pub completed: u64,
}

#[derive(Default)]
struct State {
    cut_stream: Option<StreamCut>,
    streams: HashMap<(u64, u64), StreamLog>,
}

/// The proxies of a cluster; dropping it stops them.
pub struct Proxy {
    addrs: HashMap<(u64, u64), SocketAddr>,
    isolated: watch::Sender<HashSet<u64>>,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a listener for every ordered pair of `nodes` (id, real address). Must run
    /// inside a tokio runtime.
    pub async fn start(nodes: &[(u64, SocketAddr)]) -> Proxy {
        let (isolated, _) = watch::channel(HashSet::new());
        let mut proxy = Proxy {
            addrs: HashMap::new(),
            isolated,
            state: Arc::default(),
            tasks: Vec::new(),
        };
        for &(from, _) in nodes {
            for &(to, target) in nodes.iter().filter(|(to, _)| *to != from) {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                proxy
                    .addrs
                    .insert((from, to), listener.local_addr().expect("addr"));
                let link = Link {
                    from,
                    to,
                    target,
                    isolated: proxy.isolated.subscribe(),
                    state: proxy.state.clone(),
                };
                proxy.tasks.push(tokio::spawn(link.accept_loop(listener)));
            }
        }
        proxy
    }

    /// The address node `from` must use for node `to`.
    pub fn addr(&self, from: u64, to: u64) -> SocketAddr {
        self.addrs[&(from, to)]
    }

    /// Cuts `node` off: every connection to or from it is closed, and so is every new one.
    pub fn isolate(&self, node: u64) {
        self.isolated.send_modify(|s| {
            s.insert(node);
        });
    }

    /// Lets every node reach every other again.
    pub fn heal(&self) {
        self.isolated.send_modify(|s| s.clear());
    }

    /// Cuts the next `streams` snapshot streams of `region_id` to `to_node` once
    /// `after_chunks` chunks of each went through.
    pub fn cut_snapshot_streams(
        &self,
        to_node: u64,
        region_id: u64,
        after_chunks: u64,
        streams: u64,
    ) {
        self.state.lock().cut_stream = Some(StreamCut {
            to_node,
            region_id,
            after_chunks,
            remaining: streams,
        });
    }

    /// What went through of the snapshot streams of `region_id` to `to_node`.
    pub fn snapshot_streams(&self, to_node: u64, region_id: u64) -> StreamLog {
        self.state
            .lock()
            .streams
            .get(&(to_node, region_id))
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One directed link's listener.
struct Link {
    from: u64,
    to: u64,
    target: SocketAddr,
    isolated: watch::Receiver<HashSet<u64>>,
    state: Arc<Mutex<State>>,
}

impl Link {
    fn cut_off(&self, isolated: &HashSet<u64>) -> bool {
        isolated.contains(&self.from) || isolated.contains(&self.to)
    }

    async fn accept_loop(self, listener: TcpListener) {
        let link = Arc::new(self);
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            if link.cut_off(&link.isolated.borrow()) {
                continue;
            }
            conns.spawn(link.clone().serve(client));
            while conns.try_join_next().is_some() {}
        }
    }

    /// Forwards one connection until either side closes it, the link is cut off, or its
    /// snapshot stream is to be cut.
    async fn serve(self: Arc<Self>, client: TcpStream) {
        let Ok(server) = TcpStream::connect(self.target).await else {
            return;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (client_rd, mut client_wr) = client.into_split();
        let (mut server_rd, mut server_wr) = server.into_split();
        let mut isolated = self.isolated.clone();
        tokio::select! {
            _ = self.dialer_to_acceptor(client_rd, &mut server_wr) => {}
            _ = tokio::io::copy(&mut server_rd, &mut client_wr) => {}
            _ = isolated.wait_for(|s| self.cut_off(s)) => {}
        }
    }

    /// Copies the dialer's frames to the acceptor, watching snapshot streams.
    async fn dialer_to_acceptor(&self, mut rd: OwnedReadHalf, wr: &mut OwnedWriteHalf) {
        let mut buf: Vec<u8> = Vec::with_capacity(256 << 10);
        let mut snapshot = false;
        let mut region = None;
        let mut chunks = 0u64;
        let mut frames = 0u64;
        loop {
            // Forward every whole frame in the buffer.
            loop {
                let (payload, frame_bytes) = match decode_frame(&buf, FRAME_BYTES_MAX) {
                    Ok(Decoded::Frame {
                        payload,
                        frame_bytes,
                    }) => (payload, frame_bytes),
                    Ok(Decoded::Incomplete { .. }) => break,
                    Err(_) => return,
                };
                frames += 1;
                if frames == 1 {
                    let Ok(hello) = decode_value::<Handshake>(payload) else {
                        return;
                    };
                    snapshot = hello.stream == StreamKind::Snapshot;
                } else if snapshot {
                    match decode_value::<SnapshotFrame>(payload) {
                        Ok(SnapshotFrame::Header { envelope, .. }) => {
                            region = Some(envelope.region_id);
                            self.log(envelope.region_id, |l| l.started += 1);
                        }
                        Ok(SnapshotFrame::Chunk(_)) => {
                            if self.cut_now(region, chunks) {
                                return;
                            }
                            chunks += 1;
                        }
                        Ok(SnapshotFrame::Done) => {
                            if let Some(r) = region {
                                self.log(r, |l| l.completed += 1);
                            }
                        }
                        Err(_) => return,
                    }
                }
                if wr.write_all(&buf[..frame_bytes]).await.is_err() {
                    return;
                }
                buf.drain(..frame_bytes);
            }
            if !snapshot && frames > 0 {
                // A raft connection: nothing more to watch.
                let _ = wr.write_all(&buf).await;
                let _ = tokio::io::copy(&mut rd, wr).await;
                return;
            }
            let mut chunk = [0u8; 64 << 10];
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether the stream of `region` that forwarded `chunks` chunks is to be cut now
    /// (counted as cut if so).
    fn cut_now(&self, region: Option<u64>, chunks: u64) -> bool {
        let Some(region) = region else { return false };
        let mut state = self.state.lock();
        let Some(cut) = state.cut_stream.as_mut() else {
            return false;
        };
        if (cut.to_node, cut.region_id) != (self.to, region)
            || cut.remaining == 0
            || chunks < cut.after_chunks
        {
            return false;
        }
        cut.remaining -= 1;
        let l = state.streams.entry((self.to, region)).or_default();
        l.cut += 1;
        l.chunks_before_cut.push(chunks);
        true
    }

    fn log(&self, region: u64, f: impl FnOnce(&mut StreamLog)) {
        f(self
            .state
            .lock()
            .streams
            .entry((self.to, region))
            .or_default());
    }
}
