//! The `flotilla server` processes of a run: start, SIGKILL, restart, SIGSTOP/SIGCONT,
//! `/status`, leader transfers.
//!
//! Every node gets three fixed local ports (raft, RESP, HTTP) picked at start, its own data
//! directory `DIR/nN`, and a log file `DIR/nN.log` that every restart appends to (with a
//! `--- chaos: ...` line before each start). Its `--initial-cluster` names the proxy of the
//! pair (this node, other node) for every other node ([`crate::proxy`]).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Longest wait for one status request: the nodes are on this machine, so a slower answer
/// means the node is paused or dead.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);

/// A node's ports.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    /// Raft traffic (the proxies forward here).
    pub raft: u16,
    /// RESP clients.
    pub client: u16,
    /// HTTP status and admin.
    pub status: u16,
}

/// One server process, running or not.
pub struct Node {
    /// Node id, from 1.
    pub id: u64,
    /// Its ports.
    pub ports: NodePorts,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log file (stdout and stderr of every start).
    pub log: PathBuf,
    /// `--initial-cluster` as this node sees the others (through the proxies).
    pub initial_cluster: String,
    child: Option<Child>,
    paused: bool,
}

/// One region as a node reports it in `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionStatus {
    /// `leader`, `follower`, `candidate`, ...
    pub role: String,
    /// The leader the node knows of.
    pub leader: Option<u64>,
    /// Applied index.
    pub applied: u64,
}

/// A port nobody listens on now. (Another process may take it before the node binds it;
/// the node then fails to start and the run reports that with the node's log.)
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Node {
    /// A node that is not started yet.
    pub fn new(id: u64, ports: NodePorts, dir: &Path) -> Node {
        Node {
            id,
            ports,
            data_dir: dir.join(format!("n{id}")),
            log: dir.join(format!("n{id}.log")),
            initial_cluster: String::new(),
            child: None,
            paused: false,
        }
    }

    /// Its raft address (behind the proxies).
    pub fn raft_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.raft))
    }

    /// Its RESP address.
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.client)
    }

    /// Whether its process is running (possibly paused).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it is stopped with SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Starts the process (a no-op when it runs), appending its output to its log.
    pub fn start(
        &mut self,
        flotilla: &Path,
        regions: usize,
        config: &Path,
        why: &str,
    ) -> std::io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        writeln!(log, "--- chaos: start node {} ({why})", self.id)?;
        let child = Command::new(flotilla)
            .args(["server", "--id", &self.id.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--raft-addr", &format!("127.0.0.1:{}", self.ports.raft)])
            .args(["--client-addr", &self.client_addr()])
            .args(["--status-addr", &format!("127.0.0.1:{}", self.ports.status)])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-regions", &regions.to_string()])
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// SIGKILL and reap. A paused process dies as well.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGTERM, then SIGKILL after `wait`; answers whether it exited 0 in time.
    pub fn terminate(&mut self, wait: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if self.paused {
            signal(&child, libc::SIGCONT);
            self.paused = false;
        }
        signal(&child, libc::SIGTERM);
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP: the process stops, its sockets stay open (peers see silence).
    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGSTOP);
            self.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGCONT);
        }
        self.paused = false;
    }

    /// Whether the process exited by itself (answers its exit status then).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// `/status` of the node: region id → role, leader, applied. `None` when it does not
    /// answer.
    pub fn status(&self) -> Option<BTreeMap<u64, RegionStatus>> {
        let body = http(self.ports.status, "GET", "/status")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let mut out = BTreeMap::new();
        for r in v["regions"].as_array()? {
            out.insert(
                r["id"].as_u64()?,
                RegionStatus {
                    role: r["role"].as_str()?.to_string(),
                    leader: r["leader"].as_u64(),
                    applied: r["applied"].as_u64()?,
                },
            );
        }
        Some(out)
    }

    /// Asks this node to hand `region`'s leadership to `to`; answers the HTTP body.
    pub fn transfer_leader(&self, region: u64, to: u64) -> Option<String> {
        http(
            self.ports.status,
            "POST",
            &format!("/admin/transfer-leader?region={region}&node={to}"),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGCONT);
        }
        self.kill();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid this process spawned and has not reaped yet (the Child is
    // still held), so the pid cannot have been reused.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; answers the body of any response.
fn http(port: u16, method: &str, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, STATUS_TIMEOUT).ok()?;
    s.set_read_timeout(Some(STATUS_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(STATUS_TIMEOUT)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}
