//! A 64 MiB snapshot streams on its own connection while heartbeats keep their rate on
//! the raft connection; a snapshot over the receiver's bound fails cleanly and is reported.

mod support;

use bytes::Bytes;
use flotilla_common::{Message, MessageKind, RaftEnvelope, Snapshot, SnapshotMetadata};
use flotilla_transport::{Inbound, PeerEvent, SendError, SnapshotStatus, Transport};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{cluster, Inbox};

/// Heartbeat period of the test's leader.
const HEARTBEAT: Duration = Duration::from_millis(10);

fn snapshot_message(region: u64, bytes: usize) -> RaftEnvelope {
    let mut m = Message::new(MessageKind::Snapshot, 1, 2, 3);
    // Not a repeating pattern, so a misplaced chunk is caught.
    let data: Vec<u8> = (0..bytes as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8)
        .collect();
    m.snapshot = Some(Box::new(Snapshot {
        metadata: SnapshotMetadata {
            index: 100,
            term: 3,
            ..Default::default()
        },
        data: Bytes::from(data),
    }));
    RaftEnvelope::new(region, 1, 2, m)
}

#[test]
fn big_snapshot_does_not_hold_up_heartbeats() {
    let size = 64 << 20;
    let nodes = cluster(2, |c| {
        c.snapshot_chunk_bytes = 1 << 20;
        // Paced, so the stream lasts long enough (~0.25 s) to measure heartbeats
        // alongside it even in a release build; unpaced it is faster still.
        c.snapshot_bytes_per_sec_max = 256 << 20;
    });
    let mut it = nodes.into_iter();
    let (a, a_rx) = it.next().unwrap();
    let (_b, b_rx) = it.next().unwrap();
    let a = Arc::new(a);
    let snapshot = snapshot_message(9, size);
    let expected = snapshot.clone();
    let deadline = Instant::now() + Duration::from_secs(40);

    // Heartbeats every 10 ms from node 1 to node 2 until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let beat = {
        let (a, stop) = (a.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut m = Message::new(MessageKind::Heartbeat, 1, 2, 3);
                m.commit = n;
                a.send(RaftEnvelope::new(1, 1, 2, m))
                    .expect("heartbeat refused");
                n += 1;
                std::thread::sleep(HEARTBEAT);
            }
        })
    };
    let mut b_inbox = Inbox::new(b_rx);
    // Let heartbeats settle, then start the snapshot.
    let mut beats: Vec<Instant> = Vec::new();
    while beats.len() < 10 {
        assert!(Instant::now() < deadline);
        if let Some(Inbound::Messages { envelopes, .. }) = b_inbox.next(Duration::from_secs(5)) {
            beats.extend(envelopes.iter().map(|_| Instant::now()));
        }
    }
    let started = Instant::now();
    a.send_snapshot(snapshot).expect("snapshot refused");
    let received = 'wait: loop {
        assert!(Instant::now() < deadline, "snapshot never arrived");
        match b_inbox.next(Duration::from_secs(10)) {
            Some(Inbound::Messages { envelopes, .. }) => {
                for e in envelopes {
                    match e.message.kind {
                        MessageKind::Heartbeat => beats.push(Instant::now()),
                        MessageKind::Snapshot => break 'wait e,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            Some(Inbound::Event(_)) => {}
            None => panic!("nothing for 10 s while waiting for the snapshot"),
        }
    };
    let finished = Instant::now();
    stop.store(true, Ordering::Relaxed);
    beat.join().unwrap();
    assert_eq!(received, expected, "snapshot data differs");

    let during: Vec<Instant> = beats
        .iter()
        .copied()
        .filter(|t| *t >= started && *t <= finished)
        .collect();
    let span = finished - started;
    let gaps = during.windows(2).map(|w| w[1] - w[0]);
    let max_gap = gaps.max().unwrap_or(span);
    eprintln!(
        "64 MiB snapshot in {span:.2?}; {} heartbeats meanwhile, max gap {max_gap:.2?}",
        during.len()
    );
    assert!(
        span >= Duration::from_millis(200),
        "pacing not applied: {span:?}"
    );
    // At their normal rate: about one per 10 ms; allow for scheduling on 2 busy cores.
    let expected_beats = span.as_millis() as usize / HEARTBEAT.as_millis() as usize;
    assert!(
        during.len() * 2 >= expected_beats,
        "{} heartbeats in {span:?}",
        during.len()
    );
    assert!(
        max_gap <= Duration::from_millis(100),
        "heartbeats stalled for {max_gap:?}"
    );

    // The sender learns the outcome.
    let mut a_inbox = Inbox::new(a_rx);
    loop {
        match a_inbox.next(Duration::from_secs(10)) {
            Some(Inbound::Event(PeerEvent::SnapshotStatus {
                to_node,
                region_id,
                to_peer,
                status,
            })) => {
                assert_eq!(
                    (to_node, region_id, to_peer, status),
                    (2, 9, 2, SnapshotStatus::Finished)
                );
                break;
            }
            Some(_) => {}
            None => panic!("no snapshot status"),
        }
    }
    assert_eq!(a.stats().snapshots_sent, 1);
}

#[test]
fn oversized_snapshot_is_refused_and_reported() {
    let nodes = cluster(2, |c| {
        c.snapshot_chunk_bytes = 64 << 10;
        c.snapshot_bytes_max = 1 << 20;
    });
    let mut it = nodes.into_iter();
    let (a, a_rx) = it.next().unwrap();
    let (b, _b_rx) = it.next().unwrap();
    a.send_snapshot(snapshot_message(4, (1 << 20) + 1)).unwrap();
    let mut a_inbox = Inbox::new(a_rx);
    loop {
        match a_inbox.next(Duration::from_secs(10)) {
            Some(Inbound::Event(PeerEvent::SnapshotStatus {
                region_id, status, ..
            })) => {
                assert_eq!((region_id, status), (4, SnapshotStatus::Failure));
                break;
            }
            Some(_) => {}
            None => panic!("no snapshot status"),
        }
    }
    assert_eq!(b.stats().snapshots_received, 0);
    assert_eq!(b.stats().snapshots_failed, 1);
    // A snapshot within the bound still goes through afterwards.
    a.send_snapshot(snapshot_message(5, 300 << 10)).unwrap();
    loop {
        match a_inbox.next(Duration::from_secs(10)) {
            Some(Inbound::Event(PeerEvent::SnapshotStatus {
                region_id, status, ..
            })) => {
                assert_eq!((region_id, status), (5, SnapshotStatus::Finished));
                break;
            }
            Some(_) => {}
            None => panic!("no snapshot status"),
        }
    }
}

/// A snapshot to a node that does not answer fails, is reported, and frees its slot: the
/// limit of snapshots in flight holds while it runs and does not leak after.
#[test]
fn snapshot_to_a_silent_node_fails_and_frees_its_slot() {
    // Accepts TCP (the kernel does) but never answers the handshake.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = support::config(1);
    c.snapshots_in_flight_max = 1;
    c.handshake_timeout = Duration::from_millis(300);
    let (a, a_rx) =
        flotilla_transport::TcpTransport::start(c, [(2, silent.local_addr().unwrap())]).unwrap();
    let mut a_inbox = Inbox::new(a_rx);
    for region in [1, 2, 3] {
        a.send_snapshot(snapshot_message(region, 1000))
            .expect("the slot is free");
        // The stream waits for the handshake for 300 ms: a second one is refused meanwhile.
        assert!(matches!(
            a.send_snapshot(snapshot_message(99, 10)),
            Err(SendError::SnapshotsBusy(_))
        ));
        loop {
            match a_inbox.next(Duration::from_secs(10)) {
                Some(Inbound::Event(PeerEvent::SnapshotStatus {
                    region_id, status, ..
                })) => {
                    assert_eq!((region_id, status), (region, SnapshotStatus::Failure));
                    break;
                }
                Some(_) => {}
                None => panic!("no snapshot status for region {region}"),
            }
        }
    }
    assert_eq!(a.stats().snapshots_failed, 3);
}

/// Waits for the sender's verdict on the snapshot of `region`.
fn snapshot_status(inbox: &mut Inbox, region: u64) -> SnapshotStatus {
    loop {
        match inbox.next(Duration::from_secs(20)) {
            Some(Inbound::Event(PeerEvent::SnapshotStatus {
                region_id, status, ..
            })) if region_id == region => return status,
            Some(_) => {}
            None => panic!("no status for the snapshot of region {region}"),
        }
    }
}

/// `snapshot_bytes_per_sec_max` holds a stream to its rate: 1 MiB at 2 MiB/s cannot take
/// less than 0.5 s (sleeps never end early), where loopback moves it in milliseconds.
/// Meanwhile both sides count the stream, with its bytes, as under way; after, nothing.
#[test]
fn a_paced_snapshot_keeps_its_rate_and_shows_its_progress() {
    let size = 1 << 20;
    let nodes = cluster(2, |c| {
        c.snapshot_chunk_bytes = 64 << 10;
        c.snapshot_bytes_per_sec_max = 2 << 20;
    });
    let mut it = nodes.into_iter();
    let (a, a_rx) = it.next().unwrap();
    let (b, b_rx) = it.next().unwrap();
    let started = Instant::now();
    a.send_snapshot(snapshot_message(6, size)).unwrap();
    let deadline = started + Duration::from_secs(20);
    loop {
        let (out, inb) = (a.snapshot_streams(), b.snapshot_streams());
        if out.sending == 1 && out.send_bytes_done > 0 && inb.receiving == 1 {
            assert_eq!(out.send_bytes_total, size as u64, "{out:?}");
            assert!(out.send_bytes_done <= size as u64, "{out:?}");
            assert_eq!(inb.receive_bytes_total, size as u64, "{inb:?}");
            assert!(inb.receive_bytes_done <= size as u64, "{inb:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stream never seen under way: {out:?} {inb:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut a_inbox = Inbox::new(a_rx);
    assert_eq!(snapshot_status(&mut a_inbox, 6), SnapshotStatus::Finished);
    let span = started.elapsed();
    assert!(
        span >= Duration::from_millis(500),
        "1 MiB at 2 MiB/s in {span:?}"
    );
    assert_eq!(a.snapshot_streams(), Default::default());
    let mut b_inbox = Inbox::new(b_rx);
    while b.snapshot_streams() != Default::default() {
        assert!(
            Instant::now() < deadline,
            "receiver still counts the stream"
        );
        let _ = b_inbox.next(Duration::from_millis(10));
    }
}

/// A stream cut half-way (the receiving node goes away) is reported as failed; a later
/// send to the node, back on a new address, delivers the whole snapshot.
#[test]
fn a_snapshot_stream_cut_half_way_fails_and_a_later_one_arrives() {
    let size = 4 << 20;
    let slow = |c: &mut flotilla_transport::TransportConfig| {
        c.snapshot_chunk_bytes = 64 << 10;
        c.snapshot_bytes_per_sec_max = 4 << 20;
        c.snapshot_idle_timeout = Duration::from_secs(2);
    };
    let nodes = cluster(2, slow);
    let mut it = nodes.into_iter();
    let (a, a_rx) = it.next().unwrap();
    let (b, b_rx) = it.next().unwrap();
    let mut a_inbox = Inbox::new(a_rx);
    a.send_snapshot(snapshot_message(7, size)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Half-way (or at least started): the receiver goes away.
    while b.snapshot_streams().receive_bytes_done < (size as u64) / 4 {
        assert!(Instant::now() < deadline, "stream never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(b.snapshot_streams().receive_bytes_done < size as u64);
    drop(b_rx);
    b.shutdown(Duration::from_millis(100));
    assert_eq!(snapshot_status(&mut a_inbox, 7), SnapshotStatus::Failure);
    assert_eq!(a.snapshot_streams(), Default::default());

    let mut c = support::config(2);
    slow(&mut c);
    let (b2, b2_rx) = flotilla_transport::TcpTransport::start(c, []).expect("start");
    a.add_peer(2, b2.local_addr());
    let snapshot = snapshot_message(7, size);
    let expected = snapshot.clone();
    a.send_snapshot(snapshot).unwrap();
    assert_eq!(snapshot_status(&mut a_inbox, 7), SnapshotStatus::Finished);
    let mut b2_inbox = Inbox::new(b2_rx);
    loop {
        match b2_inbox.next(Duration::from_secs(10)) {
            Some(Inbound::Messages { mut envelopes, .. }) => {
                let e = envelopes.pop().expect("one envelope");
                assert_eq!(e, expected, "snapshot data differs");
                break;
            }
            Some(Inbound::Event(_)) => {}
            None => panic!("the second snapshot never arrived"),
        }
    }
    assert_eq!(a.stats().snapshots_sent, 1);
    assert_eq!(a.stats().snapshots_failed, 1);
}
