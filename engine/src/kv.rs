//! The key-value state machine on RocksDB.
//!
//! Column families: `default` holds user data under `z` + user key, so a region's key range
//! is one contiguous range of RocksDB keys; `meta` holds per-region metadata: `d` + region
//! id → descriptor, and the client sessions (`t`, `u`, `s`: see [`crate::sessions`]);
//! `applied` holds the regions' applied indexes. One apply round is one WriteBatch that
//! also records the applied index and the sessions of every region it touches, so data,
//! sessions and applied index can never disagree after a crash.
//!
//! Every round changes the applied index of every region it applies, so the indexes are a
//! log, like the sessions: a round writes one record for all of its regions, `0xFF` +
//! the batch's sequence number (8 bytes big-endian) → `[(region, Some(index) | None)]`
//! (`None`: the region's records were removed). Every [`APPLIED_FOLD_RECORDS`] records
//! the round folds them instead: it writes each region the log changed under its own key
//! (region id → index, both 8 bytes big-endian; removed regions' keys deleted) and deletes
//! the log with one range deletion. Opening reads the regions' keys, then the log in order.
//! A record per region and round cost up to 15–20 % of the cluster's CPU per write at 64
//! regions (measured by leaving them out; what the log saves is in docs/benchmarks.md,
//! "Fewer records per round"). Snapshot installs and
//! region removals go through the same log, so an older record can never override them.
//! Keeping the indexes out of `meta` keeps that column family's memtable (sessions,
//! descriptors) small. A region snapshot takes its applied index from memory, under the
//! same lock as the apply rounds (see [`KvStore::snapshot_region`]). Stores written before
//! the `applied` column family kept the index under `a` + region id in `meta`; it is still
//! read, and deleted at the region's next round.
//!
//! (`inplace_update_support` on `applied`, which would keep one memtable entry per region,
//! was tried and dropped: RocksDB then let a snapshot of the data column family see writes
//! made after it — `a_snapshot_under_concurrent_writes_installs_an_identical_copy` caught
//! it.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use flotilla_common::codec;
use parking_lot::Mutex;
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::config::RocksConfig;
use crate::error::{EngineError, Result};
use crate::log::CompactPermit;
use crate::sessions::SessionLogs;

pub(crate) const CF_DEFAULT: &str = "default";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_APPLIED: &str = "applied";
/// The memtable of `applied`: small records, many versions of few keys.
const APPLIED_WRITE_BUFFER_BYTES: u64 = 1 << 20;

const DATA_PREFIX: u8 = b'z';
const APPLIED_PREFIX: u8 = b'a';
const DESCRIPTOR_PREFIX: u8 = b'd';
const SESSION_PREFIX: u8 = b's';
/// The node's id counter (one key in `meta`).
const ID_COUNTER_KEY: &[u8] = b"i";
/// Ids [`KvStore::next_id`] hands out from memory for each synced write of the counter.
const ID_BLOCK: u64 = 64;

/// A range of user keys: `start` inclusive, `end` exclusive; an empty `end` means no end.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyRange {
    /// The first key.
    pub start: Bytes,
    /// The key after the last (empty: unbounded).
    pub end: Bytes,
}

impl KeyRange {
    /// The range `start..end`.
    pub fn new(start: impl Into<Bytes>, end: impl Into<Bytes>) -> Self {
        KeyRange {
            start: start.into(),
            end: end.into(),
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= &self.start[..] && (self.end.is_empty() || key < &self.end[..])
    }

    /// The RocksDB keys of the range's data: `(lower inclusive, upper exclusive)`.
    pub(crate) fn data_bounds(&self) -> (Vec<u8>, Vec<u8>) {
        let upper = if self.end.is_empty() {
            vec![DATA_PREFIX + 1]
        } else {
            data_key(&self.end)
        };
        (data_key(&self.start), upper)
    }
}

pub(crate) fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

pub(crate) fn meta_key(prefix: u8, region_id: u64) -> [u8; 9] {
    let mut k = [0; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&region_id.to_be_bytes());
    k
}

/// A region's applied index in `meta`, as stores before the `applied` column family kept it.
pub(crate) fn legacy_applied_key(region_id: u64) -> [u8; 9] {
    meta_key(APPLIED_PREFIX, region_id)
}

/// The first byte of an applied-index log record's key in `applied` (a region's own key is
/// 8 bytes; region ids never reach `0xFF << 56`).
const APPLIED_LOG_PREFIX: u8 = 0xFF;
/// Applied-index log records written before the next round folds them.
pub(crate) const APPLIED_FOLD_RECORDS: usize = 256;

/// The key of the applied-index log record written by the batch numbered `seq`.
fn applied_log_key(seq: u64) -> [u8; 9] {
    let mut k = [APPLIED_LOG_PREFIX; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Bounds of every applied-index log record.
fn applied_log_bounds() -> ([u8; 9], [u8; 10]) {
    ([APPLIED_LOG_PREFIX, 0, 0, 0, 0, 0, 0, 0, 0], [0xFF; 10])
}

/// A region's key in `applied`.
pub(crate) fn applied_key(region_id: u64) -> [u8; 8] {
    region_id.to_be_bytes()
}

/// An applied index as `applied` stores it (8 bytes, big-endian).
pub(crate) fn applied_value(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn descriptor_key(region_id: u64) -> [u8; 9] {
    meta_key(DESCRIPTOR_PREFIX, region_id)
}

pub(crate) fn session_key(region_id: u64, client_id: u64) -> [u8; 17] {
    let mut k = [0; 17];
    k[..9].copy_from_slice(&meta_key(SESSION_PREFIX, region_id));
    k[9..].copy_from_slice(&client_id.to_be_bytes());
    k
}

/// The big-endian `u64` at `at` in a meta key (a region id after the prefix, a client id
/// after a session key's region), if the key is long enough.
pub(crate) fn u64_at(key: &[u8], at: usize) -> Option<u64> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// The bounds of a region's session keys in `meta`: the lower inclusive, the upper
/// exclusive (the next region's first; region ids stay far below `u64::MAX`).
pub(crate) fn session_bounds(region_id: u64) -> ([u8; 17], [u8; 17]) {
    (
        session_key(region_id, 0),
        session_key(region_id.saturating_add(1), 0),
    )
}

#[derive(Debug, Clone)]
enum Op {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

impl Op {
    fn key(&self) -> &Bytes {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// The writes of one apply round, for any number of regions. Every region whose data the
/// round changes must also get its new applied index ([`ApplyRound::set_applied`]):
/// [`KvStore::apply`] refuses a round that forgets one.
#[derive(Debug, Clone, Default)]
pub struct ApplyRound {
    ops: Vec<Op>,
    touched: BTreeSet<u64>,
    applied: BTreeMap<u64, u64>,
    descriptors: Vec<(u64, Bytes)>,
    sessions: Vec<(u64, u64, Bytes)>,
    all_sessions: Vec<(u64, Vec<(u64, Bytes)>)>,
    removed: Vec<u64>,
}

impl ApplyRound {
    /// An empty round.
    pub fn new() -> Self {
        ApplyRound::default()
    }

    /// Writes `key = value` on behalf of `region_id`.
    pub fn put(&mut self, region_id: u64, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.touched.insert(region_id);
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
    }

    /// Deletes `key` on behalf of `region_id`.
    pub fn delete(&mut self, region_id: u64, key: impl Into<Bytes>) {
        self.touched.insert(region_id);
        self.ops.push(Op::Delete { key: key.into() });
    }

    /// Records that `region_id` has applied its log up to `index`.
    pub fn set_applied(&mut self, region_id: u64, index: u64) {
        self.applied.insert(region_id, index);
    }

    /// Stores the region's descriptor (opaque to the engine).
    pub fn set_descriptor(&mut self, region_id: u64, descriptor: impl Into<Bytes>) {
        self.touched.insert(region_id);
        self.descriptors.push((region_id, descriptor.into()));
    }

    /// Stores a client session of the region (opaque to the engine).
    pub fn set_session(&mut self, region_id: u64, client_id: u64, session: impl Into<Bytes>) {
        self.touched.insert(region_id);
        self.sessions.push((region_id, client_id, session.into()));
    }

    /// Gives every client session of the region, `(client id, session)` — what it holds
    /// after this round, or before it (the round's [`ApplyRound::set_session`] changes
    /// are laid over them) — so that the round folds the region's session log into one
    /// base record. Give them when [`KvStore::sessions_fold_due`] says so; without them
    /// the log only grows.
    pub fn set_all_sessions(&mut self, region_id: u64, sessions: Vec<(u64, Bytes)>) {
        self.touched.insert(region_id);
        self.all_sessions.push((region_id, sessions));
    }

    /// Removes a region's own records — descriptor, applied index, sessions — after those
    /// the round writes for it (a merged-away region; its data keys belong to another
    /// region now and stay). Its applied index stays known to this process, so its raft
    /// log can still be cut under a permit.
    pub fn remove_region(&mut self, region_id: u64) {
        self.removed.push(region_id);
    }

    /// The round's data writes from the `from`-th on, in order: `(key, Some(value))` for
    /// a put, `(key, None)` for a delete. (A caller that reads its own writes within a
    /// round indexes them only when it first needs to.)
    pub fn writes_from(&self, from: usize) -> impl Iterator<Item = (&Bytes, Option<&Bytes>)> {
        self.ops.iter().skip(from).map(|op| match op {
            Op::Put { key, value } => (key, Some(value)),
            Op::Delete { key } => (key, None),
        })
    }

    /// How many data writes the round holds.
    pub fn writes(&self) -> usize {
        self.ops.len()
    }

    /// Whether the round writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.applied.is_empty()
            && self.touched.is_empty()
            && self.removed.is_empty()
    }
}

/// The applied indexes the store knows: written, and durable (its WAL synced after them).
#[derive(Debug, Default)]
pub(crate) struct AppliedIndexes {
    written: HashMap<u64, u64>,
    durable: HashMap<u64, u64>,
    /// Regions whose index is still (also) under the old `meta` key: deleted at their
    /// next write.
    legacy: std::collections::HashSet<u64>,
    /// What the log records since the last fold changed: region → index (`None`: removed).
    unfolded: HashMap<u64, Option<u64>>,
    /// Log records since the last fold.
    records: usize,
}

/// How a batch records applied-index changes: as one log record, or by folding the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppliedWrite {
    Logged,
    Folded,
}

impl AppliedIndexes {
    /// Adds `changes` (region → index, `None`: removed; later ones win) to `wb`, in the
    /// `applied` column family `cf`, as the log record of the batch numbered `seq`, or as a
    /// fold once the log holds [`APPLIED_FOLD_RECORDS`]. Call [`AppliedIndexes::written`]
    /// once `wb` is written.
    pub(crate) fn record(
        &self,
        wb: &mut WriteBatch,
        cf: &rocksdb::ColumnFamily,
        changes: &[(u64, Option<u64>)],
        seq: u64,
    ) -> Result<AppliedWrite> {
        if self.records + 1 < APPLIED_FOLD_RECORDS {
            wb.put_cf(cf, applied_log_key(seq), codec::encode(&changes)?);
            return Ok(AppliedWrite::Logged);
        }
        let mut folded: BTreeMap<u64, Option<u64>> =
            self.unfolded.iter().map(|(r, i)| (*r, *i)).collect();
        folded.extend(changes.iter().copied());
        for (region, index) in folded {
            match index {
                Some(i) => wb.put_cf(cf, applied_key(region), applied_value(i)),
                None => wb.delete_cf(cf, applied_key(region)),
            }
        }
        let (lower, upper) = applied_log_bounds();
        wb.delete_range_cf(cf, &lower[..], &upper[..]);
        Ok(AppliedWrite::Folded)
    }

    /// Takes in what a written batch recorded ([`AppliedIndexes::record`]).
    pub(crate) fn written(&mut self, changes: &[(u64, Option<u64>)], how: AppliedWrite) {
        match how {
            AppliedWrite::Logged => {
                self.records += 1;
                self.unfolded.extend(changes.iter().copied());
            }
            AppliedWrite::Folded => {
                self.records = 0;
                self.unfolded.clear();
            }
        }
        for &(region, index) in changes {
            self.legacy.remove(&region);
            match index {
                Some(i) => {
                    self.written.insert(region, i);
                }
                None => {
                    self.written.remove(&region);
                }
            }
        }
    }
}

/// Keys kept of a scan for the middle of a range (see [`KvStore::size_and_middle`]).
const MIDDLE_SAMPLES_MAX: usize = 4096;

/// The key-value state of a node (see the module docs).
pub struct KvStore {
    pub(crate) db: DB,
    path: PathBuf,
    applied: Mutex<AppliedIndexes>,
    /// What is known of each region's session records (locked after `applied`).
    pub(crate) session_logs: Mutex<SessionLogs>,
    /// Serialises syncs so that `durable` only moves forward.
    sync_lock: Mutex<()>,
    /// The ids reserved by the stored counter and not handed out yet.
    ids: Mutex<IdBlock>,
}

/// Ids `next..=reserved` may be handed out without a write: the stored counter already
/// says `reserved`, so none of them can come out again after a crash.
#[derive(Debug, Default)]
struct IdBlock {
    next: u64,
    reserved: u64,
}

impl KvStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: impl AsRef<Path>, config: &RocksConfig) -> Result<KvStore> {
        let opts = config.options()?;
        let meta = RocksConfig {
            write_buffer_bytes: config.meta_write_buffer_bytes,
            ..config.clone()
        };
        let applied_cf = RocksConfig {
            write_buffer_bytes: APPLIED_WRITE_BUFFER_BYTES,
            ..config.clone()
        }
        .options()?;
        let cfs = [(CF_DEFAULT, config), (CF_META, &meta)]
            .map(|(name, c)| Ok(ColumnFamilyDescriptor::new(name, c.options()?)));
        let mut cfs: Vec<ColumnFamilyDescriptor> = cfs.into_iter().collect::<Result<_>>()?;
        cfs.push(ColumnFamilyDescriptor::new(CF_APPLIED, applied_cf));
        let db = DB::open_cf_descriptors(&opts, path.as_ref(), cfs)?;
        // What recovery replayed may still sit only in the page cache: sync before calling
        // it durable.
        db.flush_wal(true)?;
        let store = KvStore {
            db,
            path: path.as_ref().to_path_buf(),
            applied: Mutex::new(AppliedIndexes::default()),
            session_logs: Mutex::new(SessionLogs::default()),
            sync_lock: Mutex::new(()),
            ids: Mutex::new(IdBlock::default()),
        };
        let mut written = HashMap::new();
        let mut legacy = std::collections::HashSet::new();
        let corrupt = |reason: &str| EngineError::Corruption {
            file: store.path.clone(),
            offset: 0,
            reason: reason.into(),
        };
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(vec![APPLIED_PREFIX + 1]);
        let lower = [APPLIED_PREFIX];
        for item in store.db.iterator_cf_opt(
            store.cf(CF_META)?,
            opts,
            IteratorMode::From(&lower, Direction::Forward),
        ) {
            let (key, value) = item?;
            let region = u64_at(&key, 1).ok_or_else(|| corrupt("bad applied-index key"))?;
            written.insert(region, codec::decode::<u64>(&value)?);
            legacy.insert(region);
        }
        // Written after the old keys (and deleting them): newer where both exist. The
        // regions' own keys first, then the log over them, in order.
        let mut log = Vec::new();
        for item in store
            .db
            .iterator_cf(store.cf(CF_APPLIED)?, IteratorMode::Start)
        {
            let (key, value) = item?;
            match key.len() {
                8 => {
                    let region = u64_at(&key, 0).ok_or_else(|| corrupt("bad applied-index key"))?;
                    let index = u64_at(&value, 0).ok_or_else(|| corrupt("bad applied index"))?;
                    written.insert(region, index);
                }
                9 if key[0] == APPLIED_LOG_PREFIX => log.push(value),
                n => return Err(corrupt(&format!("applied-index key of {n} bytes"))),
            }
        }
        let mut unfolded = HashMap::new();
        for value in &log {
            let changes: Vec<(u64, Option<u64>)> = codec::decode(value)
                .map_err(|e| corrupt(&format!("applied-index log record: {e}")))?;
            for (region, index) in changes {
                match index {
                    Some(i) => written.insert(region, i),
                    None => written.remove(&region),
                };
                unfolded.insert(region, index);
            }
        }
        *store.applied.lock() = AppliedIndexes {
            durable: written.clone(),
            written,
            legacy,
            unfolded,
            records: log.len(),
        };
        Ok(store)
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| EngineError::InvalidConfig(format!("column family {name} missing")))
    }

    /// Writes one apply round as one WriteBatch (not synced: the raft log holds the entries,
    /// and [`KvStore::compaction_permit`] syncs before the log may drop them).
    pub fn apply(&self, round: ApplyRound) -> Result<()> {
        if let Some(region) = round
            .touched
            .iter()
            .find(|r| !round.applied.contains_key(r))
        {
            return Err(EngineError::InvalidBatch {
                region_id: *region,
                reason: "an apply round that writes a region must set its applied index".into(),
            });
        }
        let data = self.cf(CF_DEFAULT)?;
        let meta = self.cf(CF_META)?;
        let applied_cf = self.cf(CF_APPLIED)?;
        let mut wb = WriteBatch::default();
        // In key order, and only the last write of each key: the memtable's skip list
        // inserts a run of ascending keys far faster than scattered ones (each insert
        // starts from where the previous one ended instead of from the top), and a key
        // written twice in a round needs only its last value. The sort is stable, so "last"
        // is the round's order.
        let mut ops: Vec<&Op> = round.ops.iter().collect();
        ops.sort_by(|a, b| a.key().cmp(b.key()));
        let mut key_buf = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if ops.get(i + 1).is_some_and(|next| next.key() == op.key()) {
                continue;
            }
            key_buf.clear();
            key_buf.push(DATA_PREFIX);
            key_buf.extend_from_slice(op.key());
            match op {
                Op::Put { value, .. } => wb.put_cf(data, &key_buf, value),
                Op::Delete { .. } => wb.delete_cf(data, &key_buf),
            }
        }
        for (region, descriptor) in &round.descriptors {
            wb.put_cf(meta, descriptor_key(*region), descriptor);
        }
        let mut sessions: Vec<(u64, u64, &Bytes)> =
            round.sessions.iter().map(|(r, c, s)| (*r, *c, s)).collect();
        // Stable: of a client's several changes in a round, the last is kept.
        sessions.sort_by_key(|(region, client, _)| (*region, *client));
        let mut last: Vec<(u64, u64, &Bytes)> = Vec::with_capacity(sessions.len());
        for change in sessions {
            match last.last_mut() {
                Some(prev) if (prev.0, prev.1) == (change.0, change.1) => *prev = change,
                _ => last.push(change),
            }
        }
        let mut applied = self.applied.lock();
        let mut changes: Vec<(u64, Option<u64>)> = Vec::with_capacity(round.applied.len());
        for (&region, &index) in &round.applied {
            let current = applied.written.get(&region).copied().unwrap_or(0);
            if index < current {
                return Err(EngineError::InvalidBatch {
                    region_id: region,
                    reason: format!("applied index {index} is behind {current}"),
                });
            }
            changes.push((region, Some(index)));
            if applied.legacy.contains(&region) {
                wb.delete_cf(meta, legacy_applied_key(region));
            }
        }
        // After the indexes: a region applied and removed in one round ends removed.
        changes.extend(round.removed.iter().map(|&region| (region, None)));
        let mut all: Vec<(u64, &[(u64, Bytes)])> = round
            .all_sessions
            .iter()
            .map(|(r, list)| (*r, list.as_slice()))
            .collect();
        // Stable: of a region's several lists, the last is kept.
        all.sort_by_key(|(region, _)| *region);
        let mut logs = self.session_logs.lock();
        // Every write of this batch gets a sequence number after this one.
        let seq = self.db.latest_sequence_number() + 1;
        let states = self.write_sessions(&mut wb, &mut logs, &last, &all, seq)?;
        let how = if changes.is_empty() {
            None
        } else {
            Some(applied.record(&mut wb, applied_cf, &changes, seq)?)
        };
        for &region in &round.removed {
            wb.delete_cf(meta, descriptor_key(region));
            wb.delete_cf(meta, legacy_applied_key(region));
            self.delete_sessions(&mut wb, region)?;
        }
        // Under the locks so that the written indexes and session states follow the order
        // of the writes.
        self.db.write(wb)?;
        logs.written(states);
        for &region in &round.removed {
            logs.forget(region);
        }
        drop(logs);
        // A removed region's index stays known to this process (its raft log may still
        // be cut under a permit); it is gone from disk.
        let kept: Vec<(u64, u64)> = round
            .removed
            .iter()
            .filter_map(|r| {
                let index = round.applied.get(r).or_else(|| applied.written.get(r));
                index.map(|i| (*r, *i))
            })
            .collect();
        if let Some(how) = how {
            applied.written(&changes, how);
        }
        applied.written.extend(kept);
        Ok(())
    }

    /// The value of a user key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_DEFAULT)?, data_key(key))?)
    }

    /// The first `limit` user keys and values in `range`, in order (reading no further).
    pub fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        let (lower, upper) = range.data_bounds();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(upper);
        let mut out = Vec::new();
        let items = self.db.iterator_cf_opt(
            self.cf(CF_DEFAULT)?,
            opts,
            IteratorMode::From(&lower, Direction::Forward),
        );
        for item in items.take(limit) {
            let (key, value) = item?;
            out.push((
                Bytes::copy_from_slice(&key[1..]),
                Bytes::copy_from_slice(&value),
            ));
        }
        Ok(out)
    }

    /// The region's applied index as last written (0 if never).
    pub fn applied_index(&self, region_id: u64) -> u64 {
        self.applied
            .lock()
            .written
            .get(&region_id)
            .copied()
            .unwrap_or(0)
    }

    /// The region's applied index as held durably.
    pub fn durable_applied_index(&self, region_id: u64) -> u64 {
        self.applied
            .lock()
            .durable
            .get(&region_id)
            .copied()
            .unwrap_or(0)
    }

    /// The region's descriptor.
    pub fn descriptor(&self, region_id: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get_cf(self.cf(CF_META)?, descriptor_key(region_id))?)
    }

    /// A client session of the region. Reads all of the region's session records: to
    /// look up many, read [`KvStore::sessions`] once.
    pub fn session(&self, region_id: u64, client_id: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .sessions_at(region_id, None)?
            .remove(&client_id)
            .map(|s| s.to_vec()))
    }

    /// Every region with a descriptor in the store, in id order.
    pub fn region_ids(&self) -> Result<Vec<u64>> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(vec![DESCRIPTOR_PREFIX + 1]);
        let lower = [DESCRIPTOR_PREFIX];
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(CF_META)?,
            opts,
            IteratorMode::From(&lower, Direction::Forward),
        ) {
            let (key, _) = item?;
            let id = u64_at(&key, 1).ok_or_else(|| EngineError::Corruption {
                file: self.path.clone(),
                offset: 0,
                reason: format!("descriptor key of {} bytes", key.len()),
            })?;
            out.push(id);
        }
        Ok(out)
    }

    /// Every client session of the region: (client id, session), in client order.
    pub fn sessions(&self, region_id: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self
            .sessions_at(region_id, None)?
            .into_iter()
            .map(|(client, s)| (client, s.to_vec()))
            .collect())
    }

    /// The store's directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The next value of the node's durable counter (increasing; never handed out twice,
    /// even across crashes). The stored counter moves ahead `ID_BLOCK` values at a time,
    /// written and synced before any of them is returned, so most calls write nothing; a
    /// restart skips what was reserved and not handed out.
    pub fn next_id(&self) -> Result<u64> {
        let mut ids = self.ids.lock();
        if ids.next == 0 || ids.next > ids.reserved {
            let _one_at_a_time = self.sync_lock.lock();
            let meta = self.cf(CF_META)?;
            let stored = match self.db.get_cf(meta, ID_COUNTER_KEY)? {
                None => 0,
                Some(v) => codec::decode::<u64>(&v)?,
            };
            let next = ids.next.max(stored + 1);
            let reserved = next - 1 + ID_BLOCK;
            self.db
                .put_cf(meta, ID_COUNTER_KEY, codec::encode(&reserved)?)?;
            self.db.flush_wal(true)?;
            *ids = IdBlock { next, reserved };
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    /// The key in the middle of `range` by bytes of keys and values (the first key past half
    /// of the range's data), reading at most `scan_bytes_max` bytes; `None` if the range
    /// holds fewer than two keys.
    pub fn middle_key(&self, range: &KeyRange, scan_bytes_max: usize) -> Result<Option<Bytes>> {
        Ok(self.size_and_middle(range, scan_bytes_max)?.1)
    }

    /// Bytes of keys and values in `range`, counting at most `scan_bytes_max` (the answer is
    /// then at least that), and the first key past half of what was counted (`None` with
    /// fewer than two keys).
    pub fn size_and_middle(
        &self,
        range: &KeyRange,
        scan_bytes_max: usize,
    ) -> Result<(u64, Option<Bytes>)> {
        let (lower, upper) = range.data_bounds();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(upper);
        // A scan of a big region must not stall a split for long: a raw iterator lends
        // each pair without copying it, and only a sample of the keys is kept — every
        // key until `MIDDLE_SAMPLES_MAX`, then every other one of those, and so on — so
        // the middle found is within 2 / MIDDLE_SAMPLES_MAX of the keys counted.
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_DEFAULT)?, opts);
        it.seek(&lower);
        let mut samples: Vec<(Bytes, usize)> = Vec::new();
        let mut stride = 1usize;
        let mut seen = 0usize;
        let mut total = 0usize;
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            total += key.len() + value.len();
            if seen.is_multiple_of(stride) {
                samples.push((Bytes::copy_from_slice(&key[1..]), total));
                if samples.len() == MIDDLE_SAMPLES_MAX {
                    let mut i = 0;
                    samples.retain(|_| {
                        i += 1;
                        i % 2 == 1
                    });
                    stride *= 2;
                }
            }
            seen += 1;
            if total >= scan_bytes_max {
                break;
            }
            it.next();
        }
        it.status()?;
        if seen < 2 {
            return Ok((total as u64, None));
        }
        let half = total / 2;
        let at = samples
            .iter()
            .position(|(_, t)| *t > half)
            .unwrap_or(samples.len() - 1);
        // Never the first key: the left part would be empty. (Two keys seen are two
        // samples: every key is kept until there are MIDDLE_SAMPLES_MAX of them.)
        Ok((total as u64, Some(samples[at.max(1)].0.clone())))
    }

    /// Makes everything written so far durable (flushes and syncs RocksDB's WAL).
    pub fn sync(&self) -> Result<()> {
        let _one_at_a_time = self.sync_lock.lock();
        // Taken before the sync: these writes are certainly covered by it.
        let written = self.applied.lock().written.clone();
        self.db.flush_wal(true)?;
        let mut applied = self.applied.lock();
        for (region, index) in written {
            // `max`: an installed snapshot may have moved it further meanwhile.
            let durable = applied.durable.entry(region).or_default();
            *durable = (*durable).max(index);
        }
        Ok(())
    }

    /// Proof that the region's log may be compacted to `index` (or restarted after a
    /// snapshot at `index`): the applied index must be at least `index`, and is made durable
    /// first if it is not yet.
    pub fn compaction_permit(&self, region_id: u64, index: u64) -> Result<CompactPermit> {
        let (written, durable) = {
            let applied = self.applied.lock();
            (
                applied.written.get(&region_id).copied().unwrap_or(0),
                applied.durable.get(&region_id).copied().unwrap_or(0),
            )
        };
        if written < index {
            return Err(EngineError::CompactionAheadOfApplied {
                region_id,
                index,
                applied: written,
            });
        }
        if durable >= index {
            return Ok(CompactPermit::new(region_id, durable));
        }
        self.sync()?;
        Ok(CompactPermit::new(
            region_id,
            self.durable_applied_index(region_id),
        ))
    }

    /// Destroys this node's replica of a region that left the node (a membership change
    /// removed it): deletes its descriptor, applied index and client sessions, and the user
    /// data in `data` (`None`: another region here owns that range, the data stays), in
    /// one synced WriteBatch. Its applied index is forgotten, so a replica of the same
    /// region created here later starts from its snapshot. Cut the region's raft log
    /// first: the permit for that needs the applied index this forgets.
    pub fn destroy_region(&self, region_id: u64, data: Option<&KeyRange>) -> Result<()> {
        let data_cf = self.cf(CF_DEFAULT)?;
        let meta = self.cf(CF_META)?;
        let mut wb = WriteBatch::default();
        if let Some(range) = data {
            let (lower, upper) = range.data_bounds();
            wb.delete_range_cf(data_cf, lower, upper);
        }
        wb.delete_cf(meta, descriptor_key(region_id));
        wb.delete_cf(meta, legacy_applied_key(region_id));
        self.delete_sessions(&mut wb, region_id)?;
        self.write_region_replaced(wb, region_id, None)
    }

    /// Writes `wb`, which replaces a region's records (a snapshot install, `Some(index)`,
    /// or a destroyed replica, `None`), synced, with the region's applied index set (or
    /// removed) through the applied-index log; records it as written and durable, and
    /// forgets the region's session state (read again on next use: replaced, or after an
    /// error unknown).
    pub(crate) fn write_region_replaced(
        &self,
        mut wb: WriteBatch,
        region_id: u64,
        index: Option<u64>,
    ) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let mut applied = self.applied.lock();
        let changes = [(region_id, index)];
        let seq = self.db.latest_sequence_number() + 1;
        let how = applied.record(&mut wb, self.cf(CF_APPLIED)?, &changes, seq)?;
        let mut logs = self.session_logs.lock();
        let written = self.db.write_opt(wb, &opts);
        logs.forget(region_id);
        drop(logs);
        written?;
        applied.written(&changes, how);
        match index {
            Some(i) => applied.durable.insert(region_id, i),
            None => applied.durable.remove(&region_id),
        };
        Ok(())
    }

    /// A RocksDB snapshot and the region's applied index as of it, from memory: taken under
    /// the lock the apply rounds hold while they write, the two agree.
    pub(crate) fn snapshot_with_applied(&self, region_id: u64) -> (rocksdb::Snapshot<'_>, u64) {
        let applied = self.applied.lock();
        let snapshot = self.db.snapshot();
        let index = applied.written.get(&region_id).copied().unwrap_or(0);
        (snapshot, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> KvStore {
        KvStore::open(dir, &RocksConfig::default()).expect("open")
    }

    fn round(region: u64, index: u64) -> ApplyRound {
        let mut r = ApplyRound::new();
        r.put(
            region,
            format!("k{region}").into_bytes(),
            index.to_string().into_bytes(),
        );
        r.set_applied(region, index);
        r
    }

    /// A store written before the `applied` column family kept the index in `meta`: it is
    /// read, and replaced at the region's next round.
    #[test]
    fn an_applied_index_of_the_old_layout_is_read_and_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let kv = open(dir.path());
            let meta = kv.cf(CF_META).expect("cf");
            kv.db
                .put_cf(
                    meta,
                    legacy_applied_key(7),
                    codec::encode(&41u64).expect("enc"),
                )
                .expect("put");
        }
        let kv = open(dir.path());
        assert_eq!(kv.applied_index(7), 41);
        kv.apply(round(7, 42)).expect("apply");
        let meta = kv.cf(CF_META).expect("cf");
        assert_eq!(
            kv.db.get_cf(meta, legacy_applied_key(7)).expect("get"),
            None
        );
        drop(kv);
        let kv = open(dir.path());
        assert_eq!(kv.applied_index(7), 42);
    }

    /// A region snapshot carries the applied index its data is at, and rounds applied
    /// after it change neither.
    #[test]
    fn a_region_snapshot_carries_the_applied_index_of_its_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = open(dir.path());
        for i in 1..=10 {
            kv.apply(round(3, i)).expect("apply");
        }
        let mut stream = kv
            .snapshot_region(3, KeyRange::new(&b""[..], &b""[..]))
            .expect("snapshot");
        for i in 11..=20 {
            kv.apply(round(3, i)).expect("apply");
        }
        assert_eq!(stream.header().applied_index, 10);
        let chunk = stream.next().expect("a chunk").expect("read");
        assert_eq!(
            chunk.pairs,
            vec![(Bytes::from_static(b"k3"), Bytes::from_static(b"10"))]
        );
        drop(stream);
        drop(kv);
        let kv = open(dir.path());
        assert_eq!(kv.applied_index(3), 20);
    }

    /// The applied-index log records in the store.
    fn log_records(kv: &KvStore) -> usize {
        let cf = kv.cf(CF_APPLIED).expect("cf");
        kv.db
            .iterator_cf(cf, IteratorMode::Start)
            .filter(|item| item.as_ref().expect("read").0.len() == 9)
            .count()
    }

    /// A model of every region's applied index, checked after reopens at many points of
    /// the log: just before a fold, just after one, and between.
    #[test]
    fn applied_indexes_read_back_through_the_log_its_folds_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut kv = open(dir.path());
        let mut model: HashMap<u64, u64> = HashMap::new();
        let rounds = 3 * APPLIED_FOLD_RECORDS as u64 + 17;
        let reopen_at = [
            5,
            APPLIED_FOLD_RECORDS as u64 - 2,
            APPLIED_FOLD_RECORDS as u64 - 1,
            APPLIED_FOLD_RECORDS as u64,
            2 * APPLIED_FOLD_RECORDS as u64 + 100,
        ];
        for r in 1..=rounds {
            let mut round = ApplyRound::new();
            // Region 1 every round, the others now and then.
            for region in 1..=6u64 {
                if region == 1 || r % region == 0 {
                    let index = model.get(&region).copied().unwrap_or(0) + r % 3 + 1;
                    round.put(region, format!("k{region}").into_bytes(), b"v".to_vec());
                    round.set_applied(region, index);
                    model.insert(region, index);
                }
            }
            kv.apply(round).expect("apply");
            assert!(log_records(&kv) < APPLIED_FOLD_RECORDS, "round {r}");
            if reopen_at.contains(&r) {
                drop(kv);
                kv = open(dir.path());
            }
            for (region, index) in &model {
                assert_eq!(
                    kv.applied_index(*region),
                    *index,
                    "region {region}, round {r}"
                );
            }
        }
        drop(kv);
        let kv = open(dir.path());
        for (region, index) in &model {
            assert_eq!(
                kv.applied_index(*region),
                *index,
                "region {region} at the end"
            );
        }
    }

    /// Removing, destroying and installing go through the log too: an older record never
    /// brings back a region's old index.
    #[test]
    fn removed_destroyed_and_reinstalled_regions_keep_their_last_index_across_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = open(dir.path());
        // Past a fold: both regions have keys of their own, and newer log records.
        for i in 1..=150 {
            kv.apply(round(7, i)).expect("apply");
            kv.apply(round(8, i)).expect("apply");
        }
        const { assert!(2 * 150 > APPLIED_FOLD_RECORDS) };
        let mut r = round(9, 1);
        r.remove_region(7);
        kv.apply(r).expect("apply");
        // Known to the process still (its log may be cut), gone from disk.
        assert_eq!(kv.applied_index(7), 150);
        kv.destroy_region(8, None).expect("destroy");
        assert_eq!(kv.applied_index(8), 0);
        drop(kv);
        let kv = open(dir.path());
        assert_eq!((kv.applied_index(7), kv.applied_index(8)), (0, 0));
        assert_eq!(kv.applied_index(9), 1);
        let header = crate::SnapshotHeader {
            region_id: 7,
            applied_index: 10,
            range: KeyRange::new(&b"k7"[..], &b"k8"[..]),
            descriptor: None,
            sessions: Vec::new(),
        };
        kv.install_snapshot(&header, Vec::new()).expect("install");
        assert_eq!(kv.applied_index(7), 10);
        assert_eq!(kv.durable_applied_index(7), 10);
        drop(kv);
        let kv = open(dir.path());
        assert_eq!((kv.applied_index(7), kv.applied_index(8)), (10, 0));
        // And through a fold: the same.
        for i in 2..=APPLIED_FOLD_RECORDS as u64 + 5 {
            kv.apply(round(9, i)).expect("apply");
        }
        drop(kv);
        let kv = open(dir.path());
        assert_eq!((kv.applied_index(7), kv.applied_index(8)), (10, 0));
        assert_eq!(kv.applied_index(9), APPLIED_FOLD_RECORDS as u64 + 5);
    }
}
