//! Opening the log: replay every segment from the oldest, rebuilding each region's index.
//!
//! The oldest segment's checkpoint gives every region's state when it began (older
//! segments were purged); records after it are replayed in order. A bad record at the end
//! of the last segment is the tail of a write cut short by a crash: it is cut off and
//! logged. A bad record anywhere else is corruption, reported with file and offset.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::{EngineError, Result};
use crate::index::{RegionIndex, Slot};

use super::payload::{self, Checkpoint};
use super::record::{self, Parsed, RecordType};
use super::segment::{self, FileSystem, SEGMENT_HEADER_BYTES};
use super::{SegmentInfo, WalLoc};

/// The log as recovery found it.
pub(crate) struct Recovered {
    pub regions: HashMap<u64, RegionIndex<WalLoc>>,
    pub segments: BTreeMap<u64, SegmentInfo>,
    /// The sequence number the writer's new segment gets.
    pub next_seq: u64,
}

/// Replays the segments in `dir`.
pub(crate) fn recover(fs: &dyn FileSystem, dir: &Path) -> Result<Recovered> {
    let names = fs
        .list(dir)
        .map_err(|e| EngineError::io(format!("list {}", dir.display()), e))?;
    let mut seqs: Vec<u64> = names
        .iter()
        .filter_map(|n| segment::parse_segment_name(n))
        .collect();
    seqs.sort_unstable();
    for pair in seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(EngineError::Corruption {
                file: segment::segment_path(dir, pair[0] + 1),
                offset: 0,
                reason: format!("segment missing between {} and {}", pair[0], pair[1]),
            });
        }
    }
    let mut state = Replay {
        regions: HashMap::new(),
        segments: BTreeMap::new(),
    };
    for (k, &seq) in seqs.iter().enumerate() {
        let last = k + 1 == seqs.len();
        state.replay_segment(fs, dir, seq, k == 0, last)?;
    }
    // A last segment removed above gets its number reused, keeping the numbers contiguous.
    let next_seq = state
        .segments
        .keys()
        .next_back()
        .map_or(seqs.first().copied().unwrap_or(1), |s| s + 1);
    for (&region_id, region) in &state.regions {
        if let Some((index, _)) = region
            .slots()
            .find(|(_, s)| s.loc.seq == WalLoc::MISSING.seq)
        {
            return Err(EngineError::Corruption {
                file: seqs
                    .first()
                    .map(|&s| segment::segment_path(dir, s))
                    .unwrap_or_else(|| dir.to_path_buf()),
                offset: 0,
                reason: format!(
                    "region {region_id} entry {index} was in a segment that no longer exists"
                ),
            });
        }
    }
    Ok(Recovered {
        regions: state.regions,
        segments: state.segments,
        next_seq,
    })
}

struct Replay {
    regions: HashMap<u64, RegionIndex<WalLoc>>,
    segments: BTreeMap<u64, SegmentInfo>,
}

impl Replay {
    fn replay_segment(
        &mut self,
        fs: &dyn FileSystem,
        dir: &Path,
        seq: u64,
        oldest: bool,
        last: bool,
    ) -> Result<()> {
        let path = segment::segment_path(dir, seq);
        let corrupt = |offset: usize, reason: String| EngineError::Corruption {
            file: path.clone(),
            offset: offset as u64,
            reason,
        };
        let buf = fs
            .read_all(&path)
            .map_err(|e| EngineError::io(format!("read {}", path.display()), e))?;
        if !segment::header_matches(&buf, seq) {
            if last && buf.len() < SEGMENT_HEADER_BYTES && segment::header(seq).starts_with(&buf) {
                // Created but its header never fully reached the disk.
                tracing::warn!(file = %path.display(), "removing a segment torn at creation");
                return remove(fs, dir, &path);
            }
            return Err(corrupt(0, "bad segment header".into()));
        }
        let mut info = SegmentInfo {
            bytes: buf.len() as u64,
            holds: HashMap::new(),
        };
        let mut pos = SEGMENT_HEADER_BYTES;
        let mut records = 0;
        while pos < buf.len() {
            let (ty, payload, len) = match record::parse(&buf[pos..]) {
                Parsed::Record { ty, payload, len } => (ty, payload, len),
                Parsed::Incomplete | Parsed::Bad(_)
                    if last && !record::good_record_after(&buf, pos) =>
                {
                    tracing::warn!(
                        file = %path.display(),
                        offset = pos,
                        bytes = buf.len() - pos,
                        "cutting off the torn tail of the log"
                    );
                    fs.truncate(&path, pos as u64)
                        .map_err(|e| EngineError::io(format!("truncate {}", path.display()), e))?;
                    info.bytes = pos as u64;
                    break;
                }
                Parsed::Incomplete => return Err(corrupt(pos, "record cut short".into())),
                Parsed::Bad(reason) => return Err(corrupt(pos, reason)),
            };
            match ty {
                RecordType::Checkpoint if records == 0 => {
                    if oldest {
                        let checkpoint: Checkpoint = flotilla_common::codec::decode(payload)
                            .map_err(|e| corrupt(pos, e.to_string()))?;
                        self.restore(checkpoint);
                    }
                }
                RecordType::Checkpoint => {
                    return Err(corrupt(pos, "checkpoint after the segment's start".into()))
                }
                RecordType::Batch if records == 0 => {
                    return Err(corrupt(
                        pos,
                        "segment does not start with a checkpoint".into(),
                    ))
                }
                RecordType::Batch => self
                    .replay_batch(seq, pos, payload, &mut info)
                    .map_err(|reason| corrupt(pos, reason))?,
            }
            records += 1;
            pos += len;
        }
        if records == 0 {
            if !last {
                return Err(corrupt(
                    SEGMENT_HEADER_BYTES,
                    "segment has no checkpoint".into(),
                ));
            }
            // The crash came before the new segment's checkpoint was durable; the writer
            // starts a fresh segment anyway.
            tracing::warn!(file = %path.display(), "removing a segment with no records");
            return remove(fs, dir, &path);
        }
        self.segments.insert(seq, info);
        Ok(())
    }

    fn restore(&mut self, checkpoint: Checkpoint) {
        for region in checkpoint.regions {
            let terms = region.terms();
            let index =
                RegionIndex::restored(region.mark, region.hard_state, &terms, WalLoc::MISSING);
            self.regions.insert(region.region_id, index);
        }
    }

    fn replay_batch(
        &mut self,
        seq: u64,
        rec_off: usize,
        payload: &[u8],
        info: &mut SegmentInfo,
    ) -> Result<(), String> {
        for part in payload::decode_parts(payload)? {
            let h = part.header;
            let region = self.regions.entry(h.region_id).or_default();
            // The writer validated this before writing it; a violation means the log lies.
            let as_batch = crate::log::RegionBatch {
                region_id: h.region_id,
                snapshot: h.snapshot,
                entries: (0..h.entries.len() as u64)
                    .map(|k| flotilla_common::Entry {
                        index: h.first_index + k,
                        ..Default::default()
                    })
                    .collect(),
                hard_state: h.hard_state,
                compact_to: h.compact_to,
                permit: None,
            };
            region.shape().after(&as_batch).map_err(|e| e.to_string())?;
            if let Some(mark) = h.snapshot {
                region.apply_snapshot(mark);
            }
            if !h.entries.is_empty() {
                let mut off = part.data_start;
                let slots: Vec<Slot<WalLoc>> = h
                    .entries
                    .iter()
                    .map(|e| {
                        let loc = WalLoc {
                            seq,
                            rec_off: rec_off as u64,
                            rec_len: payload.len() as u32,
                            data_off: off as u32,
                            data_len: e.data_len,
                            kind: e.kind,
                        };
                        off += e.data_len as usize;
                        Slot {
                            term: e.term,
                            loc,
                            cached: None,
                        }
                    })
                    .collect();
                region.append(h.first_index, slots, 0);
                let last = h.first_index + h.entries.len() as u64 - 1;
                let held = info.holds.entry(h.region_id).or_default();
                *held = (*held).max(last);
            }
            if let Some(hs) = h.hard_state {
                region.set_hard_state(hs);
            }
            if let Some(to) = h.compact_to {
                region.compact(to);
            }
        }
        Ok(())
    }
}

fn remove(fs: &dyn FileSystem, dir: &Path, path: &Path) -> Result<()> {
    fs.remove(path)
        .map_err(|e| EngineError::io(format!("remove {}", path.display()), e))?;
    fs.sync_dir(dir)
        .map_err(|e| EngineError::io(format!("sync {}", dir.display()), e))
}
