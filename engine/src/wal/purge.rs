//! Deleting old segments: the oldest segments go once every region has compacted past all
//! the entries they hold. Deletion stops at the first segment still needed (recovery
//! replays a contiguous run of segments), and the regions that hold it are reported.

use crate::error::{EngineError, Result};
use crate::log::{HeldBy, PurgeReport};

use super::segment;
use super::WalShared;

/// Deletes every leading segment that no region needs.
pub(crate) fn purge(shared: &WalShared) -> Result<PurgeReport> {
    let mut report = PurgeReport::default();
    let active = shared.active_seq();
    let mut segments = shared.segments.lock();
    let mut deletable = Vec::new();
    {
        let index = shared.index.read();
        for (&seq, info) in segments.iter() {
            if seq >= active {
                break;
            }
            let mut held_by: Vec<HeldBy> = info
                .holds
                .iter()
                .filter_map(|(&region_id, &max)| {
                    let first_index = index.get(&region_id).map_or(1, |r| r.first_index());
                    (first_index <= max).then_some(HeldBy {
                        region_id,
                        first_index,
                        index_in_file: max,
                        segment: seq,
                    })
                })
                .collect();
            if !held_by.is_empty() {
                held_by.sort_by_key(|h| h.region_id);
                report.held_by = held_by;
                break;
            }
            deletable.push((seq, info.bytes));
        }
    }
    for (seq, bytes) in deletable {
        let path = segment::segment_path(&shared.dir, seq);
        shared
            .fs
            .remove(&path)
            .map_err(|e| EngineError::io(format!("remove {}", path.display()), e))?;
        segments.remove(&seq);
        shared.readers.lock().remove(&seq);
        report.files_deleted.push(path);
        report.bytes_freed += bytes;
    }
    if !report.files_deleted.is_empty() {
        shared
            .fs
            .sync_dir(&shared.dir)
            .map_err(|e| EngineError::io(format!("sync {}", shared.dir.display()), e))?;
        tracing::info!(
            segments = report.files_deleted.len(),
            bytes = report.bytes_freed,
            "purged log segments"
        );
    }
    if !report.held_by.is_empty() {
        tracing::info!(regions = ?report.held_by.iter().map(|h| h.region_id).collect::<Vec<_>>(), "regions hold old log segments");
    }
    Ok(report)
}
