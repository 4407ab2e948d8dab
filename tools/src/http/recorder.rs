//! The process-wide Prometheus recorder.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for every metric whose name ends in `_seconds`: from 50 µs (a read
/// served from memory) to 10 s (a request stuck behind an election), about 2.5× apart.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Histogram buckets for batch sizes counted in items, for metrics whose name ends in
/// `_entries`, `_regions` or `_submissions` (entries per log sync or apply round, regions
/// per log write): powers of two up to 64 Ki, past the largest batch a round takes.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0, 32768.0, 65536.0,
];

/// Histogram buckets for metrics whose name ends in `_bytes` (bytes per log sync): powers
/// of four from 256 B to 64 MiB, past the log's largest group.
pub const BYTES_BUCKETS: &[f64] = &[
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// Installs the Prometheus recorder as the global `metrics` recorder and returns the handle
/// the status server renders `/metrics` from. Call it once per process, before anything
/// records and before the node, its log and its transport start: their handles are
/// registered when they start, and handles taken before the recorder exists record
/// nothing, ever. A second call fails.
pub fn install_prometheus_recorder() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_entries".into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_regions".into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_submissions".into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS)?
        .install_recorder()
}
