//! A node whose disk fills up (injected through the WAL's file-system trait: every append
//! writes half its buffer and fails with `ENOSPC`, new files cannot be created) answers
//! requests with a clear error, drops its engine and replicas, keeps trying to reopen them,
//! and serves again by itself once space is back — with every acknowledged write, from
//! before and during the fault, still there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_engine::{DiskFaults, EngineConfig, FaultyFileSystem};
use flotilla_region::node::{
    KvCommand, KvResponse, Node, NodeConfig, NodeError, NodeHandle, PutCondition, StoreConfig,
};
use flotilla_transport::MemoryNetwork;

const NODES: u64 = 3;
const REGIONS: usize = 8;
/// The node whose disk fills up.
const FULL: usize = 0;

fn key(i: u64) -> Bytes {
    // Spread over the key space, so every region (and every leader) takes some.
    let h = (i.wrapping_mul(2_654_435_761) % 65_536) as u16;
    let mut k = h.to_be_bytes().to_vec();
    k.extend_from_slice(format!("k{i}").as_bytes());
    Bytes::from(k)
}

fn put(i: u64, value: &str) -> KvCommand {
    KvCommand::Put {
        key: key(i),
        value: Bytes::from(value.to_string()),
        cond: PutCondition::Always,
    }
}

/// Writes through any of `handles` (trying each in turn) until one acknowledges it.
async fn write_anywhere(handles: &[NodeHandle], cmd: KvCommand, session: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let h = &handles[attempt % handles.len()];
        let last = match h.write(cmd.clone(), session).await {
            Ok(r) => {
                assert_eq!(r, KvResponse::Written(true));
                return;
            }
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "write {session:?} never acknowledged: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_answers_a_clear_error_and_recovers_by_itself() {
    let dirs: Vec<_> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
    let disk = DiskFaults::new();
    let net = MemoryNetwork::new(11);
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let (transport, inbound) = net.join(i as u64 + 1, 1024);
        let cfg = NodeConfig {
            store: StoreConfig {
                node_id: i as u64 + 1,
                ..Default::default()
            },
            data_dir: dir.path().to_path_buf(),
            engine: EngineConfig::default(),
            initial_nodes: (1..=NODES).collect(),
            initial_regions: REGIONS,
            request_timeout: Duration::from_secs(5),
            cluster: Default::default(),
        };
        let node = if i == FULL {
            let fs = Arc::new(FaultyFileSystem::new(disk.clone()));
            Node::start_with_wal_fs(cfg, fs, Arc::new(transport), inbound)
        } else {
            Node::start(cfg, Arc::new(transport), inbound)
        };
        nodes.push(node.expect("node starts"));
    }
    let all: Vec<NodeHandle> = nodes.iter().map(Node::handle).collect();
    let healthy: Vec<NodeHandle> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != FULL)
        .map(|(_, h)| h.clone())
        .collect();
    let client = 77;
    let mut seq = 0;
    let mut acked: Vec<(u64, String)> = Vec::new();

    // Before: writes through every node.
    for i in 0..40 {
        seq += 1;
        let v = format!("before-{i}");
        write_anywhere(&all, put(i, &v), (client, seq)).await;
        acked.push((i, v));
    }

    // The disk fills up. A write through the node is answered with the clear error (its
    // round cannot persist: as leader it cannot append, as follower it cannot take the
    // leader's entries, so it can never apply the write).
    disk.fill();
    let err = all[FULL]
        .write(put(1000, "during-full"), (client + 1, 1))
        .await
        .expect_err("a node with a full disk cannot acknowledge a write");
    match &err {
        NodeError::StorageUnavailable(why) => assert_eq!(
            why, "disk full (No space left on device)",
            "the reason names the full disk"
        ),
        other => panic!("expected `storage unavailable: disk full`, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "storage unavailable: disk full (No space left on device)"
    );
    // While the disk stays full the node has no replica and no open log, and keeps
    // answering the same, for reads too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        nodes[FULL].log().is_none(),
        "the log is dropped, not kept open"
    );
    assert_eq!(all[FULL].status().await.expect("status"), Vec::new());
    let routes = all[FULL].regions().all();
    assert!(!routes.is_empty(), "requests are still routed to the store");
    assert!(
        routes.iter().all(|r| r.leader_node.is_none()),
        "a node that is down names no leader: {routes:?}"
    );
    match all[FULL].get(key(1)).await {
        Err(NodeError::StorageUnavailable(why)) => assert!(why.contains("disk full"), "{why}"),
        other => panic!("a read on the full node: {other:?}"),
    }
    // The other two nodes are a majority: the cluster keeps taking writes.
    for i in 40..80 {
        seq += 1;
        let v = format!("during-{i}");
        write_anywhere(&healthy, put(i, &v), (client, seq)).await;
        acked.push((i, v));
    }

    // Space is back: the node reopens its engine by itself and takes writes again soon.
    disk.clear();
    let freed = Instant::now();
    loop {
        let last = match all[FULL].write(put(2000, "after"), (client + 2, 1)).await {
            Ok(r) => {
                assert_eq!(r, KvResponse::Written(true));
                break;
            }
            Err(e) => e,
        };
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "the node takes no writes 10 s after its disk was freed: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(nodes[FULL].log().is_some(), "the log is open again");
    assert_eq!(
        all[FULL].status().await.expect("status").len(),
        REGIONS,
        "every replica is back"
    );

    // No acknowledged write is lost: every one reads back through the recovered node (a
    // linearizable read, served from its own state machine once it has caught up), and
    // through the others.
    for (i, v) in &acked {
        for h in &all {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match h.get(key(*i)).await {
                    Ok(got) => {
                        assert_eq!(
                            got.as_deref(),
                            Some(v.as_bytes()),
                            "key {i} on node {}",
                            h.node_id()
                        );
                        break;
                    }
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "key {i} unreadable on node {}: {e}",
                        h.node_id()
                    ),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    for n in nodes {
        n.stop();
    }
}
