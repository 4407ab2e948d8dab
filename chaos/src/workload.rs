//! The clients: RESP connections (some with their own `FLOTILLA.SESSION`s and retries) and
//! Rust clients (`flotilla-client`), doing `SET` with unique values, `GET`, `INCR` and
//! `RANGE` over a few hot keys, recording every operation.
//!
//! Outcomes are classified conservatively (see [`crate::history`]): a write is `Fail` only
//! when the answer says it was not applied (`TRYAGAIN ... not leader` or `no leader`, or a
//! refusal such as "not an integer"); a timeout, a broken connection or any other error is
//! `Unknown`. A read that errs is `Fail` (it had no effect either way). A session write
//! retried after an unknown attempt stays `Unknown` unless a retry is answered
//! ([`after_retry`]).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flotilla_client::resp::{decode, encode_request, Value};
use flotilla_client::{Client, ClientConfig, ClientError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::history::{OpKind, Outcome, Recorder};

/// The keys registers live in. Their first bytes differ so that they fall in different
/// regions (regions split the key space by leading bytes).
pub const REGISTER_KEYS: [&str; 4] = ["b/reg0", "h/reg1", "p/reg2", "w/reg3"];
/// The keys counters live in.
pub const COUNTER_KEYS: [&str; 2] = ["e/cnt0", "s/cnt1"];

/// Every hot key (what a `RANGE ""  ""` read covers).
pub fn hot_keys() -> Vec<String> {
    REGISTER_KEYS
        .iter()
        .chain(COUNTER_KEYS.iter())
        .map(|k| k.to_string())
        .collect()
}

/// One RESP request, at most: longer than the server's own request timeout (2 s in the
/// harness's config), so that a server answer normally arrives before the client gives up.
pub const RESP_TIMEOUT: Duration = Duration::from_secs(3);

/// Attempts of one session write by a RESP client that retries (same session each time).
const SESSION_ATTEMPTS_MAX: u32 = 3;

/// How a client talks to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// One RESP connection at a time, one attempt per operation.
    Resp,
    /// RESP with its own `FLOTILLA.SESSION` per write, retried through other nodes with the
    /// same session when the outcome is unknown.
    RespSession,
    /// `flotilla-client`: leader routing, retries, its own sessions.
    Rust,
}

/// What each client does, and for how long.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Every node's RESP address, by node id - 1.
    pub nodes: Vec<String>,
    /// Pause between a client's operations (drawn up to this), keeps histories checkable.
    pub think_max: Duration,
}

/// What to do next.
fn pick_op(rng: &mut ChaCha8Rng, client: &str, n: u64) -> (String, OpKind) {
    let roll = rng.gen_range(0..100);
    if roll < 12 {
        return (String::new(), OpKind::Range);
    }
    if roll < 45 {
        let key = COUNTER_KEYS[rng.gen_range(0..COUNTER_KEYS.len())].to_string();
        let kind = if roll < 30 { OpKind::Incr } else { OpKind::Get };
        return (key, kind);
    }
    let key = REGISTER_KEYS[rng.gen_range(0..REGISTER_KEYS.len())].to_string();
    let kind = if roll < 75 {
        OpKind::Set {
            value: format!("{client}-{n}"),
        }
    } else {
        OpKind::Get
    };
    (key, kind)
}

fn request(key: &str, kind: &OpKind) -> Vec<Bytes> {
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    match kind {
        OpKind::Set { value } => vec![b("SET"), b(key), b(value)],
        OpKind::Get => vec![b("GET"), b(key)],
        OpKind::Incr => vec![b("INCR"), b(key)],
        OpKind::Range => vec![b("RANGE"), b(""), b(""), b("LIMIT"), b("100")],
    }
}

fn is_write(kind: &OpKind) -> bool {
    matches!(kind, OpKind::Set { .. } | OpKind::Incr)
}

/// The outcome of an error line for `kind` (module doc).
pub fn classify_error(kind: &OpKind, line: &str) -> Outcome {
    let error = line.to_string();
    if !is_write(kind) {
        return Outcome::Fail { error };
    }
    let not_applied = (line.starts_with("TRYAGAIN")
        && (line.contains("not leader") || line.contains("no leader")))
        || line.contains("not an integer");
    if not_applied {
        Outcome::Fail { error }
    } else {
        Outcome::Unknown { error }
    }
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The outcome of a reply value for `kind`.
fn outcome_of(kind: &OpKind, v: Value) -> Outcome {
    match (kind, v) {
        (_, Value::Error(line)) => classify_error(kind, &line),
        (OpKind::Set { .. }, Value::Status(s)) if s == "OK" => Outcome::ok(None),
        (OpKind::Get, Value::Bulk(b)) => Outcome::ok(Some(text(&b))),
        (OpKind::Get, Value::Nil) => Outcome::ok(None),
        (OpKind::Incr, Value::Integer(n)) => Outcome::ok(Some(n.to_string())),
        (OpKind::Range, Value::Array(items)) => {
            let mut pairs = Vec::new();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                match (k, v) {
                    (Value::Bulk(k), Value::Bulk(v)) => pairs.push((text(&k), text(&v))),
                    other => {
                        return Outcome::Fail {
                            error: format!("malformed RANGE reply: {other:?}"),
                        }
                    }
                }
            }
            Outcome::Ok {
                value: None,
                pairs: Some(pairs),
            }
        }
        (k, other) => {
            let error = format!("unexpected reply {other:?}");
            if is_write(k) {
                Outcome::Unknown { error }
            } else {
                Outcome::Fail { error }
            }
        }
    }
}

/// A RESP connection that sends one request at a time.
struct RespConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl RespConn {
    async fn connect(addr: &str) -> std::io::Result<RespConn> {
        let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(RespConn {
            stream,
            buf: BytesMut::with_capacity(4096),
        })
    }

    async fn call(&mut self, args: &[Bytes]) -> std::io::Result<Value> {
        let mut out = BytesMut::new();
        encode_request(args, &mut out);
        self.stream.write_all(&out).await?;
        loop {
            match decode(&mut self.buf) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
        }
    }
}

/// Runs one RESP client until `stop` says so. Client `index` starts on node
/// `index % nodes` and moves to the next node whenever its connection fails.
pub async fn resp_client(
    name: String,
    index: usize,
    session: Option<u64>,
    seed: u64,
    config: WorkloadConfig,
    recorder: Recorder,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut node = index % config.nodes.len();
    let mut conn: Option<RespConn> = None;
    let mut seq = 0u64;
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let (key, kind) = pick_op(&mut rng, &name, n);
        let mut args = request(&key, &kind);
        if let (Some(id), true) = (session, is_write(&kind)) {
            seq += 1;
            let mut wrapped = vec![
                Bytes::from_static(b"FLOTILLA.SESSION"),
                Bytes::from(id.to_string()),
                Bytes::from(seq.to_string()),
            ];
            wrapped.append(&mut args);
            args = wrapped;
        }
        let attempts = if session.is_some() && is_write(&kind) {
            SESSION_ATTEMPTS_MAX
        } else {
            1
        };
        let invoke = recorder.now_us();
        let mut outcome = Outcome::Unknown {
            error: "not sent".into(),
        };
        for attempt in 0..attempts {
            if attempt > 0 {
                node = (node + 1) % config.nodes.len();
            }
            let this = attempt_once(&mut conn, &config.nodes[node], &args, &kind).await;
            if matches!(this, Outcome::Unknown { .. } | Outcome::Fail { .. }) && conn.is_none() {
                node = (node + 1) % config.nodes.len();
            }
            outcome = if attempt == 0 {
                this
            } else {
                after_retry(outcome, this)
            };
            // Only an unknown outcome is worth retrying with the same session: the retry
            // either applies the write or answers what the first attempt did.
            if !matches!(outcome, Outcome::Unknown { .. }) {
                break;
            }
        }
        recorder.record(&name, &key, kind, invoke, outcome);
        let think = rng.gen_range(Duration::ZERO..=config.think_max);
        tokio::select! {
            _ = tokio::time::sleep(think) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The outcome of a session write after a retry, given the outcome so far (unknown: that
/// is why it was retried) and the retry's. An answer (`Ok`) settles it: the session makes
/// the retry answer what the earlier attempt did. A failed retry — one that never reached
/// the cluster (a connection refused while its node is down), or was refused as not led —
/// says nothing about the earlier attempt, which may still apply: the write stays
/// unknown.
pub fn after_retry(before: Outcome, retry: Outcome) -> Outcome {
    match (before, retry) {
        (_, ok @ Outcome::Ok { .. }) => ok,
        (Outcome::Unknown { error: first }, Outcome::Fail { error })
        | (Outcome::Unknown { error: first }, Outcome::Unknown { error }) => Outcome::Unknown {
            error: format!("{first}; retry: {error}"),
        },
        (before, _) => before,
    }
}

async fn attempt_once(
    conn: &mut Option<RespConn>,
    addr: &str,
    args: &[Bytes],
    kind: &OpKind,
) -> Outcome {
    if conn.is_none() {
        match RespConn::connect(addr).await {
            Ok(c) => *conn = Some(c),
            // Not connected: nothing was sent, so nothing was applied.
            Err(e) => {
                return Outcome::Fail {
                    error: format!("connect {addr}: {e}"),
                }
            }
        }
    }
    let c = conn.as_mut().expect("connected above");
    match tokio::time::timeout(RESP_TIMEOUT, c.call(args)).await {
        Ok(Ok(v)) => outcome_of(kind, v),
        Ok(Err(e)) => {
            *conn = None;
            let error = format!("{addr}: {e}");
            if is_write(kind) {
                Outcome::Unknown { error }
            } else {
                Outcome::Fail { error }
            }
        }
        Err(_) => {
            // The answer may still come; this connection's stream is no longer in step.
            *conn = None;
            let error = format!("{addr}: no answer in {RESP_TIMEOUT:?}");
            if is_write(kind) {
                Outcome::Unknown { error }
            } else {
                Outcome::Fail { error }
            }
        }
    }
}

/// The outcome of a Rust client call.
fn rust_outcome<T>(
    kind: &OpKind,
    r: Result<T, ClientError>,
    ok: impl FnOnce(T) -> Outcome,
) -> Outcome {
    match r {
        Ok(v) => ok(v),
        Err(ClientError::Server(line)) => classify_error(kind, &line),
        Err(e) => {
            let error = e.to_string();
            if is_write(kind) {
                Outcome::Unknown { error }
            } else {
                Outcome::Fail { error }
            }
        }
    }
}

/// Runs one `flotilla-client` client until `stop` says so. The client's own call timeout is
/// short (3 s), so that its calls end within a fault episode.
pub async fn rust_client(
    name: String,
    seed: u64,
    config: WorkloadConfig,
    recorder: Recorder,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cc = ClientConfig::new(config.nodes.clone());
    cc.call_timeout = Duration::from_secs(3);
    cc.attempt_timeout = Duration::from_millis(1000);
    cc.connect_timeout = Duration::from_millis(500);
    let mut client: Option<Client> = None;
    let mut n = 0u64;
    while !*stop.borrow() {
        if client.is_none() {
            match Client::connect(cc.clone()).await {
                Ok(c) => client = Some(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = client.as_ref().expect("connected above");
        n += 1;
        let (key, kind) = pick_op(&mut rng, &name, n);
        let invoke = recorder.now_us();
        let outcome = match &kind {
            OpKind::Set { value } => {
                rust_outcome(&kind, c.put(key.clone(), value.clone()).await, |_| {
                    Outcome::ok(None)
                })
            }
            OpKind::Get => rust_outcome(&kind, c.get(key.clone()).await, |v| {
                Outcome::ok(v.map(|b| text(&b)))
            }),
            OpKind::Incr => rust_outcome(&kind, c.incr_by(key.clone(), 1).await, |n| {
                Outcome::ok(Some(n.to_string()))
            }),
            OpKind::Range => {
                rust_outcome(&kind, c.scan("", None, 100).await, |pairs| Outcome::Ok {
                    value: None,
                    pairs: Some(pairs.iter().map(|(k, v)| (text(k), text(v))).collect()),
                })
            }
        };
        // A scan reads region by region: each page is linearizable on its own, so its keys
        // are checked one by one like a RANGE (which is what the checker does with both).
        recorder.record(&name, &key, kind, invoke, outcome);
        let think = rng.gen_range(Duration::ZERO..=config.think_max);
        tokio::select! {
            _ = tokio::time::sleep(think) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Reads every hot key through node `node_addr` (one `GET` each), recorded as client
/// [`crate::checker::FINAL_CLIENT`]; answers how many reads succeeded.
pub async fn final_reads(node_addr: &str, recorder: &Recorder) -> usize {
    let mut conn: Option<RespConn> = None;
    let mut ok = 0;
    for key in hot_keys() {
        let invoke = recorder.now_us();
        let outcome = attempt_once(
            &mut conn,
            node_addr,
            &request(&key, &OpKind::Get),
            &OpKind::Get,
        )
        .await;
        if matches!(outcome, Outcome::Ok { .. }) {
            ok += 1;
        }
        recorder.record(
            crate::checker::FINAL_CLIENT,
            &key,
            OpKind::Get,
            invoke,
            outcome,
        );
    }
    ok
}

/// One `SET chaos/probe <value>` through `addr`, not recorded (the key is not a hot key):
/// answers the reply line, or the error.
pub async fn probe_write(addr: &str, value: &str) -> Result<String, String> {
    let mut conn = RespConn::connect(addr).await.map_err(|e| e.to_string())?;
    let args = [
        Bytes::from_static(b"SET"),
        Bytes::from_static(b"chaos/probe"),
        Bytes::copy_from_slice(value.as_bytes()),
    ];
    match tokio::time::timeout(RESP_TIMEOUT, conn.call(&args)).await {
        Ok(Ok(Value::Status(s))) => Ok(s),
        Ok(Ok(Value::Error(e))) => Err(e),
        Ok(Ok(other)) => Err(format!("unexpected reply {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {RESP_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_not_leader_and_refusals_are_certain_failures() {
        let set = OpKind::Set { value: "v".into() };
        let fail = |l: &str| matches!(classify_error(&set, l), Outcome::Fail { .. });
        assert!(fail(
            "TRYAGAIN region 3: not leader (leader on node 2); retry"
        ));
        assert!(fail("ERR value is not an integer or out of range"));
        assert!(!fail("TRYAGAIN request timed out"));
        assert!(!fail("TRYAGAIN proposal dropped: leader changed; retry"));
        assert!(!fail("ERR internal error: storage failure"));
        assert!(matches!(
            classify_error(&OpKind::Get, "TRYAGAIN request timed out"),
            Outcome::Fail { .. }
        ));
    }

    /// A session write whose first attempt was unknown stays unknown when the retry fails
    /// without reaching the cluster (seed 14731143265426360427 recorded such a write as
    /// failed, then read its value: "failed write visible").
    #[test]
    fn a_failed_retry_leaves_an_unknown_write_unknown() {
        let unknown = |e: &str| Outcome::Unknown { error: e.into() };
        let fail = |e: &str| Outcome::Fail { error: e.into() };
        let r = after_retry(unknown("connection closed"), fail("connect: refused"));
        assert!(
            matches!(r, Outcome::Unknown { ref error } if error.contains("refused")),
            "{r:?}"
        );
        let r = after_retry(unknown("timed out"), unknown("timed out"));
        assert!(matches!(r, Outcome::Unknown { .. }), "{r:?}");
        let r = after_retry(unknown("timed out"), Outcome::ok(None));
        assert_eq!(r, Outcome::ok(None));
    }
}
