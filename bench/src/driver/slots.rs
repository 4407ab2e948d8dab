//! The slot driver: `pipeline` tasks per connection, each with one call in flight, for
//! clients that multiplex calls on their own connection (`flotilla-client`, `etcd-client`).
//!
//! In open loop the slots of a connection share its schedule: each takes the next request
//! number k and sends it at `first + k × interval`, or at once if that time has passed (all
//! slots were busy); its latency runs from the intended time either way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::{Phases, Schedule, SharedProgress, StreamOutcome};
use crate::workload::{Op, OpGen};

/// A call in flight: the payload bytes it moved, or why it failed.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

/// A client that can have many calls in flight at once.
pub trait Caller: Clone + Send + Sync + 'static {
    /// Sends `op` and waits for its answer.
    fn call(&self, op: Op) -> CallFuture;
}

/// Runs the slots of one connection (one generator each) until `phases.stop` or until every
/// generator is exhausted.
pub async fn run<C: Caller>(
    caller: C,
    gens: Vec<OpGen>,
    schedule: Schedule,
    phases: Phases,
    progress: SharedProgress,
) -> StreamOutcome {
    let counter = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = gens
        .into_iter()
        .map(|gen| {
            tokio::spawn(slot(
                caller.clone(),
                gen,
                schedule,
                phases,
                progress.clone(),
                counter.clone(),
            ))
        })
        .collect();
    let mut out = StreamOutcome::default();
    for t in tasks {
        match t.await {
            Ok(o) => out.merge(&o),
            Err(e) => out
                .measured
                .record_error(format!("driver task failed: {e}")),
        }
    }
    out
}

async fn slot<C: Caller>(
    caller: C,
    mut gen: OpGen,
    schedule: Schedule,
    phases: Phases,
    progress: SharedProgress,
    counter: Arc<AtomicU64>,
) -> StreamOutcome {
    let mut out = StreamOutcome::default();
    loop {
        let intended = match schedule {
            Schedule::Closed => Instant::now(),
            Schedule::Open { first, interval } => {
                let k = counter.fetch_add(1, Ordering::Relaxed);
                let t = first + interval.mul_f64(k as f64);
                if t >= phases.stop {
                    break;
                }
                tokio::time::sleep_until(t).await;
                t
            }
        };
        if intended >= phases.stop {
            break;
        }
        let Some(op) = gen.next_op() else { break };
        let sent = Instant::now();
        let Ok(result) = tokio::time::timeout_at(phases.stop, caller.call(op)).await else {
            break;
        };
        let done = Instant::now();
        progress.add(1, u64::from(result.is_err()));
        if done < phases.measure_from {
            out.warmup_ops += 1;
            continue;
        }
        match result {
            Ok(bytes) => {
                out.measured
                    .record_ok(intended.into_std(), sent.into_std(), done.into_std(), bytes)
            }
            Err(e) => out.measured.record_error(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{value_of, Workload};
    use std::time::Duration;

    /// Answers every call after `delay`; fails every call whose key ends in 7.
    #[derive(Clone)]
    struct Fake {
        delay: Duration,
    }

    impl Caller for Fake {
        fn call(&self, op: Op) -> CallFuture {
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                match op {
                    Op::Set { key, value } if !key.ends_with(b"7") => Ok(value.len() as u64),
                    _ => Err("refused".into()),
                }
            })
        }
    }

    #[tokio::test]
    async fn open_loop_slots_keep_the_offered_rate_and_count_errors() {
        let phases = Phases::from_now(Duration::from_millis(100), Duration::from_millis(500));
        let schedule = Schedule::for_connection(Some(400.0), phases.start, 0, 1);
        let gens = (0..4)
            .map(|s| OpGen::new(Workload::Write, 1000, value_of(8, 0), 1, s))
            .collect();
        let progress = SharedProgress::default();
        let fake = Fake {
            delay: Duration::from_millis(2),
        };
        let out = run(fake, gens, schedule, phases, progress.clone()).await;
        let r = &out.measured;
        let answered = r.ops + r.errors;
        // However slow the machine, an open loop never sends more than its schedule:
        // 400/s over 0.6 s is 240 requests, the first at time 0.
        assert!(
            answered + out.warmup_ops <= 241,
            "{answered} + {}",
            out.warmup_ops
        );
        assert!(answered > 0);
        // Keys ending in 7 fail: one in ten.
        assert!(r.errors < answered, "{} errors of {answered}", r.errors);
        assert_eq!(r.bytes, r.ops * 8);
        assert_eq!(progress.done(), answered + out.warmup_ops);
        assert!(progress.errors() >= r.errors);
    }
}
