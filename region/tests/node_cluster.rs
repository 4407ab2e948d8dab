//! A three-node cluster in one process (engine on disk, in-memory transport): 64 regions
//! take concurrent writes from 16 clients; every acknowledged write is read back through
//! every node, and leadership is spread evenly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_engine::EngineConfig;
use flotilla_region::node::{
    ExpectedRoute, KvCommand, KvResponse, Node, NodeConfig, NodeError, NodeHandle, PutCondition,
    RegionRoute, StoreConfig,
};
use flotilla_transport::MemoryNetwork;

const NODES: u64 = 3;
const REGIONS: usize = 64;
const CLIENTS: u64 = 16;
const WRITES_PER_CLIENT: u64 = 40;
/// Attempts per request when following leader hints and waiting out elections.
const ATTEMPTS_MAX: usize = 200;

struct Cluster {
    nodes: Vec<Node>,
    _dirs: Vec<tempfile::TempDir>,
    _net: MemoryNetwork,
}

/// Store settings of the test clusters (compaction thresholds may be lowered).
fn store_config(node_id: u64) -> StoreConfig {
    StoreConfig {
        node_id,
        ..Default::default()
    }
}

fn start_cluster() -> Cluster {
    let dirs = (0..NODES)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    start_cluster_in(dirs)
}

/// Starts one node per data directory (new or holding a cluster already).
fn start_cluster_in(dirs: Vec<tempfile::TempDir>) -> Cluster {
    start_cluster_with(dirs, store_config)
}

/// Starts one node per data directory with the store settings `store` gives each id.
fn start_cluster_with(dirs: Vec<tempfile::TempDir>, store: impl Fn(u64) -> StoreConfig) -> Cluster {
    let net = MemoryNetwork::new(7);
    let joined: Vec<_> = (1..=NODES).map(|id| net.join(id, 1024)).collect();
    let mut nodes = Vec::new();
    for (i, (transport, inbound)) in joined.into_iter().enumerate() {
        let dir = &dirs[i];
        let cfg = NodeConfig {
            store: store(i as u64 + 1),
            data_dir: dir.path().to_path_buf(),
            engine: EngineConfig::default(),
            initial_nodes: (1..=NODES).collect(),
            initial_regions: REGIONS,
            request_timeout: Duration::from_secs(5),
            cluster: Default::default(),
        };
        nodes.push(Node::start(cfg, Arc::new(transport), inbound).expect("node starts"));
    }
    Cluster {
        nodes,
        _dirs: dirs,
        _net: net,
    }
}

/// Clients, and writes of each, that fill one region's session log past a fold.
const FOLD_CLIENTS: u64 = 100;
const FOLD_WAVES: u64 = 24;
const FOLD_CLIENT_BASE: u64 = 7000;

/// A key of client `c` in the one region (of the even split) starting near `0x4000`.
fn fold_key(c: u64) -> Bytes {
    let mut k = vec![0x40, 0x01];
    k.extend_from_slice(format!("fold-{c}").as_bytes());
    Bytes::from(k)
}

fn key(client: u64, i: u64) -> Bytes {
    // Spread keys over the whole key space so every region takes writes.
    let h = (client * 7919 + i * 104_729).wrapping_mul(2_654_435_761) as u16;
    let mut k = h.to_be_bytes().to_vec();
    k.extend_from_slice(format!("c{client}-{i}").as_bytes());
    Bytes::from(k)
}

/// Sends a request to `first`, then to wherever NotLeader points, until it is answered.
async fn with_leader<T, F, Fut>(handles: &[NodeHandle], mut call: F) -> T
where
    F: FnMut(NodeHandle) -> Fut,
    Fut: std::future::Future<Output = Result<T, NodeError>>,
{
    let mut target = 0usize;
    let mut last = None;
    let mut hops = Vec::new();
    for attempt in 0..ATTEMPTS_MAX {
        match call(handles[target].clone()).await {
            Ok(v) => return v,
            Err(NodeError::NotLeader {
                leader_node: Some(n),
                ..
            }) => {
                // Hints can be stale during an election: follow them, but back off.
                hops.push((handles[target].node_id(), n));
                target = handles
                    .iter()
                    .position(|h| h.node_id() == n)
                    .expect("hint names a cluster node");
                if attempt >= 2 {
                    tokio::time::sleep(Duration::from_millis(10 * attempt.min(10) as u64)).await;
                }
            }
            Err(e) => {
                last = Some(e);
                target = (target + 1) % handles.len();
                if attempt % 3 == 2 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    panic!("no answer after {ATTEMPTS_MAX} attempts; last error: {last:?}; last hops (asked, hinted): {:?}", &hops[hops.len().saturating_sub(8)..]);
}

/// Waits until every region has a leader and every node leads within one region of every
/// other (the leader balancer's promise), returning the leaders per node.
async fn wait_for_balanced_leaders(handles: &[NodeHandle]) -> HashMap<u64, usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = HashMap::new();
        let mut led = 0;
        for h in handles {
            for r in h.status().await.expect("status") {
                if r.role == "leader" {
                    led += 1;
                    *leaders.entry(h.node_id()).or_insert(0) += 1;
                }
            }
        }
        let min = (1..=NODES)
            .map(|n| leaders.get(&n).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        let max = leaders.values().max().copied().unwrap_or(0);
        if led == REGIONS && max - min <= 1 {
            return leaders;
        }
        assert!(
            Instant::now() < deadline,
            "{led} of {REGIONS} regions have a leader; leaders per node: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_read_back_through_every_node() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    let leaders = wait_for_balanced_leaders(&handles).await;
    assert_eq!(
        leaders.len() as u64,
        NODES,
        "every node leads some regions: {leaders:?}"
    );

    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let handles = handles.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..WRITES_PER_CLIENT {
                let (k, v) = (key(client, i), Bytes::from(format!("v{client}-{i}")));
                let session = (client + 1, i + 1);
                let r = with_leader(&handles, |h| {
                    let cmd = KvCommand::Put {
                        key: k.clone(),
                        value: v.clone(),
                        cond: PutCondition::Always,
                    };
                    async move { h.write(cmd, session).await }
                })
                .await;
                assert_eq!(r, KvResponse::Written(true));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }

    for start in 0..NODES as usize {
        let order: Vec<NodeHandle> = handles[start..]
            .iter()
            .chain(&handles[..start])
            .cloned()
            .collect();
        for client in 0..CLIENTS {
            for i in 0..WRITES_PER_CLIENT {
                let k = key(client, i);
                let got = with_leader(&order, |h| {
                    let k = k.clone();
                    async move { h.get(k).await }
                })
                .await;
                assert_eq!(
                    got,
                    Some(Bytes::from(format!("v{client}-{i}"))),
                    "key {k:?}"
                );
            }
        }
    }
    for n in cluster.nodes {
        n.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_write_applies_once_and_conditional_writes_hold() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let k = key(99, 1);
    let incr = |session| {
        let k = k.clone();
        move |h: NodeHandle| {
            let k = k.clone();
            async move {
                h.write(KvCommand::IncrBy { key: k, delta: 5 }, session)
                    .await
            }
        }
    };
    assert_eq!(
        with_leader(&handles, incr((500, 1))).await,
        KvResponse::Value(5)
    );
    // The same session again is a retry: answered from the session table, not applied.
    assert_eq!(
        with_leader(&handles, incr((500, 1))).await,
        KvResponse::Value(5)
    );
    assert_eq!(
        with_leader(&handles, incr((500, 2))).await,
        KvResponse::Value(10)
    );
    let put = |cond, session| {
        let k = k.clone();
        move |h: NodeHandle| {
            let k = k.clone();
            async move {
                h.write(
                    KvCommand::Put {
                        key: k,
                        value: Bytes::from_static(b"x"),
                        cond,
                    },
                    session,
                )
                .await
            }
        }
    };
    assert_eq!(
        with_leader(&handles, put(PutCondition::IfAbsent, (501, 1))).await,
        KvResponse::Written(false)
    );
    assert_eq!(
        with_leader(&handles, put(PutCondition::IfPresent, (501, 2))).await,
        KvResponse::Written(true)
    );
    let v = with_leader(&handles, |h| {
        let k = k.clone();
        async move { h.get(k).await }
    })
    .await;
    assert_eq!(v, Some(Bytes::from_static(b"x")));
    assert!(matches!(
        with_leader(&handles, incr((500, 3))).await,
        KvResponse::Failed(_)
    ));
    for n in cluster.nodes {
        n.stop();
    }
}

/// Many increments of one key at once: they land in the same apply rounds, so each must
/// read the writes of the commands before it in its round. Every answer is distinct and
/// the last is the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_of_one_key_each_see_the_ones_before() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let k = key(98, 1);
    let n = 300u64;
    let mut tasks = Vec::new();
    for c in 0..n {
        let h = handles[(c % NODES) as usize].clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            h.write(KvCommand::IncrBy { key: k, delta: 1 }, (60_000 + c, 1))
                .await
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(KvResponse::Value(v)) => values.push(v),
            other => panic!("increment answered {other:?}"),
        }
    }
    values.sort_unstable();
    assert_eq!(values, (1..=n as i64).collect::<Vec<_>>());
    for h in &handles {
        assert_eq!(h.get(k.clone()).await, Ok(Some(Bytes::from(n.to_string()))));
    }
    for node in cluster.nodes {
        node.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_rebalance_after_piling_onto_one_node() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    // Move every leadership to node 1, as an operator (or a node that came back) might.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut most_on_one = 0;
    while Instant::now() < deadline {
        let mut on_one = 0;
        for h in &handles[1..] {
            for r in h.status().await.expect("status") {
                if r.role == "leader" {
                    let _ = h.transfer_leader(r.route.id, 1).await;
                }
            }
        }
        for r in handles[0].status().await.expect("status") {
            if r.role == "leader" {
                on_one += 1;
            }
        }
        most_on_one = most_on_one.max(on_one);
        if on_one >= REGIONS * 3 / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most_on_one >= REGIONS * 3 / 4,
        "could only pile {most_on_one} leaders onto node 1"
    );
    // The balancer spreads them out again.
    let leaders = wait_for_balanced_leaders(&handles).await;
    assert_eq!(leaders.values().sum::<usize>(), REGIONS);
    for n in cluster.nodes {
        n.stop();
    }
}

/// Routing: any node serves any key. A follower forwards writes to its leader and waits to
/// apply them itself; it serves reads after confirming the read index with the leader, so
/// a write acknowledged through one node is read back at once through another. Writes keep
/// succeeding while leaderships move under them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_writes_and_serve_linearizable_reads() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;

    let mut follower_writes = 0;
    for (n, region) in handles[0].regions().all().into_iter().enumerate() {
        let leader = region
            .leader_node
            .expect("balanced: every region has a leader");
        let followers: Vec<&NodeHandle> =
            handles.iter().filter(|h| h.node_id() != leader).collect();
        let (writer, reader) = (followers[n % 2], followers[(n + 1) % 2]);
        let mut k = region.start_key.to_vec();
        k.extend_from_slice(b"fwd");
        let k = Bytes::from(k);
        let v = Bytes::from(format!("through node {}", writer.node_id()));
        let put = KvCommand::Put {
            key: k.clone(),
            value: v.clone(),
            cond: PutCondition::Always,
        };
        let r = writer.write(put, (9000 + n as u64, 1)).await;
        assert_eq!(r, Ok(KvResponse::Written(true)), "region {}", region.id);
        follower_writes += 1;
        // Linearizable: the other follower must see the acknowledged write.
        assert_eq!(
            reader.get(k.clone()).await,
            Ok(Some(v)),
            "read of region {} through node {}",
            region.id,
            reader.node_id()
        );
        // The same session twice through a follower: applied once, answered alike.
        let incr = KvCommand::IncrBy {
            key: k.clone().slice(..k.len() - 3),
            delta: 5,
        };
        let a = writer.write(incr.clone(), (9500 + n as u64, 1)).await;
        let b = reader.write(incr, (9500 + n as u64, 1)).await;
        assert_eq!(a, Ok(KvResponse::Value(5)));
        assert_eq!(
            b,
            Ok(KvResponse::Value(5)),
            "the retry is not applied again"
        );
    }
    assert_eq!(follower_writes, REGIONS);

    // Writes through node 1 only, while leaderships of its regions move around.
    let writer = handles[0].clone();
    let load = tokio::spawn(async move {
        for i in 0..300u64 {
            let put = KvCommand::Put {
                key: key(77, i),
                value: Bytes::from(format!("m{i}")),
                cond: PutCondition::Always,
            };
            let r = writer.write(put, (7777, i + 1)).await;
            assert_eq!(r, Ok(KvResponse::Written(true)), "write {i}");
        }
    });
    for round in 0..6u64 {
        for region in handles[0].regions().all().into_iter().step_by(4) {
            if let Some(leader) = region.leader_node {
                let to = (leader + round) % NODES + 1;
                if to != leader {
                    let h = &handles[leader as usize - 1];
                    let _ = h.transfer_leader(region.id, to).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.await.expect("writes during transfers");
    for i in 0..300u64 {
        let got = handles[(i % NODES) as usize].get(key(77, i)).await;
        assert_eq!(got, Ok(Some(Bytes::from(format!("m{i}")))), "key {i}");
    }
    for n in cluster.nodes {
        n.stop();
    }
}

/// The whole cluster stops and starts again on its data directories: every region comes
/// back from disk (no re-bootstrap), every acknowledged write is there, and leaders spread
/// evenly again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_data_regions_and_balance() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let before: Vec<_> = handles[0]
        .regions()
        .all()
        .into_iter()
        .map(|r| (r.id, r.start_key, r.end_key))
        .collect();
    for i in 0..200u64 {
        let put = KvCommand::Put {
            key: key(5, i),
            value: Bytes::from(format!("kept{i}")),
            cond: PutCondition::Always,
        };
        let r = handles[(i % NODES) as usize]
            .write(put, (5555, i + 1))
            .await;
        assert_eq!(r, Ok(KvResponse::Written(true)), "write {i}");
    }
    // Many clients writing to one region, so that its session log is folded (it passes
    // 8 KiB of session changes) before the restart, and is read back after it.
    for wave in 1..=FOLD_WAVES {
        let mut tasks = Vec::new();
        for c in 0..FOLD_CLIENTS {
            let h = handles[(c % NODES) as usize].clone();
            tasks.push(tokio::spawn(async move {
                let put = KvCommand::Put {
                    key: fold_key(c),
                    value: Bytes::from(format!("wave{wave}")),
                    cond: PutCondition::Always,
                };
                h.write(put, (FOLD_CLIENT_BASE + c, wave)).await
            }));
        }
        for (c, t) in tasks.into_iter().enumerate() {
            let r = t.await.expect("task");
            assert_eq!(r, Ok(KvResponse::Written(true)), "client {c}, wave {wave}");
        }
    }
    let Cluster {
        nodes, _dirs: dirs, ..
    } = cluster;
    for n in nodes {
        n.stop();
    }

    let cluster = start_cluster_in(dirs);
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    let leaders = wait_for_balanced_leaders(&handles).await;
    assert_eq!(
        leaders.len() as u64,
        NODES,
        "every node leads again: {leaders:?}"
    );
    for h in &handles {
        let after: Vec<_> = h
            .regions()
            .all()
            .into_iter()
            .map(|r| (r.id, r.start_key, r.end_key))
            .collect();
        assert_eq!(
            after,
            before,
            "node {} recovered the same regions",
            h.node_id()
        );
    }
    for i in 0..200u64 {
        for h in &handles {
            let got = h.get(key(5, i)).await;
            assert_eq!(
                got,
                Ok(Some(Bytes::from(format!("kept{i}")))),
                "key {i} on node {}",
                h.node_id()
            );
        }
    }
    // The sessions survived too: the last write, retried, is not applied again.
    let retry = KvCommand::Put {
        key: key(5, 199),
        value: Bytes::from("changed"),
        cond: PutCondition::Always,
    };
    assert_eq!(
        handles[0].write(retry, (5555, 200)).await,
        Ok(KvResponse::Written(true))
    );
    assert_eq!(
        handles[1].get(key(5, 199)).await,
        Ok(Some(Bytes::from("kept199")))
    );
    for c in 0..FOLD_CLIENTS {
        let retry = KvCommand::Put {
            key: fold_key(c),
            value: Bytes::from("changed"),
            cond: PutCondition::Always,
        };
        let h = &handles[((c + 1) % NODES) as usize];
        assert_eq!(
            h.write(retry, (FOLD_CLIENT_BASE + c, FOLD_WAVES)).await,
            Ok(KvResponse::Written(true)),
            "retry of client {c}"
        );
        assert_eq!(
            h.get(fold_key(c)).await,
            Ok(Some(Bytes::from(format!("wave{FOLD_WAVES}")))),
            "client {c}'s retry applied again after the restart"
        );
    }
    for n in cluster.nodes {
        n.stop();
    }
}

/// Every node's routing table tiles the key space: starts at the empty key, each region
/// ends where the next begins, the last is unbounded. Returns (id, start, end) in order.
fn tiling(h: &NodeHandle) -> Vec<(u64, Bytes, Bytes)> {
    let routes = h.regions().all();
    assert!(
        routes.first().is_some_and(|r| r.start_key.is_empty()),
        "node {}",
        h.node_id()
    );
    assert!(
        routes.last().is_some_and(|r| r.end_key.is_empty()),
        "node {}",
        h.node_id()
    );
    for w in routes.windows(2) {
        assert_eq!(
            w[0].end_key,
            w[1].start_key,
            "gap or overlap on node {}: {:?}",
            h.node_id(),
            routes
                .iter()
                .take(6)
                .map(|r| (r.id, r.start_key.clone(), r.end_key.clone(), r.merging_into))
                .collect::<Vec<_>>()
        );
    }
    routes
        .into_iter()
        .map(|r| (r.id, r.start_key, r.end_key))
        .collect()
}

/// Region split under load: region 1 is split twelve times (at given keys and at the
/// middle of its data) while eight clients write into it through every node. Afterwards
/// every acknowledged write is read back through every node, every node's regions tile
/// the key space the same way, the new regions have leaders, and all of it survives a
/// restart of the whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_under_load_keep_every_write_and_tile_the_key_space() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    // Region 1 holds [.., 0x0400): keys 0x00 0x?? ... land in it.
    let in_region_1 = |c: u64, i: u64| {
        let mut k = vec![0u8, ((c * 31 + i * 7) % 256) as u8];
        k.extend_from_slice(format!("w{c}-{i}").as_bytes());
        Bytes::from(k)
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for c in 0..8u64 {
        let handles = handles.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let put = KvCommand::Put {
                    key: in_region_1(c, i),
                    value: Bytes::from(format!("v{i}")),
                    cond: PutCondition::Always,
                };
                let h = &handles[(i % NODES) as usize];
                match h.write(put, (100 + c, i + 1)).await {
                    Ok(KvResponse::Written(true)) => acked.push(i),
                    other => panic!("write {c}/{i} failed: {other:?}"),
                }
                i += 1;
            }
            (c, acked)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut created = Vec::new();
    for s in 1..=12u8 {
        let h = &handles[(s as usize) % NODES as usize];
        let end = h
            .regions()
            .all()
            .into_iter()
            .find(|r| r.id == 1)
            .expect("region 1")
            .end_key;
        let key = if s % 4 == 0 {
            None // the middle of region 1's data
        } else {
            // Three quarters of the way along region 1's shrinking range.
            let second = if end[0] > 0 { 255 } else { end[1] as u16 };
            Some(Bytes::from(vec![0u8, (second * 3 / 4) as u8]))
        };
        let ids = h.split(1, key).await.expect("split");
        assert_eq!(ids.len(), 1);
        created.extend(ids);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.expect("writer"));
    }
    let total: usize = acked.iter().map(|(_, a)| a.len()).sum();
    assert!(total > 100, "the writers made progress: {total} writes");

    // Every node's view converges: same tiling, 64 + 12 regions, each with a leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let views: Vec<_> = handles.iter().map(tiling).collect();
        let led = handles[0]
            .regions()
            .all()
            .iter()
            .all(|r| r.leader_node.is_some());
        if views.iter().all(|v| v == &views[0]) && views[0].len() == REGIONS + 12 && led {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "views did not converge: {:?}",
            views.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &created {
        assert!(
            handles[0].regions().all().iter().any(|r| r.id == *id),
            "region {id}"
        );
    }
    let check = |handles: Vec<NodeHandle>, acked: Vec<(u64, Vec<u64>)>| async move {
        for (c, list) in &acked {
            for &i in list {
                for h in &handles {
                    let got = h.get(in_region_1(*c, i)).await;
                    assert_eq!(
                        got,
                        Ok(Some(Bytes::from(format!("v{i}")))),
                        "{c}/{i} on node {}",
                        h.node_id()
                    );
                }
            }
        }
    };
    check(handles.clone(), acked.clone()).await;
    let before = tiling(&handles[0]);

    let Cluster {
        nodes, _dirs: dirs, ..
    } = cluster;
    for n in nodes {
        n.stop();
    }
    let cluster = start_cluster_in(dirs);
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !handles[0]
        .regions()
        .all()
        .iter()
        .all(|r| r.leader_node.is_some())
    {
        assert!(
            Instant::now() < deadline,
            "regions without a leader after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for h in &handles {
        assert_eq!(tiling(h), before, "node {} after restart", h.node_id());
    }
    check(handles.clone(), acked).await;
    for n in cluster.nodes {
        n.stop();
    }
}

/// Raft logs are compacted once they hold enough applied entries, and the WAL's old
/// segments go with them; a replica cut off meanwhile comes back through a snapshot of
/// the key-value state and serves every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_compacted_and_a_lagging_replica_catches_up_by_snapshot() {
    let dirs = (0..NODES)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let cluster = start_cluster_with(dirs, |node_id| StoreConfig {
        node_id,
        log_compact_trigger_entries: 40,
        log_keep_entries: 10,
        ..Default::default()
    });
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let region = handles[0].regions().route(&key(3, 0)).expect("route").id;
    // Node 3 hears nothing while region `region` moves far past its log.
    cluster._net.isolate(3);
    let writers = [&handles[0], &handles[1]];
    for i in 0..300u64 {
        let mut k = key(3, 0).to_vec();
        k.extend_from_slice(format!("-{i}").as_bytes());
        let put = KvCommand::Put {
            key: Bytes::from(k),
            value: Bytes::from(format!("c{i}")),
            cond: PutCondition::Always,
        };
        let r = writers[(i % 2) as usize].write(put, (3333, i + 1)).await;
        assert_eq!(r, Ok(KvResponse::Written(true)), "write {i}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.nodes[0]
        .log()
        .expect("log open")
        .first_index(region)
        < 200
    {
        assert!(
            Instant::now() < deadline,
            "region {region} was never compacted: first index {}",
            cluster.nodes[0]
                .log()
                .expect("log open")
                .first_index(region)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster._net.heal();
    for i in 0..300u64 {
        let mut k = key(3, 0).to_vec();
        k.extend_from_slice(format!("-{i}").as_bytes());
        let got = handles[2].get(Bytes::from(k)).await;
        assert_eq!(
            got,
            Ok(Some(Bytes::from(format!("c{i}")))),
            "key {i} through node 3"
        );
    }
    for n in cluster.nodes {
        n.stop();
    }
}

/// A replica that misses a split and then skips it — it is cut off while the split
/// commits and the old region's log is compacted past it, so a snapshot of the shrunk old
/// region brings it back — learns of the new region from that region's leader, asks it
/// for a snapshot and is created from it: the new region is whole again on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_skipped_a_split_gets_the_new_region_by_snapshot() {
    let dirs = (0..NODES)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let cluster = start_cluster_with(dirs, |node_id| StoreConfig {
        node_id,
        log_compact_trigger_entries: 40,
        log_keep_entries: 10,
        ..Default::default()
    });
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    cluster._net.isolate(3);
    let new = handles[0]
        .split(1, Some(Bytes::from_static(&[0, 0x80])))
        .await
        .expect("split while node 3 is cut off")[0];
    let k = |i: u64| {
        let mut k = vec![0u8, if i.is_multiple_of(2) { 0x10 } else { 0x90 }];
        k.extend_from_slice(format!("skip-{i}").as_bytes());
        Bytes::from(k)
    };
    for i in 0..400u64 {
        let put = KvCommand::Put {
            key: k(i),
            value: Bytes::from(format!("s{i}")),
            cond: PutCondition::Always,
        };
        let r = handles[(i % 2) as usize].write(put, (4444, i + 1)).await;
        assert_eq!(r, Ok(KvResponse::Written(true)), "write {i}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.nodes[0].log().expect("log open").first_index(1) < 100
        || cluster.nodes[0].log().expect("log open").first_index(new) < 100
    {
        assert!(Instant::now() < deadline, "logs were not compacted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster._net.heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !handles[2].regions().all().iter().any(|r| r.id == new) {
        assert!(
            Instant::now() < deadline,
            "node 3 never got region {new}: {:?}",
            handles[2]
                .regions()
                .all()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        tiling(&handles[2]),
        tiling(&handles[0]),
        "node 3 has the same regions"
    );
    for i in 0..400u64 {
        let got = handles[2].get(k(i)).await;
        assert_eq!(
            got,
            Ok(Some(Bytes::from(format!("s{i}")))),
            "key {i} through node 3"
        );
    }
    for n in cluster.nodes {
        n.stop();
    }
}

/// Automatic split by size: with a 256 KiB limit, 1.5 MB written into region 1 splits it
/// (and its parts, again and again) until every part is under the limit; every write is
/// still there, and the key space still tiles. The full size is
/// [`three_hundred_mib_in_one_region_split_until_every_part_fits`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_over_its_size_limit_splits_until_every_part_fits() {
    region_over_its_limit_splits(256 << 10, 2000, 24 * 32, 1, Duration::from_secs(60)).await;
}

/// The automatic-split test at full size: 300 MiB written into region 1 (4 800
/// values of 64 KiB, eight writers) with a 16 MiB limit; every part ends under the limit.
/// About 30 s here (debug or release build) and up to ~2 GiB of temporary files at its
/// peak (three nodes' logs and RocksDB). Out of CI, where the 1.5 MB version runs: in one
/// of three CI runs it did not finish in 4 minutes (a region left over its limit was not
/// measured again — see `written_since_check` on a leadership change); run it by hand with
/// `cargo test --release -p flotilla-region --test node_cluster -- --ignored three_hundred`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "300 MiB through three replicas: run by hand (see the doc comment)"]
async fn three_hundred_mib_in_one_region_split_until_every_part_fits() {
    region_over_its_limit_splits(16 << 20, 64 << 10, 4800, 8, Duration::from_secs(600)).await;
}

/// Writes `count` values of `value_bytes` under keys of region 1 (with `writers`
/// concurrent writers), with `region_max_bytes = limit`, then waits (up to `settle`) until
/// every region in region 1's old range holds at most `limit` bytes; checks that nothing
/// was lost and that the ranges tile the key space on every node.
async fn region_over_its_limit_splits(
    limit: u64,
    value_bytes: usize,
    count: u64,
    writers: u64,
    settle: Duration,
) {
    let dirs = (0..NODES)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let cluster = start_cluster_with(dirs, |node_id| StoreConfig {
        node_id,
        region_max_bytes: limit,
        ..Default::default()
    });
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let old_end = handles[0].regions().route(&[0]).expect("region 1").end_key;
    let key = |i: u64| {
        let mut k = vec![0u8, (i * 97 % 256) as u8];
        k.extend_from_slice(format!("big-{i:05}").as_bytes());
        Bytes::from(k)
    };
    let value = Bytes::from(vec![b'x'; value_bytes]);
    // One key per write: the region splits while the writes go on, so a batch of keys
    // could span two regions (the node service splits those; this test talks to the node).
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (handles, value) = (handles.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..count).step_by(writers as usize) {
                let put = KvCommand::Put {
                    key: key(i),
                    value: value.clone(),
                    cond: PutCondition::Always,
                };
                let r = handles[(i % NODES) as usize]
                    .write(put, (5151 + w, i + 1))
                    .await;
                assert_eq!(r, Ok(KvResponse::Written(true)), "write {i}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    // Every region inside region 1's old range ends up under the limit.
    let deadline = Instant::now() + settle;
    loop {
        let parts: Vec<_> = handles[0]
            .regions()
            .all()
            .into_iter()
            .filter(|r| !old_end.is_empty() && r.start_key < old_end)
            .collect();
        let mut sizes = Vec::new();
        let mut whole = true;
        for r in &parts {
            let page = handles[0]
                .scan_page(r.start_key.clone(), r.end_key.clone(), usize::MAX)
                .await
                .expect("scan");
            // A region that split after it was listed answers only its left part: measure
            // again rather than count a part as the whole.
            whole &= page.covered_end == r.end_key;
            sizes.push(
                page.pairs
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>(),
            );
        }
        if whole && parts.len() > 1 && sizes.iter().all(|&s| s <= limit) {
            assert!(
                sizes.iter().sum::<u64>() >= count * value_bytes as u64,
                "no data lost: {sizes:?}"
            );
            eprintln!(
                "{} parts, largest {} bytes (limit {limit})",
                parts.len(),
                sizes.iter().max().copied().unwrap_or(0)
            );
            break;
        }
        assert!(Instant::now() < deadline, "parts and sizes: {sizes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for h in &handles {
        tiling(h);
    }
    for i in 0..count {
        assert_eq!(
            handles[(i % NODES) as usize].get(key(i)).await,
            Ok(Some(value.clone())),
            "key {i}"
        );
    }
    for n in cluster.nodes {
        n.stop();
    }
}

/// Automatic split by load: a region applying more than `region_split_qps` commands a
/// second for three checks in a row is split at the middle of its data, though small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_region_splits_for_load() {
    let dirs = (0..NODES)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let cluster = start_cluster_with(dirs, |node_id| StoreConfig {
        node_id,
        region_split_qps: 50,
        ..Default::default()
    });
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0u64;
    while handles[0].regions().all().len() == REGIONS {
        assert!(Instant::now() < deadline, "no split after {i} writes");
        let mut k = vec![0u8, (i % 256) as u8];
        k.extend_from_slice(b"hot");
        let put = KvCommand::Put {
            key: Bytes::from(k),
            value: Bytes::from_static(b"v"),
            cond: PutCondition::Always,
        };
        let r = handles[(i % NODES) as usize]
            .write(put, (6161, i + 1))
            .await;
        assert_eq!(r, Ok(KvResponse::Written(true)));
        i += 1;
    }
    let split = handles[0].regions().route(&[0]).expect("region 1");
    assert!(
        !split.end_key.is_empty() && split.end_key.as_ref() < &[4u8, 0][..],
        "region 1 shrank: {split:?}"
    );
    for n in cluster.nodes {
        n.stop();
    }
}

/// Splits region 1 (`["", 0x0400)`) at `0x00c0`, `0x0080`, `0x0040` and returns the ids of
/// the parts in key order: `[1, C, B, A]`.
async fn split_region_1_in_four(h: &NodeHandle) -> Vec<u64> {
    let mut ids = vec![1];
    for second in [0xc0u8, 0x80, 0x40] {
        let id = h
            .split(1, Some(Bytes::from(vec![0u8, second])))
            .await
            .expect("split")[0];
        ids.insert(1, id);
    }
    ids
}

/// Waits until every node's routing table agrees and has `regions` regions.
async fn wait_for_views(handles: &[NodeHandle], regions: usize) -> Vec<(u64, Bytes, Bytes)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let views: Vec<_> = handles.iter().map(tiling).collect();
        if views.iter().all(|v| v == &views[0]) && views[0].len() == regions {
            return views[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "views did not converge to {regions} regions: {:?}",
            views.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Region merge under load: region 1 is split in four and merged back, source into
/// target, while eight clients write into it through every node. Every acknowledged write
/// is there afterwards on every node, the key space tiles exactly as before the splits,
/// and all of it survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_under_load_keep_every_write_and_restore_the_key_space() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let original = tiling(&handles[0]);
    let in_region_1 = |c: u64, i: u64| {
        let mut k = vec![0u8, ((c * 61 + i * 13) % 256) as u8];
        k.extend_from_slice(format!("m{c}-{i}").as_bytes());
        Bytes::from(k)
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for c in 0..8u64 {
        let handles = handles.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let put = KvCommand::Put {
                    key: in_region_1(c, i),
                    value: Bytes::from(format!("v{i}")),
                    cond: PutCondition::Always,
                };
                match handles[(i % NODES) as usize]
                    .write(put, (200 + c, i + 1))
                    .await
                {
                    Ok(KvResponse::Written(true)) => acked.push(i),
                    other => panic!("write {c}/{i} failed: {other:?}"),
                }
                i += 1;
            }
            (c, acked)
        }));
    }
    let parts = split_region_1_in_four(&handles[0]).await;
    wait_for_views(&handles, REGIONS + 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A into B, C into 1, then B into 1: sources on both sides of their targets.
    let (one, c, b, a) = (parts[0], parts[1], parts[2], parts[3]);
    handles[1].merge(a, b).await.expect("merge A into B");
    handles[2].merge(c, one).await.expect("merge C into 1");
    handles[0].merge(b, one).await.expect("merge B into 1");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.expect("writer"));
    }
    let total: usize = acked.iter().map(|(_, a)| a.len()).sum();
    assert!(total > 100, "the writers made progress: {total} writes");
    assert_eq!(
        wait_for_views(&handles, REGIONS).await,
        original,
        "region 1 is whole again"
    );
    let check = |handles: Vec<NodeHandle>, acked: Vec<(u64, Vec<u64>)>| async move {
        for (c, list) in &acked {
            for &i in list {
                for h in &handles {
                    let got = h.get(in_region_1(*c, i)).await;
                    assert_eq!(
                        got,
                        Ok(Some(Bytes::from(format!("v{i}")))),
                        "{c}/{i} on node {}",
                        h.node_id()
                    );
                }
            }
        }
    };
    check(handles.clone(), acked.clone()).await;
    let Cluster {
        nodes, _dirs: dirs, ..
    } = cluster;
    for n in nodes {
        n.stop();
    }
    let cluster = start_cluster_in(dirs);
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    assert_eq!(
        wait_for_views(&handles, REGIONS).await,
        original,
        "after a restart"
    );
    check(handles.clone(), acked).await;
    for n in cluster.nodes {
        n.stop();
    }
}

/// A merge the target refuses (the regions are not adjacent) is rolled back: the source
/// serves writes again. A merge while a replica is cut off waits for it, and completes
/// once it returns, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_merge_rolls_back_and_a_merge_waits_for_a_lagging_replica() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let parts = split_region_1_in_four(&handles[0]).await;
    wait_for_views(&handles, REGIONS + 3).await;
    let (c, a) = (parts[1], parts[3]);
    let refused = handles[0].merge(c, a).await;
    assert!(
        matches!(&refused, Err(NodeError::Refused(why)) if why.contains("rolled back")),
        "{refused:?}"
    );
    let key_in_c = Bytes::from_static(&[0, 0x50, b'c']);
    let put = KvCommand::Put {
        key: key_in_c.clone(),
        value: Bytes::from_static(b"after rollback"),
        cond: PutCondition::Always,
    };
    assert_eq!(
        handles[1].write(put, (7070, 1)).await,
        Ok(KvResponse::Written(true))
    );

    cluster._net.isolate(3);
    let h = handles[0].clone();
    let merging = tokio::spawn(async move { h.merge(a, parts[2]).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !merging.is_finished(),
        "the merge waited for the cut-off replica"
    );
    cluster._net.heal();
    merging
        .await
        .expect("task")
        .expect("merge after the replica returned");
    wait_for_views(&handles, REGIONS + 2).await;
    assert_eq!(
        handles[2].get(key_in_c).await,
        Ok(Some(Bytes::from_static(b"after rollback")))
    );
    for n in cluster.nodes {
        n.stop();
    }
}

/// Where each node's replicas of region `source` and of region 1 stand (role, term,
/// commit, applied, merging, epoch version), for the messages of a slow or failed merge.
async fn merge_views(handles: &[NodeHandle], source: u64) -> String {
    let mut views = Vec::new();
    for h in handles {
        let status = h.status().await.unwrap_or_default();
        for st in status
            .iter()
            .filter(|st| [source, 1].contains(&st.route.id))
        {
            views.push(format!(
                "node {} region {}: {} term {} commit {} applied {} merging {:?} v{}",
                h.node_id(),
                st.route.id,
                st.role,
                st.term,
                st.commit,
                st.applied,
                st.route.merging_into,
                st.route.epoch.version
            ));
        }
    }
    for h in handles {
        if let Some(r) = h.regions().all().into_iter().find(|r| r.id == source) {
            views.push(format!(
                "node {} routes region {source}: {:?}..{:?} merging {:?} v{} leader {:?}",
                h.node_id(),
                r.start_key,
                r.end_key,
                r.merging_into,
                r.epoch.version,
                r.leader_node
            ));
        }
    }
    views.join("\n")
}

/// Issue 8's first test, with leader transfers thrown in: under sixteen writers, region 1
/// is split into 64 regions by repeated splits while leaderships move, then merged back
/// into one. Every acknowledged write is present afterwards on every node, and the key
/// space tiles exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_splits_and_merges_back_under_writers_and_transfers() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let original = tiling(&handles[0]);
    let in_region_1 = |c: u64, i: u64| {
        let mut k = vec![0u8, ((c * 37 + i * 11) % 256) as u8, (i % 7) as u8];
        k.extend_from_slice(format!("x{c}-{i}").as_bytes());
        Bytes::from(k)
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for c in 0..16u64 {
        let handles = handles.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let put = KvCommand::Put {
                    key: in_region_1(c, i),
                    value: Bytes::from(format!("v{i}")),
                    cond: PutCondition::Always,
                };
                match handles[((c + i) % NODES) as usize]
                    .write(put, (300 + c, i + 1))
                    .await
                {
                    Ok(KvResponse::Written(true)) => acked.push(i),
                    other => panic!("write {c}/{i} failed: {other:?}"),
                }
                i += 1;
            }
            (c, acked)
        }));
    }
    // Leaderships of region 1's parts keep moving.
    let mover = {
        let handles = handles.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let parts: Vec<_> = handles[0]
                    .regions()
                    .all()
                    .into_iter()
                    .filter(|r| r.start_key.as_ref() < &[4u8, 0][..])
                    .collect();
                if let Some(r) = parts.get((n as usize * 7) % parts.len().max(1)) {
                    if let Some(leader) = r.leader_node {
                        let to = leader % NODES + 1;
                        let _ = handles[leader as usize - 1].transfer_leader(r.id, to).await;
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    // 63 splits: region 1 = ["", 0x0400) cut at 0x00 0x04, 0x00 0x08, ... from the right.
    for s in (1..64u16).rev() {
        let key = Bytes::from((s * 4).to_be_bytes().to_vec());
        let h = &handles[(s % 3) as usize];
        h.split(1, Some(key)).await.expect("split");
    }
    wait_for_views(&handles, REGIONS + 63).await;
    // Merge back, always the right neighbour of region 1 into region 1.
    for m in 0..63u64 {
        let next = handles[0]
            .regions()
            .all()
            .into_iter()
            .find(|r| r.start_key.as_ref() == &((1 + m as u16) * 4).to_be_bytes()[..])
            .expect("the next part")
            .id;
        let result = handles[(m % NODES) as usize].merge(next, 1).await;
        if let Err(e) = result {
            panic!(
                "merge {m} of region {next}: {e}\n{}",
                merge_views(&handles, next).await
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    mover.await.expect("mover");
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.expect("writer"));
    }
    assert_eq!(wait_for_views(&handles, REGIONS).await, original);
    let total: usize = acked.iter().map(|(_, a)| a.len()).sum();
    assert!(total > 200, "the writers made progress: {total} writes");
    for (c, list) in &acked {
        for &i in list {
            for h in &handles {
                let got = h.get(in_region_1(*c, i)).await;
                assert_eq!(
                    got,
                    Ok(Some(Bytes::from(format!("v{i}")))),
                    "{c}/{i} on node {}",
                    h.node_id()
                );
            }
        }
    }
    for n in cluster.nodes {
        n.stop();
    }
}

/// Automatic merge (on with `auto_merge`): small neighbours on the same nodes merge, one
/// check per node per second, while their data stays readable and the key space tiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_neighbours_merge_automatically_when_asked_to() {
    let dirs = (0..NODES)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let cluster = start_cluster_with(dirs, |node_id| StoreConfig {
        node_id,
        auto_merge: true,
        region_merge_bytes: 1 << 20,
        ..Default::default()
    });
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    for i in 0..200u64 {
        let put = KvCommand::Put {
            key: key(9, i),
            value: Bytes::from(format!("a{i}")),
            cond: PutCondition::Always,
        };
        let r = handles[(i % NODES) as usize]
            .write(put, (8080, i + 1))
            .await;
        assert_eq!(r, Ok(KvResponse::Written(true)), "write {i}");
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    while handles[0].regions().all().len() > REGIONS - 12 {
        assert!(
            Instant::now() < deadline,
            "only {} regions merged away",
            REGIONS - handles[0].regions().all().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = handles[0].regions().all().len();
    wait_for_views(&handles, n).await;
    for i in 0..200u64 {
        let got = handles[(i % NODES) as usize].get(key(9, i)).await;
        assert_eq!(got, Ok(Some(Bytes::from(format!("a{i}")))), "key {i}");
    }

    for n in cluster.nodes {
        n.stop();
    }
}

/// A scan answers the end of the range it covered as the region was when it served the
/// read. A caller that routed to a region before a split (the old, longer range) must go
/// on from that end, not from the routed one: the chaos suite's seed 1 had a `RANGE ""
/// ""` miss every key the split had just moved to the new region, because the service
/// walked on from the routed end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_answers_the_end_it_covered_as_the_region_was_when_served() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let left = Bytes::from_static(&[0, 0x10, b'l']);
    let right = Bytes::from_static(&[0, 0x90, b'r']);
    for (i, key) in [&left, &right].into_iter().enumerate() {
        let put = KvCommand::Put {
            key: key.clone(),
            value: Bytes::from_static(b"v"),
            cond: PutCondition::Always,
        };
        let r = with_leader(&handles, |h| {
            let put = put.clone();
            async move { h.write(put, (6262, i as u64 + 1)).await }
        })
        .await;
        assert_eq!(r, KvResponse::Written(true), "put {i}");
    }
    // Routed before the split: region 1 holds both keys.
    let routed = handles[0].regions().route(&left).expect("region 1");
    assert_eq!(routed.id, 1);
    assert!(routed.end_key.is_empty() || routed.end_key > right);
    let at = Bytes::from_static(&[0, 0x80]);
    handles[0].split(1, Some(at.clone())).await.expect("split");
    // Served after it: region 1 now ends at the split key, and the scan says so.
    let page = handles[0]
        .scan_page(left.clone(), routed.end_key.clone(), usize::MAX)
        .await
        .expect("scan of region 1");
    assert_eq!(page.pairs.len(), 1, "{:?}", page.pairs);
    assert_eq!(page.pairs[0].0, left);
    assert_eq!(
        page.covered_end, at,
        "region 1's end when the scan was served"
    );
    let rest = handles[0]
        .scan_page(page.covered_end.clone(), routed.end_key.clone(), usize::MAX)
        .await
        .expect("scan of the new region");
    assert_eq!(rest.pairs.len(), 1, "{:?}", rest.pairs);
    assert_eq!(
        rest.pairs[0].0, right,
        "the moved key is found from the covered end"
    );
    for n in cluster.nodes {
        n.stop();
    }
}

/// Waits until `h` routes `key` to region `id` (a split answers once applied; the new
/// region enters the routing table when it is created, right after).
async fn wait_for_region(h: &NodeHandle, key: &[u8], id: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.regions().route(key).map(|r| r.id) != Some(id) {
        assert!(
            Instant::now() < deadline,
            "node {} never routed to {id}",
            h.node_id()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn put(key: &Bytes, value: &'static str) -> KvCommand {
    KvCommand::Put {
        key: key.clone(),
        value: Bytes::from_static(value.as_bytes()),
        cond: PutCondition::Always,
    }
}

fn expected(r: &RegionRoute) -> ExpectedRoute {
    ExpectedRoute {
        region_id: r.id,
        epoch: r.epoch,
    }
}

/// The regions an `EpochNotMatch` carries, as (id, start, end, version).
fn described(e: Result<impl std::fmt::Debug, NodeError>) -> Vec<(u64, Bytes, Bytes, u64)> {
    match e {
        Err(NodeError::EpochNotMatch { region_id, current }) => {
            assert_eq!(region_id, 1, "the error names the region the request named");
            current
                .into_iter()
                .map(|r| (r.id, r.start_key, r.end_key, r.epoch.version))
                .collect()
        }
        other => panic!("expected EpochNotMatch, got {other:?}"),
    }
}

/// Issue 8: a request routed with region 1's epoch from before a split — to the part that
/// moved to the new region, or to the part region 1 kept — is answered `EpochNotMatch`
/// with both regions as they are after the split (reads and scans too), and nothing is
/// written; routed with the new epoch, or not routed, it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_the_pre_split_epoch_gets_the_post_split_regions() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let left = Bytes::from_static(&[0, 0x10, b'l']);
    let right = Bytes::from_static(&[0, 0x90, b'r']);
    let before = handles[0].regions().route(&right).expect("region 1");
    assert_eq!(before.id, 1);
    let r = handles[0]
        .submit_write_routed(put(&right, "v0"), (8181, 1), Some(expected(&before)))
        .await;
    assert_eq!(
        r,
        Ok(KvResponse::Written(true)),
        "the current epoch is served"
    );
    let at = Bytes::from_static(&[0, 0x80]);
    let new = handles[0].split(1, Some(at.clone())).await.expect("split")[0];
    wait_for_region(&handles[0], &right, new).await;
    let after = |h: &NodeHandle| {
        let l = h.regions().route(&left).expect("region 1 after");
        let r = h.regions().route(&right).expect("new region");
        assert_eq!((l.id, r.id), (1, new));
        vec![
            (1, before.start_key.clone(), at.clone(), l.epoch.version),
            (new, at.clone(), before.end_key.clone(), r.epoch.version),
        ]
    };
    let want = after(&handles[0]);
    assert!(
        want[0].3 > before.epoch.version,
        "the split bumps the version"
    );
    for (seq, key) in [(2, &right), (3, &left)] {
        let stale = handles[0]
            .submit_write_routed(put(key, "stale"), (8181, seq), Some(expected(&before)))
            .await;
        assert_eq!(described(stale), want, "write of {key:?}");
    }
    let read = handles[0]
        .submit_get_routed(right.clone(), Some(expected(&before)))
        .await;
    assert_eq!(described(read), want, "read");
    let scan = handles[0]
        .scan_page_routed(left.clone(), Bytes::new(), 10, Some(expected(&before)))
        .await;
    assert_eq!(described(scan.map(|p| p.pairs)), want, "scan");
    // A multi-key write routed to region 1 whose keys are now in two regions.
    let both = KvCommand::Delete {
        keys: vec![left.clone(), right.clone()],
    };
    let mut fresh = handles[0].regions().route(&left).expect("region 1");
    let r = handles[0]
        .submit_write_routed(both, (8181, 4), Some(expected(&fresh)))
        .await;
    assert!(
        matches!(&r, Err(NodeError::EpochNotMatch { current, .. }) if current.iter().any(|c| c.id == new)),
        "a key outside the routed region: {r:?}"
    );
    // Nothing stale was written.
    assert_eq!(
        handles[0].get(right.clone()).await,
        Ok(Some(Bytes::from_static(b"v0")))
    );
    assert_eq!(handles[0].get(left.clone()).await, Ok(None));
    // With the new epochs, both parts are served.
    fresh = handles[0].regions().route(&right).expect("new region");
    let r = handles[0]
        .submit_write_routed(put(&right, "v1"), (8181, 5), Some(expected(&fresh)))
        .await;
    assert_eq!(r, Ok(KvResponse::Written(true)));
    fresh = handles[0].regions().route(&left).expect("region 1");
    let r = handles[0]
        .submit_get_routed(left.clone(), Some(expected(&fresh)))
        .await;
    assert_eq!(r, Ok(None));
    for n in cluster.nodes {
        n.stop();
    }
}

/// Issue 8, the forwarding path: node 3 misses a split (cut off), then takes a write for
/// the moved part at once, still routing it by its own, old table, and forwards it to the
/// leader. Region 1 refuses it at apply (the key left it). Not routed by the sender, the
/// write is re-routed by key on node 3 and served in the new region; routed with the old
/// epoch, the refusal becomes `EpochNotMatch` with the post-split regions once node 3 has
/// applied the split — never a silent write in the wrong region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_refused_by_a_split_is_rerouted_or_answered_epoch_not_match() {
    let cluster = start_cluster();
    let handles: Vec<NodeHandle> = cluster.nodes.iter().map(|n| n.handle()).collect();
    wait_for_balanced_leaders(&handles).await;
    let right = Bytes::from_static(&[0, 0x90, b'f']);
    let right2 = Bytes::from_static(&[0, 0x91, b'f']);
    let before = handles[2].regions().route(&right).expect("region 1");
    assert_eq!(before.id, 1);
    cluster._net.isolate(3);
    let new = handles[0]
        .split(1, Some(Bytes::from_static(&[0, 0x80])))
        .await
        .expect("split while node 3 is cut off")[0];
    cluster._net.heal();
    assert_eq!(
        handles[2].regions().route(&right).map(|r| r.id),
        Some(1),
        "node 3 has not applied the split yet"
    );
    let plain = handles[2].submit_write(put(&right, "plain"), (9191, 1));
    let routed =
        handles[2].submit_write_routed(put(&right2, "routed"), (9191, 2), Some(expected(&before)));
    assert_eq!(
        plain.await,
        Ok(KvResponse::Written(true)),
        "re-routed by key"
    );
    let want: Vec<_> = [1, new]
        .into_iter()
        .map(|id| {
            let r = handles[2]
                .regions()
                .all()
                .into_iter()
                .find(|r| r.id == id)
                .expect("region on node 3");
            (r.id, r.start_key, r.end_key, r.epoch.version)
        })
        .collect();
    assert_eq!(described(routed.await), want);
    assert_eq!(
        handles[0].get(right.clone()).await,
        Ok(Some(Bytes::from_static(b"plain")))
    );
    assert_eq!(handles[0].get(right2.clone()).await, Ok(None));
    assert_eq!(
        handles[0].regions().route(&right).map(|r| r.id),
        Some(new),
        "served by the new region"
    );
    for n in cluster.nodes {
        n.stop();
    }
}
