//! The HTTP status server and `flotilla ctl` against a status source that records calls.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use flotilla_tools::ctl::{self, CtlArgs, CtlCommand, CtlError};
use flotilla_tools::http::{install_prometheus_recorder, StatusClient};
use flotilla_tools::service::{ClusterNodeStatus, SnapshotsStatus};
use flotilla_tools::{
    EpochStatus, MemberRole, MemoryKvService, NodeStatus, PeerStatus, RegionStatus, ReplicaRole,
    RespServer, ServiceError, ServiceFuture, StatusServer, StatusSource,
};
use hyper::{Method, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;

/// The recorder is process-wide, so every test of this binary shares one.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| install_prometheus_recorder().expect("first install"))
        .clone()
}

/// A node with three regions that records the leader transfers it is asked for.
#[derive(Default)]
struct FakeNode {
    transfers: Mutex<Vec<(u64, u64)>>,
    splits: Mutex<Vec<(u64, Option<Bytes>)>>,
    merges: Mutex<Vec<(u64, u64)>>,
    learners: Mutex<Vec<(u64, u64)>>,
    removals: Mutex<Vec<(u64, u64)>>,
    moves: Mutex<Vec<(u64, u64, u64)>>,
    joint_moves: Mutex<Vec<(u64, u64, u64)>>,
    /// What `/status` answers instead of [`FakeNode::node_status`].
    answer: Mutex<Option<NodeStatus>>,
}

/// The peer id the fake node gives every learner it adds.
const LEARNER_PEER: u64 = (1 << 63) | (5 << 16) | 2;

/// Nodes 1 to 3 hold replicas of every region, as the node answers them: the fake node
/// refuses a learner on one of them, a removal or move of a replica elsewhere; region 99
/// is unknown; node 0 makes it answer "retry".
fn fake_membership(region: u64, nodes: &[(u64, bool)]) -> Result<(), ServiceError> {
    if region == 99 {
        return Err(ServiceError::RegionNotFound(99));
    }
    for &(node, wanted_here) in nodes {
        if node == 0 {
            return Err(ServiceError::TryAgain(
                "a membership change is in progress".into(),
            ));
        }
        let here = (1..=3).contains(&node);
        if here != wanted_here {
            return Err(ServiceError::InvalidArgument(format!(
                "region {region} {} on node {node}",
                if here {
                    "already has a replica"
                } else {
                    "has no replica"
                }
            )));
        }
    }
    Ok(())
}

impl FakeNode {
    fn node_status() -> NodeStatus {
        let region = |id, start: &'static [u8], end: &'static [u8], role, leader| RegionStatus {
            id,
            start_key: Bytes::from_static(start),
            end_key: Bytes::from_static(end),
            epoch: EpochStatus {
                conf_ver: 1,
                version: id + 1,
            },
            role,
            term: 7,
            commit: 100 + id,
            applied: 99 + id,
            leader,
            peers: (1..=3)
                .map(|n| PeerStatus {
                    node: n,
                    peer: (id << 16) + n,
                    role: MemberRole::Voter,
                })
                .chain((id == 2).then_some(PeerStatus {
                    node: 4,
                    peer: LEARNER_PEER,
                    role: MemberRole::Learner,
                }))
                .collect(),
        };
        NodeStatus {
            node_id: 2,
            regions: vec![
                region(1, b"", b"g", ReplicaRole::Leader, Some(2)),
                region(2, b"g", b"t\xff", ReplicaRole::Follower, Some(3)),
                region(3, b"t\xff", b"", ReplicaRole::Candidate, None),
            ],
            snapshots: flotilla_tools::service::SnapshotsStatus {
                sending: 1,
                sending_bytes_done: (123 << 20) / 10,
                sending_bytes_total: 64 << 20,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

impl StatusSource for FakeNode {
    fn merge(&self, source: u64, target: u64) -> ServiceFuture<()> {
        let result = if source == target {
            Err(ServiceError::InvalidArgument(
                "a region cannot merge into itself".into(),
            ))
        } else {
            self.merges.lock().push((source, target));
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }

    fn split(&self, region: u64, key: Option<Bytes>) -> ServiceFuture<Vec<u64>> {
        let result = if region == 99 {
            Err(ServiceError::RegionNotFound(99))
        } else {
            self.splits.lock().push((region, key));
            Ok(vec![65_537])
        };
        Box::pin(std::future::ready(result))
    }

    fn status(&self) -> NodeStatus {
        self.answer
            .lock()
            .clone()
            .unwrap_or_else(FakeNode::node_status)
    }

    fn add_learner(&self, region: u64, node: u64) -> ServiceFuture<u64> {
        let result = fake_membership(region, &[(node, false)]).map(|()| {
            self.learners.lock().push((region, node));
            LEARNER_PEER
        });
        Box::pin(std::future::ready(result))
    }

    fn remove_replica(&self, region: u64, node: u64) -> ServiceFuture<()> {
        let result = fake_membership(region, &[(node, true)])
            .map(|()| self.removals.lock().push((region, node)));
        Box::pin(std::future::ready(result))
    }

    fn move_replica(&self, region: u64, from: u64, to: u64, joint: bool) -> ServiceFuture<()> {
        assert_ne!(from, to, "the route refuses a move to the same node");
        let moves = if joint {
            &self.joint_moves
        } else {
            &self.moves
        };
        let result = fake_membership(region, &[(from, true), (to, false)])
            .map(|()| moves.lock().push((region, from, to)));
        Box::pin(std::future::ready(result))
    }

    fn transfer_leader(&self, region: u64, node: u64) -> ServiceFuture<()> {
        let result = if region == 99 {
            Err(ServiceError::RegionNotFound(99))
        } else if node == 0 {
            Err(ServiceError::TryAgain(
                "leader transfer already in progress".into(),
            ))
        } else {
            self.transfers.lock().push((region, node));
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }
}

async fn start(node: Arc<FakeNode>) -> SocketAddr {
    let server = StatusServer::bind("127.0.0.1:0", node, metrics_handle())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(std::future::pending()));
    addr
}

fn client(addr: SocketAddr) -> StatusClient {
    StatusClient::new(addr.to_string(), Duration::from_secs(5))
}

#[tokio::test]
async fn status_is_json_with_escaped_keys() {
    let addr = start(Arc::default()).await;
    let resp = client(addr).request(Method::GET, "/status").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let text = std::str::from_utf8(&resp.body).unwrap();
    assert!(text.contains(r#""end_key": "t\\xff""#), "{text}");
    assert!(text.contains(r#""role": "candidate""#), "{text}");
    let parsed: NodeStatus = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(parsed, FakeNode::node_status());

    let health = client(addr).request(Method::GET, "/health").await.unwrap();
    assert_eq!(
        (health.status, &health.body[..]),
        (StatusCode::OK, &b"ok\n"[..])
    );
    let missing = client(addr).request(Method::GET, "/nope").await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let wrong = client(addr).request(Method::POST, "/status").await.unwrap();
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_show_counters_and_resp_latencies() {
    let handle = metrics_handle();
    let addr = start(Arc::default()).await;
    metrics::counter!("flotilla_test_probe_total", "kind" => "probe").increment(3);

    // A PING through a RESP server shows up as a command count and a latency histogram.
    let resp = RespServer::bind("127.0.0.1:0", Arc::new(MemoryKvService::new()))
        .await
        .unwrap();
    let resp_addr = resp.local_addr().unwrap();
    tokio::spawn(resp.serve(std::future::pending()));
    let mut s = tokio::net::TcpStream::connect(resp_addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"+PONG\r\n");

    let resp = client(addr).request(Method::GET, "/metrics").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let text = String::from_utf8(resp.body.to_vec()).unwrap();
    assert!(
        text.contains("flotilla_test_probe_total{kind=\"probe\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("flotilla_resp_commands_total{command=\"ping\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "flotilla_resp_command_duration_seconds_bucket{command=\"ping\",le=\"0.00005\"}"
        ),
        "latencies are histograms with the configured buckets: {text}"
    );
    // The handle the server renders is the one the test holds.
    assert!(handle.render().contains("flotilla_test_probe_total"));
}

#[tokio::test]
async fn transfer_leader_reaches_the_node() {
    let node = Arc::new(FakeNode::default());
    let addr = start(node.clone()).await;
    let c = client(addr);
    let ok = c
        .request(Method::POST, "/admin/transfer-leader?region=3&node=1")
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(*node.transfers.lock(), vec![(3, 1)]);

    let cases = [
        (
            "/admin/transfer-leader?region=3",
            StatusCode::BAD_REQUEST,
            "missing query parameter node",
        ),
        (
            "/admin/transfer-leader?region=x&node=1",
            StatusCode::BAD_REQUEST,
            "must be an unsigned integer",
        ),
        (
            "/admin/transfer-leader?region=99&node=1",
            StatusCode::NOT_FOUND,
            "region 99 not found",
        ),
        (
            "/admin/transfer-leader?region=3&node=0",
            StatusCode::SERVICE_UNAVAILABLE,
            "already in progress",
        ),
    ];
    for (path, status, message) in cases {
        let resp = c.request(Method::POST, path).await.unwrap();
        assert_eq!(resp.status, status, "{path}");
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(message), "{path}: {error}");
    }
    let get = c
        .request(Method::GET, "/admin/transfer-leader?region=3&node=1")
        .await
        .unwrap();
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        node.transfers.lock().len(),
        1,
        "only the good request reached the node"
    );
}

async fn run_ctl(addr: SocketAddr, command: CtlCommand, json: bool) -> Result<String, CtlError> {
    let args = CtlArgs {
        addr: addr.to_string(),
        json,
        timeout_ms: 5_000,
        command,
    };
    let mut out = Vec::new();
    ctl::run(&args, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn ctl_prints_tables_and_json() {
    let node = Arc::new(FakeNode::default());
    let addr = start(node.clone()).await;

    let regions = run_ctl(addr, CtlCommand::Regions { all: false }, false)
        .await
        .unwrap();
    assert_eq!(
        regions,
        "REGION  START    END      CONF_VER  VERSION  ROLE       TERM  COMMIT  APPLIED  LEADER  PEERS\n\
         1       \"\"       \"g\"      1         2        leader     7     101     100      2       1,2,3\n\
         2       \"g\"      \"t\\xff\"  1         3        follower   7     102     101      3       1,2,3,4(l)\n\
         3       \"t\\xff\"  +inf     1         4        candidate  7     103     102      -       1,2,3\n"
    );
    let status = run_ctl(addr, CtlCommand::Status, false).await.unwrap();
    assert!(
        status.starts_with(
            "FIELD          VALUE\nnode           2\nregions        3\nleader         1\n"
        ),
        "{status}"
    );
    assert!(status.contains("candidate      1\n"), "{status}");
    assert!(
        status.contains("snapshots      building 0, sending 1 (12.3/64.0 MiB), receiving 0\n"),
        "{status}"
    );

    let json = run_ctl(addr, CtlCommand::Regions { all: false }, true)
        .await
        .unwrap();
    let parsed: Vec<RegionStatus> = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, FakeNode::node_status().regions);

    let moved = run_ctl(
        addr,
        CtlCommand::TransferLeader { region: 2, node: 2 },
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        moved,
        "asked region 2 to transfer its leadership to node 2\n"
    );
    assert_eq!(*node.transfers.lock(), vec![(2, 2)]);

    let err = run_ctl(
        addr,
        CtlCommand::TransferLeader {
            region: 99,
            node: 2,
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "404 Not Found: region 99 not found");
}

/// A fake node whose `/status` answers `status`.
async fn start_answering(status: NodeStatus) -> SocketAddr {
    let node = FakeNode::default();
    *node.answer.lock() = Some(status);
    start(Arc::new(node)).await
}

#[tokio::test]
async fn ctl_status_shows_the_snapshots_each_node_reports_of_itself_and_a_question_mark_for_one_that_does_not_answer(
) {
    let idle = start_answering(NodeStatus {
        node_id: 3,
        ..Default::default()
    })
    .await;
    let busy = start_answering(NodeStatus {
        node_id: 5,
        snapshots: SnapshotsStatus {
            receiving: 2,
            receiving_bytes_done: 3 << 20,
            receiving_bytes_total: 10 << 20,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = silent.local_addr().unwrap().to_string();
    let entry = |id: u64, state: &str, status_addr: Option<String>| ClusterNodeStatus {
        id,
        raft_addr: Some(format!("127.0.0.1:{}", 9000 + id)),
        client_addr: None,
        status_addr,
        state: state.into(),
        alive: true,
        last_heard_ms: Some(10),
        replicas: 3,
        leaders: 1,
        moves: 0,
        // Gossip's count: the column must not show it.
        snapshots: 9,
        generation: 1,
    };
    let mut status = FakeNode::node_status();
    status.nodes = vec![
        // The node ctl talks to has answered already: its listed address is not asked.
        entry(2, "up", Some(silent.clone())),
        entry(3, "up", Some(idle.to_string())),
        entry(4, "up", Some(silent.clone())),
        entry(5, "removing", Some(busy.to_string())),
        entry(6, "removed", Some(busy.to_string())),
        entry(7, "up", None),
    ];
    let addr = start_answering(status).await;

    let started = std::time::Instant::now();
    let out = run_ctl(addr, CtlCommand::Status, false).await.unwrap();
    let took = started.elapsed();
    let table = out.split("\n\n").nth(1).expect("a nodes table");
    let cells: Vec<(String, String)> = table
        .lines()
        .skip(1)
        .map(|line| {
            let cells: Vec<&str> = line
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            (cells[0].to_string(), cells[7].to_string())
        })
        .collect();
    let want = [
        ("2", "1 stream, 12.3/64.0 MiB"),
        ("3", "-"),
        ("4", "?"),
        ("5", "2 streams, 3.0/10.0 MiB"),
        ("6", "-"),
        ("7", "?"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect();
    assert_eq!(cells, want, "{out}");
    assert!(
        took < Duration::from_millis(2_500),
        "the silent node held ctl status for {took:?}"
    );
}

/// The `flotilla` binary itself: clap wiring, output, exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn flotilla_ctl_binary() {
    let addr = start(Arc::default()).await;
    let run = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
                .args(args)
                .output()
                .unwrap()
        })
    };
    let out = run(vec![
        "ctl".into(),
        "--addr".into(),
        addr.to_string(),
        "regions".into(),
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("REGION  START"), "{stdout}");
    assert_eq!(stdout.lines().count(), 4);

    // The membership subcommands' names and arguments, as an operator types them.
    for (args, expected) in [
        (
            vec!["move-replica", "3", "2", "4"],
            "moved region 3's replica from node 2 to node 4",
        ),
        (
            vec!["add-learner", "3", "5"],
            "added a learner of region 3 on node 5",
        ),
        (
            vec!["remove-replica", "3", "1"],
            "removed region 3's replica on node 1",
        ),
    ] {
        let mut all = vec!["ctl".to_string(), "--addr".into(), addr.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let out = run(all).await.unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with(expected), "{args:?}: {stdout}");
    }
    let out = run(vec![
        "ctl".into(),
        "--addr".into(),
        addr.to_string(),
        "move-replica".into(),
        "3".into(),
        "2".into(),
    ])
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses a missing TO: {out:?}"
    );

    // Nothing listens on port 9 of localhost here; the error names the address.
    let out = run(vec![
        "ctl".into(),
        "--addr".into(),
        "127.0.0.1:9".into(),
        "status".into(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("flotilla ctl: cannot connect to 127.0.0.1:9"),
        "{stderr}"
    );
}

#[tokio::test]
async fn split_reaches_the_node_with_its_key_and_ctl_sends_it() {
    let node = Arc::new(FakeNode::default());
    let addr = start(node.clone()).await;
    let c = client(addr);
    let ok = c
        .request(Method::POST, "/admin/split?region=3&key=00ff61")
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(body["new_regions"], serde_json::json!([65_537]));
    let ok = c
        .request(Method::POST, "/admin/split?region=3")
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    for (path, status) in [
        ("/admin/split?region=3&key=0", StatusCode::BAD_REQUEST),
        ("/admin/split?key=00", StatusCode::BAD_REQUEST),
        ("/admin/split?region=99", StatusCode::NOT_FOUND),
    ] {
        let resp = c.request(Method::POST, path).await.unwrap();
        assert_eq!(resp.status, status, "{path}");
    }
    let out = run_ctl(
        addr,
        CtlCommand::Split {
            region: 4,
            key: Some("user\\x00:7".into()),
        },
        false,
    )
    .await
    .unwrap();
    assert!(out.contains("new regions [65537]"), "{out}");
    assert_eq!(
        *node.splits.lock(),
        vec![
            (3, Some(Bytes::from_static(&[0, 0xff, b'a']))),
            (3, None),
            (4, Some(Bytes::from_static(b"user\x00:7"))),
        ]
    );
}

#[tokio::test]
async fn merge_reaches_the_node_and_ctl_sends_it() {
    let node = Arc::new(FakeNode::default());
    let addr = start(node.clone()).await;
    let c = client(addr);
    let ok = c
        .request(Method::POST, "/admin/merge?source=7&target=3")
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    for (path, status) in [
        ("/admin/merge?source=7", StatusCode::BAD_REQUEST),
        ("/admin/merge?source=3&target=3", StatusCode::BAD_REQUEST),
    ] {
        let resp = c.request(Method::POST, path).await.unwrap();
        assert_eq!(resp.status, status, "{path}");
    }
    let out = run_ctl(
        addr,
        CtlCommand::Merge {
            source: 9,
            target: 4,
        },
        false,
    )
    .await
    .unwrap();
    assert!(out.contains("merged region 9 into region 4"), "{out}");
    assert_eq!(*node.merges.lock(), vec![(7, 3), (9, 4)]);
}

#[tokio::test]
async fn status_lists_every_region_s_peers_with_their_roles() {
    let addr = start(Arc::default()).await;
    let resp = client(addr).request(Method::GET, "/status").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    let peers = &body["regions"][1]["peers"];
    assert_eq!(
        peers[0],
        serde_json::json!({ "node": 1, "peer": 131_073, "role": "voter" })
    );
    assert_eq!(
        peers[3],
        serde_json::json!({ "node": 4, "peer": LEARNER_PEER, "role": "learner" })
    );
    assert_eq!(peers.as_array().unwrap().len(), 4);
    // An older server's answer, without `peers`, still reads.
    let mut old = body.clone();
    for r in old["regions"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("peers");
    }
    let parsed: NodeStatus = serde_json::from_value(old).unwrap();
    assert!(parsed.regions.iter().all(|r| r.peers.is_empty()));
}

/// Sends every path, checks the status and that the error names the problem.
async fn expect_errors(c: &StatusClient, cases: &[(&str, StatusCode, &str)]) {
    for &(path, status, message) in cases {
        let resp = c.request(Method::POST, path).await.unwrap();
        assert_eq!(resp.status, status, "{path}");
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(message), "{path}: {error}");
    }
}

#[tokio::test]
async fn membership_routes_parse_their_parameters_and_answer_refusals() {
    let node = Arc::new(FakeNode::default());
    let addr = start(node.clone()).await;
    let c = client(addr);

    let ok = c
        .request(Method::POST, "/admin/move-replica?region=3&from=2&to=4")
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "ok": true, "region": 3, "from": 2, "to": 4, "joint": false })
    );
    let bad = c
        .request(
            Method::POST,
            "/admin/move-replica?region=3&from=2&to=4&joint=yes",
        )
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let ok = c
        .request(Method::POST, "/admin/add-learner?node=5&region=3")
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "ok": true, "region": 3, "node": 5, "peer": LEARNER_PEER })
    );
    let ok = c
        .request(Method::POST, "/admin/remove-replica?region=3&node=1")
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);

    let bad = StatusCode::BAD_REQUEST;
    expect_errors(
        &c,
        &[
            // Missing and malformed parameters never reach the node.
            ("/admin/move-replica", bad, "missing query parameter region"),
            (
                "/admin/move-replica?region=3&to=4",
                bad,
                "missing query parameter from",
            ),
            (
                "/admin/move-replica?region=3&from=2",
                bad,
                "missing query parameter to",
            ),
            (
                "/admin/move-replica?region=3&from=2&to=x",
                bad,
                "unsigned integer",
            ),
            (
                "/admin/move-replica?region=3&from=-2&to=4",
                bad,
                "unsigned integer",
            ),
            ("/admin/move-replica?region=3&from=2&to=2", bad, "to itself"),
            (
                "/admin/add-learner?region=3",
                bad,
                "missing query parameter node",
            ),
            (
                "/admin/add-learner?node=4",
                bad,
                "missing query parameter region",
            ),
            ("/admin/add-learner?region=3&node=", bad, "unsigned integer"),
            (
                "/admin/remove-replica?region=3",
                bad,
                "missing query parameter node",
            ),
            (
                "/admin/remove-replica?region=18446744073709551616&node=1",
                bad,
                "unsigned integer",
            ),
            // The node's refusals, its unknown regions and its "retry".
            (
                "/admin/move-replica?region=3&from=5&to=4",
                bad,
                "has no replica on node 5",
            ),
            (
                "/admin/move-replica?region=3&from=1&to=2",
                bad,
                "already has a replica on node 2",
            ),
            (
                "/admin/add-learner?region=3&node=2",
                bad,
                "already has a replica on node 2",
            ),
            (
                "/admin/remove-replica?region=3&node=4",
                bad,
                "has no replica on node 4",
            ),
            (
                "/admin/move-replica?region=99&from=1&to=4",
                StatusCode::NOT_FOUND,
                "region 99 not found",
            ),
            (
                "/admin/add-learner?region=99&node=4",
                StatusCode::NOT_FOUND,
                "region 99 not found",
            ),
            (
                "/admin/remove-replica?region=99&node=1",
                StatusCode::NOT_FOUND,
                "region 99 not found",
            ),
            (
                "/admin/add-learner?region=3&node=0",
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
            ),
            (
                "/admin/remove-replica?region=3&node=0",
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
            ),
        ],
    )
    .await;
    for path in [
        "/admin/move-replica?region=3&from=2&to=4",
        "/admin/add-learner?region=3&node=5",
        "/admin/remove-replica?region=3&node=1",
    ] {
        let get = c.request(Method::GET, path).await.unwrap();
        assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
    assert_eq!(*node.moves.lock(), vec![(3, 2, 4)], "only the good move");
    assert_eq!(*node.learners.lock(), vec![(3, 5)], "only the good learner");
    assert_eq!(*node.removals.lock(), vec![(3, 1)], "only the good removal");
}

#[tokio::test]
async fn ctl_moves_adds_and_removes_replicas() {
    let node = Arc::new(FakeNode::default());
    let addr = start(node.clone()).await;

    let out = run_ctl(
        addr,
        CtlCommand::MoveReplica {
            region: 3,
            from: 2,
            to: 4,
            joint: false,
        },
        false,
    )
    .await
    .unwrap();
    assert_eq!(out, "moved region 3's replica from node 2 to node 4\n");
    let out = run_ctl(addr, CtlCommand::AddLearner { region: 3, node: 5 }, false)
        .await
        .unwrap();
    assert_eq!(
        out,
        format!("added a learner of region 3 on node 5: peer {LEARNER_PEER}\n")
    );
    let out = run_ctl(addr, CtlCommand::RemoveReplica { region: 3, node: 1 }, true)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "ok": true, "region": 3, "node": 1 })
    );
    assert_eq!(*node.moves.lock(), vec![(3, 2, 4)]);
    assert_eq!(*node.learners.lock(), vec![(3, 5)]);
    assert_eq!(*node.removals.lock(), vec![(3, 1)]);
    let out = run_ctl(
        addr,
        CtlCommand::MoveReplica {
            region: 3,
            from: 2,
            to: 5,
            joint: true,
        },
        true,
    )
    .await
    .unwrap();
    let body: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(body["joint"], true);
    assert_eq!(*node.joint_moves.lock(), vec![(3, 2, 5)]);
    assert_eq!(*node.moves.lock(), vec![(3, 2, 4)], "not a plain move");

    let err = run_ctl(addr, CtlCommand::AddLearner { region: 3, node: 2 }, false)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "400 Bad Request: region 3 already has a replica on node 2"
    );
    let err = run_ctl(
        addr,
        CtlCommand::MoveReplica {
            region: 99,
            from: 1,
            to: 4,
            joint: false,
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "404 Not Found: region 99 not found");
}
