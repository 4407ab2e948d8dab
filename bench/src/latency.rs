//! Latency recording without coordinated omission.
//!
//! A load generator that waits for an answer before sending the next request stops
//! sending while the server stalls, so the stall shows up in one sample instead of in every
//! request a real client population would have sent meanwhile ("coordinated omission", Gil
//! Tene). The suite avoids it two ways:
//!
//! - **Open loop** (`--rate`): every request has an intended send time on a fixed schedule;
//!   its latency runs from that time, not from when a free pipeline slot let it go. A stall
//!   delays every request scheduled during it, and each is counted with its full delay.
//! - **Closed loop**: the service times (send to answer) are kept as measured, and the
//!   latency quoted is HdrHistogram's expected-interval correction of them
//!   ([`Histogram::clone_correct`]) with the interval each pipeline slot would have
//!   between requests at the throughput the warm-up showed (slots ÷ ops/s): a sample
//!   longer than that interval gets the samples the slot would have produced while it
//!   waited.
//!
//! Values are recorded in microseconds, 1 µs to 1 hour, 3 significant digits.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest recordable latency, µs (an hour: anything a run can see).
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits the histograms keep.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Error messages kept per recorder, to show what failed without storing every one.
const ERROR_SAMPLES_MAX: usize = 4;

/// A new latency histogram (µs).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, LATENCY_US_MAX)
}

/// What one stream of requests saw in the measured window.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// From intended send time to answer (µs); equals `service` in closed loop.
    pub latency: Histogram<u64>,
    /// From actual send to answer (µs).
    pub service: Histogram<u64>,
    /// Successful operations.
    pub ops: u64,
    /// Payload bytes moved by them (values written, values read).
    pub bytes: u64,
    /// Operations answered with an error or lost with a connection.
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: histogram(),
            service: histogram(),
            ops: 0,
            bytes: 0,
            errors: 0,
            error_samples: Vec::new(),
        }
    }
}

impl Recorder {
    /// Records a success: `intended` is when the schedule wanted it sent (the send time in
    /// closed loop), `sent` when it went, `done` when its answer arrived.
    pub fn record_ok(&mut self, intended: Instant, sent: Instant, done: Instant, bytes: u64) {
        debug_assert!(intended <= sent, "sent before it was meant to be");
        self.latency
            .saturating_record(micros(done.saturating_duration_since(intended)));
        self.service
            .saturating_record(micros(done.saturating_duration_since(sent)));
        self.ops += 1;
        self.bytes += bytes;
    }

    /// Records a failure.
    pub fn record_error(&mut self, message: impl Into<String>) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES_MAX {
            let m = message.into();
            if !self.error_samples.contains(&m) {
                self.error_samples.push(m);
            }
        }
    }

    /// Adds another stream's counts.
    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.errors += other.errors;
        for m in &other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES_MAX && !self.error_samples.contains(m) {
                self.error_samples.push(m.clone());
            }
        }
    }
}

/// How the quoted latency was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencyBasis {
    /// Open loop: from each request's intended send time.
    IntendedStart,
    /// Closed loop: service times with the expected-interval correction.
    Corrected,
    /// Closed loop without a warm-up rate to correct with: service times as measured.
    Uncorrected,
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of `h` (µs values); zeros when it is empty.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles {
                count: 0,
                mean_ms: 0.0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            };
        }
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The latency to quote for a run, and how it was obtained.
#[derive(Debug, Clone)]
pub struct Quoted {
    /// The histogram (µs).
    pub histogram: Histogram<u64>,
    /// How.
    pub basis: LatencyBasis,
    /// The closed-loop correction's interval, µs.
    pub expected_interval_us: Option<u64>,
}

/// The latency to quote: open loop as recorded from intended starts; closed loop corrected
/// with the interval each of `slots` in-flight requests would have between sends at
/// `warmup_ops_per_sec` (none if the warm-up completed nothing).
pub fn quoted_latency(
    rec: &Recorder,
    open_loop: bool,
    slots: u64,
    warmup_ops_per_sec: f64,
) -> Quoted {
    if open_loop {
        return Quoted {
            histogram: rec.latency.clone(),
            basis: LatencyBasis::IntendedStart,
            expected_interval_us: None,
        };
    }
    match expected_interval_us(slots, warmup_ops_per_sec) {
        Some(interval) => Quoted {
            histogram: rec.service.clone_correct(interval),
            basis: LatencyBasis::Corrected,
            expected_interval_us: Some(interval),
        },
        None => Quoted {
            histogram: rec.service.clone(),
            basis: LatencyBasis::Uncorrected,
            expected_interval_us: None,
        },
    }
}

/// Slots ÷ rate, in µs (at least 1), or `None` without a rate.
pub fn expected_interval_us(slots: u64, ops_per_sec: f64) -> Option<u64> {
    if !(ops_per_sec.is_finite() && ops_per_sec > 0.0) || slots == 0 {
        return None;
    }
    Some(((slots as f64 / ops_per_sec) * 1e6).round().max(1.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_latency_counts_the_wait_for_a_slot() {
        let mut r = Recorder::default();
        let t0 = Instant::now();
        // Meant for t0, sent 40 ms late (every slot busy), answered 1 ms after sending.
        r.record_ok(
            t0,
            t0 + Duration::from_millis(40),
            t0 + Duration::from_millis(41),
            16,
        );
        let q = quoted_latency(&r, true, 1, 0.0);
        assert_eq!(q.basis, LatencyBasis::IntendedStart);
        let p = Percentiles::of(&q.histogram);
        assert!((p.max_ms - 41.0).abs() < 0.1, "{p:?}");
        let s = Percentiles::of(&r.service);
        assert!((s.max_ms - 1.0).abs() < 0.01, "{s:?}");
        assert_eq!((r.ops, r.bytes), (1, 16));
    }

    #[test]
    fn closed_loop_stall_is_filled_in_by_the_correction() {
        // One slot at 1 ms per request for 1000 requests, then one request stalls for 1 s.
        // Measured naively the stall is one sample in 1001 (p99 = 1 ms); a client sending
        // every 1 ms would have seen ~1000 requests waiting on it, so the corrected p90 and
        // p99 rise to hundreds of milliseconds.
        let mut r = Recorder::default();
        let t0 = Instant::now();
        for _ in 0..1000 {
            r.record_ok(t0, t0, t0 + Duration::from_millis(1), 0);
        }
        r.record_ok(t0, t0, t0 + Duration::from_secs(1), 0);
        let naive = Percentiles::of(&r.service);
        assert!(naive.p99_ms < 1.01, "{naive:?}");
        // 1 slot at 1000 ops/s: one request every 1000 µs.
        let q = quoted_latency(&r, false, 1, 1000.0);
        assert_eq!(q.basis, LatencyBasis::Corrected);
        assert_eq!(q.expected_interval_us, Some(1000));
        let p = Percentiles::of(&q.histogram);
        assert!(p.count > 1900, "filled-in samples: {}", p.count);
        assert!(p.p99_ms > 900.0, "corrected p99 {p:?}");
        assert!(p.p90_ms > 500.0, "corrected p90 {p:?}");
        assert!((p.max_ms - 1000.0).abs() < 2.0);
    }

    #[test]
    fn no_warmup_rate_means_no_correction() {
        let mut r = Recorder::default();
        let t0 = Instant::now();
        r.record_ok(t0, t0, t0 + Duration::from_millis(5), 0);
        let q = quoted_latency(&r, false, 64, 0.0);
        assert_eq!(q.basis, LatencyBasis::Uncorrected);
        assert_eq!(q.histogram.len(), 1);
        assert_eq!(expected_interval_us(64, 64_000.0), Some(1000));
        assert_eq!(expected_interval_us(0, 5.0), None);
        assert_eq!(expected_interval_us(4, f64::NAN), None);
    }

    #[test]
    fn merging_adds_counts_and_keeps_few_error_messages() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        let t0 = Instant::now();
        a.record_ok(t0, t0, t0 + Duration::from_micros(100), 3);
        b.record_ok(t0, t0, t0 + Duration::from_micros(300), 4);
        for i in 0..10 {
            b.record_error(format!("e{i}"));
        }
        b.record_error("e0");
        a.merge(&b);
        assert_eq!((a.ops, a.bytes, a.errors), (2, 7, 11));
        assert_eq!(a.error_samples.len(), ERROR_SAMPLES_MAX);
        assert_eq!(a.latency.len(), 2);
        let p = Percentiles::of(&a.latency);
        assert!((p.max_ms - 0.3).abs() < 0.001, "{p:?}");
        assert_eq!(Percentiles::of(&histogram()).count, 0);
    }
}
