//! One run: start the cluster behind the proxies, run the clients, play the schedule, heal,
//! read every key from every node, check, and write the report.
//!
//! The steps, in order:
//!
//! 1. Make `OUT/seed-S/` (emptied first). When disk faults are asked for, mount a small
//!    tmpfs on each node's data directory; if mounting fails (no privileges), disk faults
//!    are left out of the schedule and the summary says so.
//! 2. Start one proxy per ordered pair of nodes, then the nodes, and wait until every region
//!    has a leader.
//! 3. Start the clients and play the schedule ([`crate::faults`]); each episode's fault is
//!    injected, held, and healed, its churn (leader transfers, splits, merges) is asked for
//!    while the fault holds, and what happened is written to `schedule.txt`. Splits and
//!    merges run on threads of their own (a merge answers only once every replica has it,
//!    so it may wait for a killed node to return); their answers, errors and timeouts
//!    included, are written to `schedule.txt` when they arrive and counted ([`Churn`]),
//!    never judged.
//! 4. Heal everything (restart, resume, free the disk, heal the links), let the clients
//!    run [`RECOVERY`] more, stop them, and wait for the splits and merges still running.
//! 5. Read every hot key through every node until each answers (at most
//!    [`FINAL_READ_TIMEOUT`]); a node that does not is reported as not recovered. Then
//!    every node's regions must tile the key space and all nodes must agree on them
//!    ([`crate::regions::check_layout`]), within [`LAYOUT_TIMEOUT`].
//! 6. Check the history ([`crate::checker`]) and write `history.jsonl`, `summary.txt`,
//!    `verdict.json`, `availability.svg`, and on failure `failure.txt`. The node logs stay
//!    in the directory.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checker::{self, Verdict};
use crate::faults::{Capabilities, Fault, Schedule};
use crate::history::{self, Recorder};
use crate::nodes::{self, Node, NodePorts};
use crate::ports::free_port;
use crate::proxy::Network;
use crate::regions;
use crate::report::{self, Counts};
use crate::workload::{self, ClientKind, WorkloadConfig};

/// Clients keep running this long after every fault healed, so the plot shows recovery.
pub const RECOVERY: Duration = Duration::from_secs(4);
/// Longest wait for every node to answer the final reads after healing.
pub const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the first leaders (a debug build on a busy machine is slow to start).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Size of each node's tmpfs when disk faults are on: room for the WAL (segments of
/// [`WAL_SEGMENT_BYTES`]) and a small RocksDB.
pub const DISK_BYTES: u64 = 96 << 20;
/// After a full disk is freed, the node must take writes again within this time.
pub const DISK_RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// WAL segment size in the harness's server config: small, so a full disk is reached soon
/// and purge frees space in steps.
pub const WAL_SEGMENT_BYTES: u64 = 4 << 20;
/// Longest wait for each read of a split's or merge's admin call. A merge answers once
/// every replica has it, so one during a kill waits for the restart.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);
/// After the final reads, longest wait for every node's regions to tile the key space and
/// agree (a node that was down may still be applying the last splits and merges).
pub const LAYOUT_TIMEOUT: Duration = Duration::from_secs(20);

/// The splits and merges a run asked for and what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Churn {
    /// Splits the schedule played (including those that found nothing to split).
    pub splits: u32,
    /// Split calls that answered 200.
    pub splits_ok: u32,
    /// Merges the schedule played (including those that found no adjacent regions).
    pub merges: u32,
    /// Merge calls that answered 200.
    pub merges_ok: u32,
    /// Split and merge calls refused (HTTP 4xx), failed (5xx) or unanswered (timeout, no
    /// connection), or never sent (no node answered `/status`).
    pub errors: u32,
}

/// A split or merge that finished on its thread: what to log and count.
struct ChurnDone {
    split: bool,
    answer: nodes::AdminAnswer,
    what: String,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `flotilla` binary.
    pub flotilla_bin: PathBuf,
    /// Reports go to `out_dir/seed-S/`.
    pub out_dir: PathBuf,
    /// The seed of the schedule and the workload.
    pub seed: u64,
    /// Length of the faulty part of the run.
    pub seconds: u64,
    /// Nodes (3 or 5 make sense).
    pub nodes: u64,
    /// Regions the cluster is split into.
    pub regions: usize,
    /// Clients of each kind: plain RESP, RESP with own sessions, Rust client.
    pub clients: [usize; 3],
    /// Pause between a client's operations, at most.
    pub think_max: Duration,
    /// Try to mount a tmpfs per node for full-disk faults.
    pub disk_faults: bool,
}

impl RunConfig {
    /// Defaults for a run of `seconds` with `seed`: 3 nodes, 8 regions, 3 + 2 + 2 clients.
    pub fn new(flotilla_bin: PathBuf, out_dir: PathBuf, seed: u64, seconds: u64) -> RunConfig {
        RunConfig {
            flotilla_bin,
            out_dir,
            seed,
            seconds,
            nodes: 3,
            regions: 8,
            clients: [3, 2, 2],
            think_max: Duration::from_millis(40),
            disk_faults: true,
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct RunOutcome {
    /// The report directory.
    pub dir: PathBuf,
    /// The checker's verdict.
    pub verdict: Verdict,
    /// Operations by outcome.
    pub counts: Counts,
    /// Nodes that exited by themselves during the run (with their exit status).
    pub unexpected_exits: Vec<String>,
    /// Nodes that did not answer the final reads in time.
    pub not_recovered: Vec<u64>,
    /// Full-disk episodes whose node did not take writes again within
    /// [`DISK_RECOVERY_TIMEOUT`] of the space being freed (it was then restarted).
    pub disk_not_recovered: Vec<String>,
    /// Why disk faults were left out, if they were.
    pub disk_faults_skipped: Option<String>,
    /// Episodes played.
    pub episodes: usize,
    /// Splits and merges asked for, and how they ended.
    pub churn: Churn,
    /// After healing, why the nodes' regions did not tile the key space or did not agree
    /// within [`LAYOUT_TIMEOUT`] (`None`: they did).
    pub layout_problem: Option<String>,
}

impl RunOutcome {
    /// Whether the run passed: the checker found nothing, no node crashed, every node came
    /// back, and the nodes' regions tile the key space and agree.
    pub fn passed(&self) -> bool {
        self.verdict.ok()
            && self.unexpected_exits.is_empty()
            && self.not_recovered.is_empty()
            && self.disk_not_recovered.is_empty()
            && self.layout_problem.is_none()
    }
}

/// Unmounts the tmpfs mounts when dropped, also on a panic.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// Mounts a tmpfs of [`DISK_BYTES`] on each path; on any failure unmounts what it mounted
/// and answers why.
fn mount_disks(paths: &[PathBuf]) -> Result<Mounts, String> {
    let mut mounts = Mounts(Vec::new());
    for p in paths {
        fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK_BYTES}")])
            .arg("tmpfs")
            .arg(p)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        mounts.0.push(p.clone());
    }
    Ok(mounts)
}

/// Fills the file system holding `dir` with a file of zeros until it is full.
fn fill_disk(dir: &Path) -> std::io::Result<u64> {
    let mut f = fs::File::create(dir.join("chaos-fill"))?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e),
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

fn free_disk(dir: &Path) {
    let _ = fs::remove_file(dir.join("chaos-fill"));
}

/// The schedule log: lines with the time since the workload started.
struct Log {
    file: fs::File,
    start: Instant,
}

impl Log {
    fn line(&mut self, text: &str) {
        let _ = writeln!(
            self.file,
            "{:8.3}s  {text}",
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// Which node leads the most regions (by what each running node says of itself).
fn leader_heaviest(nodes: &[Node]) -> Option<u64> {
    nodes
        .iter()
        .filter(|n| n.is_up() && !n.is_paused())
        .filter_map(|n| {
            let st = n.status()?;
            Some((st.values().filter(|r| r.role == "leader").count(), n.id))
        })
        .max()
        .map(|(_, id)| id)
}

/// Whether every region has a leader that its own node reports.
fn all_led(nodes: &[Node], regions: usize) -> bool {
    let led: usize = nodes
        .iter()
        .filter(|n| n.is_up() && !n.is_paused())
        .filter_map(|n| n.status())
        .map(|st| st.values().filter(|r| r.role == "leader").count())
        .sum();
    led >= regions
}

/// Asks a random region's leader to hand it to a random other node; answers what was done.
fn transfer_one(nodes: &[Node], rng: &mut ChaCha8Rng) -> String {
    let live: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.is_up() && !n.is_paused())
        .collect();
    let mut led = Vec::new();
    for n in &live {
        if let Some(st) = n.status() {
            for (region, r) in st {
                if r.role == "leader" {
                    led.push((n.id, region));
                }
            }
        }
    }
    if led.is_empty() {
        return "leader transfer: no leader found".into();
    }
    let (from, region) = led[rng.gen_range(0..led.len())];
    let others: Vec<u64> = nodes.iter().map(|n| n.id).filter(|&i| i != from).collect();
    let to = others[rng.gen_range(0..others.len())];
    let node = nodes.iter().find(|n| n.id == from).expect("leader's node");
    let answer = node
        .transfer_leader(region, to)
        .unwrap_or_else(|| "no answer".into());
    // One line: the answer is pretty-printed JSON.
    let answer = serde_json::from_str::<serde_json::Value>(&answer)
        .map_or_else(|_| answer.trim().to_string(), |v| v.to_string());
    format!("leader transfer: region {region} n{from} -> n{to}: {answer}")
}

/// The `/status` of a random running, unpaused node that answers: its id and its region
/// ranges, sorted.
fn some_layout(nodes: &[Node], rng: &mut ChaCha8Rng) -> Option<(u64, Vec<regions::RegionRange>)> {
    let mut live: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.is_up() && !n.is_paused())
        .collect();
    while !live.is_empty() {
        let n = live.swap_remove(rng.gen_range(0..live.len()));
        if let Some(st) = n.status() {
            return Some((n.id, regions::ranges(&st)));
        }
    }
    None
}

/// A random running, unpaused node to send an admin call to: its id and status port.
fn some_node(nodes: &[Node], rng: &mut ChaCha8Rng) -> Option<(u64, u16)> {
    let live: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.is_up() && !n.is_paused())
        .collect();
    if live.is_empty() {
        return None;
    }
    let n = live[rng.gen_range(0..live.len())];
    Some((n.id, n.ports.status))
}

/// Picks a split (a region holding hot keys, from some node's `/status`) and sends it to a
/// random node on a thread of its own; answers what was asked (the answer comes on `done`).
fn start_split(
    nodes: &[Node],
    rng: &mut ChaCha8Rng,
    done: &mpsc::Sender<ChurnDone>,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<String, String> {
    let (seen, layout) = some_layout(nodes, rng).ok_or("split: no node answered /status")?;
    let pick = regions::pick_split(&layout, &workload::hot_keys(), rng)
        .ok_or_else(|| format!("split: no region holds a hot key in n{seen}'s /status"))?;
    let (asked, port) = some_node(nodes, rng).ok_or("split: no live node to ask")?;
    let what = format!(
        "split region {} (hot keys {:?}, from n{seen}'s /status) at {} via n{asked}",
        pick.region,
        pick.hot,
        pick.key
            .as_deref()
            .map_or_else(|| "the middle of its data".to_string(), regions::show_key)
    );
    let done = done.clone();
    let w = what.clone();
    threads.push(std::thread::spawn(move || {
        let answer = nodes::split(port, pick.region, pick.key.as_deref(), ADMIN_TIMEOUT);
        let _ = done.send(ChurnDone {
            split: true,
            answer,
            what: w,
        });
    }));
    Ok(what)
}

/// Picks a merge (two adjacent regions in some node's `/status`) and sends it to a random
/// node on a thread of its own; answers what was asked (the answer comes on `done`).
fn start_merge(
    nodes: &[Node],
    rng: &mut ChaCha8Rng,
    done: &mpsc::Sender<ChurnDone>,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<String, String> {
    let (seen, layout) = some_layout(nodes, rng).ok_or("merge: no node answered /status")?;
    let (source, target) = regions::pick_merge(&layout, rng)
        .ok_or_else(|| format!("merge: no adjacent regions in n{seen}'s /status"))?;
    let (asked, port) = some_node(nodes, rng).ok_or("merge: no live node to ask")?;
    let what = format!(
        "merge region {source} into region {target} (adjacent in n{seen}'s /status) via n{asked}"
    );
    let done = done.clone();
    let w = what.clone();
    threads.push(std::thread::spawn(move || {
        let answer = nodes::merge(port, source, target, ADMIN_TIMEOUT);
        let _ = done.send(ChurnDone {
            split: false,
            answer,
            what: w,
        });
    }));
    Ok(what)
}

/// Logs and counts the splits and merges that finished.
fn drain_churn(rx: &mpsc::Receiver<ChurnDone>, log: &mut Log, churn: &mut Churn) {
    while let Ok(d) = rx.try_recv() {
        match (d.split, d.answer.ok()) {
            (true, true) => churn.splits_ok += 1,
            (false, true) => churn.merges_ok += 1,
            _ => churn.errors += 1,
        }
        log.line(&format!("done: {}: {}", d.what, d.answer));
    }
}

/// Runs one seed; answers the outcome, or an error when the harness itself could not run
/// (the binary is missing, the cluster never started).
pub fn run(cfg: &RunConfig) -> Result<RunOutcome, String> {
    let dir = cfg.out_dir.join(format!("seed-{}", cfg.seed));
    if dir.exists() {
        for m in 1..=cfg.nodes {
            // A mount left by a killed earlier run would make the removal fail.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(dir.join(format!("n{m}")))
                .output();
        }
        fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !cfg.flotilla_bin.is_file() {
        return Err(format!(
            "flotilla binary not found at {} (build it with `cargo build -p flotilla-tools --bin flotilla`, or pass --flotilla)",
            cfg.flotilla_bin.display()
        ));
    }

    // 1. Disks.
    let data_dirs: Vec<PathBuf> = (1..=cfg.nodes).map(|i| dir.join(format!("n{i}"))).collect();
    let (_mounts, disk_faults_skipped) = if cfg.disk_faults {
        match mount_disks(&data_dirs) {
            Ok(m) => (Some(m), None),
            Err(why) => (None, Some(why)),
        }
    } else {
        (None, Some("disabled (--no-disk-faults)".to_string()))
    };
    let caps = Capabilities {
        nodes: cfg.nodes,
        disk_faults: disk_faults_skipped.is_none(),
    };
    let schedule = Schedule::generate(cfg.seed, cfg.seconds, caps);

    // 2. Proxies and nodes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let mut nodes = Vec::new();
    for id in 1..=cfg.nodes {
        let ports = NodePorts {
            raft: free_port().map_err(|e| e.to_string())?,
            client: free_port().map_err(|e| e.to_string())?,
            status: free_port().map_err(|e| e.to_string())?,
        };
        nodes.push(Node::new(id, ports, &dir));
    }
    let targets: Vec<(u64, std::net::SocketAddr)> =
        nodes.iter().map(|n| (n.id, n.raft_addr())).collect();
    let net = runtime
        .block_on(Network::start(&targets))
        .map_err(|e| format!("proxies: {e}"))?;
    for n in nodes.iter_mut() {
        n.initial_cluster = targets
            .iter()
            .map(|(id, addr)| {
                let a = if *id == n.id {
                    *addr
                } else {
                    net.addr(n.id, *id)
                };
                format!("{id}={a}")
            })
            .collect::<Vec<_>>()
            .join(",");
    }
    let config = dir.join("server.toml");
    fs::write(
        &config,
        format!(
            "tick_ms = 50\nelection_ticks = 10\nheartbeat_ticks = 2\nrequest_timeout_ms = 2000\n\
             [engine.wal]\nsegment_bytes_max = {WAL_SEGMENT_BYTES}\n\
             [engine.rocksdb]\nblock_cache_bytes = 8388608\nwrite_buffer_bytes = 4194304\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    for n in nodes.iter_mut() {
        n.start(&cfg.flotilla_bin, cfg.regions, &config, "initial")
            .map_err(|e| format!("start n{}: {e}", n.id))?;
    }
    let started = Instant::now();
    while !all_led(&nodes, cfg.regions) {
        for n in nodes.iter_mut() {
            if let Some(status) = n.exited() {
                return Err(format!(
                    "node {} exited at start with {status}; see {}",
                    n.id,
                    n.log.display()
                ));
            }
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(format!(
                "no leader for every region within {START_TIMEOUT:?}; see the logs in {}",
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // 3. Clients and the schedule.
    let start = Instant::now();
    let recorder = Recorder::new(start);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wl = WorkloadConfig {
        nodes: nodes.iter().map(Node::client_addr).collect(),
        think_max: cfg.think_max,
    };
    let mut seeds = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_c11e);
    let mut tasks = Vec::new();
    let mut index = 0usize;
    for (kind, count) in [
        (ClientKind::Resp, cfg.clients[0]),
        (ClientKind::RespSession, cfg.clients[1]),
        (ClientKind::Rust, cfg.clients[2]),
    ] {
        for i in 0..count {
            let seed: u64 = seeds.gen();
            let (wl, rec, stop) = (wl.clone(), recorder.clone(), stop_rx.clone());
            index += 1;
            tasks.push(match kind {
                ClientKind::Resp => runtime.spawn(workload::resp_client(
                    format!("resp{i}"),
                    index,
                    None,
                    seed,
                    wl,
                    rec,
                    stop,
                )),
                ClientKind::RespSession => {
                    let session: u64 = seeds.gen::<u64>() | 1;
                    runtime.spawn(workload::resp_client(
                        format!("sess{i}"),
                        index,
                        Some(session),
                        seed,
                        wl,
                        rec,
                        stop,
                    ))
                }
                ClientKind::Rust => runtime.spawn(workload::rust_client(
                    format!("rust{i}"),
                    seed,
                    wl,
                    rec,
                    stop,
                )),
            });
        }
    }

    let mut log = Log {
        file: fs::File::create(dir.join("schedule.txt")).map_err(|e| e.to_string())?,
        start,
    };
    log.line(&format!(
        "seed {} nodes {} regions {} seconds {} clients resp={} session={} rust={}",
        cfg.seed,
        cfg.nodes,
        cfg.regions,
        cfg.seconds,
        cfg.clients[0],
        cfg.clients[1],
        cfg.clients[2]
    ));
    if let Some(why) = &disk_faults_skipped {
        log.line(&format!("disk faults skipped: {why}"));
    }
    log.line(&format!(
        "schedule: {} episodes, {} splits, {} merges",
        schedule.episodes.len(),
        schedule.splits(),
        schedule.merges()
    ));
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xfa17);
    let (churn_tx, churn_rx) = mpsc::channel::<ChurnDone>();
    let mut churn_threads = Vec::new();
    let mut churn = Churn::default();
    let mut unexpected_exits = Vec::new();
    let mut disk_not_recovered = Vec::new();
    let mut shaded = Vec::new();
    let check_exits = |nodes: &mut Vec<Node>, log: &mut Log, exits: &mut Vec<String>| {
        for n in nodes.iter_mut() {
            if let Some(status) = n.exited() {
                let what = format!("n{} exited by itself with {status}", n.id);
                log.line(&what);
                exits.push(what);
            }
        }
    };
    // Episodes run late when healing takes longer than planned (a node that had to be
    // restarted); the rest of the schedule moves by as much, keeping its gaps.
    let mut shift = Duration::ZERO;
    for planned in &schedule.episodes {
        let mut ep = planned.clone();
        ep.at += shift;
        while start.elapsed() < ep.at {
            check_exits(&mut nodes, &mut log, &mut unexpected_exits);
            std::thread::sleep(Duration::from_millis(20));
        }
        let began = start.elapsed();
        let mut victims: Vec<u64> = Vec::new();
        let mut description = ep.fault.to_string();
        match &ep.fault {
            Fault::Kill { node } => victims.push(*node),
            Fault::KillLeaderHeaviest => {
                if let Some(n) = leader_heaviest(&nodes) {
                    victims.push(n);
                    description = format!("{description}: n{n}");
                }
            }
            Fault::KillTwo { a, b } => victims.extend([*a, *b]),
            Fault::Pause { node } => nodes[*node as usize - 1].pause(),
            Fault::Isolate { node } => net.isolate(*node),
            Fault::CutOneWay { from, to } => net.cut(*from, *to),
            Fault::Delay { ms } => {
                for (a, b) in net.links() {
                    let d = rng.gen_range(ms / 2..=ms + ms / 2);
                    net.delay(a, b, Duration::from_millis(d));
                }
            }
            Fault::DiskFull { node } => {
                let n = &nodes[*node as usize - 1];
                match fill_disk(&n.data_dir) {
                    Ok(bytes) => description = format!("{description}: {bytes} bytes of filler"),
                    Err(e) => description = format!("{description}: filling failed: {e}"),
                }
            }
            Fault::TransfersOnly | Fault::SplitsAndMerges => {}
        }
        for v in &victims {
            nodes[*v as usize - 1].kill();
        }
        log.line(&format!("start: {description} for {:?}", ep.duration));
        let end = ep.at + ep.duration;
        // The churn, spread over the episode: transfers evenly, splits from the first
        // quarter on, merges from the third.
        let mut churn_at: Vec<(Duration, u8)> = Vec::new();
        for t in 0..ep.transfers {
            churn_at.push((ep.at + ep.duration * (t + 1) / (ep.transfers + 1), 0));
        }
        for t in 0..ep.splits {
            churn_at.push((ep.at + ep.duration * (4 * t + 1) / (4 * ep.splits), 1));
        }
        for t in 0..ep.merges {
            churn_at.push((ep.at + ep.duration * (4 * t + 3) / (4 * ep.merges), 2));
        }
        churn_at.sort();
        for (at, what) in churn_at {
            while start.elapsed() < at {
                drain_churn(&churn_rx, &mut log, &mut churn);
                std::thread::sleep(Duration::from_millis(20));
            }
            let line = match what {
                0 => transfer_one(&nodes, &mut rng),
                1 => {
                    churn.splits += 1;
                    start_split(&nodes, &mut rng, &churn_tx, &mut churn_threads)
                        .map(|w| format!("asked: {w}"))
                        .unwrap_or_else(|e| {
                            churn.errors += 1;
                            e
                        })
                }
                _ => {
                    churn.merges += 1;
                    start_merge(&nodes, &mut rng, &churn_tx, &mut churn_threads)
                        .map(|w| format!("asked: {w}"))
                        .unwrap_or_else(|e| {
                            churn.errors += 1;
                            e
                        })
                }
            };
            log.line(&line);
        }
        if let Fault::DiskFull { node } = &ep.fault {
            while start.elapsed() < ep.at + ep.duration / 2 {
                std::thread::sleep(Duration::from_millis(20));
            }
            // What a client writing through the full node is told.
            let addr = nodes[*node as usize - 1].client_addr();
            let answer = runtime.block_on(workload::probe_write(&addr, "full"));
            log.line(&format!(
                "write through n{node} while its disk is full: {answer:?}"
            ));
        }
        while start.elapsed() < end {
            check_exits(&mut nodes, &mut log, &mut unexpected_exits);
            drain_churn(&churn_rx, &mut log, &mut churn);
            std::thread::sleep(Duration::from_millis(20));
        }
        // Heal.
        match &ep.fault {
            Fault::Pause { node } => nodes[*node as usize - 1].resume(),
            Fault::Isolate { .. } | Fault::CutOneWay { .. } | Fault::Delay { .. } => net.heal(),
            Fault::DiskFull { node } => free_disk(&nodes[*node as usize - 1].data_dir),
            _ => {}
        }
        for v in &victims {
            nodes[*v as usize - 1]
                .start(
                    &cfg.flotilla_bin,
                    cfg.regions,
                    &config,
                    "restart after kill",
                )
                .map_err(|e| format!("restart n{v}: {e}"))?;
        }
        log.line(&format!("heal: {}", ep.fault));
        if let Fault::DiskFull { node } = &ep.fault {
            let n = &mut nodes[*node as usize - 1];
            let freed = Instant::now();
            let recovered = loop {
                match runtime.block_on(workload::probe_write(&n.client_addr(), "freed")) {
                    Ok(_) => break true,
                    Err(e) if freed.elapsed() > DISK_RECOVERY_TIMEOUT => {
                        log.line(&format!("n{node} takes no writes {DISK_RECOVERY_TIMEOUT:?} after its disk was freed: {e}"));
                        break false;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            };
            if recovered {
                log.line(&format!(
                    "n{node} takes writes again {:?} after its disk was freed",
                    freed.elapsed()
                ));
            } else {
                disk_not_recovered.push(format!("n{node} (episode at {:?})", ep.at));
                n.kill();
                n.start(
                    &cfg.flotilla_bin,
                    cfg.regions,
                    &config,
                    "restart: no recovery after a full disk",
                )
                .map_err(|e| format!("restart n{node}: {e}"))?;
                log.line(&format!("n{node} restarted by the harness"));
            }
        }
        shaded.push((
            began.as_secs_f64(),
            start.elapsed().as_secs_f64(),
            description,
        ));
        shift += start.elapsed().saturating_sub(ep.at + ep.duration);
    }
    while start.elapsed() < Duration::from_secs(cfg.seconds) + shift {
        check_exits(&mut nodes, &mut log, &mut unexpected_exits);
        drain_churn(&churn_rx, &mut log, &mut churn);
        std::thread::sleep(Duration::from_millis(20));
    }

    // 4. Everything healed; a node that exited by itself is restarted (and reported).
    net.heal();
    for n in nodes.iter_mut() {
        if n.is_paused() {
            n.resume();
        }
        free_disk(&n.data_dir);
    }
    check_exits(&mut nodes, &mut log, &mut unexpected_exits);
    for n in nodes.iter_mut() {
        if !n.is_up() {
            n.start(&cfg.flotilla_bin, cfg.regions, &config, "restart at heal")
                .map_err(|e| format!("restart n{}: {e}", n.id))?;
        }
    }
    log.line("all faults healed");
    std::thread::sleep(RECOVERY);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = runtime.block_on(t);
    }
    log.line("clients stopped");
    // Splits and merges still running end now that every node is back (or time out).
    for t in churn_threads {
        let _ = t.join();
    }
    drain_churn(&churn_rx, &mut log, &mut churn);
    log.line(&format!(
        "splits: {} played, {} ok; merges: {} played, {} ok; {} refused, failed or unanswered",
        churn.splits, churn.splits_ok, churn.merges, churn.merges_ok, churn.errors
    ));

    // 5. Final reads through every node.
    let mut not_recovered = Vec::new();
    let final_deadline = Instant::now() + FINAL_READ_TIMEOUT;
    for n in &nodes {
        loop {
            let ok = runtime.block_on(workload::final_reads(&n.client_addr(), &recorder));
            if ok == workload::hot_keys().len() {
                log.line(&format!("final reads through n{}: every key read", n.id));
                break;
            }
            if Instant::now() > final_deadline {
                log.line(&format!(
                    "final reads through n{}: not every key readable",
                    n.id
                ));
                not_recovered.push(n.id);
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The layout: every node's regions tile the key space, and all nodes agree.
    let layout_deadline = Instant::now() + LAYOUT_TIMEOUT;
    let layout_problem = loop {
        let views: Vec<(u64, Option<Vec<regions::RegionRange>>)> = nodes
            .iter()
            .map(|n| (n.id, n.status().map(|st| regions::ranges(&st))))
            .collect();
        match regions::check_layout(&views) {
            Ok(()) => {
                let count = views[0].1.as_ref().map_or(0, Vec::len);
                log.line(&format!(
                    "layout: {count} regions, tiling the key space, the same on every node"
                ));
                break None;
            }
            Err(problem) if Instant::now() > layout_deadline => {
                log.line(&format!(
                    "layout: not settled {LAYOUT_TIMEOUT:?} after the final reads:\n{problem}"
                ));
                break Some(problem);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    for n in nodes.iter_mut() {
        if !n.terminate(Duration::from_secs(15)) {
            log.line(&format!("n{} did not exit 0 on SIGTERM", n.id));
        }
    }
    let (fwd, dropped) = net.bytes();
    log.line(&format!(
        "proxies: {fwd} bytes forwarded, {dropped} bytes dropped by cuts"
    ));
    drop(net);
    drop(runtime);

    // 6. Check and report.
    let records = recorder.snapshot();
    let verdict = checker::check(&records, &workload::hot_keys());
    let counts = Counts::of(&records);
    let outcome = RunOutcome {
        dir: dir.clone(),
        verdict,
        counts,
        unexpected_exits,
        not_recovered,
        disk_not_recovered,
        disk_faults_skipped,
        episodes: schedule.episodes.len(),
        churn,
        layout_problem,
    };
    write_report(&dir, &records, &outcome, &shaded).map_err(|e| format!("report: {e}"))?;
    Ok(outcome)
}

fn write_report(
    dir: &Path,
    records: &[history::Record],
    o: &RunOutcome,
    shaded: &[(f64, f64, String)],
) -> std::io::Result<()> {
    history::write_jsonl(&dir.join("history.jsonl"), records)?;
    fs::write(
        dir.join("availability.svg"),
        report::availability_svg(&report::availability(records), shaded),
    )?;
    fs::write(
        dir.join("verdict.json"),
        serde_json::to_string_pretty(&o.verdict).map_err(std::io::Error::other)?,
    )?;
    let mut s = String::new();
    let _ = writeln!(s, "verdict: {}", if o.passed() { "PASS" } else { "FAIL" });
    let by = |kind: &str| {
        Counts::of(records.iter().filter(|r| {
            let name = serde_json::to_value(&r.kind)
                .ok()
                .and_then(|v| v["op"].as_str().map(str::to_string));
            name.as_deref() == Some(kind)
        }))
    };
    let _ = writeln!(
        s,
        "operations: {} (ok {}, failed {}, unknown {})",
        o.counts.total(),
        o.counts.ok,
        o.counts.fail,
        o.counts.unknown
    );
    for kind in ["set", "get", "incr", "range"] {
        let c = by(kind);
        let _ = writeln!(
            s,
            "  {kind:<6} ok {:>6}  failed {:>6}  unknown {:>6}",
            c.ok, c.fail, c.unknown
        );
    }
    let _ = writeln!(s, "fault episodes: {} (schedule.txt)", o.episodes);
    let c = &o.churn;
    let _ = writeln!(
        s,
        "splits: {} (ok {}); merges: {} (ok {}); refused, failed or unanswered: {}",
        c.splits, c.splits_ok, c.merges, c.merges_ok, c.errors
    );
    match &o.layout_problem {
        None => {
            let _ = writeln!(s, "regions: tile the key space, every node agrees");
        }
        Some(p) => {
            let _ = writeln!(s, "regions: LAYOUT PROBLEM after healing:");
            for line in p.lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
    }
    if let Some(why) = &o.disk_faults_skipped {
        let _ = writeln!(s, "disk faults skipped: {why}");
    }
    let _ = writeln!(s, "keys checked: {:?}", o.verdict.keys);
    let _ = writeln!(
        s,
        "linearizable: {}",
        if o.verdict.not_linearizable.is_empty() {
            "every key".to_string()
        } else {
            format!(
                "NOT for {:?}",
                o.verdict
                    .not_linearizable
                    .iter()
                    .map(|f| &f.key)
                    .collect::<Vec<_>>()
            )
        }
    );
    let _ = writeln!(s, "lost writes: {}", o.verdict.lost_writes.len());
    let _ = writeln!(s, "invented values: {}", o.verdict.invented_values.len());
    let _ = writeln!(
        s,
        "failed writes visible: {}",
        o.verdict.failed_writes_visible.len()
    );
    for e in &o.unexpected_exits {
        let _ = writeln!(s, "unexpected exit: {e}");
    }
    for n in &o.disk_not_recovered {
        let _ = writeln!(s, "no recovery after a full disk was freed: {n}");
    }
    for n in &o.not_recovered {
        let _ = writeln!(s, "not recovered: n{n} did not answer the final reads");
    }
    let _ = writeln!(s, "node logs: n*.log; availability: availability.svg");
    fs::write(dir.join("summary.txt"), &s)?;
    if !o.passed() {
        let mut f = o.verdict.describe();
        if let Some(p) = &o.layout_problem {
            let _ = write!(
                f,
                "\nregion layout after healing (LAYOUT_TIMEOUT {LAYOUT_TIMEOUT:?}):\n{p}"
            );
        }
        fs::write(dir.join("failure.txt"), f)?;
    }
    Ok(())
}
