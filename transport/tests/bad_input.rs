//! Bad input over raw sockets closes that connection only; the node keeps serving its
//! other peers and nothing panics. Plus a bounded randomized run of the decoders on
//! garbage (the cargo-fuzz target in transport/fuzz runs the same code unbounded).

mod support;

use flotilla_transport::batch::push_envelope;
use flotilla_transport::frame::{
    decode_frame, decode_value, encode_frame, Decoded, FrameWriter, FRAME_HEADER_BYTES,
    FRAME_MAGIC, PROTOCOL_VERSION,
};
use flotilla_transport::fuzz::decode_untrusted;
use flotilla_transport::{
    Handshake, HandshakeReply, Inbound, SnapshotFrame, StreamKind, TransportConfig,
    HANDSHAKE_FRAME_BYTES_MAX,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::{append, cluster, send_retrying, Inbox, CLUSTER};

const SECRET: &[u8] = b"correct horse";

/// How a raw connection ended, as seen from the client.
#[derive(Debug, PartialEq)]
enum End {
    /// The server closed it; these are the bytes it sent before (a handshake reply).
    Closed(Vec<u8>),
    /// Still open after the wait: the server did not react.
    StillOpen,
}

fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Reads until the server closes the connection, for at most `wait`.
fn wait_end(s: &mut TcpStream, wait: Duration) -> End {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return End::Closed(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return End::Closed(got), // reset: closed too
        }
    }
    End::StillOpen
}

fn hello(cluster: u64, node: u64, secret: &[u8]) -> Vec<u8> {
    encode_frame(&Handshake {
        cluster_id: cluster,
        node_id: node,
        stream: StreamKind::Raft,
        secret: secret.to_vec(),
    })
    .unwrap()
}

/// A raw client that passed the handshake as node `node`.
fn authenticated(addr: SocketAddr, node: u64) -> TcpStream {
    let mut s = raw(addr);
    s.write_all(&hello(CLUSTER, node, SECRET)).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no handshake reply");
        match s.read(&mut buf) {
            Ok(0) => panic!("closed during handshake"),
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if let Ok(Decoded::Frame { payload, .. }) = decode_frame(&reply, HANDSHAKE_FRAME_BYTES_MAX)
        {
            assert_eq!(
                decode_value::<HandshakeReply>(payload).unwrap(),
                HandshakeReply::Accepted { node_id: 1 }
            );
            return s;
        }
    }
}

fn header(len: u32, crc: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    h.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

fn refusal(end: End) -> String {
    let End::Closed(bytes) = end else {
        panic!("not closed")
    };
    let Ok(Decoded::Frame { payload, .. }) = decode_frame(&bytes, HANDSHAKE_FRAME_BYTES_MAX) else {
        panic!("no refusal frame in {bytes:?}");
    };
    match decode_value::<HandshakeReply>(payload).unwrap() {
        HandshakeReply::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn bad_input_closes_only_that_connection() {
    let tweak = |c: &mut TransportConfig| {
        c.secret = SECRET.to_vec();
        c.frame_bytes_max = 64 << 10;
        c.frame_target_bytes = 16 << 10;
        c.snapshot_chunk_bytes = 16 << 10;
        c.handshake_timeout = Duration::from_millis(300);
    };
    // Node 1 is attacked; node 2 is its honest peer throughout. Node id 3 is whom the raw
    // clients claim to be.
    let mut nodes = cluster(2, tweak);
    let (honest, _honest_rx) = nodes.pop().unwrap();
    let (server, server_rx) = nodes.pop().unwrap();
    let addr = server.local_addr();
    let mut inbox = Inbox::new(server_rx);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut next_seq = 0u64;
    // The honest peer sends a few messages and all of them arrive, in order.
    let mut honest_round = |inbox: &mut Inbox| {
        let first = next_seq;
        for _ in 0..50 {
            send_retrying(&honest, append(5, 2, 1, next_seq), deadline);
            next_seq += 1;
        }
        let mut seen = first;
        while seen < next_seq {
            match inbox.next(Duration::from_secs(5)) {
                Some(Inbound::Messages {
                    from_node: 2,
                    envelopes,
                }) => {
                    for e in envelopes {
                        assert_eq!(e.message.index, seen);
                        seen += 1;
                    }
                }
                Some(Inbound::Event(_)) => {}
                other => panic!("honest peer starved: {other:?}"),
            }
        }
    };
    honest_round(&mut inbox);
    let wait = Duration::from_secs(5);
    let mut rng = ChaCha8Rng::seed_from_u64(4);

    // 1. Random bytes instead of a handshake.
    let mut s = raw(addr);
    let mut junk = vec![0u8; 1000];
    rng.fill_bytes(&mut junk);
    s.write_all(&junk).unwrap();
    assert_eq!(wait_end(&mut s, wait), End::Closed(vec![]));
    honest_round(&mut inbox);

    // 2. Wrong cluster id: refused with the reason, then closed.
    let mut s = raw(addr);
    s.write_all(&hello(CLUSTER + 1, 3, SECRET)).unwrap();
    assert!(refusal(wait_end(&mut s, wait)).contains("cluster"));
    honest_round(&mut inbox);

    // 3. Wrong secret, and no secret.
    for secret in [&b"wrong horse"[..], &b""[..]] {
        let mut s = raw(addr);
        s.write_all(&hello(CLUSTER, 3, secret)).unwrap();
        assert!(refusal(wait_end(&mut s, wait)).contains("secret"));
    }
    honest_round(&mut inbox);

    // 4. A handshake frame over the (small) handshake bound.
    let mut s = raw(addr);
    s.write_all(&header(HANDSHAKE_FRAME_BYTES_MAX as u32 + 1, 0))
        .unwrap();
    assert_eq!(wait_end(&mut s, wait), End::Closed(vec![]));

    // 5. Silence: the handshake timeout closes it.
    let mut s = raw(addr);
    assert_eq!(wait_end(&mut s, wait), End::Closed(vec![]));
    honest_round(&mut inbox);

    let refused_before = server.stats().handshakes_refused;
    assert!(refused_before >= 6, "{:?}", server.stats());
    let errors_before = server.stats().decode_errors;

    // After a good handshake: each of these must close the connection.
    let good = {
        let mut w = FrameWriter::new();
        w.begin();
        push_envelope(&mut w, &append(5, 3, 1, 0)).unwrap();
        w.finish();
        w.bytes().to_vec()
    };
    let mut bad_checksum = good.clone();
    bad_checksum[10] ^= 0xff;
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    let garbage_payload = {
        let mut p = vec![0u8; 300];
        rng.fill_bytes(&mut p);
        let mut f = header(p.len() as u32, crc32c::crc32c(&p));
        f.extend_from_slice(&p);
        f
    };
    let spoofed = {
        // Node 3 speaking for node 2.
        let mut w = FrameWriter::new();
        w.begin();
        push_envelope(&mut w, &append(5, 2, 1, 0)).unwrap();
        w.finish();
        w.bytes().to_vec()
    };
    let mut random = vec![0u8; 2000];
    rng.fill_bytes(&mut random);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("random bytes", random, false),
        ("length over the bound", header((64 << 10) + 1, 0), false),
        ("wrong checksum", bad_checksum, false),
        ("bad magic", bad_magic, false),
        ("payload that does not decode", garbage_payload, false),
        ("envelope from another node", spoofed, false),
        // Truncated: half a frame, then the client stops writing.
        ("truncated frame", good[..good.len() / 2].to_vec(), true),
    ];
    let count = cases.len() as u64;
    for (what, bytes, then_half_close) in cases {
        let mut s = authenticated(addr, 3);
        s.write_all(&bytes).unwrap();
        if then_half_close {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert_eq!(wait_end(&mut s, wait), End::Closed(vec![]), "{what}");
        honest_round(&mut inbox);
    }
    let stats = server.stats();
    assert_eq!(stats.decode_errors, errors_before + count, "{stats:?}");
    // A good frame from a raw client is accepted (the test's encoding is the real one).
    let mut s = authenticated(addr, 3);
    s.write_all(&good).unwrap();
    loop {
        match inbox.next(Duration::from_secs(5)) {
            Some(Inbound::Messages {
                from_node: 3,
                envelopes,
            }) => {
                assert_eq!(envelopes, vec![append(5, 3, 1, 0)]);
                break;
            }
            Some(_) => {}
            None => panic!("good frame from a raw client was not delivered"),
        }
    }
    assert_eq!(wait_end(&mut s, Duration::from_millis(300)), End::StillOpen);
    honest_round(&mut inbox);
}

/// Garbage, and valid frames with random bytes flipped, through every decoder; bounded
/// in count (a few seconds in a debug build), seeded so a failure replays.
#[test]
fn decoders_survive_garbage() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xF022);
    let mut valid = FrameWriter::new();
    valid.begin();
    for i in 0..8 {
        push_envelope(&mut valid, &append(i, 1, 2, i)).unwrap();
    }
    valid.finish();
    valid
        .push_value(&SnapshotFrame::Chunk(vec![7u8; 64].into()))
        .unwrap();
    let valid = valid.bytes().to_vec();
    let started = Instant::now();
    let mut valid_frames = 0;
    for round in 0..20_000u32 {
        let bytes = if round % 2 == 0 {
            let mut b = vec![0u8; rng.gen_range(0..512)];
            rng.fill_bytes(&mut b);
            if b.len() >= FRAME_HEADER_BYTES && rng.gen_bool(0.5) {
                // A plausible header in front of garbage, so decoding gets past it.
                let len = (b.len() - FRAME_HEADER_BYTES) as u32;
                let crc = crc32c::crc32c(&b[FRAME_HEADER_BYTES..]);
                b[..FRAME_HEADER_BYTES].copy_from_slice(&header(len, crc));
            }
            b
        } else {
            let mut b = valid.clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..b.len());
                b[at] = rng.gen();
            }
            // Re-seal the first frame so the mutation reaches the payload decoders.
            if let Some(h) = b.get(..FRAME_HEADER_BYTES) {
                let len = u32::from_le_bytes([h[6], h[7], h[8], h[9]]) as usize;
                if let Some(p) = b.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len) {
                    let crc = crc32c::crc32c(p).to_le_bytes();
                    b[10..14].copy_from_slice(&crc);
                }
            }
            b
        };
        valid_frames += decode_untrusted(&bytes);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "decoder run too slow"
        );
    }
    // The run reached the payload decoders, not only the header checks.
    assert!(
        valid_frames > 5_000,
        "{valid_frames} frames passed their checks"
    );
}
