//! `flotilla cluster` as a user runs it: it starts the servers, prints their addresses and a
//! `redis-cli` line that works, shows leaders and ops/s, stops every server on SIGINT (or
//! SIGTERM) with exit code 0, and restarts the same cluster from its data directory. Bad
//! starts (a taken port, a data directory of another shape, a node that cannot start) are
//! clear errors that leave no server running.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A debug build of three nodes on a loaded 2-core machine can take a while to elect.
const START_WAIT: Duration = Duration::from_secs(120);
/// The command's own bound on stopping is 15 s; allow for a slow machine on top.
const STOP_WAIT: Duration = Duration::from_secs(40);

/// A base port whose layout (three ports at base + 10 × i for each node) is free now,
/// outside the ephemeral range (see `flotilla_chaos::ports`).
fn free_base_port(nodes: u16) -> u16 {
    let layout: Vec<u16> = (0..nodes)
        .flat_map(|i| (0..3).map(move |p| 10 * i + p))
        .collect();
    flotilla_chaos::ports::free_base(&layout).expect("a free port range")
}

/// A running `flotilla cluster`; its stdout lines arrive on `lines`.
struct ClusterProcess {
    child: Option<Child>,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl ClusterProcess {
    fn start(args: &[String]) -> ClusterProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("cluster")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flotilla cluster");
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        ClusterProcess {
            child: Some(child),
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Reads stdout until a line satisfies `f` (answered) or `wait` passes (panics with the
    /// output so far).
    fn wait_for_line(&mut self, wait: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if f(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no such line within {wait:?}; output:\n{}",
                        self.stdout.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(STOP_WAIT);
                    panic!(
                        "flotilla cluster ended ({status}) before such a line; output:\n{}",
                        self.stdout.join("\n")
                    )
                }
            }
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} {pid} failed");
    }

    /// Waits for the command to exit; collects the rest of its stdout.
    fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + wait;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("flotilla cluster did not exit within {wait:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.stdout.push(line);
        }
        status
    }

    fn output(&self) -> String {
        self.stdout.join("\n")
    }

    /// Everything the command wrote to stderr (call after it exited).
    fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ClusterProcess {
    /// On a failed test: SIGTERM (the command stops its servers), then SIGKILL.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM".to_string(), child.id().to_string()])
                .status();
            let deadline = Instant::now() + STOP_WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The node table the command printed: node id → (RESP port, HTTP port).
fn node_table(lines: &[String]) -> BTreeMap<u64, (u16, u16)> {
    let port = |addr: &str| addr.strip_prefix("127.0.0.1:")?.parse::<u16>().ok();
    lines
        .iter()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let id = cells.first()?.parse::<u64>().ok()?;
            Some((id, (port(cells.get(1)?)?, port(cells.get(2)?)?)))
        })
        .collect()
}

/// The port of the printed `try: redis-cli -p PORT set …` line.
fn redis_cli_port(line: &str) -> u16 {
    line.split("redis-cli -p ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// Runs `cmd` starting at `port`; a `TRYAGAIN … leader on node N` answer sends it to node
/// N's port (leaders move while the balancer works; forwarding is not built yet).
fn run_following_leader<T: redis::FromRedisValue>(
    cmd: &redis::Cmd,
    mut port: u16,
    nodes: &BTreeMap<u64, (u16, u16)>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        let result = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|mut con| {
                con.set_read_timeout(Some(Duration::from_secs(6)))?;
                cmd.query::<T>(&mut con)
            });
        match result {
            Ok(v) => return v,
            Err(e) => {
                last = e.to_string();
                if let Some(n) = last.split("leader on node ").nth(1).and_then(|t| {
                    t.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                        .parse::<u64>()
                        .ok()
                }) {
                    port = nodes.get(&n).map_or(port, |p| p.0);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    panic!("command did not succeed: {last}");
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// Sums `N leaders` over the nodes of one view line (`[ 3s] node 1: 2 leaders 0 ops/s | …`).
fn leaders_in_view_line(line: &str) -> Option<usize> {
    if !line.starts_with('[') {
        return None;
    }
    let mut sum = 0;
    for part in line.split(" | ").filter(|p| p.contains(" leaders ")) {
        sum += part
            .split(": ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse::<usize>()
            .ok()?;
    }
    Some(sum)
}

/// `all: N ops/s` of one view line.
fn ops_in_view_line(line: &str) -> Option<f64> {
    line.split("all: ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cluster_args(dir: &Path, base: u16, nodes: u16, regions: usize) -> Vec<String> {
    vec![
        "--nodes".into(),
        nodes.to_string(),
        "--regions".into(),
        regions.to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--base-port".into(),
        base.to_string(),
    ]
}

#[test]
fn cluster_serves_stops_on_sigint_and_restarts_from_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port(3);
    let args = cluster_args(dir.path(), base, 3, 4);

    let mut cluster = ClusterProcess::start(&args);
    let try_line = cluster.wait_for_line(START_WAIT, |l| l.contains("redis-cli -p "));
    let nodes = node_table(&cluster.stdout);
    assert_eq!(
        nodes,
        (1..=3u16)
            .map(|i| (
                u64::from(i),
                (base + 10 * (i - 1) + 1, base + 10 * (i - 1) + 2)
            ))
            .collect(),
        "node table:\n{}",
        cluster.output()
    );
    let port = redis_cli_port(&try_line);
    assert!(nodes.values().any(|p| p.0 == port), "{try_line}");

    let set: String =
        run_following_leader(redis::cmd("SET").arg("hello").arg("world"), port, &nodes);
    assert_eq!(set, "OK");
    let got: String = run_following_leader(redis::cmd("GET").arg("hello"), port, &nodes);
    assert_eq!(got, "world");

    // The live view: our commands seen as ops/s (the counters' first reading is taken
    // before the banner, so they show in one line however fast they were sent), and every
    // region led by some node (steady: any later line shows it).
    cluster.wait_for_line(Duration::from_secs(20), |l| {
        ops_in_view_line(l).is_some_and(|ops| ops > 0.0)
    });
    cluster.wait_for_line(Duration::from_secs(20), |l| {
        leaders_in_view_line(l) == Some(4)
    });

    cluster.signal("INT");
    let status = cluster.wait_exit(STOP_WAIT);
    let out = cluster.output();
    assert!(status.success(), "exit {status}; output:\n{out}");
    assert!(out.contains("SIGINT: stopping the cluster"), "{out}");
    for id in 1..=3 {
        assert!(
            out.contains(&format!("node {id} stopped (exit status: 0)")),
            "node {id} did not stop cleanly:\n{out}"
        );
    }
    for (id, &(resp, http)) in &nodes {
        assert!(!accepts(resp), "node {id}'s RESP port still accepts");
        assert!(!accepts(http), "node {id}'s HTTP port still accepts");
    }
    for id in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("n{id}.log"))).unwrap();
        assert!(log.contains("serving"), "n{id}.log: {log}");
    }
    drop(cluster);

    // Same data directory, same flags: the same cluster, with its data.
    let mut cluster = ClusterProcess::start(&args);
    let try_line = cluster.wait_for_line(START_WAIT, |l| l.contains("redis-cli -p "));
    let got: String = run_following_leader(
        redis::cmd("GET").arg("hello"),
        redis_cli_port(&try_line),
        &nodes,
    );
    assert_eq!(got, "world", "the restarted cluster lost its data");
    cluster.signal("TERM");
    let status = cluster.wait_exit(STOP_WAIT);
    let out = cluster.output();
    assert!(status.success(), "exit {status}; output:\n{out}");
    assert!(out.contains("SIGTERM: stopping the cluster"), "{out}");
    for (id, &(resp, _)) in &nodes {
        assert!(!accepts(resp), "node {id}'s RESP port still accepts");
    }
}

#[test]
fn seconds_stops_the_cluster_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port(1);
    let mut args = cluster_args(dir.path(), base, 1, 2);
    args.extend(["--seconds".to_string(), "1".to_string()]);
    let mut cluster = ClusterProcess::start(&args);
    let status = cluster.wait_exit(START_WAIT + STOP_WAIT);
    let out = cluster.output();
    assert!(status.success(), "exit {status}; output:\n{out}");
    assert!(out.contains("1s are up: stopping the cluster"), "{out}");
    assert!(out.contains("node 1 stopped (exit status: 0)"), "{out}");
    assert!(!accepts(base + 1));
}

#[test]
fn a_taken_port_is_an_error_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port(3);
    let _taken = TcpListener::bind(("127.0.0.1", base + 11)).unwrap();
    let mut cluster = ClusterProcess::start(&cluster_args(dir.path(), base, 3, 4));
    let status = cluster.wait_exit(STOP_WAIT);
    assert_eq!(status.code(), Some(1));
    let err = cluster.stderr();
    assert!(
        err.contains(&format!("port {} (node 2 RESP)", base + 11)) && err.contains("--base-port"),
        "{err}"
    );
    assert!(!dir.path().join("n1.log").exists(), "a node was started");
    assert!(!accepts(base + 1), "node 1 serves");
}

#[test]
fn a_data_dir_of_another_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.toml"), "nodes = 3\nregions = 8\n").unwrap();
    let base = free_base_port(3);
    let mut cluster = ClusterProcess::start(&cluster_args(dir.path(), base, 3, 4));
    let status = cluster.wait_exit(STOP_WAIT);
    assert_eq!(status.code(), Some(1));
    let err = cluster.stderr();
    assert!(err.contains("run with --nodes 3 --regions 8"), "{err}");
    assert!(!dir.path().join("n1.log").exists(), "a node was started");
}

#[test]
fn a_node_that_cannot_start_is_reported_with_its_log_and_the_others_are_stopped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.toml"), "nodes = 3\nregions = 4\n").unwrap();
    // Node 2's data directory is a file: its server fails at once.
    std::fs::write(dir.path().join("n2"), "not a directory").unwrap();
    let base = free_base_port(3);
    let mut cluster = ClusterProcess::start(&cluster_args(dir.path(), base, 3, 4));
    let status = cluster.wait_exit(START_WAIT + STOP_WAIT);
    assert_eq!(status.code(), Some(1));
    let out = cluster.output();
    let err = cluster.stderr();
    let log = dir.path().join("n2.log");
    assert!(
        err.contains("node 2 exited (exit status: 1) before serving")
            && err.contains(&log.display().to_string())
            && err.contains("flotilla server:"),
        "stderr:\n{err}\nstdout:\n{out}"
    );
    for port in [base + 1, base + 21] {
        assert!(!accepts(port), "port {port} still accepts; stdout:\n{out}");
    }
}
