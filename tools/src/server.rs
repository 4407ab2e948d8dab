//! `flotilla server`: one node — the store over its engine, the TCP transport to the other
//! nodes, the RESP server for clients and the HTTP status server.
//!
//! Shutdown on SIGTERM or SIGINT: stop accepting clients, hand this node's leaderships to
//! other replicas (bounded wait), stop the store, close the transport, exit 0.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use flotilla_engine::EngineConfig;
use flotilla_region::node::{
    BalancerConfig, ClusterConfig, Node, NodeAddresses, NodeConfig, NodeEntry, NodeHandle,
    StoreConfig, DIRECTORY_FILE,
};
use flotilla_transport::{TcpTransport, TransportConfig, IO_THREADS_DEFAULT};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{install_prometheus_recorder, NodeService, RespServer, StatusServer};

/// How long shutdown waits for this node's leaderships to move away, at most.
pub const SHUTDOWN_TRANSFER_WAIT: Duration = Duration::from_secs(3);

/// Default of `snapshot_max_bytes_per_sec`: 100 MiB/s, a little under what a 1 Gbit/s
/// link carries (~119 MiB/s), so one snapshot stream leaves room for raft traffic on the
/// smallest link a cluster is likely to run on, while a region at the snapshot size limit
/// (128 MiB) still goes in about 1.3 s. Set 0 on faster links to send at full speed.
pub const SNAPSHOT_MAX_BYTES_PER_SEC_DEFAULT: u64 = 100 << 20;
/// Default of `client_threads`.
pub const CLIENT_THREADS_DEFAULT: usize = 2;

/// `flotilla server` flags.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// This node's id (1 ..= 65535).
    #[arg(long)]
    pub id: u64,
    /// Where the node keeps its raft log and key-value state.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address for raft traffic from other nodes.
    #[arg(long)]
    pub raft_addr: String,
    /// Address of the RESP (Redis protocol) server.
    #[arg(long)]
    pub client_addr: String,
    /// Address of the HTTP status server (/metrics, /status, admin).
    #[arg(long)]
    pub status_addr: String,
    /// Every initial node's raft address: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`.
    #[arg(long, conflicts_with = "join", required_unless_present = "join")]
    pub initial_cluster: Option<String>,
    /// Join a running cluster through the status (HTTP) address of any of its nodes,
    /// HOST:PORT, instead of bootstrapping one. Harmless on a restart: a data directory
    /// that holds a node directory starts from it.
    #[arg(long)]
    pub join: Option<String>,
    /// Regions a new cluster is pre-split into (ignored once the data directory exists).
    #[arg(long, default_value_t = 16)]
    pub initial_regions: usize,
    /// A TOML file with further settings (see docs/operations.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Settings from `--config` (every field optional).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Cluster id; nodes of different clusters refuse each other.
    pub cluster_id: u64,
    /// Shared secret for the transport handshake (empty: none).
    pub secret: String,
    /// Length of a raft tick, in milliseconds.
    pub tick_ms: u64,
    /// Election timeout, in ticks.
    pub election_ticks: usize,
    /// Heartbeat interval, in ticks.
    pub heartbeat_ticks: usize,
    /// Serve linearizable reads from the leader lease (else a heartbeat round per read).
    pub lease_reads: bool,
    /// How long a client request may wait, in milliseconds.
    pub request_timeout_ms: u64,
    /// Compact a region's raft log once it holds more applied entries than this.
    pub log_compact_trigger_entries: u64,
    /// Applied entries a compaction keeps for followers a little behind.
    pub log_keep_entries: u64,
    /// Split a region once its keys and values pass this many bytes.
    pub region_max_bytes: u64,
    /// Split a region applying more commands per second than this for a few seconds
    /// (0: never split for load).
    pub region_split_qps: u64,
    /// Merge adjacent regions automatically when both are under `region_merge_bytes`.
    pub auto_merge: bool,
    /// How often a node gossips its directory and regions to the others, in milliseconds.
    pub gossip_interval_ms: u64,
    /// Run the balancer (replica and leader placement, draining removed nodes,
    /// re-replicating the replicas of a node that stays down).
    pub balance: bool,
    /// A node not heard from for this long, in seconds, is down: its replicas are rebuilt
    /// on the other nodes.
    pub node_down_timeout_secs: u64,
    /// Replica moves the balancer keeps under way at once, in the whole cluster.
    pub max_concurrent_moves: usize,
    /// Voters per region: a new cluster's regions get this many replicas (each on every
    /// initial node when there are no more), and the balancer keeps every region at it.
    /// Every initial node must be started with the same value.
    pub replicas: usize,
    /// The size under which neighbours are merged (with `auto_merge`).
    pub region_merge_bytes: u64,
    /// Sending rate of each snapshot stream, in bytes per second (0: unlimited).
    pub snapshot_max_bytes_per_sec: u64,
    /// Threads of the transport's runtime (reading and writing raft connections).
    pub io_threads: usize,
    /// Threads of the runtime that serves clients (RESP, HTTP) and the node's own tasks.
    pub client_threads: usize,
    /// The storage engine.
    pub engine: EngineConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let store = StoreConfig::default();
        ServerConfig {
            cluster_id: 1,
            secret: String::new(),
            tick_ms: store.tick_interval.as_millis() as u64,
            election_ticks: store.election_ticks,
            heartbeat_ticks: store.heartbeat_ticks,
            lease_reads: store.lease_reads,
            request_timeout_ms: 5_000,
            log_compact_trigger_entries: store.log_compact_trigger_entries,
            log_keep_entries: store.log_keep_entries,
            region_max_bytes: store.region_max_bytes,
            region_split_qps: store.region_split_qps,
            auto_merge: store.auto_merge,
            gossip_interval_ms: ClusterConfig::default().gossip_interval.as_millis() as u64,
            balance: true,
            node_down_timeout_secs: BalancerConfig::default().node_down_timeout.as_secs(),
            max_concurrent_moves: BalancerConfig::default().max_concurrent_moves,
            replicas: BalancerConfig::default().replicas,
            region_merge_bytes: store.region_merge_bytes,
            snapshot_max_bytes_per_sec: SNAPSHOT_MAX_BYTES_PER_SEC_DEFAULT,
            io_threads: IO_THREADS_DEFAULT,
            client_threads: CLIENT_THREADS_DEFAULT,
            engine: EngineConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Refuses settings no node can run with, before anything starts (the transport's,
    /// `io_threads` among them, are checked by [`TransportConfig::validate`]).
    pub fn check(&self) -> Result<(), String> {
        if self.client_threads == 0 {
            return Err("client_threads must be at least 1".into());
        }
        Ok(())
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))
}

/// Parses `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(u64, SocketAddr)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("`{id}` is not a node id"))?;
        if id == 0 || out.iter().any(|(i, _)| *i == id) {
            return Err(format!("node id {id} is zero or repeated"));
        }
        out.push((id, resolve(addr.trim())?));
    }
    if out.is_empty() {
        return Err("--initial-cluster names no node".into());
    }
    Ok(out)
}

/// The transport's settings from the server's.
pub fn transport_config(
    cfg: &ServerConfig,
    node_id: u64,
    raft_addr: SocketAddr,
) -> TransportConfig {
    let mut tcfg = TransportConfig::new(cfg.cluster_id, node_id, raft_addr);
    tcfg.secret = cfg.secret.clone().into_bytes();
    tcfg.snapshot_bytes_per_sec_max = cfg.snapshot_max_bytes_per_sec;
    tcfg.io_threads = cfg.io_threads;
    tcfg
}

/// Runs a node until SIGTERM/SIGINT.
pub fn run(args: &ServerArgs) -> Result<(), String> {
    let cfg: ServerConfig = match &args.config {
        None => ServerConfig::default(),
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    cfg.check()?;
    let raft_addr = resolve(&args.raft_addr)?;
    let client_addr = resolve(&args.client_addr)?;
    let status_addr = resolve(&args.status_addr)?;
    let own = NodeAddresses {
        raft_addr: Some(raft_addr),
        client_addr: Some(client_addr),
        status_addr: Some(status_addr),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.client_threads)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    // The initial cluster (bootstrap), or the directory a running cluster answers a join
    // with; nothing to ask on a restart of a joined node (its directory is on disk).
    let (cluster, seed, joined): (Vec<(u64, SocketAddr)>, Vec<NodeEntry>, bool) =
        match (&args.initial_cluster, &args.join) {
            (Some(initial), _) => {
                let cluster = parse_initial_cluster(initial)?;
                if !cluster.iter().any(|(id, _)| *id == args.id) {
                    return Err(format!("--id {} is not in --initial-cluster", args.id));
                }
                let seed = cluster
                    .iter()
                    .map(|&(id, a)| {
                        let addresses = if id == args.id {
                            own
                        } else {
                            NodeAddresses {
                                raft_addr: Some(a),
                                ..Default::default()
                            }
                        };
                        NodeEntry::new(id, addresses)
                    })
                    .collect();
                (cluster, seed, false)
            }
            (None, Some(_)) if args.data_dir.join(DIRECTORY_FILE).exists() => {
                (Vec::new(), Vec::new(), true)
            }
            (None, Some(via)) => {
                let seed =
                    runtime.block_on(crate::join::join(via, args.id, own, cfg.cluster_id))?;
                (Vec::new(), seed, true)
            }
            (None, None) => return Err("give --initial-cluster or --join".into()),
        };

    // Before the transport, the log and the store start: they register their metric
    // handles as they start, and a handle taken before the recorder exists records nothing.
    let metrics = install_prometheus_recorder().map_err(|e| format!("metrics: {e}"))?;

    let tcfg = transport_config(&cfg, args.id, raft_addr);
    let peers: Vec<(u64, SocketAddr)> = cluster
        .iter()
        .copied()
        .filter(|(id, _)| *id != args.id)
        .collect();
    let (transport, inbound) =
        TcpTransport::start(tcfg, peers).map_err(|e| format!("transport: {e}"))?;
    let transport = Arc::new(transport);

    let node_cfg = NodeConfig {
        store: StoreConfig {
            node_id: args.id,
            tick_interval: Duration::from_millis(cfg.tick_ms.max(1)),
            election_ticks: cfg.election_ticks,
            heartbeat_ticks: cfg.heartbeat_ticks,
            lease_reads: cfg.lease_reads,
            log_compact_trigger_entries: cfg.log_compact_trigger_entries,
            log_keep_entries: cfg.log_keep_entries,
            region_max_bytes: cfg.region_max_bytes,
            region_split_qps: cfg.region_split_qps,
            auto_merge: cfg.auto_merge,
            region_merge_bytes: cfg.region_merge_bytes,
            balance_leaders: !cfg.balance,
            ..Default::default()
        },
        data_dir: args.data_dir.clone(),
        engine: cfg.engine.clone(),
        initial_nodes: if joined {
            Vec::new()
        } else {
            cluster.iter().map(|(id, _)| *id).collect()
        },
        initial_regions: args.initial_regions,
        request_timeout: Duration::from_millis(cfg.request_timeout_ms.max(1)),
        cluster: ClusterConfig {
            gossip_interval: Duration::from_millis(cfg.gossip_interval_ms.max(1)),
            addresses: own,
            seed,
            joined,
            cluster_id: cfg.cluster_id,
            balancer: BalancerConfig {
                enabled: cfg.balance,
                node_down_timeout: Duration::from_secs(cfg.node_down_timeout_secs.max(1)),
                max_concurrent_moves: cfg.max_concurrent_moves.max(1),
                replicas: cfg.replicas.max(1),
                ..BalancerConfig::default()
            },
        },
    };
    let node =
        Node::start(node_cfg, transport.clone(), inbound).map_err(|e| format!("node: {e}"))?;
    let handle = node.handle();
    let client_id = (args.id << 48)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let served = runtime.block_on(async {
        let service = NodeService::new(handle.clone(), client_id);
        let resp = RespServer::bind(client_addr, Arc::new(service.clone()))
            .await
            .map_err(|e| format!("client address {client_addr}: {e}"))?;
        let status = StatusServer::bind(status_addr, Arc::new(service), metrics)
            .await
            .map_err(|e| format!("status address {status_addr}: {e}"))?;
        info!(id = args.id, %raft_addr, %client_addr, %status_addr, "serving");
        println!("flotilla node {} serving: raft {raft_addr}, clients {client_addr}, status {status_addr}", args.id);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let resp_task = tokio::spawn(resp.serve(stopped(stop_rx.clone())));
        let status_task = tokio::spawn(status.serve(stopped(stop_rx)));
        wait_for_signal().await;
        info!(id = args.id, "shutting down: moving leaderships away");
        move_leaders_away(&handle).await;
        let _ = stop_tx.send(true);
        let _ = resp_task.await;
        let _ = status_task.await;
        Ok::<(), String>(())
    });
    node.stop();
    if let Ok(t) = Arc::try_unwrap(transport) {
        t.shutdown(Duration::from_secs(1));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Transfers every leadership this node holds to another voter, waiting (bounded) until
/// none is left, so clients see a short hand-over instead of an election timeout.
async fn move_leaders_away(handle: &NodeHandle) {
    let me = handle.node_id();
    let deadline = Instant::now() + SHUTDOWN_TRANSFER_WAIT;
    while Instant::now() < deadline {
        let Ok(regions) = handle.status().await else {
            return;
        };
        let led: Vec<_> = regions.into_iter().filter(|r| r.role == "leader").collect();
        if led.is_empty() {
            return;
        }
        for r in led {
            // Any other node with a replica will do; the store checks it is a voter.
            for to in peers_of(handle, r.route.id, me) {
                if handle.transfer_leader(r.route.id, to).await.is_ok() {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    warn!(node = me, "some leaderships were still here at shutdown");
}

fn peers_of(handle: &NodeHandle, region_id: u64, me: u64) -> Vec<u64> {
    handle
        .regions()
        .all()
        .into_iter()
        .find(|r| r.id == region_id)
        .map(|r| r.voter_nodes.into_iter().filter(|&n| n != me).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_rate_reaches_the_transport() {
        let addr: SocketAddr = "127.0.0.1:7101".parse().expect("address");
        let default = ServerConfig::default();
        assert_eq!(
            transport_config(&default, 1, addr).snapshot_bytes_per_sec_max,
            SNAPSHOT_MAX_BYTES_PER_SEC_DEFAULT
        );
        let unlimited: ServerConfig =
            toml::from_str("snapshot_max_bytes_per_sec = 0").expect("parses");
        assert_eq!(
            transport_config(&unlimited, 1, addr).snapshot_bytes_per_sec_max,
            0
        );
        let slow: ServerConfig =
            toml::from_str("snapshot_max_bytes_per_sec = 1048576").expect("parses");
        assert_eq!(
            transport_config(&slow, 1, addr).snapshot_bytes_per_sec_max,
            1 << 20
        );
    }

    /// The thread counts reach their runtimes' settings, and a runtime without threads is
    /// refused: the client runtime's by `ServerConfig::check`, the transport's by its own
    /// validation.
    #[test]
    fn thread_counts_reach_their_runtimes() {
        let addr: SocketAddr = "127.0.0.1:7101".parse().expect("address");
        let default = ServerConfig::default();
        assert_eq!(
            transport_config(&default, 1, addr).io_threads,
            IO_THREADS_DEFAULT
        );
        assert_eq!(default.client_threads, CLIENT_THREADS_DEFAULT);
        let one: ServerConfig =
            toml::from_str("io_threads = 1\nclient_threads = 1\n").expect("parses");
        assert_eq!(transport_config(&one, 1, addr).io_threads, 1);
        assert_eq!(one.client_threads, 1);
        assert!(one.check().is_ok());
        let no_client: ServerConfig = toml::from_str("client_threads = 0\n").expect("parses");
        let err = no_client.check().expect_err("client_threads = 0");
        assert!(err.contains("at least 1"), "{err}");
        let no_io: ServerConfig = toml::from_str("io_threads = 0\n").expect("parses");
        assert!(transport_config(&no_io, 1, addr).validate().is_err());
    }

    /// An engine setting reaches the engine; a misspelt one, at any depth, is an error that
    /// names it rather than a default silently kept.
    #[test]
    fn engine_settings_parse_and_a_misspelt_one_is_refused() {
        let cfg: ServerConfig =
            toml::from_str("[engine.rocksdb]\nwrite_buffer_bytes = 4194304\n").expect("parses");
        assert_eq!(cfg.engine.rocksdb.write_buffer_bytes, 4 << 20);
        for text in [
            "[engine.rocksdb]\nwrite_bufer_bytes = 4194304\n",
            "[engine.wal]\nsegment_byte_max = 1\n",
            "[engine]\nlog_backed = \"wal\"\n",
            "no_such_setting = 1\n",
        ] {
            let err = toml::from_str::<ServerConfig>(text)
                .expect_err(text)
                .to_string();
            assert!(err.contains("unknown field"), "{text}: {err}");
        }
    }
}
