//! The in-process transport: delivery in order, and each fault hook doing what it says.

mod support;

use flotilla_common::{MessageKind, RaftEnvelope};
use flotilla_transport::{
    Inbound, InboundReceiver, MemoryNetwork, PeerEvent, SendError, SnapshotStatus, Transport,
};
use std::time::{Duration, Instant};
use support::append;

fn drain(rx: &mut InboundReceiver) -> (Vec<RaftEnvelope>, Vec<PeerEvent>) {
    let (mut msgs, mut events) = (Vec::new(), Vec::new());
    while let Ok(item) = rx.try_recv() {
        match item {
            Inbound::Messages { envelopes, .. } => msgs.extend(envelopes),
            Inbound::Event(e) => events.push(e),
        }
    }
    (msgs, events)
}

fn seqs(envelopes: &[RaftEnvelope]) -> Vec<u64> {
    envelopes.iter().map(|e| e.message.index).collect()
}

#[test]
fn delivers_in_order_and_knows_its_peers() {
    let net = MemoryNetwork::new(1);
    let (a, _a_rx) = net.join(1, 4096);
    let (_b, mut b_rx) = net.join(2, 4096);
    for i in 0..100 {
        a.send(append(i % 3, 1, 2, i)).unwrap();
    }
    let (msgs, _) = drain(&mut b_rx);
    assert_eq!(seqs(&msgs), (0..100).collect::<Vec<_>>());
    assert!(matches!(
        a.send(append(1, 1, 9, 0)),
        Err(SendError::UnknownPeer(_))
    ));
    a.remove_peer(2);
    assert!(matches!(
        a.send(append(1, 1, 2, 0)),
        Err(SendError::UnknownPeer(_))
    ));
    a.add_peer(2, "127.0.0.1:1".parse().unwrap());
    a.send(append(1, 1, 2, 100)).unwrap();
    assert_eq!(seqs(&drain(&mut b_rx).0), vec![100]);
}

#[test]
fn a_batch_reaches_each_node_as_one_delivery_in_order_through_the_hooks() {
    let net = MemoryNetwork::new(5);
    let (a, _a_rx) = net.join(1, 4096);
    let (_b, mut b_rx) = net.join(2, 4096);
    let (_c, mut c_rx) = net.join(3, 4096);
    net.set_drop_filter(Some(Box::new(|e| e.region_id == 7)));
    let batch: Vec<RaftEnvelope> = (0..30)
        .map(|i| append(i % 10, 1, 2 + i % 2, i))
        .chain([append(1, 1, 9, 99)])
        .collect();
    let errors = a.send_batch(batch);
    assert_eq!(errors.len(), 1, "the unknown node 9");
    assert!(matches!(errors[0], SendError::UnknownPeer(_)));
    for (rx, node) in [(&mut b_rx, 2u64), (&mut c_rx, 3)] {
        let mut deliveries = Vec::new();
        while let Ok(item) = rx.try_recv() {
            if let Inbound::Messages {
                from_node,
                envelopes,
            } = item
            {
                assert_eq!(from_node, 1);
                deliveries.push(seqs(&envelopes));
            }
        }
        let want: Vec<u64> = (0..30)
            .filter(|i| 2 + i % 2 == node && i % 10 != 7)
            .collect();
        assert_eq!(
            deliveries,
            vec![want],
            "node {node}: one delivery, in order"
        );
    }
    let stats = net.stats();
    assert_eq!((stats.delivered, stats.dropped), (27, 3));
}

#[test]
fn drop_and_duplicate_hooks_follow_their_probabilities_and_seed() {
    let run = |seed| {
        let net = MemoryNetwork::new(seed);
        let (a, _a_rx) = net.join(1, 100_000);
        let (_b, mut b_rx) = net.join(2, 100_000);
        net.set_drop_probability(0.3);
        net.set_duplicate_probability(0.2);
        for i in 0..10_000 {
            a.send(append(1, 1, 2, i)).unwrap();
        }
        (seqs(&drain(&mut b_rx).0), net.stats())
    };
    let (got, stats) = run(42);
    assert_eq!(run(42).0, got, "same seed, same faults");
    assert_ne!(run(43).0, got);
    assert!((2_700..3_300).contains(&stats.dropped), "{stats:?}");
    // Duplicates are drawn among the survivors: ~0.2 * 7000.
    assert!((1_200..1_600).contains(&stats.duplicated), "{stats:?}");
    assert_eq!(got.len() as u64, stats.delivered);
    assert_eq!(stats.delivered, 10_000 - stats.dropped + stats.duplicated);
    // Order is kept, and a duplicate arrives right after its original.
    assert!(got.windows(2).all(|w| w[0] <= w[1]));
    let dups = got.windows(2).filter(|w| w[0] == w[1]).count() as u64;
    assert_eq!(dups, stats.duplicated);
}

#[test]
fn drop_filter_loses_only_what_it_matches() {
    let net = MemoryNetwork::new(1);
    let (a, _a_rx) = net.join(1, 1024);
    let (_b, mut b_rx) = net.join(2, 1024);
    net.set_drop_filter(Some(Box::new(|e| e.region_id == 7)));
    for i in 0..20 {
        a.send(append(i % 10, 1, 2, i)).unwrap();
    }
    let msgs = drain(&mut b_rx).0;
    assert_eq!(msgs.len(), 18);
    assert!(msgs.iter().all(|e| e.region_id != 7));
    net.set_drop_filter(None);
    a.send(append(7, 1, 2, 99)).unwrap();
    assert_eq!(seqs(&drain(&mut b_rx).0), vec![99]);
}

#[test]
fn delay_holds_messages_back_in_order() {
    let net = MemoryNetwork::new(1);
    let (a, _a_rx) = net.join(1, 1024);
    let (_b, mut b_rx) = net.join(2, 1024);
    net.set_delay(Duration::from_millis(150));
    let sent = Instant::now();
    for i in 0..10 {
        a.send(append(1, 1, 2, i)).unwrap();
    }
    assert!(drain(&mut b_rx).0.is_empty(), "delivered before the delay");
    let mut got = Vec::new();
    while got.len() < 10 {
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "delayed messages never came"
        );
        std::thread::sleep(Duration::from_millis(10));
        got.extend(seqs(&drain(&mut b_rx).0));
    }
    assert!(sent.elapsed() >= Duration::from_millis(150));
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert_eq!(net.stats().delayed, 10);
}

#[test]
fn partition_cuts_both_ways_reports_unreachable_once_and_heals() {
    let net = MemoryNetwork::new(1);
    let (a, mut a_rx) = net.join(1, 1024);
    let (b, mut b_rx) = net.join(2, 1024);
    let (c, mut c_rx) = net.join(3, 1024);
    net.isolate(1);
    for i in 0..5 {
        a.send(append(1, 1, 2, i)).unwrap();
        b.send(append(1, 2, 1, i)).unwrap();
        b.send(append(1, 2, 3, i)).unwrap();
    }
    assert!(drain(&mut b_rx).0.is_empty());
    assert_eq!(drain(&mut c_rx).0.len(), 5, "2 -> 3 is not cut");
    let (msgs, events) = drain(&mut a_rx);
    assert!(msgs.is_empty());
    assert_eq!(
        events,
        vec![PeerEvent::Unreachable { node_id: 2 }],
        "once per cut link"
    );
    assert_eq!(drain(&mut b_rx).1, vec![]);
    net.heal();
    a.send(append(1, 1, 2, 5)).unwrap();
    c.send(append(1, 3, 1, 0)).unwrap();
    assert_eq!(seqs(&drain(&mut b_rx).0), vec![5]);
    assert_eq!(seqs(&drain(&mut a_rx).0), vec![0]);
    // One-way cut.
    net.cut(2, 3);
    b.send(append(1, 2, 3, 9)).unwrap();
    c.send(append(1, 3, 2, 9)).unwrap();
    assert!(drain(&mut c_rx).0.is_empty());
    assert_eq!(seqs(&drain(&mut b_rx).0), vec![9]);
}

#[test]
fn snapshots_report_their_outcome() {
    let net = MemoryNetwork::new(1);
    let (a, mut a_rx) = net.join(1, 1024);
    let (_b, mut b_rx) = net.join(2, 1024);
    let mut snap = append(4, 1, 2, 0);
    snap.message.kind = MessageKind::Snapshot;
    snap.message.snapshot = Some(Default::default());
    a.send(snap.clone()).unwrap();
    assert_eq!(drain(&mut b_rx).0, vec![snap.clone()]);
    let status = |status| PeerEvent::SnapshotStatus {
        to_node: 2,
        region_id: 4,
        to_peer: 2,
        status,
    };
    assert_eq!(drain(&mut a_rx).1, vec![status(SnapshotStatus::Finished)]);
    net.cut(1, 2);
    a.send_snapshot(snap).unwrap();
    let events = drain(&mut a_rx).1;
    assert_eq!(
        events,
        vec![
            PeerEvent::Unreachable { node_id: 2 },
            status(SnapshotStatus::Failure)
        ]
    );
}
