//! The balancer on an in-process cluster (engine on disk, in-memory transport): nodes 1–3
//! bootstrap the regions, more nodes join empty (knowing only node 1), and the balancer —
//! run by the node leading the first region — spreads replicas and leaderships over them,
//! drains nodes being removed, and rebuilds the replicas of a node that died, while writers
//! keep writing. Every acknowledged write is read back at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_engine::EngineConfig;
use flotilla_region::node::{
    BalancerConfig, ClusterConfig, KvCommand, KvResponse, Node, NodeAddresses, NodeConfig,
    NodeEntry, NodeHandle, NodeState, PeerRole, PutCondition, RegionSummary, StoreConfig,
};
use flotilla_transport::MemoryNetwork;

const GOSSIP: Duration = Duration::from_millis(100);
const NODE_DOWN: Duration = Duration::from_secs(3);

fn addresses(id: u64) -> NodeAddresses {
    let a = |base: u16| Some(SocketAddr::from(([127, 0, 0, 1], base + id as u16)));
    NodeAddresses {
        raft_addr: a(9000),
        client_addr: a(7000),
        status_addr: a(8000),
    }
}

struct Cluster {
    nodes: BTreeMap<u64, Node>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    net: MemoryNetwork,
    regions: usize,
    /// Nodes 1..=initial bootstrap the cluster; the others join.
    initial: u64,
}

impl Cluster {
    /// Nodes 1–3, bootstrapped with `regions` regions.
    fn start(regions: usize) -> Cluster {
        Self::start_with(regions, 3)
    }

    /// Nodes 1..=`initial`, bootstrapped with `regions` regions of three replicas.
    fn start_with(regions: usize, initial: u64) -> Cluster {
        // The nodes' logs, when asked for (`RUST_LOG=info cargo test … -- --nocapture`).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            net: MemoryNetwork::new(17),
            regions,
            initial,
        };
        for id in 1..=initial {
            c.start_node(id);
        }
        c
    }

    fn config(&self, id: u64) -> NodeConfig {
        let joined = id > self.initial;
        let seed: Vec<NodeEntry> = if joined {
            vec![
                NodeEntry::new(1, addresses(1)),
                NodeEntry::new(id, addresses(id)),
            ]
        } else {
            (1..=self.initial)
                .map(|n| NodeEntry::new(n, addresses(n)))
                .collect()
        };
        NodeConfig {
            store: StoreConfig {
                node_id: id,
                balance_leaders: false,
                ..Default::default()
            },
            data_dir: self.dirs[&id].path().to_path_buf(),
            engine: EngineConfig::default(),
            initial_nodes: if joined {
                vec![]
            } else {
                (1..=self.initial).collect()
            },
            initial_regions: self.regions,
            request_timeout: Duration::from_secs(5),
            cluster: ClusterConfig {
                gossip_interval: GOSSIP,
                addresses: addresses(id),
                seed,
                joined,
                cluster_id: 1,
                balancer: BalancerConfig {
                    enabled: true,
                    interval: Duration::from_millis(200),
                    node_down_timeout: NODE_DOWN,
                    replicas: 3,
                    max_concurrent_moves: 8,
                    leader_transfers_max: 8,
                    move_timeout: Duration::from_secs(30),
                    stray_learner_timeout: Duration::from_secs(5),
                },
            },
        }
    }

    /// Starts node `id` (a new one joins through node 1).
    fn start_node(&mut self, id: u64) {
        self.dirs
            .entry(id)
            .or_insert_with(|| tempfile::tempdir().expect("temp dir"));
        let (t, inbound) = self.net.join(id, 4096);
        let node = Node::start(self.config(id), Arc::new(t), inbound).expect("node starts");
        self.nodes.insert(id, node);
    }

    /// Stops node `id` and deletes its data.
    fn kill_and_wipe(&mut self, id: u64) {
        self.net.isolate(id);
        if let Some(n) = self.nodes.remove(&id) {
            n.stop();
        }
        self.dirs.remove(&id);
    }

    fn handles(&self) -> Vec<NodeHandle> {
        self.nodes.values().map(|n| n.handle()).collect()
    }

    fn handle(&self, id: u64) -> NodeHandle {
        self.nodes[&id].handle()
    }

    fn stop(self) {
        for (_, n) in self.nodes {
            n.stop();
        }
    }
}

async fn wait_until<F>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> bool,
{
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn key(writer: u64, i: u64) -> Bytes {
    // The first two bytes spread the keys over the whole key space (and every region).
    let h = (writer.wrapping_mul(0x9e37_79b9) ^ i.wrapping_mul(0x85eb_ca6b)) as u16;
    let mut k = h.to_be_bytes().to_vec();
    k.extend_from_slice(format!("w{writer}-{i}").as_bytes());
    Bytes::from(k)
}

/// The handle of a node that holds `key`'s region, preferring its leader's node, as the
/// cluster view of any node shows it.
fn route(handles: &[NodeHandle], key: &[u8]) -> Option<NodeHandle> {
    for h in handles {
        let Some(r) = h.cluster().route(key) else {
            continue;
        };
        let on = |n: u64| handles.iter().find(|h| h.node_id() == n).cloned();
        if let Some(h) = r.leader_node.and_then(on) {
            return Some(h);
        }
        if let Some(h) = r.peers.iter().find_map(|p| on(p.node_id)) {
            return Some(h);
        }
    }
    None
}

/// Writes one key, through whichever node holds its region now, until acknowledged (the
/// same session sequence each time, so a retried write applies once).
async fn write(handles: &[NodeHandle], writer: u64, i: u64) {
    let k = key(writer, i);
    let cmd = KvCommand::Put {
        key: k.clone(),
        value: k.clone(),
        cond: PutCondition::Always,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = route(handles, &k) {
            if let Ok(KvResponse::Written(true)) = h.write(cmd.clone(), (writer, i + 1)).await {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "write {writer}/{i} not acknowledged in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writers writing until `stop`, each through the nodes `handles()` gives at the time;
/// each returns how many writes were acknowledged (keys 0..n of its own).
fn start_writers(
    writers: u64,
    handles: Arc<parking_lot::RwLock<Vec<NodeHandle>>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (1..=writers)
        .map(|w| {
            let handles = handles.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let hs = handles.read().clone();
                    write(&hs, w, i).await;
                    i += 1;
                }
                (w, i)
            })
        })
        .collect()
}

/// Reads back every acknowledged write.
async fn check_writes(handles: &[NodeHandle], acked: &[(u64, u64)]) {
    let mut total = 0;
    for &(w, n) in acked {
        for i in 0..n {
            let k = key(w, i);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let got = match route(handles, &k) {
                    Some(h) => h.get(k.clone()).await,
                    None => Err(flotilla_region::node::NodeError::RegionNotFound),
                };
                match got {
                    Ok(v) => {
                        assert_eq!(v, Some(k.clone()), "acknowledged write {w}/{i} lost");
                        break;
                    }
                    Err(e) => {
                        assert!(Instant::now() < deadline, "read of {w}/{i}: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            total += 1;
        }
    }
    assert!(total > 0, "the writers wrote nothing");
}

/// Replica and leader counts per node, from `regions`, and whether every region has three
/// voters and no learner. Only nodes in `nodes` are counted.
fn counts(
    regions: &[RegionSummary],
    nodes: &BTreeSet<u64>,
) -> (BTreeMap<u64, usize>, BTreeMap<u64, usize>, bool) {
    let mut replicas: BTreeMap<u64, usize> = nodes.iter().map(|&n| (n, 0)).collect();
    let mut leaders = replicas.clone();
    let mut settled = true;
    for r in regions {
        let voters = r.peers.iter().filter(|p| p.role == PeerRole::Voter).count();
        settled &= voters == 3 && r.peers.len() == 3 && r.leader_node.is_some();
        for p in &r.peers {
            *replicas.entry(p.node_id).or_insert(0) += 1;
        }
        if let Some(l) = r.leader_node {
            *leaders.entry(l).or_insert(0) += 1;
        }
    }
    (replicas, leaders, settled)
}

fn spread(m: &BTreeMap<u64, usize>) -> usize {
    m.values().max().unwrap_or(&0) - m.values().min().unwrap_or(&0)
}

/// Whether the cluster, as node `view`'s cluster view shows it, has `regions` regions,
/// each with three voters, and replicas and leaders on exactly `nodes`, each node within
/// one of the mean.
fn balanced(view: &NodeHandle, nodes: &BTreeSet<u64>, regions: usize) -> bool {
    let all = view.cluster().regions();
    let (replicas, leaders, settled) = counts(&all, nodes);
    (regions == ANY_COUNT || all.len() == regions)
        && tiles(&all)
        && settled
        && replicas.len() == nodes.len()
        && leaders.len() == nodes.len()
        && spread(&replicas) <= 1
        && spread(&leaders) <= 1
}

fn describe(view: &NodeHandle, nodes: &BTreeSet<u64>) -> String {
    let all = view.cluster().regions();
    let (replicas, leaders, settled) = counts(&all, nodes);
    format!(
        "{} regions, settled {settled}, replicas {replicas:?}, leaders {leaders:?}",
        all.len()
    )
}

/// A region count for [`balanced`] that accepts any.
const ANY_COUNT: usize = usize::MAX;

/// Whether `regions` (in key order) cover the key space without gap or overlap.
fn tiles(regions: &[RegionSummary]) -> bool {
    let mut expected_start: &[u8] = b"";
    for (i, r) in regions.iter().enumerate() {
        if r.start_key.as_ref() != expected_start {
            return false;
        }
        if r.end_key.is_empty() {
            return i + 1 == regions.len();
        }
        expected_start = r.end_key.as_ref();
    }
    false
}

/// Waits until every node of `nodes` sees the cluster balanced over them.
async fn wait_balanced(c: &Cluster, nodes: &BTreeSet<u64>, regions: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let hs = c.handles();
        if hs.iter().all(|h| balanced(h, nodes, regions)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not balanced over {nodes:?} in {limit:?}: node 1 sees {}",
            describe(&hs[0], nodes)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Longest a region may go without a replica that leads it, while nodes join and leave:
/// a few election timeouts (500 ms to 1 s each, at the default ticks) of a busy machine.
const LEADER_GAP_MAX: Duration = Duration::from_secs(4);

/// What [`watch_quorums`] saw.
#[derive(Debug, Clone, Copy)]
struct QuorumWatch {
    /// Samples taken.
    looks: u64,
    /// The longest time any region went without a leader.
    longest_leader_gap: Duration,
}

/// Samples, while `stop` is not set, every replica on the nodes of `handles` (the running
/// nodes, from their own region state, not gossip): each replica's configuration must have
/// at least three voters, a majority of them on running nodes; and every region must have
/// a replica leading it (one whose own state names its node as leader) at most
/// [`LEADER_GAP_MAX`] after it last had one.
fn watch_quorums(
    handles: Arc<parking_lot::RwLock<Vec<NodeHandle>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<QuorumWatch> {
    tokio::spawn(async move {
        let mut looks = 0;
        let mut last_led: BTreeMap<u64, Instant> = BTreeMap::new();
        let mut longest_leader_gap = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let hs = handles.read().clone();
            let running: BTreeSet<u64> = hs.iter().map(|h| h.node_id()).collect();
            let now = Instant::now();
            let (mut seen, mut led) = (BTreeSet::new(), BTreeSet::new());
            for h in &hs {
                for r in h.regions().all() {
                    seen.insert(r.id);
                    if r.leader_node == Some(h.node_id()) {
                        led.insert(r.id);
                    }
                    let up = r.voter_nodes.iter().filter(|n| running.contains(n)).count();
                    assert!(
                        r.voter_nodes.len() >= 3 && up * 2 > r.voter_nodes.len(),
                        "node {}'s replica of region {} has voters on {:?}, {up} of them on \
                         the running nodes {running:?}",
                        h.node_id(),
                        r.id,
                        r.voter_nodes
                    );
                }
            }
            for id in seen {
                let since = if led.contains(&id) {
                    last_led.insert(id, now);
                    Duration::ZERO
                } else {
                    now - *last_led.entry(id).or_insert(now)
                };
                longest_leader_gap = longest_leader_gap.max(since);
                assert!(
                    since <= LEADER_GAP_MAX,
                    "region {id} without a leader for {since:?} on the running nodes {running:?}"
                );
            }
            looks += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        QuorumWatch {
            looks,
            longest_leader_gap,
        }
    })
}

fn set(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

/// Tests 1 and 2 of issue 9: 64 regions on three nodes under write load; two empty nodes
/// join and get their share of replicas and leaderships; then they are removed one after
/// the other, under load, and drained back onto nodes 1–3, no region ever without a
/// majority of its voters on running nodes nor long without a leader; every acknowledged
/// write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grows_from_three_to_five_nodes_and_shrinks_back_under_load() {
    const REGIONS: usize = 64;
    let mut c = Cluster::start(REGIONS);
    wait_balanced(&c, &set(&[1, 2, 3]), REGIONS, Duration::from_secs(30)).await;

    let handles = Arc::new(parking_lot::RwLock::new(c.handles()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(8, handles.clone(), stop.clone());
    let quorums = watch_quorums(handles.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Grow: nodes 4 and 5 join, knowing only node 1.
    c.start_node(4);
    c.start_node(5);
    *handles.write() = c.handles();
    let grown = set(&[1, 2, 3, 4, 5]);
    wait_balanced(&c, &grown, REGIONS, Duration::from_secs(90)).await;

    // Shrink: node 5, then node 4, drained and retired.
    for gone in [5, 4] {
        c.handle(1)
            .cluster()
            .remove_node(gone)
            .expect("remove-node");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !c.handles().iter().filter(|h| h.node_id() != gone).all(|h| {
            h.cluster()
                .node(gone)
                .is_some_and(|e| e.state == NodeState::Removed)
        }) {
            assert!(
                Instant::now() < deadline,
                "node {gone} not drained and removed: node 1 sees {} and {:?}; node {gone} holds {:?}",
                describe(&c.handle(1), &grown),
                c.handle(1).cluster().nodes(),
                c.handle(gone).regions().all()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_until(
            Duration::from_secs(10),
            "the removed node to drop its replicas",
            || c.handle(gone).regions().all().is_empty(),
        )
        .await;
        // It is no longer gossiped to: stop it (the watcher counts it down first).
        let node = c.nodes.remove(&gone).expect("running");
        *handles.write() = c.handles();
        node.stop();
        let left: BTreeSet<u64> = c.nodes.keys().copied().collect();
        wait_balanced(&c, &left, REGIONS, Duration::from_secs(30)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.expect("writer"));
    }
    let watch = quorums.await.expect("watcher");
    eprintln!(
        "quorum watcher: {} looks, longest leader gap {:?}",
        watch.looks, watch.longest_leader_gap
    );
    assert!(watch.looks > 10, "the watcher looked: {watch:?}");
    let hs: Vec<NodeHandle> = [1, 2, 3].iter().map(|&n| c.handle(n)).collect();
    check_writes(&hs, &acked).await;
    c.stop();
}

/// Test 3 of issue 9: a node of four dies and loses its data; none of its replicas is
/// rebuilt before `node_down_timeout`, and after it they are rebuilt on the three others; the dead node is removed by hand (it
/// holds nothing, so it is retired at once), and a fresh node that joins gets its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_nodes_replicas_are_rebuilt_and_a_fresh_node_takes_its_share() {
    const REGIONS: usize = 16;
    let mut c = Cluster::start(REGIONS);
    c.start_node(4);
    wait_balanced(&c, &set(&[1, 2, 3, 4]), REGIONS, Duration::from_secs(60)).await;

    let handles = Arc::new(parking_lot::RwLock::new(c.handles()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(4, handles.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The nodes each region with a replica on node 4 has replicas on, before it dies.
    let before: BTreeMap<u64, BTreeSet<u64>> = c
        .handle(1)
        .cluster()
        .regions()
        .iter()
        .map(|r| (r.id, r.peers.iter().map(|p| p.node_id).collect()))
        .filter(|(_, nodes): &(u64, BTreeSet<u64>)| nodes.contains(&4))
        .collect();
    assert!(!before.is_empty(), "node 4 holds no replica");
    let killed = Instant::now();
    c.kill_and_wipe(4);
    *handles.write() = c.handles();
    // Until node 4 has been silent for `node_down_timeout` (its last gossip may have left
    // up to a gossip interval before it died), none of its replicas is rebuilt: no such
    // region gains a replica, voter or learner, on another node.
    let mut looks = 0;
    while killed.elapsed() < NODE_DOWN - GOSSIP * 2 {
        for h in c.handles() {
            for r in h.cluster().regions() {
                let Some(nodes) = before.get(&r.id) else {
                    continue;
                };
                assert!(
                    r.peers.iter().all(|p| nodes.contains(&p.node_id)),
                    "{:?} after node 4 died, before node_down_timeout, node {} sees region {} \
                     on {:?}, not only {nodes:?}",
                    killed.elapsed(),
                    h.node_id(),
                    r.id,
                    r.peers
                );
            }
        }
        looks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(looks > 10, "looked {looks} times");
    let rest = set(&[1, 2, 3]);
    wait_balanced(&c, &rest, REGIONS, Duration::from_secs(60)).await;

    c.handle(1)
        .cluster()
        .remove_node(4)
        .expect("remove-node of a dead node");
    wait_until(Duration::from_secs(10), "node 4 to be retired", || {
        c.handles().iter().all(|h| {
            h.cluster()
                .node(4)
                .is_some_and(|e| e.state == NodeState::Removed)
        })
    })
    .await;

    c.start_node(5);
    *handles.write() = c.handles();
    wait_balanced(&c, &set(&[1, 2, 3, 5]), REGIONS, Duration::from_secs(60)).await;

    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.expect("writer"));
    }
    check_writes(&c.handles(), &acked).await;
    c.stop();
}

/// Test 4 of issue 9: membership changes interleaved with splits and merges. Two nodes
/// join a three-node cluster of eight regions under write load while regions are split
/// (a split during a move copies the move's learner into the new region: the balancer
/// removes it) and neighbours on the same nodes are merged (a merge freezes its regions:
/// moves of them are refused and planned again later). In the end the regions tile the
/// key space, replicas and leaders are spread over the five nodes, and every acknowledged
/// write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_interleave_with_splits_and_merges() {
    const REGIONS: usize = 8;
    let mut c = Cluster::start(REGIONS);
    wait_balanced(&c, &set(&[1, 2, 3]), REGIONS, Duration::from_secs(30)).await;
    let handles = Arc::new(parking_lot::RwLock::new(c.handles()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(4, handles.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    c.start_node(4);
    c.start_node(5);
    *handles.write() = c.handles();
    let (mut splits, mut merges) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut round = 0u64;
    while (splits < 6 || merges < 2) && Instant::now() < deadline {
        round += 1;
        let hs = c.handles();
        let regions = hs[0].cluster().regions();
        // Split the region holding a key that moves across the key space.
        let probe = ((round * 0x9e37) as u16).to_be_bytes();
        if splits < 6 {
            if let Some(r) = regions.iter().find(|r| r.contains(&probe)) {
                if let Some(h) = r
                    .leader_node
                    .and_then(|n| hs.iter().find(|h| h.node_id() == n))
                {
                    if h.split(r.id, None).await.is_ok() {
                        splits += 1;
                    }
                }
            }
        }
        // Merge two neighbours whose voters are on the same nodes, if any.
        if merges < 2 {
            let nodes_of = |r: &RegionSummary| -> BTreeSet<u64> {
                r.peers.iter().map(|p| p.node_id).collect()
            };
            for pair in regions.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                if nodes_of(a) != nodes_of(b) || a.peers.len() != 3 {
                    continue;
                }
                let Some(h) = a
                    .leader_node
                    .and_then(|n| hs.iter().find(|h| h.node_id() == n))
                else {
                    continue;
                };
                if h.merge(a.id, b.id).await.is_ok() {
                    merges += 1;
                }
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(splits >= 6, "only {splits} splits went through");
    assert!(merges >= 1, "no merge went through");
    wait_balanced(
        &c,
        &set(&[1, 2, 3, 4, 5]),
        ANY_COUNT,
        Duration::from_secs(90),
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.expect("writer"));
    }
    check_writes(&c.handles(), &acked).await;
    c.stop();
}

/// A cluster bootstrapped on five nodes gives each region three replicas, spread evenly
/// (within one per node), so the balancer has nothing to move but leaderships; writes and
/// reads go through any node (the ones without the key's region forward them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_bootstrapped_nodes_hold_three_replicas_of_each_region() {
    const REGIONS: usize = 20;
    let c = Cluster::start_with(REGIONS, 5);
    wait_balanced(&c, &set(&[1, 2, 3, 4, 5]), REGIONS, Duration::from_secs(30)).await;
    for h in c.handles() {
        assert_eq!(
            h.regions().all().len(),
            REGIONS * 3 / 5,
            "node {}",
            h.node_id()
        );
    }
    let hs = c.handles();
    for (n, h) in hs.iter().enumerate() {
        for i in 0..20u64 {
            let k = key(n as u64 + 1, i);
            let put = KvCommand::Put {
                key: k.clone(),
                value: k.clone(),
                cond: PutCondition::Always,
            };
            assert_eq!(
                h.write(put, (900 + n as u64, i + 1)).await,
                Ok(KvResponse::Written(true))
            );
            assert_eq!(hs[(n + 1) % 5].get(k.clone()).await, Ok(Some(k)));
        }
    }
    c.stop();
}
