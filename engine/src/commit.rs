//! Group commit: one writer thread takes every submission queued by any region, hands them
//! to the log implementation as one group (one write, one sync), and the implementation
//! answers each submitter. The number of syncs therefore follows the disk's speed, not the
//! number of regions.

use std::collections::HashMap;
use std::thread::JoinHandle;

// std's channels rather than crossbeam's: a crossbeam receiver that finds its channel empty
// yields the CPU several times before it sleeps, and on a machine whose cores are all busy
// each yield is a context switch (docs/benchmarks.md).
use std::sync::mpsc::{sync_channel, Receiver, SyncSender as Sender};

use crate::error::{EngineError, Result};
use crate::index::{RegionIndex, Shape};
use crate::log::{LogBatch, WriteReport, WriteTicket};

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
}

/// What a log implementation does with one group: validate, write, sync once, update its
/// index, and send every submission its answer.
pub(crate) trait GroupSink: Send + 'static {
    /// What the submitter prepares.
    type Prepared: Send + 'static;
    /// Commits the group and answers every submission in it.
    fn commit(&mut self, group: Vec<Submission<Self::Prepared>>);
}

/// The writer thread and the queue in front of it.
pub(crate) struct GroupCommitter<P> {
    tx: Option<Sender<Submission<P>>>,
    handle: Option<JoinHandle<()>>,
}

impl<P: Send + 'static> GroupCommitter<P> {
    /// Starts the writer thread; a group holds submissions up to `batch_bytes_max` (the first
    /// one always goes in).
    pub fn start<S: GroupSink<Prepared = P>>(
        name: &str,
        mut sink: S,
        batch_bytes_max: u64,
    ) -> Result<Self> {
        let (tx, rx): (Sender<Submission<P>>, Receiver<Submission<P>>) =
            sync_channel(QUEUE_LEN_MAX);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
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
                    sink.commit(group);
                }
            })
            .map_err(|e| EngineError::io("spawn log writer thread", e))?;
        Ok(GroupCommitter {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Queues a batch; blocks while the queue is full.
    pub fn submit(&self, batch: LogBatch, prepared: P, bytes: u64) -> Result<WriteTicket> {
        let (reply, rx) = sync_channel(1);
        let tx = self.tx.as_ref().ok_or(EngineError::Closed)?;
        tx.send(Submission {
            batch,
            prepared,
            bytes,
            reply,
        })
        .map_err(|_| EngineError::Closed)?;
        Ok(WriteTicket { rx })
    }
}

impl<P> Drop for GroupCommitter<P> {
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
            Err(e) => {
                let _ = sub.reply.send(Err(e));
            }
        }
    }
    accepted
}
