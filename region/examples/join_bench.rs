//! Adding a node to a loaded cluster: how long until the balancer has spread replicas and
//! leaderships evenly, and the write throughput meanwhile as a fraction of before.
//!
//! ```text
//! cargo run --release -p flotilla-region --example join_bench -- [--mib 1024] [--regions 64]
//! ```
//!
//! Three nodes in this process (engine on disk in a temporary directory, fsync on, the
//! in-memory transport, the balancer on with its defaults but a 200 ms gossip and a 500 ms
//! plan interval), `--regions` regions holding `--mib` MiB of 4 KiB values in all. Then
//! `--writers` tasks write 16-byte values, one write in flight each, for `--phase-seconds`
//! ("before"); then node 4 joins (knowing only node 1) and the writers go on until every node
//! sees each region with three voters and replica and leader counts within one over the four
//! nodes ("during", the time printed is the time to balance); then `--phase-seconds` more
//! ("after").

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use flotilla_engine::EngineConfig;
use flotilla_region::node::{
    BalancerConfig, ClusterConfig, KvCommand, KvResponse, Node, NodeAddresses, NodeConfig,
    NodeEntry, NodeHandle, PeerRole, PutCondition, StoreConfig,
};
use flotilla_transport::MemoryNetwork;

/// Measure adding a node to a loaded cluster.
#[derive(Debug, Parser)]
struct Args {
    /// MiB of data loaded before the measurement.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Regions the cluster is bootstrapped with.
    #[arg(long, default_value_t = 64)]
    regions: usize,
    /// Concurrent writers during the measurement (each with one write in flight).
    #[arg(long, default_value_t = 32)]
    writers: u64,
    /// Seconds measured before and after the join.
    #[arg(long, default_value_t = 10)]
    phase_seconds: u64,
    /// Replica moves the balancer runs at once.
    #[arg(long, default_value_t = 4)]
    max_concurrent_moves: usize,
}

const VALUE_BYTES: usize = 4096;

fn addresses(id: u64) -> NodeAddresses {
    let a = |base: u16| Some(SocketAddr::from(([127, 0, 0, 1], base + id as u16)));
    NodeAddresses {
        raft_addr: a(9000),
        client_addr: a(7000),
        status_addr: a(8000),
    }
}

fn config(args: &Args, dir: &std::path::Path, id: u64) -> NodeConfig {
    let joined = id > 3;
    let seed = if joined {
        vec![
            NodeEntry::new(1, addresses(1)),
            NodeEntry::new(id, addresses(id)),
        ]
    } else {
        (1..=3).map(|n| NodeEntry::new(n, addresses(n))).collect()
    };
    NodeConfig {
        store: StoreConfig {
            node_id: id,
            balance_leaders: false,
            ..Default::default()
        },
        data_dir: dir.join(format!("n{id}")),
        engine: EngineConfig::default(),
        initial_nodes: if joined { vec![] } else { vec![1, 2, 3] },
        initial_regions: args.regions,
        request_timeout: Duration::from_secs(10),
        cluster: ClusterConfig {
            gossip_interval: Duration::from_millis(200),
            addresses: addresses(id),
            seed,
            joined,
            cluster_id: 1,
            balancer: BalancerConfig {
                enabled: true,
                interval: Duration::from_millis(500),
                max_concurrent_moves: args.max_concurrent_moves,
                ..Default::default()
            },
        },
    }
}

/// A key spread over the whole key space (so over every region) by its first two bytes.
fn key(writer: u64, i: u64) -> Bytes {
    let h = (writer.wrapping_mul(0x9e37_79b9) ^ i.wrapping_mul(0x85eb_ca6b)) as u16;
    let mut k = h.to_be_bytes().to_vec();
    k.extend_from_slice(format!("w{writer}-{i}").as_bytes());
    Bytes::from(k)
}

/// A node holding `key`'s region, its leader's if known.
fn route(handles: &[NodeHandle], key: &[u8]) -> Option<NodeHandle> {
    let r = handles[0].cluster().route(key)?;
    let on = |n: u64| handles.iter().find(|h| h.node_id() == n).cloned();
    r.leader_node
        .and_then(on)
        .or_else(|| r.peers.iter().find_map(|p| on(p.node_id)))
}

/// Whether every node sees every region with three voters and a leader, and replica and
/// leader counts within one over the `nodes` nodes.
fn balanced(handles: &[NodeHandle], nodes: usize, regions: usize) -> bool {
    handles.iter().all(|h| {
        let all = h.cluster().regions();
        let mut replicas = vec![0usize; nodes];
        let mut leaders = vec![0usize; nodes];
        for r in &all {
            if r.peers.len() != 3 || r.peers.iter().any(|p| p.role != PeerRole::Voter) {
                return false;
            }
            for p in &r.peers {
                replicas[p.node_id as usize - 1] += 1;
            }
            match r.leader_node {
                Some(l) => leaders[l as usize - 1] += 1,
                None => return false,
            }
        }
        let spread = |v: &[usize]| v.iter().max().unwrap_or(&0) - v.iter().min().unwrap_or(&0);
        all.len() == regions && spread(&replicas) <= 1 && spread(&leaders) <= 1
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let net = MemoryNetwork::new(1);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let (t, inbound) = net.join(id, 4096);
        nodes.push(
            Node::start(config(&args, dir.path(), id), Arc::new(t), inbound)
                .map_err(|e| e.to_string())?,
        );
    }
    let handles: Vec<NodeHandle> = nodes.iter().map(|n| n.handle()).collect();
    let started = Instant::now();
    while !balanced(&handles, 3, args.regions) {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the three nodes never settled".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Load: `--mib` of 4 KiB values, 64 loaders.
    let values = args.mib * (1 << 20) / VALUE_BYTES as u64;
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut loaders = Vec::new();
    for l in 0..64u64 {
        let (hs, next) = (handles.clone(), next.clone());
        loaders.push(tokio::spawn(async move {
            let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= values {
                    return Ok::<(), String>(());
                }
                let k = key(100_000 + l, i);
                let put = KvCommand::Put {
                    key: k.clone(),
                    value: value.clone(),
                    cond: PutCondition::Always,
                };
                let mut tries = 0;
                loop {
                    let h = route(&hs, &k).ok_or("no route")?;
                    if let Ok(KvResponse::Written(true)) =
                        h.write(put.clone(), (100_000 + l, i + 1)).await
                    {
                        break;
                    }
                    tries += 1;
                    if tries > 100 {
                        return Err(format!("load write {i} keeps failing"));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    for l in loaders {
        l.await.map_err(|e| e.to_string())??;
    }
    println!(
        "loaded {} MiB ({values} values of {VALUE_BYTES} bytes) into {} regions in {:.1} s",
        args.mib,
        args.regions,
        t.elapsed().as_secs_f64()
    );

    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let current = Arc::new(parking_lot::RwLock::new(handles.clone()));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (current, done, stop) = (current.clone(), done.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let k = key(w, i);
                let put = KvCommand::Put {
                    key: k.clone(),
                    value: Bytes::from_static(b"0123456789abcdef"),
                    cond: PutCondition::Always,
                };
                let hs = current.read().clone();
                if let Some(h) = route(&hs, &k) {
                    if let Ok(KvResponse::Written(true)) = h.write(put, (w + 1, i + 1)).await {
                        done.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                        continue;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let rate = |started: Instant, before: u64| {
        (done.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64()
    };

    let t = Instant::now();
    let n0 = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.phase_seconds)).await;
    let before = rate(t, n0);
    println!("before: {before:>8.0} writes/s");

    let t = Instant::now();
    let n0 = done.load(Ordering::Relaxed);
    let (tr, inbound) = net.join(4, 4096);
    nodes.push(
        Node::start(config(&args, dir.path(), 4), Arc::new(tr), inbound)
            .map_err(|e| e.to_string())?,
    );
    let all: Vec<NodeHandle> = nodes.iter().map(|n| n.handle()).collect();
    *current.write() = all.clone();
    while !balanced(&all, 4, args.regions) {
        if t.elapsed() > Duration::from_secs(600) {
            return Err("not balanced over four nodes in 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    let during = rate(t, n0);
    println!(
        "during: {during:>8.0} writes/s ({:.0}% of before); balanced over 4 nodes in {:.1} s",
        100.0 * during / before,
        took.as_secs_f64()
    );

    let t = Instant::now();
    let n0 = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.phase_seconds)).await;
    let after = rate(t, n0);
    println!(
        "after:  {after:>8.0} writes/s ({:.0}% of before)",
        100.0 * after / before
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    for n in nodes {
        n.stop();
    }
    Ok(())
}
