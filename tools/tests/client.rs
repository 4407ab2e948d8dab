//! The Rust client (`flotilla-client`) against real nodes behind the RESP server: a one-node
//! cluster of 8 regions for every call, three nodes with a leadership transfer in the middle
//! of concurrent writes, and exactly-once writes through `FLOTILLA.SESSION` sent to two nodes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flotilla_client::resp::{decode, encode_request, Value};
use flotilla_client::{Client, ClientConfig, ClientError, Op};
use flotilla_engine::EngineConfig;
use flotilla_region::node::{Node, NodeConfig, NodeHandle, StoreConfig};
use flotilla_tools::{NodeService, RespServer};
use flotilla_transport::MemoryNetwork;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REGIONS: usize = 8;

/// Keys whose first byte spreads them over all 8 regions.
fn key(i: u32) -> Bytes {
    let mut k = vec![(i * 37 % 256) as u8];
    k.extend_from_slice(format!("key-{i}").as_bytes());
    Bytes::from(k)
}

struct Cluster {
    nodes: Vec<Node>,
    addrs: Vec<SocketAddr>,
    _dirs: Vec<tempfile::TempDir>,
    _net: MemoryNetwork,
}

impl Cluster {
    /// `n` nodes of one cluster, each serving RESP on its own port (call inside a runtime).
    async fn start(n: u64) -> Cluster {
        let net = MemoryNetwork::new(11);
        let joined: Vec<_> = (1..=n).map(|id| net.join(id, 1024)).collect();
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        let mut dirs = Vec::new();
        for (i, (transport, inbound)) in joined.into_iter().enumerate() {
            let id = i as u64 + 1;
            let dir = tempfile::tempdir().expect("temp dir");
            let cfg = NodeConfig {
                store: StoreConfig {
                    node_id: id,
                    ..Default::default()
                },
                data_dir: dir.path().to_path_buf(),
                engine: EngineConfig::default(),
                initial_nodes: (1..=n).collect(),
                initial_regions: REGIONS,
                request_timeout: Duration::from_secs(5),
                cluster: Default::default(),
            };
            let node = Node::start(cfg, Arc::new(transport), inbound).expect("node starts");
            let service = NodeService::new(node.handle(), id << 48);
            let server = RespServer::bind("127.0.0.1:0", Arc::new(service))
                .await
                .expect("bind");
            addrs.push(server.local_addr().expect("local addr"));
            tokio::spawn(server.serve(std::future::pending()));
            nodes.push(node);
            dirs.push(dir);
        }
        Cluster {
            nodes,
            addrs,
            _dirs: dirs,
            _net: net,
        }
    }

    fn handles(&self) -> Vec<NodeHandle> {
        self.nodes.iter().map(|n| n.handle()).collect()
    }

    /// Region id → the node leading it, once every region has a leader.
    async fn wait_for_leaders(&self) -> BTreeMap<u64, u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leaders = self.leaders().await;
            if leaders.len() == REGIONS {
                return leaders;
            }
            assert!(Instant::now() < deadline, "leaders so far: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn leaders(&self) -> BTreeMap<u64, u64> {
        let mut leaders = BTreeMap::new();
        for h in self.handles() {
            for r in h.status().await.expect("status") {
                if r.role == "leader" {
                    leaders.insert(r.route.id, h.node_id());
                }
            }
        }
        leaders
    }

    fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.addrs.iter().map(|a| a.to_string()))
    }

    fn stop(self) {
        for n in self.nodes {
            n.stop();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_round_trips_through_one_node_with_eight_regions() {
    let cluster = Cluster::start(1).await;
    cluster.wait_for_leaders().await;
    let client = Client::connect(cluster.client_config())
        .await
        .expect("connect");
    let regions = client.regions();
    assert_eq!(regions.len(), REGIONS, "{regions:?}");
    assert!(regions.iter().all(|r| r.leader == Some(1)), "{regions:?}");

    let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
    for i in 0..64 {
        let v = Bytes::from(format!("v{i}"));
        client.put(key(i), v.clone()).await.expect("put");
        model.insert(key(i), v);
    }
    for i in 0..64 {
        assert_eq!(
            client.get(key(i)).await.expect("get"),
            model.get(&key(i)).cloned()
        );
    }
    assert_eq!(client.get(key(9999)).await.expect("get"), None);

    assert!(!client.put_if_absent(key(0), "x").await.expect("nx"));
    assert!(client.put_if_absent(key(500), "new").await.expect("nx"));
    model.insert(key(500), Bytes::from("new"));

    assert_eq!(client.incr_by(key(700), 40).await.expect("incr"), 40);
    assert_eq!(client.incr_by(key(700), -1).await.expect("incr"), 39);
    model.insert(key(700), Bytes::from("39"));
    // A final error comes back at once, not after retrying until the timeout.
    let started = Instant::now();
    let err = client.incr_by(key(0), 1).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server(m) if m.contains("not an integer")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "not retried");

    // Keys of several regions, one listed twice, one missing.
    let deleted = client
        .delete([key(1), key(2), key(3), key(1), key(8888)])
        .await
        .expect("delete");
    assert_eq!(deleted, 3);
    for i in 1..=3 {
        model.remove(&key(i));
    }

    // A batch over every region: puts, deletes, and a key written twice (the last op wins).
    let mut ops = Vec::new();
    for i in 10..30 {
        ops.push(Op::put(key(i), format!("b{i}")));
        model.insert(key(i), Bytes::from(format!("b{i}")));
    }
    for i in 40..45 {
        ops.push(Op::delete(key(i)));
        model.remove(&key(i));
    }
    ops.push(Op::put(key(50), "first"));
    ops.push(Op::delete(key(50)));
    model.remove(&key(50));
    ops.push(Op::delete(key(51)));
    ops.push(Op::put(key(51), "second"));
    model.insert(key(51), Bytes::from("second"));
    let results = client.batch(ops.clone()).await;
    assert_eq!(results.len(), ops.len());
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(client.get(key(50)).await.unwrap(), None);
    assert_eq!(
        client.get(key(51)).await.unwrap(),
        Some(Bytes::from("second"))
    );
    assert!(client.batch(Vec::new()).await.is_empty());

    // 1200 keys in one region: a scan pages through it (pages hold at most 1000 pairs).
    let crowded: Vec<Op> = (0..1200)
        .map(|i| Op::put(format!("\x01crowded-{i:05}"), format!("c{i}")))
        .collect();
    for op in &crowded {
        if let Op::Put { key, value } = op {
            model.insert(key.clone(), value.clone());
        }
    }
    assert!(client.batch(crowded).await.iter().all(|r| r.is_ok()));
    let page = client
        .scan("\x01", Some(Bytes::from("\x02")), 5000)
        .await
        .expect("scan");
    assert_eq!(
        page.len(),
        1200 + model
            .range(Bytes::from("\x01")..Bytes::from("\x01crowded"))
            .count()
    );

    // Scans across regions agree with the model: everything, a bounded range, a limit.
    let all = client.scan("", None, 100_000).await.expect("scan");
    let expected: Vec<(Bytes, Bytes)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(all, expected);
    let (lo, hi) = (Bytes::from_static(b"\x30"), Bytes::from_static(b"\xb0"));
    let middle = client
        .scan(lo.clone(), Some(hi.clone()), 100_000)
        .await
        .expect("scan");
    let expected_middle: Vec<(Bytes, Bytes)> = model
        .range(lo..hi)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(expected_middle.len() > 20, "the range spans regions");
    assert_eq!(middle, expected_middle);
    let first_ten = client.scan("", None, 10).await.expect("scan");
    assert_eq!(first_ten, expected[..10].to_vec());
    assert!(client
        .scan("b", Some(Bytes::from("a")), 10)
        .await
        .expect("scan")
        .is_empty());

    drop(client);
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_absorb_a_leadership_transfer_during_concurrent_writes() {
    const KEYS: u32 = 500;
    const TASKS: u32 = 8;
    let cluster = Cluster::start(3).await;
    let before = cluster.wait_for_leaders().await;
    let client = Client::connect(cluster.client_config())
        .await
        .expect("connect");
    assert_eq!(client.regions().len(), REGIONS);

    let written = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let client = client.clone();
        let written = written.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..KEYS).step_by(TASKS as usize) {
                client
                    .put(key(i), format!("v{i}"))
                    .await
                    .unwrap_or_else(|e| panic!("put {i}: {e}"));
                client
                    .incr_by("counter", 1)
                    .await
                    .unwrap_or_else(|e| panic!("incr {i}: {e}"));
                written.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Mid-way, move every region's leadership to the next node.
    while written.load(Ordering::Relaxed) < KEYS as usize / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let handles = cluster.handles();
    let mut accepted = 0;
    for (&region, &leader) in &before {
        let to = leader % 3 + 1;
        if handles[leader as usize - 1]
            .transfer_leader(region, to)
            .await
            .is_ok()
        {
            accepted += 1;
        }
    }
    assert!(accepted > 0, "no transfer was accepted");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = cluster.leaders().await;
        if now
            .iter()
            .any(|(r, l)| before.get(r).is_some_and(|b| b != l))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no leader moved: {before:?} → {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        written.load(Ordering::Relaxed) < KEYS as usize,
        "the transfer happened after the writes; nothing was tested"
    );

    for t in tasks {
        t.await.expect("writer task");
    }
    for i in 0..KEYS {
        assert_eq!(
            client.get(key(i)).await.expect("get"),
            Some(Bytes::from(format!("v{i}"))),
            "key {i}"
        );
    }
    let all = client.scan("", None, 10_000).await.expect("scan");
    assert_eq!(
        all.len(),
        KEYS as usize + 1,
        "every key once, and the counter"
    );
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
    // Every INCR applied exactly once, retries through the transfer included.
    assert_eq!(
        client.get("counter").await.expect("get"),
        Some(Bytes::from(KEYS.to_string()))
    );

    drop(client);
    cluster.stop();
}

/// Sends one request on a fresh connection and reads its answer.
async fn raw(addr: SocketAddr, args: &[&str]) -> Value {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let args: Vec<Bytes> = args
        .iter()
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect();
    let mut out = BytesMut::new();
    encode_request(&args, &mut out);
    stream.write_all(&out).await.expect("write");
    let mut buf = BytesMut::new();
    loop {
        if let Some(v) = decode(&mut buf).expect("a valid reply") {
            return v;
        }
        assert!(stream.read_buf(&mut buf).await.expect("read") > 0, "closed");
    }
}

/// Sends `args` to node `first`, then wherever not-leader answers point, until a node
/// answers otherwise; returns that node and its answer.
async fn until_answered(addrs: &[SocketAddr], first: u64, args: &[&str]) -> (u64, Value) {
    let mut node = first;
    for _ in 0..100 {
        match raw(addrs[node as usize - 1], args).await {
            Value::Error(e) if e.starts_with("TRYAGAIN") => {
                if let Some((_, hint)) = e.split_once("(leader on node ") {
                    node = hint[..hint.find(')').expect("hint ends")]
                        .parse()
                        .expect("node id");
                } else {
                    node = node % addrs.len() as u64 + 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            v => return (node, v),
        }
    }
    panic!("no answer to {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_write_sent_to_two_nodes_applies_once() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leaders().await;
    let client = Client::connect(cluster.client_config())
        .await
        .expect("connect");
    let k = "exactly-once";
    let region = client
        .regions()
        .into_iter()
        .find(|r| r.contains(k.as_bytes()))
        .expect("a region holds the key");
    let leader = cluster.leaders().await[&region.id];
    let follower = leader % 3 + 1;
    let write = ["FLOTILLA.SESSION", "777000", "1", "INCRBY", k, "5"];

    // First to a follower: it says not-leader (or forwards); either way it lands once.
    let (answered, v) = until_answered(&cluster.addrs, follower, &write).await;
    assert_eq!(v, Value::Integer(5));
    // The same (id, seq) again, starting at another node: answered from the session table.
    let other = answered % 3 + 1;
    let (_, v) = until_answered(&cluster.addrs, other, &write).await;
    assert_eq!(v, Value::Integer(5), "a retry is not applied again");

    // After leadership moves, the new leader knows the session too (it is replicated).
    let current = cluster.leaders().await[&region.id];
    let next = current % 3 + 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.leaders().await.get(&region.id) != Some(&next) {
        let _ = cluster.handles()[current as usize - 1]
            .transfer_leader(region.id, next)
            .await;
        assert!(
            Instant::now() < deadline,
            "leadership did not move to {next}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, v) = until_answered(&cluster.addrs, next, &write).await;
    assert_eq!(
        v,
        Value::Integer(5),
        "a retry through the new leader is not applied"
    );

    assert_eq!(client.get(k).await.expect("get"), Some(Bytes::from("5")));
    // The next sequence of the same client id applies normally.
    let next_write = ["FLOTILLA.SESSION", "777000", "2", "INCRBY", k, "5"];
    let (_, v) = until_answered(&cluster.addrs, next, &next_write).await;
    assert_eq!(v, Value::Integer(10));

    drop(client);
    cluster.stop();
}

/// Issue 8: a client whose cache is from before a split keeps working. Its requests carry
/// the route of the region it picked; the node answers `EPOCHNOTMATCH` with the regions
/// after the split, the client puts them in its cache and retries at once — without
/// fetching `FLOTILLA.REGIONS` again — and a write retried that way applies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_pre_split_cache_is_fixed_by_the_error_alone() {
    let cluster = Cluster::start(1).await;
    cluster.wait_for_leaders().await;
    let client = Client::connect(cluster.client_config())
        .await
        .expect("connect");
    let fetches = client.routing_table_fetches();
    assert!(fetches >= 1, "the map is fetched at connect");
    let left = Bytes::from_static(&[0x05, b'l']);
    let right = Bytes::from_static(&[0x15, b'r']);
    let old = client
        .regions()
        .into_iter()
        .find(|r| r.contains(&right))
        .expect("cached");
    assert!(
        old.contains(&left),
        "both keys in one region before the split"
    );
    client.put(left.clone(), "l0").await.expect("put left");
    let h = &cluster.handles()[0];
    let new = h
        .split(old.id, Some(Bytes::from_static(&[0x10])))
        .await
        .expect("split")[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.regions().route(&right).map(|r| r.id) != Some(new) {
        assert!(Instant::now() < deadline, "the new region never showed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        client.regions().len(),
        REGIONS,
        "the cache is from before the split"
    );
    // A write to the part that moved: routed to the old region, answered EPOCHNOTMATCH,
    // retried with the same session in the new region.
    assert_eq!(client.incr_by(right.clone(), 5).await.expect("incr"), 5);
    let cached: Vec<_> = client
        .regions()
        .into_iter()
        .filter(|r| r.id == old.id || r.id == new)
        .map(|r| (r.id, r.start_key, r.end_key, r.version > old.version))
        .collect();
    assert_eq!(
        cached,
        vec![
            (
                old.id,
                old.start_key.clone(),
                Bytes::from_static(&[0x10]),
                true
            ),
            (new, Bytes::from_static(&[0x10]), old.end_key.clone(), true),
        ],
        "the cache holds both regions as they are after the split"
    );
    assert_eq!(client.regions().len(), REGIONS + 1);
    assert_eq!(
        client.get(right.clone()).await.expect("get"),
        Some(Bytes::from("5"))
    );
    assert_eq!(
        client.get(left.clone()).await.expect("get"),
        Some(Bytes::from("l0"))
    );
    let page = client.scan(left.clone(), None, 10).await.expect("scan");
    assert_eq!(page.len(), 2, "{page:?}");
    assert_eq!(
        client.routing_table_fetches(),
        fetches,
        "no FLOTILLA.REGIONS after the split: the error carried the regions"
    );
    // The write applied once: the retry was answered from the session, not applied again.
    assert_eq!(client.incr_by(right.clone(), 1).await.expect("incr"), 6);
    drop(client);
    cluster.stop();
}
