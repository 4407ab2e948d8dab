//! Small raft messages between two nodes on loopback: messages/s, frames/s, MB/s and the
//! average batch, printed next to the raw loopback TCP bandwidth measured in the same run.
//!
//! ```text
//! cargo bench -p flotilla-transport --bench throughput \
//!     [-- --rounds 3 --seconds 3 --io-threads 1 --raw-seconds 1 --frame-target-kib 256]
//! ```
//!
//! One producer thread sends appends (one 16-byte entry each, over 64 regions) from node 1
//! to node 2 as fast as `send` takes them (retrying when the queue is full); one consumer
//! thread reads node 2's inbound channel and checks every message arrives once, in order.
//! The rate counts messages received between the first send and the last arrival. Each
//! round starts two fresh nodes after measuring raw TCP; the median of the rounds is
//! printed last.

use flotilla_common::{Entry, EntryKind, Message, MessageKind, RaftEnvelope};
use flotilla_transport::{Inbound, TcpTransport, Transport, TransportConfig};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// Raw loopback TCP: one thread writes 1 MiB buffers for `seconds`, one reads them.
fn raw_tcp_mb_per_s(seconds: f64) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let buf = vec![7u8; 1 << 20];
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        s.write_all(&buf).unwrap();
    }
    drop(s);
    let total = reader.join().unwrap();
    total as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// Marks the producer's last message.
const SENTINEL: u64 = u64::MAX;

fn append(seq: u64) -> RaftEnvelope {
    let mut m = Message::new(MessageKind::Append, 1, 2, 7);
    m.index = seq;
    m.log_term = 7;
    m.commit = seq;
    m.entries = vec![Entry::new(
        EntryKind::Normal,
        7,
        seq + 1,
        [seq as u8; 16].to_vec(),
    )];
    RaftEnvelope::new(seq % 64, 1, 2, m)
}

/// Single-thread cost of the work every message needs: build it, encode it into a frame,
/// decode it. Tells how much of the two cores the codec alone takes at a given rate.
///
/// Messages go in frames of `BATCH` (the most a reader hands over at once) and are decoded
/// into one reused vector, as a reader does, so that first-touch page faults of a fresh
/// 200 000-message vector are not counted as codec time. The best of `REPEATS` passes is
/// kept: the machine is shared, and the minimum is the cost without interference.
fn codec_ns_per_message() -> (f64, f64, f64) {
    use flotilla_transport::batch::{decode_batch, push_envelope};
    use flotilla_transport::frame::{decode_frame, Decoded, FrameWriter};
    const N: u64 = 200_000;
    const BATCH: u64 = 4096;
    const REPEATS: usize = 5;
    let per = |d: Duration| d.as_nanos() as f64 / N as f64;
    let (mut build, mut encode, mut decode) = (f64::MAX, f64::MAX, f64::MAX);
    let mut w = FrameWriter::new();
    let mut out = Vec::with_capacity(BATCH as usize);
    for _ in 0..REPEATS {
        let t = Instant::now();
        let batch: Vec<RaftEnvelope> = (0..N).map(append).collect();
        build = build.min(per(t.elapsed()));
        w.clear();
        let t = Instant::now();
        for chunk in batch.chunks(BATCH as usize) {
            w.begin();
            for e in chunk {
                push_envelope(&mut w, e).unwrap();
            }
            w.finish();
        }
        encode = encode.min(per(t.elapsed()));
        drop(batch);
        let (mut rest, mut spent, mut seen) = (w.bytes(), Duration::ZERO, 0u64);
        while let Ok(Decoded::Frame {
            payload,
            frame_bytes,
        }) = decode_frame(rest, usize::MAX)
        {
            let t = Instant::now();
            decode_batch(payload, &mut out).unwrap();
            spent += t.elapsed();
            seen += out.len() as u64;
            out.clear();
            rest = &rest[frame_bytes..];
        }
        assert_eq!(seen, N);
        decode = decode.min(per(spent));
    }
    (build, encode, decode)
}

/// What one round measured.
struct Round {
    messages_per_s: f64,
    frames_per_s: f64,
    mb_per_s: f64,
    messages_per_frame: f64,
    raw_mb_per_s: f64,
}

/// Two fresh nodes; node 1 sends to node 2 for `seconds`.
fn round(seconds: f64, io_threads: usize, raw_seconds: f64) -> Round {
    let raw_mb_per_s = raw_tcp_mb_per_s(raw_seconds);
    let start = |id: u64| {
        let mut c = TransportConfig::new(0xBE, id, "127.0.0.1:0".parse().unwrap());
        c.io_threads = io_threads;
        c.frame_target_bytes = arg("--frame-target-kib", 256) as usize * 1024;
        TcpTransport::start(c, []).expect("start")
    };
    let (a, _a_rx) = start(1);
    let (b, mut b_rx) = start(2);
    a.add_peer(2, b.local_addr());

    // The consumer blocks on the channel (a node's router would too) and stops at the
    // sentinel, which arrives last because delivery is in order.
    let consumer = std::thread::spawn(move || {
        let mut next = 0u64;
        loop {
            match b_rx.blocking_recv() {
                Some(Inbound::Messages { envelopes, .. }) => {
                    for e in &envelopes {
                        if e.message.index == SENTINEL {
                            return (next, Instant::now());
                        }
                        assert_eq!(e.message.index, next, "lost or reordered");
                        next += 1;
                    }
                }
                Some(Inbound::Event(_)) => {}
                None => panic!("channel closed at {next}"),
            }
        }
    });
    let started = Instant::now();
    let mut seq = 0u64;
    let send = |e: RaftEnvelope| {
        let mut e = e;
        loop {
            match a.send(e) {
                Ok(()) => return,
                Err(err) => {
                    // The queue is full: back off instead of spinning (counted by the
                    // transport as refused).
                    e = err.into_envelope();
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    };
    while started.elapsed().as_secs_f64() < seconds {
        for _ in 0..1024 {
            send(append(seq));
            seq += 1;
        }
    }
    send(append(SENTINEL));
    let (got, last) = consumer.join().expect("consumer");
    let elapsed = (last - started).as_secs_f64();
    let s = a.stats();
    assert_eq!(got, seq);
    assert_eq!(s.messages_dropped, 0);
    let r = Round {
        messages_per_s: got as f64 / elapsed,
        frames_per_s: s.frames_sent as f64 / elapsed,
        mb_per_s: s.bytes_sent as f64 / elapsed / 1e6,
        messages_per_frame: s.messages_sent as f64 / s.frames_sent.max(1) as f64,
        raw_mb_per_s,
    };
    println!(
        "  round: {:.2} M messages/s, {:.0} frames/s, {:.1} MB/s, {:.0} messages/frame; raw TCP {:.0} MB/s ({got} messages in {elapsed:.2} s, {} sends refused and retried)",
        r.messages_per_s / 1e6,
        r.frames_per_s,
        r.mb_per_s,
        r.messages_per_frame,
        r.raw_mb_per_s,
        s.messages_refused,
    );
    a.shutdown(Duration::from_secs(1));
    b.shutdown(Duration::from_secs(1));
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let seconds = arg("--seconds", 3) as f64;
    let rounds = arg("--rounds", 3).max(1) as usize;
    let io_threads = arg("--io-threads", 1) as usize;
    let raw_seconds = arg("--raw-seconds", 1) as f64;
    let (build, encode, decode) = codec_ns_per_message();
    println!("per message, one thread, best of 5: build {build:.0} ns, encode {encode:.0} ns, decode {decode:.0} ns");
    println!("{rounds} rounds of {seconds} s, io_threads {io_threads} per node:");
    let results: Vec<Round> = (0..rounds)
        .map(|_| round(seconds, io_threads, raw_seconds))
        .collect();
    let m = |f: fn(&Round) -> f64| median(results.iter().map(f).collect());
    println!(
        "median: {:.2} M messages/s, {:.0} frames/s, {:.1} MB/s, {:.0} messages/frame; raw loopback TCP (1 MiB writes, same run) {:.0} MB/s",
        m(|r| r.messages_per_s) / 1e6,
        m(|r| r.frames_per_s),
        m(|r| r.mb_per_s),
        m(|r| r.messages_per_frame),
        m(|r| r.raw_mb_per_s),
    );
    // The machine may be shared: say how busy it was.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!("load average at the end: {}", load.join(" "));
    }
}
