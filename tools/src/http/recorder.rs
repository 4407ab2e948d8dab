//! The process-wide Prometheus recorder.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for every metric whose name ends in `_seconds`: from 50 µs (a read
/// served from memory) to 10 s (a request stuck behind an election), about 2.5× apart.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder as the global `metrics` recorder and returns the handle
/// the status server renders `/metrics` from. Call it once per process, before anything
/// records (metrics recorded earlier are lost); a second call fails.
pub fn install_prometheus_recorder() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)?
        .install_recorder()
}
