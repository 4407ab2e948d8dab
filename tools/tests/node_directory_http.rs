//! `POST /admin/add-node` and `/admin/remove-node`, and `flotilla ctl add-node` /
//! `remove-node`, against a real node's directory: the HTTP status server over
//! [`NodeService`] over node 1 of a cluster bootstrapped on nodes 1–3. Only node 1 runs:
//! the directory is node-local state (spread by gossip), so its changes and refusals need
//! no quorum.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_engine::EngineConfig;
use flotilla_region::node::{Node, NodeConfig, NodeState, StoreConfig};
use flotilla_tools::ctl::{self, CtlArgs, CtlCommand, CtlError};
use flotilla_tools::http::StatusClient;
use flotilla_tools::{install_prometheus_recorder, NodeService, StatusServer};
use flotilla_transport::MemoryNetwork;
use hyper::{Method, StatusCode};

/// Node 1, alone, of a cluster bootstrapped on nodes 1–3, with its status server.
struct One {
    node: Node,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    _net: MemoryNetwork,
}

async fn start() -> One {
    let net = MemoryNetwork::new(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let (transport, inbound) = net.join(1, 1024);
    let cfg = NodeConfig {
        store: StoreConfig {
            node_id: 1,
            ..Default::default()
        },
        data_dir: dir.path().to_path_buf(),
        engine: EngineConfig::default(),
        initial_nodes: vec![1, 2, 3],
        initial_regions: 1,
        request_timeout: Duration::from_secs(5),
        cluster: Default::default(),
    };
    let node = Node::start(cfg, Arc::new(transport), inbound).expect("node starts");
    let service = Arc::new(NodeService::new(node.handle(), 7));
    let metrics = install_prometheus_recorder().expect("first install");
    let server = StatusServer::bind("127.0.0.1:0", service, metrics)
        .await
        .expect("bind");
    let addr = server.local_addr().expect("address");
    tokio::spawn(server.serve(std::future::pending()));
    One {
        node,
        addr,
        _dir: dir,
        _net: net,
    }
}

/// POSTs `path`; answers the status and the JSON body.
async fn post(c: &StatusClient, path: &str) -> (StatusCode, serde_json::Value) {
    let resp = c.request(Method::POST, path).await.expect("request");
    let body = serde_json::from_slice(&resp.body).expect("a JSON body");
    (resp.status, body)
}

/// POSTs each path and checks it is refused with `status` and an error naming `message`.
async fn expect_refusals(c: &StatusClient, cases: &[(&str, StatusCode, &str)]) {
    for &(path, status, message) in cases {
        let (got, body) = post(c, path).await;
        assert_eq!(got, status, "{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{path}: {error:?}");
    }
}

async fn run_ctl(addr: SocketAddr, command: CtlCommand) -> Result<String, CtlError> {
    let args = CtlArgs {
        addr: addr.to_string(),
        json: false,
        timeout_ms: 10_000,
        command,
    };
    let mut out = Vec::new();
    ctl::run(&args, &mut out).await?;
    Ok(String::from_utf8(out).expect("utf-8"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_and_remove_node_change_the_directory_and_refuse_what_they_must() {
    let one = start().await;
    let c = StatusClient::new(one.addr.to_string(), Duration::from_secs(5));
    let cluster = one.node.handle().cluster().clone();
    let state = |id| cluster.node(id).map(|e| e.state);
    let bad = StatusCode::BAD_REQUEST;

    // Three up: removing any would leave two.
    expect_refusals(
        &c,
        &[(
            "/admin/remove-node?id=2",
            bad,
            "removing node 2 would leave 2 up node(s); at least 3 must remain",
        )],
    )
    .await;
    assert_eq!(state(2), Some(NodeState::Up), "a refusal changes nothing");

    let (status, body) = post(
        &c,
        "/admin/add-node?id=4&raft_addr=127.0.0.1:9004&client_addr=127.0.0.1:7004",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["ok"], &body["node"]), (&true.into(), &4.into()));
    let listed: Vec<u64> = body["nodes"]
        .as_array()
        .expect("the directory")
        .iter()
        .filter_map(|n| n["node_id"].as_u64())
        .collect();
    assert_eq!(listed, vec![1, 2, 3, 4], "{body}");
    let four = cluster.node(4).expect("node 4 listed");
    assert_eq!(four.state, NodeState::Up);
    assert_eq!(
        four.addresses.client_addr,
        Some("127.0.0.1:7004".parse().unwrap())
    );

    // Bad input never reaches the directory; the directory's own refusals are 400 too.
    expect_refusals(
        &c,
        &[
            ("/admin/add-node", bad, "missing query parameter id"),
            (
                "/admin/add-node?id=x&raft_addr=127.0.0.1:1",
                bad,
                "unsigned integer",
            ),
            (
                "/admin/add-node?id=5",
                bad,
                "missing query parameter raft_addr",
            ),
            ("/admin/add-node?id=5&raft_addr=nowhere", bad, "IP:PORT"),
            (
                "/admin/add-node?id=5&raft_addr=127.0.0.1:1&status_addr=127.0.0.1",
                bad,
                "status_addr must be IP:PORT",
            ),
            (
                "/admin/add-node?id=0&raft_addr=127.0.0.1:1",
                bad,
                "out of range",
            ),
            (
                "/admin/add-node?id=65536&raft_addr=127.0.0.1:1",
                bad,
                "out of range",
            ),
            (
                "/admin/add-node?id=5&raft_addr=127.0.0.1:1&cluster_id=9",
                bad,
                "cluster id mismatch",
            ),
            (
                "/admin/add-node?id=4&raft_addr=127.0.0.1:9999",
                bad,
                "node 4 is already in the cluster with other addresses",
            ),
            ("/admin/remove-node", bad, "missing query parameter id"),
            ("/admin/remove-node?id=-1", bad, "unsigned integer"),
            (
                "/admin/remove-node?id=9",
                bad,
                "node 9 is not in the cluster",
            ),
        ],
    )
    .await;
    assert_eq!(cluster.node(5), None, "no refused add listed node 5");
    assert_eq!(
        cluster.node(4).map(|e| e.addresses.raft_addr),
        Some(Some("127.0.0.1:9004".parse().unwrap())),
        "node 4 kept its address"
    );

    // Four up: one may go, then no other.
    let (status, body) = post(&c, "/admin/remove-node?id=2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        serde_json::json!({ "ok": true, "node": 2, "state": "removing" })
    );
    assert_eq!(state(2), Some(NodeState::Removing));
    expect_refusals(
        &c,
        &[
            (
                "/admin/remove-node?id=3",
                bad,
                "would leave 2 up node(s); at least 3 must remain",
            ),
            (
                "/admin/add-node?id=2&raft_addr=127.0.0.1:9002",
                bad,
                "node 2 is being removed",
            ),
        ],
    )
    .await;
    assert_eq!(state(3), Some(NodeState::Up));
    for path in [
        "/admin/add-node?id=6&raft_addr=127.0.0.1:1",
        "/admin/remove-node?id=4",
    ] {
        let resp = c.request(Method::GET, path).await.expect("request");
        assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
    assert_eq!(cluster.node(6), None);
    assert_eq!(state(4), Some(NodeState::Up));

    // The same through `flotilla ctl`.
    let out = run_ctl(
        one.addr,
        CtlCommand::AddNode {
            id: 5,
            raft_addr: "127.0.0.1:9005".into(),
            client_addr: None,
            status_addr: Some("127.0.0.1:8005".into()),
        },
    )
    .await
    .expect("ctl add-node");
    assert_eq!(
        out,
        "added node 5 at 127.0.0.1:9005; the cluster lists 5 node(s)\n"
    );
    assert_eq!(state(5), Some(NodeState::Up));
    let out = run_ctl(one.addr, CtlCommand::RemoveNode { node: 5 })
        .await
        .expect("ctl remove-node");
    assert_eq!(out, "node 5 is removing: it takes no new replicas\n");
    let err = run_ctl(one.addr, CtlCommand::RemoveNode { node: 4 })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "400 Bad Request: removing node 4 would leave 2 up node(s); at least 3 must remain"
    );
    let err = run_ctl(
        one.addr,
        CtlCommand::AddNode {
            id: 6,
            raft_addr: "localhost".into(),
            client_addr: None,
            status_addr: None,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, CtlError::BadAddress(ref m) if m.contains("--raft-addr")),
        "{err}"
    );
    one.node.stop();
}
