//! Write throughput before, during and after region splits, and how long each split takes.
//!
//! ```text
//! cargo run --release -p flotilla-region --example split_bench -- [--splits 32] [--writers 64]
//! ```
//!
//! Three nodes in this process (engine on disk in a temporary directory, fsync on, the
//! TCP transport on 127.0.0.1 as `flotilla server` uses it, or with `--transport memory`
//! the in-memory network of the tests), one region holding the whole key space.
//! `--writers` tasks write 16-byte values under keys spread over all of it (`--keys` of
//! them, overwritten at random), one write in flight each: `--warmup-seconds` unmeasured,
//! then `--phase-seconds` before the splits, then while region after region is split (each at
//! the middle of the region's data, one after the other, through the node that leads the
//! region being split; `--given-key` names the key instead), then for `--phase-seconds`
//! after. Printed: writes per second in each phase, and for each split the time to
//! prepare it (find the middle of the data unless `--given-key`, take a new region id),
//! then from its proposal until both halves have a leader and until a write into each half
//! is acknowledged (each half serving), with the median and the maximum. (The probe writes
//! count in no phase's rate.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use flotilla_engine::EngineConfig;
use flotilla_region::node::{
    KvCommand, KvResponse, Node, NodeConfig, NodeHandle, PutCondition, StoreConfig,
};
use flotilla_transport::{
    InboundReceiver, MemoryNetwork, TcpTransport, Transport, TransportConfig,
};

/// Measure write throughput around region splits.
#[derive(Debug, Parser)]
struct Args {
    /// Splits to make, one after the other.
    #[arg(long, default_value_t = 32)]
    splits: usize,
    /// Concurrent writers (each with one write in flight).
    #[arg(long, default_value_t = 64)]
    writers: u64,
    /// Seconds measured before and after the splits.
    #[arg(long, default_value_t = 5)]
    phase_seconds: u64,
    /// Give each split its key (the middle of the region's range; the keys are spread
    /// evenly over the key space, so that halves its data too) instead of letting the
    /// node find the middle of the region's data by scanning it.
    #[arg(long)]
    given_key: bool,
    /// How the nodes talk: `tcp` (loopback, as separate servers would) or `memory` (the
    /// tests' in-memory network, which hands over every message on its own).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "memory"])]
    transport: String,
    /// Keys the writers overwrite, chosen at random (0: every write a new key). A bounded
    /// key space keeps the data's size, and so RocksDB's compaction work per write, about
    /// the same from one phase to the next once it is written; with new keys only, the
    /// later phases pay for a larger store than the first.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Seconds of writes before the first phase, not measured (they fill the key space).
    #[arg(long, default_value_t = 10)]
    warmup_seconds: u64,
    /// Turn the nodes' leader balancing off: the new regions stay led where the split
    /// left them (by the old region's leader). The three nodes share this machine's cores,
    /// so spreading leaders over them adds no CPU; this isolates what the splits cost from
    /// what spreading their leaders costs (docs/benchmarks.md, session 12).
    #[arg(long)]
    keep_leaders: bool,
}

const NODES: u64 = 3;

/// The key of writer `writer`'s write `i`: a new one each time when `keys` is 0, else one
/// of `keys` chosen at random.
fn key(writer: u64, i: u64, keys: u64) -> Bytes {
    let mix = |x: u64| {
        let x = (x ^ (x >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^ (x >> 29)
    };
    // The first two bytes spread the keys over the whole key space.
    if keys > 0 {
        let index = mix(writer.wrapping_mul(0x1_0000_0001) ^ mix(i)) % keys;
        let mut k = (mix(index) as u16).to_be_bytes().to_vec();
        k.extend_from_slice(format!("k{index}").as_bytes());
        return Bytes::from(k);
    }
    let h = (writer.wrapping_mul(0x9e37_79b9) ^ i.wrapping_mul(0x85eb_ca6b)) as u16;
    let mut k = h.to_be_bytes().to_vec();
    k.extend_from_slice(format!("w{writer}-{i}").as_bytes());
    Bytes::from(k)
}

/// A range's bounds by the first two bytes of its keys (the end of the key space is 65536).
fn range16(start: &[u8], end: &[u8]) -> (u32, u32) {
    let two = |k: &[u8]| {
        u32::from(u16::from_be_bytes([
            k.first().copied().unwrap_or(0),
            k.get(1).copied().unwrap_or(0),
        ]))
    };
    let end = if end.is_empty() { 65536 } else { two(end) };
    (two(start), end)
}

/// Waits until every region known to `h` has a leader; returns how long that took.
async fn until_led(h: &NodeHandle, ids: &[u64], deadline: Duration) -> Option<Duration> {
    let started = Instant::now();
    loop {
        let routes = h.regions().all();
        let led = ids.iter().all(|id| {
            routes
                .iter()
                .any(|r| r.id == *id && r.leader_node.is_some())
        });
        if led {
            return Some(started.elapsed());
        }
        if started.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut transports: Vec<(Arc<dyn Transport>, InboundReceiver)> = Vec::new();
    let mut tcp = Vec::new();
    if args.transport == "memory" {
        let net = MemoryNetwork::new(1);
        for id in 1..=NODES {
            let (transport, inbound) = net.join(id, 4096);
            transports.push((Arc::new(transport), inbound));
        }
    } else {
        for id in 1..=NODES {
            let addr = "127.0.0.1:0".parse().expect("an address");
            let cfg = TransportConfig::new(1, id, addr);
            let (transport, inbound) =
                TcpTransport::start(cfg, []).map_err(|e| format!("transport: {e}"))?;
            tcp.push(Arc::new(transport));
            transports.push((tcp[tcp.len() - 1].clone(), inbound));
        }
        for (i, t) in tcp.iter().enumerate() {
            for (j, peer) in tcp.iter().enumerate() {
                if i != j {
                    t.add_peer(j as u64 + 1, peer.local_addr());
                }
            }
        }
    }
    let mut nodes = Vec::new();
    for (id, (transport, inbound)) in (1..=NODES).zip(transports) {
        let cfg = NodeConfig {
            store: StoreConfig {
                node_id: id,
                balance_leaders: !args.keep_leaders,
                ..Default::default()
            },
            data_dir: dir.path().join(format!("n{id}")),
            engine: EngineConfig::default(),
            initial_nodes: (1..=NODES).collect(),
            initial_regions: 1,
            request_timeout: Duration::from_secs(10),
            cluster: Default::default(),
        };
        nodes.push(Node::start(cfg, transport, inbound).map_err(|e| e.to_string())?);
    }
    let handles: Vec<NodeHandle> = nodes.iter().map(|n| n.handle()).collect();
    if until_led(&handles[0], &[1], Duration::from_secs(10))
        .await
        .is_none()
    {
        return Err("region 1 elected no leader".into());
    }

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (h, done, failed, stop) = (
            handles[(w % NODES) as usize].clone(),
            done.clone(),
            failed.clone(),
            stop.clone(),
        );
        let keys = args.keys;
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let put = KvCommand::Put {
                    key: key(w, i, keys),
                    value: Bytes::from_static(b"0123456789abcdef"),
                    cond: PutCondition::Always,
                };
                match h.write(put, (1000 + w, i + 1)).await {
                    Ok(KvResponse::Written(true)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    let phase = |name: &'static str, started: Instant, before: u64| {
        let n = done.load(Ordering::Relaxed) - before;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name:>7}: {n:>8} writes in {secs:>5.1} s = {:>8.0} writes/s",
            n as f64 / secs
        );
    };

    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let t = Instant::now();
    let n0 = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.phase_seconds)).await;
    phase("before", t, n0);

    let t = Instant::now();
    let n0 = done.load(Ordering::Relaxed);
    let mut took = Vec::new();
    let mut wrote = Vec::new();
    let mut prepared = Vec::new();
    for s in 0..args.splits {
        // Split the region with the most keys' share: the widest range, at its middle.
        let routes = handles[0].regions().all();
        let widest = routes
            .iter()
            .max_by_key(|r| {
                let (start, end) = range16(&r.start_key, &r.end_key);
                end - start
            })
            .ok_or("no regions")?
            .clone();
        let via = widest.leader_node.unwrap_or(1);
        let split_key = args.given_key.then(|| {
            let (start, end) = range16(&widest.start_key, &widest.end_key);
            Bytes::copy_from_slice(&(((start + end) / 2) as u16).to_be_bytes())
        });
        let prepare_started = Instant::now();
        let h = &handles[via as usize - 1];
        let cmd = h
            .prepare_split(widest.id, split_key)
            .await
            .map_err(|e| format!("split {s}: preparing: {e}"))?;
        prepared.push(prepare_started.elapsed());
        let started = Instant::now();
        let new = h.propose_split(widest.id, cmd).await.map_err(|e| {
            // What each node thinks the region is, to tell a stale view from a bad split.
            let views: Vec<String> = handles
                .iter()
                .map(|h| {
                    h.regions()
                        .all()
                        .into_iter()
                        .find(|r| r.id == widest.id)
                        .map_or("absent".into(), |r| {
                            format!("{:?}..{:?} v{}", r.start_key, r.end_key, r.epoch.version)
                        })
                })
                .collect();
            format!(
                "split {s} of region {} through node {via}: {e}; node 1 listed it as \
                     {:?}..{:?}; the nodes now: {views:?}",
                widest.id, widest.start_key, widest.end_key
            )
        })?;
        let mut ids = new.clone();
        ids.push(widest.id);
        match until_led(h, &ids, Duration::from_secs(10)).await {
            Some(_) => took.push(started.elapsed()),
            None => {
                return Err(format!(
                    "split {s}: the new regions {new:?} elected no leader"
                ))
            }
        }
        // Serving: a write into each half acknowledged.
        let routes = h.regions().all();
        let probes = ids.iter().enumerate().map(|(i, id)| {
            let start = routes
                .iter()
                .find(|r| r.id == *id)
                .map(|r| r.start_key.clone())
                .unwrap_or_default();
            let mut k = start.to_vec();
            k.extend_from_slice(b"~split-probe");
            let put = KvCommand::Put {
                key: Bytes::from(k),
                value: Bytes::from_static(b"probe"),
                cond: PutCondition::Always,
            };
            let h = h.clone();
            let session = (1_000_000 + 10 * s as u64 + i as u64, 1);
            tokio::spawn(async move { h.write(put, session).await })
        });
        let probes: Vec<_> = probes.collect();
        for (i, p) in probes.into_iter().enumerate() {
            let r = p.await.map_err(|e| e.to_string())?;
            if !matches!(r, Ok(KvResponse::Written(true))) {
                return Err(format!(
                    "split {s}: the write into region {} answered {r:?}",
                    ids[i]
                ));
            }
        }
        wrote.push(started.elapsed());
        // The next split picks its region from node 1's view: let it see this one.
        if until_led(&handles[0], &ids, Duration::from_secs(10))
            .await
            .is_none()
        {
            return Err(format!(
                "split {s}: node 1 never saw the new regions {new:?}"
            ));
        }
    }
    phase("during", t, n0);

    let t = Instant::now();
    let n0 = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.phase_seconds)).await;
    phase("after", t, n0);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (what, times) in [
        ("split command prepared (key and id)", &mut prepared),
        ("proposal to both halves led", &mut took),
        (
            "proposal to a write into each half acknowledged",
            &mut wrote,
        ),
    ] {
        times.sort();
        if let (Some(med), Some(max)) = (times.get(times.len() / 2), times.last()) {
            println!(
                "{} splits, {what}: median {:.1} ms, max {:.1} ms",
                times.len(),
                ms(*med),
                ms(*max)
            );
        }
    }
    let routes = handles[0].regions().all();
    let led = |node: u64| {
        routes
            .iter()
            .filter(|r| r.leader_node == Some(node))
            .count()
    };
    println!(
        "regions now: {}, led by nodes 1, 2, 3: {}, {}, {}; failed writes: {}",
        routes.len(),
        led(1),
        led(2),
        led(3),
        failed.load(Ordering::Relaxed)
    );
    for n in nodes {
        n.stop();
    }
    Ok(())
}
