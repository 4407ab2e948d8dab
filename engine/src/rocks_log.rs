//! The raft log on RocksDB: the same [`RaftLog`] as the WAL, with entries in their own
//! column family and one synced WriteBatch per group commit. It exists so that the two can
//! be compared on the same machine and a user can choose.
//!
//! Column families: `raft_entries` (key: region id and index, big-endian so a region's
//! entries are contiguous and ordered; value: the codec-encoded entry) and `raft_state`
//! (key: region id; value: a [`RegionState`]). A compaction to `i` deletes the entries
//! below `i - 1` and keeps entry `i - 1`, whose term is the new boundary term; a snapshot
//! mark, which has no entry, is stored in the region's state.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_common::{codec, Entry, HardState};
use parking_lot::RwLock;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::commit::{validate_group, GroupCommitter, GroupSink, Submission};
use crate::config::{RocksConfig, WalConfig};
use crate::error::{EngineError, Result};
use crate::index::{Planned, RegionIndex, Shape};
use crate::log::{
    LogBatch, LogStats, LogStatsSnapshot, LogWaker, PurgeReport, RaftLog, SnapshotMark,
    WriteReport, WriteTicket,
};
use crate::metrics::SyncMetrics;

const CF_ENTRIES: &str = "raft_entries";
const CF_STATE: &str = "raft_state";

/// A region's marks, stored beside its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct RegionState {
    first_index: u64,
    /// The boundary when the state was written; after a snapshot it is the only record of
    /// the boundary's term.
    snapshot: SnapshotMark,
    hard_state: HardState,
}

fn entry_key(region_id: u64, index: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&region_id.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

fn parse_entry_key(key: &[u8]) -> Option<(u64, u64)> {
    let region = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let index = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    Some((region, index))
}

struct Shared {
    db: DB,
    index: RwLock<HashMap<u64, RegionIndex<()>>>,
    stats: LogStats,
    cache_bytes_max: u64,
}

impl Shared {
    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| EngineError::InvalidConfig(format!("column family {name} missing")))
    }
}

/// The raft log of every region in one RocksDB (see the module docs).
pub struct RocksLog {
    committer: GroupCommitter<RocksWriter>,
    shared: Arc<Shared>,
}

impl RocksLog {
    /// Opens (or creates) the log in the RocksDB at `path`. The group size and the entry
    /// cache come from `wal` so that both logs run with the same settings.
    pub fn open(path: impl AsRef<Path>, rocks: &RocksConfig, wal: &WalConfig) -> Result<RocksLog> {
        let opts = rocks.options()?;
        let cfs = [CF_ENTRIES, CF_STATE]
            .map(|name| Ok(ColumnFamilyDescriptor::new(name, rocks.options()?)));
        let cfs: Vec<ColumnFamilyDescriptor> = cfs.into_iter().collect::<Result<_>>()?;
        let db = DB::open_cf_descriptors(&opts, path.as_ref(), cfs)?;
        let shared = Shared {
            db,
            index: RwLock::new(HashMap::new()),
            stats: LogStats::default(),
            cache_bytes_max: wal.entry_cache_bytes_per_region_max,
        };
        let regions = recover(&shared, path.as_ref())?;
        *shared.index.write() = regions;
        let shared = Arc::new(shared);
        let committer = GroupCommitter::start(
            "flotilla-rocks-log",
            RocksWriter {
                shared: shared.clone(),
                metrics: SyncMetrics::new("rocksdb"),
            },
            wal.batch_bytes_max,
        )?;
        Ok(RocksLog { committer, shared })
    }

    fn with_region<T>(&self, region_id: u64, f: impl FnOnce(&RegionIndex<()>) -> T) -> T {
        let index = self.shared.index.read();
        match index.get(&region_id) {
            Some(region) => f(region),
            None => f(&RegionIndex::default()),
        }
    }
}

/// Rebuilds the index from the two column families.
fn recover(shared: &Shared, path: &Path) -> Result<HashMap<u64, RegionIndex<()>>> {
    let corrupt = |reason: String| EngineError::Corruption {
        file: path.to_path_buf(),
        offset: 0,
        reason,
    };
    let mut states: HashMap<u64, RegionState> = HashMap::new();
    for item in shared
        .db
        .iterator_cf(shared.cf(CF_STATE)?, IteratorMode::Start)
    {
        let (key, value) = item?;
        let region = u64::from_be_bytes(
            key.as_ref()
                .try_into()
                .map_err(|_| corrupt("bad raft_state key".into()))?,
        );
        states.insert(region, codec::decode(&value)?);
    }
    let mut regions: HashMap<u64, RegionIndex<()>> = HashMap::new();
    let mut pending: HashMap<u64, (u64, Vec<u64>)> = HashMap::new();
    let mut boundary: HashMap<u64, SnapshotMark> = HashMap::new();
    for item in shared
        .db
        .iterator_cf(shared.cf(CF_ENTRIES)?, IteratorMode::Start)
    {
        let (key, value) = item?;
        let (region, index) =
            parse_entry_key(&key).ok_or_else(|| corrupt("bad raft_entries key".into()))?;
        let entry: Entry = codec::decode(&value)?;
        let state = states
            .get(&region)
            .ok_or_else(|| corrupt(format!("region {region} has entries but no state")))?;
        if index + 1 == state.first_index {
            boundary.insert(
                region,
                SnapshotMark {
                    index,
                    term: entry.term,
                },
            );
            continue;
        }
        let (first, terms) = pending.entry(region).or_insert((index, Vec::new()));
        if index != *first + terms.len() as u64 || index < state.first_index {
            return Err(corrupt(format!(
                "region {region}: entry {index} is out of place"
            )));
        }
        terms.push(entry.term);
    }
    for (region_id, state) in states {
        let mark = if state.first_index == state.snapshot.index + 1 {
            state.snapshot
        } else {
            *boundary.get(&region_id).ok_or_else(|| {
                corrupt(format!(
                    "region {region_id}: boundary entry {} missing",
                    state.first_index - 1
                ))
            })?
        };
        let terms = match pending.remove(&region_id) {
            Some((first, terms)) if first == state.first_index => terms,
            Some((first, _)) => {
                return Err(corrupt(format!(
                    "region {region_id}: first entry {first} after a gap"
                )))
            }
            None => Vec::new(),
        };
        regions.insert(
            region_id,
            RegionIndex::restored(mark, state.hard_state, &terms, ()),
        );
    }
    Ok(regions)
}

struct RocksWriter {
    shared: Arc<Shared>,
    metrics: SyncMetrics,
}

impl RocksWriter {
    /// Builds the group's WriteBatch.
    fn build(&self, group: &[Submission<()>]) -> Result<WriteBatch> {
        let entries_cf = self.shared.cf(CF_ENTRIES)?;
        let state_cf = self.shared.cf(CF_STATE)?;
        let index = self.shared.index.read();
        let mut wb = WriteBatch::default();
        let mut states: HashMap<u64, (Shape, RegionState)> = HashMap::new();
        for sub in group {
            for part in &sub.batch.regions {
                let r = part.region_id;
                let (shape, state) = states.entry(r).or_insert_with(|| {
                    let region = index.get(&r).cloned().unwrap_or_default();
                    let first_index = region.first_index();
                    let snapshot = region.mark();
                    (
                        region.shape(),
                        RegionState {
                            first_index,
                            snapshot,
                            hard_state: region.hard_state(),
                        },
                    )
                });
                let before = *shape;
                let after = before.after(part)?;
                if let Some(mark) = part.snapshot {
                    wb.delete_range_cf(entries_cf, entry_key(r, 0), entry_key(r, u64::MAX));
                    state.snapshot = mark;
                    state.first_index = mark.index + 1;
                }
                if let Some(first) = part.entries.first().map(|e| e.index) {
                    if part.snapshot.is_none() && first <= before.last {
                        // The uncommitted suffix a new leader overwrote.
                        wb.delete_range_cf(entries_cf, entry_key(r, first), entry_key(r, u64::MAX));
                    }
                    for e in &part.entries {
                        wb.put_cf(entries_cf, entry_key(r, e.index), codec::encode(e)?);
                    }
                }
                if let Some(hs) = part.hard_state {
                    state.hard_state = hs;
                }
                if after.first > state.first_index {
                    // Keep entry `first - 1`: its term is the new boundary's.
                    wb.delete_range_cf(entries_cf, entry_key(r, 0), entry_key(r, after.first - 1));
                    state.first_index = after.first;
                }
                *shape = after;
                wb.put_cf(state_cf, r.to_be_bytes(), codec::encode(state)?);
            }
        }
        Ok(wb)
    }
}

impl GroupSink for RocksWriter {
    type Prepared = ();

    fn commit(&mut self, group: Vec<Submission<()>>) {
        let mut group = validate_group(&self.shared.index.read(), group);
        if group.is_empty() {
            return;
        }
        let mut took = Duration::ZERO;
        let written = self.build(&group).and_then(|wb| {
            let bytes = wb.size_in_bytes() as u64;
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            let started = Instant::now();
            self.shared.db.write_opt(wb, &opts)?;
            took = started.elapsed();
            Ok(bytes)
        });
        let bytes = match written {
            Ok(bytes) => bytes,
            Err(e) => {
                self.metrics.failed();
                let reason = e.to_string();
                for sub in group {
                    sub.answer(Err(EngineError::Poisoned(reason.clone())));
                }
                return;
            }
        };
        let entries = group.iter().map(|s| s.batch.entry_count() as u64).sum();
        self.shared.stats.record(group.len() as u64, entries, bytes);
        self.metrics
            .synced(took, group.len() as u64, entries, bytes);
        let mut index = self.shared.index.write();
        let mut reports = Vec::with_capacity(group.len());
        for sub in group.iter_mut() {
            let mut report = WriteReport::default();
            for part in sub.batch.regions.iter_mut() {
                let region = index.entry(part.region_id).or_default();
                report
                    .durable
                    .push(region.apply_part(part, |_| (), self.shared.cache_bytes_max));
            }
            reports.push(report);
        }
        drop(index);
        for (sub, report) in group.into_iter().zip(reports) {
            sub.answer(Ok(report));
        }
    }
}

impl RaftLog for RocksLog {
    fn submit_with(&self, batch: LogBatch, wake: Option<LogWaker>) -> Result<WriteTicket> {
        for part in &batch.regions {
            part.check_shape()?;
        }
        let bytes = batch.size_bytes();
        self.committer.submit(batch, (), bytes, wake)
    }

    fn write(&self, batch: LogBatch) -> Result<WriteReport> {
        for part in &batch.regions {
            part.check_shape()?;
        }
        let bytes = batch.size_bytes();
        self.committer.write(batch, (), bytes)
    }

    fn entries(&self, region_id: u64, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        let plan = self.with_region(region_id, |r| r.plan(region_id, low, high))?;
        let cf = self.shared.cf(CF_ENTRIES)?;
        let mut out = Vec::with_capacity(plan.len());
        let mut total = 0u64;
        for planned in plan {
            let entry = match planned {
                Planned::Cached(entry) => entry,
                Planned::Stored { index, .. } => match self
                    .shared
                    .db
                    .get_pinned_cf(cf, entry_key(region_id, index))?
                {
                    Some(value) => codec::decode(&value)?,
                    // Compacted between the plan and the read.
                    None => {
                        return Err(EngineError::Compacted {
                            region_id,
                            index,
                            first_index: self.first_index(region_id),
                        })
                    }
                },
            };
            total += entry.size_bytes();
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn term(&self, region_id: u64, index: u64) -> Result<u64> {
        self.with_region(region_id, |r| r.term(region_id, index))
    }

    fn first_index(&self, region_id: u64) -> u64 {
        self.with_region(region_id, |r| r.first_index())
    }

    fn last_index(&self, region_id: u64) -> u64 {
        self.with_region(region_id, |r| r.last_index())
    }

    fn hard_state(&self, region_id: u64) -> HardState {
        self.with_region(region_id, |r| r.hard_state())
    }

    fn snapshot_mark(&self, region_id: u64) -> SnapshotMark {
        self.with_region(region_id, |r| r.mark())
    }

    fn regions(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.shared.index.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Compaction already deleted the entries; RocksDB reclaims the space in its own
    /// compactions, so nothing is held back.
    fn purge(&self) -> Result<PurgeReport> {
        Ok(PurgeReport::default())
    }

    fn stats(&self) -> LogStatsSnapshot {
        self.shared.stats.snapshot()
    }
}
