//! The RESP server in front of a real node: a one-node cluster of 8 regions (engine on disk,
//! raft through the store loop) serves redis commands whose keys span every region.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_engine::EngineConfig;
use flotilla_region::node::{Node, NodeConfig, StoreConfig};
use flotilla_tools::{NodeService, RespServer, StatusSource};
use flotilla_transport::MemoryNetwork;

const REGIONS: usize = 8;

/// Keys whose first byte spreads them over all 8 regions.
fn key(i: u32) -> Vec<u8> {
    let mut k = vec![(i * 37 % 256) as u8];
    k.extend_from_slice(format!("key-{i}").as_bytes());
    k
}

#[test]
fn redis_commands_through_a_real_node() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let net = MemoryNetwork::new(1);
    let (transport, inbound) = net.join(1, 64);
    let dir = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        store: StoreConfig {
            node_id: 1,
            ..Default::default()
        },
        data_dir: dir.path().to_path_buf(),
        engine: EngineConfig::default(),
        initial_nodes: vec![1],
        initial_regions: REGIONS,
        request_timeout: Duration::from_secs(5),
        cluster: Default::default(),
    };
    let node = Node::start(cfg, Arc::new(transport), inbound).expect("node starts");
    let service = runtime.block_on(async { NodeService::new(node.handle(), 42) });

    // A single voter elects itself; wait until every region has its leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = service.status();
        if st.regions.len() == REGIONS && st.regions.iter().all(|r| r.leader == Some(1)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regions without a leader: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let server = runtime
        .block_on(RespServer::bind("127.0.0.1:0", Arc::new(service.clone())))
        .unwrap();
    let addr = server.local_addr().unwrap();
    runtime.spawn(server.serve(std::future::pending()));
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    for i in 0..64 {
        let () = redis::cmd("SET")
            .arg(key(i))
            .arg(format!("v{i}"))
            .query(&mut con)
            .unwrap();
    }
    for i in 0..64 {
        let v: String = redis::cmd("GET").arg(key(i)).query(&mut con).unwrap();
        assert_eq!(v, format!("v{i}"));
    }
    // Multi-key commands span regions: one write per region.
    let mut mset = redis::cmd("MSET");
    for i in 100..120 {
        mset.arg(key(i)).arg("m");
    }
    let () = mset.query(&mut con).unwrap();
    let deleted: u64 = redis::cmd("DEL")
        .arg(key(100))
        .arg(key(101))
        .arg(key(5000))
        .query(&mut con)
        .unwrap();
    assert_eq!(deleted, 2);
    let n: i64 = redis::cmd("INCRBY")
        .arg(key(7000))
        .arg(40)
        .query(&mut con)
        .unwrap();
    let n2: i64 = redis::cmd("INCR").arg(key(7000)).query(&mut con).unwrap();
    assert_eq!((n, n2), (40, 41));
    let nx: Option<String> = redis::cmd("SET")
        .arg(key(0))
        .arg("x")
        .arg("NX")
        .query(&mut con)
        .unwrap();
    assert_eq!(nx, None, "NX refuses an existing key");
    let err = redis::cmd("INCR")
        .arg(key(0))
        .query::<i64>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("not an integer"), "{err}");

    // A range read walks the regions in key order.
    let all: Vec<Vec<u8>> = redis::cmd("RANGE")
        .arg("")
        .arg("")
        .arg("LIMIT")
        .arg(1000)
        .query(&mut con)
        .unwrap();
    let keys: Vec<&Vec<u8>> = all.iter().step_by(2).collect();
    assert_eq!(keys.len(), 64 + 18 + 1, "every live key once");
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order");

    // Many writes in flight at once, all on one key: each needs its own session, or a
    // later sequence applied first makes an earlier one stale and it fails.
    let incrs: Vec<_> = (0..400)
        .map(|_| {
            let svc = service.clone();
            runtime.spawn(async move {
                flotilla_tools::KvService::incr_by(
                    &svc,
                    bytes::Bytes::from(key(9000)),
                    1,
                    None,
                    None,
                )
                .await
            })
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for h in incrs {
        let v = runtime
            .block_on(h)
            .unwrap()
            .expect("every concurrent INCR succeeds");
        assert!(seen.insert(v), "INCR answered {v} twice");
    }
    assert_eq!(seen, (1..=400).collect(), "each INCR applied exactly once");
    // Writes are submitted when called, in call order, even if awaited the other way round
    // (what lets a pipelining connection keep many in flight); each has its own session, so
    // neither is refused as stale.
    let first =
        flotilla_tools::KvService::incr_by(&service, bytes::Bytes::from(key(9001)), 1, None, None);
    let second =
        flotilla_tools::KvService::incr_by(&service, bytes::Bytes::from(key(9001)), 10, None, None);
    assert_eq!(runtime.block_on(second), Ok(11), "applied after the first");
    assert_eq!(
        runtime.block_on(first),
        Ok(1),
        "the earlier write is not stale"
    );

    // redis-benchmark (Debian's redis-tools), when installed: pipelined SETs and GETs from
    // many connections complete without a single error reply.
    if std::process::Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = std::process::Command::new("redis-benchmark")
            .args([
                "-p",
                &addr.port().to_string(),
                "-t",
                "set,get",
                "-n",
                "20000",
            ])
            .args(["-P", "16", "-c", "16", "-r", "100000", "-d", "16", "-e"])
            .output()
            .expect("redis-benchmark runs");
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n")
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "redis-benchmark failed: {text}");
        assert!(!text.contains("Error from server"), "error replies: {text}");
        assert!(text.contains("SET") && text.contains("GET"), "{text}");
    }

    node.stop();
}
