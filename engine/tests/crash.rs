//! Crash test: a child process appends batches for many regions and prints what the log
//! acknowledged as durable; the parent kills it with SIGKILL at random moments, reopens
//! the log, and checks that every acknowledged entry is there, that nothing unreadable or
//! foreign is returned after a torn write, and that the log still takes writes.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{small_rocks, Kind};
use flotilla_common::{Entry, EntryKind};
use flotilla_engine::{RaftLog, RegionBatch, RocksLog, Wal, WalConfig};

const REGIONS: u64 = 24;

/// Must match the child's payload.
fn payload(region: u64, index: u64, term: u64) -> Vec<u8> {
    let mut data = format!("r{region}-i{index}-t{term}-").into_bytes();
    data.resize(data.len() + (index % 7) as usize * 13, b'x');
    data
}

fn open(kind: Kind, dir: &std::path::Path) -> Box<dyn RaftLog> {
    let wal = WalConfig {
        segment_bytes_max: 64 << 10,
        ..WalConfig::default()
    };
    match kind {
        Kind::Wal => Box::new(Wal::open(dir, &wal).expect("reopen after crash")),
        Kind::Rocks => {
            Box::new(RocksLog::open(dir, &small_rocks(), &wal).expect("reopen after crash"))
        }
    }
}

fn crash_loop(kind: Kind, kills: u64) {
    let dir = tempfile::tempdir().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("crash test {kind:?}: seed {seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // The highest index each region had acknowledged, over all runs.
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let started = Instant::now();
    for run in 1..=kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_engine-crash-child"))
            .arg(if kind == Kind::Wal { "wal" } else { "rocksdb" })
            .arg(dir.path())
            .arg(REGIONS.to_string())
            .arg(run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crash child");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let fields: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|f| f.parse().ok())
                    .collect();
                if let [region, index, _term] = fields[..] {
                    acks.push((region, index));
                }
            }
            acks
        });
        // Kill at a random moment: sometimes during recovery, mostly while writing.
        std::thread::sleep(Duration::from_millis(10 + next() % 150));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap child");
        // Killed by our SIGKILL, not exited by itself (a child that hit an error exits 1).
        assert_eq!(
            status.signal(),
            Some(9),
            "run {run}: the child was not killed but ended: {status}"
        );
        let acks = reader.join().expect("reader thread");
        for (region, index) in acks {
            let a = acked.entry(region).or_default();
            *a = (*a).max(index);
        }
        verify(kind, dir.path(), &acked, run);
    }
    // The log still takes writes after all those crashes.
    let log = open(kind, dir.path());
    let next_index = log.last_index(1) + 1;
    let entry = Entry::new(
        EntryKind::Normal,
        kills + 1,
        next_index,
        payload(1, next_index, kills + 1),
    );
    log.write(RegionBatch::new(1).with_entries(vec![entry.clone()]).into())
        .expect("write after crashes");
    assert_eq!(
        log.entries(1, next_index, next_index + 1, u64::MAX)
            .unwrap(),
        vec![entry]
    );
    let total: u64 = acked.values().sum();
    assert!(total > 0, "no batch was ever acknowledged");
    eprintln!(
        "crash test {kind:?}: {kills} kills, {total} entries acknowledged, {:?}",
        started.elapsed()
    );
}

fn verify(kind: Kind, dir: &std::path::Path, acked: &HashMap<u64, u64>, run: u64) {
    let log = open(kind, dir);
    for region in 1..=REGIONS {
        let last = log.last_index(region);
        let want = acked.get(&region).copied().unwrap_or(0);
        assert!(
            last >= want,
            "run {run}: region {region} lost acknowledged entries: last {last} < acked {want}"
        );
        let entries = log
            .entries(region, 1, last + 1, u64::MAX)
            .expect("read back");
        assert_eq!(entries.len() as u64, last);
        let mut prev_term = 0;
        for e in entries {
            assert_eq!(
                e.data,
                payload(region, e.index, e.term),
                "run {run}: region {region} entry {} garbled",
                e.index
            );
            assert!(
                e.term >= prev_term && e.term <= run,
                "run {run}: region {region} entry {} term {}",
                e.index,
                e.term
            );
            prev_term = e.term;
        }
    }
}

#[test]
fn wal_survives_sigkill_at_random_moments() {
    crash_loop(Kind::Wal, 30);
}

#[test]
fn rocks_log_survives_sigkill_at_random_moments() {
    crash_loop(Kind::Rocks, 10);
}
