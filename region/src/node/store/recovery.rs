//! Surviving a storage failure in-process: a full disk, a failed fsync, RocksDB gone
//! read-only.
//!
//! When a round (or a log compaction) fails to write, nothing the store holds in memory can
//! be trusted to match the disk: the raft log's file is poisoned (after a failed `fdatasync`
//! its pages may be gone or may still be visible — fsyncgate — so the same descriptor is
//! never synced again), RocksDB has stopped taking writes, and the raft cores may hold
//! entries and votes that never became durable. So the store does what a restart does,
//! without the process exiting:
//!
//! 1. every waiting request is answered [`NodeError::StorageUnavailable`], and every
//!    replica, the raft log and the key-value store are dropped — all of them, so the WAL's
//!    writer thread ends and RocksDB releases its `LOCK`;
//! 2. while the engine is down, every new request gets the same answer at once, and raft
//!    traffic is dropped (the other replicas see this node as down);
//! 3. it reopens the engine with back-off ([`REOPEN_PAUSE_MIN`] doubling to
//!    [`REOPEN_PAUSE_MAX`]), through the very code a start uses ([`EngineOpener::open`],
//!    then the region loading of [`Store::open`]): the WAL replays what is on disk, RocksDB
//!    recovers from its own log and leaves its read-only state, and every replica is
//!    rebuilt from disk alone.
//!
//! Raft safety rests on step 3 reading only the disk: a replica acknowledges (votes,
//! answers appends) only what a successful `fdatasync` covered, and what it held in memory
//! beyond that is gone with the dropped core, exactly as after a crash.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_engine::{
    open_log_with_fs, EngineConfig, FileSystem, KvStore, RaftLog, StdFileSystem,
};
use flotilla_transport::Transport;
use parking_lot::RwLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender as Sender};
use tracing::{debug, error, info, warn};

use super::{RegionMap, SnapshotProgress, Store, StoreConfig, StoreMsg};
use crate::node::error::{storage_error, NodeError};
use crate::node::metrics::{NodeMetrics, NodeSample};

/// First pause before reopening the engine after a failure: a full disk freed by an
/// operator (or by RocksDB's own clean-up) is noticed within about this long.
pub const REOPEN_PAUSE_MIN: Duration = Duration::from_millis(100);
/// Longest pause between two attempts: each attempt replays the WAL and opens RocksDB,
/// which costs a little I/O; every 2 s bounds it while still recovering within seconds.
pub const REOPEN_PAUSE_MAX: Duration = Duration::from_secs(2);
/// A store that served this long without failing starts its next recovery from
/// [`REOPEN_PAUSE_MIN`] again; one that fails sooner (the disk is still nearly full) keeps
/// backing off, so a flapping disk does not turn into a busy loop of replays.
pub const REOPEN_PAUSE_RESET: Duration = Duration::from_secs(10);

/// The node's raft log as it is now, for the node's readers outside the store (stats):
/// `None` while the store is recovering, so that nothing outside keeps a dropped log open.
pub type LogSlot = Arc<RwLock<Option<Arc<dyn RaftLog>>>>;

/// How the node opens its engine — the raft log and the key-value store under its data
/// directory — at start and whenever the store recovers from a storage failure.
#[derive(Clone)]
pub struct EngineOpener {
    data_dir: PathBuf,
    config: EngineConfig,
    wal_fs: Arc<dyn FileSystem>,
}

impl EngineOpener {
    /// Opens `<data_dir>/raft` (or `raftdb`) and `<data_dir>/kv` with `config`.
    pub fn new(data_dir: PathBuf, config: EngineConfig) -> Self {
        EngineOpener {
            data_dir,
            config,
            wal_fs: Arc::new(StdFileSystem),
        }
    }

    /// The WAL's I/O goes through `fs` (tests inject disk faults with it).
    pub fn with_wal_fs(mut self, fs: Arc<dyn FileSystem>) -> Self {
        self.wal_fs = fs;
        self
    }

    /// Opens both (the log first: its recovery cuts a torn tail off before anything reads
    /// it). Fails, with the engine's reason, while the disk is still full.
    pub fn open(&self) -> Result<(Arc<dyn RaftLog>, Arc<KvStore>), NodeError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|e| {
            storage_error(flotilla_engine::EngineError::io(
                format!("create {}", self.data_dir.display()),
                e,
            ))
        })?;
        let log: Arc<dyn RaftLog> = Arc::from(
            open_log_with_fs(&self.data_dir, &self.config, self.wal_fs.clone())
                .map_err(storage_error)?,
        );
        let kv =
            KvStore::open(self.data_dir.join("kv"), &self.config.rocksdb).map_err(storage_error)?;
        Ok((log, Arc::new(kv)))
    }
}

/// What the store keeps while its engine is down: everything but the engine and the
/// replicas.
pub(super) struct StoreShell {
    pub cfg: StoreConfig,
    pub transport: Arc<dyn Transport>,
    pub directory: super::super::directory::SharedDirectory,
    pub rx: Receiver<StoreMsg>,
    pub self_tx: Sender<StoreMsg>,
    pub regions: Arc<RegionMap>,
    pub metrics: NodeMetrics,
    pub next_read_ctx: u64,
    pub opener: EngineOpener,
    pub log_slot: LogSlot,
    /// The pause before the next reopen attempt.
    pub reopen_pause: Duration,
    /// When the engine was last opened.
    pub opened_at: Instant,
}

/// The clients' reason for a failure: short, and saying what to fix.
fn unavailable_reason(e: &NodeError) -> String {
    match e {
        NodeError::DiskFull(_) => "disk full (No space left on device)".into(),
        other => format!("storage failure ({other})"),
    }
}

impl Store {
    /// Step 1: answers everything waiting, drops the replicas and the engine. Returns what
    /// the store keeps and the reason it gives clients until it is back.
    pub(super) fn fail(mut self, e: &NodeError) -> (StoreShell, String) {
        let reason = unavailable_reason(e);
        error!(
            node = self.cfg.node_id,
            regions = self.peers.len(),
            "storage failure: {e}; dropping every replica and the engine, reopening it with \
             back-off; until then requests are answered `storage unavailable: {reason}`"
        );
        self.metrics.storage_failed();
        let err = NodeError::StorageUnavailable(reason.clone());
        for p in self.peers.values_mut() {
            let proposals = p.proposals.len() + p.batched.len();
            let reads = p.reads_waiting_index.len() + p.reads_waiting_apply.len();
            self.metrics.proposals_failed(&err, proposals as u64);
            self.metrics.reads_failed(reads as u64);
            p.fail_all(err.clone());
        }
        self.metrics.sample(&NodeSample::default());
        // The routes stay (requests keep reaching the store and hear why they fail), but
        // with no leader: a client routing by this node's table must not be sent back here.
        self.regions.forget_leaders();
        *self.log_slot.write() = None;
        let mut shell = self.into_shell();
        if shell.opened_at.elapsed() >= REOPEN_PAUSE_RESET {
            shell.reopen_pause = REOPEN_PAUSE_MIN;
        }
        (shell, reason)
    }

    /// Takes the store apart, dropping the replicas (each holds the engine through its
    /// storage), the orphans' messages, the raft log and the key-value store.
    pub(super) fn into_shell(self) -> StoreShell {
        let Store {
            cfg,
            transport,
            directory,
            rx,
            self_tx,
            regions,
            metrics,
            next_read_ctx,
            opener,
            log_slot,
            reopen_pause,
            opened_at,
            peers,
            log,
            kv,
            ..
        } = self;
        // The replicas first: they hold clones of the log and the key-value store.
        drop(peers);
        drop(log);
        drop(kv);
        StoreShell {
            cfg,
            transport,
            directory,
            rx,
            self_tx,
            regions,
            metrics,
            next_read_ctx,
            opener,
            log_slot,
            reopen_pause,
            opened_at,
        }
    }
}

impl StoreShell {
    /// Steps 2 and 3: answers requests while reopening the engine with back-off. Returns
    /// the rebuilt store, or `None` if the store was told to stop (or lost its inputs).
    pub(super) fn recover(mut self, reason: &str) -> Option<Store> {
        let node = self.cfg.node_id;
        let failed_at = Instant::now();
        let mut attempts = 0u32;
        loop {
            let until = Instant::now() + self.reopen_pause;
            loop {
                let wait = until.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(wait) {
                    Ok(StoreMsg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                        info!(node, "store stopped while its engine was down");
                        return None;
                    }
                    Ok(m) => self.refuse(m, reason),
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }
            attempts += 1;
            let failure = match self.opener.open() {
                Ok((log, kv)) => match Store::build(self, log, kv) {
                    Ok(store) => {
                        info!(
                            node,
                            attempts,
                            down_ms = failed_at.elapsed().as_millis() as u64,
                            regions = store.peers.len(),
                            "store recovered: engine reopened, every replica restored from disk"
                        );
                        store.metrics.store_recovered();
                        return Some(store);
                    }
                    Err(failed) => {
                        let (shell, e) = *failed;
                        self = shell;
                        e
                    }
                },
                Err(e) => e,
            };
            // Once per failure at warn, then quietly: the disk may stay full for hours.
            if attempts == 1 {
                warn!(
                    node,
                    "engine does not reopen yet ({failure}); retrying with back-off"
                );
            } else {
                debug!(node, attempts, "engine does not reopen yet: {failure}");
            }
            self.reopen_pause = (self.reopen_pause * 2).min(REOPEN_PAUSE_MAX);
        }
    }

    /// Answers a request while the engine is down.
    fn refuse(&self, m: StoreMsg, reason: &str) {
        let err = || NodeError::StorageUnavailable(reason.to_string());
        match m {
            StoreMsg::Propose { reply, .. } => {
                self.metrics.proposal_received();
                self.metrics.proposals_failed(&err(), 1);
                let _ = reply.send(Err(err()));
            }
            StoreMsg::Get { reply, .. } => {
                self.metrics.reads_failed(1);
                let _ = reply.send(Err(err()));
            }
            StoreMsg::Scan { reply, .. } => {
                self.metrics.reads_failed(1);
                let _ = reply.send(Err(err()));
            }
            StoreMsg::TransferLeader { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            StoreMsg::PrepareSplit { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            StoreMsg::AllocateId { reply } => {
                let _ = reply.send(Err(err()));
            }
            StoreMsg::Descriptor { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            StoreMsg::ChangePeer { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            // No replica here right now.
            StoreMsg::Status { reply } => {
                let _ = reply.send(Vec::new());
            }
            // Builds of the dropped replicas finish on their own; streams go on.
            StoreMsg::SnapshotProgress { reply } => {
                let _ = reply.send(SnapshotProgress {
                    builds: Default::default(),
                    streams: self.transport.snapshot_streams(),
                });
            }
            // Raft traffic and the results of measurements started before the failure:
            // the replicas they were for are gone (the senders retry; the measurements
            // run again on the rebuilt replicas).
            // A write of the failed engine's done: nothing waits for it any more.
            StoreMsg::Inbound(_)
            | StoreMsg::SplitCheck { .. }
            | StoreMsg::MergeCheck { .. }
            | StoreMsg::LogWritten => {}
            StoreMsg::Stop => {}
        }
    }
}
