//! Many small messages between two and three nodes arrive once and in order; a restarted
//! peer is reconnected to and messages resume.

mod support;

use flotilla_transport::{Inbound, PeerEvent, TcpTransport, Transport};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{append, cluster, config, send_retrying, Inbox};

/// Messages per test run: a million (about 14 s for both tests together in a debug
/// build on 2 busy cores, 1.5 s in release); FLOTILLA_TRANSPORT_MESSAGES overrides.
fn message_count() -> u64 {
    match std::env::var("FLOTILLA_TRANSPORT_MESSAGES") {
        Ok(v) => v
            .parse()
            .expect("FLOTILLA_TRANSPORT_MESSAGES must be a number"),
        Err(_) => 1_000_000,
    }
}

/// Every node sends `total / (n * (n-1))` appends to every other node, spread over 64
/// regions; every receiver checks that from each sender it sees 0, 1, 2, ... with no gap
/// and no repeat, over one connection (no reconnect, no drop). With `batch` > 1 the
/// senders hand over `batch` rounds of appends (to every peer) per `send_batch` call.
fn exchange(n: u64, batch: u64, total: u64) {
    let per_link = total.div_ceil(n * (n - 1));
    let deadline = Instant::now() + Duration::from_secs(120);
    let nodes = cluster(n, |_| {});
    let mut transports = Vec::new();
    let mut receivers = Vec::new();
    for (t, rx) in nodes {
        let t = Arc::new(t);
        let me = t.node_id();
        transports.push(t.clone());
        receivers.push(std::thread::spawn(move || {
            let mut inbox = Inbox::new(rx);
            let mut next: HashMap<u64, u64> = HashMap::new();
            let want = per_link * (n - 1);
            let mut got = 0;
            while got < want {
                assert!(
                    Instant::now() < deadline,
                    "node {me}: {got} of {want} arrived"
                );
                match inbox.next(Duration::from_secs(5)) {
                    Some(Inbound::Messages {
                        from_node,
                        envelopes,
                    }) => {
                        let expect = next.entry(from_node).or_default();
                        for e in envelopes {
                            assert_eq!(e.to_node, me);
                            assert_eq!(e.from_node, from_node);
                            assert_eq!(
                                e.message.index, *expect,
                                "from {from_node}: out of order or repeated"
                            );
                            assert_eq!(e.region_id, *expect % 64);
                            assert_eq!(e.message.entries[0].data.len(), 16);
                            *expect += 1;
                            got += 1;
                        }
                    }
                    Some(Inbound::Event(PeerEvent::Connected { .. })) => {}
                    Some(Inbound::Event(e)) => panic!("node {me}: unexpected {e:?}"),
                    None => panic!("node {me}: nothing for 5 s after {got} of {want}"),
                }
            }
            next
        }));
    }
    let started = Instant::now();
    let senders: Vec<_> = transports
        .iter()
        .map(|t| {
            let t = t.clone();
            std::thread::spawn(move || {
                let me = t.node_id();
                let peers: Vec<u64> = (1..=n).filter(|&p| p != me).collect();
                if batch <= 1 {
                    for seq in 0..per_link {
                        for &p in &peers {
                            send_retrying(&*t, append(seq % 64, me, p, seq), deadline);
                        }
                    }
                    return;
                }
                for first in (0..per_link).step_by(batch as usize) {
                    let mut envelopes = Vec::new();
                    for seq in first..(first + batch).min(per_link) {
                        for &p in &peers {
                            envelopes.push(append(seq % 64, me, p, seq));
                        }
                    }
                    // What a full queue refused is the tail of its destination's part, in
                    // order: sent again before anything newer.
                    while !envelopes.is_empty() {
                        envelopes = t
                            .send_batch(envelopes)
                            .into_iter()
                            .map(|e| {
                                assert!(matches!(e, flotilla_transport::SendError::Full(_)), "{e}");
                                e.into_envelope()
                            })
                            .collect();
                        if !envelopes.is_empty() {
                            assert!(Instant::now() < deadline, "batch refused at the deadline");
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender");
    }
    for (i, r) in receivers.into_iter().enumerate() {
        let next = r.join().expect("receiver");
        assert_eq!(next.len() as u64, n - 1, "node {}", i + 1);
        assert!(next.values().all(|&v| v == per_link));
    }
    let elapsed = started.elapsed();
    for t in &transports {
        let s = t.stats();
        assert_eq!(s.messages_dropped, 0, "{s:?}");
        assert_eq!(s.connects, n - 1, "one connection per ordered pair: {s:?}");
        assert_eq!(s.messages_sent, per_link * (n - 1));
        assert_eq!(s.messages_received, per_link * (n - 1));
        assert!(
            s.frames_sent < s.messages_sent,
            "messages are batched: {s:?}"
        );
    }
    eprintln!(
        "{n} nodes: {} messages in {elapsed:.2?} ({:.0}/s)",
        per_link * n * (n - 1),
        (per_link * n * (n - 1)) as f64 / elapsed.as_secs_f64()
    );
}

#[test]
fn two_nodes_exchange_many_messages_once_and_in_order() {
    exchange(2, 1, message_count());
}

#[test]
fn three_nodes_exchange_many_messages_once_and_in_order() {
    exchange(3, 1, message_count());
}

/// The same through `send_batch`: batches of 32 rounds to both peers, a quarter as many
/// messages.
#[test]
fn three_nodes_exchange_batches_once_and_in_order() {
    exchange(3, 32, message_count() / 4);
}

/// Node 2 stops; node 1 notices (Unreachable) and drops what it queued; node 2 starts
/// again on the same port; node 1 reconnects by itself and messages flow again, in order.
#[test]
fn sender_reconnects_after_peer_restart() {
    let deadline = Instant::now() + Duration::from_secs(30);
    let tweak = |c: &mut flotilla_transport::TransportConfig| {
        c.reconnect_backoff_min = Duration::from_millis(10);
        c.reconnect_backoff_max = Duration::from_millis(200);
    };
    let mut nodes = cluster(2, tweak);
    let (b, b_rx) = nodes.pop().unwrap();
    let (a, a_rx) = nodes.pop().unwrap();
    let b_addr = b.local_addr();
    let mut a_inbox = Inbox::new(a_rx);
    let mut b_inbox = Inbox::new(b_rx);
    let received = |inbox: &mut Inbox, from: u64, count: u64| -> Vec<u64> {
        let mut seqs = Vec::new();
        while (seqs.len() as u64) < count {
            assert!(Instant::now() < deadline);
            match inbox.next(Duration::from_secs(5)) {
                Some(Inbound::Messages {
                    from_node,
                    envelopes,
                }) => {
                    assert_eq!(from_node, from);
                    seqs.extend(envelopes.iter().map(|e| e.message.index));
                }
                Some(Inbound::Event(_)) => {}
                None => panic!("only {} of {count} arrived", seqs.len()),
            }
        }
        seqs
    };
    for seq in 0..1000 {
        send_retrying(&a, append(1, 1, 2, seq), deadline);
    }
    assert_eq!(
        received(&mut b_inbox, 1, 1000),
        (0..1000).collect::<Vec<_>>()
    );

    drop(b_inbox);
    b.shutdown(Duration::from_secs(2));
    // Keep sending until node 1 reports node 2 unreachable.
    let mut seq = 1000;
    loop {
        assert!(Instant::now() < deadline, "node 2's stop was never noticed");
        let _ = a.send(append(1, 1, 2, seq));
        seq += 1;
        if let Some(Inbound::Event(PeerEvent::Unreachable { node_id: 2 })) =
            a_inbox.next(Duration::from_millis(10))
        {
            break;
        }
    }

    // Start node 2 again on the same address (the port may take a moment to be free).
    let (b, b_rx) = loop {
        let mut c = config(2);
        tweak(&mut c);
        c.listen_addr = b_addr;
        match TcpTransport::start(c, [(1, a.local_addr())]) {
            Ok(x) => break x,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot rebind {b_addr}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let mut b_inbox = Inbox::new(b_rx);
    // Probe until the first message gets through the new connection...
    let first = loop {
        assert!(Instant::now() < deadline, "node 1 never reconnected");
        let _ = a.send(append(1, 1, 2, seq));
        seq += 1;
        if let Some(Inbound::Messages { envelopes, .. }) = b_inbox.next(Duration::from_millis(20)) {
            break envelopes.last().unwrap().message.index;
        }
    };
    // ...then everything sent after it arrives, once and in order.
    let mut expect: Vec<u64> = Vec::new();
    let mut got: Vec<u64> = Vec::new();
    // Probes sent after `first` may still be on their way: they come first.
    expect.extend(first + 1..seq);
    for s in seq..seq + 1000 {
        send_retrying(&a, append(1, 1, 2, s), deadline);
        expect.push(s);
    }
    got.extend(received(&mut b_inbox, 1, expect.len() as u64));
    assert_eq!(got, expect);
    let stats = a.stats();
    // Lazy reconnect: the first connection, then the one made after the restart (and no
    // more: the new one stayed up).
    assert_eq!(stats.connects, 2, "{stats:?}");
    // And node 2 can talk back over its own new connection.
    send_retrying(&b, append(1, 2, 1, 0), deadline);
    loop {
        match a_inbox.next(Duration::from_secs(5)) {
            Some(Inbound::Messages {
                from_node: 2,
                envelopes,
            }) => {
                assert_eq!(envelopes[0].message.index, 0);
                break;
            }
            Some(_) => {}
            None => panic!("node 2's message did not arrive"),
        }
    }
}

/// A peer that accepts TCP but never answers the handshake: the queue stops at its bound
/// (refusals counted), and what was queued is dropped (counted) when the attempt fails,
/// with an Unreachable event.
#[test]
fn queue_to_a_silent_peer_is_bounded_and_counted() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = config(1);
    c.queue_messages_max = 100;
    c.handshake_timeout = Duration::from_millis(200);
    c.reconnect_backoff_min = Duration::from_millis(50);
    let (a, a_rx) = TcpTransport::start(c, [(2, silent.local_addr().unwrap())]).unwrap();
    let mut refused = 0;
    for seq in 0..150 {
        if let Err(e) = a.send(append(1, 1, 2, seq)) {
            assert!(matches!(e, flotilla_transport::SendError::Full(_)), "{e}");
            refused += 1;
        }
    }
    assert_eq!(refused, 50);
    let mut inbox = Inbox::new(a_rx);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no Unreachable event");
        if let Some(Inbound::Event(PeerEvent::Unreachable { node_id: 2 })) =
            inbox.next(Duration::from_secs(5))
        {
            break;
        }
    }
    let s = a.stats();
    assert_eq!(s.messages_refused, 50, "{s:?}");
    assert_eq!(s.messages_dropped, 100, "{s:?}");
    assert!(s.connect_failures >= 1, "{s:?}");
    assert_eq!(s.connects, 0);
    // The queue is usable again after the flush.
    a.send(append(1, 1, 2, 150)).unwrap();
}

/// A batch meets the queue's bound like single sends: what does not fit comes back, in
/// order, counted as refused; a destination nobody knows is refused as such.
#[test]
fn a_batch_to_a_silent_peer_is_bounded_and_refused_in_order() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = config(1);
    c.queue_messages_max = 100;
    // Long enough that the queue is not flushed by a failed handshake during the test.
    c.handshake_timeout = Duration::from_secs(30);
    let (a, _a_rx) = TcpTransport::start(c, [(2, silent.local_addr().unwrap())]).unwrap();
    let mut batch: Vec<_> = (0..150).map(|seq| append(1, 1, 2, seq)).collect();
    batch.insert(3, append(1, 1, 9, 0));
    let errors = a.send_batch(batch);
    assert_eq!(errors.len(), 51, "{errors:?}");
    let mut back = Vec::new();
    let mut unknown = 0;
    for e in errors {
        match e {
            flotilla_transport::SendError::Full(e) => back.push(e.message.index),
            flotilla_transport::SendError::UnknownPeer(e) if e.to_node == 9 => unknown += 1,
            e => panic!("unexpected {e}"),
        }
    }
    assert_eq!(unknown, 1);
    assert_eq!(back, (100..150).collect::<Vec<u64>>());
    assert_eq!(a.stats().messages_refused, 50);
}

/// Batches are written by the sending thread itself while the socket takes them; once a
/// receiver that does not read lets the socket fill, a write is taken only in part and
/// the peer's task writes the rest, before anything sent after it. Everything arrives
/// once and in order, and nothing is counted lost.
#[test]
fn batches_written_by_their_sender_arrive_in_order_when_the_socket_fills() {
    // One batch of inbound buffering: the receiving side's reader stops at once, and
    // loopback's socket buffers (a few MiB) fill behind it.
    let mut nodes = cluster(2, |c| c.inbound_batches_max = 1).into_iter();
    let (a, _a_rx) = nodes.next().unwrap();
    let (_b, b_rx) = nodes.next().unwrap();
    const TOTAL: u64 = 512;
    const BATCH: u64 = 8;
    let big = |seq: u64| {
        let mut e = append(seq % 64, 1, 2, seq);
        e.message.entries[0].data = vec![seq as u8; 64 << 10].into();
        e
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    // The first message opens the connection (the task writes what waited for it); once
    // it has arrived the connection is up and idle, and the sender writes itself.
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut inbox = Inbox::new(b_rx);
        let mut next = 0;
        while next == 0 {
            match inbox.next(Duration::from_secs(10)) {
                Some(Inbound::Messages { envelopes, .. }) => {
                    assert_eq!(envelopes.len(), 1);
                    assert_eq!(envelopes[0].message.index, 0);
                    next = 1;
                }
                Some(Inbound::Event(PeerEvent::Connected { .. })) => {}
                other => panic!("the first message: {other:?}"),
            }
        }
        opened_tx.send(()).unwrap();
        // Read again only once the sender has had time to fill the socket.
        std::thread::sleep(Duration::from_secs(1));
        while next < TOTAL {
            match inbox.next(Duration::from_secs(10)) {
                Some(Inbound::Messages { envelopes, .. }) => {
                    for e in envelopes {
                        assert_eq!(e.message.index, next, "out of order or repeated");
                        assert_eq!(e.message.entries[0].data.len(), 64 << 10);
                        assert!(e.message.entries[0].data.iter().all(|&b| b == next as u8));
                        next += 1;
                    }
                }
                Some(Inbound::Event(PeerEvent::Connected { .. })) => {}
                other => panic!("after {next} of {TOTAL}: {other:?}"),
            }
        }
    });
    assert!(a.send_batch(vec![big(0)]).is_empty());
    opened
        .recv_timeout(Duration::from_secs(10))
        .expect("first message");
    for first in (1..TOTAL).step_by(BATCH as usize) {
        let mut envelopes: Vec<_> = (first..(first + BATCH).min(TOTAL)).map(big).collect();
        while !envelopes.is_empty() {
            envelopes = a
                .send_batch(envelopes)
                .into_iter()
                .map(|e| e.into_envelope())
                .collect();
            if !envelopes.is_empty() {
                assert!(Instant::now() < deadline, "batch refused at the deadline");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    reader.join().expect("reader");
    let s = a.stats();
    assert_eq!(s.messages_dropped, 0, "{s:?}");
    assert_eq!(s.messages_sent, TOTAL, "{s:?}");
    assert_eq!(s.connects, 1, "{s:?}");
    assert!(s.writes_inline > 0, "the sender wrote none itself: {s:?}");
    assert!(
        s.writes_inline_partial > 0,
        "the socket never filled under an inline write: {s:?}"
    );
}
