//! Replica moves end to end: `flotilla ctl` → the HTTP status server → [`NodeService`] → a
//! real in-process cluster (engine on disk, in-memory transport) of four nodes, one region
//! bootstrapped on nodes 1–3, node 4 starting empty. Checks that the changes happen and
//! that `/status` shows the region's peers with their roles as they change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_engine::EngineConfig;
use flotilla_region::node::{Node, NodeConfig, NodeHandle, StoreConfig};
use flotilla_tools::ctl::{self, CtlArgs, CtlCommand, CtlError};
use flotilla_tools::{
    install_prometheus_recorder, MemberRole, NodeService, RegionStatus, StatusServer,
};
use flotilla_transport::MemoryNetwork;

const INITIAL_NODES: u64 = 3;
const NODES: u64 = 4;
const REGION: u64 = 1;

async fn run_ctl(addr: SocketAddr, command: CtlCommand, json: bool) -> Result<String, CtlError> {
    let args = CtlArgs {
        addr: addr.to_string(),
        json,
        timeout_ms: 10_000,
        command,
    };
    let mut out = Vec::new();
    ctl::run(&args, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

/// Region 1 as node 1's `/status` shows it, read through `ctl regions --json`.
async fn region_via_ctl(addr: SocketAddr) -> Option<RegionStatus> {
    let json = run_ctl(addr, CtlCommand::Regions { all: false }, true)
        .await
        .ok()?;
    let regions: Vec<RegionStatus> = serde_json::from_str(&json).unwrap();
    regions.into_iter().find(|r| r.id == REGION)
}

/// Waits (up to 10 s) until node 1's `/status` shows region 1 satisfying `cond`.
async fn wait_status(
    addr: SocketAddr,
    what: &str,
    cond: impl Fn(&RegionStatus) -> bool,
) -> RegionStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = region_via_ctl(addr).await;
        if let Some(r) = r.as_ref().filter(|r| cond(r)) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The region's members as `(node, role)`, sorted by node.
fn members(r: &RegionStatus) -> Vec<(u64, MemberRole)> {
    let mut m: Vec<_> = r.peers.iter().map(|p| (p.node, p.role)).collect();
    m.sort_by_key(|&(n, _)| n);
    m
}

async fn holds(h: &NodeHandle) -> bool {
    h.status()
        .await
        .map(|s| s.iter().any(|r| r.route.id == REGION))
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_moves_removes_and_adds_replicas_of_a_real_cluster() {
    let net = MemoryNetwork::new(5);
    let dirs: Vec<tempfile::TempDir> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for id in 1..=NODES {
        let (transport, inbound) = net.join(id, 1024);
        let cfg = NodeConfig {
            store: StoreConfig {
                node_id: id,
                ..Default::default()
            },
            data_dir: dirs[id as usize - 1].path().to_path_buf(),
            engine: EngineConfig::default(),
            initial_nodes: (1..=INITIAL_NODES).collect(),
            initial_regions: 1,
            request_timeout: Duration::from_secs(5),
            cluster: Default::default(),
        };
        nodes.push(Node::start(cfg, Arc::new(transport), inbound).expect("node starts"));
    }
    let service = Arc::new(NodeService::new(nodes[0].handle(), 42));
    let metrics = install_prometheus_recorder().expect("first install");
    let server = StatusServer::bind("127.0.0.1:0", service, metrics)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(std::future::pending()));

    let voters = |ns: &[u64]| -> Vec<(u64, MemberRole)> {
        ns.iter().map(|&n| (n, MemberRole::Voter)).collect()
    };
    let r = wait_status(addr, "a leader and three voters", |r| {
        r.leader.is_some() && members(r) == voters(&[1, 2, 3])
    })
    .await;
    let conf_ver = r.epoch.conf_ver;

    // A move: learner on 4, promoted, replica on 3 removed — three changes.
    let out = run_ctl(
        addr,
        CtlCommand::MoveReplica {
            region: REGION,
            from: 3,
            to: 4,
            joint: false,
        },
        false,
    )
    .await
    .expect("move");
    assert_eq!(out, "moved region 1's replica from node 3 to node 4\n");
    let r = wait_status(addr, "the moved replica in /status", |r| {
        members(r) == voters(&[1, 2, 4]) && r.leader.is_some()
    })
    .await;
    assert_eq!(r.epoch.conf_ver, conf_ver + 3, "{r:?}");

    // The node's refusals and unknown regions come back as 4xx with the reason.
    let err = run_ctl(
        addr,
        CtlCommand::AddLearner {
            region: REGION,
            node: 2,
        },
        false,
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("400 Bad Request: region 1 already has a replica on node 2"),
        "{text}"
    );
    let err = run_ctl(
        addr,
        CtlCommand::RemoveReplica {
            region: 77,
            node: 2,
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "404 Not Found: region 77 not found");

    // Remove a replica that does not lead (nor is the one asked), then add a learner back
    // on node 3 once its old replica is gone.
    let leader = r.leader.unwrap();
    let victim = [2, 4].into_iter().find(|&n| n != leader).unwrap();
    run_ctl(
        addr,
        CtlCommand::RemoveReplica {
            region: REGION,
            node: victim,
        },
        false,
    )
    .await
    .expect("remove");
    let remaining: Vec<u64> = [1, 2, 4].into_iter().filter(|&n| n != victim).collect();
    wait_status(addr, "the removal in /status", |r| {
        members(r) == voters(&remaining)
    })
    .await;

    let h3 = nodes[2].handle();
    let deadline = Instant::now() + Duration::from_secs(10);
    while holds(&h3).await {
        assert!(Instant::now() < deadline, "node 3 still holds region 1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = run_ctl(
        addr,
        CtlCommand::AddLearner {
            region: REGION,
            node: 3,
        },
        false,
    )
    .await
    .expect("add learner");
    assert!(
        out.starts_with("added a learner of region 1 on node 3: peer "),
        "{out}"
    );
    let r = wait_status(addr, "the learner in /status", |r| {
        members(r).contains(&(3, MemberRole::Learner))
    })
    .await;
    assert_eq!(r.epoch.conf_ver, conf_ver + 5, "{r:?}");
    assert_eq!(r.peers.len(), 3, "{r:?}");

    for n in nodes {
        n.stop();
    }
}
