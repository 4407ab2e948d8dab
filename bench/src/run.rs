//! `flotilla-bench run`: start the systems, sweep the cells, write the results.
//!
//! The steps, in order:
//!
//! 1. Work out the configuration (flags, or the `--quick` preset) and check it.
//! 2. Describe the machine and measure its limits (fdatasync/s in the data directory,
//!    loopback TCP bandwidth, cores).
//! 3. For each system: start it (a Flotilla cluster per `--regions` value; the peers once),
//!    wait until it serves (Flotilla: every region has a leader and leaders are balanced),
//!    then run every cell of the sweep on it — load the keys first for workloads that read
//!    — and stop it.
//! 4. Write the JSON file, print the table and how close the results are to the limits;
//!    with `--quick`, a last summary line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::driver::etcd::EtcdCaller;
use crate::driver::native::NativeCaller;
use crate::driver::{resp, slots, Phases, Progress, Schedule, SharedProgress, StreamOutcome};
use crate::latency::{quoted_latency, Percentiles};
use crate::machine::{
    busy_cores, cpu_ticks, measure_limits, process_cores, process_ticks, Limits, MachineInfo,
};
use crate::report;
use crate::results::{
    git_state, now_utc, Cell, Measured, Outcome, RunConfig, RunFile, ServerConfigFile, SCHEMA,
};
use crate::system::flotilla::FlotillaCluster;
use crate::system::peers::{self, Peer};
use crate::workload::{value_of, OpGen, Workload};

/// Default of `--base-port`: Flotilla node N uses BASE + 10 (N − 1) .. +2; etcd members
/// BASE + 100 + 10 i (client) and +1 (peer); Redis BASE + 200. Away from `flotilla
/// cluster`'s 7100 so both can run at once.
pub const BASE_PORT_DEFAULT: u16 = 7600;
/// Connections and pipeline depth of the load phase that fills the keys before reads.
const LOAD_CONNECTIONS: usize = 16;
const LOAD_PIPELINE: usize = 32;
/// The load phase gives up after this long (the cells then read what is there).
const LOAD_TIME_MAX: Duration = Duration::from_secs(300);
/// Readiness of a started system, at most.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for leaders to spread evenly once every region has one.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(20);
/// Progress bar refresh.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Limits of the flags: enough for any sweep on one machine.
const CLIENTS_MAX: usize = 4096;
const PIPELINE_MAX: usize = 1024;

/// `flotilla-bench run` flags. Lists are comma-separated and swept (every combination).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Systems to measure: flotilla, etcd, redis.
    #[arg(long, value_delimiter = ',', default_value = "flotilla")]
    pub system: Vec<String>,
    /// How to drive Flotilla: resp (RESP connections spread over the nodes, followers
    /// forward) or native (the Rust client, straight to each region's leader).
    #[arg(long, default_value = "resp")]
    pub client: String,
    /// Workloads: write, read, mixed (90/10 and 50/50 reads/writes), mixed-N, scan, hot.
    #[arg(long, value_delimiter = ',', default_value = "write")]
    pub workload: Vec<String>,
    /// Regions of the Flotilla clusters started (one cluster per value).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub regions: Vec<usize>,
    /// Value sizes, bytes.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub value_size: Vec<usize>,
    /// Connections.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub clients: Vec<usize>,
    /// Requests in flight per connection.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub pipeline: Vec<usize>,
    /// Offered loads in ops/s (open loop); without it, closed loop.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Measured seconds per cell [default: 10].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Warm-up seconds per cell [default: 2].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Seed of the key and operation choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Key space size (read workloads load every key first).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Flotilla nodes and etcd members.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Drive a running Flotilla cluster at these RESP addresses instead of starting one.
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<String>,
    /// Start the Flotilla nodes inside this process (in-memory raft network) instead of as
    /// server processes: for tests; the nodes then share the driver's cores and runtime.
    #[arg(long)]
    pub in_process: bool,
    /// The `flotilla` binary [default: next to this program].
    #[arg(long)]
    pub flotilla: Option<PathBuf>,
    /// Where started systems keep their data (a fresh directory each, removed after).
    #[arg(long, default_value = "/tmp/flotilla-bench")]
    pub data_dir: PathBuf,
    /// Keep the started systems' data directories (and logs) after the run.
    #[arg(long)]
    pub keep_data: bool,
    /// First port of the started systems (see the module docs for the layout).
    #[arg(long, default_value_t = BASE_PORT_DEFAULT)]
    pub base_port: u16,
    /// A TOML file of `flotilla server` settings (see docs/operations.md) given to every
    /// node the bench starts; its text is recorded in the run's JSON.
    #[arg(long)]
    pub server_config: Option<PathBuf>,
    /// Where the run's JSON file goes.
    #[arg(long, default_value = "bench/results")]
    pub results_dir: PathBuf,
    /// The quick preset: write workload, 16-byte values, 64 clients, pipeline 16, 64
    /// regions and the 1-region baseline, etcd beside them when installed; 10 s per cell
    /// unless --seconds says otherwise. Ends with a one-line summary.
    #[arg(long)]
    pub quick: bool,
}

/// What to drive.
#[derive(Debug, Clone)]
enum Endpoint {
    /// RESP connections, spread over the addresses in turn.
    Resp(Vec<String>),
    /// `flotilla-client`, one per connection, knowing every node.
    Native(Vec<String>),
    /// `etcd-client`, one per connection, spread over the members in turn.
    Etcd(Vec<String>),
}

impl Endpoint {
    fn client_name(&self) -> &'static str {
        match self {
            Endpoint::Resp(_) => "resp",
            Endpoint::Native(_) => "native",
            Endpoint::Etcd(_) => "etcd-client",
        }
    }
}

/// One combination of the sweep, apart from the system.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Combo {
    workload: Workload,
    value_size: usize,
    clients: usize,
    pipeline: usize,
    rate: Option<f64>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What goes into the JSON file.
    pub config: RunConfig,
    /// The `flotilla` binary.
    pub flotilla: PathBuf,
    /// Data directory parent.
    pub data_dir: PathBuf,
    /// Keep data.
    pub keep_data: bool,
    /// First port.
    pub base_port: u16,
    /// Results directory.
    pub results_dir: PathBuf,
}

/// Whether the run drives nodes it does not start as processes.
fn cluster_is_not_started(args: &RunArgs) -> bool {
    !args.target.is_empty() || args.in_process
}

impl Plan {
    /// Checks the flags and applies the `--quick` preset.
    pub fn new(args: &RunArgs) -> Result<Plan, String> {
        let mut systems = args.system.clone();
        let mut workloads = Vec::new();
        for w in &args.workload {
            workloads.extend(Workload::parse_list(w)?);
        }
        let (mut regions, mut value_sizes, mut clients, mut pipelines) = (
            args.regions.clone(),
            args.value_size.clone(),
            args.clients.clone(),
            args.pipeline.clone(),
        );
        if args.quick {
            if !args.target.is_empty() {
                return Err(
                    "--quick starts its own clusters (64 regions and 1); it cannot use --target"
                        .into(),
                );
            }
            systems = vec!["flotilla".into()];
            if peers::etcd_binary().is_ok() {
                systems.push("etcd".into());
            }
            workloads = vec![Workload::Write];
            regions = vec![64, 1];
            value_sizes = vec![16];
            clients = vec![64];
            pipelines = vec![16];
        }
        for s in &systems {
            if !["flotilla", "etcd", "redis"].contains(&s.as_str()) {
                return Err(format!("unknown system {s:?}: flotilla, etcd or redis"));
            }
        }
        if !["resp", "native"].contains(&args.client.as_str()) {
            return Err(format!("--client {}: resp or native", args.client));
        }
        let in_range = |name: &str, v: &[usize], lo: usize, hi: usize| -> Result<(), String> {
            if v.is_empty() || v.iter().any(|x| !(lo..=hi).contains(x)) {
                return Err(format!("--{name} values must be {lo} ..= {hi}"));
            }
            Ok(())
        };
        in_range("regions", &regions, 1, flotilla_tools::cluster::REGIONS_MAX)?;
        in_range("value-size", &value_sizes, 0, 64 << 20)?;
        in_range("clients", &clients, 1, CLIENTS_MAX)?;
        in_range("pipeline", &pipelines, 1, PIPELINE_MAX)?;
        in_range("nodes", &[args.nodes], 1, 9)?;
        if args.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            return Err("--rate values must be positive".into());
        }
        let seconds = args.seconds.unwrap_or(10.0);
        let warmup = args.warmup.unwrap_or(2.0);
        if !(seconds > 0.0 && seconds.is_finite() && warmup >= 0.0 && warmup.is_finite()) {
            return Err("--seconds must be positive and --warmup not negative".into());
        }
        if !(1..=crate::keys::KEYS_MAX).contains(&args.keys) {
            return Err(format!("--keys must be 1 ..= {}", crate::keys::KEYS_MAX));
        }
        if !args.target.is_empty() && args.in_process {
            return Err("--target and --in-process exclude each other".into());
        }
        if args.server_config.is_some() && cluster_is_not_started(args) {
            return Err(
                "--server-config applies to the server processes the bench starts, not to \
                 --target or --in-process"
                    .into(),
            );
        }
        let server_config = match &args.server_config {
            Some(path) => Some(ServerConfigFile {
                path: path.display().to_string(),
                text: std::fs::read_to_string(path)
                    .map_err(|e| format!("--server-config {}: {e}", path.display()))?,
            }),
            None => None,
        };
        let cluster = if !args.target.is_empty() {
            "target"
        } else if args.in_process {
            "in-process"
        } else {
            "process"
        };
        let flotilla = match &args.flotilla {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find this program's path: {e}"))?
                .with_file_name("flotilla"),
        };
        Ok(Plan {
            config: RunConfig {
                systems,
                client: args.client.clone(),
                workloads,
                regions: if args.target.is_empty() {
                    regions
                } else {
                    Vec::new()
                },
                value_sizes,
                clients,
                pipelines,
                rates: args.rate.clone(),
                seconds,
                warmup,
                seed: args.seed,
                keys: args.keys,
                nodes: args.nodes,
                cluster: cluster.into(),
                target: args.target.clone(),
                quick: args.quick,
                server_config,
            },
            flotilla,
            data_dir: args.data_dir.clone(),
            keep_data: args.keep_data,
            base_port: args.base_port,
            results_dir: args.results_dir.clone(),
        })
    }

    fn combos(&self) -> Vec<Combo> {
        let c = &self.config;
        let rates: Vec<Option<f64>> = if c.rates.is_empty() {
            vec![None]
        } else {
            c.rates.iter().copied().map(Some).collect()
        };
        let mut out = Vec::new();
        for &workload in &c.workloads {
            for &value_size in &c.value_sizes {
                for &clients in &c.clients {
                    for &pipeline in &c.pipelines {
                        for &rate in &rates {
                            out.push(Combo {
                                workload,
                                value_size,
                                clients,
                                pipeline,
                                rate,
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

/// Runs the whole plan; answers the run and the path of its JSON file.
pub async fn run(plan: &Plan, command: String) -> Result<(RunFile, PathBuf), String> {
    let cfg = &plan.config;
    std::fs::create_dir_all(&plan.data_dir)
        .map_err(|e| format!("{}: {e}", plan.data_dir.display()))?;
    let started_at = now_utc();
    let (git_commit, git_dirty) = git_state();
    let machine = MachineInfo::probe(&plan.data_dir);
    let (sync_for, net_for) = if cfg.quick {
        (Duration::from_millis(500), Duration::from_millis(300))
    } else {
        (Duration::from_secs(1), Duration::from_millis(500))
    };
    let dd = plan.data_dir.clone();
    let limits = tokio::task::spawn_blocking(move || measure_limits(&dd, sync_for, net_for))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("measuring the machine's limits: {e}"))?;
    println!(
        "machine: {} cores ({}), load {:.1}; data on {} ({}); limits: {:.0} fdatasync/s, \
         loopback {:.0} MB/s",
        machine.cores,
        machine.cpu_model,
        machine.load_average_1m,
        machine.disk.device,
        machine.disk.fs_type,
        limits.fdatasync_per_sec,
        limits.loopback_mb_per_sec
    );
    let combos = plan.combos();
    let mut cells = Vec::new();
    for system in &cfg.systems {
        match system.as_str() {
            "flotilla" => run_flotilla(plan, &combos, &mut cells).await,
            "etcd" => run_peer(plan, "etcd", &combos, &mut cells).await,
            "redis" => run_peer(plan, "redis", &combos, &mut cells).await,
            other => return Err(format!("unknown system {other:?}")),
        }
    }
    let run = RunFile {
        schema: SCHEMA.into(),
        started_at,
        command,
        git_commit,
        git_dirty,
        machine,
        limits,
        config: cfg.clone(),
        cells,
    };
    let label = if cfg.quick { "quick" } else { "run" };
    let path = run
        .save(&plan.results_dir, label)
        .map_err(|e| format!("writing the results to {}: {e}", plan.results_dir.display()))?;
    Ok((run, path))
}

async fn run_flotilla(plan: &Plan, combos: &[Combo], cells: &mut Vec<Cell>) {
    let cfg = &plan.config;
    let specs: Vec<Option<usize>> = if cfg.target.is_empty() {
        cfg.regions.iter().copied().map(Some).collect()
    } else {
        vec![None]
    };
    for regions in specs {
        // A cluster that cannot start is recorded (its cells skipped, with why) and the sweep
        // goes on: one bad cluster should not lose the others' results.
        let skip_all = |cells: &mut Vec<Cell>, why: String| {
            let which =
                regions.map_or("the target cluster".to_string(), |r| format!("{r} regions"));
            println!("flotilla, {which}: skipped: {why}");
            cells.extend(combos.iter().map(|combo| Cell {
                system: "flotilla".into(),
                client: cfg.client.clone(),
                regions,
                replicas: cfg.nodes,
                workload: combo.workload,
                value_size: combo.value_size,
                clients: combo.clients,
                pipeline: combo.pipeline,
                rate: combo.rate,
                outcome: Outcome::Skipped(why.clone()),
            }));
        };
        let started = match (regions, cfg.cluster.as_str()) {
            (Some(r), "in-process") => {
                FlotillaCluster::start_in_process(cfg.nodes, r, &plan.data_dir).await
            }
            (Some(r), _) => FlotillaCluster::start_processes(
                &plan.flotilla,
                cfg.nodes,
                r,
                &plan.data_dir,
                plan.base_port,
                plan.config
                    .server_config
                    .as_ref()
                    .map(|c| Path::new(&c.path)),
            ),
            (None, _) => Ok(FlotillaCluster::target(cfg.target.clone())),
        };
        let mut cluster = match started {
            Ok(c) => c,
            Err(e) => {
                skip_all(cells, e);
                continue;
            }
        };
        let view = match cluster
            .wait_ready(regions, START_TIMEOUT, BALANCE_TIMEOUT)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // Its data and logs are kept: they say why.
                cluster.stop(true).await;
                skip_all(cells, e);
                continue;
            }
        };
        println!(
            "flotilla: {} nodes, {} regions, leaders per node {:?}{}{}",
            cluster.resp_addrs.len(),
            view.regions,
            view.leaders_per_node,
            if view.balanced {
                ""
            } else {
                " (not balanced in time)"
            },
            if cluster.pids.is_empty() {
                String::new()
            } else {
                format!(", server pids {:?}", cluster.pids)
            }
        );
        let endpoint = if cfg.client == "native" {
            Endpoint::Native(cluster.resp_addrs.clone())
        } else {
            Endpoint::Resp(cluster.resp_addrs.clone())
        };
        let mut loaded = HashSet::new();
        for combo in combos {
            let mut outcome = measure(plan, &endpoint, combo, &cluster.pids, &mut loaded).await;
            if let Outcome::Measured(m) = &mut outcome {
                m.leaders_per_node = view.leaders_per_node.clone();
            }
            cells.push(Cell {
                system: "flotilla".into(),
                client: endpoint.client_name().into(),
                regions: Some(view.regions),
                replicas: cluster.resp_addrs.len(),
                workload: combo.workload,
                value_size: combo.value_size,
                clients: combo.clients,
                pipeline: combo.pipeline,
                rate: combo.rate,
                outcome,
            });
        }
        cluster.stop(plan.keep_data).await;
    }
}

async fn run_peer(plan: &Plan, system: &str, combos: &[Combo], cells: &mut Vec<Cell>) {
    let cfg = &plan.config;
    let started: Result<Peer, String> = match system {
        "etcd" => {
            peers::start_etcd(
                cfg.nodes,
                &plan.data_dir,
                plan.base_port + 100,
                START_TIMEOUT,
            )
            .await
        }
        _ => peers::start_redis(&plan.data_dir, plan.base_port + 200, START_TIMEOUT).await,
    };
    let (replicas, client) = if system == "etcd" {
        (cfg.nodes, "etcd-client")
    } else {
        (1, "resp")
    };
    let cell = |combo: &Combo, outcome| Cell {
        system: system.into(),
        client: client.into(),
        regions: None,
        replicas,
        workload: combo.workload,
        value_size: combo.value_size,
        clients: combo.clients,
        pipeline: combo.pipeline,
        rate: combo.rate,
        outcome,
    };
    let peer = match started {
        Ok(p) => p,
        Err(e) => {
            println!("{system}: skipped: {e}");
            cells.extend(combos.iter().map(|c| cell(c, Outcome::Skipped(e.clone()))));
            return;
        }
    };
    println!(
        "{system}: {} serving, pids {:?}",
        peer.addrs.join(","),
        peer.pids
    );
    let endpoint = if system == "etcd" {
        Endpoint::Etcd(peer.addrs.clone())
    } else {
        Endpoint::Resp(peer.addrs.clone())
    };
    let mut loaded = HashSet::new();
    for combo in combos {
        let outcome = if system == "redis" && combo.workload == crate::workload::Workload::Scan {
            Outcome::Skipped("Redis has no key-ordered range read".into())
        } else {
            measure(plan, &endpoint, combo, &peer.pids, &mut loaded).await
        };
        cells.push(cell(combo, outcome));
    }
    peer.stop(plan.keep_data).await;
}

/// Runs one cell on `endpoint`, whose server processes are `pids` (loading the keys first if its workload reads and they are
/// not loaded with this value size yet).
async fn measure(
    plan: &Plan,
    endpoint: &Endpoint,
    combo: &Combo,
    pids: &[u32],
    loaded: &mut HashSet<usize>,
) -> Outcome {
    let cfg = &plan.config;
    let value = value_of(combo.value_size, cfg.seed);
    let label = format!(
        "{} {} v={} c={} p={}{}",
        endpoint.client_name(),
        combo.workload,
        combo.value_size,
        combo.clients,
        combo.pipeline,
        combo.rate.map(|r| format!(" rate={r}")).unwrap_or_default()
    );
    if combo.workload.needs_load() && !loaded.contains(&combo.value_size) {
        let keys = cfg.keys;
        let v = value.clone();
        let phases = Phases::load(LOAD_TIME_MAX);
        let began = Instant::now();
        let out = drive(
            endpoint,
            LOAD_CONNECTIONS,
            LOAD_PIPELINE,
            None,
            phases,
            Arc::new(Progress::default()),
            move |stream, streams| OpGen::load(keys, v.clone(), stream, streams),
        )
        .await;
        match out {
            Ok(o) => println!(
                "  loaded {} keys of {} bytes in {:.1} s ({} errors)",
                o.measured.ops,
                combo.value_size,
                began.elapsed().as_secs_f64(),
                o.measured.errors
            ),
            Err(e) => return Outcome::Skipped(format!("loading the keys failed: {e}")),
        }
        loaded.insert(combo.value_size);
    }
    let warmup = Duration::from_secs_f64(cfg.warmup);
    let seconds = Duration::from_secs_f64(cfg.seconds);
    let progress: SharedProgress = Arc::new(Progress::default());
    let bar = progress_bar(&label);
    // Connections are opened before the clock starts, so connecting is not measured.
    let phases_after_connect = |connected_at: Instant| Phases {
        start: connected_at,
        measure_from: connected_at + warmup,
        stop: connected_at + warmup + seconds,
    };
    let watcher = {
        let progress = progress.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
            loop {
                ticker.tick().await;
                let now = Instant::now();
                let done = progress.done();
                let rate = (done - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                last = (now, done);
                bar.set_message(format!("{rate:>10.0} ops/s, {} errors", progress.errors()));
            }
        })
    };
    let workload = combo.workload;
    let keys = cfg.keys;
    let seed = cfg.seed;
    let v = value.clone();
    let cpu = Arc::new(std::sync::Mutex::new(CpuUse::default()));
    let cpu_task = {
        let cpu = cpu.clone();
        let pids = pids.to_vec();
        move |phases: Phases| {
            tokio::spawn(async move {
                tokio::time::sleep_until(phases.measure_from).await;
                let before = CpuSample::take(&pids);
                tokio::time::sleep_until(phases.stop).await;
                let after = CpuSample::take(&pids);
                *cpu.lock().unwrap_or_else(|e| e.into_inner()) = before.until(&after);
            })
        }
    };
    let out = drive_timed(
        endpoint,
        combo.clients,
        combo.pipeline,
        combo.rate,
        phases_after_connect,
        progress.clone(),
        cpu_task,
        move |stream, _| OpGen::new(workload, keys, v.clone(), seed, stream),
    )
    .await;
    watcher.abort();
    bar.finish_and_clear();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            println!("  {label}: failed: {e}");
            return Outcome::Skipped(format!("could not run: {e}"));
        }
    };
    let slots = (combo.clients * combo.pipeline) as u64;
    let warmup_rate = if cfg.warmup > 0.0 {
        out.warmup_ops as f64 / cfg.warmup
    } else {
        0.0
    };
    let q = quoted_latency(&out.measured, combo.rate.is_some(), slots, warmup_rate);
    let r = &out.measured;
    let cpu_use = *cpu.lock().unwrap_or_else(|e| e.into_inner());
    let m = Measured {
        seconds: cfg.seconds,
        ops: r.ops,
        ops_per_sec: r.ops as f64 / cfg.seconds,
        mb_per_sec: r.bytes as f64 / cfg.seconds / 1e6,
        errors: r.errors,
        error_samples: r.error_samples.clone(),
        latency: Percentiles::of(&q.histogram),
        latency_basis: q.basis,
        expected_interval_us: q.expected_interval_us,
        service_latency: Percentiles::of(&r.service),
        warmup_ops_per_sec: warmup_rate,
        cpu_busy_cores: cpu_use.machine,
        server_cores: cpu_use.servers,
        driver_cores: cpu_use.driver,
        leaders_per_node: Vec::new(),
    };
    println!(
        "  {label}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, {} errors{}",
        m.ops_per_sec,
        m.latency.p50_ms,
        m.latency.p99_ms,
        m.errors,
        m.error_samples
            .first()
            .map(|e| format!(" (e.g. {e})"))
            .unwrap_or_default()
    );
    Outcome::Measured(Box::new(m))
}

/// Cores used during a window: the whole machine, the started servers, the bench itself.
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    machine: Option<f64>,
    servers: Option<f64>,
    driver: Option<f64>,
}

/// One reading of the CPU counters.
struct CpuSample {
    machine: Option<(u64, u64)>,
    /// Sum over the server processes (`None` if there are none or one has gone).
    servers: Option<u64>,
    driver: Option<u64>,
}

impl CpuSample {
    fn take(pids: &[u32]) -> CpuSample {
        let servers = if pids.is_empty() {
            None
        } else {
            pids.iter().map(|&p| process_ticks(p)).sum::<Option<u64>>()
        };
        CpuSample {
            machine: cpu_ticks(),
            servers,
            driver: process_ticks(std::process::id()),
        }
    }

    fn until(&self, after: &CpuSample) -> CpuUse {
        let cores = crate::machine::cores();
        let (Some(m0), Some(m1)) = (self.machine, after.machine) else {
            return CpuUse::default();
        };
        let of = |a: Option<u64>, b: Option<u64>| process_cores(a?, b?, m0, m1, cores);
        CpuUse {
            machine: busy_cores(m0, m1, cores),
            servers: of(self.servers, after.servers),
            driver: of(self.driver, after.driver),
        }
    }
}

fn progress_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix} [{elapsed:>3}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(PROGRESS_INTERVAL);
    bar
}

/// Drives `conns` connections with fixed phases (the load phase).
async fn drive<G>(
    endpoint: &Endpoint,
    conns: usize,
    pipeline: usize,
    rate: Option<f64>,
    phases: Phases,
    progress: SharedProgress,
    gen: G,
) -> Result<StreamOutcome, String>
where
    G: Fn(u64, u64) -> OpGen,
{
    drive_timed(
        endpoint,
        conns,
        pipeline,
        rate,
        move |_| phases,
        progress,
        |_| tokio::spawn(async {}),
        gen,
    )
    .await
}

/// Opens `conns` connections, then starts the clock (`phases` of the time the last one
/// connected) and drives them; `on_start` sees the phases (the CPU reading).
#[allow(clippy::too_many_arguments)]
async fn drive_timed<P, S, G>(
    endpoint: &Endpoint,
    conns: usize,
    pipeline: usize,
    rate: Option<f64>,
    phases: P,
    progress: SharedProgress,
    on_start: S,
    gen: G,
) -> Result<StreamOutcome, String>
where
    P: FnOnce(Instant) -> Phases,
    S: FnOnce(Phases) -> tokio::task::JoinHandle<()>,
    G: Fn(u64, u64) -> OpGen,
{
    let n = conns as u64;
    let p = pipeline as u64;
    let mut tasks = Vec::with_capacity(conns);
    match endpoint {
        Endpoint::Resp(addrs) => {
            let mut streams = Vec::with_capacity(conns);
            for i in 0..conns {
                streams.push(resp::connect(&addrs[i % addrs.len()]).await?);
            }
            let phases = phases(Instant::now());
            let cpu = on_start(phases);
            for (i, s) in streams.into_iter().enumerate() {
                let schedule = Schedule::for_connection(rate, phases.start, i as u64, n);
                tasks.push(tokio::spawn(resp::run(
                    s,
                    pipeline,
                    gen(i as u64, n),
                    schedule,
                    phases,
                    progress.clone(),
                )));
            }
            let out = join(tasks).await;
            let _ = cpu.await;
            Ok(out)
        }
        Endpoint::Native(addrs) => {
            let mut callers = Vec::with_capacity(conns);
            for _ in 0..conns {
                callers.push(NativeCaller::connect(addrs).await?);
            }
            let phases = phases(Instant::now());
            let cpu = on_start(phases);
            for (i, c) in callers.into_iter().enumerate() {
                let schedule = Schedule::for_connection(rate, phases.start, i as u64, n);
                let gens = (0..p).map(|s| gen(i as u64 * p + s, n * p)).collect();
                tasks.push(tokio::spawn(slots::run(
                    c,
                    gens,
                    schedule,
                    phases,
                    progress.clone(),
                )));
            }
            let out = join(tasks).await;
            let _ = cpu.await;
            Ok(out)
        }
        Endpoint::Etcd(addrs) => {
            let mut callers = Vec::with_capacity(conns);
            for i in 0..conns {
                callers.push(EtcdCaller::connect(&addrs[i % addrs.len()]).await?);
            }
            let phases = phases(Instant::now());
            let cpu = on_start(phases);
            for (i, c) in callers.into_iter().enumerate() {
                let schedule = Schedule::for_connection(rate, phases.start, i as u64, n);
                let gens = (0..p).map(|s| gen(i as u64 * p + s, n * p)).collect();
                tasks.push(tokio::spawn(slots::run(
                    c,
                    gens,
                    schedule,
                    phases,
                    progress.clone(),
                )));
            }
            let out = join(tasks).await;
            let _ = cpu.await;
            Ok(out)
        }
    }
}

async fn join(tasks: Vec<tokio::task::JoinHandle<StreamOutcome>>) -> StreamOutcome {
    let mut out = StreamOutcome::default();
    for t in tasks {
        match t.await {
            Ok(o) => out.merge(&o),
            Err(e) => out
                .measured
                .record_error(format!("driver task failed: {e}")),
        }
    }
    out
}

/// The summary line `--quick` ends with.
pub fn quick_line(run: &RunFile) -> String {
    let find = |system: &str, regions: Option<usize>| {
        run.cells
            .iter()
            .filter(|c| c.system == system && c.workload == Workload::Write)
            .filter(|c| regions.is_none() || c.regions == regions)
            .find_map(Cell::measured)
    };
    let ops = |m: Option<&Measured>| m.map_or("-".to_string(), |m| format!("{:.0}", m.ops_per_sec));
    let r64 = find("flotilla", Some(64));
    let mut line = format!(
        "flotilla-bench: write regions=64 ops/s={} p99_ms={} | regions=1 ops/s={}",
        ops(r64),
        r64.map_or("-".to_string(), |m| format!("{:.2}", m.latency.p99_ms)),
        ops(find("flotilla", Some(1)))
    );
    if run.config.systems.iter().any(|s| s == "etcd") {
        line.push_str(&format!(" | etcd ops/s={}", ops(find("etcd", None))));
    }
    line
}

/// Prints the results table and how close each result came to the machine's limits.
pub fn print_summary(run: &RunFile, path: &Path) {
    println!();
    print!("{}", report::cells_table(run));
    println!();
    print!("{}", limits_notes(run));
    println!("results: {}", path.display());
}

/// One line per measured cell: its rate against the machine's limits.
pub fn limits_notes(run: &RunFile) -> String {
    let l: &Limits = &run.limits;
    let mut out = format!(
        "limits of this machine (measured in this run): {:.0} fdatasync/s, loopback TCP {:.0} \
         MB/s, {} cores\n",
        l.fdatasync_per_sec, l.loopback_mb_per_sec, l.cores
    );
    for c in &run.cells {
        let Some(m) = c.measured() else { continue };
        out.push_str(&format!(
            "  {} {} regions={} v={} c={}x{}: {:.1} ops per raw fdatasync, {:.2} % of loopback \
             bandwidth, {} cores busy (servers {}, driver {})\n",
            c.system,
            c.workload,
            c.regions.map_or("-".into(), |r| r.to_string()),
            c.value_size,
            c.clients,
            c.pipeline,
            m.ops_per_raw_sync(l).unwrap_or(0.0),
            m.loopback_share(l).unwrap_or(0.0) * 100.0,
            m.cpu_busy_cores
                .map_or("?".into(), |b| format!("{b:.2} of {}", l.cores)),
            m.server_cores.map_or("?".into(), |b| format!("{b:.2}")),
            m.driver_cores.map_or("?".into(), |b| format!("{b:.2}")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Plan::new(&cli.run)
    }

    #[test]
    fn lists_are_swept_in_every_combination() {
        let p = plan(&[
            "--workload",
            "write,mixed",
            "--value-size",
            "16,1024",
            "--clients",
            "1,64",
            "--rate",
            "1000,5000",
        ])
        .unwrap();
        // 3 workloads (mixed is two) × 2 sizes × 2 client counts × 1 pipeline × 2 rates.
        assert_eq!(p.combos().len(), 24);
        assert_eq!(p.config.cluster, "process");
        assert_eq!((p.config.seconds, p.config.warmup), (10.0, 2.0));
        assert!(p.flotilla.ends_with("flotilla"));
    }

    #[test]
    fn a_server_config_is_recorded_and_needs_started_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "[engine.rocksdb]\nwrite_buffer_bytes = 8388608\n").unwrap();
        let path = path.to_str().unwrap();
        let p = plan(&["--server-config", path]).unwrap();
        let recorded = p.config.server_config.expect("recorded");
        assert_eq!(recorded.path, path);
        assert!(recorded.text.contains("write_buffer_bytes = 8388608"));
        let e = plan(&["--server-config", path, "--target", "127.0.0.1:1"]).err();
        assert!(e.is_some_and(|e| e.contains("--server-config")));
        let e = plan(&["--server-config", "/no/such/file.toml"]).err();
        assert!(e.is_some_and(|e| e.contains("/no/such/file.toml")));
    }

    #[test]
    fn quick_is_the_issue_preset() {
        let p = plan(&[
            "--quick",
            "--seconds",
            "3",
            "--workload",
            "read",
            "--regions",
            "4",
        ])
        .unwrap();
        let c = &p.config;
        assert_eq!(c.workloads, vec![Workload::Write]);
        assert_eq!(c.regions, vec![64, 1]);
        assert_eq!(
            (c.value_sizes.as_slice(), c.clients.as_slice()),
            (&[16][..], &[64][..])
        );
        assert_eq!(c.seconds, 3.0);
        assert_eq!(c.systems[0], "flotilla");
        assert_eq!(
            c.systems.contains(&"etcd".to_string()),
            peers::etcd_binary().is_ok()
        );
        assert!(plan(&["--quick", "--target", "127.0.0.1:1"])
            .unwrap_err()
            .contains("--target"));
    }

    #[test]
    fn bad_flags_are_refused() {
        for (args, needle) in [
            (&["--system", "mongo"][..], "unknown system"),
            (&["--client", "grpc"], "resp or native"),
            (&["--regions", "0"], "--regions"),
            (&["--pipeline", "5000"], "--pipeline"),
            (&["--rate=-5"], "--rate"),
            (&["--seconds", "0"], "--seconds"),
            (&["--workload", "writes"], "unknown workload"),
            (&["--target", "a:1", "--in-process"], "exclude"),
        ] {
            let e = plan(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn the_quick_line_names_what_ran() {
        let run = crate::results::tests_support::sample_run();
        assert_eq!(
            quick_line(&run),
            "flotilla-bench: write regions=64 ops/s=120000 p99_ms=20.00 | regions=1 \
             ops/s=50000 | etcd ops/s=20000"
        );
        let mut no_etcd = run.clone();
        no_etcd.config.systems.retain(|s| s != "etcd");
        no_etcd.cells.retain(|c| c.system != "etcd");
        assert!(!quick_line(&no_etcd).contains("etcd"));
    }
}
