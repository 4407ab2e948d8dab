//! Snapshots of a three-node in-process cluster (engine on disk, in-memory transport), six
//! regions: a snapshot is built off the store's thread, so the node keeps committing other
//! regions' writes while a build is held half-way; and a snapshot lost on its way is sent
//! again until the lagging replica holds every write. Over TCP (every link through a
//! proxy), a snapshot stream cut part-way is sent again by the leader on its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_common::MessageKind;
use flotilla_engine::EngineConfig;
use flotilla_region::node::{
    KvCommand, KvResponse, Node, NodeConfig, NodeHandle, PutCondition, SnapshotBuildHook,
    StoreConfig,
};
use flotilla_transport::{
    InboundReceiver, MemoryNetwork, TcpTransport, Transport, TransportConfig,
};

mod proxy;
use proxy::Proxy;

const NODES: u64 = 3;
/// Six regions, so that every node leads two once the balancer is done: the node that
/// builds region 1's snapshot also leads another region.
const REGIONS: usize = 6;
/// Writes to region 1 while node 3 is cut off, and their value size: about 3 MiB.
const LAGGING_WRITES: u64 = 200;
const VALUE_BYTES: usize = 16 << 10;
/// Writes to another region that must commit while region 1's snapshot build is held.
const OTHER_WRITES: u64 = 50;
/// Chunks of region 1's first snapshot stream to node 3 that go through before the proxy
/// cuts it: the snapshot is about 50 chunks of `SNAPSHOT_CHUNK_BYTES`.
const CHUNKS_BEFORE_CUT: u64 = 8;
const SNAPSHOT_CHUNK_BYTES: usize = 64 << 10;
/// How long a held build waits for the test to release it, at most: a store that waited
/// for its build would otherwise hang the test instead of failing it.
const HOLD_MAX: Duration = Duration::from_secs(30);

/// Holds snapshot builds until opened, remembering the node of the last one that reached it.
#[derive(Default)]
struct Gate {
    reached_on: AtomicU64,
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn hold(&self, node: u64) {
        self.reached_on.store(node, Ordering::SeqCst);
        let open = self.open.lock().expect("gate lock");
        let _ = self
            .cv
            .wait_timeout_while(open, HOLD_MAX, |open| !*open)
            .expect("gate lock");
    }

    fn open(&self) {
        *self.open.lock().expect("gate lock") = true;
        self.cv.notify_all();
    }
}

struct Cluster {
    nodes: Vec<Node>,
    _dirs: Vec<tempfile::TempDir>,
    net: MemoryNetwork,
}

/// Compacts logs early (40 entries, keeping 10) so a replica cut off for a while needs a
/// snapshot; each node's snapshot builds go through `hook(node id)`.
fn start_cluster(hook: impl Fn(u64) -> SnapshotBuildHook) -> Cluster {
    let net = MemoryNetwork::new(5);
    let transports = (1..=NODES)
        .map(|id| {
            let (transport, inbound) = net.join(id, 1024);
            (Arc::new(transport) as Arc<dyn Transport>, inbound)
        })
        .collect();
    let (nodes, dirs) = start_nodes(hook, transports);
    Cluster {
        nodes,
        _dirs: dirs,
        net,
    }
}

/// Starts node `i + 1` over `transports[i]`, each in a new data directory, logs compacted
/// early as [`start_cluster`] says.
fn start_nodes(
    hook: impl Fn(u64) -> SnapshotBuildHook,
    transports: Vec<(Arc<dyn Transport>, InboundReceiver)>,
) -> (Vec<Node>, Vec<tempfile::TempDir>) {
    let dirs: Vec<tempfile::TempDir> = (0..NODES)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let mut nodes = Vec::new();
    for (id, (transport, inbound)) in (1..=NODES).zip(transports) {
        let cfg = NodeConfig {
            store: StoreConfig {
                node_id: id,
                log_compact_trigger_entries: 40,
                log_keep_entries: 10,
                snapshot_build_hook: hook(id),
                ..Default::default()
            },
            data_dir: dirs[id as usize - 1].path().to_path_buf(),
            engine: EngineConfig::default(),
            initial_nodes: (1..=NODES).collect(),
            initial_regions: REGIONS,
            request_timeout: Duration::from_secs(5),
            cluster: Default::default(),
        };
        nodes.push(Node::start(cfg, transport, inbound).expect("node starts"));
    }
    (nodes, dirs)
}

fn key1(i: u64) -> Bytes {
    Bytes::from(format!("\x10k{i:06}"))
}

/// A key of the region starting at `start`.
fn key_in(start: &[u8], i: u64) -> Bytes {
    let mut k = start.to_vec();
    k.extend_from_slice(format!("k{i:06}").as_bytes());
    Bytes::from(k)
}

/// A value that differs per key, so a misplaced pair is caught.
fn value(i: u64) -> Bytes {
    let mut v = vec![(i % 251) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&i.to_le_bytes());
    Bytes::from(v)
}

fn put(key: Bytes, value: Bytes) -> KvCommand {
    KvCommand::Put {
        key,
        value,
        cond: PutCondition::Always,
    }
}

/// Waits until every region has a leader, as node 1 sees it.
async fn wait_for_leaders(h: &NodeHandle) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let routes = h.regions().all();
        if routes.len() == REGIONS && routes.iter().all(|r| r.leader_node.is_some()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "regions without a leader: {routes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Moves region 1's leadership to node 1 if node 3 has it (node 3 is about to be cut off).
async fn move_region_1_off_node_3(h1: &NodeHandle) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = h1.regions().route(&key1(0)).and_then(|r| r.leader_node);
        if matches!(leader, Some(1) | Some(2)) {
            return;
        }
        assert!(Instant::now() < deadline, "region 1 stays on node 3");
        let _ = h1.transfer_leader(1, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `LAGGING_WRITES` values to region 1 while node 3 hears nothing (`isolate` cuts
/// it off), until node 1 has compacted region 1's log past what node 3 holds. Node 3 must
/// not lead region 1 then.
async fn leave_node_3_behind(node_1: &Node, h: &NodeHandle, isolate: impl FnOnce()) {
    isolate();
    for i in 0..LAGGING_WRITES {
        let r = h.write(put(key1(i), value(i)), (1000, i + 1)).await;
        assert_eq!(r, Ok(KvResponse::Written(true)), "region 1 write {i}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let first = node_1.log().expect("log open").first_index(1);
        if first > 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "region 1 was never compacted: first index {first}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads every region 1 value through node 3 (a follower serves linearizable reads from
/// its own replica once it has applied the read index).
async fn node_3_holds_region_1(h3: &NodeHandle) {
    for i in 0..LAGGING_WRITES {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match h3.get(key1(i)).await {
                Ok(Some(v)) => {
                    assert_eq!(v, value(i), "key {i} through node 3");
                    break;
                }
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "key {i} never readable through node 3: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Region 1's snapshot build is held after it took its RocksDB snapshot; while it is
/// held, the building node commits every write to another region it leads. Then the build
/// is let go and node 3 catches up from the snapshot. With the build on the store's
/// thread, as before, the held build would stop every write of that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_committing_while_a_snapshot_is_built() {
    let gate = Arc::new(Gate::default());
    let c = start_cluster(|node| {
        let gate = gate.clone();
        SnapshotBuildHook::new(move |region| {
            if region == 1 {
                gate.hold(node);
            }
        })
    });
    let h1 = c.nodes[0].handle();
    let h3 = c.nodes[2].handle();
    wait_for_leaders(&h1).await;
    move_region_1_off_node_3(&h1).await;
    leave_node_3_behind(&c.nodes[0], &h1, || c.net.isolate(3)).await;
    c.net.heal();

    let deadline = Instant::now() + Duration::from_secs(20);
    let builder = loop {
        let node = gate.reached_on.load(Ordering::SeqCst);
        if node != 0 {
            break node;
        }
        assert!(
            Instant::now() < deadline,
            "no node started building region 1's snapshot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let hb = c.nodes[builder as usize - 1].handle();
    let progress = hb.snapshot_progress().await.expect("progress");
    assert_eq!(progress.builds.building, 1, "{progress:?}");
    assert_eq!(progress.builds.built, 0, "{progress:?}");
    // Another region the builder leads (moved there if the balancer left it none).
    let other = loop {
        let routes = hb.regions().all();
        if let Some(r) = routes
            .iter()
            .find(|r| r.id != 1 && r.leader_node == Some(builder))
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "node {builder} leads no other region: {routes:?}"
        );
        if let Some(r) = routes.iter().find(|r| r.id != 1) {
            let _ = hb.transfer_leader(r.id, builder).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut led_by_builder = 0;
    for i in 0..OTHER_WRITES {
        let r = hb
            .write(put(key_in(&other.start_key, i), value(i)), (2000, i + 1))
            .await;
        assert_eq!(
            r,
            Ok(KvResponse::Written(true)),
            "region {} write {i} during the build",
            other.id
        );
        if hb
            .regions()
            .route(&other.start_key)
            .and_then(|r| r.leader_node)
            == Some(builder)
        {
            led_by_builder += 1;
        }
    }
    assert!(
        led_by_builder > 0,
        "node {builder} stopped leading region {}",
        other.id
    );
    // Everything above happened while the build was held: it cannot have finished.
    let progress = hb.snapshot_progress().await.expect("progress");
    assert_eq!(progress.builds.built, 0, "{progress:?}");
    assert_eq!(progress.builds.building, 1, "{progress:?}");
    gate.open();
    node_3_holds_region_1(&h3).await;
    let progress = hb.snapshot_progress().await.expect("progress");
    assert!(progress.builds.built >= 1, "{progress:?}");
    assert_eq!(progress.builds.building, 0, "{progress:?}");
    for n in c.nodes {
        n.stop();
    }
}

/// The first snapshot of region 1 for node 3 is lost on the way (the in-memory network
/// reports it failed, as the TCP transport does for a broken stream): the leader goes
/// back to probing node 3, builds and sends another snapshot, and node 3 ends up with
/// every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_snapshot_is_sent_again() {
    let c = start_cluster(|_| SnapshotBuildHook::default());
    let h1 = c.nodes[0].handle();
    let h3 = c.nodes[2].handle();
    wait_for_leaders(&h1).await;
    move_region_1_off_node_3(&h1).await;
    leave_node_3_behind(&c.nodes[0], &h1, || c.net.isolate(3)).await;
    let dropped = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    {
        let (dropped, seen) = (dropped.clone(), seen.clone());
        c.net.set_drop_filter(Some(Box::new(move |env| {
            if env.message.kind != MessageKind::Snapshot || env.to_node != 3 {
                return false;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            dropped
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })));
    }
    c.net.heal();
    node_3_holds_region_1(&h3).await;
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the first snapshot was dropped"
    );
    assert!(
        seen.load(Ordering::SeqCst) >= 2,
        "a second snapshot was sent: {} seen",
        seen.load(Ordering::SeqCst)
    );
    // Each snapshot handed out is built for it: the lost one and its replacement.
    let mut built = 0;
    for n in &c.nodes {
        built += n
            .handle()
            .snapshot_progress()
            .await
            .expect("progress")
            .builds
            .built;
    }
    assert!(built >= 2, "{built} snapshots built");
    for n in c.nodes {
        n.stop();
    }
}

/// Three nodes over TCP on loopback, every link through a proxy. Region 1's first snapshot
/// stream to node 3 is cut after a few chunks (the proxy closes the connection mid-stream):
/// the leader's transport reports the stream failed, and the leader builds and streams a
/// new snapshot by itself until node 3 holds every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stream_cut_part_way_is_sent_again_by_the_leader() {
    let mut tcp = Vec::new();
    let mut transports = Vec::new();
    for id in 1..=NODES {
        let mut cfg = TransportConfig::new(1, id, "127.0.0.1:0".parse().expect("address"));
        cfg.io_threads = 1;
        cfg.snapshot_chunk_bytes = SNAPSHOT_CHUNK_BYTES;
        // Reconnect soon after the proxy lets node 3 back in.
        cfg.reconnect_backoff_max = Duration::from_millis(200);
        let (t, inbound) = TcpTransport::start(cfg, []).expect("transport starts");
        let t = Arc::new(t);
        tcp.push(t.clone());
        transports.push((t as Arc<dyn Transport>, inbound));
    }
    let addrs: Vec<_> = tcp.iter().map(|t| (t.node_id(), t.local_addr())).collect();
    let proxy = Proxy::start(&addrs).await;
    for t in &tcp {
        for &(to, _) in addrs.iter().filter(|(to, _)| *to != t.node_id()) {
            t.add_peer(to, proxy.addr(t.node_id(), to));
        }
    }
    let (nodes, _dirs) = start_nodes(|_| SnapshotBuildHook::default(), transports);
    let h1 = nodes[0].handle();
    let h3 = nodes[2].handle();
    wait_for_leaders(&h1).await;
    move_region_1_off_node_3(&h1).await;
    leave_node_3_behind(&nodes[0], &h1, || proxy.isolate(3)).await;
    proxy.cut_snapshot_streams(3, 1, CHUNKS_BEFORE_CUT, 1);
    proxy.heal();
    node_3_holds_region_1(&h3).await;

    let streams = proxy.snapshot_streams(3, 1);
    assert_eq!(streams.cut, 1, "the first stream was cut: {streams:?}");
    assert_eq!(
        streams.chunks_before_cut,
        vec![CHUNKS_BEFORE_CUT],
        "it was cut part-way: {streams:?}"
    );
    assert!(
        streams.started >= 2 && streams.completed >= 1,
        "a later stream went through whole: {streams:?}"
    );
    // The senders (nodes 1 and 2) saw the cut stream fail and a later one finish.
    let sent: u64 = tcp[..2].iter().map(|t| t.stats().snapshots_sent).sum();
    let failed: u64 = tcp[..2].iter().map(|t| t.stats().snapshots_failed).sum();
    assert!(sent >= 1 && failed >= 1, "sent {sent}, failed {failed}");
    for n in nodes {
        n.stop();
    }
}
