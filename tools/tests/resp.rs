//! The RESP server driven by the `redis` crate and by raw bytes, against the in-memory service.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_tools::resp::{BULK_BYTES_MAX, INLINE_BYTES_MAX};
use flotilla_tools::{
    ClientRoute, ClientSession, KvService, MemoryKvService, PutCondition, RespLimits, RespServer,
    RouteEntry, ServiceFuture,
};
use redis::{Commands, RedisResult, Value};

/// A RESP server on 127.0.0.1:0 on its own runtime; dropping it stops the server.
struct TestServer {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl TestServer {
    fn start(service: Arc<dyn KvService>, limits: RespLimits) -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime
            .block_on(RespServer::bind("127.0.0.1:0", service))
            .unwrap()
            .with_limits(limits);
        let addr = server.local_addr().unwrap();
        runtime.spawn(server.serve(std::future::pending()));
        TestServer {
            addr,
            _runtime: runtime,
        }
    }

    fn memory() -> (TestServer, Arc<MemoryKvService>) {
        let store = Arc::new(MemoryKvService::new());
        (
            TestServer::start(store.clone(), RespLimits::default()),
            store,
        )
    }

    fn client(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://{}/", self.addr)).unwrap();
        let con = client.get_connection().unwrap();
        con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        con
    }

    fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

fn err_text<T: std::fmt::Debug>(r: RedisResult<T>) -> String {
    let e = r.expect_err("expected an error reply");
    format!("{} {}", e.code().unwrap_or(""), e.detail().unwrap_or(""))
}

#[test]
fn get_and_set_with_conditions() {
    let (server, _) = TestServer::memory();
    let mut con = server.client();
    let missing: Option<String> = con.get("k").unwrap();
    assert_eq!(missing, None);
    let _: () = con.set("k", "v1").unwrap();
    assert_eq!(con.get::<_, String>("k").unwrap(), "v1");

    let nx: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("v2")
        .arg("NX")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        nx, None,
        "NX on an existing key writes nothing and answers nil"
    );
    let xx: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("v3")
        .arg("xx")
        .query(&mut con)
        .unwrap();
    assert_eq!(xx.as_deref(), Some("OK"));
    let xx_missing: Option<String> = redis::cmd("SET")
        .arg("new")
        .arg("v")
        .arg("XX")
        .query(&mut con)
        .unwrap();
    assert_eq!(xx_missing, None);
    let nx_missing: Option<String> = redis::cmd("SET")
        .arg("new")
        .arg("v")
        .arg("NX")
        .query(&mut con)
        .unwrap();
    assert_eq!(nx_missing.as_deref(), Some("OK"));
    assert_eq!(con.get::<_, String>("k").unwrap(), "v3");

    let ex = err_text(
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .arg("EX")
            .arg(10)
            .query::<()>(&mut con),
    );
    assert!(ex.contains("SET EX is not supported"), "{ex}");
    let both = err_text(
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .arg("NX")
            .arg("XX")
            .query::<()>(&mut con),
    );
    assert!(both.contains("syntax error"), "{both}");

    // Binary keys and values, and the empty value, round-trip.
    let key = vec![0u8, 255, 13, 10];
    let _: () = con.set(&key, b"\r\n\x00").unwrap();
    assert_eq!(con.get::<_, Vec<u8>>(&key).unwrap(), b"\r\n\x00");
    let _: () = con.set("empty", "").unwrap();
    assert_eq!(
        con.get::<_, Option<Vec<u8>>>("empty").unwrap(),
        Some(vec![])
    );
}

#[test]
fn multi_key_commands() {
    let (server, store) = TestServer::memory();
    let mut con = server.client();
    let _: () = redis::cmd("MSET")
        .arg("a")
        .arg("1")
        .arg("b")
        .arg("2")
        .arg("c")
        .arg("3")
        .query(&mut con)
        .unwrap();
    assert_eq!(store.len(), 3);
    let values: Vec<Option<String>> = con.mget(&["a", "x", "c"]).unwrap();
    assert_eq!(values, vec![Some("1".into()), None, Some("3".into())]);
    let n: i64 = redis::cmd("EXISTS")
        .arg("a")
        .arg("a")
        .arg("x")
        .arg("b")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 3, "a key named twice counts twice, as in Redis");
    let deleted: i64 = con.del(&["a", "x", "b", "b"]).unwrap();
    assert_eq!(deleted, 2);
    let n: i64 = redis::cmd("EXISTS")
        .arg("a")
        .arg("b")
        .arg("c")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 1);
    let odd = err_text(
        redis::cmd("MSET")
            .arg("a")
            .arg("1")
            .arg("b")
            .query::<()>(&mut con),
    );
    assert!(
        odd.contains("wrong number of arguments for 'mset'"),
        "{odd}"
    );
}

#[test]
fn counters() {
    let (server, _) = TestServer::memory();
    let mut con = server.client();
    assert_eq!(
        redis::cmd("INCR").arg("n").query::<i64>(&mut con).unwrap(),
        1
    );
    assert_eq!(
        redis::cmd("INCRBY")
            .arg("n")
            .arg(41)
            .query::<i64>(&mut con)
            .unwrap(),
        42
    );
    assert_eq!(
        redis::cmd("DECR").arg("n").query::<i64>(&mut con).unwrap(),
        41
    );
    assert_eq!(
        redis::cmd("DECRBY")
            .arg("n")
            .arg(50)
            .query::<i64>(&mut con)
            .unwrap(),
        -9
    );
    assert_eq!(con.get::<_, String>("n").unwrap(), "-9");

    let _: () = con.set("text", "abc").unwrap();
    let not_int = err_text(redis::cmd("INCR").arg("text").query::<i64>(&mut con));
    assert_eq!(not_int, "ERR value is not an integer or out of range");
    let bad_delta = err_text(
        redis::cmd("INCRBY")
            .arg("n")
            .arg("1.5")
            .query::<i64>(&mut con),
    );
    assert_eq!(bad_delta, "ERR value is not an integer or out of range");
    let _: () = con.set("max", i64::MAX).unwrap();
    let overflow = err_text(redis::cmd("INCR").arg("max").query::<i64>(&mut con));
    assert!(overflow.contains("overflow"), "{overflow}");
    assert_eq!(
        con.get::<_, i64>("max").unwrap(),
        i64::MAX,
        "a failed INCR writes nothing"
    );
}

#[test]
fn scan_and_range_walk_keys_in_order() {
    let (server, _) = TestServer::memory();
    let mut con = server.client();
    let mut expected = Vec::new();
    for i in 0..120 {
        let key = format!("user:{i:03}");
        let _: () = con.set(&key, i).unwrap();
        expected.push(key);
    }
    for i in 0..30 {
        let _: () = con.set(format!("order:{i:03}"), i).unwrap();
    }

    // By hand, with a small COUNT: every page but the last has a non-zero cursor.
    let mut cursor = 0u64;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("user:*")
            .arg("COUNT")
            .arg(7)
            .query(&mut con)
            .unwrap();
        seen.extend(keys);
        pages += 1;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, expected, "every user key once, in key order");
    assert_eq!(pages, 120 / 7 + 1);

    // The client library's own iterator (it treats the cursor as a u64, like redis-cli).
    let all: Vec<String> = con
        .scan()
        .unwrap()
        .map(|k: RedisResult<String>| k.unwrap())
        .collect();
    assert_eq!(all.len(), 150);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    let orders: Vec<String> = con
        .scan_match("order:0?[05]")
        .unwrap()
        .map(|k: RedisResult<String>| k.unwrap())
        .collect();
    assert_eq!(
        orders,
        [
            "order:000",
            "order:005",
            "order:010",
            "order:015",
            "order:020",
            "order:025"
        ]
    );

    let unknown = err_text(redis::cmd("SCAN").arg(u64::MAX).query::<Value>(&mut con));
    assert!(unknown.contains("invalid cursor"), "{unknown}");
    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("TYPE")
        .arg("hash")
        .query(&mut con)
        .unwrap();
    assert!(
        keys.is_empty() && next != 0,
        "no hashes here, but the walk goes on"
    );

    // RANGE: [start, end) with a limit; an empty end means no end.
    let pairs: Vec<String> = redis::cmd("RANGE")
        .arg("user:010")
        .arg("user:013")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        pairs,
        ["user:010", "10", "user:011", "11", "user:012", "12"]
    );
    let limited: Vec<String> = redis::cmd("RANGE")
        .arg("user:118")
        .arg("")
        .arg("LIMIT")
        .arg(5)
        .query(&mut con)
        .unwrap();
    assert_eq!(limited, ["user:118", "118", "user:119", "119"]);
    let bad = err_text(
        redis::cmd("RANGE")
            .arg("a")
            .arg("b")
            .arg("LIMIT")
            .arg(0)
            .query::<Value>(&mut con),
    );
    assert!(bad.contains("LIMIT must be between 1 and 10000"), "{bad}");
}

#[test]
fn connection_and_introspection_commands() {
    let (server, _) = TestServer::memory();
    let mut con = server.client();
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut con).unwrap(),
        "PONG"
    );
    assert_eq!(
        redis::cmd("PING")
            .arg("hi")
            .query::<String>(&mut con)
            .unwrap(),
        "hi"
    );
    assert_eq!(
        redis::cmd("ECHO")
            .arg("x y")
            .query::<String>(&mut con)
            .unwrap(),
        "x y"
    );
    // What redis-benchmark asks at start.
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut con)
        .unwrap();
    assert!(save.is_empty());
    let set = err_text(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("save")
            .arg("")
            .query::<()>(&mut con),
    );
    assert!(set.contains("not supported"), "{set}");
    let count: i64 = redis::cmd("COMMAND").arg("COUNT").query(&mut con).unwrap();
    let all: Vec<Value> = redis::cmd("COMMAND").query(&mut con).unwrap();
    assert_eq!(all.len() as i64, count);
    let info: Vec<Value> = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("get")
        .arg("nosuch")
        .query(&mut con)
        .unwrap();
    assert_eq!(info.len(), 2);
    assert_eq!(info[1], Value::Nil);
    let docs: Vec<Value> = redis::cmd("COMMAND").arg("DOCS").query(&mut con).unwrap();
    assert!(docs.is_empty());
    let _: () = redis::cmd("SELECT").arg(0).query(&mut con).unwrap();
    let db = err_text(redis::cmd("SELECT").arg(1).query::<()>(&mut con));
    assert!(db.contains("out of range"), "{db}");
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("me")
        .query(&mut con)
        .unwrap();
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut con).unwrap();
    assert_eq!(name, "me");
    assert_eq!(redis::cmd("QUIT").query::<String>(&mut con).unwrap(), "OK");
    assert!(
        redis::cmd("PING").query::<String>(&mut con).is_err(),
        "closed after QUIT"
    );
}

#[test]
fn command_errors_keep_the_connection_usable() {
    let (server, _) = TestServer::memory();
    let mut con = server.client();
    let unknown = err_text(redis::cmd("FLUSHALL").arg("ASYNC").query::<()>(&mut con));
    assert_eq!(
        unknown, "ERR unknown command 'FLUSHALL', with args beginning with: 'ASYNC' ",
        "Redis' wording, trailing space included"
    );
    let arity = err_text(redis::cmd("GET").query::<()>(&mut con));
    assert_eq!(arity, "ERR wrong number of arguments for 'get' command");
    let arity = err_text(redis::cmd("GET").arg("a").arg("b").query::<()>(&mut con));
    assert_eq!(arity, "ERR wrong number of arguments for 'get' command");
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut con).unwrap(),
        "PONG"
    );
}

/// Pipelined commands are answered in order, with the effects in order, also when the
/// pipeline is deeper than the server lets run at once.
#[test]
fn pipelines_answer_in_order() {
    for depth in [1024, 3] {
        let store = Arc::new(MemoryKvService::new());
        let limits = RespLimits {
            pipeline_depth_max: depth,
            ..RespLimits::default()
        };
        let server = TestServer::start(store, limits);
        let mut con = server.client();
        let mut pipe = redis::pipe();
        for i in 0..200 {
            pipe.cmd("SET")
                .arg("k")
                .arg(i)
                .cmd("GET")
                .arg("k")
                .cmd("INCR")
                .arg("n")
                .cmd("BOGUS");
        }
        let replies: Vec<Value> = pipe.ignore_errors().query(&mut con).unwrap();
        assert_eq!(replies.len(), 800);
        for i in 0..200 {
            let got = &replies[i * 4..i * 4 + 4];
            assert_eq!(got[0], Value::Okay);
            assert_eq!(got[1], Value::BulkString(i.to_string().into_bytes()));
            assert_eq!(got[2], Value::Int(i as i64 + 1));
            assert!(matches!(got[3], Value::ServerError(_)), "{:?}", got[3]);
        }
    }
}

/// A service that holds one side back: with `lazy_reads`, a read happens only when its
/// future is polled after a pause and writes happen at once; otherwise the reverse. Either
/// way, a pipeline that submitted a command before the one in front of it had answered would
/// see the wrong value.
struct Laggy {
    store: Arc<MemoryKvService>,
    lazy_reads: bool,
}

const LAG: Duration = Duration::from_millis(3);

impl Laggy {
    fn lag<T: Send + 'static>(
        &self,
        lazy: bool,
        op: impl FnOnce() -> ServiceFuture<T> + Send + 'static,
    ) -> ServiceFuture<T> {
        if lazy {
            Box::pin(async move {
                tokio::time::sleep(LAG).await;
                op().await
            })
        } else {
            op()
        }
    }
}

impl KvService for Laggy {
    fn get(&self, key: Bytes, route: ClientRoute) -> ServiceFuture<Option<Bytes>> {
        let s = self.store.clone();
        self.lag(self.lazy_reads, move || s.get(key, route))
    }
    fn put(
        &self,
        key: Bytes,
        value: Bytes,
        cond: PutCondition,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<bool> {
        let s = self.store.clone();
        self.lag(!self.lazy_reads, move || {
            s.put(key, value, cond, session, route)
        })
    }
    fn delete(
        &self,
        keys: Vec<Bytes>,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<u64> {
        let s = self.store.clone();
        self.lag(!self.lazy_reads, move || s.delete(keys, session, route))
    }
    fn incr_by(
        &self,
        key: Bytes,
        delta: i64,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<i64> {
        let s = self.store.clone();
        self.lag(!self.lazy_reads, move || {
            s.incr_by(key, delta, session, route)
        })
    }
    fn batch_put(
        &self,
        pairs: Vec<(Bytes, Bytes)>,
        session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<()> {
        let s = self.store.clone();
        self.lag(!self.lazy_reads, move || s.batch_put(pairs, session, route))
    }
    fn node_id(&self) -> u64 {
        self.store.node_id()
    }
    fn routes(&self) -> Vec<RouteEntry> {
        self.store.routes()
    }
    fn scan(
        &self,
        start: Bytes,
        end: Option<Bytes>,
        limit: usize,
        route: ClientRoute,
    ) -> ServiceFuture<Vec<(Bytes, Bytes)>> {
        let s = self.store.clone();
        self.lag(self.lazy_reads, move || s.scan(start, end, limit, route))
    }
}

#[test]
fn pipelines_keep_read_write_order_with_a_slow_service() {
    for lazy_reads in [false, true] {
        let laggy = Laggy {
            store: Arc::new(MemoryKvService::new()),
            lazy_reads,
        };
        let server = TestServer::start(Arc::new(laggy), RespLimits::default());
        let mut con = server.client();
        let mut pipe = redis::pipe();
        for i in 0..20 {
            pipe.cmd("SET")
                .arg("k")
                .arg(i)
                .cmd("GET")
                .arg("k")
                .cmd("MGET")
                .arg("k")
                .arg("k");
            pipe.cmd("DEL").arg("k").cmd("EXISTS").arg("k");
        }
        let replies: Vec<Value> = pipe.query(&mut con).unwrap();
        for i in 0..20 {
            let v = Value::BulkString(i.to_string().into_bytes());
            let got = &replies[i * 5..i * 5 + 5];
            let want = [
                Value::Okay,
                v.clone(),
                Value::Array(vec![v.clone(), v]),
                Value::Int(1),
                Value::Int(0),
            ];
            assert_eq!(got, want, "lazy_reads={lazy_reads} round {i}");
        }
    }
}

/// Sends `input` on a fresh connection; returns what the server answered and whether it
/// closed the connection (rather than waiting for more within half a second).
fn send_raw(server: &TestServer, input: &[u8], half_close: bool) -> (String, bool) {
    let mut s = server.raw();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.write_all(input).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[test]
fn malformed_input_gets_an_error_or_a_close_and_others_are_served() {
    let (server, _) = TestServer::memory();
    let mut bystander = server.client();
    let _: () = bystander.set("safe", "yes").unwrap();

    let closing: &[(&str, &[u8], &str)] = &[
        (
            "huge array count",
            b"*99999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            "negative array count",
            b"*-3\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            "negative bulk length",
            b"*1\r\n$-5\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            "oversized bulk",
            b"*2\r\n$3\r\nSET\r\n$999999999\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            "not a bulk",
            b"*1\r\n:5\r\n",
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            "bulk without CRLF",
            b"*1\r\n$4\r\nPINGxx",
            "-ERR Protocol error: bulk string not terminated by CRLF\r\n",
        ),
        (
            "garbage length",
            b"*1\r\n$\xff\xfe\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            "unbalanced quotes",
            b"SET \"a b\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            "header without end",
            &[b'*'; 64],
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
    ];
    for (what, input, want) in closing {
        let (got, closed) = send_raw(&server, input, false);
        assert_eq!(got, *want, "{what}");
        assert!(
            closed,
            "{what}: the connection is closed after a protocol error"
        );
    }

    // Answers before the broken request still come, in order.
    let (got, closed) = send_raw(&server, b"*1\r\n$4\r\nPING\r\n*x\r\n", false);
    assert_eq!(
        got,
        "+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n"
    );
    assert!(closed);

    // An inline line longer than the limit, with no newline.
    let (got, closed) = send_raw(&server, &vec![b'a'; INLINE_BYTES_MAX + 10], false);
    assert_eq!(got, "-ERR Protocol error: too big inline request\r\n");
    assert!(closed);

    // Garbage with a newline is an inline request for an unknown command: an error, and the
    // connection stays usable.
    let (got, closed) = send_raw(&server, b"\x00\x01\xfe garbage\r\nPING\r\n", false);
    assert!(got.starts_with("-ERR unknown command"), "{got:?}");
    assert!(got.ends_with("+PONG\r\n"), "{got:?}");
    assert!(!closed);

    // A request cut off by the client closing its side: no answer, no crash.
    let (got, closed) = send_raw(&server, b"*2\r\n$3\r\nGET\r\n$5\r\nab", true);
    assert_eq!(got, "");
    assert!(closed);

    // `*0` and blank lines ask for nothing and get nothing.
    let (got, closed) = send_raw(&server, b"*0\r\n\r\n\n*1\r\n$4\r\nPING\r\n", false);
    assert_eq!(got, "+PONG\r\n");
    assert!(!closed);

    // A value above the limit, from a real client: an error, then the connection is gone.
    let mut big_client = server.client();
    let big = vec![b'v'; BULK_BYTES_MAX + 1];
    let r: RedisResult<()> = big_client.set("big", big);
    assert!(r.is_err());

    assert_eq!(
        bystander.get::<_, String>("safe").unwrap(),
        "yes",
        "other clients are served throughout"
    );
    let mut fresh = server.client();
    assert_eq!(fresh.get::<_, Option<String>>("big").unwrap(), None);
}

#[test]
fn connections_above_the_limit_are_refused() {
    let limits = RespLimits {
        connections_max: 2,
        ..RespLimits::default()
    };
    let server = TestServer::start(Arc::new(MemoryKvService::new()), limits);
    let mut a = server.client();
    let mut b = server.client();
    assert_eq!(redis::cmd("PING").query::<String>(&mut a).unwrap(), "PONG");
    assert_eq!(redis::cmd("PING").query::<String>(&mut b).unwrap(), "PONG");
    let mut third = BufReader::new(server.raw());
    let mut line = String::new();
    third.read_line(&mut line).unwrap();
    assert_eq!(line, "-ERR max number of clients reached\r\n");
    drop(a);
    // The slot frees once the server notices the close.
    let mut got_in = false;
    for _ in 0..100 {
        let (reply, _) = send_raw(&server, b"PING\r\n", false);
        if reply == "+PONG\r\n" {
            got_in = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(got_in, "a closed connection's slot is given to a new one");
}

/// Debian's redis-benchmark against the server, if it is installed (`apt-get install
/// redis-tools`); docs/operations.md lists the tests that are supported.
#[test]
fn redis_benchmark_runs_without_errors() {
    let probe = std::process::Command::new("redis-benchmark")
        .arg("--version")
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("skipped: redis-benchmark not installed (apt-get install redis-tools)");
        return;
    }
    let (server, store) = TestServer::memory();
    let port = server.addr.port().to_string();
    for extra in [&[][..], &["-P", "16"][..]] {
        let out = std::process::Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-q",
                "-n",
                "2000",
                "-c",
                "8",
            ])
            .args(["-t", "ping_inline,ping_mbulk,set,get,incr,mset"])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "redis-benchmark failed: {stdout}\n{stderr}"
        );
        for test in [
            "PING_INLINE",
            "PING_MBULK",
            "SET",
            "GET",
            "INCR",
            "MSET (10 keys)",
        ] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.contains(&format!("{test}: ")) && l.contains("requests per second")),
                "no result for {test} in {stdout:?}"
            );
        }
        let lower = format!("{stdout}{stderr}").to_lowercase();
        assert!(
            !lower.contains("error"),
            "redis-benchmark saw errors: {stdout}\n{stderr}"
        );
    }
    assert!(store.len() >= 2, "SET and INCR wrote their keys");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = RespServer::bind("127.0.0.1:0", Arc::new(MemoryKvService::new()))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    client.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"+PONG\r\n");

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the idle connection is closed: {closed:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens any more"
    );
}

/// `FLOTILLA.ROUTE`: with the one region's route (region 1, epoch 0/0) the wrapped
/// command runs; with a stale one it answers the single-line `TRYAGAIN EPOCHNOTMATCH`
/// error carrying the region as it is (here: the whole key space, led by node 1), and
/// writes nothing. Malformed wrappers get `-ERR` and the connection goes on.
#[test]
fn flotilla_route_checks_the_route_and_answers_epoch_not_match() {
    let (server, store) = TestServer::memory();
    let mut s = server.raw();
    let mut ask = |req: &[u8]| {
        s.write_all(req).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(
        ask(b"FLOTILLA.ROUTE 1 0 0 SET k v\r\n"),
        "+OK\r\n",
        "the current route"
    );
    assert_eq!(
        ask(b"FLOTILLA.ROUTE 1 0 0 FLOTILLA.SESSION 5 1 SET k w\r\n"),
        "+OK\r\n",
        "around a session"
    );
    let stale = "-TRYAGAIN EPOCHNOTMATCH region 1: epoch changed; now 1 - - 0 0 1\r\n";
    assert_eq!(ask(b"FLOTILLA.ROUTE 1 3 0 SET k stale\r\n"), stale);
    assert_eq!(ask(b"FLOTILLA.ROUTE 1 0 0 GET k\r\n"), "$1\r\nw\r\n");
    assert_eq!(ask(b"FLOTILLA.ROUTE 1 0 2 GET k\r\n"), stale);
    assert_eq!(
        ask(b"FLOTILLA.ROUTE 9 0 0 RANGE a b\r\n"),
        "-TRYAGAIN EPOCHNOTMATCH region 9: epoch changed; now 1 - - 0 0 1\r\n"
    );
    assert_eq!(store.len(), 1);
    assert!(ask(b"FLOTILLA.ROUTE x 0 0 GET k\r\n").starts_with("-ERR region id"));
    assert!(ask(b"FLOTILLA.ROUTE 1 0 0 SCAN 0\r\n").starts_with("-ERR FLOTILLA.ROUTE wraps"));
    assert!(
        ask(b"FLOTILLA.SESSION 5 2 FLOTILLA.ROUTE 1 0 0 SET k v\r\n")
            .starts_with("-ERR FLOTILLA.SESSION wraps one write command, not 'flotilla.route'")
    );
    assert_eq!(ask(b"PING\r\n"), "+PONG\r\n");
    // What a Redis client makes of it: the TRYAGAIN code, which it may retry.
    let mut con = server.client();
    let e = redis::cmd("FLOTILLA.ROUTE")
        .arg(1)
        .arg(3)
        .arg(0)
        .arg("GET")
        .arg("k")
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(e.code(), Some("TRYAGAIN"));
}
