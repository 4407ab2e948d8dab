//! Membership changes of an in-process cluster (engine on disk, in-memory transport): four
//! nodes, two regions bootstrapped on nodes 1–3, node 4 starting empty. A replica of
//! region 1 moves from node 3 to node 4 under write load (with the log in place, and with
//! it compacted), a replica removed while cut off comes back without disturbing anyone and
//! is cleaned up, a learner never counts toward a quorum, and a split after a move uses
//! the moved peer set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_engine::{EngineConfig, KeyRange, KvStore};
use flotilla_region::node::{
    KvCommand, KvResponse, Node, NodeConfig, NodeError, NodeHandle, PeerRole, PutCondition,
    RegionStatus, StoreConfig, LEADER_ON_TARGET,
};
use flotilla_transport::MemoryNetwork;

/// Nodes of the bootstrap set; node 4 joins empty.
const INITIAL_NODES: u64 = 3;
const NODES: u64 = 4;
/// Region 1 = ["", 0x8000), region 2 = [0x8000, "").
const REGIONS: usize = 2;
const REGION: u64 = 1;

struct Cluster {
    nodes: Vec<Option<Node>>,
    dirs: Vec<tempfile::TempDir>,
    net: MemoryNetwork,
    store: fn(u64) -> StoreConfig,
}

fn store_config(node_id: u64) -> StoreConfig {
    StoreConfig {
        node_id,
        ..Default::default()
    }
}

/// Compacts a region's log once it holds 60 applied entries, keeping 10.
fn compacting_store_config(node_id: u64) -> StoreConfig {
    StoreConfig {
        node_id,
        log_compact_trigger_entries: 60,
        log_keep_entries: 10,
        ..Default::default()
    }
}

fn node_config(
    cluster_store: fn(u64) -> StoreConfig,
    id: u64,
    dir: &std::path::Path,
) -> NodeConfig {
    NodeConfig {
        store: cluster_store(id),
        data_dir: dir.to_path_buf(),
        engine: EngineConfig::default(),
        initial_nodes: (1..=INITIAL_NODES).collect(),
        initial_regions: REGIONS,
        request_timeout: Duration::from_secs(5),
        cluster: Default::default(),
    }
}

fn start_cluster(store: fn(u64) -> StoreConfig) -> Cluster {
    let net = MemoryNetwork::new(11);
    let dirs: Vec<tempfile::TempDir> = (0..NODES)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=NODES {
        let (transport, inbound) = net.join(id, 1024);
        let cfg = node_config(store, id, dirs[id as usize - 1].path());
        nodes.push(Some(
            Node::start(cfg, Arc::new(transport), inbound).expect("node starts"),
        ));
    }
    Cluster {
        nodes,
        dirs,
        net,
        store,
    }
}

impl Cluster {
    fn handle(&self, id: u64) -> NodeHandle {
        self.nodes[id as usize - 1]
            .as_ref()
            .expect("node running")
            .handle()
    }

    fn stop_node(&mut self, id: u64) {
        if let Some(n) = self.nodes[id as usize - 1].take() {
            n.stop();
        }
    }

    fn restart_node(&mut self, id: u64) {
        self.stop_node(id);
        self.net.leave(id);
        let (transport, inbound) = self.net.join(id, 1024);
        let cfg = node_config(self.store, id, self.dirs[id as usize - 1].path());
        self.nodes[id as usize - 1] =
            Some(Node::start(cfg, Arc::new(transport), inbound).expect("node restarts"));
    }

    /// Opens a stopped node's key-value store.
    fn kv_of_stopped(&self, id: u64) -> KvStore {
        assert!(
            self.nodes[id as usize - 1].is_none(),
            "node {id} still runs"
        );
        let path = self.dirs[id as usize - 1].path().join("kv");
        KvStore::open(path, &EngineConfig::default().rocksdb).expect("kv opens")
    }

    fn stop(mut self) {
        for id in 1..=NODES {
            self.stop_node(id);
        }
    }
}

/// A key of region 1 (first byte below 0x80).
fn key1(i: u64) -> Bytes {
    Bytes::from(format!("\x10k{i:06}"))
}

/// A key of region 2.
fn key2(i: u64) -> Bytes {
    let mut k = vec![0xC0];
    k.extend_from_slice(format!("k{i:06}").as_bytes());
    Bytes::from(k)
}

fn put(key: Bytes, value: Bytes) -> KvCommand {
    KvCommand::Put {
        key,
        value,
        cond: PutCondition::Always,
    }
}

/// Writes `n` keys (from `first`) through `h`, each retried until acknowledged.
async fn write_keys(h: &NodeHandle, key: fn(u64) -> Bytes, first: u64, n: u64) {
    for i in first..first + n {
        let session = (1000 + (key(0)[0] as u64), i + 1);
        let mut tries = 0;
        loop {
            match h
                .write(put(key(i), Bytes::from(format!("v{i}"))), session)
                .await
            {
                Ok(KvResponse::Written(true)) => break,
                other => {
                    tries += 1;
                    assert!(tries < 50, "write {i} keeps failing: {other:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Writes region-1 keys through nodes 1 and 2 (both keep their replicas) until `stop`;
/// returns the acknowledged ones.
fn start_writer(
    handles: Vec<NodeHandle>,
    first: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut i = first;
        while !stop.load(Ordering::Relaxed) {
            let h = &handles[(i % handles.len() as u64) as usize];
            let r = h
                .write(put(key1(i), Bytes::from(format!("v{i}"))), (77, i + 1))
                .await;
            if r == Ok(KvResponse::Written(true)) {
                acked.push(i);
            }
            i += 1;
        }
        acked
    })
}

/// Waits until `cond` holds, or panics with `what` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether node `h` holds a replica of `region`.
async fn holds(h: &NodeHandle, region: u64) -> bool {
    h.status()
        .await
        .map(|s| s.iter().any(|r| r.route.id == region))
        .unwrap_or(false)
}

/// Waits until `learner`'s own replica of `region` has applied every entry `leader`'s had
/// committed when the wait began. (A read through the learner's node proves nothing: it
/// is forwarded to another node while that node holds no replica yet.)
async fn learner_caught_up(leader: &NodeHandle, learner: &NodeHandle, region: u64) {
    let of = |s: Vec<RegionStatus>| s.into_iter().find(|r| r.route.id == region);
    let committed = of(leader.status().await.expect("status"))
        .expect("the leader holds the region")
        .commit;
    wait_until(
        Duration::from_secs(5),
        "the learner to catch up",
        || async {
            learner
                .status()
                .await
                .ok()
                .and_then(of)
                .is_some_and(|r| r.applied >= committed)
        },
    )
    .await;
}

/// The sorted nodes of `region`'s voters and learners, as `h`'s replica sees them.
async fn members(h: &NodeHandle, region: u64) -> (Vec<u64>, Vec<u64>) {
    let d = h.descriptor(region).await.expect("descriptor");
    let mut v: Vec<u64> = d
        .peers
        .iter()
        .filter(|p| p.role == PeerRole::Voter)
        .map(|p| p.node_id)
        .collect();
    let mut l: Vec<u64> = d
        .peers
        .iter()
        .filter(|p| p.role == PeerRole::Learner)
        .map(|p| p.node_id)
        .collect();
    v.sort_unstable();
    l.sort_unstable();
    (v, l)
}

/// Moves the leadership of `region` to `node` (asked through `h`) and waits for it.
async fn lead(h: &NodeHandle, region: u64, node: u64) {
    let leader = || {
        h.regions()
            .all()
            .into_iter()
            .find(|r| r.id == region)
            .and_then(|r| r.leader_node)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader() != Some(node) {
        assert!(
            Instant::now() < deadline,
            "node {node} never led region {region}"
        );
        let _ = h.transfer_leader(region, node).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every region on node 1 has a leader.
async fn wait_for_leaders(h: &NodeHandle) {
    wait_until(
        Duration::from_secs(10),
        "leaders of every region",
        || async {
            let s = h.status().await.unwrap_or_default();
            s.len() == REGIONS && s.iter().all(|r| r.route.leader_node.is_some())
        },
    )
    .await;
}

/// Moves region 1 from node 3 to node 4 while a writer keeps writing; checks every
/// acknowledged write on node 4 (read through node 4, which serves reads from its own
/// state machine), node 3 left with nothing of region 1, and node 4's replica surviving a
/// restart of node 3.
async fn move_under_load(mut cluster: Cluster, preloaded: u64) {
    let (h1, h2, h4) = (cluster.handle(1), cluster.handle(2), cluster.handle(4));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(vec![h1.clone(), h2.clone()], preloaded, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = h1
        .descriptor(REGION)
        .await
        .expect("descriptor")
        .epoch
        .conf_ver;
    let started = Instant::now();
    h1.move_replica(REGION, 3, 4).await.expect("move");
    let took = started.elapsed();
    // Promoted only once caught up: the replica exists and holds its addition's entry.
    assert!(
        holds(&h4, REGION).await,
        "node 4 holds the new voter at once"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    assert!(
        acked.len() > 10,
        "the writer made progress: {}",
        acked.len()
    );

    // Three changes (add learner, promote, remove), each bumping conf_ver once, applied by
    // every remaining replica.
    for h in [&h1, &h2, &h4] {
        wait_until(
            Duration::from_secs(5),
            "the move on every replica",
            || async {
                h.descriptor(REGION)
                    .await
                    .is_ok_and(|d| d.epoch.conf_ver == before + 3)
            },
        )
        .await;
        assert_eq!(members(h, REGION).await, (vec![1, 2, 4], vec![]));
    }
    let route = h1
        .regions()
        .all()
        .into_iter()
        .find(|r| r.id == REGION)
        .expect("route");
    assert_eq!(route.voter_nodes.len(), 3);
    assert!(!route.voter_nodes.contains(&3), "{route:?}");

    for i in (0..preloaded).chain(acked.iter().copied()) {
        let got = h4.get(key1(i)).await.expect("read on node 4");
        assert_eq!(got, Some(Bytes::from(format!("v{i}"))), "key {i} on node 4");
    }
    let h3 = cluster.handle(3);
    wait_until(
        Duration::from_secs(5),
        "node 3 to drop region 1",
        || async { !holds(&h3, REGION).await },
    )
    .await;
    assert!(holds(&h3, 2).await, "node 3 keeps region 2");
    assert_eq!(h3.descriptor(REGION).await, Err(NodeError::RegionNotFound));

    // Nothing of region 1 stays in node 3's store; region 2's data does.
    cluster.stop_node(3);
    {
        let kv = cluster.kv_of_stopped(3);
        let left = kv
            .scan(
                &KeyRange::new(Bytes::new(), Bytes::from_static(&[0x80])),
                10,
            )
            .expect("scan");
        assert!(left.is_empty(), "region 1 data left on node 3: {left:?}");
        assert_eq!(kv.descriptor(REGION).expect("meta"), None);
        let kept = kv
            .scan(
                &KeyRange::new(Bytes::from_static(&[0x80]), Bytes::new()),
                10,
            )
            .expect("scan");
        assert!(!kept.is_empty(), "region 2 data stays on node 3");
    }
    cluster.restart_node(3);
    let h3 = cluster.handle(3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !holds(&h3, REGION).await,
        "region 1 does not come back on node 3"
    );
    assert!(holds(&h3, 2).await);
    eprintln!("move took {took:?} ({} writes during it)", acked.len());
    cluster.stop();
}

/// (a) A move while the log still holds every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_to_a_new_node_under_write_load() {
    let cluster = start_cluster(store_config);
    let h1 = cluster.handle(1);
    wait_for_leaders(&h1).await;
    assert!(
        !holds(&cluster.handle(4), REGION).await,
        "node 4 starts empty"
    );
    write_keys(&h1, key1, 0, 20).await;
    write_keys(&h1, key2, 0, 20).await;
    move_under_load(cluster, 20).await;
}

/// (b) A move after the log was compacted: the learner can only start from a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_after_the_log_was_compacted() {
    let cluster = start_cluster(compacting_store_config);
    let h1 = cluster.handle(1);
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 150).await;
    write_keys(&h1, key2, 0, 20).await;
    let n1 = cluster.nodes[0].as_ref().expect("node 1");
    wait_until(
        Duration::from_secs(5),
        "region 1's log compacted",
        || async { n1.log().is_some_and(|l| l.first_index(REGION) > 100) },
    )
    .await;
    move_under_load(cluster, 150).await;
}

/// (c) A replica removed while cut off returns: it campaigns, but no member bumps its term
/// or changes leader for it, and it is told it was removed and cleans itself up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_removed_while_cut_off_returns_harmlessly_and_is_cleaned_up() {
    let mut cluster = start_cluster(store_config);
    let (h1, h2, h3, h4) = (
        cluster.handle(1),
        cluster.handle(2),
        cluster.handle(3),
        cluster.handle(4),
    );
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 20).await;
    // Region 1 led by node 1 and region 2 by node 2: the cut costs no election, and the
    // leader balancer has nothing to move (a transfer would change a leader and a term).
    lead(&h1, REGION, 1).await;
    lead(&h1, 2, 2).await;
    cluster.net.isolate(3);
    h1.move_replica(REGION, 3, 4)
        .await
        .expect("move while node 3 is cut off");
    write_keys(&h1, key1, 20, 20).await;
    assert!(
        holds(&h3, REGION).await,
        "node 3 has not heard of its removal"
    );
    // Long enough for node 3 to campaign (pre-vote) while cut off.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let view = |h: NodeHandle| async move {
        let s = h.status().await.expect("status");
        let r = s
            .into_iter()
            .find(|r| r.route.id == REGION)
            .expect("region");
        (r.term, r.route.leader_node)
    };
    let before = [
        view(h1.clone()).await,
        view(h2.clone()).await,
        view(h4.clone()).await,
    ];
    cluster.net.heal();
    wait_until(
        Duration::from_secs(8),
        "node 3 to destroy its removed replica",
        || async { !holds(&h3, REGION).await },
    )
    .await;
    // A little longer: nothing happens to the members either way.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = [
        view(h1.clone()).await,
        view(h2.clone()).await,
        view(h4.clone()).await,
    ];
    assert_eq!(
        before, after,
        "terms and leaders (before, after) the return"
    );
    assert!(holds(&h3, 2).await, "node 3 keeps region 2");
    for i in 0..40 {
        assert_eq!(
            h4.get(key1(i)).await.expect("read"),
            Some(Bytes::from(format!("v{i}")))
        );
    }
    cluster.stop_node(3);
    let kv = cluster.kv_of_stopped(3);
    let left = kv
        .scan(
            &KeyRange::new(Bytes::new(), Bytes::from_static(&[0x80])),
            10,
        )
        .expect("scan");
    assert!(left.is_empty(), "region 1 data left on node 3: {left:?}");
    drop(kv);
    cluster.stop();
}

/// A replica can move back to a node it left: the node's leftovers of the old replica
/// (its cut raft log, its hard state) do not get in the way of the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_back_to_a_node_it_left() {
    let cluster = start_cluster(store_config);
    let (h1, h3) = (cluster.handle(1), cluster.handle(3));
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 20).await;
    let old_peer = h1
        .descriptor(REGION)
        .await
        .expect("descriptor")
        .peer_on_node(3);
    h1.move_replica(REGION, 3, 4).await.expect("move to node 4");
    wait_until(
        Duration::from_secs(5),
        "node 3 to drop region 1",
        || async { !holds(&h3, REGION).await },
    )
    .await;
    write_keys(&h1, key1, 20, 20).await;
    h1.move_replica(REGION, 4, 3)
        .await
        .expect("move back to node 3");
    assert_eq!(members(&h1, REGION).await, (vec![1, 2, 3], vec![]));
    let new_peer = h3
        .descriptor(REGION)
        .await
        .expect("node 3's new replica")
        .peer_on_node(3);
    assert_ne!(
        new_peer.map(|p| p.peer_id),
        old_peer.map(|p| p.peer_id),
        "a peer id is never reused"
    );
    write_keys(&h3, key1, 40, 5).await;
    for i in 0..45 {
        assert_eq!(
            h3.get(key1(i)).await.expect("read on node 3"),
            Some(Bytes::from(format!("v{i}"))),
            "key {i}"
        );
    }
    cluster.stop();
}

/// Moving the leader's replica hands the leadership to the new voter first.
/// A voter replaced through a joint configuration, under write load: the learner on node
/// 4 is promoted and node 3's voter removed in one change (both old and new majorities
/// decide until the leader leaves the joint configuration by itself). Every acknowledged
/// write is read back on node 4; node 3 drops the region; node 1's raft log holds the
/// joint change (two changes in one entry) followed by the empty change that leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_is_replaced_through_a_joint_configuration_under_load() {
    let mut cluster = start_cluster(store_config);
    let (h1, h2, h4) = (cluster.handle(1), cluster.handle(2), cluster.handle(4));
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 20).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(vec![h1.clone(), h2.clone()], 20, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = h1
        .descriptor(REGION)
        .await
        .expect("descriptor")
        .epoch
        .conf_ver;
    // Wherever the leader is, node 3's voter goes; a leader on node 3 hands over first.
    h1.replace_voter(REGION, 3, 4)
        .await
        .expect("joint replacement");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    assert!(
        acked.len() > 10,
        "the writer made progress: {}",
        acked.len()
    );
    for h in [&h1, &h2, &h4] {
        wait_until(
            Duration::from_secs(5),
            "the replacement everywhere",
            || async { members(h, REGION).await == (vec![1, 2, 4], vec![]) },
        )
        .await;
        // Three changes: the learner, the joint change, the change that leaves it.
        let conf_ver = h
            .descriptor(REGION)
            .await
            .expect("descriptor")
            .epoch
            .conf_ver;
        assert_eq!(conf_ver, before + 3);
    }
    for i in (0..20).chain(acked.iter().copied()) {
        let got = h4.get(key1(i)).await.expect("read on node 4");
        assert_eq!(got, Some(Bytes::from(format!("v{i}"))), "key {i} on node 4");
    }
    let h3 = cluster.handle(3);
    wait_until(
        Duration::from_secs(5),
        "node 3 to drop region 1",
        || async { !holds(&h3, REGION).await },
    )
    .await;
    // Bad replacements are refused before anything is proposed.
    for (from, to, why) in [
        (4, 4, "cannot replace itself"),
        (3, 2, "no replica on node 3"),
        (1, 2, "already has a voter on node 2"),
    ] {
        let e = h1.replace_voter(REGION, from, to).await.unwrap_err();
        assert!(e.to_string().contains(why), "{from} → {to}: {e}");
    }

    // The log shows the joint change and the change that left it.
    cluster.stop_node(1);
    let opener = flotilla_region::node::EngineOpener::new(
        cluster.dirs[0].path().to_path_buf(),
        EngineConfig::default(),
    );
    let (log, _kv) = opener.open().expect("node 1's engine opens");
    let entries = log
        .entries(
            REGION,
            log.first_index(REGION),
            log.last_index(REGION) + 1,
            u64::MAX,
        )
        .expect("region 1's log");
    let changes: Vec<flotilla_common::ConfChange> = entries
        .iter()
        .filter(|e| e.kind == flotilla_common::EntryKind::ConfChange)
        .map(|e| flotilla_common::codec::decode(&e.data).expect("a conf change"))
        .collect();
    let joint = changes
        .iter()
        .position(|c| c.changes.len() == 2)
        .expect("a change of two members in one entry");
    assert!(
        changes[joint + 1..].iter().any(|c| c.leaves_joint()),
        "the joint configuration was left: {changes:?}"
    );
    assert!(
        !changes.iter().any(|c| c.changes.len() == 1
            && c.changes[0].kind == flotilla_common::ConfChangeKind::AddVoter),
        "no single promotion: {changes:?}"
    );
    drop((log, _kv));
    cluster.stop();
}

/// A replica destroyed with entries committed but not applied leaves a hard state whose
/// commit is past the log it kept (cut at the applied index). Moving the region back to
/// that node creates a new replica over that log: it must load (a balancer moving
/// replicas back and forth under load hit this), not fail and leave the learner behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_back_over_a_commit_left_past_the_log() {
    let mut cluster = start_cluster(store_config);
    let h1 = cluster.handle(1);
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 20).await;
    h1.move_replica(REGION, 3, 4).await.expect("move to node 4");
    let h3 = cluster.handle(3);
    wait_until(
        Duration::from_secs(5),
        "node 3 to drop region 1",
        || async { !holds(&h3, REGION).await },
    )
    .await;
    // What a destruction between commit and apply leaves: commit past the last index.
    cluster.stop_node(3);
    {
        let opener = flotilla_region::node::EngineOpener::new(
            cluster.dirs[2].path().to_path_buf(),
            EngineConfig::default(),
        );
        let (log, _kv) = opener.open().expect("node 3's engine opens");
        let hs = log.hard_state(REGION);
        let last = log.last_index(REGION);
        let mut batch = flotilla_engine::LogBatch::new();
        batch.push(flotilla_engine::RegionBatch::new(REGION).with_hard_state(
            flotilla_common::HardState {
                commit: last + 3,
                ..hs
            },
        ));
        log.write(batch).expect("hard state written");
    }
    cluster.restart_node(3);
    write_keys(&h1, key1, 20, 10).await;
    h1.move_replica(REGION, 4, 3)
        .await
        .expect("move back to node 3");
    let h3 = cluster.handle(3);
    for i in 0..30 {
        assert_eq!(
            h3.get(key1(i)).await.expect("read on node 3"),
            Some(Bytes::from(format!("v{i}"))),
            "key {i}"
        );
    }
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_leaders_replica_hands_the_leadership_over_first() {
    let cluster = start_cluster(store_config);
    let (h1, h3, h4) = (cluster.handle(1), cluster.handle(3), cluster.handle(4));
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 10).await;
    lead(&h1, REGION, 3).await;
    // Asked through the leader's own node, which loses its replica.
    h3.move_replica(REGION, 3, 4)
        .await
        .expect("move the leader's replica");
    assert!(
        !holds(&h3, REGION).await,
        "node 3's replica is gone when the move returns"
    );
    assert_eq!(members(&h1, REGION).await, (vec![1, 2, 4], vec![]));
    write_keys(&h4, key1, 10, 5).await;
    for i in 0..15 {
        assert_eq!(
            h4.get(key1(i)).await.expect("read"),
            Some(Bytes::from(format!("v{i}")))
        );
    }
    cluster.stop();
}

/// A replica that was down while it was removed comes back (restarted), campaigns, is told
/// and cleaned up; and one whose node stopped after the removal applied but before the
/// replica was destroyed is cleaned up when the node starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_removed_while_down_is_cleaned_up_when_its_node_returns() {
    let mut cluster = start_cluster(store_config);
    let h1 = cluster.handle(1);
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 10).await;
    write_keys(&h1, key2, 0, 10).await;
    lead(&h1, REGION, 1).await;
    lead(&h1, 2, 2).await;
    cluster.stop_node(3);
    h1.move_replica(REGION, 3, 4)
        .await
        .expect("move while node 3 is down");
    cluster.restart_node(3);
    let h3 = cluster.handle(3);
    wait_until(
        Duration::from_secs(8),
        "node 3 to destroy its removed replica",
        || async { !holds(&h3, REGION).await },
    )
    .await;
    assert!(holds(&h3, 2).await, "node 3 keeps region 2");

    // A destroy cut short: node 3's store holds region 2's descriptor without node 3 in it
    // (as the apply round of its removal leaves it), its data and its records.
    // Node 3 is cut off so that it hears nothing of the removal.
    cluster.net.isolate(3);
    h1.move_replica(2, 3, 4).await.expect("move region 2");
    let desc = h1.descriptor(2).await.expect("region 2");
    assert!(desc.peer_on_node(3).is_none());
    assert!(holds(&h3, 2).await, "node 3 has not heard of its removal");
    cluster.stop_node(3);
    {
        let kv = cluster.kv_of_stopped(3);
        let mut round = flotilla_engine::ApplyRound::new();
        round.set_descriptor(2, desc.encode());
        round.set_applied(2, kv.applied_index(2));
        kv.apply(round).expect("write the removed descriptor");
        kv.sync().expect("sync");
        assert!(!kv
            .scan(
                &KeyRange::new(Bytes::from_static(&[0x80]), Bytes::new()),
                10
            )
            .expect("scan")
            .is_empty());
    }
    cluster.net.heal();
    cluster.restart_node(3);
    let h3 = cluster.handle(3);
    assert!(
        !holds(&h3, 2).await,
        "node 3 did not load the removed region"
    );
    cluster.stop_node(3);
    let kv = cluster.kv_of_stopped(3);
    assert_eq!(kv.descriptor(2).expect("meta"), None);
    assert!(
        kv.region_ids().expect("ids").is_empty(),
        "node 3 holds no region"
    );
    let left = kv
        .scan(&KeyRange::new(Bytes::new(), Bytes::new()), 10)
        .expect("scan");
    assert!(left.is_empty(), "data left on node 3: {left:?}");
    drop(kv);
    cluster.stop();
}

/// A learner removed while it was cut off never campaigns, so it asks whether it is still
/// a member once it hears no leader, and is told and cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_removed_while_cut_off_is_cleaned_up() {
    let cluster = start_cluster(store_config);
    let (h1, h4) = (cluster.handle(1), cluster.handle(4));
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 10).await;
    h1.add_learner(REGION, 4).await.expect("learner");
    learner_caught_up(&h1, &h4, REGION).await;
    cluster.net.isolate(4);
    h1.remove_replica(REGION, 4)
        .await
        .expect("remove the learner");
    assert_eq!(members(&h1, REGION).await, (vec![1, 2, 3], vec![]));
    assert!(
        holds(&h4, REGION).await,
        "node 4 has not heard of its removal"
    );
    cluster.net.heal();
    wait_until(
        Duration::from_secs(8),
        "node 4 to destroy its removed learner",
        || async { !holds(&h4, REGION).await },
    )
    .await;
    cluster.stop();
}

/// (d) A learner never counts toward a quorum: with the leader and the learner on one side
/// of a partition and the two other voters on the other, nothing commits on the leader's
/// side, and the leader steps down (check quorum); the two voters go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_never_counts_toward_a_quorum() {
    let cluster = start_cluster(store_config);
    let (h1, h2, h4) = (cluster.handle(1), cluster.handle(2), cluster.handle(4));
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 10).await;
    lead(&h1, REGION, 1).await;
    h1.add_learner(REGION, 4).await.expect("learner");
    assert_eq!(members(&h1, REGION).await, (vec![1, 2, 3], vec![4]));
    learner_caught_up(&h1, &h4, REGION).await;

    cluster.net.partition(&[1, 4], &[2, 3]);
    let commit = |h: NodeHandle| async move {
        let s = h.status().await.expect("status");
        s.into_iter()
            .find(|r| r.route.id == REGION)
            .map(|r| (r.commit, r.role))
            .expect("region")
    };
    let (c1, _) = commit(h1.clone()).await;
    let (c4, _) = commit(h4.clone()).await;
    // Proposed on the leader, acknowledged by the learner only.
    let w = h1
        .write(put(key1(500), Bytes::from_static(b"x")), (99, 1))
        .await;
    assert!(w.is_err(), "a write committed with a learner's ack: {w:?}");
    let (c1_after, role1) = commit(h1.clone()).await;
    let (c4_after, _) = commit(h4.clone()).await;
    assert_eq!((c1_after, c4_after), (c1, c4), "commit indexes moved");
    assert_ne!(role1, "leader", "node 1 kept leading with only a learner");
    // The two voters have a quorum of their own.
    write_keys(&h2, key1, 600, 5).await;
    cluster.net.heal();
    wait_until(Duration::from_secs(5), "node 1 to catch up", || async {
        h1.get(key1(604)).await.ok().flatten().is_some()
    })
    .await;
    cluster.stop();
}

/// (e) A split after a move gives the new region the moved peer set, and the new region is
/// served by node 4's replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_after_a_move_uses_the_moved_peers() {
    let cluster = start_cluster(store_config);
    let (h1, h3, h4) = (cluster.handle(1), cluster.handle(3), cluster.handle(4));
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 20).await;
    h1.move_replica(REGION, 3, 4).await.expect("move");
    let new = h1.split(REGION, Some(key1(10))).await.expect("split")[0];
    for h in [&h1, &h4] {
        wait_until(Duration::from_secs(5), "the new region", || async {
            holds(h, new).await
        })
        .await;
        assert_eq!(members(h, new).await, (vec![1, 2, 4], vec![]));
    }
    assert!(
        !holds(&h3, new).await,
        "node 3 got a replica of the new region"
    );
    write_keys(&h4, key1, 100, 5).await;
    for i in (0..20).chain(100..105) {
        assert_eq!(
            h4.get(key1(i)).await.expect("read"),
            Some(Bytes::from(format!("v{i}"))),
            "key {i}"
        );
    }
    cluster.stop();
}

/// Merges keep working with moved replicas: two neighbours on different nodes (only one
/// moved) are refused a merge; once both moved, they merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_follow_the_moved_peers() {
    let cluster = start_cluster(store_config);
    let (h1, h4) = (cluster.handle(1), cluster.handle(4));
    wait_for_leaders(&h1).await;
    write_keys(&h1, key1, 0, 10).await;
    write_keys(&h1, key2, 0, 10).await;
    h1.move_replica(REGION, 3, 4).await.expect("move region 1");
    match h1.merge(2, REGION).await {
        Err(NodeError::Refused(why)) => assert!(why.contains("different nodes"), "{why}"),
        other => panic!("a merge across different nodes answered {other:?}"),
    }
    h1.move_replica(2, 3, 4).await.expect("move region 2");
    // The merge is asked through node 4, which must hold both regions.
    wait_until(
        Duration::from_secs(5),
        "node 4 to hold both regions",
        || async { holds(&h4, REGION).await && holds(&h4, 2).await },
    )
    .await;
    h4.merge(2, REGION).await.expect("merge after both moved");
    wait_until(Duration::from_secs(5), "the merge on node 4", || async {
        !holds(&h4, 2).await
    })
    .await;
    assert_eq!(members(&h4, REGION).await, (vec![1, 2, 4], vec![]));
    for i in 0..10 {
        assert_eq!(
            h4.get(key1(i)).await.expect("read"),
            Some(Bytes::from(format!("v{i}")))
        );
        assert_eq!(
            h4.get(key2(i)).await.expect("read"),
            Some(Bytes::from(format!("v{i}")))
        );
    }
    cluster.stop();
}

/// Bad requests get clear errors, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_are_refused() {
    let cluster = start_cluster(store_config);
    let (h1, h4) = (cluster.handle(1), cluster.handle(4));
    wait_for_leaders(&h1).await;
    let refused = |r: Result<(), NodeError>| matches!(r, Err(NodeError::Refused(_)));
    assert!(matches!(
        h1.add_learner(REGION, 9).await,
        Err(NodeError::Refused(why)) if why.contains("unknown node")
    ));
    assert!(matches!(
        h1.add_learner(REGION, 2).await,
        Err(NodeError::Refused(_))
    ));
    assert!(refused(h1.promote_learner(REGION, 2).await));
    assert!(refused(h1.remove_replica(REGION, 4).await));
    assert!(refused(h1.move_replica(REGION, 3, 3).await));
    assert!(refused(h1.move_replica(REGION, 4, 3).await));
    assert!(refused(h1.move_replica(REGION, 3, 2).await));
    assert_eq!(
        h4.move_replica(REGION, 3, 4).await,
        Err(NodeError::RegionNotFound),
        "node 4 holds no replica to ask through"
    );
    let leader = h1
        .regions()
        .all()
        .into_iter()
        .find(|r| r.id == REGION)
        .and_then(|r| r.leader_node)
        .expect("leader");
    match h1.remove_replica(REGION, leader).await {
        Err(NodeError::Refused(why)) => assert!(why.contains(LEADER_ON_TARGET), "{why}"),
        other => panic!("removing the leader answered {other:?}"),
    }
    assert_eq!(members(&h1, REGION).await, (vec![1, 2, 3], vec![]));
    cluster.stop();
}
