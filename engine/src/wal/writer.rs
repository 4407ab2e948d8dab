//! The WAL's group commit: validate every queued submission against the log's state, write
//! them as one record, `fdatasync` once, update the index, answer everyone; start a new
//! segment when the current one is full.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::commit::{validate_group, GroupSink, Submission};
use crate::error::{EngineError, Result};
use crate::log::WriteReport;
use crate::metrics::SyncMetrics;

use super::payload::{self, Checkpoint, RegionCheckpoint};
use super::record::{self, RecordType};
use super::segment::{self, LogFile};
use super::{Prepared, SegmentInfo, WalLoc, WalShared};

/// The writer thread's state.
pub(crate) struct WalWriter {
    shared: Arc<WalShared>,
    file: Box<dyn LogFile>,
    seq: u64,
    len: u64,
    segment_bytes_max: u64,
    buf: Vec<u8>,
    /// Set after a failed write or sync: what is on disk is unknown, so nothing more is
    /// written (a later sync could report success for data the kernel already dropped).
    poisoned: Option<String>,
    metrics: SyncMetrics,
}

impl WalWriter {
    /// Starts segment `seq` (recovery found everything before it).
    pub fn start(shared: Arc<WalShared>, seq: u64, segment_bytes_max: u64) -> Result<WalWriter> {
        let (file, len) = new_segment(&shared, seq)?;
        Ok(WalWriter {
            shared,
            file,
            seq,
            len,
            segment_bytes_max,
            buf: Vec::new(),
            poisoned: None,
            metrics: SyncMetrics::new("wal"),
        })
    }

    fn rotate(&mut self) -> Result<()> {
        let (file, len) = new_segment(&self.shared, self.seq + 1)?;
        self.file = file;
        self.seq += 1;
        self.len = len;
        self.shared.active_seq.store(self.seq, Ordering::Release);
        Ok(())
    }

    /// After a failed append or sync, cuts the segment back to `durable_len`, the end of the
    /// last record whose sync succeeded. A write cut short by a full disk leaves a torn
    /// record there, and a failed `fdatasync` leaves pages whose fate is unknown: the kernel
    /// may have dropped them, or may still show them to a reader (fsyncgate), so a reopen
    /// replaying them could take a record nobody acknowledged — and that may never reach
    /// the disk — for a durable one. Cutting them off now leaves the file holding exactly
    /// what was acknowledged. Shrinking a file needs no space, so this works on a full disk;
    /// if it fails anyway, the log is still poisoned, and recovery cuts a torn tail off.
    fn cut_back(&self, durable_len: u64) {
        let path = segment::segment_path(&self.shared.dir, self.seq);
        match self.shared.fs.truncate(&path, durable_len) {
            Ok(()) => tracing::warn!(
                file = %path.display(),
                offset = durable_len,
                "cut the segment back to its last synced record"
            ),
            Err(e) => tracing::error!(
                file = %path.display(),
                offset = durable_len,
                "could not cut the segment back to its last synced record: {e}"
            ),
        }
    }

    /// Applies the written group to the index; returns each submission's report.
    fn apply(
        &mut self,
        group: &mut [Submission<Prepared>],
        bases: &[usize],
        rec_off: u64,
        rec_len: u32,
    ) -> Vec<WriteReport> {
        let mut index = self.shared.index.write();
        let mut holds: HashMap<u64, u64> = HashMap::new();
        let mut reports = Vec::with_capacity(group.len());
        let cache_max = self.shared.cache_bytes_max;
        let seq = self.seq;
        for (sub, &base) in group.iter_mut().zip(bases) {
            let mut report = WriteReport::default();
            let starts = std::mem::take(&mut sub.prepared.data_starts);
            for (part, start) in sub.batch.regions.iter_mut().zip(starts) {
                if let Some(last) = part.entries.last() {
                    let held = holds.entry(part.region_id).or_default();
                    *held = (*held).max(last.index);
                }
                let mut off = base + start;
                let loc_of = |e: &flotilla_common::Entry| {
                    let loc = WalLoc {
                        seq,
                        rec_off,
                        rec_len,
                        data_off: off as u32,
                        data_len: e.data.len() as u32,
                        kind: e.kind,
                    };
                    off += e.data.len();
                    loc
                };
                let region = index.entry(part.region_id).or_default();
                report
                    .durable
                    .push(region.apply_part(part, loc_of, cache_max));
            }
            reports.push(report);
        }
        drop(index);
        let mut segments = self.shared.segments.lock();
        let info = segments.entry(self.seq).or_default();
        info.bytes = self.len;
        for (region, max) in holds {
            let held = info.holds.entry(region).or_default();
            *held = (*held).max(max);
        }
        reports
    }
}

impl GroupSink for WalWriter {
    type Prepared = Prepared;

    fn commit(&mut self, group: Vec<Submission<Prepared>>) {
        if let Some(reason) = &self.poisoned {
            for sub in group {
                sub.answer(Err(EngineError::Poisoned(reason.clone())));
            }
            return;
        }
        let mut group = validate_group(&self.shared.index.read(), group);
        if group.is_empty() {
            return;
        }
        self.buf.clear();
        let start = record::begin(&mut self.buf, RecordType::Batch);
        let mut bases = Vec::with_capacity(group.len());
        let mut entries = 0u64;
        for sub in &group {
            bases.push(self.buf.len() - record::RECORD_HEADER_BYTES);
            self.buf.extend_from_slice(&sub.prepared.blob);
            entries += sub.batch.entry_count() as u64;
        }
        record::finish(&mut self.buf, start);
        let rec_off = self.len;
        let rec_len = (self.buf.len() - record::RECORD_HEADER_BYTES) as u32;
        let started = Instant::now();
        let written = self
            .file
            .append(&self.buf)
            .and_then(|()| self.file.sync_data());
        let took = started.elapsed();
        if let Err(e) = written {
            self.metrics.failed();
            let reason = format!(
                "write or sync of segment {} at {rec_off} failed: {e}",
                self.seq
            );
            tracing::error!("{reason}");
            self.poisoned = Some(reason);
            self.cut_back(rec_off);
            for sub in group {
                sub.answer(Err(EngineError::io(
                    format!("append to segment {}", self.seq),
                    clone_io(&e),
                )));
            }
            return;
        }
        self.len += self.buf.len() as u64;
        self.shared
            .stats
            .record(group.len() as u64, entries, self.buf.len() as u64);
        self.metrics
            .synced(took, group.len() as u64, entries, self.buf.len() as u64);
        let reports = self.apply(&mut group, &bases, rec_off, rec_len);
        for (sub, report) in group.into_iter().zip(reports) {
            sub.answer(Ok(report));
        }
        if self.len >= self.segment_bytes_max {
            if let Err(e) = self.rotate() {
                let reason = format!("starting segment {} failed: {e}", self.seq + 1);
                tracing::error!("{reason}");
                self.poisoned = Some(reason);
            }
        }
    }
}

fn clone_io(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

/// Creates segment `seq` with its header and a checkpoint of every region, durably (the
/// file, then the directory entry), before anything is written to it: purge may delete
/// every older segment as soon as this one exists, so its checkpoint must be on disk.
fn new_segment(shared: &WalShared, seq: u64) -> Result<(Box<dyn LogFile>, u64)> {
    let path = segment::segment_path(&shared.dir, seq);
    let mut buf = segment::header(seq).to_vec();
    let checkpoint = {
        let index = shared.index.read();
        let mut regions: Vec<RegionCheckpoint> = index
            .iter()
            .map(|(&region_id, r)| RegionCheckpoint {
                region_id,
                mark: r.mark(),
                hard_state: r.hard_state(),
                term_runs: payload::term_runs(r.slots().map(|(_, s)| s.term)),
            })
            .collect();
        regions.sort_by_key(|r| r.region_id);
        Checkpoint { regions }
    };
    let start = record::begin(&mut buf, RecordType::Checkpoint);
    flotilla_common::codec::encode_into(&checkpoint, &mut buf)?;
    record::finish(&mut buf, start);
    let io = |what: &str, e| EngineError::io(format!("{what} {}", path.display()), e);
    let mut file = shared.fs.create(&path).map_err(|e| io("create", e))?;
    file.append(&buf).map_err(|e| io("write", e))?;
    file.sync_data().map_err(|e| io("sync", e))?;
    shared
        .fs
        .sync_dir(&shared.dir)
        .map_err(|e| io("sync directory of", e))?;
    let len = buf.len() as u64;
    shared.segments.lock().insert(
        seq,
        SegmentInfo {
            bytes: len,
            holds: HashMap::new(),
        },
    );
    Ok((file, len))
}
