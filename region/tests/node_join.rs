//! The cluster layer of an in-process cluster (engine on disk, in-memory transport): three
//! bootstrapped nodes and a fourth that starts knowing only node 1 (and itself). Gossip
//! spreads the directory to every node, node 4 routes every key without holding a
//! replica, a replica moves to node 4, a node marked `Removing` gets no new replica (and
//! every node hears it), and node 4's directory survives its restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_engine::EngineConfig;
use flotilla_region::node::{
    ClusterConfig, KvCommand, KvResponse, Node, NodeAddresses, NodeConfig, NodeEntry, NodeHandle,
    NodeState, PutCondition, StoreConfig,
};
use flotilla_transport::MemoryNetwork;

const REGIONS: usize = 2;
const GOSSIP: Duration = Duration::from_millis(100);

fn addresses(id: u64) -> NodeAddresses {
    let a = |base: u16| Some(SocketAddr::from(([127, 0, 0, 1], base + id as u16)));
    NodeAddresses {
        raft_addr: a(9000),
        client_addr: a(7000),
        status_addr: a(8000),
    }
}

fn config(id: u64, dir: &std::path::Path) -> NodeConfig {
    let joined = id == 4;
    let seed: Vec<NodeEntry> = if joined {
        // What the node it joined through would answer, at the least: itself and node 1.
        vec![
            NodeEntry::new(1, addresses(1)),
            NodeEntry::new(4, addresses(4)),
        ]
    } else {
        (1..=3).map(|n| NodeEntry::new(n, addresses(n))).collect()
    };
    NodeConfig {
        store: StoreConfig {
            node_id: id,
            ..Default::default()
        },
        data_dir: dir.to_path_buf(),
        engine: EngineConfig::default(),
        initial_nodes: if joined { vec![] } else { vec![1, 2, 3] },
        initial_regions: REGIONS,
        request_timeout: Duration::from_secs(5),
        cluster: ClusterConfig {
            gossip_interval: GOSSIP,
            addresses: addresses(id),
            seed,
            joined,
            cluster_id: 1,
            ..Default::default()
        },
    }
}

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

fn key(first: u8, i: u64) -> Bytes {
    let mut k = vec![first];
    k.extend_from_slice(format!("k{i:04}").as_bytes());
    Bytes::from(k)
}

async fn write(h: &NodeHandle, k: Bytes, session: (u64, u64)) {
    let cmd = KvCommand::Put {
        key: k.clone(),
        value: k.clone(),
        cond: PutCondition::Always,
    };
    for _ in 0..50 {
        if h.write(cmd.clone(), session).await == Ok(KvResponse::Written(true)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("write of {k:?} keeps failing");
}

/// Whether `h`'s directory lists nodes 1–4, each with all three addresses.
fn knows_everyone(h: &NodeHandle) -> bool {
    let d = h.cluster().directory();
    d.len() == 4
        && d.iter()
            .all(|e| e.addresses == addresses(e.node_id) && e.state == NodeState::Up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_routes_takes_a_replica_and_a_removing_node_gets_none() {
    let net = MemoryNetwork::new(5);
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for id in 1..=4u64 {
        let (t, inbound) = net.join(id, 1024);
        let cfg = config(id, dirs[id as usize - 1].path());
        nodes.push(Some(
            Node::start(cfg, Arc::new(t), inbound).expect("node starts"),
        ));
    }
    let handle =
        |nodes: &[Option<Node>], id: u64| nodes[id as usize - 1].as_ref().unwrap().handle();
    let hs: Vec<NodeHandle> = (1..=4).map(|id| handle(&nodes, id)).collect();
    assert_eq!(
        hs[3].cluster().directory().len(),
        2,
        "node 4 starts knowing nodes 1 and 4"
    );

    // Within a few gossip rounds everyone knows everyone, with addresses.
    wait_until(
        Duration::from_secs(5),
        "every directory to list all four",
        || async { hs.iter().all(knows_everyone) },
    )
    .await;
    wait_until(Duration::from_secs(5), "node 1 to hear node 4", || async {
        hs[0]
            .cluster()
            .nodes()
            .iter()
            .all(|n| n.alive && n.last_heard.is_some())
    })
    .await;

    // Node 4 holds no replica, but routes every key to its region and leader.
    for i in 0..20 {
        write(&hs[0], key(0x10, i), (1, i + 1)).await;
    }
    wait_until(
        Duration::from_secs(5),
        "node 4 to route every key",
        || async {
            [
                key(0x10, 1),
                key(0xC0, 1),
                Bytes::new(),
                Bytes::from_static(b"\xff\xff"),
            ]
            .iter()
            .all(|k| {
                hs[3]
                    .cluster()
                    .route(k)
                    .is_some_and(|r| r.leader_node.is_some() && r.peers.len() == 3)
            })
        },
    )
    .await;
    assert!(
        hs[3].status().await.unwrap().is_empty(),
        "node 4 holds nothing"
    );
    let r1 = hs[3].cluster().route(&key(0x10, 1)).unwrap();
    let r2 = hs[3].cluster().route(&key(0xC0, 1)).unwrap();
    assert_eq!((r1.id, r2.id), (1, 2));

    // Without a replica, node 4 still serves every key: it forwards the request to a node
    // with one. Reads, writes in both regions, a scan; a write sent twice with one session
    // (a client retrying) applies once.
    for i in 0..20 {
        assert_eq!(hs[3].get(key(0x10, i)).await.unwrap(), Some(key(0x10, i)));
    }
    let put = |k: Bytes| KvCommand::Put {
        key: k.clone(),
        value: Bytes::from_static(b"via node 4"),
        cond: PutCondition::Always,
    };
    for k in [key(0x20, 1), key(0xC0, 1)] {
        assert_eq!(
            hs[3].write(put(k.clone()), (44, 1 + k[0] as u64)).await,
            Ok(KvResponse::Written(true))
        );
        assert_eq!(
            hs[0].get(k).await.unwrap(),
            Some(Bytes::from_static(b"via node 4"))
        );
    }
    let incr = KvCommand::IncrBy {
        key: key(0x30, 1),
        delta: 5,
    };
    for _ in 0..2 {
        assert_eq!(
            hs[3].write(incr.clone(), (45, 1)).await,
            Ok(KvResponse::Value(5)),
            "the retry gets the first answer"
        );
    }
    assert_eq!(
        hs[1].get(key(0x30, 1)).await.unwrap(),
        Some(Bytes::from_static(b"5"))
    );
    let page = hs[3]
        .scan_page(key(0x10, 0), key(0x10, 99), 100)
        .await
        .expect("a forwarded scan");
    assert_eq!(page.pairs.len(), 20);
    assert!(
        hs[3].cluster().forwarder().pending() == 0,
        "every forwarded request was answered"
    );
    let ids: Vec<u64> = hs[3].cluster().regions().iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![1, 2]);
    // Leader counts and replica counts arrive with gossip.
    wait_until(
        Duration::from_secs(5),
        "node 4 to see every leader counted",
        || async {
            let n = hs[3].cluster().nodes();
            n.iter().map(|n| n.leaders).sum::<u64>() == REGIONS as u64
                && n.iter()
                    .filter(|n| n.entry.node_id != 4)
                    .all(|n| n.replicas == 2)
        },
    )
    .await;

    // A replica of region 1 moves from node 3 to the joined node, which then serves it.
    hs[0].move_replica(1, 3, 4).await.expect("move to node 4");
    for i in 0..20 {
        assert_eq!(hs[3].get(key(0x10, i)).await.unwrap(), Some(key(0x10, i)));
    }
    wait_until(
        Duration::from_secs(5),
        "node 1's table to show the move",
        || async {
            hs[0].cluster().route(&key(0x10, 1)).is_some_and(|r| {
                let mut n: Vec<u64> = r.peers.iter().map(|p| p.node_id).collect();
                n.sort_unstable();
                n == vec![1, 2, 4]
            })
        },
    )
    .await;

    // Node 3 is marked removing on node 2; every node hears it.
    let e = hs[1].cluster().remove_node(3).expect("remove node 3");
    assert_eq!(e.state, NodeState::Removing);
    wait_until(
        Duration::from_secs(5),
        "node 3's removal to spread",
        || async {
            hs.iter().all(|h| {
                h.cluster()
                    .node(3)
                    .is_some_and(|e| e.state == NodeState::Removing)
            })
        },
    )
    .await;
    // Three up nodes must remain.
    let e = hs[0].cluster().remove_node(2).unwrap_err();
    assert!(e.to_string().contains("at least 3 must remain"), "{e}");
    // No new replica on a removing node, asked through the leader's node or another.
    for h in [&hs[0], &hs[3]] {
        let e = h.add_learner(1, 3).await.unwrap_err();
        assert!(e.to_string().contains("state removing"), "{e}");
    }

    // Node 4 restarts: its directory comes from disk, complete before any gossip.
    nodes[3].take().unwrap().stop();
    net.leave(4);
    let (t, inbound) = net.join(4, 1024);
    let n4 = Node::start(config(4, dirs[3].path()), Arc::new(t), inbound).expect("node 4 restarts");
    let d = n4.handle().cluster().directory();
    assert_eq!(d.len(), 4, "{d:?}");
    assert_eq!(
        n4.handle().cluster().node(3).unwrap().state,
        NodeState::Removing
    );
    assert!(d.iter().all(|e| e.addresses == addresses(e.node_id)));
    let h4 = n4.handle();
    wait_until(
        Duration::from_secs(5),
        "node 4 to serve region 1 again",
        || async { h4.get(key(0x10, 3)).await == Ok(Some(key(0x10, 3))) },
    )
    .await;
    n4.stop();
    for n in nodes.into_iter().flatten() {
        n.stop();
    }
}
