//! Three `flotilla server` processes on 127.0.0.1: under a steady write load the node
//! holding the most leaders is killed with SIGKILL and restarted. No acknowledged write is
//! lost, writes resume within three election timeouts, the restarted node catches up, and
//! SIGTERM stops every node with exit code 0.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODES: u64 = 3;
const REGIONS: usize = 8;
/// The servers' defaults: 50 ms ticks, election timeout random in [10, 20) ticks.
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(20 * 50);

struct Server {
    id: u64,
    raft: u16,
    client: u16,
    status: u16,
    child: Option<Child>,
}

/// A port outside the ephemeral range (see `flotilla_chaos::ports`).
fn free_port() -> u16 {
    flotilla_chaos::ports::free_port().expect("a free port")
}

fn spawn(s: &Server, cluster: &str, dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["server", "--id", &s.id.to_string()])
        .arg("--data-dir")
        .arg(dir.join(format!("n{}", s.id)))
        .args(["--raft-addr", &format!("127.0.0.1:{}", s.raft)])
        .args(["--client-addr", &format!("127.0.0.1:{}", s.client)])
        .args(["--status-addr", &format!("127.0.0.1:{}", s.status)])
        .args([
            "--initial-cluster",
            cluster,
            "--initial-regions",
            &REGIONS.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flotilla server")
}

/// Region id → (role, leader node, applied index), as one node reports it.
type RegionView = BTreeMap<u64, (String, Option<u64>, u64)>;

/// GET /status of one node.
fn status(port: u16) -> Option<RegionView> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let json = body.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let mut out = BTreeMap::new();
    for r in v["regions"].as_array()? {
        out.insert(
            r["id"].as_u64()?,
            (
                r["role"].as_str()?.to_string(),
                r["leader"].as_u64(),
                r["applied"].as_u64()?,
            ),
        );
    }
    Some(out)
}

fn connect(port: u16) -> Option<redis::Connection> {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let con = c.get_connection_with_timeout(Duration::from_secs(2)).ok()?;
    con.set_read_timeout(Some(Duration::from_secs(6))).ok()?;
    Some(con)
}

/// A client that follows "leader on node N" hints, like a region-aware client would.
struct Client {
    ports: HashMap<u64, u16>,
    cons: HashMap<u64, redis::Connection>,
}

impl Client {
    fn run<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd, deadline: Instant) -> Option<T> {
        let mut node = 1;
        while Instant::now() < deadline {
            if !self.cons.contains_key(&node) {
                match connect(self.ports[&node]) {
                    Some(c) => {
                        self.cons.insert(node, c);
                    }
                    None => {
                        node = node % NODES + 1;
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
            }
            let con = self.cons.get_mut(&node).expect("connected");
            match cmd.query::<T>(con) {
                Ok(v) => return Some(v),
                Err(e) => {
                    let text = e.to_string();
                    if let Some(n) = text.split("leader on node ").nth(1).and_then(|t| {
                        t.chars()
                            .take_while(|c| c.is_ascii_digit())
                            .collect::<String>()
                            .parse::<u64>()
                            .ok()
                    }) {
                        node = n;
                    } else {
                        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                            self.cons.remove(&node);
                        }
                        node = node % NODES + 1;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        None
    }
}

fn leaders_per_node(servers: &[Server]) -> HashMap<u64, usize> {
    let mut per = HashMap::new();
    for s in servers.iter().filter(|s| s.child.is_some()) {
        if let Some(st) = status(s.status) {
            for (role, _, _) in st.values() {
                if role == "leader" {
                    *per.entry(s.id).or_insert(0) += 1;
                }
            }
        }
    }
    per
}

#[test]
fn kill_the_busiest_node_under_load_and_restart_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<Server> = (1..=NODES)
        .map(|id| Server {
            id,
            raft: free_port(),
            client: free_port(),
            status: free_port(),
            child: None,
        })
        .collect();
    let cluster: String = servers
        .iter()
        .map(|s| format!("{}=127.0.0.1:{}", s.id, s.raft))
        .collect::<Vec<_>>()
        .join(",");
    for s in servers.iter_mut() {
        s.child = Some(spawn(s, &cluster, dir.path()));
    }
    let mut client = Client {
        ports: servers.iter().map(|s| (s.id, s.client)).collect(),
        cons: HashMap::new(),
    };

    // Every region gets a leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    while leaders_per_node(&servers).values().sum::<usize>() < REGIONS {
        assert!(
            Instant::now() < deadline,
            "no leaders: {:?}",
            leaders_per_node(&servers)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let key = |i: u32| format!("{:02x}-key-{i}", (i * 37) % 256);
    let mut acked = Vec::new();
    for i in 0..200u32 {
        let ok: Option<()> = client.run(
            redis::cmd("SET").arg(key(i)).arg(i),
            Instant::now() + Duration::from_secs(10),
        );
        assert!(ok.is_some(), "write {i} not acknowledged before the fault");
        acked.push(i);
    }

    // Kill the node that leads the most regions, mid-load.
    let per = leaders_per_node(&servers);
    let (&victim, _) = per.iter().max_by_key(|(_, &c)| c).expect("some leader");
    let v = servers.iter_mut().find(|s| s.id == victim).unwrap();
    let mut child = v.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = Instant::now();
    client.cons.remove(&victim);

    // Writes resume: every region answers a write within three election timeouts.
    let mut resumed_at = Instant::now();
    for i in 200..400u32 {
        let ok: Option<()> = client.run(
            redis::cmd("SET").arg(key(i)).arg(i),
            Instant::now() + Duration::from_secs(15),
        );
        assert!(ok.is_some(), "write {i} not acknowledged after the kill");
        acked.push(i);
        if i == 200 + REGIONS as u32 * 8 {
            resumed_at = Instant::now();
        }
    }
    let outage = resumed_at - killed_at;
    assert!(
        outage < 3 * ELECTION_TIMEOUT_MAX + Duration::from_secs(1),
        "writes took {outage:?} to resume everywhere"
    );

    // Restart it; it catches up and nothing acknowledged is lost.
    let v = servers.iter_mut().find(|s| s.id == victim).unwrap();
    v.child = Some(spawn(v, &cluster, dir.path()));
    for &i in &acked {
        let got: Option<String> = client.run(
            redis::cmd("GET").arg(key(i)),
            Instant::now() + Duration::from_secs(15),
        );
        assert_eq!(
            got.as_deref(),
            Some(i.to_string().as_str()),
            "acknowledged write {i} lost"
        );
    }
    let victim_status = servers.iter().find(|s| s.id == victim).unwrap().status;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leader_commit = BTreeMap::new();
        for s in servers.iter().filter(|s| s.id != victim) {
            if let Some(st) = status(s.status) {
                for (id, (role, _, applied)) in st {
                    if role == "leader" {
                        leader_commit.insert(id, applied);
                    }
                }
            }
        }
        let caught_up = status(victim_status).is_some_and(|st| {
            leader_commit.len() + st.values().filter(|(r, _, _)| r == "leader").count() == REGIONS
                && leader_commit
                    .iter()
                    .all(|(id, &a)| st.get(id).is_some_and(|(_, _, mine)| *mine >= a))
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted node {victim} did not catch up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGTERM: every node moves its leaderships away and exits 0.
    for s in servers.iter_mut() {
        let child = s.child.as_mut().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for s in servers.iter_mut() {
        let mut child = s.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {} did not stop on SIGTERM", s.id);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(code.success(), "node {} exited with {code}", s.id);
    }
}
