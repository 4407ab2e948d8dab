//! The peers Flotilla is compared with, on the same machine, with durable settings:
//!
//! - **etcd**: a 3-member cluster of Debian's `etcd` (etcd-server), each member fsyncing its
//!   WAL (etcd's default), on 127.0.0.1; driven over gRPC with `etcd-client`.
//! - **Redis**: one `redis-server` with `appendonly yes` and `appendfsync always` (every
//!   write is fsynced before it is acknowledged); a single node, no replication.
//!
//! A peer whose binary is not installed is skipped with a message naming the package.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{find_on_path, fresh_dir, ports_free, ProcessSet};
use crate::driver::etcd::EtcdCaller;
use crate::driver::slots::Caller;
use crate::workload::Op;

/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Ports per etcd member: client, then peer.
const ETCD_PORTS_PER_MEMBER: u16 = 10;

/// A peer that is running.
pub struct Peer {
    /// Client addresses (`host:port`): etcd's client URLs without the scheme, Redis' port.
    pub addrs: Vec<String>,
    /// Server process ids.
    pub pids: Vec<u32>,
    /// Its data directory.
    pub data_dir: PathBuf,
    procs: ProcessSet,
}

impl Peer {
    /// Stops it and removes its data unless `keep_data`.
    pub async fn stop(self, keep_data: bool) {
        let mut procs = self.procs;
        let _ = tokio::task::spawn_blocking(move || procs.stop()).await;
        if !keep_data {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// The etcd binary, or why etcd is skipped.
pub fn etcd_binary() -> Result<PathBuf, String> {
    find_on_path("etcd").ok_or_else(|| {
        "etcd is not installed (Debian: apt-get install etcd-server; scripts/setup.sh does)"
            .to_string()
    })
}

/// The redis-server binary, or why Redis is skipped.
pub fn redis_binary() -> Result<PathBuf, String> {
    find_on_path("redis-server").ok_or_else(|| {
        "redis-server is not installed (Debian: apt-get install redis-server; scripts/setup.sh does)"
            .to_string()
    })
}

/// The arguments of etcd member `i` (0-based) of `members`, client ports from `base_port`.
pub fn etcd_args(dir: &Path, i: usize, members: usize, base_port: u16) -> Vec<OsString> {
    let client = |i: usize| base_port + ETCD_PORTS_PER_MEMBER * i as u16;
    let peer = |i: usize| client(i) + 1;
    let cluster: Vec<String> = (0..members)
        .map(|j| format!("e{j}=http://127.0.0.1:{}", peer(j)))
        .collect();
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    [
        "--name".to_string(),
        format!("e{i}"),
        "--data-dir".into(),
        dir.join(format!("e{i}")).display().to_string(),
        "--listen-client-urls".into(),
        url(client(i)),
        "--advertise-client-urls".into(),
        url(client(i)),
        "--listen-peer-urls".into(),
        url(peer(i)),
        "--initial-advertise-peer-urls".into(),
        url(peer(i)),
        "--initial-cluster".into(),
        cluster.join(","),
        "--initial-cluster-state".into(),
        "new".into(),
        "--initial-cluster-token".into(),
        "flotilla-bench".into(),
        // Durable like Flotilla: fsync on (etcd's default; named so a reader need not know).
        "--unsafe-no-fsync=false".into(),
        "--log-level".into(),
        "warn".into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// Starts a `members`-member etcd cluster under `parent`, waits until a put succeeds on
/// every member (at most `timeout`).
pub async fn start_etcd(
    members: usize,
    parent: &Path,
    base_port: u16,
    timeout: Duration,
) -> Result<Peer, String> {
    let etcd = etcd_binary()?;
    let ports: Vec<u16> = (0..members)
        .flat_map(|i| {
            let c = base_port + ETCD_PORTS_PER_MEMBER * i as u16;
            [c, c + 1]
        })
        .collect();
    ports_free(&ports)?;
    let dir = fresh_dir(parent, "etcd")?;
    let mut procs = ProcessSet::default();
    let mut pids = Vec::new();
    for i in 0..members {
        let log = dir.join(format!("e{i}.log"));
        pids.push(procs.spawn(
            &format!("etcd member {i}"),
            &etcd,
            &etcd_args(&dir, i, members, base_port),
            &log,
        )?);
    }
    let addrs: Vec<String> = (0..members)
        .map(|i| format!("127.0.0.1:{}", base_port + ETCD_PORTS_PER_MEMBER * i as u16))
        .collect();
    let began = Instant::now();
    let mut ready = vec![false; members];
    let mut last = String::from("no answer yet");
    while !ready.iter().all(|r| *r) {
        if let Some(why) = procs.exited() {
            return Err(format!("{why}; logs in {}", dir.display()));
        }
        if began.elapsed() >= timeout {
            return Err(format!(
                "etcd did not serve within {timeout:?} ({last}); logs in {}",
                dir.display()
            ));
        }
        for (i, addr) in addrs.iter().enumerate() {
            if ready[i] {
                continue;
            }
            let probe = async {
                let c = EtcdCaller::connect(addr).await?;
                c.call(Op::Set {
                    key: "flotilla-bench-probe".into(),
                    value: "1".into(),
                })
                .await
            };
            match tokio::time::timeout(Duration::from_secs(2), probe).await {
                Ok(Ok(_)) => ready[i] = true,
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("{addr}: no answer within 2 s"),
            }
        }
        if !ready.iter().all(|r| *r) {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    Ok(Peer {
        addrs,
        pids,
        data_dir: dir,
        procs,
    })
}

/// The arguments of the Redis server: durable (AOF, fsync before every reply), no RDB
/// snapshots, on `port` of 127.0.0.1.
pub fn redis_args(dir: &Path, port: u16) -> Vec<OsString> {
    [
        "--port".to_string(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--appendonly".into(),
        "yes".into(),
        "--appendfsync".into(),
        "always".into(),
        "--save".into(),
        String::new(),
        "--daemonize".into(),
        "no".into(),
        "--protected-mode".into(),
        "no".into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// Starts one durable Redis server under `parent` on `port` and waits for `PING`.
pub async fn start_redis(parent: &Path, port: u16, timeout: Duration) -> Result<Peer, String> {
    let redis = redis_binary()?;
    ports_free(&[port])?;
    let dir = fresh_dir(parent, "redis")?;
    let mut procs = ProcessSet::default();
    let pid = procs.spawn(
        "redis-server",
        &redis,
        &redis_args(&dir, port),
        &dir.join("redis.log"),
    )?;
    let addr = format!("127.0.0.1:{port}");
    let began = Instant::now();
    loop {
        if let Some(why) = procs.exited() {
            return Err(format!("{why}; log in {}", dir.display()));
        }
        match ping(&addr).await {
            Ok(()) => break,
            Err(e) if began.elapsed() >= timeout => {
                return Err(format!(
                    "redis-server did not serve within {timeout:?}: {e}"
                ))
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
    Ok(Peer {
        addrs: vec![addr],
        pids: vec![pid],
        data_dir: dir,
        procs,
    })
}

/// `PING` → `+PONG` on a fresh connection.
async fn ping(addr: &str) -> Result<(), String> {
    let mut s = crate::driver::resp::connect(addr).await?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .map_err(|_| "no answer to PING".to_string())?
        .map_err(|e| e.to_string())?;
    if buf[..n].starts_with(b"+PONG") {
        Ok(())
    } else {
        Err(format!(
            "PING answered {:?}",
            String::from_utf8_lossy(&buf[..n])
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn etcd_members_know_each_other_and_fsync() {
        let args = strings(etcd_args(Path::new("/d"), 1, 3, 7700));
        let joined = args.join(" ");
        assert!(joined.contains("--name e1 --data-dir /d/e1"), "{joined}");
        assert!(
            joined.contains("--listen-client-urls http://127.0.0.1:7710"),
            "{joined}"
        );
        assert!(
            joined.contains("--listen-peer-urls http://127.0.0.1:7711"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "--initial-cluster e0=http://127.0.0.1:7701,e1=http://127.0.0.1:7711,e2=http://127.0.0.1:7721"
            ),
            "{joined}"
        );
        assert!(joined.contains("--unsafe-no-fsync=false"));
    }

    #[test]
    fn redis_is_durable() {
        let args = strings(redis_args(Path::new("/d"), 7800));
        let pos = |a: &str| args.iter().position(|x| x == a).unwrap();
        assert_eq!(args[pos("--appendonly") + 1], "yes");
        assert_eq!(args[pos("--appendfsync") + 1], "always");
        assert_eq!(args[pos("--save") + 1], "");
        assert_eq!(args[pos("--port") + 1], "7800");
    }
}
