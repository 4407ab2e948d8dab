//! A Flotilla cluster for a run: server processes the bench starts (the default, as
//! `flotilla cluster` lays them out), nodes inside the bench's own process (`--in-process`,
//! for tests), or a cluster already running (`--target`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{Client, ClientConfig};
use flotilla_engine::EngineConfig;
use flotilla_region::node::{Node, NodeConfig, StoreConfig};
use flotilla_tools::cluster::{ClusterArgs, ClusterPlan};
use flotilla_tools::{NodeService, RespServer};
use flotilla_transport::MemoryNetwork;
use tokio::time::Instant;

use super::{fresh_dir, ProcessSet};

/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Inbound batches an in-process node's channel holds (as the node tests use).
const IN_PROCESS_INBOUND_BATCHES: usize = 1024;

/// What the cluster looked like once it served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Regions in the routing table.
    pub regions: usize,
    /// Regions led by each node, in node id order.
    pub leaders_per_node: Vec<usize>,
    /// Whether leaders were balanced (most and fewest differ by at most one) in time.
    pub balanced: bool,
}

enum Kind {
    Processes(ProcessSet),
    InProcess {
        nodes: Vec<Node>,
        stop: tokio::sync::watch::Sender<bool>,
        _net: MemoryNetwork,
    },
    Target,
}

/// A running cluster the bench drives.
pub struct FlotillaCluster {
    /// RESP address of each node.
    pub resp_addrs: Vec<String>,
    /// Server process ids (empty unless the bench started processes): for `perf -p`.
    pub pids: Vec<u32>,
    /// The node ids, in the order of `resp_addrs` (empty for `--target`: learned).
    pub node_ids: Vec<u64>,
    /// Where the nodes keep their data and logs, if the bench made it.
    pub data_dir: Option<PathBuf>,
    kind: Kind,
}

impl FlotillaCluster {
    /// Starts `nodes` `flotilla server` processes of `regions` regions with fresh data under
    /// `parent`, node 1's ports from `base_port` (the `flotilla cluster` layout), each given
    /// `server_config` (a TOML file) when there is one.
    pub fn start_processes(
        flotilla: &Path,
        nodes: usize,
        regions: usize,
        parent: &Path,
        base_port: u16,
        server_config: Option<&Path>,
    ) -> Result<FlotillaCluster, String> {
        if !flotilla.is_file() {
            return Err(format!(
                "no flotilla binary at {}: build it with `cargo build --release -p \
                 flotilla-tools --bin flotilla` or name it with --flotilla",
                flotilla.display()
            ));
        }
        let dir = fresh_dir(parent, &format!("flotilla-{regions}r"))?;
        let plan = ClusterPlan::new(&ClusterArgs {
            nodes: nodes as u64,
            regions,
            data_dir: dir.clone(),
            base_port,
            seconds: None,
            start_timeout_secs: 60,
        })
        .map_err(|e| e.to_string())?;
        plan.check_ports_free().map_err(|e| e.to_string())?;
        plan.prepare_data_dir().map_err(|e| e.to_string())?;
        let mut procs = ProcessSet::default();
        let mut pids = Vec::new();
        for node in &plan.nodes {
            let mut args = plan.server_args(node);
            if let Some(path) = server_config {
                args.push("--config".into());
                args.push(path.as_os_str().to_owned());
            }
            let pid = procs.spawn(
                &format!("flotilla node {}", node.id),
                flotilla,
                &args,
                &node.log_file,
            )?;
            pids.push(pid);
        }
        Ok(FlotillaCluster {
            resp_addrs: plan.nodes.iter().map(|n| n.resp_addr()).collect(),
            pids,
            node_ids: plan.nodes.iter().map(|n| n.id).collect(),
            data_dir: Some(dir),
            kind: Kind::Processes(procs),
        })
    }

    /// Starts `nodes` nodes of `regions` regions inside this process (call inside the
    /// runtime): raft over an in-memory network, RESP on 127.0.0.1 ports the system picks,
    /// data under `parent`. For tests: the nodes share the bench's cores and allocator.
    pub async fn start_in_process(
        nodes: usize,
        regions: usize,
        parent: &Path,
    ) -> Result<FlotillaCluster, String> {
        let dir = fresh_dir(parent, &format!("in-process-{regions}r"))?;
        let net = MemoryNetwork::new(1);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ids: Vec<u64> = (1..=nodes as u64).collect();
        let mut started = Vec::new();
        let mut addrs = Vec::new();
        for &id in &ids {
            let (transport, inbound) = net.join(id, IN_PROCESS_INBOUND_BATCHES);
            let cfg = NodeConfig {
                store: StoreConfig {
                    node_id: id,
                    ..Default::default()
                },
                data_dir: dir.join(format!("n{id}")),
                engine: EngineConfig::default(),
                initial_nodes: ids.clone(),
                initial_regions: regions,
                request_timeout: Duration::from_secs(5),
                cluster: Default::default(),
            };
            let node = Node::start(cfg, Arc::new(transport), inbound)
                .map_err(|e| format!("in-process node {id}: {e}"))?;
            let service = NodeService::new(node.handle(), id << 48);
            let server = RespServer::bind("127.0.0.1:0", Arc::new(service))
                .await
                .map_err(|e| format!("in-process node {id}: RESP bind: {e}"))?;
            addrs.push(
                server
                    .local_addr()
                    .map_err(|e| format!("in-process node {id}: {e}"))?
                    .to_string(),
            );
            let mut rx = stop_rx.clone();
            tokio::spawn(server.serve(async move {
                let _ = rx.wait_for(|s| *s).await;
            }));
            started.push(node);
        }
        Ok(FlotillaCluster {
            resp_addrs: addrs,
            pids: Vec::new(),
            node_ids: ids,
            data_dir: Some(dir),
            kind: Kind::InProcess {
                nodes: started,
                stop: stop_tx,
                _net: net,
            },
        })
    }

    /// A cluster already running at `addrs` (RESP addresses); the bench neither starts nor
    /// stops it.
    pub fn target(addrs: Vec<String>) -> FlotillaCluster {
        FlotillaCluster {
            resp_addrs: addrs,
            pids: Vec::new(),
            node_ids: Vec::new(),
            data_dir: None,
            kind: Kind::Target,
        }
    }

    /// Waits until the routing table has `regions` regions (any number if `None`), each
    /// with a leader, within `timeout`; then up to `balance_timeout` more for the leaders to
    /// spread evenly over the nodes (the nodes' balancer moves them every second).
    pub async fn wait_ready(
        &mut self,
        regions: Option<usize>,
        timeout: Duration,
        balance_timeout: Duration,
    ) -> Result<ClusterView, String> {
        let began = Instant::now();
        let mut client: Option<Client> = None;
        let mut last = String::from("no answer yet");
        let mut served_at: Option<Instant> = None;
        loop {
            if let Kind::Processes(p) = &mut self.kind {
                if let Some(why) = p.exited() {
                    return Err(format!("{why} before the cluster served; {}", self.logs()));
                }
            }
            if client.is_none() {
                match Client::connect(ClientConfig::new(self.resp_addrs.iter().cloned())).await {
                    Ok(c) => client = Some(c),
                    Err(e) => last = e.to_string(),
                }
            }
            if let Some(c) = &client {
                match c.refresh_regions().await {
                    Ok(()) => {
                        let table = c.regions();
                        let leaderless = table.iter().filter(|r| r.leader.is_none()).count();
                        let count_ok = match regions {
                            Some(n) => n == table.len(),
                            None => true,
                        };
                        if leaderless == 0 && count_ok {
                            let v = self.view(&table);
                            let since = *served_at.get_or_insert_with(Instant::now);
                            if v.balanced || since.elapsed() >= balance_timeout {
                                return Ok(v);
                            }
                        } else {
                            last =
                                format!("{} regions, {leaderless} without a leader", table.len());
                        }
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if served_at.is_none() && began.elapsed() >= timeout {
                return Err(format!(
                    "the cluster did not serve within {timeout:?} ({last}); {}",
                    self.logs()
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn view(&self, table: &[flotilla_client::RegionInfo]) -> ClusterView {
        let mut per: BTreeMap<u64, usize> = self.node_ids.iter().map(|&id| (id, 0)).collect();
        for r in table {
            if let Some(l) = r.leader {
                *per.entry(l).or_default() += 1;
            }
        }
        let leaders_per_node: Vec<usize> = per.into_values().collect();
        let most = leaders_per_node.iter().copied().max().unwrap_or(0);
        let fewest = leaders_per_node.iter().copied().min().unwrap_or(0);
        ClusterView {
            regions: table.len(),
            balanced: most - fewest <= 1,
            leaders_per_node,
        }
    }

    fn logs(&self) -> String {
        match &self.data_dir {
            Some(d) => format!("node logs in {}", d.display()),
            None => "see the nodes' logs".into(),
        }
    }

    /// Stops what the bench started (SIGTERM, then kill after a grace period) and removes
    /// its data unless `keep_data`.
    pub async fn stop(self, keep_data: bool) {
        match self.kind {
            Kind::Processes(mut p) => {
                let _ = tokio::task::spawn_blocking(move || p.stop()).await;
            }
            Kind::InProcess { nodes, stop, _net } => {
                let _ = stop.send(true);
                let _ = tokio::task::spawn_blocking(move || {
                    for n in nodes {
                        n.stop();
                    }
                })
                .await;
            }
            Kind::Target => {}
        }
        if let (Some(dir), false) = (&self.data_dir, keep_data) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
