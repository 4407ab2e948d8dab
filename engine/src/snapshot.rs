//! Region snapshots: a consistent image of one region's data, produced as a stream of
//! chunks from a RocksDB snapshot (writers keep going while it is read), and installed on
//! another store in one synced WriteBatch (all of it or nothing).
//!
//! The stream is a [`SnapshotHeader`] (region, applied index, key range, descriptor,
//! sessions) then [`SnapshotChunk`]s of at most [`SNAPSHOT_CHUNK_BYTES_MAX`] each; both
//! encode to bytes for the transport with [`SnapshotHeader::encode`] and
//! [`SnapshotChunk::encode`].

use bytes::Bytes;
use flotilla_common::codec;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::kv::{self, KeyRange, KvStore, CF_DEFAULT, CF_META};
use crate::log::CompactPermit;

/// The data a chunk carries at most, in bytes: one chunk is one transport message and is
/// held in memory whole on both sides.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;

/// What a region snapshot is of.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The region.
    pub region_id: u64,
    /// The applied index the data reflects (the raft snapshot's index).
    pub applied_index: u64,
    /// The region's key range.
    pub range: KeyRange,
    /// The region's descriptor, if it has one.
    pub descriptor: Option<Bytes>,
    /// The region's client sessions: (client id, session).
    pub sessions: Vec<(u64, Bytes)>,
}

/// A run of the region's keys and values, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// User keys and their values.
    pub pairs: Vec<(Bytes, Bytes)>,
}

impl SnapshotHeader {
    /// The header's bytes for the transport.
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(codec::encode(self)?)
    }

    /// A header from its bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(codec::decode(bytes)?)
    }
}

impl SnapshotChunk {
    /// The chunk's bytes for the transport.
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(codec::encode(self)?)
    }

    /// A chunk from its bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(codec::decode(bytes)?)
    }
}

/// The chunks of a region snapshot, read from a RocksDB snapshot taken when the stream was
/// made.
pub struct SnapshotStream<'a> {
    // Declared before `_snapshot`: the iterator reads through the snapshot and must be
    // dropped first.
    iter: rocksdb::DBIteratorWithThreadMode<'a, DB>,
    _snapshot: rocksdb::SnapshotWithThreadMode<'a, DB>,
    header: SnapshotHeader,
    done: bool,
}

impl SnapshotStream<'_> {
    /// What the snapshot is of.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }
}

impl Iterator for SnapshotStream<'_> {
    type Item = Result<SnapshotChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut chunk = SnapshotChunk::default();
        let mut bytes = 0;
        while bytes < SNAPSHOT_CHUNK_BYTES_MAX {
            match self.iter.next() {
                Some(Ok((key, value))) => {
                    bytes += key.len() + value.len();
                    chunk.pairs.push((
                        Bytes::copy_from_slice(&key[1..]),
                        Bytes::copy_from_slice(&value),
                    ));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                None => {
                    self.done = true;
                    break;
                }
            }
        }
        if chunk.pairs.is_empty() {
            None
        } else {
            Some(Ok(chunk))
        }
    }
}

impl KvStore {
    /// Starts a snapshot of the region's data in `range`, with its applied index,
    /// descriptor and sessions, all as of this moment.
    pub fn snapshot_region(&self, region_id: u64, range: KeyRange) -> Result<SnapshotStream<'_>> {
        let stream = self.snapshot_region_described(region_id, |_| Some(range))?;
        Ok(stream.expect("the range is given"))
    }

    /// [`KvStore::snapshot_region`] over the range that `range_of` reads from the region's
    /// descriptor as of the same RocksDB snapshot (given `None` if the region has none):
    /// the descriptor, applied index, sessions and data all come from one point in time,
    /// even when the call runs on another thread than the one applying the region's
    /// writes. `Ok(None)` if `range_of` answers `None` (no usable descriptor).
    pub fn snapshot_region_described(
        &self,
        region_id: u64,
        range_of: impl FnOnce(Option<&[u8]>) -> Option<KeyRange>,
    ) -> Result<Option<SnapshotStream<'_>>> {
        let (snapshot, applied_index) = self.snapshot_with_applied(region_id);
        let meta = self.cf(CF_META)?;
        let descriptor = snapshot
            .get_cf(meta, kv::descriptor_key(region_id))?
            .map(Bytes::from);
        let Some(range) = range_of(descriptor.as_deref()) else {
            return Ok(None);
        };
        let sessions: Vec<(u64, Bytes)> = self
            .sessions_at(region_id, Some(&snapshot))?
            .into_iter()
            .collect();
        let (lower, upper) = range.data_bounds();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(upper);
        // A snapshot scan should not push the working set out of the block cache.
        opts.fill_cache(false);
        // The snapshot is kept in the stream and outlives the iterator (field order).
        opts.set_snapshot(&snapshot);
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_DEFAULT)?,
            opts,
            IteratorMode::From(&lower, Direction::Forward),
        );
        let header = SnapshotHeader {
            region_id,
            applied_index,
            range,
            descriptor,
            sessions,
        };
        Ok(Some(SnapshotStream {
            iter,
            _snapshot: snapshot,
            header,
            done: false,
        }))
    }

    /// Installs a region snapshot: replaces the data in its range, its sessions, descriptor
    /// and applied index, in one synced WriteBatch. Returns the permit to restart the
    /// region's raft log after the snapshot ([`crate::RegionBatch::with_snapshot`]).
    pub fn install_snapshot(
        &self,
        header: &SnapshotHeader,
        chunks: impl IntoIterator<Item = Result<SnapshotChunk>>,
    ) -> Result<CompactPermit> {
        let data = self.cf(CF_DEFAULT)?;
        let meta = self.cf(CF_META)?;
        let region = header.region_id;
        let mut wb = WriteBatch::default();
        let (lower, upper) = header.range.data_bounds();
        wb.delete_range_cf(data, lower, upper);
        for chunk in chunks {
            for (key, value) in chunk?.pairs {
                if !header.range.contains(&key) {
                    return Err(EngineError::InvalidBatch {
                        region_id: region,
                        reason: "snapshot key outside the region's range".into(),
                    });
                }
                wb.put_cf(data, kv::data_key(&key), value);
            }
        }
        self.delete_sessions(&mut wb, region)?;
        self.put_session_base(&mut wb, region, &header.sessions)?;
        match &header.descriptor {
            Some(d) => wb.put_cf(meta, kv::descriptor_key(region), d),
            None => wb.delete_cf(meta, kv::descriptor_key(region)),
        }
        wb.delete_cf(meta, kv::legacy_applied_key(region));
        self.write_region_replaced(wb, region, Some(header.applied_index))?;
        Ok(CompactPermit::new(region, header.applied_index))
    }
}
