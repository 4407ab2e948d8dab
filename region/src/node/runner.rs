//! Starting and stopping a node: open the engine in the data directory, bootstrap it if
//! new, start the store loop, and have the transport hand what arrives straight to it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use flotilla_engine::{EngineConfig, FileSystem, RaftLog};
use flotilla_transport::{Inbound, InboundReceiver, InboundSink, SinkRefused, Transport};
use std::sync::mpsc::{SyncSender as Sender, TrySendError};
use tracing::{info, warn};

use super::balancer;
use super::cluster::{self, ClusterConfig, ClusterInput, ClusterView};
use super::error::NodeError;
use super::node_message::is_node_message;
use super::store::{bootstrap, EngineOpener, LogSlot, Store, StoreConfig, StoreMsg};
use super::NodeHandle;

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The store's settings (node id, ticks, reads).
    pub store: StoreConfig,
    /// The data directory (`raft/` and `kv/` go under it).
    pub data_dir: PathBuf,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// Node ids of the initial cluster; used only when the data directory is empty.
    pub initial_nodes: Vec<u64>,
    /// Regions to pre-split a new cluster into.
    pub initial_regions: usize,
    /// How long a request may wait for its answer.
    pub request_timeout: Duration,
    /// The cluster layer: gossip interval, this node's addresses, the directory a new
    /// data directory starts from, whether it joined a running cluster.
    pub cluster: ClusterConfig,
}

/// Node messages waiting for the cluster thread, at most; more are dropped (gossip is
/// sent again next interval).
pub const CLUSTER_QUEUE_MAX: usize = 4096;

/// A running node.
pub struct Node {
    handle: NodeHandle,
    tx: Sender<StoreMsg>,
    cluster_tx: Sender<ClusterInput>,
    store_thread: Option<JoinHandle<()>>,
    cluster_thread: Option<JoinHandle<()>>,
    balancer_thread: Option<JoinHandle<()>>,
    balancer_stop: Arc<AtomicBool>,
    log: LogSlot,
}

/// Where the transport hands what arrives, on its own threads: node messages (gossip,
/// directory changes) to the cluster thread's queue, the rest to the store loop's. A
/// thread of the node's own in between (as before) cost every received batch a second
/// queue and a second thread wake-up.
struct NodeInbox {
    node_id: u64,
    store: Sender<StoreMsg>,
    cluster: Sender<ClusterInput>,
}

impl NodeInbox {
    /// Sends the node messages of `m` to the cluster thread (dropped when its queue is
    /// full: gossip is sent again every interval) and returns what is left for the store.
    fn sort(&self, m: Inbound) -> Option<Inbound> {
        match m {
            Inbound::Messages {
                from_node,
                mut envelopes,
            } if envelopes.iter().any(is_node_message) => {
                envelopes.retain(|e| {
                    if !is_node_message(e) {
                        return true;
                    }
                    let input = ClusterInput::Message(from_node, e.clone());
                    if self.cluster.try_send(input).is_err() {
                        warn!(
                            node = self.node_id,
                            from_node, "cluster queue full: node message dropped"
                        );
                    }
                    false
                });
                (!envelopes.is_empty()).then_some(Inbound::Messages {
                    from_node,
                    envelopes,
                })
            }
            m => Some(m),
        }
    }
}

impl InboundSink for NodeInbox {
    fn try_deliver(&self, m: Inbound) -> Result<(), SinkRefused> {
        let Some(m) = self.sort(m) else {
            return Ok(());
        };
        match self.store.try_send(StoreMsg::Inbound(m)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(sent)) => match sent {
                StoreMsg::Inbound(m) => Err(SinkRefused::Full(m)),
                // Handed back is what was sent, an inbound message: there is no other.
                _ => Ok(()),
            },
            Err(TrySendError::Disconnected(_)) => Err(SinkRefused::Closed),
        }
    }

    fn deliver(&self, m: Inbound) -> bool {
        match self.sort(m) {
            Some(m) => self.store.send(StoreMsg::Inbound(m)).is_ok(),
            None => true,
        }
    }
}

impl Node {
    /// Opens (bootstrapping if new) and starts the node.
    pub fn start(
        cfg: NodeConfig,
        transport: Arc<dyn Transport>,
        inbound: InboundReceiver,
    ) -> Result<Node, NodeError> {
        let opener = EngineOpener::new(cfg.data_dir.clone(), cfg.engine.clone());
        Self::start_with(cfg, opener, transport, inbound)
    }

    /// [`Node::start`] with the WAL's I/O going through `fs`: tests inject disk faults
    /// with it, at start and after every reopen.
    pub fn start_with_wal_fs(
        cfg: NodeConfig,
        fs: Arc<dyn FileSystem>,
        transport: Arc<dyn Transport>,
        inbound: InboundReceiver,
    ) -> Result<Node, NodeError> {
        let opener = EngineOpener::new(cfg.data_dir.clone(), cfg.engine.clone()).with_wal_fs(fs);
        Self::start_with(cfg, opener, transport, inbound)
    }

    fn start_with(
        cfg: NodeConfig,
        opener: EngineOpener,
        transport: Arc<dyn Transport>,
        inbound: InboundReceiver,
    ) -> Result<Node, NodeError> {
        // The same opening a recovery after a storage failure goes through.
        let (log, kv) = opener.open()?;
        check_bootstrap_record(&cfg)?;
        let node_id = cfg.store.node_id;
        if cfg.cluster.joined && !cfg.initial_nodes.is_empty() {
            return Err(NodeError::Refused(
                "a node that joins a running cluster bootstraps nothing: give it no initial nodes"
                    .into(),
            ));
        }
        let directory =
            cluster::open_directory(node_id, &cfg.cluster, &cfg.initial_nodes, &cfg.data_dir)?;
        if log.regions().is_empty() && cfg.initial_nodes.contains(&cfg.store.node_id) {
            bootstrap(
                &*log,
                &kv,
                cfg.store.node_id,
                &cfg.initial_nodes,
                cfg.initial_regions,
                cfg.cluster.balancer.replicas,
            )?;
            info!(
                node = cfg.store.node_id,
                regions = cfg.initial_regions,
                "bootstrapped a new cluster"
            );
        }
        let view = Arc::new(ClusterView::new(
            node_id,
            &cfg.cluster,
            cfg.data_dir.clone(),
            directory.clone(),
            transport.clone(),
        ));
        let (store, tx, regions, log) =
            Store::open(cfg.store.clone(), opener, log, kv, transport, directory)?;
        let store_thread = std::thread::Builder::new()
            .name(format!("store-{node_id}"))
            .spawn(move || store.run())
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let (cluster_tx, cluster_rx) = std::sync::mpsc::sync_channel(CLUSTER_QUEUE_MAX);
        let cluster_thread = cluster::start(view.clone(), cluster_rx, tx.clone())
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let inbox = NodeInbox {
            node_id,
            store: tx.clone(),
            cluster: cluster_tx.clone(),
        };
        if !inbound.attach(Arc::new(inbox)) {
            return Err(NodeError::Storage(
                "the store stopped while it was being started".into(),
            ));
        }
        let handle = NodeHandle::new(node_id, tx.clone(), regions, view, cfg.request_timeout);
        let balancer_stop = Arc::new(AtomicBool::new(false));
        let balancer_thread = balancer::start(
            cfg.cluster.balancer.clone(),
            handle.clone(),
            balancer_stop.clone(),
        )
        .map_err(|e| NodeError::Storage(e.to_string()))?;
        Ok(Node {
            handle,
            tx,
            cluster_tx,
            store_thread: Some(store_thread),
            cluster_thread: Some(cluster_thread),
            balancer_thread: Some(balancer_thread),
            balancer_stop,
            log,
        })
    }

    /// The request side.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The node's raft log (for stats); `None` while the store is reopening it after a
    /// storage failure, or after it stopped. Do not hold on to it: a recovery needs every
    /// handle dropped before it reopens the log.
    pub fn log(&self) -> Option<Arc<dyn RaftLog>> {
        self.log.read().clone()
    }

    /// Stops the store loop and waits for it. What the transport receives afterwards is
    /// refused (its connections' readers stop).
    pub fn stop(mut self) {
        self.balancer_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.balancer_thread.take() {
            let _ = t.join();
        }
        let _ = self.cluster_tx.send(ClusterInput::Stop);
        if let Some(t) = self.cluster_thread.take() {
            let _ = t.join();
        }
        let _ = self.tx.send(StoreMsg::Stop);
        if let Some(t) = self.store_thread.take() {
            let _ = t.join();
        }
    }
}

/// The file in a data directory that records the flags it was bootstrapped with.
pub const BOOTSTRAP_RECORD: &str = "bootstrap.txt";

/// The record of a data directory that joined a running cluster (`--join`).
const JOINED_RECORD: &str = "joined=true\n";

fn record_of(cfg: &NodeConfig) -> String {
    if cfg.cluster.joined {
        JOINED_RECORD.to_string()
    } else {
        bootstrap_record(&cfg.initial_nodes, cfg.initial_regions)
    }
}

fn bootstrap_record(nodes: &[u64], regions: usize) -> String {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let nodes: Vec<String> = sorted.iter().map(u64::to_string).collect();
    format!(
        "initial_nodes={}\ninitial_regions={regions}\n",
        nodes.join(",")
    )
}

/// Refuses to start a data directory with bootstrap flags other than those it was created
/// with (the cluster's node ids, the initial region count): the flags would silently mean
/// nothing, or worse, describe another cluster. A new directory gets the record, written
/// and synced before anything else, so a crash during bootstrap restarts it the same way.
fn check_bootstrap_record(cfg: &NodeConfig) -> Result<(), NodeError> {
    let io = |e: std::io::Error| NodeError::Storage(format!("{BOOTSTRAP_RECORD}: {e}"));
    let path = cfg.data_dir.join(BOOTSTRAP_RECORD);
    let wanted = record_of(cfg);
    match std::fs::read_to_string(&path) {
        Ok(found) if found == wanted => Ok(()),
        Ok(found) if found == JOINED_RECORD => Err(NodeError::Storage(format!(
            "{} joined a running cluster (--join), but this start bootstraps one with {:?}; \
             start it with --join (its node directory is kept in the data directory)",
            cfg.data_dir.display(),
            wanted.trim().replace('\n', " "),
        ))),
        Ok(found) if wanted == JOINED_RECORD => Err(NodeError::Storage(format!(
            "{} was bootstrapped with {:?}, but this start joins a running cluster (--join); \
             start it with its original --initial-cluster and --initial-regions",
            cfg.data_dir.display(),
            found.trim().replace('\n', " "),
        ))),
        Ok(found) => Err(NodeError::Storage(format!(
            "{} was bootstrapped with {:?}, but this start asks for {:?}; start it with the \
             original --initial-cluster and --initial-regions, or use a new data directory",
            cfg.data_dir.display(),
            found.trim().replace('\n', " "),
            wanted.trim().replace('\n', " "),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp).map_err(io)?;
                f.write_all(wanted.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
            std::fs::rename(&tmp, &path).map_err(io)?;
            std::fs::File::open(&cfg.data_dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path, nodes: Vec<u64>, regions: usize) -> NodeConfig {
        NodeConfig {
            store: StoreConfig::default(),
            data_dir: dir.to_path_buf(),
            engine: EngineConfig::default(),
            initial_nodes: nodes,
            initial_regions: regions,
            request_timeout: Duration::from_secs(1),
            cluster: ClusterConfig::default(),
        }
    }

    #[test]
    fn a_data_dir_keeps_the_flags_it_was_bootstrapped_with() {
        let dir = tempfile::tempdir().unwrap();
        check_bootstrap_record(&cfg(dir.path(), vec![3, 1, 2], 16)).unwrap();
        // The same flags, in another order: fine.
        check_bootstrap_record(&cfg(dir.path(), vec![1, 2, 3], 16)).unwrap();
        let e = check_bootstrap_record(&cfg(dir.path(), vec![1, 2, 3], 8)).unwrap_err();
        assert!(e.to_string().contains("initial_regions=16"), "{e}");
        let e = check_bootstrap_record(&cfg(dir.path(), vec![1, 2, 4], 16)).unwrap_err();
        assert!(e.to_string().contains("initial_nodes=1,2,3"), "{e}");
        // Joining, a bootstrapped directory is refused.
        let mut joined = cfg(dir.path(), vec![], 16);
        joined.cluster.joined = true;
        let e = check_bootstrap_record(&joined).unwrap_err();
        assert!(
            e.to_string().contains("this start joins a running cluster"),
            "{e}"
        );
    }

    #[test]
    fn a_joined_data_dir_stays_joined() {
        let dir = tempfile::tempdir().unwrap();
        let mut joined = cfg(dir.path(), vec![], 16);
        joined.cluster.joined = true;
        check_bootstrap_record(&joined).unwrap();
        check_bootstrap_record(&joined).unwrap();
        let e = check_bootstrap_record(&cfg(dir.path(), vec![1, 2, 3], 16)).unwrap_err();
        assert!(
            e.to_string().contains("joined a running cluster (--join)"),
            "{e}"
        );
    }
}
