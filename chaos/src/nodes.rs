//! The `flotilla server` processes of a run: start, SIGKILL, restart, SIGSTOP/SIGCONT,
//! `/status`, leader transfers, region splits and merges.
//!
//! Every node gets three fixed local ports (raft, RESP, HTTP) picked at start, its own data
//! directory `DIR/nN`, and a log file `DIR/nN.log` that every restart appends to (with a
//! `--- chaos: ...` line before each start). Its `--initial-cluster` names the proxy of the
//! pair (this node, other node) for every other node ([`crate::proxy`]).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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
    /// First key of the region's range (inclusive), as bytes.
    pub start_key: Vec<u8>,
    /// End of the range (exclusive); empty means the end of the key space.
    pub end_key: Vec<u8>,
    /// The epoch's `version` (grows on split and merge).
    pub version: u64,
    /// The epoch's `conf_ver` (grows on membership changes).
    pub conf_ver: u64,
}

/// What an admin call (`POST /admin/...`) answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAnswer {
    /// An HTTP answer: its status code and body (on one line).
    Http {
        /// The status code.
        code: u16,
        /// The body, JSON re-serialized on one line when it is JSON.
        body: String,
    },
    /// No answer: connection refused, timeout, broken connection.
    NoAnswer(String),
}

impl AdminAnswer {
    /// Whether the call succeeded (HTTP 200).
    pub fn ok(&self) -> bool {
        matches!(self, AdminAnswer::Http { code: 200, .. })
    }
}

impl std::fmt::Display for AdminAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAnswer::Http { code, body } => write!(f, "HTTP {code} {body}"),
            AdminAnswer::NoAnswer(why) => write!(f, "no answer ({why})"),
        }
    }
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

    /// `/status` of the node: region id → role, leader, applied, range, epoch. `None` when
    /// it does not answer (or answers something unreadable).
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
                    start_key: unescape(r["start_key"].as_str()?)?,
                    end_key: unescape(r["end_key"].as_str()?)?,
                    version: r["epoch"]["version"].as_u64()?,
                    conf_ver: r["epoch"]["conf_ver"].as_u64()?,
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

/// `POST /admin/split?region=R[&key=HEX]` to the node whose status port is `port`, waiting
/// at most `timeout` for each read. A free function (not a method) so that it can run on a
/// thread of its own while the schedule goes on.
pub fn split(port: u16, region: u64, key: Option<&[u8]>, timeout: Duration) -> AdminAnswer {
    let mut path = format!("/admin/split?region={region}");
    if let Some(key) = key {
        path.push_str("&key=");
        for b in key {
            path.push_str(&format!("{b:02x}"));
        }
    }
    admin(port, &path, timeout)
}

/// `POST /admin/merge?source=S&target=T` to the node whose status port is `port` (see
/// [`split`]). The server answers once the source is gone, which waits for every replica.
pub fn merge(port: u16, source: u64, target: u64, timeout: Duration) -> AdminAnswer {
    admin(
        port,
        &format!("/admin/merge?source={source}&target={target}"),
        timeout,
    )
}

fn admin(port: u16, path: &str, timeout: Duration) -> AdminAnswer {
    match request(port, "POST", path, timeout) {
        Ok((code, body)) => {
            let body = serde_json::from_str::<serde_json::Value>(&body)
                .map_or_else(|_| body.trim().to_string(), |v| v.to_string());
            AdminAnswer::Http { code, body }
        }
        Err(e) => AdminAnswer::NoAnswer(e),
    }
}

/// The bytes of a key in `/status`'s escaped form: printable ASCII as itself, `\\` for a
/// backslash, `\xNN` for any other byte. `None` when `text` is not of that form.
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1)? {
            b'\\' => {
                out.push(b'\\');
                i += 2;
            }
            b'x' => {
                let hex = text.get(i + 2..i + 4)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            _ => return None,
        }
    }
    Some(out)
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
    request(port, method, path, STATUS_TIMEOUT)
        .ok()
        .map(|(_, body)| body)
}

/// One HTTP/1.1 request to 127.0.0.1:`port`, waiting at most `timeout` to connect and for
/// each read; answers the status code and the body, or why there was no answer.
fn request(
    port: u16,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "no HTTP header in the answer".to_string())?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {:?}", head.lines().next()))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keys_unescape() {
        assert_eq!(unescape("b/reg0"), Some(b"b/reg0".to_vec()));
        assert_eq!(unescape(""), Some(vec![]));
        assert_eq!(
            unescape("\\x00\\x80a\\\\"),
            Some(vec![0, 0x80, b'a', b'\\'])
        );
        assert_eq!(unescape("\\q"), None);
        assert_eq!(unescape("\\x0"), None);
        assert_eq!(unescape("\\xzz"), None);
    }
}
