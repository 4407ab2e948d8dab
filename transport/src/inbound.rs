//! The way in: what a transport received, handed to its node.
//!
//! A transport starts with a channel ([`InboundReceiver`]) that the node reads. A node
//! that reads from a thread of its own may instead [`InboundReceiver::attach`] a sink of its
//! own ([`InboundSink`], for example the store loop's queue): from then on the transport's
//! threads hand every batch straight to it, saving one queue and one thread wake-up per
//! batch received (at a few thousand batches a second per node, a tenth of its context
//! switches).

use crate::transport::Inbound;
use parking_lot::RwLock;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Why an [`InboundSink`] did not take a delivery.
#[derive(Debug)]
pub enum SinkRefused {
    /// No room now; the delivery is given back.
    Full(Inbound),
    /// The node is gone (shutting down): nothing will be taken any more.
    Closed,
}

/// A node's own receiving end, attached with [`InboundReceiver::attach`]. Called on the
/// transport's threads (the TCP transport's runtime; a sending node's thread on the
/// in-process network), so both methods must be quick when there is room.
pub trait InboundSink: Send + Sync {
    /// Takes `m` if there is room now.
    fn try_deliver(&self, m: Inbound) -> Result<(), SinkRefused>;
    /// Takes `m`, waiting for room (the back-pressure that stops a connection's reader
    /// when the node falls behind); false if the node is gone.
    fn deliver(&self, m: Inbound) -> bool;
}

type SinkSlot = Arc<RwLock<Option<Arc<dyn InboundSink>>>>;

/// The receiving end handed out when a transport starts. A node reads it from an async
/// task (`recv().await`) or a thread (`blocking_recv()`), or attaches its own sink.
pub struct InboundReceiver {
    rx: mpsc::Receiver<Inbound>,
    sink: SinkSlot,
}

/// The transport's sending end of the way in.
#[derive(Clone)]
pub(crate) struct InboundSender {
    tx: mpsc::Sender<Inbound>,
    sink: SinkSlot,
}

/// A channel of `capacity` batches, and the slot for a sink attached later.
pub(crate) fn inbound_channel(capacity: usize) -> (InboundSender, InboundReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let sink: SinkSlot = Arc::new(RwLock::new(None));
    (
        InboundSender {
            tx,
            sink: sink.clone(),
        },
        InboundReceiver { rx, sink },
    )
}

impl InboundReceiver {
    /// The next delivery; `None` once the transport is gone.
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.rx.recv().await
    }

    /// The next delivery, blocking this (non-async) thread; `None` once the transport is
    /// gone.
    pub fn blocking_recv(&mut self) -> Option<Inbound> {
        self.rx.blocking_recv()
    }

    /// The next delivery if one is waiting.
    pub fn try_recv(&mut self) -> Result<Inbound, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }

    /// Hands every later delivery straight to `sink`, on the transport's threads, after
    /// what was already waiting in the channel (in its order). Returns false, handing
    /// nothing more, if the sink closed while those were handed over.
    pub fn attach(mut self, sink: Arc<dyn InboundSink>) -> bool {
        // Senders look at the slot under its read lock while they put into the channel:
        // with the write lock held, nothing new enters the channel, and once the slot is
        // set nothing ever does again.
        let mut slot = self.sink.write();
        while let Ok(m) = self.rx.try_recv() {
            if !sink.deliver(m) {
                return false;
            }
        }
        *slot = Some(sink);
        true
    }
}

impl InboundSender {
    fn attached(&self) -> Option<Arc<dyn InboundSink>> {
        self.sink.read().clone()
    }

    /// Hands `m` over if there is room now (an event, or the in-process network's
    /// deliveries, which are lost when the node is behind); gives it back otherwise.
    pub fn try_send(&self, m: Inbound) -> Result<(), Inbound> {
        let slot = self.sink.read();
        match &*slot {
            Some(sink) => {
                let sink = sink.clone();
                drop(slot);
                match sink.try_deliver(m) {
                    Ok(()) => Ok(()),
                    Err(SinkRefused::Full(m)) => Err(m),
                    // Nobody will read it: taken and dropped, like a closed channel's.
                    Err(SinkRefused::Closed) => Ok(()),
                }
            }
            None => self.tx.try_send(m).map_err(|e| e.into_inner()),
        }
    }

    /// Hands `m` over, waiting for room: the back-pressure on a connection's reader.
    /// Returns false when the node is gone.
    pub async fn send(&self, m: Inbound) -> bool {
        let mut m = m;
        loop {
            {
                let slot = self.sink.read();
                if slot.is_none() {
                    match self.tx.try_send(m) {
                        Ok(()) => return true,
                        Err(mpsc::error::TrySendError::Full(back)) => m = back,
                        Err(mpsc::error::TrySendError::Closed(_)) => return false,
                    }
                }
            }
            if let Some(sink) = self.attached() {
                return deliver_waiting(&*sink, m);
            }
            // Wait for room (or for the receiver to attach a sink, which empties the
            // channel), then look again.
            match self.tx.reserve().await {
                Ok(permit) => drop(permit),
                Err(_) if self.attached().is_some() => {}
                Err(_) => return false,
            }
        }
    }
}

/// Delivers to `sink` from a task: at once when there is room; else waiting on this
/// worker thread, handing its other tasks to another thread meanwhile (a multi-threaded
/// runtime's `block_in_place`; elsewhere it simply waits).
fn deliver_waiting(sink: &dyn InboundSink, m: Inbound) -> bool {
    match sink.try_deliver(m) {
        Ok(()) => true,
        Err(SinkRefused::Closed) => false,
        Err(SinkRefused::Full(m)) => {
            let multi = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if multi {
                tokio::task::block_in_place(|| sink.deliver(m))
            } else {
                sink.deliver(m)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::PeerEvent;
    use std::sync::mpsc as std_mpsc;

    /// A sink over a bounded std channel, as the store's queue is.
    struct Queue(std_mpsc::SyncSender<Inbound>);

    impl InboundSink for Queue {
        fn try_deliver(&self, m: Inbound) -> Result<(), SinkRefused> {
            self.0.try_send(m).map_err(|e| match e {
                std_mpsc::TrySendError::Full(m) => SinkRefused::Full(m),
                std_mpsc::TrySendError::Disconnected(_) => SinkRefused::Closed,
            })
        }
        fn deliver(&self, m: Inbound) -> bool {
            self.0.send(m).is_ok()
        }
    }

    fn event(n: u64) -> Inbound {
        Inbound::Event(PeerEvent::Connected { node_id: n })
    }

    #[test]
    fn attaching_hands_over_what_waited_first_then_every_later_delivery() {
        let (tx, rx) = inbound_channel(8);
        assert!(tx.try_send(event(1)).is_ok());
        assert!(tx.try_send(event(2)).is_ok());
        let (qtx, qrx) = std_mpsc::sync_channel(3);
        assert!(rx.attach(Arc::new(Queue(qtx))));
        assert!(tx.try_send(event(3)).is_ok());
        let got: Vec<Inbound> = qrx.try_iter().collect();
        assert_eq!(got, vec![event(1), event(2), event(3)]);
        assert!(tx.try_send(event(4)).is_ok());
        assert!(tx.try_send(event(5)).is_ok());
        assert!(tx.try_send(event(6)).is_ok());
        // The sink is full: a try gives the delivery back.
        assert_eq!(tx.try_send(event(7)).err(), Some(event(7)));
    }

    #[test]
    fn a_waiting_send_resumes_when_the_sink_makes_room_and_fails_once_it_is_gone() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (tx, rx) = inbound_channel(1);
        let (qtx, qrx) = std_mpsc::sync_channel(1);
        assert!(rx.attach(Arc::new(Queue(qtx))));
        assert!(rt.block_on(tx.send(event(1))));
        // Full now: the second send waits on its worker until the reader takes one.
        let tx2 = tx.clone();
        let waiting = rt.spawn(async move { tx2.send(event(2)).await });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished());
        assert_eq!(qrx.recv().unwrap(), event(1));
        assert!(rt.block_on(waiting).unwrap());
        assert_eq!(qrx.recv().unwrap(), event(2));
        drop(qrx);
        assert!(!rt.block_on(tx.send(event(3))));
    }

    #[test]
    fn a_send_waiting_on_a_full_channel_goes_to_a_sink_attached_meanwhile() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = inbound_channel(1);
        assert!(rt.block_on(tx.send(event(1))));
        let tx2 = tx.clone();
        let waiting = rt.spawn(async move { tx2.send(event(2)).await });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished());
        let (qtx, qrx) = std_mpsc::sync_channel(8);
        assert!(rx.attach(Arc::new(Queue(qtx))));
        assert!(rt.block_on(waiting).unwrap());
        let got: Vec<Inbound> = qrx.try_iter().collect();
        assert_eq!(got, vec![event(1), event(2)]);
    }

    #[test]
    fn a_closed_channel_refuses_until_a_sink_is_attached() {
        let (tx, rx) = inbound_channel(1);
        drop(rx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(!rt.block_on(tx.send(event(1))));
        assert_eq!(tx.try_send(event(2)).err(), Some(event(2)));
    }
}
