//! The HTTP status server and `flotilla ctl` against a status source that records calls.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use flotilla_tools::ctl::{self, CtlArgs, CtlCommand, CtlError};
use flotilla_tools::http::{install_prometheus_recorder, StatusClient};
use flotilla_tools::{
    EpochStatus, MemoryKvService, NodeStatus, RegionStatus, ReplicaRole, RespServer, ServiceError,
    ServiceFuture, StatusServer, StatusSource,
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
        };
        NodeStatus {
            node_id: 2,
            regions: vec![
                region(1, b"", b"g", ReplicaRole::Leader, Some(2)),
                region(2, b"g", b"t\xff", ReplicaRole::Follower, Some(3)),
                region(3, b"t\xff", b"", ReplicaRole::Candidate, None),
            ],
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
        FakeNode::node_status()
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

    let regions = run_ctl(addr, CtlCommand::Regions, false).await.unwrap();
    assert_eq!(
        regions,
        "REGION  START    END      CONF_VER  VERSION  ROLE       TERM  COMMIT  APPLIED  LEADER\n\
         1       \"\"       \"g\"      1         2        leader     7     101     100      2\n\
         2       \"g\"      \"t\\xff\"  1         3        follower   7     102     101      3\n\
         3       \"t\\xff\"  +inf     1         4        candidate  7     103     102      -\n"
    );
    let status = run_ctl(addr, CtlCommand::Status, false).await.unwrap();
    assert!(
        status.starts_with(
            "FIELD          VALUE\nnode           2\nregions        3\nleader         1\n"
        ),
        "{status}"
    );
    assert!(status.contains("candidate      1\n"), "{status}");

    let json = run_ctl(addr, CtlCommand::Regions, true).await.unwrap();
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
