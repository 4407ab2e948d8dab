//! Drivers: connections that send a workload's operations and time the answers.
//!
//! The same schedule, key and value choice drive every system. What differs is the wire:
//!
//! - [`resp`]: one task per TCP connection owns the socket and keeps up to `pipeline`
//!   requests in flight on it (Flotilla's RESP port, Redis);
//! - [`slots`]: `pipeline` tasks per connection share one client object and each keeps one
//!   call in flight (the Rust client `flotilla-client`, and `etcd-client`, whose calls
//!   multiplex on one HTTP/2 connection).
//!
//! Every connection runs through three times ([`Phases`]): warm-up from `start`, the measured
//! window from `measure_from`, and `stop`. An answer counts in the results when it arrives
//! inside the window; answers during the warm-up are only counted (their rate sets the
//! closed-loop correction, see [`crate::latency`]).

pub mod etcd;
pub mod native;
pub mod resp;
pub mod slots;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::latency::Recorder;

/// The three times of a run.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Warm-up starts.
    pub start: Instant,
    /// The measured window starts.
    pub measure_from: Instant,
    /// Everything stops; requests still in flight are abandoned.
    pub stop: Instant,
}

impl Phases {
    /// Warm-up of `warmup` from now, then `measure` measured.
    pub fn from_now(warmup: Duration, measure: Duration) -> Phases {
        let start = Instant::now();
        Phases {
            start,
            measure_from: start + warmup,
            stop: start + warmup + measure,
        }
    }

    /// A load phase: measured from now, for at most `limit`.
    pub fn load(limit: Duration) -> Phases {
        let start = Instant::now();
        Phases {
            start,
            measure_from: start,
            stop: start + limit,
        }
    }
}

/// When one connection sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// As soon as a pipeline slot is free.
    Closed,
    /// Request k of the connection is meant for `first + k × interval`.
    Open {
        /// The first request's intended time.
        first: Instant,
        /// Time between two requests of this connection.
        interval: Duration,
    },
}

impl Schedule {
    /// Connection `conn` of `conns` sharing an offered load of `rate` ops/s from `start`
    /// (closed loop for `None`). Connections are staggered over one interval so that their
    /// sends do not all fall on the same instant.
    pub fn for_connection(rate: Option<f64>, start: Instant, conn: u64, conns: u64) -> Schedule {
        match rate {
            None => Schedule::Closed,
            Some(rate) => {
                let per_conn = rate / conns as f64;
                let interval = Duration::from_secs_f64(1.0 / per_conn);
                let offset = interval.mul_f64(conn as f64 / conns as f64);
                Schedule::Open {
                    first: start + offset,
                    interval,
                }
            }
        }
    }
}

/// What one connection (or slot) brings back.
#[derive(Debug, Clone, Default)]
pub struct StreamOutcome {
    /// Answers inside the measured window.
    pub measured: Recorder,
    /// Answers (successes and errors) during the warm-up.
    pub warmup_ops: u64,
}

impl StreamOutcome {
    /// Adds another stream's outcome.
    pub fn merge(&mut self, other: &StreamOutcome) {
        self.measured.merge(&other.measured);
        self.warmup_ops += other.warmup_ops;
    }
}

/// Completed operations of every connection, for the live progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
}

impl Progress {
    /// Counts `n` answers, `errors` of them errors.
    pub fn add(&self, n: u64, errors: u64) {
        if n > 0 {
            self.done.fetch_add(n, Ordering::Relaxed);
        }
        if errors > 0 {
            self.errors.fetch_add(errors, Ordering::Relaxed);
        }
    }

    /// Answers so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Errors so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Shared progress counter.
pub type SharedProgress = Arc<Progress>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_schedules_split_the_rate_and_stagger() {
        let t0 = Instant::now();
        let a = Schedule::for_connection(Some(1000.0), t0, 0, 4);
        let b = Schedule::for_connection(Some(1000.0), t0, 2, 4);
        match (a, b) {
            (
                Schedule::Open {
                    first: fa,
                    interval: ia,
                },
                Schedule::Open {
                    first: fb,
                    interval: ib,
                },
            ) => {
                assert_eq!(ia, Duration::from_millis(4));
                assert_eq!(ia, ib);
                assert_eq!(fa, t0);
                assert_eq!(fb - t0, Duration::from_millis(2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Schedule::for_connection(None, t0, 0, 1), Schedule::Closed);
    }
}
