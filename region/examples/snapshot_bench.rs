//! Write latency on the other regions of a node while it snapshots a big region.
//!
//! ```text
//! cargo run --release -p flotilla-region --example snapshot_bench -- [--region-mib 64] [--writers 8]
//! ```
//!
//! Three nodes in this process (engine on disk in a temporary directory, fsync on, the
//! in-memory transport), four regions. Node 3 is cut off while `--region-mib` MiB of 64 KiB
//! values go into region 1 and its log is compacted, so node 3 can only catch up from a
//! snapshot of region 1, built by node 1 (its leader). `--writers` tasks write 128-byte
//! values to regions 2–4 through node 1, one write in flight each: for `--phase-seconds`
//! before node 3 is let back in ("before"), then from that moment until node 3 serves region
//! 1's last key ("snapshot": the build, the transfer and the install), then for
//! `--phase-seconds` after. Printed per phase: writes per second and the latency median,
//! 99th percentile and maximum, and writes that took over 100 ms. Only public API is used,
//! so the same file measures any version of the store.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use flotilla_engine::EngineConfig;
use flotilla_region::node::{
    KvCommand, KvResponse, Node, NodeConfig, NodeHandle, PutCondition, StoreConfig,
};
use flotilla_transport::MemoryNetwork;
use parking_lot::Mutex;

/// Measure other regions' writes while a big region is snapshotted.
#[derive(Debug, Parser)]
struct Args {
    /// Size of region 1's data, in MiB.
    #[arg(long, default_value_t = 64)]
    region_mib: u64,
    /// Concurrent writers to the other regions (each with one write in flight).
    #[arg(long, default_value_t = 8)]
    writers: u64,
    /// Seconds measured before and after the snapshot.
    #[arg(long, default_value_t = 3)]
    phase_seconds: u64,
}

const NODES: u64 = 3;
/// Region 1 = ["", 0x40..), regions 2–4 the rest.
const REGIONS: usize = 4;
const BIG_VALUE: usize = 64 << 10;

fn big_key(i: u64) -> Bytes {
    Bytes::from(format!("\x10big{i:08}"))
}

/// A key of regions 2–4 (first byte 0x50..=0xF0).
fn small_key(writer: u64, i: u64) -> Bytes {
    let first = 0x50 + ((writer * 7 + i) % 0xA0) as u8;
    let mut k = vec![first];
    k.extend_from_slice(format!("w{writer}-{i}").as_bytes());
    Bytes::from(k)
}

fn put(key: Bytes, value: Bytes) -> KvCommand {
    KvCommand::Put {
        key,
        value,
        cond: PutCondition::Always,
    }
}

fn summary(name: &str, mut lat: Vec<Duration>, span: Duration) {
    lat.sort_unstable();
    let q = |f: f64| {
        lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let slow = lat
        .iter()
        .filter(|d| **d > Duration::from_millis(100))
        .count();
    println!(
        "{name:<9} {:>6.2} s  {:>7.0} writes/s  p50 {:>7.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  >100ms {slow}",
        span.as_secs_f64(),
        lat.len() as f64 / span.as_secs_f64().max(1e-9),
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

async fn lead_region_1_from_node_1(h1: &NodeHandle) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while h1.regions().route(&big_key(0)).and_then(|r| r.leader_node) != Some(1) {
        assert!(Instant::now() < deadline, "node 1 never led region 1");
        let _ = h1.transfer_leader(1, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemoryNetwork::new(3);
    let nodes: Vec<Node> = (1..=NODES)
        .map(|id| {
            let (transport, inbound) = net.join(id, 4096);
            let cfg = NodeConfig {
                store: StoreConfig {
                    node_id: id,
                    log_compact_trigger_entries: 200,
                    log_keep_entries: 50,
                    region_max_bytes: 1 << 30,
                    ..Default::default()
                },
                data_dir: dir.path().join(format!("n{id}")),
                engine: EngineConfig::default(),
                initial_nodes: (1..=NODES).collect(),
                initial_regions: REGIONS,
                request_timeout: Duration::from_secs(10),
                cluster: Default::default(),
            };
            Node::start(cfg, Arc::new(transport), inbound).expect("node starts")
        })
        .collect();
    let h1 = nodes[0].handle();
    let h3 = nodes[2].handle();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let big_writes = (args.region_mib << 20) / BIG_VALUE as u64;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while h1.regions().all().iter().any(|r| r.leader_node.is_none()) {
            assert!(Instant::now() < deadline, "no leaders");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lead_region_1_from_node_1(&h1).await;
        net.isolate(3);
        // Region 1 fills up, 16 writes in flight.
        let next = Arc::new(AtomicUsize::new(0));
        let fill: Vec<_> = (0..16)
            .map(|_| {
                let (h, next) = (h1.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                        if i >= big_writes {
                            return;
                        }
                        let v = Bytes::from(vec![(i % 251) as u8; BIG_VALUE]);
                        let r = h.write(put(big_key(i), v), (1_000_000 + i, 1)).await;
                        assert_eq!(r, Ok(KvResponse::Written(true)), "fill write {i}");
                    }
                })
            })
            .collect();
        for t in fill {
            t.await.expect("filler");
        }
        let log = nodes[0].log().expect("log");
        while log.first_index(1) < big_writes / 2 {
            assert!(Instant::now() < deadline + Duration::from_secs(60), "no compaction");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(log);
        lead_region_1_from_node_1(&h1).await;
        println!(
            "region 1: {} MiB in {big_writes} values; node 1 leads it; {} writers on regions 2-4 through node 1",
            args.region_mib, args.writers
        );

        // Writers to the other regions, recording (finish time, latency).
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::<(Instant, Duration)>::new()));
        let writers: Vec<_> = (0..args.writers)
            .map(|w| {
                let (h, stop, samples) = (h1.clone(), stop.clone(), samples.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let r = h
                            .write(
                                put(small_key(w, i), Bytes::from(vec![7u8; 128])),
                                (100 + w, i + 1),
                            )
                            .await;
                        assert_eq!(r, Ok(KvResponse::Written(true)), "writer {w} write {i}");
                        samples.lock().push((Instant::now(), started.elapsed()));
                        i += 1;
                    }
                })
            })
            .collect();
        let phase = Duration::from_secs(args.phase_seconds);
        let t0 = Instant::now();
        tokio::time::sleep(phase).await;
        let t1 = Instant::now();
        net.heal();
        let last = big_key(big_writes - 1);
        loop {
            if let Ok(Some(_)) = h3.get(last.clone()).await {
                break;
            }
            assert!(
                t1.elapsed() < Duration::from_secs(120),
                "node 3 never caught up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t2 = Instant::now();
        tokio::time::sleep(phase).await;
        let t3 = Instant::now();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.expect("writer");
        }
        let samples = samples.lock().clone();
        let within = |a: Instant, b: Instant| -> Vec<Duration> {
            samples
                .iter()
                .filter(|(t, _)| *t >= a && *t < b)
                .map(|(_, d)| *d)
                .collect()
        };
        summary("before", within(t0, t1), t1 - t0);
        summary("snapshot", within(t1, t2), t2 - t1);
        summary("after", within(t2, t3), t3 - t2);
    });
    for n in nodes {
        n.stop();
    }
}
