//! Group commit: one writer thread takes every submission queued by any region, hands them
//! to the log implementation as one group (one write, one sync), and the implementation
//! answers each submitter. The number of syncs therefore follows the disk's speed, not the
//! number of regions.
//!
//! A caller that waits for its batch anyway ([`GroupCommitter::write`]: a node's store
//! writes its round's batch and waits) commits it on its own thread when nothing queued is
//! waiting for the writer thread: handing the batch to the writer thread and being woken by
//! it cost four context switches per round on top of the sync's own, and on a machine whose
//! cores are all busy a context switch is expensive (docs/benchmarks.md). The sink is
//! behind a mutex, so the writer thread and such callers never commit at the same time,
//! and a caller whose own earlier submissions are still queued waits for the thread, so
//! nobody's batches are reordered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

// std's channels rather than crossbeam's: a crossbeam receiver that finds its channel empty
// yields the CPU several times before it sleeps, and on a machine whose cores are all busy
// each yield is a context switch (docs/benchmarks.md).
use std::sync::mpsc::{sync_channel, SyncSender as Sender};

use parking_lot::Mutex;

use crate::error::{EngineError, Result};
use crate::index::{RegionIndex, Shape};
use crate::log::{LogBatch, LogWaker, WriteReport, WriteTicket};

/// Submissions that may wait in the queue. Bounds the memory held by batches that the disk
/// has not caught up with: past it, `submit` blocks (back-pressure on the regions).
pub(crate) const QUEUE_LEN_MAX: usize = 65_536;

/// One submitted batch with what the submitter already prepared for the writer (the WAL
/// encodes on the caller's thread so that encoding runs in parallel).
pub(crate) struct Submission<P> {
    pub batch: LogBatch,
    pub prepared: P,
    pub bytes: u64,
    pub reply: Sender<Result<WriteReport>>,
    /// Called once the answer is in `reply` (see [`LogWaker`]).
    pub wake: Option<LogWaker>,
}

impl<P> Submission<P> {
    /// Sends the submission its answer, then wakes its submitter if it asked to be.
    pub fn answer(self, result: Result<WriteReport>) {
        let durable = result.is_ok();
        let _ = self.reply.send(result);
        if let Some(wake) = self.wake {
            wake(durable);
        }
    }
}

/// What a log implementation does with one group: validate, write, sync once, update its
/// index, and send every submission its answer.
pub(crate) trait GroupSink: Send + 'static {
    /// What the submitter prepares.
    type Prepared: Send + 'static;
    /// Commits the group and answers every submission in it.
    fn commit(&mut self, group: Vec<Submission<Self::Prepared>>);
}

/// The writer thread, the queue in front of it, and the sink they share with callers of
/// [`GroupCommitter::write`].
pub(crate) struct GroupCommitter<S: GroupSink> {
    tx: Option<Sender<Submission<S::Prepared>>>,
    handle: Option<JoinHandle<()>>,
    sink: Arc<Mutex<S>>,
    /// Submissions sent to the writer thread and not yet committed by it.
    queued: Arc<AtomicUsize>,
}

impl<S: GroupSink> GroupCommitter<S> {
    /// Starts the writer thread; a group holds submissions up to `batch_bytes_max` (the first
    /// one always goes in).
    pub fn start(name: &str, sink: S, batch_bytes_max: u64) -> Result<Self> {
        let (tx, rx) = sync_channel::<Submission<S::Prepared>>(QUEUE_LEN_MAX);
        let sink = Arc::new(Mutex::new(sink));
        let queued = Arc::new(AtomicUsize::new(0));
        let (thread_sink, thread_queued) = (sink.clone(), queued.clone());
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut sink = thread_sink.lock();
                    let mut bytes = first.bytes;
                    let mut group = vec![first];
                    while bytes < batch_bytes_max {
                        match rx.try_recv() {
                            Ok(next) => {
                                bytes += next.bytes;
                                group.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    let n = group.len();
                    sink.commit(group);
                    thread_queued.fetch_sub(n, Ordering::AcqRel);
                }
            })
            .map_err(|e| EngineError::io("spawn log writer thread", e))?;
        Ok(GroupCommitter {
            tx: Some(tx),
            handle: Some(handle),
            sink,
            queued,
        })
    }

    /// Queues a batch; blocks while the queue is full. `wake` is called once the ticket
    /// holds the answer.
    pub fn submit(
        &self,
        batch: LogBatch,
        prepared: S::Prepared,
        bytes: u64,
        wake: Option<LogWaker>,
    ) -> Result<WriteTicket> {
        let (reply, rx) = sync_channel(1);
        let tx = self.tx.as_ref().ok_or(EngineError::Closed)?;
        self.queued.fetch_add(1, Ordering::AcqRel);
        let sent = tx.send(Submission {
            batch,
            prepared,
            bytes,
            reply,
            wake,
        });
        if sent.is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::Closed);
        }
        Ok(WriteTicket { rx })
    }

    /// Commits a batch and waits until it is durable: on this thread, as a group of one,
    /// when no queued submission waits for the writer thread (else through the queue, after
    /// them).
    pub fn write(&self, batch: LogBatch, prepared: S::Prepared, bytes: u64) -> Result<WriteReport> {
        if self.tx.is_none() {
            return Err(EngineError::Closed);
        }
        let mut sink = self.sink.lock();
        if self.queued.load(Ordering::Acquire) > 0 {
            drop(sink);
            return self.submit(batch, prepared, bytes, None)?.wait();
        }
        let (reply, rx) = sync_channel(1);
        sink.commit(vec![Submission {
            batch,
            prepared,
            bytes,
            reply,
            wake: None,
        }]);
        drop(sink);
        rx.recv().map_err(|_| EngineError::Closed)?
    }
}

impl<S: GroupSink> Drop for GroupCommitter<S> {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop.
        drop(self.tx.take());
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("log writer thread panicked");
            }
        }
    }
}

/// Checks each submission of a group against the log's state as the earlier ones in the
/// group leave it. Returns the accepted submissions; the others get their error as answer.
pub(crate) fn validate_group<L: Clone, P>(
    index: &HashMap<u64, RegionIndex<L>>,
    group: Vec<Submission<P>>,
) -> Vec<Submission<P>> {
    let mut shapes: HashMap<u64, Shape> = HashMap::new();
    let mut accepted = Vec::with_capacity(group.len());
    for sub in group {
        // A submission is all or nothing: its parts' shapes join the group's only if all pass.
        let mut local: HashMap<u64, Shape> = HashMap::new();
        let mut verdict = Ok(());
        for part in &sub.batch.regions {
            let id = part.region_id;
            let shape = local
                .get(&id)
                .or_else(|| shapes.get(&id))
                .copied()
                .unwrap_or_else(|| {
                    index
                        .get(&id)
                        .map_or(Shape { first: 1, last: 0 }, |r| r.shape())
                });
            match shape.after(part) {
                Ok(next) => {
                    local.insert(id, next);
                }
                Err(e) => {
                    verdict = Err(e);
                    break;
                }
            }
        }
        match verdict {
            Ok(()) => {
                shapes.extend(local);
                accepted.push(sub);
            }
            Err(e) => sub.answer(Err(e)),
        }
    }
    accepted
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Receiver, Sender as Unbounded};
    use std::thread::ThreadId;
    use std::time::Duration;

    use super::*;
    use crate::log::RegionBatch;

    /// Records which batch (by its region id) was committed on which thread, in order;
    /// blocks in the commit of region `hold` until released.
    struct Recorder {
        order: Arc<Mutex<Vec<(u64, ThreadId)>>>,
        hold: u64,
        entered: Unbounded<()>,
        release: Receiver<()>,
    }

    impl GroupSink for Recorder {
        type Prepared = ();
        fn commit(&mut self, group: Vec<Submission<()>>) {
            for sub in group {
                let region = sub.batch.regions[0].region_id;
                if region == self.hold {
                    let _ = self.entered.send(());
                    let _ = self.release.recv();
                }
                self.order
                    .lock()
                    .push((region, std::thread::current().id()));
                sub.answer(Ok(WriteReport::default()));
            }
        }
    }

    fn batch(region: u64) -> LogBatch {
        RegionBatch::new(region).into()
    }

    type Order = Arc<Mutex<Vec<(u64, ThreadId)>>>;

    fn committer(hold: u64) -> (GroupCommitter<Recorder>, Order, Receiver<()>, Unbounded<()>) {
        let order = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = channel();
        let (release, release_rx) = channel();
        let sink = Recorder {
            order: order.clone(),
            hold,
            entered: entered_tx,
            release: release_rx,
        };
        let c = GroupCommitter::start("test-writer", sink, 1 << 20).expect("start");
        (c, order, entered, release)
    }

    #[test]
    fn a_waiting_writer_with_nothing_queued_commits_on_its_own_thread() {
        let (c, order, _entered, _release) = committer(u64::MAX);
        c.write(batch(1), (), 1).expect("write");
        c.submit(batch(2), (), 1, None)
            .expect("submit")
            .wait()
            .expect("wait");
        let order = order.lock().clone();
        let me = std::thread::current().id();
        assert_eq!(order.len(), 2);
        assert_eq!(order[0], (1, me), "write() committed inline");
        assert_ne!(order[1].1, me, "submit() went through the writer thread");
        assert_eq!(order[1].0, 2);
    }

    #[test]
    fn a_waiting_writer_goes_after_what_is_queued_before_it() {
        // The writer thread is held inside the commit of region 1; region 2 is queued
        // behind it; a write() of region 3 must not overtake region 2.
        let (c, order, entered, release) = committer(1);
        let c = Arc::new(c);
        let first = c.submit(batch(1), (), 1, None).expect("submit 1");
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("writer thread committing region 1");
        let second = c.submit(batch(2), (), 1, None).expect("submit 2");
        let writer = {
            let c = c.clone();
            std::thread::spawn(move || c.write(batch(3), (), 1))
        };
        // The write() waits for the sink (held by the writer thread) or for the queue.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            order.lock().is_empty(),
            "nothing commits while region 1 is held"
        );
        release.send(()).expect("release");
        first.wait().expect("1");
        second.wait().expect("2");
        writer.join().expect("join").expect("3");
        let regions: Vec<u64> = order.lock().iter().map(|(r, _)| *r).collect();
        assert_eq!(regions, vec![1, 2, 3]);
    }
}
