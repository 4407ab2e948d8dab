//! `/metrics` of a real node: after writes and reads through a one-node cluster of 4
//! regions, the node's, every region's and the raft log's series are on the status server
//! with values that match what was done; then its disk fills (injected through the WAL's
//! file system) and frees, and the storage failure and the recovery are counted once each.
//!
//! The Prometheus recorder is process-wide and must exist before the node starts (the node
//! registers its handles as it starts), so this test has its own binary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_engine::{DiskFaults, EngineConfig, FaultyFileSystem};
use flotilla_region::node::{
    metrics as node_metrics, KvCommand, KvResponse, Node, NodeConfig, NodeError, PutCondition,
    StoreConfig,
};
use flotilla_tools::http::StatusClient;
use flotilla_tools::{install_prometheus_recorder, NodeService, StatusServer};
use flotilla_transport::MemoryNetwork;
use hyper::{Method, StatusCode};

const REGIONS: usize = 4;
const WRITES: u64 = 60;
const READS: u64 = 10;

/// Keys whose first byte spreads them over every region.
fn key(i: u64) -> Bytes {
    let mut k = vec![(i * 37 % 256) as u8];
    k.extend_from_slice(format!("key-{i}").as_bytes());
    Bytes::from(k)
}

/// The value of the series `series` (name with its labels, as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

async fn scrape(client: &StatusClient) -> String {
    let resp = client.request(Method::GET, "/metrics").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    String::from_utf8(resp.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_region_and_log_metrics_after_writes() {
    let recorder = install_prometheus_recorder().expect("first install in this binary");

    let net = MemoryNetwork::new(1);
    let (transport, inbound) = net.join(1, 64);
    let dir = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        store: StoreConfig {
            node_id: 1,
            tick_interval: Duration::from_millis(10),
            ..Default::default()
        },
        data_dir: dir.path().to_path_buf(),
        engine: EngineConfig::default(),
        initial_nodes: vec![1],
        initial_regions: REGIONS,
        request_timeout: Duration::from_secs(5),
        cluster: Default::default(),
    };
    let disk = DiskFaults::new();
    let fs = Arc::new(FaultyFileSystem::new(disk.clone()));
    let node = Node::start_with_wal_fs(cfg, fs, Arc::new(transport), inbound).expect("node starts");
    let handle = node.handle();
    let status = StatusServer::bind(
        "127.0.0.1:0",
        Arc::new(NodeService::new(handle.clone(), 7)),
        recorder,
    )
    .await
    .unwrap();
    let client = StatusClient::new(
        status.local_addr().unwrap().to_string(),
        Duration::from_secs(5),
    );
    tokio::spawn(status.serve(std::future::pending()));

    // A single voter elects itself; wait until every region has its leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let regions = handle.status().await.unwrap();
        if regions.len() == REGIONS && regions.iter().all(|r| r.role == "leader") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regions without a leader: {regions:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut per_region: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..WRITES {
        let region = handle.regions().route(&key(i)).expect("routed").id;
        *per_region.entry(region).or_default() += 1;
        let cmd = KvCommand::Put {
            key: key(i),
            value: Bytes::from(format!("v{i}")),
            cond: PutCondition::Always,
        };
        let r = handle.write(cmd, (1, i + 1)).await.unwrap();
        assert_eq!(r, KvResponse::Written(true));
    }
    assert_eq!(per_region.len(), REGIONS, "the keys span every region");
    for i in 0..READS {
        let v = handle.get(key(i)).await.unwrap();
        assert_eq!(v, Some(Bytes::from(format!("v{i}"))));
    }
    // A write whose keys span two regions is refused by the store, and sent again (the
    // node handle re-routes a bounded number of times, in case a split moved the keys):
    // 1 + REROUTE_RETRIES_MAX failed proposals.
    let (a, b) = (0..WRITES)
        .flat_map(|i| (0..WRITES).map(move |j| (i, j)))
        .find(|&(i, j)| {
            handle.regions().route(&key(i)).map(|r| r.id)
                != handle.regions().route(&key(j)).map(|r| r.id)
        })
        .expect("keys in two regions");
    let spanning = KvCommand::Delete {
        keys: vec![key(a), key(b)],
    };
    let err = handle.write(spanning, (1, WRITES + 1)).await.unwrap_err();
    assert!(matches!(err, NodeError::KeyNotInRegion(_)), "{err}");

    // Gauges are sampled every tick: wait for a scrape taken after a tick that saw every
    // leadership and every write applied.
    let fresh = |text: &str| {
        value(text, node_metrics::LEADERS) == Some(REGIONS as f64)
            && value(text, node_metrics::PROPOSALS_PENDING) == Some(0.0)
            && per_region.iter().all(|(region, writes)| {
                let applied = format!(
                    "{}{{region=\"{region}\"}}",
                    node_metrics::REGION_APPLIED_INDEX
                );
                value(text, &applied).is_some_and(|a| a > *writes as f64)
            })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape(&client).await;
        if fresh(&text) {
            break text;
        }
        assert!(Instant::now() < deadline, "gauges never caught up:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The node.
    assert_eq!(must(&text, node_metrics::REGIONS), REGIONS as f64);
    assert!(must(&text, node_metrics::PROPOSALS_TOTAL) >= (WRITES + 1) as f64);
    assert_eq!(
        must(
            &text,
            &format!(
                "{}{{reason=\"wrong_region\"}}",
                node_metrics::PROPOSALS_FAILED_TOTAL
            )
        ),
        (1 + flotilla_region::node::REROUTE_RETRIES_MAX) as f64
    );
    assert_eq!(
        must(
            &text,
            &format!(
                "{}{{reason=\"not_leader\"}}",
                node_metrics::PROPOSALS_FAILED_TOTAL
            )
        ),
        0.0
    );
    assert!(must(&text, node_metrics::READS_TOTAL) >= READS as f64);
    let rounds = must(&text, node_metrics::ROUNDS_TOTAL);
    assert!(rounds > 0.0);
    let round_count = must(
        &text,
        &format!("{}_count", node_metrics::ROUND_DURATION_SECONDS),
    );
    assert!(
        round_count > 0.0 && round_count <= rounds,
        "{round_count} of {rounds}"
    );
    assert!(
        text.contains(&format!(
            "{}_bucket{{le=",
            node_metrics::ROUND_DURATION_SECONDS
        )),
        "round durations have latency buckets:\n{text}"
    );
    assert!(
        must(
            &text,
            &format!("{}_count", node_metrics::PROPOSAL_DURATION_SECONDS)
        ) >= WRITES as f64
    );
    assert!(
        must(
            &text,
            &format!("{}_count", node_metrics::LOG_WRITE_DURATION_SECONDS)
        ) > 0.0
    );
    assert!(must(&text, &format!("{}_count", node_metrics::LOG_WRITE_REGIONS)) > 0.0);
    assert!(
        must(
            &text,
            &format!("{}_count", node_metrics::APPLY_DURATION_SECONDS)
        ) > 0.0
    );
    // Every write, plus each new leader's no-op entry.
    assert!(
        must(&text, &format!("{}_sum", node_metrics::APPLY_ENTRIES))
            >= (WRITES + REGIONS as u64) as f64
    );

    // Every region.
    for (region, writes) in &per_region {
        let series = |name: &str| format!("{name}{{region=\"{region}\"}}");
        assert!(must(&text, &series(node_metrics::REGION_PROPOSALS_TOTAL)) >= *writes as f64);
        assert!(
            must(&text, &series(node_metrics::REGION_COMMANDS_APPLIED_TOTAL)) >= *writes as f64
        );
        assert!(
            must(&text, &series(node_metrics::REGION_ENTRIES_COMMITTED_TOTAL))
                >= (*writes + 1) as f64,
            "commands and the leader's no-op"
        );
        assert_eq!(must(&text, &series(node_metrics::REGION_LEADER)), 1.0);
        assert!(must(&text, &series(node_metrics::REGION_TERM)) >= 1.0);
        assert!(
            must(&text, &series(node_metrics::REGION_COMMIT_INDEX))
                >= must(&text, &series(node_metrics::REGION_APPLIED_INDEX))
        );
    }

    // The raft log (the WAL by default): one sync per group commit.
    use flotilla_engine::metrics as log_metrics;
    let wal = |name: &str| format!("{name}{{backend=\"wal\"}}");
    let syncs = must(&text, &wal(log_metrics::LOG_SYNCS_TOTAL));
    assert!(syncs > 0.0);
    assert_eq!(must(&text, &wal(log_metrics::LOG_SYNC_FAILURES_TOTAL)), 0.0);
    let sync_count = must(
        &text,
        &wal(&format!("{}_count", log_metrics::LOG_SYNC_DURATION_SECONDS)),
    );
    assert_eq!(sync_count, syncs);
    assert!(
        must(
            &text,
            &wal(&format!("{}_sum", log_metrics::LOG_SYNC_ENTRIES))
        ) >= WRITES as f64
    );
    assert!(must(&text, &wal(&format!("{}_sum", log_metrics::LOG_SYNC_BYTES))) > 0.0);
    assert!(
        text.contains(&format!(
            "{}_bucket{{backend=\"wal\",le=",
            log_metrics::LOG_SYNC_ENTRIES
        )),
        "entries per sync have count buckets:\n{text}"
    );
    assert!(
        syncs <= node.log().expect("log open").stats().syncs as f64,
        "the log's own total counts the same syncs (and any since the scrape)"
    );
    assert_eq!(must(&text, node_metrics::STORAGE_FAILURES_TOTAL), 0.0);
    assert_eq!(must(&text, node_metrics::STORE_RECOVERIES_TOTAL), 0.0);

    // The disk fills: the write fails, the store drops its engine and keeps trying to
    // reopen it (the attempts are not failures of their own); space is back: it recovers.
    disk.fill();
    let put = |i: u64| KvCommand::Put {
        key: key(i),
        value: Bytes::from("after"),
        cond: PutCondition::Always,
    };
    let err = handle.write(put(0), (2, 1)).await.unwrap_err();
    assert!(matches!(err, NodeError::StorageUnavailable(_)), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    disk.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 2;
    while handle.write(put(1), (2, seq)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no recovery after the disk was freed"
        );
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = scrape(&client).await;
    assert_eq!(must(&text, node_metrics::STORAGE_FAILURES_TOTAL), 1.0);
    assert_eq!(must(&text, node_metrics::STORE_RECOVERIES_TOTAL), 1.0);
    assert!(
        must(
            &text,
            &format!(
                "{}{{reason=\"storage\"}}",
                node_metrics::PROPOSALS_FAILED_TOTAL
            )
        ) >= 1.0
    );

    node.stop();
}
