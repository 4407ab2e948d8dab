//! The RESP driver: one task per connection, pipelining up to `pipeline` requests.
//!
//! The task owns the socket and loops: queue as many requests as the schedule allows and
//! the pipeline has room for, then wait for whichever comes first of the socket taking
//! bytes, answers arriving, the next intended send time, or the end. Answers come back in
//! request order (RESP), so each is matched with the front of the in-flight queue. No
//! channel or lock sits between the schedule and the socket: at hundreds of thousands of
//! requests per second on two cores the driver's own cost decides what it can measure.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use flotilla_client::resp::{decode, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Phases, Schedule, SharedProgress, StreamOutcome};
use crate::workload::{Op, OpGen};

/// Connecting one connection is abandoned after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Opens a connection to `addr` (no delay: requests are small and latency matters).
pub async fn connect(addr: &str) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("{addr}: TCP_NODELAY: {e}"))?;
    Ok(stream)
}

/// One RESP request, as its argument count and arguments.
fn put_bulk(out: &mut BytesMut, arg: &[u8]) {
    out.put_u8(b'$');
    put_decimal(out, arg.len() as u64);
    out.put_slice(b"\r\n");
    out.put_slice(arg);
    out.put_slice(b"\r\n");
}

fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// Appends `op` as a RESP request: `SET k v`, `GET k`, or `RANGE start "" LIMIT n`
/// (Flotilla's key-ordered range read; Redis has none).
pub fn encode(op: &Op, out: &mut BytesMut) {
    match op {
        Op::Set { key, value } => {
            out.put_slice(b"*3\r\n$3\r\nSET\r\n");
            put_bulk(out, key);
            put_bulk(out, value);
        }
        Op::Get { key } => {
            out.put_slice(b"*2\r\n$3\r\nGET\r\n");
            put_bulk(out, key);
        }
        Op::Scan { start, limit } => {
            out.put_slice(b"*5\r\n$5\r\nRANGE\r\n");
            put_bulk(out, start);
            put_bulk(out, b"");
            put_bulk(out, b"LIMIT");
            put_bulk(out, limit.to_string().as_bytes());
        }
    }
}

/// What kind of answer a request expects, and the payload bytes it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Set { value_bytes: u64 },
    Get,
    Scan,
}

impl Kind {
    fn of(op: &Op) -> Kind {
        match op {
            Op::Set { value, .. } => Kind::Set {
                value_bytes: value.len() as u64,
            },
            Op::Get { .. } => Kind::Get,
            Op::Scan { .. } => Kind::Scan,
        }
    }
}

/// The payload bytes of a successful answer, or the error it carries.
fn judge(kind: Kind, v: &Value) -> Result<u64, String> {
    match (kind, v) {
        (_, Value::Error(e)) => Err(e.clone()),
        (Kind::Set { value_bytes }, Value::Status(s)) if s == "OK" => Ok(value_bytes),
        (Kind::Get, Value::Bulk(b)) => Ok(b.len() as u64),
        (Kind::Get, Value::Nil) => Ok(0),
        (Kind::Scan, Value::Array(items)) => Ok(items
            .iter()
            .skip(1)
            .step_by(2)
            .map(|v| match v {
                Value::Bulk(b) => b.len() as u64,
                _ => 0,
            })
            .sum()),
        (kind, other) => Err(format!("unexpected answer to {kind:?}: {other:?}")),
    }
}

/// What woke the loop.
enum Event {
    Wrote(std::io::Result<usize>),
    Read(std::io::Result<usize>),
    Due,
    Stop,
}

/// Runs one connection until `phases.stop` (or, for a load stream, until its operations are
/// all answered).
pub async fn run(
    stream: TcpStream,
    pipeline: usize,
    mut gen: OpGen,
    schedule: Schedule,
    phases: Phases,
    progress: SharedProgress,
) -> StreamOutcome {
    assert!(
        pipeline >= 1,
        "a connection needs at least one request in flight"
    );
    let (mut rd, mut wr) = stream.into_split();
    let mut out = StreamOutcome::default();
    // (kind, intended send time, send time) of each request written or queued, in order.
    let mut inflight: VecDeque<(Kind, Instant, Instant)> = VecDeque::with_capacity(pipeline);
    let mut wbuf = BytesMut::with_capacity(16 << 10);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let (mut next_due, interval) = match schedule {
        Schedule::Closed => (phases.start, None),
        Schedule::Open { first, interval } => (first, Some(interval)),
    };
    let mut exhausted = false;
    loop {
        let now = Instant::now();
        if now >= phases.stop {
            break;
        }
        while !exhausted && inflight.len() < pipeline {
            let intended = match interval {
                None => now,
                Some(iv) => {
                    if next_due > now {
                        break;
                    }
                    let t = next_due;
                    next_due += iv;
                    t
                }
            };
            match gen.next_op() {
                Some(op) => {
                    encode(&op, &mut wbuf);
                    inflight.push_back((Kind::of(&op), intended, now));
                }
                None => exhausted = true,
            }
        }
        if exhausted && inflight.is_empty() && wbuf.is_empty() {
            break;
        }
        let waiting_for_schedule = interval.is_some() && !exhausted && inflight.len() < pipeline;
        let event = tokio::select! {
            r = wr.write(&wbuf), if !wbuf.is_empty() => Event::Wrote(r),
            r = rd.read_buf(&mut rbuf) => Event::Read(r),
            _ = tokio::time::sleep_until(next_due), if waiting_for_schedule => Event::Due,
            _ = tokio::time::sleep_until(phases.stop) => Event::Stop,
        };
        match event {
            Event::Wrote(Ok(n)) => wbuf.advance(n),
            Event::Read(Ok(0)) => {
                fail_all(
                    &mut out,
                    &mut inflight,
                    &phases,
                    &progress,
                    "connection closed by the server",
                );
                break;
            }
            Event::Read(Ok(_)) => {
                let done = Instant::now();
                let (mut answered, mut errors) = (0, 0);
                loop {
                    let value = match decode(&mut rbuf) {
                        Ok(Some(v)) => v,
                        Ok(None) => break,
                        Err(e) => {
                            progress.add(answered, errors);
                            let why = format!("bad answer: {e}");
                            fail_all(&mut out, &mut inflight, &phases, &progress, &why);
                            return out;
                        }
                    };
                    let Some((kind, intended, sent)) = inflight.pop_front() else {
                        progress.add(answered, errors);
                        out.measured.record_error("an answer to no request");
                        return out;
                    };
                    answered += 1;
                    let verdict = judge(kind, &value);
                    errors += u64::from(verdict.is_err());
                    if done < phases.measure_from {
                        out.warmup_ops += 1;
                        continue;
                    }
                    match verdict {
                        Ok(bytes) => out.measured.record_ok(
                            intended.into_std(),
                            sent.into_std(),
                            done.into_std(),
                            bytes,
                        ),
                        Err(e) => out.measured.record_error(e),
                    }
                }
                progress.add(answered, errors);
            }
            Event::Wrote(Err(e)) | Event::Read(Err(e)) => {
                fail_all(&mut out, &mut inflight, &phases, &progress, &e.to_string());
                break;
            }
            Event::Due => {}
            Event::Stop => break,
        }
    }
    out
}

/// Counts every request in flight as failed with `why` (the connection is gone).
fn fail_all(
    out: &mut StreamOutcome,
    inflight: &mut VecDeque<(Kind, Instant, Instant)>,
    phases: &Phases,
    progress: &SharedProgress,
    why: &str,
) {
    let now = Instant::now();
    let n = inflight.len() as u64;
    for _ in inflight.drain(..) {
        if now >= phases.measure_from {
            out.measured.record_error(why);
        } else {
            out.warmup_ops += 1;
        }
    }
    if n == 0 {
        out.measured.record_error(why);
    }
    progress.add(n, n.max(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn requests_are_standard_multibulk() {
        let mut b = BytesMut::new();
        encode(
            &Op::Set {
                key: Bytes::from_static(b"k1"),
                value: Bytes::from_static(b"hello"),
            },
            &mut b,
        );
        encode(
            &Op::Get {
                key: Bytes::from_static(b"k1"),
            },
            &mut b,
        );
        encode(
            &Op::Scan {
                start: Bytes::from_static(b"a"),
                limit: 10,
            },
            &mut b,
        );
        let mut want = BytesMut::new();
        for args in [
            &[&b"SET"[..], b"k1", b"hello"][..],
            &[b"GET", b"k1"],
            &[b"RANGE", b"a", b"", b"LIMIT", b"10"],
        ] {
            let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
            flotilla_client::resp::encode_request(&args, &mut want);
        }
        assert_eq!(b, want);
        let mut d = BytesMut::new();
        put_decimal(&mut d, 0);
        put_decimal(&mut d, 1234567890);
        assert_eq!(&d[..], b"01234567890");
    }

    #[test]
    fn answers_are_judged_by_kind() {
        let set = Kind::Set { value_bytes: 16 };
        assert_eq!(judge(set, &Value::Status("OK".into())), Ok(16));
        assert_eq!(
            judge(set, &Value::Error("TRYAGAIN x".into())),
            Err("TRYAGAIN x".into())
        );
        assert!(judge(set, &Value::Nil).is_err());
        assert_eq!(
            judge(Kind::Get, &Value::Bulk(Bytes::from_static(b"abc"))),
            Ok(3)
        );
        assert_eq!(judge(Kind::Get, &Value::Nil), Ok(0));
        let pairs = Value::Array(vec![
            Value::Bulk(Bytes::from_static(b"k")),
            Value::Bulk(Bytes::from_static(b"vv")),
            Value::Bulk(Bytes::from_static(b"k2")),
            Value::Bulk(Bytes::from_static(b"vvv")),
        ]);
        assert_eq!(judge(Kind::Scan, &pairs), Ok(5));
    }
}
