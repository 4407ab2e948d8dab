//! Helpers shared by the transport's integration tests.
#![allow(dead_code)]

use flotilla_common::{Entry, EntryKind, Message, MessageKind, RaftEnvelope};
use flotilla_transport::{Inbound, InboundReceiver, TcpTransport, Transport, TransportConfig};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const CLUSTER: u64 = 0xF10;

/// A config for `node` on an ephemeral loopback port, with one io thread (the tests run
/// several nodes on 2 cores).
pub fn config(node: u64) -> TransportConfig {
    let mut c = TransportConfig::new(CLUSTER, node, "127.0.0.1:0".parse().unwrap());
    c.io_threads = 1;
    c
}

/// The benchmark's message: an append carrying one 16-byte entry; `seq` goes in `index`.
pub fn append(region: u64, from_node: u64, to_node: u64, seq: u64) -> RaftEnvelope {
    let mut m = Message::new(MessageKind::Append, from_node, to_node, 7);
    m.index = seq;
    m.log_term = 7;
    m.commit = seq;
    m.entries = vec![Entry::new(
        EntryKind::Normal,
        7,
        seq + 1,
        [seq as u8; 16].to_vec(),
    )];
    RaftEnvelope::new(region, from_node, to_node, m)
}

/// Starts `n` nodes (ids 1..=n) that all know each other.
pub fn cluster(
    n: u64,
    tweak: impl Fn(&mut TransportConfig),
) -> Vec<(TcpTransport, InboundReceiver)> {
    let nodes: Vec<_> = (1..=n)
        .map(|id| {
            let mut c = config(id);
            tweak(&mut c);
            TcpTransport::start(c, []).expect("start")
        })
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|(t, _)| t.local_addr()).collect();
    for (t, _) in &nodes {
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            if id != t.node_id() {
                t.add_peer(id, *addr);
            }
        }
    }
    nodes
}

/// Sends `envelope`, retrying while the peer's queue is full, until `deadline`.
pub fn send_retrying(t: &dyn Transport, mut envelope: RaftEnvelope, deadline: Instant) {
    loop {
        match t.send(envelope) {
            Ok(()) => return,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "send still refused at the deadline: {e}"
                );
                envelope = e.into_envelope();
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

/// A blocking reader of an inbound channel with timeouts.
pub struct Inbox {
    rx: InboundReceiver,
    rt: tokio::runtime::Runtime,
}

impl Inbox {
    pub fn new(rx: InboundReceiver) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        Inbox { rx, rt }
    }

    /// The next item, or `None` if nothing came within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<Inbound> {
        let rx = &mut self.rx;
        self.rt.block_on(async {
            tokio::time::timeout(timeout, rx.recv())
                .await
                .ok()
                .flatten()
        })
    }
}
