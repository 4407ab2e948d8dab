//! Three `flotilla server` processes bootstrapped together and a fourth started with
//! `--join` through node 1's status address: node 1's `/status` lists node 4 alive with
//! its addresses, `flotilla ctl move-replica` moves a replica of region 1 to node 4, and
//! node 4's RESP port serves that region's keys. Restarting node 4 with `--join` again
//! keeps its directory; starting its data directory with `--initial-cluster` is refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGIONS: usize = 4;

struct Server {
    id: u64,
    raft: u16,
    client: u16,
    status: u16,
}

/// A port outside the ephemeral range (see `flotilla_chaos::ports`).
fn free_port() -> u16 {
    flotilla_chaos::ports::free_port().expect("a free port")
}

/// Starts `s` with `cluster_flag` (`--initial-cluster …` or `--join …`).
fn spawn(s: &Server, cluster_flag: [&str; 2], dir: &std::path::Path) -> Child {
    spawn_with(s, cluster_flag, dir, Stdio::null())
}

/// [`spawn`], its standard error going to `stderr`.
fn spawn_with(s: &Server, cluster_flag: [&str; 2], dir: &std::path::Path, stderr: Stdio) -> Child {
    // The balancer off: this test moves region 1 to node 4 by hand, and checks that move.
    spawn_configured(
        s,
        cluster_flag,
        dir,
        stderr,
        "gossip_interval_ms = 200\nbalance = false\n",
    )
}

/// Starts `s` with the settings `config` (TOML).
fn spawn_configured(
    s: &Server,
    cluster_flag: [&str; 2],
    dir: &std::path::Path,
    stderr: Stdio,
    config_text: &str,
) -> Child {
    let config = dir.join(format!("flotilla-{}.toml", s.id));
    std::fs::write(&config, config_text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["server", "--id", &s.id.to_string()])
        .arg("--data-dir")
        .arg(dir.join(format!("n{}", s.id)))
        .args(["--raft-addr", &format!("127.0.0.1:{}", s.raft)])
        .args(["--client-addr", &format!("127.0.0.1:{}", s.client)])
        .args(["--status-addr", &format!("127.0.0.1:{}", s.status)])
        .args(cluster_flag)
        .args(["--initial-regions", &REGIONS.to_string()])
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start flotilla server")
}

/// GET /status of one node, as JSON.
fn status(port: u16) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    serde_json::from_str(body.split("\r\n\r\n").nth(1)?).ok()
}

fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Four servers' ids (1–4) and free ports.
fn four_servers() -> Vec<Server> {
    (1..=4)
        .map(|id| Server {
            id,
            raft: free_port(),
            client: free_port(),
            status: free_port(),
        })
        .collect()
}

/// The `--initial-cluster` value of `servers`.
fn initial_cluster(servers: &[Server]) -> String {
    servers
        .iter()
        .map(|s| format!("{}=127.0.0.1:{}", s.id, s.raft))
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits until the node with status port `status_port` lists every region with a leader.
fn wait_for_leaders(status_port: u16, limit: Duration) {
    wait_for(limit, "leaders of every region", || {
        status(status_port).is_some_and(|v| {
            v["regions"]
                .as_array()
                .is_some_and(|r| r.len() == REGIONS && r.iter().all(|r| r["leader"].is_u64()))
        })
    });
}

fn connect(port: u16) -> redis::Connection {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let con = c
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("RESP connection");
    con.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    con
}

fn ctl(status_port: u16, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["ctl", "--addr", &format!("127.0.0.1:{status_port}")])
        .args(args)
        .output()
        .expect("run flotilla ctl")
}

fn stop(mut c: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// One `FLOTILLA.REGIONS` row: id, start, end, version, conf_ver, leader.
type RouteRow = (u64, Vec<u8>, Vec<u8>, u64, u64, Option<u64>);

/// A key of region 1 (the first of four even regions).
const KEY: &[u8] = b"\x01joined";

#[test]
fn a_fourth_server_joins_and_serves_a_moved_replica() {
    let dir = tempfile::tempdir().unwrap();
    let servers = four_servers();
    let cluster = initial_cluster(&servers[..3]);
    let mut children: Vec<Child> = servers[..3]
        .iter()
        .map(|s| spawn(s, ["--initial-cluster", &cluster], dir.path()))
        .collect();
    wait_for_leaders(servers[0].status, Duration::from_secs(10));
    // A write through node 1, before node 4 exists.
    let mut c1 = connect(servers[0].client);
    let _: () = redis::cmd("SET")
        .arg(KEY)
        .arg("before")
        .query(&mut c1)
        .expect("SET through node 1");

    let join = ["--join", &format!("127.0.0.1:{}", servers[0].status)];
    children.push(spawn(&servers[3], join, dir.path()));
    wait_for(
        Duration::from_secs(10),
        "node 1 to list node 4 alive",
        || {
            status(servers[0].status).is_some_and(|v| {
                v["nodes"].as_array().is_some_and(|nodes| {
                    nodes.len() == 4
                        && nodes.iter().any(|n| {
                            n["id"] == 4
                                && n["alive"] == true
                                && n["state"] == "up"
                                && n["client_addr"] == format!("127.0.0.1:{}", servers[3].client)
                        })
                })
            })
        },
    );
    // Node 4 knows every region (from gossip) though it holds none yet.
    wait_for(
        Duration::from_secs(10),
        "node 4 to know every region",
        || {
            status(servers[3].status).is_some_and(|v| {
                v["cluster_regions"]
                    .as_array()
                    .is_some_and(|r| r.len() == REGIONS)
                    && v["regions"].as_array().is_some_and(|r| r.is_empty())
            })
        },
    );

    // Over RESP too: its own table is empty, the cluster's has every region and leader.
    let mut c4 = connect(servers[3].client);
    let own: Vec<redis::Value> = redis::cmd("FLOTILLA.REGIONS").query(&mut c4).unwrap();
    assert!(own.is_empty());
    let all: Vec<RouteRow> = redis::cmd("FLOTILLA.REGIONS")
        .arg("ALL")
        .query(&mut c4)
        .unwrap();
    assert_eq!(all.len(), REGIONS, "{all:?}");
    assert!(
        all.iter().all(|r| r.5.is_some()),
        "every leader known: {all:?}"
    );
    assert_eq!((all[0].0, all[0].1.as_slice()), (1, &b""[..]));

    // Holding nothing, node 4 serves any key: it forwards each request to a node with
    // the key's region. A read, and an MSET over the first and the last region.
    let got: Option<Vec<u8>> = redis::cmd("GET")
        .arg(KEY)
        .query(&mut c4)
        .expect("GET forwarded by node 4");
    assert_eq!(got.as_deref(), Some(&b"before"[..]));
    let far = &b"\xff-far"[..];
    let _: () = redis::cmd("MSET")
        .arg(KEY)
        .arg("before")
        .arg(far)
        .arg("far")
        .query(&mut c4)
        .expect("MSET forwarded by node 4");
    let got: Option<Vec<u8>> = redis::cmd("GET").arg(far).query(&mut c1).unwrap();
    assert_eq!(got.as_deref(), Some(&b"far"[..]));

    let out = ctl(servers[0].status, &["move-replica", "1", "3", "4"]);
    assert!(
        out.status.success(),
        "ctl move-replica: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Option<Vec<u8>> = redis::cmd("GET")
        .arg(KEY)
        .query(&mut c4)
        .expect("GET through node 4");
    assert_eq!(got.as_deref(), Some(&b"before"[..]));
    let _: () = redis::cmd("SET")
        .arg(KEY)
        .arg("after")
        .query(&mut c4)
        .expect("SET through node 4");
    let got: Option<Vec<u8>> = redis::cmd("GET").arg(KEY).query(&mut c1).unwrap();
    assert_eq!(got.as_deref(), Some(&b"after"[..]));

    // ctl status shows the directory. (remove-node's refusals, among them leaving fewer
    // than three up, are checked in node_directory_http.rs.)
    let out = ctl(servers[0].status, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NODE") && text.contains("up"), "{text}");
    // SNAPSHOTS comes from each node's own /status: all four answer at their listed
    // status addresses, so none shows `?`.
    let table = text.split("\n\n").nth(1).expect("a nodes table");
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{text}");
    for row in rows {
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_ne!(cells[7], "?", "{text}");
    }
    std::mem::drop(c4);

    // Restarted with --join again: its directory is on disk; --initial-cluster is refused.
    let n4 = children.pop().unwrap();
    stop(n4);
    let with_4 = format!("{cluster},4=127.0.0.1:{}", servers[3].raft);
    let wrong = spawn_with(
        &servers[3],
        ["--initial-cluster", &with_4],
        dir.path(),
        Stdio::piped(),
    );
    let out = wrong.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("joined a running cluster"), "{err}");
    children.push(spawn(&servers[3], join, dir.path()));
    wait_for(Duration::from_secs(10), "node 4 to serve again", || {
        let Ok(c) = redis::Client::open(format!("redis://127.0.0.1:{}/", servers[3].client)) else {
            return false;
        };
        let Ok(mut con) = c.get_connection_with_timeout(Duration::from_secs(1)) else {
            return false;
        };
        redis::cmd("GET")
            .arg(KEY)
            .query::<Option<Vec<u8>>>(&mut con)
            .is_ok_and(|v| v.as_deref() == Some(&b"after"[..]))
    });
    for c in children {
        stop(c);
    }
}

/// Replica counts per node from node `port`'s `/status` (`nodes`), if every region there
/// has three voters and no learner.
fn settled_replicas(port: u16) -> Option<Vec<(u64, u64, String)>> {
    let v = status(port)?;
    let regions = v["cluster_regions"].as_array()?;
    let settled = regions.iter().all(|r| {
        r["peers"]
            .as_array()
            .is_some_and(|p| p.len() == 3 && p.iter().all(|p| p["role"] == "voter"))
    });
    if !settled || regions.is_empty() {
        return None;
    }
    let nodes = v["nodes"].as_array()?;
    Some(
        nodes
            .iter()
            .map(|n| {
                (
                    n["id"].as_u64().unwrap_or(0),
                    n["replicas"].as_u64().unwrap_or(0),
                    n["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

/// With the balancer on (the server's default), a node that joins gets its share of the
/// replicas without anyone moving them by hand; removed with `ctl remove-node`, it is
/// drained and retired, and its keys stay readable.
#[test]
fn the_balancer_fills_a_joined_server_and_drains_it_when_removed() {
    const BALANCED: &str = "gossip_interval_ms = 200\nbalance = true\n";
    let dir = tempfile::tempdir().unwrap();
    let servers = four_servers();
    let cluster = initial_cluster(&servers[..3]);
    let mut children: Vec<Child> = servers[..3]
        .iter()
        .map(|s| {
            spawn_configured(
                s,
                ["--initial-cluster", &cluster],
                dir.path(),
                Stdio::null(),
                BALANCED,
            )
        })
        .collect();
    wait_for_leaders(servers[0].status, Duration::from_secs(15));
    let mut c1 = connect(servers[0].client);
    let keys: Vec<Vec<u8>> = (0..=255u8).step_by(8).map(|b| vec![b, b'k']).collect();
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(k).query(&mut c1).unwrap();
    }

    let join = format!("127.0.0.1:{}", servers[0].status);
    children.push(spawn_configured(
        &servers[3],
        ["--join", &join],
        dir.path(),
        Stdio::null(),
        BALANCED,
    ));
    // Four regions of three replicas over four nodes: three each.
    wait_for(Duration::from_secs(60), "node 4 to get its share", || {
        settled_replicas(servers[0].status).is_some_and(|nodes| {
            nodes.len() == 4 && nodes.iter().all(|(_, replicas, _)| *replicas == 3)
        })
    });
    let mut c4 = connect(servers[3].client);
    for k in &keys {
        let got: Option<Vec<u8>> = redis::cmd("GET").arg(k).query(&mut c4).unwrap();
        assert_eq!(got.as_deref(), Some(k.as_slice()));
    }
    drop(c4);

    let out = ctl(servers[0].status, &["remove-node", "4"]);
    assert!(
        out.status.success(),
        "ctl remove-node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        Duration::from_secs(60),
        "node 4 to be drained and removed",
        || {
            settled_replicas(servers[0].status).is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|(id, replicas, state)| *id == 4 && *replicas == 0 && state == "removed")
            })
        },
    );
    for k in &keys {
        let got: Option<Vec<u8>> = redis::cmd("GET").arg(k).query(&mut c1).unwrap();
        assert_eq!(got.as_deref(), Some(k.as_slice()));
    }
    for c in children {
        stop(c);
    }
}
