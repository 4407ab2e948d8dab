//! Region snapshots built off the store's thread.
//!
//! The raft core asks its storage for a snapshot ([`crate::raft::Storage::snapshot`]) on
//! the store's thread, which runs every region of the node. Reading a region of up to
//! [`SNAPSHOT_DATA_BYTES_MAX`] there stalled every region's writes for as long as the scan
//! took, so [`SnapshotBuilds`] does it on builder threads instead:
//!
//! 1. The first ask for a region queues a build and answers
//!    [`StorageError::SnapshotTemporarilyUnavailable`]; so does every ask while it is queued
//!    or running. The raft core asks again at its next chance (the follower's next
//!    heartbeat answer, every `heartbeat_ticks`).
//! 2. A builder thread takes a RocksDB snapshot and reads the region's descriptor, applied
//!    index, sessions and data from it (one point in time: writers are not stalled), and
//!    the term of the applied index from the raft log.
//! 3. The next ask takes the finished snapshot, provided its index is at least the one
//!    asked for and its term is still in the log at that index; otherwise it is dropped and
//!    a new build starts.
//!
//! At most [`SNAPSHOT_BUILDS_MAX`] builds run at once per node and at most
//! [`SNAPSHOT_QUEUE_MAX`] wait; an ask beyond that is answered "not yet" and queues
//! nothing. A failed build (a region over the size limit, a read error) is logged and
//! tried again at an ask at least [`SNAPSHOT_RETRY_PAUSE`] later; a finished snapshot
//! nobody takes within [`SNAPSHOT_READY_TTL`] is dropped.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_common::{codec, Snapshot, SnapshotMetadata};
use flotilla_engine::{KeyRange, KvStore, RaftLog};
use flotilla_transport::SnapshotStreamStats;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::descriptor::RegionDescriptor;
use super::peer_storage::{storage_error, RegionSnapshotData, SNAPSHOT_DATA_BYTES_MAX};
use crate::raft::StorageError;

/// Snapshot builds that run at once on one node, at most (each on its own thread): two
/// keep a slow build from holding up every other region's, without taking every core.
pub const SNAPSHOT_BUILDS_MAX: usize = 2;
/// Snapshot builds waiting for a builder, at most.
pub const SNAPSHOT_QUEUE_MAX: usize = 64;
/// How long after a failed build the region's next build may start, at least.
pub const SNAPSHOT_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long a finished snapshot waits to be taken before it is dropped.
pub const SNAPSHOT_READY_TTL: Duration = Duration::from_secs(30);

/// Called on the builder thread with the region id once a build has taken its RocksDB
/// snapshot and before it reads the data. For tests: one that blocks holds the build
/// there, so a test can check what the store does meanwhile.
#[derive(Clone, Default)]
pub struct SnapshotBuildHook(Option<Arc<dyn Fn(u64) + Send + Sync>>);

impl SnapshotBuildHook {
    /// A hook that calls `f`.
    pub fn new(f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        SnapshotBuildHook(Some(Arc::new(f)))
    }

    fn call(&self, region_id: u64) {
        if let Some(f) = &self.0 {
            f(region_id);
        }
    }
}

impl fmt::Debug for SnapshotBuildHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "SnapshotBuildHook(set)"
        } else {
            "SnapshotBuildHook(none)"
        })
    }
}

/// Snapshot builds of one node, as counted at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBuildStats {
    /// Builds running now.
    pub building: u64,
    /// Builds waiting for a builder thread.
    pub queued: u64,
    /// Bytes of keys and values the running builds have read so far.
    pub bytes_read: u64,
    /// Builds finished since the node started.
    pub built: u64,
    /// Builds failed since the node started.
    pub failed: u64,
}

/// A node's snapshots under way: builds here, streams in the transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// Builds (running, queued, bytes read).
    pub builds: SnapshotBuildStats,
    /// Streams being sent and received, with bytes done and in all.
    pub streams: SnapshotStreamStats,
}

enum Slot {
    Queued,
    Building,
    Ready { snapshot: Snapshot, at: Instant },
    Failed { at: Instant },
}

struct Job {
    region_id: u64,
    log: Arc<dyn RaftLog>,
    kv: Arc<KvStore>,
}

#[derive(Default)]
struct State {
    slots: HashMap<u64, Slot>,
    queue: VecDeque<Job>,
    threads: usize,
}

struct Inner {
    state: Mutex<State>,
    hook: SnapshotBuildHook,
    building: AtomicU64,
    bytes_read: AtomicU64,
    built: AtomicU64,
    failed: AtomicU64,
}

/// The snapshot builds of one node's regions (cheap to clone: every region's storage
/// holds one).
#[derive(Clone)]
pub struct SnapshotBuilds {
    inner: Arc<Inner>,
}

impl fmt::Debug for SnapshotBuilds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SnapshotBuilds")
            .field(&self.stats())
            .finish()
    }
}

impl Default for SnapshotBuilds {
    fn default() -> Self {
        Self::new(SnapshotBuildHook::default())
    }
}

impl SnapshotBuilds {
    /// No builds yet; `hook` runs in each build (see [`SnapshotBuildHook`]).
    pub fn new(hook: SnapshotBuildHook) -> Self {
        SnapshotBuilds {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                hook,
                building: AtomicU64::new(0),
                bytes_read: AtomicU64::new(0),
                built: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        }
    }

    /// The counts of this moment.
    pub fn stats(&self) -> SnapshotBuildStats {
        let queued = self.inner.state.lock().queue.len() as u64;
        SnapshotBuildStats {
            building: self.inner.building.load(Ordering::Relaxed),
            queued,
            bytes_read: self.inner.bytes_read.load(Ordering::Relaxed),
            built: self.inner.built.load(Ordering::Relaxed),
            failed: self.inner.failed.load(Ordering::Relaxed),
        }
    }

    /// The region's snapshot at `request_index` or later, if a build of it has finished
    /// and is still usable; else starts a build (unless one is under way, or failed less
    /// than [`SNAPSHOT_RETRY_PAUSE`] ago, or the queue is full) and answers
    /// [`StorageError::SnapshotTemporarilyUnavailable`]. Never blocks on a build.
    pub fn take(
        &self,
        region_id: u64,
        request_index: u64,
        log: &Arc<dyn RaftLog>,
        kv: &Arc<KvStore>,
    ) -> Result<Snapshot, StorageError> {
        let now = Instant::now();
        let mut state = self.inner.state.lock();
        match state.slots.remove(&region_id) {
            Some(Slot::Ready { snapshot, at }) => {
                let meta = &snapshot.metadata;
                let term_known = log.term(region_id, meta.index).ok() == Some(meta.term);
                if now.duration_since(at) < SNAPSHOT_READY_TTL
                    && meta.index >= request_index
                    && term_known
                {
                    return Ok(snapshot);
                }
                debug!(
                    region = region_id,
                    index = meta.index,
                    request_index,
                    term_known,
                    "finished snapshot is stale; building another"
                );
            }
            Some(slot @ (Slot::Queued | Slot::Building)) => {
                state.slots.insert(region_id, slot);
                self.ensure_builder(&mut state);
                return Err(StorageError::SnapshotTemporarilyUnavailable);
            }
            Some(Slot::Failed { at }) if now.duration_since(at) < SNAPSHOT_RETRY_PAUSE => {
                state.slots.insert(region_id, Slot::Failed { at });
                return Err(StorageError::SnapshotTemporarilyUnavailable);
            }
            Some(Slot::Failed { .. }) | None => {}
        }
        if state.queue.len() >= SNAPSHOT_QUEUE_MAX {
            debug!(region = region_id, "snapshot build queue is full");
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        state.slots.insert(region_id, Slot::Queued);
        state.queue.push_back(Job {
            region_id,
            log: log.clone(),
            kv: kv.clone(),
        });
        self.ensure_builder(&mut state);
        Err(StorageError::SnapshotTemporarilyUnavailable)
    }

    /// Starts a builder thread if builds wait and fewer than [`SNAPSHOT_BUILDS_MAX`] run.
    fn ensure_builder(&self, state: &mut State) {
        if state.queue.is_empty() || state.threads >= SNAPSHOT_BUILDS_MAX {
            return;
        }
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-build".into())
            .spawn(move || builder_loop(&inner));
        match spawned {
            Ok(_) => state.threads += 1,
            // Left queued: the next ask tries again.
            Err(e) => warn!("cannot start a snapshot builder thread: {e}"),
        }
    }

    /// Drops finished snapshots nobody took within [`SNAPSHOT_READY_TTL`] and failures
    /// older than [`SNAPSHOT_RETRY_PAUSE`], so their memory does not wait for an ask.
    pub fn expire(&self) {
        let now = Instant::now();
        self.inner.state.lock().slots.retain(|_, slot| match slot {
            Slot::Ready { at, .. } => now.duration_since(*at) < SNAPSHOT_READY_TTL,
            Slot::Failed { at } => now.duration_since(*at) < SNAPSHOT_RETRY_PAUSE,
            Slot::Queued | Slot::Building => true,
        });
    }
}

/// One builder thread: takes queued builds until there are none, then ends.
fn builder_loop(inner: &Inner) {
    loop {
        let job = {
            let mut state = inner.state.lock();
            let Some(job) = state.queue.pop_front() else {
                state.threads -= 1;
                return;
            };
            state.slots.insert(job.region_id, Slot::Building);
            job
        };
        inner.building.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut read = 0u64;
        let built = build_snapshot(inner, &job, &mut read);
        inner.building.fetch_sub(1, Ordering::Relaxed);
        inner.bytes_read.fetch_sub(read, Ordering::Relaxed);
        let slot = match built {
            Ok(snapshot) => {
                inner.built.fetch_add(1, Ordering::Relaxed);
                info!(
                    region = job.region_id,
                    index = snapshot.metadata.index,
                    bytes = snapshot.data.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot built"
                );
                Slot::Ready {
                    snapshot,
                    at: Instant::now(),
                }
            }
            Err(e) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                warn!(region = job.region_id, "snapshot build failed: {e}");
                Slot::Failed { at: Instant::now() }
            }
        };
        inner.state.lock().slots.insert(job.region_id, slot);
    }
}

/// Builds the region's snapshot from one RocksDB snapshot of its state, counting the bytes
/// read into `read` (and the node's running total).
fn build_snapshot(inner: &Inner, job: &Job, read: &mut u64) -> Result<Snapshot, StorageError> {
    let region_id = job.region_id;
    let mut desc = None;
    let stream = job
        .kv
        .snapshot_region_described(region_id, |bytes| {
            let d = RegionDescriptor::decode(bytes?).ok()?;
            let range = KeyRange::new(d.start_key.clone(), d.end_key.clone());
            desc = Some(d);
            Some(range)
        })
        .map_err(storage_error)?;
    let (Some(stream), Some(desc)) = (stream, desc) else {
        return Err(StorageError::Other(format!(
            "region {region_id} has no readable descriptor"
        )));
    };
    let header = stream.header().clone();
    let index = header.applied_index;
    // Now, not after the scan: a compaction meanwhile could drop it.
    let term = job.log.term(region_id, index).map_err(storage_error)?;
    inner.hook.call(region_id);
    let mut chunks = Vec::new();
    let mut bytes = 0usize;
    for chunk in stream {
        let chunk = chunk.map_err(storage_error)?;
        let n = chunk
            .pairs
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
        bytes += n;
        *read += n as u64;
        inner.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        if bytes > SNAPSHOT_DATA_BYTES_MAX {
            return Err(StorageError::Other(format!(
                "region {region_id} is over {SNAPSHOT_DATA_BYTES_MAX} bytes: split it before snapshotting"
            )));
        }
        chunks.push(chunk);
    }
    let conf_state = desc.conf_state();
    let data = codec::encode(&RegionSnapshotData { header, chunks })
        .map_err(|e| StorageError::Other(e.to_string()))?;
    Ok(Snapshot {
        metadata: SnapshotMetadata {
            index,
            term,
            conf_state,
        },
        data: Bytes::from(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::store::bootstrap;
    use flotilla_engine::{open_log, ApplyRound, EngineConfig};

    struct Engine {
        _dir: tempfile::TempDir,
        log: Arc<dyn RaftLog>,
        kv: Arc<KvStore>,
    }

    /// One region (id 1, the whole key space) holding `pairs` pairs, applied index 0.
    fn engine(pairs: u64) -> Engine {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = EngineConfig::default();
        let log: Arc<dyn RaftLog> =
            Arc::from(open_log(dir.path().join("raft"), &cfg).expect("log"));
        let kv = Arc::new(KvStore::open(dir.path().join("kv"), &cfg.rocksdb).expect("kv"));
        bootstrap(&*log, &kv, 1, &[1], 1, 3).expect("bootstrap");
        let mut round = ApplyRound::new();
        for i in 0..pairs {
            round.put(1, format!("k{i:04}").into_bytes(), vec![i as u8; 100]);
        }
        round.set_applied(1, 0);
        kv.apply(round).expect("apply");
        Engine { _dir: dir, log, kv }
    }

    /// Waits until `n` builds ended (built or failed).
    fn wait_for_builds(b: &SnapshotBuilds, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = b.stats();
            if s.built + s.failed >= n && s.building == 0 && s.queued == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "builds never ended: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn not_yet<T: fmt::Debug>(r: Result<T, StorageError>) {
        assert!(
            matches!(r, Err(StorageError::SnapshotTemporarilyUnavailable)),
            "{r:?}"
        );
    }

    #[test]
    fn a_snapshot_is_built_in_the_background_and_handed_out_once() {
        let e = engine(300);
        let b = SnapshotBuilds::default();
        not_yet(b.take(1, 0, &e.log, &e.kv));
        wait_for_builds(&b, 1);
        let snap = b.take(1, 0, &e.log, &e.kv).expect("built");
        assert_eq!((snap.metadata.index, snap.metadata.term), (0, 0));
        assert_eq!(
            snap.metadata.conf_state.voters,
            vec![crate::node::bootstrap_peer_id(1, 1)]
        );
        let data: RegionSnapshotData = codec::decode(&snap.data).expect("decodes");
        let pairs: Vec<_> = data.chunks.iter().flat_map(|c| c.pairs.clone()).collect();
        assert_eq!(pairs.len(), 300);
        assert_eq!(pairs[7].0.as_ref(), b"k0007");
        assert!(data.header.descriptor.is_some());
        // Taken: the next ask builds again.
        not_yet(b.take(1, 0, &e.log, &e.kv));
        wait_for_builds(&b, 2);
        assert_eq!(b.stats().built, 2);
    }

    #[test]
    fn a_snapshot_older_than_the_ask_is_never_handed_out() {
        let e = engine(10);
        let b = SnapshotBuilds::default();
        not_yet(b.take(1, 5, &e.log, &e.kv));
        wait_for_builds(&b, 1);
        // Built at applied index 0 < 5: dropped, and built again.
        not_yet(b.take(1, 5, &e.log, &e.kv));
        wait_for_builds(&b, 2);
        assert_eq!(b.stats().built, 2);
        // An ask the snapshot does satisfy takes it.
        assert_eq!(
            b.take(1, 0, &e.log, &e.kv).expect("built").metadata.index,
            0
        );
    }

    #[test]
    fn a_failed_build_is_counted_and_retried_after_a_pause() {
        let e = engine(0);
        let b = SnapshotBuilds::default();
        // Region 9 has no descriptor: the build fails, nothing panics.
        not_yet(b.take(9, 0, &e.log, &e.kv));
        wait_for_builds(&b, 1);
        assert_eq!(b.stats().failed, 1);
        // Within the pause: no new build.
        not_yet(b.take(9, 0, &e.log, &e.kv));
        let s = b.stats();
        assert_eq!((s.building, s.queued, s.failed), (0, 0, 1), "{s:?}");
        std::thread::sleep(SNAPSHOT_RETRY_PAUSE);
        not_yet(b.take(9, 0, &e.log, &e.kv));
        wait_for_builds(&b, 2);
        assert_eq!(b.stats().failed, 2);
    }
}
