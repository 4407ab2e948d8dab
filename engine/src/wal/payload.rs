//! What the payload of a record holds.
//!
//! A batch record's payload is a sequence of region parts, each
//! `[header_len u32][PartHeader (codec)][entry data ...]`: the entries' data is stored raw
//! after the header so that an old entry can be read back by its offset alone. A checkpoint
//! record's payload is a [`Checkpoint`] (codec): every region's marks at the start of a
//! segment, so that recovery can begin at the oldest remaining segment after older ones
//! were purged.

use flotilla_common::{codec, EntryKind, HardState};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::log::{LogBatch, SnapshotMark};

/// One region's part of a batch record, without the entries' data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartHeader {
    pub region_id: u64,
    pub snapshot: Option<SnapshotMark>,
    pub hard_state: Option<HardState>,
    pub compact_to: Option<u64>,
    /// The index of the first entry (0 when there are none).
    pub first_index: u64,
    pub entries: Vec<EntryHeader>,
}

/// An entry without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EntryHeader {
    pub term: u64,
    pub kind: EntryKind,
    pub data_len: u32,
}

/// A decoded part and where its entries' data starts in the payload.
#[derive(Debug)]
pub(crate) struct DecodedPart {
    pub header: PartHeader,
    pub data_start: usize,
}

/// Encodes a batch's parts into `out`; returns, per part, the offset in `out` where its
/// entries' data starts.
pub(crate) fn encode_parts(batch: &LogBatch, out: &mut Vec<u8>) -> Result<Vec<usize>> {
    let mut data_starts = Vec::with_capacity(batch.regions.len());
    for part in &batch.regions {
        let header = PartHeader {
            region_id: part.region_id,
            snapshot: part.snapshot,
            hard_state: part.hard_state,
            compact_to: part.compact_to,
            first_index: part.entries.first().map_or(0, |e| e.index),
            entries: part
                .entries
                .iter()
                .map(|e| EntryHeader {
                    term: e.term,
                    kind: e.kind,
                    data_len: e.data.len() as u32,
                })
                .collect(),
        };
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let header_len = codec::encode_into(&header, out)? as u32;
        out[len_at..len_at + 4].copy_from_slice(&header_len.to_le_bytes());
        data_starts.push(out.len());
        for e in &part.entries {
            out.extend_from_slice(&e.data);
        }
    }
    Ok(data_starts)
}

/// Decodes a batch payload into its parts; the error says what is wrong.
pub(crate) fn decode_parts(payload: &[u8]) -> std::result::Result<Vec<DecodedPart>, String> {
    let mut parts = Vec::new();
    let mut pos = 0;
    while pos < payload.len() {
        let len_bytes = payload
            .get(pos..pos + 4)
            .ok_or("part header length cut short")?;
        let header_len =
            u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        let header_bytes = payload
            .get(pos + 4..pos + 4 + header_len)
            .ok_or("part header cut short")?;
        let header: PartHeader = codec::decode(header_bytes).map_err(|e| e.to_string())?;
        let data_start = pos + 4 + header_len;
        let data_len: usize = header.entries.iter().map(|e| e.data_len as usize).sum();
        if data_start + data_len > payload.len() {
            return Err(format!("region {} entry data cut short", header.region_id));
        }
        pos = data_start + data_len;
        parts.push(DecodedPart { header, data_start });
    }
    Ok(parts)
}

/// Every region's state when a segment begins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub regions: Vec<RegionCheckpoint>,
}

/// One region in a [`Checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RegionCheckpoint {
    pub region_id: u64,
    pub mark: SnapshotMark,
    pub hard_state: HardState,
    /// The terms of the live entries after `mark`, run-length encoded as (term, count):
    /// recovery needs them when a later compaction cuts inside entries that older segments
    /// held.
    pub term_runs: Vec<(u64, u64)>,
}

impl RegionCheckpoint {
    /// The terms, one per entry.
    pub fn terms(&self) -> Vec<u64> {
        self.term_runs
            .iter()
            .flat_map(|&(term, count)| (0..count).map(move |_| term))
            .collect()
    }
}

/// Run-length encodes terms.
pub(crate) fn term_runs(terms: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for term in terms {
        match runs.last_mut() {
            Some((t, n)) if *t == term => *n += 1,
            _ => runs.push((term, 1)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::RegionBatch;
    use flotilla_common::Entry;

    #[test]
    fn parts_round_trip_with_data_offsets() {
        let mut batch = LogBatch::new();
        batch.push(RegionBatch::new(3).with_entries(vec![
            Entry::new(EntryKind::Normal, 2, 5, b"abc".to_vec()),
            Entry::new(EntryKind::ConfChange, 2, 6, b"defg".to_vec()),
        ]));
        batch.push(RegionBatch::new(9).with_hard_state(HardState {
            term: 4,
            vote: 1,
            commit: 2,
        }));
        let mut out = Vec::new();
        let starts = encode_parts(&batch, &mut out).unwrap();
        let parts = decode_parts(&out).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].data_start, starts[0]);
        assert_eq!(&out[starts[0]..starts[0] + 3], b"abc");
        assert_eq!(parts[0].header.first_index, 5);
        assert_eq!(
            parts[1].header.hard_state,
            Some(HardState {
                term: 4,
                vote: 1,
                commit: 2
            })
        );
        assert!(decode_parts(&out[..out.len() - 1]).is_err());
        assert_eq!(
            term_runs([1, 1, 2, 2, 2, 5].into_iter()),
            vec![(1, 2), (2, 3), (5, 1)]
        );
    }
}
