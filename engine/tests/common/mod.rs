//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::Path;

use flotilla_common::{Entry, EntryKind};
use flotilla_engine::{
    ApplyRound, CompactPermit, KvStore, RaftLog, RocksConfig, RocksLog, Wal, WalConfig,
};

/// Which log implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Wal,
    Rocks,
}

pub const KINDS: [Kind; 2] = [Kind::Wal, Kind::Rocks];

/// Small RocksDB settings: tests open many stores.
pub fn small_rocks() -> RocksConfig {
    RocksConfig {
        block_cache_bytes: 8 << 20,
        write_buffer_bytes: 4 << 20,
        ..RocksConfig::default()
    }
}

pub fn open(kind: Kind, dir: &Path, wal: &WalConfig) -> Box<dyn RaftLog> {
    match kind {
        Kind::Wal => Box::new(Wal::open(dir.join("raft"), wal).expect("open wal")),
        Kind::Rocks => Box::new(
            RocksLog::open(dir.join("raftdb"), &small_rocks(), wal).expect("open rocks log"),
        ),
    }
}

pub fn open_kv(dir: &Path) -> KvStore {
    KvStore::open(dir.join("kv"), &small_rocks()).expect("open kv")
}

/// Marks the region applied up to `index` in the store and returns the permit for it.
pub fn permit(kv: &KvStore, region: u64, index: u64) -> CompactPermit {
    let mut round = ApplyRound::new();
    round.set_applied(region, kv.applied_index(region).max(index));
    kv.apply(round).expect("apply");
    kv.compaction_permit(region, index).expect("permit")
}

pub fn data(region: u64, index: u64, term: u64) -> Vec<u8> {
    let mut d = format!("{region}/{index}/{term}:").into_bytes();
    d.resize(d.len() + (index as usize * 7) % 50, b'.');
    d
}

pub fn entries(region: u64, from: u64, count: u64, term: u64) -> Vec<Entry> {
    (from..from + count)
        .map(|i| Entry::new(EntryKind::Normal, term, i, data(region, i, term)))
        .collect()
}
