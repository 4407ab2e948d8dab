//! `flotilla cluster`: a local cluster of `flotilla server` processes on 127.0.0.1, for
//! trying Flotilla out.
//!
//! ```text
//! flotilla cluster [--nodes 3] [--regions 16] [--data-dir ./flotilla-data] [--base-port 7100]
//!                  [--seconds N] [--start-timeout-secs 60]
//! ```
//!
//! The steps, in order:
//!
//! 1. Check the flags, that every port is free, and the data directory (a directory made by
//!    an earlier run must be reused with the same `--nodes` and `--regions`, recorded in
//!    `DIR/cluster.toml`).
//! 2. Start one server per node by running this same binary as `flotilla server`, each in its
//!    own process group (so a terminal's Ctrl-C reaches only this command, which then stops
//!    the nodes in order), with stdout and stderr appended to `DIR/nN.log`.
//! 3. Poll every node's `/status` until each reports its regions with a known leader.
//! 4. Print the nodes' addresses and commands to try, then a view refreshed every second:
//!    leaders and RESP commands per second of each node.
//! 5. On SIGINT, SIGTERM or SIGHUP (or after `--seconds`): SIGTERM to every node (a node
//!    hands its leaderships away and exits 0), wait at most [`STOP_WAIT`], SIGKILL whatever
//!    is left. A second signal while waiting kills the rest at once.
//!
//! The server processes are owned by a guard that kills them when dropped, so an error in
//! this command (or a panic) does not leave nodes behind.
//!
//! Ports: node N (1-based) uses three consecutive ports starting at
//! `base + 10 × (N − 1)`: raft, then RESP, then HTTP (see [`node_ports`]).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use hyper::Method;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::ctl::table;
use crate::http::StatusClient;
use crate::resp::metric::COMMANDS_TOTAL;
use crate::service::{NodeStatus, ReplicaRole};

/// Default of `--base-port`: node 1 listens on 7100 (raft), 7101 (RESP) and 7102 (HTTP).
pub const BASE_PORT_DEFAULT: u16 = 7100;
/// Ports set aside per node; a node uses the first three (raft, RESP, HTTP), the rest keep
/// the layout easy to read (node 2 starts at base + 10).
pub const PORTS_PER_NODE: u16 = 10;
/// Most nodes: every region is replicated on every initial node, so each node adds a replica
/// of everything on the same machine; more than this only slows a laptop down.
pub const NODES_MAX: u64 = 9;
/// Most regions: region boundaries are two-byte prefixes (65 536 possible), and every region
/// is a raft group on every node; a few thousand are plenty on one machine.
pub const REGIONS_MAX: usize = 4096;
/// Default of `--start-timeout-secs`: a new cluster elects its leaders in about a second;
/// a debug build on a busy machine may need much longer.
pub const START_TIMEOUT_SECS_DEFAULT: u64 = 60;
/// How long stopping waits for the nodes after SIGTERM before it kills them: a server waits
/// at most 3 s for its leaderships to move, then stops its store, transport (1 s) and
/// runtime (1 s).
pub const STOP_WAIT: Duration = Duration::from_secs(15);
/// The file in the data directory that records the cluster's shape.
pub const MANIFEST_FILE: &str = "cluster.toml";
/// How often the live view refreshes.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often startup polls the nodes' `/status`.
const START_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often stopping checks whether the nodes have exited.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// One status or metrics request, at most: the nodes are on this machine, so a slower answer
/// means the node is in trouble and the view should say so rather than stall.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(900);
/// Lines of a node's log shown when it exits early.
const LOG_TAIL_LINES: usize = 15;
/// Bytes read from the end of a log to find those lines.
const LOG_TAIL_BYTES_MAX: u64 = 16 << 10;
/// The key the printed `redis-cli` example writes.
const EXAMPLE_KEY: &[u8] = b"hello";

/// `flotilla cluster` flags.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Number of nodes (server processes), 1 ..= 9.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Regions a new cluster is pre-split into, 1 ..= 4096 (a restart must name the same).
    #[arg(long, default_value_t = 16)]
    pub regions: usize,
    /// Where the nodes keep their data (DIR/nN) and logs (DIR/nN.log); an existing directory
    /// restarts the cluster it holds.
    #[arg(long, default_value = "./flotilla-data")]
    pub data_dir: PathBuf,
    /// First port: node N uses BASE+10*(N-1) for raft, +1 for RESP, +2 for HTTP.
    #[arg(long, default_value_t = BASE_PORT_DEFAULT)]
    pub base_port: u16,
    /// Stop by itself after serving this many seconds (as if Ctrl-C had been pressed).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Give up if the nodes do not all serve within this many seconds.
    #[arg(long, default_value_t = START_TIMEOUT_SECS_DEFAULT)]
    pub start_timeout_secs: u64,
}

/// Why `flotilla cluster` failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A flag is out of range.
    #[error("{0}")]
    BadArgs(String),
    /// The data directory or one of its files cannot be used.
    #[error("{path}: {message}")]
    DataDir {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A port of the layout is taken.
    #[error(
        "port {port} (node {node} {purpose}) on 127.0.0.1 is not free: {source}; \
             stop whatever uses it or pick other ports with --base-port"
    )]
    PortInUse {
        /// The port.
        port: u16,
        /// The node that would use it.
        node: u64,
        /// `raft`, `RESP` or `HTTP`.
        purpose: &'static str,
        /// What binding it said.
        source: std::io::Error,
    },
    /// A server process could not be started.
    #[error("cannot start node {node}: {message}")]
    Spawn {
        /// The node.
        node: u64,
        /// What went wrong.
        message: String,
    },
    /// A server exited before the cluster was serving.
    #[error("node {node} exited ({status}) before serving; its log {} ends with:\n{tail}", log.display())]
    NodeExited {
        /// The node.
        node: u64,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// A server did not serve within the start timeout.
    #[error("node {node} did not serve within {waited:?} ({last}); see its log {}", log.display())]
    NotServing {
        /// The node.
        node: u64,
        /// How long startup waited.
        waited: Duration,
        /// What the node last answered.
        last: String,
        /// Its log file.
        log: PathBuf,
    },
    /// Every server exited while the cluster was running.
    #[error("every node has exited; see the logs in {}", dir.display())]
    AllExited {
        /// The data directory holding the logs.
        dir: PathBuf,
    },
    /// The async runtime or the signal handlers could not be set up.
    #[error("{0}")]
    Setup(String),
}

/// The three ports of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    /// Raft traffic between nodes (`--raft-addr`).
    pub raft: u16,
    /// RESP clients (`--client-addr`).
    pub resp: u16,
    /// HTTP status (`--status-addr`).
    pub http: u16,
}

/// The ports of node `id` (1-based) when the layout starts at `base_port`, or `None` if
/// `id` is 0 or a port would pass 65535.
pub fn node_ports(base_port: u16, id: u64) -> Option<NodePorts> {
    let first = u64::from(base_port)
        .checked_add(u64::from(PORTS_PER_NODE).checked_mul(id.checked_sub(1)?)?)?;
    let port = |offset: u64| u16::try_from(first + offset).ok();
    Some(NodePorts {
        raft: port(0)?,
        resp: port(1)?,
        http: port(2)?,
    })
}

/// One node of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// The node's id, 1 ..= nodes.
    pub id: u64,
    /// Its ports on 127.0.0.1.
    pub ports: NodePorts,
    /// Its data directory, `DIR/nN`.
    pub data_dir: PathBuf,
    /// Its log file, `DIR/nN.log`.
    pub log_file: PathBuf,
}

impl NodePlan {
    /// `127.0.0.1:<RESP port>`.
    pub fn resp_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.resp)
    }

    /// `127.0.0.1:<HTTP port>`.
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.http)
    }
}

/// What `flotilla cluster` will start, worked out from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Regions of a new cluster.
    pub regions: usize,
    /// The nodes, by id.
    pub nodes: Vec<NodePlan>,
}

/// The shape of the cluster a data directory holds, kept in [`MANIFEST_FILE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    nodes: u64,
    regions: usize,
}

impl ClusterPlan {
    /// Checks the flags and lays out the nodes.
    pub fn new(args: &ClusterArgs) -> Result<Self, ClusterError> {
        if !(1..=NODES_MAX).contains(&args.nodes) {
            return Err(ClusterError::BadArgs(format!(
                "--nodes {} is out of range: 1 ..= {NODES_MAX}",
                args.nodes
            )));
        }
        if !(1..=REGIONS_MAX).contains(&args.regions) {
            return Err(ClusterError::BadArgs(format!(
                "--regions {} is out of range: 1 ..= {REGIONS_MAX}",
                args.regions
            )));
        }
        if args.base_port == 0 {
            return Err(ClusterError::BadArgs(
                "--base-port must be a port number, not 0".into(),
            ));
        }
        let mut nodes = Vec::new();
        for id in 1..=args.nodes {
            let ports = node_ports(args.base_port, id).ok_or_else(|| {
                ClusterError::BadArgs(format!(
                    "--base-port {} is too high for {} nodes: node {id} would need ports past 65535",
                    args.base_port, args.nodes
                ))
            })?;
            nodes.push(NodePlan {
                id,
                ports,
                data_dir: args.data_dir.join(format!("n{id}")),
                log_file: args.data_dir.join(format!("n{id}.log")),
            });
        }
        Ok(ClusterPlan {
            data_dir: args.data_dir.clone(),
            regions: args.regions,
            nodes,
        })
    }

    /// `--initial-cluster`: `1=127.0.0.1:P1,2=127.0.0.1:P2,…`.
    pub fn initial_cluster(&self) -> String {
        let parts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}=127.0.0.1:{}", n.id, n.ports.raft))
            .collect();
        parts.join(",")
    }

    /// The arguments after the program name that start `node` as `flotilla server`.
    pub fn server_args(&self, node: &NodePlan) -> Vec<OsString> {
        let mut args: Vec<OsString> =
            vec!["server".into(), "--id".into(), node.id.to_string().into()];
        args.push("--data-dir".into());
        args.push(node.data_dir.clone().into_os_string());
        for (flag, port) in [
            ("--raft-addr", node.ports.raft),
            ("--client-addr", node.ports.resp),
            ("--status-addr", node.ports.http),
        ] {
            args.push(flag.into());
            args.push(format!("127.0.0.1:{port}").into());
        }
        args.push("--initial-cluster".into());
        args.push(self.initial_cluster().into());
        args.push("--initial-regions".into());
        args.push(self.regions.to_string().into());
        args
    }

    /// Creates the data directory, or checks that the cluster it holds has this plan's shape
    /// (a different number of nodes or regions would not restart the same cluster).
    pub fn prepare_data_dir(&self) -> Result<(), ClusterError> {
        let dir_err = |path: &Path, e: &dyn std::fmt::Display| ClusterError::DataDir {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&self.data_dir).map_err(|e| dir_err(&self.data_dir, &e))?;
        let path = self.data_dir.join(MANIFEST_FILE);
        let wanted = Manifest {
            nodes: self.nodes.len() as u64,
            regions: self.regions,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let held: Manifest = toml::from_str(&text).map_err(|e| dir_err(&path, &e))?;
                if held != wanted {
                    return Err(ClusterError::DataDir {
                        path: self.data_dir.clone(),
                        message: format!(
                            "holds a cluster of {} nodes and {} regions; run with --nodes {} --regions {} \
                             to restart it, or pick another --data-dir",
                            held.nodes, held.regions, held.nodes, held.regions
                        ),
                    });
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(n) = self.nodes.iter().find(|n| n.data_dir.exists()) {
                    // A node directory without a manifest: not made by this command, so its
                    // shape is unknown; starting over it could mix two clusters.
                    return Err(ClusterError::DataDir {
                        path: n.data_dir.clone(),
                        message: format!(
                            "exists, but {} does not say which cluster it belongs to; \
                             pick another --data-dir",
                            path.display()
                        ),
                    });
                }
                let text = toml::to_string(&wanted).map_err(|e| dir_err(&path, &e))?;
                std::fs::write(&path, text).map_err(|e| dir_err(&path, &e))
            }
            Err(e) => Err(dir_err(&path, &e)),
        }
    }

    /// Binds every port of the layout once, so a taken port is reported before any node
    /// starts (a node would only say so in its log).
    pub fn check_ports_free(&self) -> Result<(), ClusterError> {
        for node in &self.nodes {
            for (port, purpose) in [
                (node.ports.raft, "raft"),
                (node.ports.resp, "RESP"),
                (node.ports.http, "HTTP"),
            ] {
                TcpListener::bind(("127.0.0.1", port)).map_err(|source| {
                    ClusterError::PortInUse {
                        port,
                        node: node.id,
                        purpose,
                        source,
                    }
                })?;
            }
        }
        Ok(())
    }
}

/// Runs the cluster until a signal or `--seconds`, then stops it.
pub fn run(args: &ClusterArgs) -> Result<(), ClusterError> {
    let plan = ClusterPlan::new(args)?;
    // Polling a handful of nodes needs no more than one thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Setup(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_cluster(
        &plan,
        args.seconds.map(Duration::from_secs),
        Duration::from_secs(args.start_timeout_secs),
    ))
}

async fn run_cluster(
    plan: &ClusterPlan,
    seconds: Option<Duration>,
    start_timeout: Duration,
) -> Result<(), ClusterError> {
    // Installed first, so that Ctrl-C during startup still stops the nodes in order.
    let mut signals = StopSignals::install()?;
    // Ports first: a taken port should leave no trace in the data directory.
    plan.check_ports_free()?;
    plan.prepare_data_dir()?;
    let exe = std::env::current_exe()
        .map_err(|e| ClusterError::Setup(format!("cannot find this program's path: {e}")))?;

    let mut procs = Processes::default();
    for node in &plan.nodes {
        procs.spawn(&exe, plan, node)?;
    }
    println!(
        "starting {} nodes with {} regions in {} (logs: {})",
        plan.nodes.len(),
        plan.regions,
        plan.data_dir.display(),
        plan.data_dir.join("nN.log").display()
    );

    let started = tokio::select! {
        r = wait_until_serving(plan, &mut procs, start_timeout) => Some(r),
        s = signals.recv() => {
            println!("{s}: stopping before the cluster was serving");
            None
        }
    };
    match started {
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            procs.stop(&mut signals).await;
            return Err(e);
        }
        None => {
            procs.stop(&mut signals).await;
            return Ok(());
        }
    };
    // The first counter readings are taken before the banner invites commands, so a
    // command typed (or sent by a script) right after it shows in the next line's ops/s.
    let baseline = sample_all(plan, &procs).await;
    print!("{}", banner(plan, &exe));

    let ended = live_view(plan, &mut procs, &mut signals, seconds, baseline).await;
    procs.stop(&mut signals).await;
    ended
}

/// Polls `/status` of every node until each reports at least one region and a known leader
/// for every region; answers the last status of each node, in plan order.
async fn wait_until_serving(
    plan: &ClusterPlan,
    procs: &mut Processes,
    timeout: Duration,
) -> Result<Vec<NodeStatus>, ClusterError> {
    let began = Instant::now();
    let mut last: Vec<Option<NodeStatus>> = vec![None; plan.nodes.len()];
    let mut why: Vec<String> = vec!["no answer yet".into(); plan.nodes.len()];
    loop {
        if let Some((id, status)) = procs.newly_exited().into_iter().next() {
            let node = &plan.nodes[(id - 1) as usize];
            return Err(ClusterError::NodeExited {
                node: id,
                status,
                log: node.log_file.clone(),
                tail: log_tail(&node.log_file),
            });
        }
        for (i, node) in plan.nodes.iter().enumerate() {
            if last[i].as_ref().is_some_and(serving) {
                continue;
            }
            match fetch_status(&node.http_addr()).await {
                Ok(status) => {
                    let leaderless = status.regions.iter().filter(|r| r.leader.is_none()).count();
                    why[i] = format!(
                        "{} regions, {leaderless} without a known leader",
                        status.regions.len()
                    );
                    last[i] = Some(status);
                }
                Err(e) => why[i] = e,
            }
        }
        if last.iter().all(|s| s.as_ref().is_some_and(serving)) {
            return Ok(last.into_iter().flatten().collect());
        }
        if began.elapsed() >= timeout {
            let i = last
                .iter()
                .position(|s| !s.as_ref().is_some_and(serving))
                .unwrap_or(0);
            return Err(ClusterError::NotServing {
                node: plan.nodes[i].id,
                waited: timeout,
                last: why[i].clone(),
                log: plan.nodes[i].log_file.clone(),
            });
        }
        tokio::time::sleep(START_POLL_INTERVAL).await;
    }
}

/// Whether a node serves: it hosts regions and knows the leader of each.
fn serving(status: &NodeStatus) -> bool {
    !status.regions.is_empty() && status.regions.iter().all(|r| r.leader.is_some())
}

/// The addresses table and the commands to try (`exe`: this program, for the `ctl` line,
/// since `cargo run` does not put it on the PATH).
fn banner(plan: &ClusterPlan, exe: &Path) -> String {
    let rows: Vec<Vec<String>> = plan
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.resp_addr(),
                n.http_addr(),
                n.log_file.display().to_string(),
            ]
        })
        .collect();
    let mut out = String::from("\n");
    out.push_str(&table(&["NODE", "RESP", "HTTP", "LOG"], &rows));
    // Every node serves every key (followers forward to the leader): any node will do.
    let leader = &plan.nodes[0];
    let key = String::from_utf8_lossy(EXAMPLE_KEY);
    let _ = writeln!(
        out,
        "\ntry: redis-cli -p {} set {key} world",
        leader.ports.resp
    );
    let _ = writeln!(out, "     redis-cli -p {} get {key}", leader.ports.resp);
    let _ = writeln!(
        out,
        "     {} ctl --addr {} regions",
        exe.display(),
        plan.nodes[0].http_addr()
    );
    let _ = writeln!(
        out,
        "Every node serves every key: a follower forwards writes to the region's leader.\n\
         Ctrl-C stops the cluster.\n"
    );
    out
}

/// What one refresh saw of one node.
#[derive(Debug, Clone, PartialEq)]
enum NodeSample {
    /// The process has exited.
    Exited(ExitStatus),
    /// The process runs; either answer may be missing (an error message instead).
    Running {
        leaders: Result<usize, String>,
        commands_total: Result<f64, String>,
    },
}

/// Shows `first` (sampled before the banner) at once, then refreshes the view every second
/// until a signal, `seconds` or every node exiting.
async fn live_view(
    plan: &ClusterPlan,
    procs: &mut Processes,
    signals: &mut StopSignals,
    seconds: Option<Duration>,
    first: Vec<NodeSample>,
) -> Result<(), ClusterError> {
    let began = Instant::now();
    let deadline = seconds.map(|s| tokio::time::Instant::now() + s);
    let mut view = View::new(plan);
    let mut previous: Vec<Option<(f64, Instant)>> = vec![None; plan.nodes.len()];
    let first_at = Instant::now();
    let rows: Vec<ViewRow> = first
        .iter()
        .zip(previous.iter_mut())
        .map(|(sample, prev)| view_row(sample, prev, first_at))
        .collect();
    view.show(Duration::ZERO, &rows);
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + REFRESH_INTERVAL,
        REFRESH_INTERVAL,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            s = signals.recv() => {
                view.finish();
                println!("{s}: stopping the cluster");
                return Ok(());
            }
            _ = sleep_until(deadline) => {
                view.finish();
                println!("{}s are up: stopping the cluster", seconds.unwrap_or_default().as_secs());
                return Ok(());
            }
        }
        procs.newly_exited();
        let samples = sample_all(plan, procs).await;
        let now = Instant::now();
        let rows: Vec<ViewRow> = samples
            .iter()
            .zip(previous.iter_mut())
            .map(|(sample, prev)| view_row(sample, prev, now))
            .collect();
        view.show(began.elapsed(), &rows);
        if procs.all_exited() {
            view.finish();
            return Err(ClusterError::AllExited {
                dir: plan.data_dir.clone(),
            });
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Samples every node at once (a slow node delays the refresh by at most one timeout).
async fn sample_all(plan: &ClusterPlan, procs: &Processes) -> Vec<NodeSample> {
    let tasks: Vec<_> = plan
        .nodes
        .iter()
        .map(|node| {
            let exited = procs.exit_status(node.id);
            let addr = node.http_addr();
            tokio::spawn(async move {
                if let Some(status) = exited {
                    return NodeSample::Exited(status);
                }
                let leaders = fetch_status(&addr).await.map(|s| {
                    s.regions
                        .iter()
                        .filter(|r| r.role == ReplicaRole::Leader)
                        .count()
                });
                let commands_total = fetch_commands_total(&addr).await;
                NodeSample::Running {
                    leaders,
                    commands_total,
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| NodeSample::Running {
            leaders: Err(e.to_string()),
            commands_total: Err(e.to_string()),
        }));
    }
    out
}

/// One node's line of the view.
#[derive(Debug, Clone, PartialEq)]
struct ViewRow {
    /// The process has exited (`note` says how).
    exited: bool,
    leaders: String,
    ops_per_sec: String,
    note: String,
}

/// Turns a sample into a row; `prev` holds the last counter reading for the rate.
fn view_row(sample: &NodeSample, prev: &mut Option<(f64, Instant)>, now: Instant) -> ViewRow {
    match sample {
        NodeSample::Exited(status) => {
            *prev = None;
            ViewRow {
                exited: true,
                leaders: "-".into(),
                ops_per_sec: "-".into(),
                note: format!("exited ({status})"),
            }
        }
        NodeSample::Running {
            leaders,
            commands_total,
        } => {
            let mut notes = Vec::new();
            let leaders = match leaders {
                Ok(n) => n.to_string(),
                Err(e) => {
                    notes.push(e.clone());
                    "?".into()
                }
            };
            let ops_per_sec = match commands_total {
                Ok(total) => {
                    let rate = prev.and_then(|(before, at)| rate(before, at, *total, now));
                    *prev = Some((*total, now));
                    rate.map_or_else(|| "-".into(), |r| format!("{r:.0}"))
                }
                Err(e) => {
                    *prev = None;
                    if notes.is_empty() {
                        notes.push(e.clone());
                    }
                    "?".into()
                }
            };
            ViewRow {
                exited: false,
                leaders,
                ops_per_sec,
                note: notes.join("; "),
            }
        }
    }
}

/// Per-second rate between two readings of a counter; `None` if no time passed or the
/// counter went down (the node restarted).
fn rate(before: f64, before_at: Instant, after: f64, after_at: Instant) -> Option<f64> {
    let secs = after_at.checked_duration_since(before_at)?.as_secs_f64();
    if secs <= 0.0 || after < before {
        return None;
    }
    Some((after - before) / secs)
}

/// GET `/status` of one node.
async fn fetch_status(addr: &str) -> Result<NodeStatus, String> {
    let body = get(addr, "/status").await?;
    serde_json::from_slice(&body).map_err(|e| format!("bad /status answer: {e}"))
}

/// GET `/metrics` of one node and add up its RESP command counters.
async fn fetch_commands_total(addr: &str) -> Result<f64, String> {
    let body = get(addr, "/metrics").await?;
    Ok(sum_counter(&String::from_utf8_lossy(&body), COMMANDS_TOTAL))
}

async fn get(addr: &str, path: &str) -> Result<bytes::Bytes, String> {
    let client = StatusClient::new(addr, REQUEST_TIMEOUT);
    let resp = client
        .request(Method::GET, path)
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status.is_success() {
        return Err(format!("GET {path} on {addr} answered {}", resp.status));
    }
    Ok(resp.body)
}

/// The sum over every label set of the counter `name` in Prometheus text format (0 if it has
/// no samples yet: a counter appears with its first increment).
pub fn sum_counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if let Some(labels) = rest.strip_prefix('{') {
                labels.split_once('}')?.1
            } else if rest.starts_with(char::is_whitespace) {
                rest
            } else {
                // Another metric whose name starts with `name`.
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .filter(|v| v.is_finite())
        .sum()
}

/// The live view: redrawn in place on a terminal, one line per refresh otherwise.
enum View {
    Terminal {
        bars: Vec<ProgressBar>,
        ids: Vec<u64>,
    },
    Lines {
        ids: Vec<u64>,
    },
}

impl View {
    fn new(plan: &ClusterPlan) -> View {
        let ids: Vec<u64> = plan.nodes.iter().map(|n| n.id).collect();
        if !std::io::stdout().is_terminal() {
            return View::Lines { ids };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template("{msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars: Vec<ProgressBar> = (0..ids.len() + 2)
            .map(|_| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar
            })
            .collect();
        View::Terminal { bars, ids }
    }

    fn show(&mut self, elapsed: Duration, rows: &[ViewRow]) {
        match self {
            View::Terminal { bars, ids } => {
                let lines = view_table(elapsed, ids, rows);
                for (bar, line) in bars.iter().zip(lines) {
                    bar.set_message(line);
                }
            }
            View::Lines { ids } => println!("{}", view_line(elapsed, ids, rows)),
        }
    }

    /// Leaves the last view on the screen.
    fn finish(&mut self) {
        if let View::Terminal { bars, .. } = self {
            for bar in bars.iter() {
                bar.abandon();
            }
        }
    }
}

/// The terminal view: a header, one line per node, a total.
fn view_table(elapsed: Duration, ids: &[u64], rows: &[ViewRow]) -> Vec<String> {
    let line = |a: &str, b: &str, c: &str, d: &str| format!("{a:<6}{b:>8}  {c:>10}  {d}");
    let mut out = vec![line(
        "NODE",
        "LEADERS",
        "OPS/S",
        &format!("(up {}s)", elapsed.as_secs()),
    )];
    for (id, row) in ids.iter().zip(rows) {
        out.push(line(
            &id.to_string(),
            &row.leaders,
            &row.ops_per_sec,
            &row.note,
        ));
    }
    let (leaders, ops) = totals(rows);
    out.push(line("all", &leaders, &ops, ""));
    out
}

/// The line printed per refresh when stdout is not a terminal.
fn view_line(elapsed: Duration, ids: &[u64], rows: &[ViewRow]) -> String {
    let nodes: Vec<String> = ids
        .iter()
        .zip(rows)
        .map(|(id, r)| {
            if r.exited {
                return format!("node {id}: {}", r.note);
            }
            let mut s = format!("node {id}: {} leaders {} ops/s", r.leaders, r.ops_per_sec);
            if !r.note.is_empty() {
                let _ = write!(s, " ({})", r.note);
            }
            s
        })
        .collect();
    let (_, ops) = totals(rows);
    format!(
        "[{:>4}s] {} | all: {ops} ops/s",
        elapsed.as_secs(),
        nodes.join(" | ")
    )
}

/// Sums of the numeric cells (nodes without a number are left out; `-` if none has one).
fn totals(rows: &[ViewRow]) -> (String, String) {
    let leaders: Vec<usize> = rows.iter().filter_map(|r| r.leaders.parse().ok()).collect();
    let ops: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.ops_per_sec.parse().ok())
        .collect();
    let leaders = if leaders.is_empty() {
        "-".to_string()
    } else {
        leaders.iter().sum::<usize>().to_string()
    };
    // Summed from 0.0, since an empty f64 sum is -0.0 and would print as "-0".
    let ops = if ops.is_empty() {
        "-".to_string()
    } else {
        format!("{:.0}", ops.iter().fold(0.0, |a, b| a + b))
    };
    (leaders, ops)
}

/// The last lines of a log file (or why it cannot be read).
fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES_MAX)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            let tail: Vec<String> = lines[start..].iter().map(|l| format!("  {l}")).collect();
            if tail.is_empty() {
                "  (the log is empty)".into()
            } else {
                tail.join("\n")
            }
        }
        Err(e) => format!("  (cannot read it: {e})"),
    }
}

/// The server processes. Dropping this kills (SIGKILL) any that still run, so no error path
/// of the command leaves nodes behind; [`Processes::stop`] is the orderly way.
#[derive(Default)]
struct Processes {
    nodes: Vec<NodeProcess>,
}

struct NodeProcess {
    id: u64,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Processes {
    /// Starts `node` as `exe server …`, its output appended to its log file.
    fn spawn(
        &mut self,
        exe: &Path,
        plan: &ClusterPlan,
        node: &NodePlan,
    ) -> Result<(), ClusterError> {
        let spawn_err = |message: String| ClusterError::Spawn {
            node: node.id,
            message,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_file)
            .map_err(|e| {
                spawn_err(format!(
                    "cannot open its log {}: {e}",
                    node.log_file.display()
                ))
            })?;
        let log_err = log.try_clone().map_err(|e| {
            spawn_err(format!(
                "cannot open its log {}: {e}",
                node.log_file.display()
            ))
        })?;
        let mut cmd = Command::new(exe);
        cmd.args(plan.server_args(node))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a terminal's Ctrl-C goes to this command only, which
            // then stops the nodes itself (and a node never sees the signal twice).
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .map_err(|e| spawn_err(format!("{}: {e}", exe.display())))?;
        self.nodes.push(NodeProcess {
            id: node.id,
            child,
            exited: None,
        });
        Ok(())
    }

    /// Nodes that exited since the last call, with how.
    fn newly_exited(&mut self) -> Vec<(u64, ExitStatus)> {
        let mut out = Vec::new();
        for n in self.nodes.iter_mut().filter(|n| n.exited.is_none()) {
            if let Ok(Some(status)) = n.child.try_wait() {
                n.exited = Some(status);
                out.push((n.id, status));
            }
        }
        out
    }

    fn exit_status(&self, id: u64) -> Option<ExitStatus> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.exited)
    }

    fn all_exited(&self) -> bool {
        self.nodes.iter().all(|n| n.exited.is_some())
    }

    /// SIGTERM to every running node, then waits for them (at most [`STOP_WAIT`], or until
    /// another stop signal) and kills the rest. Prints what happened to each node.
    async fn stop(&mut self, signals: &mut StopSignals) {
        self.newly_exited();
        let running: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.exited.is_none())
            .map(|n| n.id)
            .collect();
        if running.is_empty() {
            return;
        }
        println!(
            "stopping nodes {} (each hands its leaderships away first)",
            running
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for n in self.nodes.iter_mut().filter(|n| n.exited.is_none()) {
            if let Err(e) = terminate(&mut n.child) {
                println!("node {}: cannot send SIGTERM ({e}); killing it", n.id);
                let _ = n.child.kill();
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        let mut impatient = false;
        loop {
            for (id, status) in self.newly_exited() {
                println!("node {id} stopped ({status})");
            }
            if self.all_exited() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(STOP_POLL_INTERVAL) => {}
                _ = tokio::time::sleep_until(deadline) => break,
                s = signals.recv() => {
                    println!("{s} again: killing the nodes that are still running");
                    impatient = true;
                    break;
                }
            }
        }
        for n in self.nodes.iter_mut().filter(|n| n.exited.is_none()) {
            if !impatient {
                println!(
                    "node {} did not stop within {STOP_WAIT:?}; killing it",
                    n.id
                );
            }
            let _ = n.child.kill();
            if let Ok(status) = n.child.wait() {
                n.exited = Some(status);
                println!("node {} killed ({status})", n.id);
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut().filter(|n| n.exited.is_none()) {
            if let Ok(None) = n.child.try_wait() {
                let _ = n.child.kill();
            }
            let _ = n.child.wait();
        }
    }
}

/// Asks a node to stop: SIGTERM on Unix (through `kill`, since std has no signal call),
/// a plain kill elsewhere.
fn terminate(child: &mut Child) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        // `sh -c kill` uses the shell's built-in kill, present wherever `sh` is.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {}", child.id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill -TERM failed ({status})"
            )))
        }
    }
    #[cfg(not(unix))]
    {
        child.kill()
    }
}

/// The signals that stop the cluster: SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal
/// closed; the nodes, in their own process groups, would not hear of it).
struct StopSignals {
    #[cfg(unix)]
    streams: [(tokio::signal::unix::Signal, &'static str); 3],
}

impl StopSignals {
    fn install() -> Result<StopSignals, ClusterError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let install = |kind: SignalKind, name: &'static str| {
                signal(kind)
                    .map(|s| (s, name))
                    .map_err(|e| ClusterError::Setup(format!("cannot handle {name}: {e}")))
            };
            Ok(StopSignals {
                streams: [
                    install(SignalKind::interrupt(), "SIGINT")?,
                    install(SignalKind::terminate(), "SIGTERM")?,
                    install(SignalKind::hangup(), "SIGHUP")?,
                ],
            })
        }
        #[cfg(not(unix))]
        {
            Ok(StopSignals {})
        }
    }

    /// Waits for the next stop signal and names it.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            let [(a, an), (b, bn), (c, cn)] = &mut self.streams;
            tokio::select! {
                _ = a.recv() => *an,
                _ = b.recv() => *bn,
                _ = c.recv() => *cn,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{EpochStatus, RegionStatus};
    use bytes::Bytes;

    fn args(nodes: u64, base_port: u16, dir: &Path) -> ClusterArgs {
        ClusterArgs {
            nodes,
            regions: 16,
            data_dir: dir.to_path_buf(),
            base_port,
            seconds: None,
            start_timeout_secs: START_TIMEOUT_SECS_DEFAULT,
        }
    }

    #[test]
    fn ports_are_ten_apart_per_node() {
        assert_eq!(
            node_ports(7100, 1),
            Some(NodePorts {
                raft: 7100,
                resp: 7101,
                http: 7102
            })
        );
        assert_eq!(
            node_ports(7100, 3),
            Some(NodePorts {
                raft: 7120,
                resp: 7121,
                http: 7122
            })
        );
        assert_eq!(node_ports(7100, 0), None);
        assert_eq!(node_ports(65533, 1).map(|p| p.http), Some(65535));
        assert_eq!(node_ports(65534, 1), None);
        assert_eq!(node_ports(65530, 2), None);
    }

    #[test]
    fn server_args_name_every_address_and_the_whole_cluster() {
        let plan = ClusterPlan::new(&args(3, 7100, Path::new("/d"))).unwrap();
        assert_eq!(
            plan.initial_cluster(),
            "1=127.0.0.1:7100,2=127.0.0.1:7110,3=127.0.0.1:7120"
        );
        let got: Vec<String> = plan
            .server_args(&plan.nodes[1])
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let want = [
            "server",
            "--id",
            "2",
            "--data-dir",
            "/d/n2",
            "--raft-addr",
            "127.0.0.1:7110",
            "--client-addr",
            "127.0.0.1:7111",
            "--status-addr",
            "127.0.0.1:7112",
            "--initial-cluster",
            "1=127.0.0.1:7100,2=127.0.0.1:7110,3=127.0.0.1:7120",
            "--initial-regions",
            "16",
        ];
        assert_eq!(got, want);
        assert_eq!(plan.nodes[2].log_file, Path::new("/d/n3.log"));
    }

    #[test]
    fn bad_flags_are_errors_not_panics() {
        let dir = Path::new("/d");
        for (a, needle) in [
            (args(0, 7100, dir), "--nodes 0"),
            (args(NODES_MAX + 1, 7100, dir), "--nodes 10"),
            (args(3, 0, dir), "--base-port"),
            (args(3, 65520, dir), "node 3 would need ports past 65535"),
            (
                ClusterArgs {
                    regions: 0,
                    ..args(3, 7100, dir)
                },
                "--regions 0",
            ),
        ] {
            let e = ClusterPlan::new(&a).unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn a_data_dir_restarts_only_the_same_shape() {
        let dir = tempfile::tempdir().unwrap();
        let plan = ClusterPlan::new(&args(3, 7100, dir.path())).unwrap();
        plan.prepare_data_dir().unwrap();
        plan.prepare_data_dir().unwrap();
        let other = ClusterPlan::new(&args(5, 7100, dir.path())).unwrap();
        let e = other.prepare_data_dir().unwrap_err().to_string();
        assert!(e.contains("--nodes 3 --regions 16"), "{e}");

        let foreign = tempfile::tempdir().unwrap();
        std::fs::create_dir(foreign.path().join("n1")).unwrap();
        let plan = ClusterPlan::new(&args(3, 7100, foreign.path())).unwrap();
        let e = plan.prepare_data_dir().unwrap_err().to_string();
        assert!(e.contains("does not say which cluster"), "{e}");
    }

    #[test]
    fn a_taken_port_is_named() {
        // Node 1's RESP port is the taken one; its raft port (the one below) must be free,
        // or the check names that one first: find such a pair (other tests and processes
        // hold ephemeral ports too).
        let (taken, port) = (0..100)
            .find_map(|_| {
                let taken = TcpListener::bind("127.0.0.1:0").ok()?;
                let port = taken.local_addr().ok()?.port();
                TcpListener::bind(("127.0.0.1", port.checked_sub(1)?)).ok()?;
                Some((taken, port))
            })
            .expect("a taken port with a free one below it");
        let plan = ClusterPlan::new(&args(1, port - 1, Path::new("/d"))).unwrap();
        let e = plan.check_ports_free().unwrap_err().to_string();
        assert!(e.contains(&format!("port {port} (node 1 RESP)")), "{e}");
        drop(taken);
    }

    #[test]
    fn counters_are_summed_over_labels() {
        let text = "# TYPE flotilla_resp_commands_total counter\n\
            flotilla_resp_commands_total{command=\"set\"} 12\n\
            flotilla_resp_commands_total{command=\"get\"} 30\n\
            flotilla_resp_commands_total_other 99\n\
            flotilla_resp_command_errors_total{command=\"set\"} 4\n";
        assert_eq!(sum_counter(text, COMMANDS_TOTAL), 42.0);
        assert_eq!(sum_counter("", COMMANDS_TOTAL), 0.0);
        assert_eq!(
            sum_counter("flotilla_resp_commands_total 5\n", COMMANDS_TOTAL),
            5.0
        );
    }

    #[test]
    fn rates_come_from_successive_readings() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(rate(10.0, t0, 30.0, t1), Some(10.0));
        assert_eq!(rate(30.0, t0, 10.0, t1), None, "a restarted node's counter");
        assert_eq!(rate(10.0, t1, 30.0, t0), None);

        let mut prev = None;
        let sample = |total: f64| NodeSample::Running {
            leaders: Ok(5),
            commands_total: Ok(total),
        };
        let first = view_row(&sample(100.0), &mut prev, t0);
        assert_eq!(
            (first.leaders.as_str(), first.ops_per_sec.as_str()),
            ("5", "-")
        );
        let second = view_row(&sample(300.0), &mut prev, t1);
        assert_eq!(second.ops_per_sec, "100");
    }

    #[test]
    fn the_view_shows_leaders_rates_and_exits() {
        let t0 = Instant::now();
        let mut prev = [None, None];
        let rows = [
            view_row(
                &NodeSample::Running {
                    leaders: Ok(3),
                    commands_total: Ok(7.0),
                },
                &mut prev[0],
                t0,
            ),
            view_row(
                &NodeSample::Exited(exit_status_of("exit 3")),
                &mut prev[1],
                t0,
            ),
        ];
        let line = view_line(Duration::from_secs(4), &[1, 2], &rows);
        assert_eq!(
            line,
            "[   4s] node 1: 3 leaders - ops/s | node 2: exited (exit status: 3) | all: - ops/s"
        );
        let table = view_table(Duration::from_secs(4), &[1, 2], &rows);
        assert_eq!(table.len(), 4);
        assert!(
            table[1].starts_with("1            3           -"),
            "{table:?}"
        );
        assert!(
            table[3].starts_with("all          3           -"),
            "{table:?}"
        );
    }

    /// The exit status of `sh -c SCRIPT`.
    fn exit_status_of(script: &str) -> ExitStatus {
        Command::new("sh").args(["-c", script]).status().unwrap()
    }

    #[test]
    fn the_banner_names_every_node_and_lines_to_try() {
        let region = |id, start: &'static [u8], end: &'static [u8], leader| RegionStatus {
            id,
            start_key: Bytes::from_static(start),
            end_key: Bytes::from_static(end),
            epoch: EpochStatus::default(),
            role: ReplicaRole::Follower,
            term: 1,
            commit: 1,
            applied: 1,
            leader,
            peers: Vec::new(),
        };
        let status = NodeStatus {
            node_id: 1,
            regions: vec![
                region(1, b"", b"h", Some(1)),
                region(2, b"h", b"i", Some(3)),
                region(3, b"i", b"", None),
            ],
            ..Default::default()
        };
        assert!(!serving(&status));
        let plan = ClusterPlan::new(&args(3, 7100, Path::new("/d"))).unwrap();
        let text = banner(&plan, Path::new("/bin/flotilla"));
        assert!(
            text.contains("/bin/flotilla ctl --addr 127.0.0.1:7102 regions"),
            "{text}"
        );
        assert!(text.contains("redis-cli -p 7101 set hello world"), "{text}");
        assert!(
            text.contains("127.0.0.1:7111  127.0.0.1:7112  /d/n2.log"),
            "{text}"
        );
    }
}
