//! Both raft logs record one sync sample per group commit: the count of syncs, and the
//! entries, bytes, submissions and duration of each. A recorder local to the test thread
//! catches the handles the log registers as it opens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flotilla_common::{Entry, EntryKind, HardState};
use flotilla_engine::metrics::{
    LOG_SYNCS_TOTAL, LOG_SYNC_BYTES, LOG_SYNC_DURATION_SECONDS, LOG_SYNC_ENTRIES,
    LOG_SYNC_FAILURES_TOTAL, LOG_SYNC_SUBMISSIONS,
};
use flotilla_engine::{RaftLog, RegionBatch, RocksConfig, RocksLog, Wal, WalConfig};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use parking_lot::Mutex;

/// A counter's total.
#[derive(Default)]
struct Total(AtomicU64);

impl CounterFn for Total {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

/// Every value a histogram got.
#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().push(value);
    }
}

/// Keeps counters and histograms by `name{label=value,...}`.
#[derive(Default)]
struct TestRecorder {
    counters: Mutex<HashMap<String, Arc<Total>>>,
    histograms: Mutex<HashMap<String, Arc<Samples>>>,
}

fn series(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl TestRecorder {
    fn counter(&self, name: &str, backend: &str) -> u64 {
        self.counters
            .lock()
            .get(&format!("{name}{{backend={backend}}}"))
            .map_or(0, |c| c.0.load(Ordering::Relaxed))
    }

    fn samples(&self, name: &str, backend: &str) -> Vec<f64> {
        self.histograms
            .lock()
            .get(&format!("{name}{{backend={backend}}}"))
            .map_or_else(Vec::new, |h| h.0.lock().clone())
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let c = self.counters.lock().entry(series(key)).or_default().clone();
        Counter::from_arc(c)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let h = self
            .histograms
            .lock()
            .entry(series(key))
            .or_default()
            .clone();
        Histogram::from_arc(h)
    }
}

/// Writes `writes` batches of 3 entries to region 1, one at a time (one sync each), and
/// checks what the recorder saw.
fn check(log: &dyn RaftLog, recorder: &TestRecorder, backend: &str) {
    let before = recorder.counter(LOG_SYNCS_TOTAL, backend);
    let writes = 4u64;
    for w in 0..writes {
        let entries: Vec<Entry> = (1..=3)
            .map(|i| Entry::new(EntryKind::Normal, 1, w * 3 + i, vec![7; 100]))
            .collect();
        let batch = RegionBatch::new(1)
            .with_entries(entries)
            .with_hard_state(HardState {
                term: 1,
                vote: 1,
                commit: w * 3,
            });
        log.write(batch.into()).unwrap();
    }
    let syncs = recorder.counter(LOG_SYNCS_TOTAL, backend) - before;
    assert_eq!(syncs, writes, "{backend}: one sync per write done alone");
    assert_eq!(recorder.counter(LOG_SYNC_FAILURES_TOTAL, backend), 0);
    let entries = recorder.samples(LOG_SYNC_ENTRIES, backend);
    assert_eq!(entries, vec![3.0; writes as usize], "{backend}");
    let submissions = recorder.samples(LOG_SYNC_SUBMISSIONS, backend);
    assert_eq!(submissions, vec![1.0; writes as usize], "{backend}");
    let bytes = recorder.samples(LOG_SYNC_BYTES, backend);
    assert_eq!(bytes.len(), writes as usize);
    assert!(bytes.iter().all(|&b| b >= 300.0), "{backend}: {bytes:?}");
    let durations = recorder.samples(LOG_SYNC_DURATION_SECONDS, backend);
    assert_eq!(durations.len(), writes as usize);
    assert!(
        durations.iter().all(|&d| d > 0.0),
        "{backend}: {durations:?}"
    );
    assert_eq!(
        log.stats().syncs,
        before + syncs,
        "{backend}: agrees with stats"
    );
}

#[test]
fn wal_records_one_sample_per_sync() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = TestRecorder::default();
    let wal = metrics::with_local_recorder(&recorder, || {
        Wal::open(dir.path(), &WalConfig::default()).unwrap()
    });
    check(&wal, &recorder, "wal");
}

#[test]
fn rocks_log_records_one_sample_per_sync() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = TestRecorder::default();
    let log = metrics::with_local_recorder(&recorder, || {
        RocksLog::open(dir.path(), &RocksConfig::default(), &WalConfig::default()).unwrap()
    });
    check(&log, &recorder, "rocksdb");
}
