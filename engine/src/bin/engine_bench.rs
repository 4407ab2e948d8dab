//! `engine-bench`: durable write throughput of the two raft log implementations side by
//! side, from 1 to 4096 regions, with small and large entries, and this disk's raw
//! `fdatasync` rate measured in the same run.
//!
//! Each region keeps `--in-flight` batches in flight (default 2), as a raft ready loop with
//! asynchronous persistence does: submitter threads submit a round of one batch per region
//! they own, and wait for the oldest round to be durable before submitting the next.
//! Every batch is durable before it counts (group commit: one write and one sync for
//! everything queued).
//!
//! The default run takes about a minute; `--seconds`, `--regions` and `--entry-bytes` make
//! bigger ones.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use flotilla_common::{Entry, EntryKind};
use flotilla_engine::{RaftLog, RegionBatch, RocksConfig, RocksLog, Wal, WalConfig};

#[derive(Parser, Debug)]
#[command(
    name = "engine-bench",
    about = "Durable write throughput of the WAL and the RocksDB raft log"
)]
struct Args {
    /// Numbers of regions to run with.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256,4096")]
    regions: Vec<u64>,
    /// Entry payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "16,1024")]
    entry_bytes: Vec<usize>,
    /// Seconds of writing per cell (each log, region count and entry size).
    #[arg(long, default_value_t = 1.5)]
    seconds: f64,
    /// Entries in each region's batch.
    #[arg(long, default_value_t = 16)]
    entries_per_batch: u64,
    /// Batches each region keeps in flight: 2 lets a region queue its next ready while the
    /// previous one syncs, as raft with asynchronous persistence does.
    #[arg(long, default_value_t = 2)]
    in_flight: usize,
    /// Threads submitting batches (each owns a share of the regions).
    #[arg(long, default_value_t = 4)]
    threads: u64,
    /// Directory to write in (on the disk to measure); a temporary directory inside it is
    /// used and removed.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Per-region entry cache of both logs, in bytes (kept small: the bench never compacts).
    #[arg(long, default_value_t = 64 << 10)]
    cache_bytes: u64,
}

/// How long the raw fdatasync rate is measured before each row.
const RAW_PROBE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    entries_per_s: f64,
    mb_per_s: f64,
    syncs_per_s: f64,
    entries_per_sync: f64,
}

fn main() {
    let args = Args::parse();
    let root = match tempfile::Builder::new()
        .prefix("engine-bench-")
        .tempdir_in(&args.dir)
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "engine-bench: cannot create a directory in {}: {e}",
                args.dir.display()
            );
            std::process::exit(1);
        }
    };
    // This machine's disk is shared and its sync latency drifts, so the raw rate is
    // measured again beside every row.
    println!(
        "raw fdatasync/s: one thread appending 4 KiB + fdatasync for {:.1} s before each row",
        RAW_PROBE.as_secs_f64()
    );
    println!();
    println!(
        "| regions | entry | raw fdatasync/s | WAL entries/s | WAL MB/s | WAL fsyncs/s | WAL entries/fsync | RocksDB entries/s | RocksDB MB/s | RocksDB fsyncs/s | RocksDB entries/fsync | WAL / RocksDB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &entry_bytes in &args.entry_bytes {
        for &regions in &args.regions {
            let raw = raw_fdatasync_rate(root.path(), RAW_PROBE);
            let wal = run_cell(&args, root.path(), true, regions, entry_bytes);
            let rocks = run_cell(&args, root.path(), false, regions, entry_bytes);
            println!(
                "| {regions} | {} | {raw:.0} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.2}x |",
                size_label(entry_bytes),
                wal.entries_per_s,
                wal.mb_per_s,
                wal.syncs_per_s,
                wal.entries_per_sync,
                rocks.entries_per_s,
                rocks.mb_per_s,
                rocks.syncs_per_s,
                rocks.entries_per_sync,
                wal.entries_per_s / rocks.entries_per_s.max(1.0),
            );
        }
    }
}

fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// Appends 4 KiB and calls `fdatasync`, over and over: the disk's bound on syncs per second.
fn raw_fdatasync_rate(dir: &Path, time: Duration) -> f64 {
    let path = dir.join("fdatasync-probe");
    let mut file = match OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("engine-bench: fdatasync probe: {e}");
            return 0.0;
        }
    };
    let block = vec![0xa5u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < time {
        if file
            .write_all(&block)
            .and_then(|()| file.sync_data())
            .is_err()
        {
            break;
        }
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    rate
}

fn run_cell(args: &Args, root: &Path, wal: bool, regions: u64, entry_bytes: usize) -> Cell {
    let dir = root.join(format!(
        "{}-{regions}-{entry_bytes}",
        if wal { "wal" } else { "rocks" }
    ));
    let config = WalConfig {
        entry_cache_bytes_per_region_max: args.cache_bytes,
        ..WalConfig::default()
    };
    let rocks = RocksConfig::default();
    let log: Arc<dyn RaftLog> = match if wal {
        Wal::open(&dir, &config).map(|l| Arc::new(l) as Arc<dyn RaftLog>)
    } else {
        RocksLog::open(&dir, &rocks, &config).map(|l| Arc::new(l) as Arc<dyn RaftLog>)
    } {
        Ok(log) => log,
        Err(e) => {
            eprintln!("engine-bench: open {}: {e}", dir.display());
            std::process::exit(1);
        }
    };
    let payload = Bytes::from(vec![0x5au8; entry_bytes]);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let threads = args.threads.min(regions).max(1);
    let before = log.stats();
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (log, stop, written, payload) =
                (log.clone(), stop.clone(), written.clone(), payload.clone());
            let per_batch = args.entries_per_batch;
            let in_flight = args.in_flight.max(1);
            std::thread::spawn(move || {
                let mine: Vec<u64> = (1..=regions).filter(|r| r % threads == t).collect();
                let mut next: Vec<u64> = vec![1; mine.len()];
                let mut rounds: std::collections::VecDeque<Vec<_>> =
                    std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    while rounds.len() < in_flight {
                        let mut tickets = Vec::with_capacity(mine.len());
                        for (k, &region) in mine.iter().enumerate() {
                            let entries = (next[k]..next[k] + per_batch)
                                .map(|i| Entry {
                                    term: 1,
                                    index: i,
                                    kind: EntryKind::Normal,
                                    data: payload.clone(),
                                })
                                .collect();
                            next[k] += per_batch;
                            match log.submit(RegionBatch::new(region).with_entries(entries).into())
                            {
                                Ok(t) => tickets.push(t),
                                Err(e) => panic!("submit: {e}"),
                            }
                        }
                        rounds.push_back(tickets);
                    }
                    for t in rounds.pop_front().unwrap_or_default() {
                        if let Err(e) = t.wait() {
                            panic!("write: {e}");
                        }
                        written.fetch_add(per_batch, Ordering::Relaxed);
                    }
                }
                // Let the last rounds finish so that the log closes cleanly.
                for t in rounds.into_iter().flatten() {
                    let _ = t.wait();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        if h.join().is_err() {
            eprintln!("engine-bench: a submitter failed");
            std::process::exit(1);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = log.stats();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
    let entries = written.load(Ordering::Relaxed) as f64;
    let syncs = (after.syncs - before.syncs) as f64;
    Cell {
        entries_per_s: entries / elapsed,
        mb_per_s: entries * entry_bytes as f64 / elapsed / 1e6,
        syncs_per_s: syncs / elapsed,
        entries_per_sync: (after.entries - before.entries) as f64 / syncs.max(1.0),
    }
}
