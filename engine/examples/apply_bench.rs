//! How long one write takes to apply: rounds of `--per-round` puts spread over `--regions`
//! regions, each with a session record and the regions' applied indexes, into a fresh
//! KvStore; prints writes/s per slice of rounds so the cost as the memtable fills shows.
//! Like the store, it keeps every region's sessions in memory and hands them to the round
//! that folds the region's session log.
use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;

use flotilla_engine::{ApplyRound, KvStore, RocksConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let regions = get("--regions", 64);
    let per_round = get("--per-round", 300);
    let rounds = get("--rounds", 20_000);
    let keys = get("--keys", 100_000);
    let sessions = get("--sessions", 1024);
    let no_sessions = args.iter().any(|a| a == "--no-sessions");
    let dir = tempfile::tempdir_in(
        args.iter()
            .position(|a| a == "--dir")
            .map(|i| args[i + 1].clone())
            .unwrap_or("/tmp".into()),
    )
    .expect("tempdir");
    let cfg = RocksConfig {
        write_buffer_bytes: get("--write-buffer-mb", 16) << 20,
        meta_write_buffer_bytes: get("--meta-write-buffer-mb", 4) << 20,
        ..RocksConfig::default()
    };
    let kv = KvStore::open(dir.path(), &cfg).expect("open");
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut index = vec![0u64; regions as usize];
    let mut tables: Vec<HashMap<u64, Bytes>> = vec![HashMap::new(); regions as usize];
    let slice = rounds / 10;
    let mut started = Instant::now();
    for r in 0..rounds {
        let mut round = ApplyRound::new();
        let mut written = vec![false; regions as usize];
        for _ in 0..per_round {
            let k = next() % keys;
            let h = (k.wrapping_mul(0x9E3779B97F4A7C15) >> 48) as u16;
            let region = (h as u64 * regions) >> 16;
            let mut key = h.to_be_bytes().to_vec();
            key.extend_from_slice(format!("k{k:010}").as_bytes());
            round.put(region, key, vec![7u8; 16]);
            index[region as usize] += 1;
            written[region as usize] = true;
            round.set_applied(region, index[region as usize]);
            if !no_sessions {
                let session = Bytes::from(vec![1u8; 24]);
                let client = next() % sessions;
                tables[region as usize].insert(client, session.clone());
                round.set_session(region, client, session);
            }
        }
        if !no_sessions {
            for (region, table) in tables.iter().enumerate() {
                let region = region as u64;
                // Like the store: only a region this round writes folds.
                if written[region as usize] && kv.sessions_fold_due(region).expect("due") {
                    let all = table.iter().map(|(c, s)| (*c, s.clone())).collect();
                    round.set_all_sessions(region, all);
                }
            }
        }
        kv.apply(round).expect("apply");
        if (r + 1) % slice == 0 {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "rounds {:>6}: {:>9.0} writes/s, {:.2} us/write",
                r + 1,
                (slice * per_round) as f64 / secs,
                secs * 1e6 / (slice * per_round) as f64
            );
            started = Instant::now();
        }
    }
}
