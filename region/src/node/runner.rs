//! Starting and stopping a node: open the engine in the data directory, bootstrap it if
//! new, start the store loop and the thread that feeds it the transport's traffic.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::Sender;
use flotilla_engine::{open_log, EngineConfig, KvStore, RaftLog};
use flotilla_transport::{InboundReceiver, Transport};
use tracing::info;

use super::error::NodeError;
use super::store::{bootstrap, RegionMap, Store, StoreConfig, StoreMsg};
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
}

/// A running node.
pub struct Node {
    handle: NodeHandle,
    tx: Sender<StoreMsg>,
    store_thread: Option<JoinHandle<()>>,
    inbound_thread: Option<JoinHandle<()>>,
    log: Arc<dyn RaftLog>,
}

impl Node {
    /// Opens (bootstrapping if new) and starts the node.
    pub fn start(
        cfg: NodeConfig,
        transport: Arc<dyn Transport>,
        mut inbound: InboundReceiver,
    ) -> Result<Node, NodeError> {
        let storage = |e: flotilla_engine::EngineError| NodeError::Storage(e.to_string());
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| NodeError::Storage(e.to_string()))?;
        let log: Arc<dyn RaftLog> =
            Arc::from(open_log(&cfg.data_dir, &cfg.engine).map_err(storage)?);
        let kv =
            Arc::new(KvStore::open(cfg.data_dir.join("kv"), &cfg.engine.rocksdb).map_err(storage)?);
        if log.regions().is_empty() && cfg.initial_nodes.contains(&cfg.store.node_id) {
            bootstrap(&*log, &kv, &cfg.initial_nodes, cfg.initial_regions)?;
            info!(
                node = cfg.store.node_id,
                regions = cfg.initial_regions,
                "bootstrapped a new cluster"
            );
        }
        let node_id = cfg.store.node_id;
        let (store, tx, regions): (Store, Sender<StoreMsg>, Arc<RegionMap>) =
            Store::open(cfg.store.clone(), log.clone(), kv, transport)?;
        let store_thread = std::thread::Builder::new()
            .name(format!("store-{node_id}"))
            .spawn(move || store.run())
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let fwd = tx.clone();
        let inbound_thread = std::thread::Builder::new()
            .name(format!("inbound-{node_id}"))
            .spawn(move || {
                while let Some(m) = inbound.blocking_recv() {
                    if fwd.send(StoreMsg::Inbound(m)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let handle = NodeHandle::new(node_id, tx.clone(), regions, cfg.request_timeout);
        Ok(Node {
            handle,
            tx,
            store_thread: Some(store_thread),
            inbound_thread: Some(inbound_thread),
            log,
        })
    }

    /// The request side.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The node's raft log (for stats).
    pub fn log(&self) -> &Arc<dyn RaftLog> {
        &self.log
    }

    /// Stops the store loop and waits for it. The inbound thread ends when the transport
    /// drops its sender.
    pub fn stop(mut self) {
        let _ = self.tx.send(StoreMsg::Stop);
        if let Some(t) = self.store_thread.take() {
            let _ = t.join();
        }
        // Detach: it exits once the transport's side of the channel is gone.
        drop(self.inbound_thread.take());
    }
}
