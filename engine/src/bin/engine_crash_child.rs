//! Child process of the engine's crash test (engine/tests/crash.rs): appends batches for
//! many regions from several threads forever and prints `ack <region> <last index> <term>`
//! for every region of a batch once the log reported it durable. The parent kills it with
//! SIGKILL at random moments and checks that everything acknowledged survived.
//!
//! Usage: engine-crash-child <wal|rocksdb> <dir> <regions> <term>

use std::io::Write;
use std::sync::Arc;

use flotilla_common::{Entry, EntryKind};
use flotilla_engine::{LogBatch, RaftLog, RegionBatch, RocksConfig, RocksLog, Wal, WalConfig};

/// The data of entry (region, index, term): the parent recomputes it to spot garbage.
fn payload(region: u64, index: u64, term: u64) -> Vec<u8> {
    let mut data = format!("r{region}-i{index}-t{term}-").into_bytes();
    data.resize(data.len() + (index % 7) as usize * 13, b'x');
    data
}

const THREADS: u64 = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: engine-crash-child <wal|rocksdb> <dir> <regions> <term>");
        std::process::exit(2);
    }
    let regions: u64 = args[3].parse().unwrap_or(16);
    let term: u64 = args[4].parse().unwrap_or(1);
    // Small segments so that crashes also hit segment rotation.
    let wal = WalConfig {
        segment_bytes_max: 64 << 10,
        ..WalConfig::default()
    };
    let log: Arc<dyn RaftLog> = match args[1].as_str() {
        "wal" => Arc::new(Wal::open(&args[2], &wal).unwrap_or_else(|e| fail(e))),
        _ => Arc::new(
            RocksLog::open(&args[2], &RocksConfig::default(), &wal).unwrap_or_else(|e| fail(e)),
        ),
    };
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mine: Vec<u64> = (1..=regions).filter(|r| r % THREADS == t).collect();
                let mut k = 0usize;
                loop {
                    // Each batch writes 1 to 3 of this thread's regions, 1 to 4 entries each.
                    let mut batch = LogBatch::new();
                    for j in 0..(k % 3 + 1) {
                        let region = mine[(k + j * 5) % mine.len()];
                        if batch.regions.iter().any(|r| r.region_id == region) {
                            continue;
                        }
                        let next = log.last_index(region) + 1;
                        let n = ((k + j) % 4 + 1) as u64;
                        let entries = (next..next + n)
                            .map(|i| {
                                Entry::new(EntryKind::Normal, term, i, payload(region, i, term))
                            })
                            .collect();
                        batch.push(RegionBatch::new(region).with_entries(entries));
                    }
                    let report = log.write(batch).unwrap_or_else(|e| fail(e));
                    let mut out = std::io::stdout().lock();
                    for d in report.durable {
                        let _ =
                            writeln!(out, "ack {} {} {}", d.region_id, d.last_index, d.last_term);
                    }
                    let _ = out.flush();
                    k += 1;
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn fail(e: flotilla_engine::EngineError) -> ! {
    eprintln!("crash child: {e}");
    std::process::exit(1);
}
