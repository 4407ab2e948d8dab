//! The engine's settings, sized for a small machine (2 cores, a few GiB of memory), loadable
//! with serde; every field has a default.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Which raft log implementation a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogBackend {
    /// The shared write-ahead log of segment files ([`crate::Wal`]).
    #[default]
    Wal,
    /// Raft entries in a column family of a RocksDB ([`crate::RocksLog`]).
    Rocksdb,
}

/// Settings of the shared WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// A segment is closed once it reaches this size. Purge deletes whole segments, so
    /// smaller segments free space sooner; larger ones mean fewer files and checkpoints.
    pub segment_bytes_max: u64,
    /// A group commit stops taking queued submissions past this many bytes, bounding the
    /// latency of one write and the memory of one record. At most 32 MiB (the record limit).
    pub batch_bytes_max: u64,
    /// Each region keeps its most recent entries in memory up to this many bytes, so that
    /// replication and apply of recent entries do not read the disk. Worst case memory is
    /// this times the number of regions.
    pub entry_cache_bytes_per_region_max: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes_max: 128 << 20,
            batch_bytes_max: 4 << 20,
            entry_cache_bytes_per_region_max: 256 << 10,
        }
    }
}

/// The largest `batch_bytes_max` accepted (records must stay under 64 MiB).
const BATCH_BYTES_MAX_LIMIT: u64 = 32 << 20;

impl WalConfig {
    /// Rejects settings the WAL cannot honour.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: &str| Err(EngineError::InvalidConfig(reason.to_string()));
        if self.batch_bytes_max == 0 || self.batch_bytes_max > BATCH_BYTES_MAX_LIMIT {
            return bad("batch_bytes_max must be in 1..=32 MiB");
        }
        if self.segment_bytes_max < 4096 {
            return bad("segment_bytes_max must be at least 4096");
        }
        Ok(())
    }
}

/// RocksDB settings, for both the key-value store and the RocksDB raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RocksConfig {
    /// Shared LRU cache of data blocks. A quarter of a small node's memory.
    pub block_cache_bytes: u64,
    /// Size of one memtable of the data column family before it is flushed. Larger absorbs
    /// write bursts and flushes less, but every insert walks a deeper skip list that fits
    /// the caches worse: at 16 MiB a node applied writes ~10 % faster than at 64 MiB, and
    /// at 4 MiB the servers spent 1–11 % less CPU per write than at 16 MiB, reads 3–8 % more
    /// (docs/benchmarks.md, "Where a write's time goes" and "Memtables of 4 MiB").
    pub write_buffer_bytes: u64,
    /// Size of one memtable of the key-value store's `meta` column family (applied indexes,
    /// descriptors, client sessions: small records rewritten on every write).
    pub meta_write_buffer_bytes: u64,
    /// Memtables kept per column family (one active, the others flushing).
    pub max_write_buffer_number: i32,
    /// Flush and compaction threads: one per core of a 2-core machine.
    pub max_background_jobs: i32,
    /// Lowest level of the lines RocksDB writes to its info log (`LOG` in its directory;
    /// the options it opened with are written whatever the level). `fatal` by default,
    /// because of a full disk: Debian's librocksdb 7.8 is built with assertions, and its
    /// log file writer, once a write to `LOG` failed, aborts the process on the next line
    /// (`AssertFalseAndGetStatusForPrevError`) — and RocksDB logs every error it handles,
    /// so on a full disk the first one kills the node. Lower it to debug RocksDB itself,
    /// on a disk that does not fill up.
    pub info_log_level: RocksLogLevel,
}

/// The levels of RocksDB's info log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RocksLogLevel {
    /// Everything.
    Debug,
    /// Flushes, compactions, background errors and more.
    Info,
    /// Warnings and worse.
    Warn,
    /// Errors and worse.
    Error,
    /// Only fatal errors (and the options header at open).
    Fatal,
}

impl RocksLogLevel {
    fn rocksdb(self) -> rocksdb::LogLevel {
        match self {
            RocksLogLevel::Debug => rocksdb::LogLevel::Debug,
            RocksLogLevel::Info => rocksdb::LogLevel::Info,
            RocksLogLevel::Warn => rocksdb::LogLevel::Warn,
            RocksLogLevel::Error => rocksdb::LogLevel::Error,
            RocksLogLevel::Fatal => rocksdb::LogLevel::Fatal,
        }
    }
}

impl Default for RocksConfig {
    fn default() -> Self {
        RocksConfig {
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 4 << 20,
            meta_write_buffer_bytes: 4 << 20,
            max_write_buffer_number: 3,
            max_background_jobs: 2,
            info_log_level: RocksLogLevel::Fatal,
        }
    }
}

impl RocksConfig {
    /// RocksDB options built from these settings.
    pub(crate) fn options(&self) -> Result<rocksdb::Options> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(self.max_background_jobs);
        opts.set_write_buffer_size(self.write_buffer_bytes as usize);
        opts.set_max_write_buffer_number(self.max_write_buffer_number);
        opts.set_log_level(self.info_log_level.rocksdb());
        // No compression in the two levels every write passes through (each flush writes
        // L0, and L0 is merged into L1 over and over): compressing there cost a busy node
        // CPU on every rewrite of data that soon moves down. LZ4 in the middle levels,
        // Zstandard at the bottom, where most of a large store rests.
        use rocksdb::DBCompressionType as C;
        opts.set_compression_per_level(&[
            C::None,
            C::None,
            C::Lz4,
            C::Lz4,
            C::Lz4,
            C::Zstd,
            C::Zstd,
        ]);
        let cache = rocksdb::Cache::new_lru_cache(self.block_cache_bytes as usize)?;
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        opts.set_block_based_table_factory(&table);
        Ok(opts)
    }
}

/// Everything the engine can be told.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Which raft log to use.
    pub log_backend: LogBackend,
    /// The WAL's settings.
    pub wal: WalConfig,
    /// RocksDB's settings.
    pub rocksdb: RocksConfig,
}
