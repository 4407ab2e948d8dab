//! [`Client`]: routing, retries and the key-value calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_common::session_pool::SessionPool;
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::connection::{frame, NodeConn};
use crate::error::{classify, ClientError, ServerFailure};
use crate::join::{join_all, BoxFuture};
use crate::resp::Value;
use crate::routing::{parse_regions, RegionCache, RegionInfo};

/// Default of [`ClientConfig::call_timeout`]: longer than an election and a few redirects.
pub const CALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Default of [`ClientConfig::attempt_timeout`]: one node that stopped answering should not
/// take the whole call's time; a healthy node answers far sooner.
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);

/// Default of [`ClientConfig::connect_timeout`].
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

/// Default of [`ClientConfig::backoff`]: a first pause of at most 10 ms (a redirect that
/// raced an election), doubling to at most 500 ms.
pub const BACKOFF_DEFAULT: Backoff = Backoff {
    base: Duration::from_millis(10),
    max: Duration::from_millis(500),
};

/// Pairs asked for in one `RANGE` request of [`Client::scan`]. The server allows 10 000; a
/// smaller page keeps one reply (and the time one region is held by one request) small.
pub const SCAN_PAGE_PAIRS_MAX: usize = 1000;

/// Redirects to a hinted leader that are followed at once; after that the client pauses,
/// since hints that keep changing mean an election is still going on.
const REDIRECTS_WITHOUT_PAUSE_MAX: u32 = 2;

/// Retries at once after `EPOCHNOTMATCH` answers (each with the regions that answer
/// carried), in a row; after that the client pauses and refreshes its whole map, since
/// regions that keep changing under a request, or nodes that disagree, are not fixed by
/// asking again right away.
const EPOCH_RETRIES_WITHOUT_PAUSE_MAX: u32 = 4;

/// The routing table is fetched at most this often, so many calls failing together cost one
/// refresh, not one each.
const REFRESH_INTERVAL_MIN: Duration = Duration::from_millis(50);

/// How to reach a cluster, and how long to keep trying.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Client (RESP) addresses, `host:port`. List every node: the client learns which node
    /// is which from the nodes themselves, and a leader on a node not listed here is only
    /// reached through another node's forwarding.
    pub nodes: Vec<String>,
    /// Every call succeeds or fails within this time, retries included.
    pub call_timeout: Duration,
    /// One request to one node is abandoned (and retried) after this time.
    pub attempt_timeout: Duration,
    /// Opening a connection (and learning the node's id) is abandoned after this time.
    pub connect_timeout: Duration,
    /// Pauses between retries.
    pub backoff: Backoff,
}

impl ClientConfig {
    /// The nodes at `nodes`, with the default timeouts and back-off.
    pub fn new<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            nodes: nodes.into_iter().map(Into::into).collect(),
            call_timeout: CALL_TIMEOUT_DEFAULT,
            attempt_timeout: ATTEMPT_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            backoff: BACKOFF_DEFAULT,
        }
    }

    fn check(&self) -> Result<(), ClientError> {
        let bad = |why: &str| Err(ClientError::Config(why.into()));
        if self.nodes.is_empty() {
            return bad("no node addresses");
        }
        if self.call_timeout.is_zero()
            || self.attempt_timeout.is_zero()
            || self.connect_timeout.is_zero()
        {
            return bad("timeouts must be above zero");
        }
        if self.backoff.base.is_zero() || self.backoff.max < self.backoff.base {
            return bad("back-off needs 0 < base <= max");
        }
        Ok(())
    }
}

/// One region's write of a batch, in flight.
type WriteFuture<'a> = BoxFuture<'a, Result<(), ClientError>>;

/// One write of a [`Client::batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write `value` under `key`.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Remove `key` (nothing happens if it has no value).
    Delete {
        /// The key.
        key: Bytes,
    },
}

impl Op {
    /// A put.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A delete.
    pub fn delete(key: impl Into<Bytes>) -> Op {
        Op::Delete { key: key.into() }
    }

    /// The key it writes.
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// A region-aware connection to a Flotilla cluster. Cheap to clone; clones share
/// connections, the region cache and the session pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    nodes: Vec<NodeConn>,
    cache: RwLock<RegionCache>,
    /// One (client id, sequence) per write in flight; a write keeps its pair across retries.
    sessions: Arc<SessionPool>,
    /// When the routing table was last fetched; held while fetching (one fetch at a time).
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    /// Round-robin position for requests whose leader is unknown.
    next_node: AtomicUsize,
    /// `FLOTILLA.REGIONS` requests sent so far.
    table_fetches: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.inner.config.nodes)
            .field("regions", &self.inner.cache.read().all().len())
            .finish()
    }
}

fn word(w: &'static str) -> Bytes {
    Bytes::from_static(w.as_bytes())
}

fn unexpected(command: &str, v: &Value) -> ClientError {
    ClientError::Protocol(format!("{command} answered {v:?}"))
}

fn ok_status(command: &'static str) -> impl Fn(Value) -> Result<(), ClientError> {
    move |v| match v {
        Value::Status(s) if s == "OK" => Ok(()),
        other => Err(unexpected(command, &other)),
    }
}

fn count(v: Value) -> Result<u64, ClientError> {
    match v {
        Value::Integer(n) if n >= 0 => Ok(n as u64),
        other => Err(unexpected("DEL", &other)),
    }
}

/// `RANGE`'s flat `[k1, v1, k2, v2, …]` as pairs.
fn pairs(v: Value) -> Result<Vec<(Bytes, Bytes)>, ClientError> {
    let Value::Array(items) = v else {
        return Err(unexpected("RANGE", &v));
    };
    if items.len() % 2 != 0 {
        return Err(ClientError::Protocol(
            "RANGE answered an odd number of items".into(),
        ));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match (k, v) {
            (Value::Bulk(k), Value::Bulk(v)) => out.push((k, v)),
            (k, _) => return Err(unexpected("RANGE", &k)),
        }
    }
    Ok(out)
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Bytes {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    Bytes::from(next)
}

impl Client {
    /// Connects to the nodes of `config`, learns their ids and the region map.
    ///
    /// Succeeds when at least one node answers; the others are connected to when a request
    /// needs them. Fails with [`ClientError::Config`] for an unusable configuration and with
    /// the last node's error when none answers.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.check()?;
        let nodes = config
            .nodes
            .iter()
            .map(|a| NodeConn::new(a.clone(), config.connect_timeout))
            .collect();
        // Random, so that client processes do not share ids (the server's own writes use
        // ids derived from its node id and start time).
        let sessions = SessionPool::new(rand::random());
        let client = Client {
            inner: Arc::new(Inner {
                config,
                nodes,
                cache: RwLock::new(RegionCache::default()),
                sessions,
                refreshed: tokio::sync::Mutex::new(None),
                next_node: AtomicUsize::new(0),
                table_fetches: AtomicU64::new(0),
            }),
        };
        let hellos: Vec<BoxFuture<'_, Result<(), ClientError>>> = client
            .inner
            .nodes
            .iter()
            .map(|n| -> BoxFuture<'_, Result<(), ClientError>> { Box::pin(n.connect()) })
            .collect();
        let mut last = None;
        let mut up = 0;
        for (node, r) in client.inner.nodes.iter().zip(join_all(hellos).await) {
            match r {
                Ok(()) => up += 1,
                Err(e) => {
                    tracing::debug!(addr = node.addr(), error = %e, "node not reachable at connect");
                    last = Some(e);
                }
            }
        }
        if up == 0 {
            return Err(last.unwrap_or_else(|| ClientError::Config("no node addresses".into())));
        }
        if let Err(e) = client.refresh_regions().await {
            // Requests still work without a map: they go to any node and follow its hints.
            tracing::debug!(error = %e, "no routing table at connect");
        }
        *client.inner.refreshed.lock().await = Some(Instant::now());
        Ok(client)
    }

    /// Fetches the routing table (`FLOTILLA.REGIONS`) from the first node that answers, in
    /// turn, and replaces the cache with it. Calls do this themselves when the server says
    /// the cache is out of date.
    pub async fn refresh_regions(&self) -> Result<(), ClientError> {
        let inner = &self.inner;
        let n = inner.nodes.len();
        let first = inner.next_node.fetch_add(1, Ordering::Relaxed);
        // Every region of the cluster, as the node's gossip knows them (a node holds only
        // some once the cluster outgrows the replica count); a server without `ALL` answers
        // an error, and is asked for its own replicas' regions instead.
        let ask_all = frame(&[word("FLOTILLA.REGIONS"), word("ALL")]);
        let ask_own = frame(&[word("FLOTILLA.REGIONS")]);
        let mut last = None;
        for i in 0..n {
            let node = &inner.nodes[(first + i) % n];
            let call = |ask: Bytes| async move {
                inner.table_fetches.fetch_add(1, Ordering::Relaxed);
                tokio::time::timeout(inner.config.attempt_timeout, node.call(ask))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::Timeout {
                            attempts: 1,
                            last: None,
                        })
                    })
            };
            let reply = match call(ask_all.clone()).await {
                Ok(Value::Error(_)) => call(ask_own.clone()).await,
                r => r,
            };
            let regions = match reply {
                Ok(Value::Error(e)) => Err(ClientError::Server(e)),
                Ok(v) => parse_regions(v),
                Err(e) => Err(e),
            };
            match regions {
                Ok(regions) if !regions.is_empty() => {
                    inner.cache.write().replace(regions);
                    return Ok(());
                }
                Ok(_) => {
                    last = Some(ClientError::Server(format!(
                        "{} hosts no regions yet",
                        node.addr()
                    )))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Config("no node addresses".into())))
    }

    /// How many `FLOTILLA.REGIONS` requests this client (and its clones) has sent: one per
    /// node asked by [`Client::refresh_regions`]. A region that split or merged costs none
    /// when the node's `EPOCHNOTMATCH` answer carries the new regions.
    pub fn routing_table_fetches(&self) -> u64 {
        self.inner.table_fetches.load(Ordering::Relaxed)
    }

    /// The cached regions in key order, with the leaders last heard of.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.inner.cache.read().all()
    }

    /// The value of `key`, if it has one. Linearizable: served by the region's leader.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        let key = key.into();
        let request = [word("GET"), key.clone()];
        self.call(&key, &request, self.deadline(), |v| match v {
            Value::Bulk(b) => Ok(Some(b)),
            Value::Nil => Ok(None),
            other => Err(unexpected("GET", &other)),
        })
        .await
    }

    /// Writes `value` under `key`. Applied once, even when retried.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let args = vec![word("SET"), key.into(), value.into()];
        self.write(args, self.deadline(), ok_status("SET")).await
    }

    /// Writes `value` under `key` only if `key` has no value; answers whether it wrote.
    /// Retries are answered as the first attempt was, so a retried call that wrote still
    /// answers `true`.
    pub async fn put_if_absent(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<bool, ClientError> {
        let args = vec![word("SET"), key.into(), value.into(), word("NX")];
        self.write(args, self.deadline(), |v| match v {
            Value::Status(s) if s == "OK" => Ok(true),
            Value::Nil => Ok(false),
            other => Err(unexpected("SET NX", &other)),
        })
        .await
    }

    /// Deletes `keys` and answers how many had a value (a key listed twice counts once).
    ///
    /// One `DEL` per region, sent concurrently; each is atomic, the whole is not. On an
    /// error, the regions that answered before it may have been deleted.
    pub async fn delete<I, K>(&self, keys: I) -> Result<u64, ClientError>
    where
        I: IntoIterator<Item = K>,
        K: Into<Bytes>,
    {
        let mut keys: Vec<Bytes> = keys.into_iter().map(Into::into).collect();
        keys.sort();
        keys.dedup();
        let deadline = self.deadline();
        let writes: Vec<BoxFuture<'_, Result<u64, ClientError>>> = self
            .by_region(keys, |k| k)
            .into_values()
            .map(|group| -> BoxFuture<'_, Result<u64, ClientError>> {
                let mut args = Vec::with_capacity(group.len() + 1);
                args.push(word("DEL"));
                args.extend(group);
                Box::pin(self.write(args, deadline, count))
            })
            .collect();
        let mut total = 0;
        for r in join_all(writes).await {
            total += r?;
        }
        Ok(total)
    }

    /// Adds `delta` to the decimal integer under `key` (a missing key counts as 0) and
    /// answers the new value. Atomic, and applied once even when retried.
    pub async fn incr_by(&self, key: impl Into<Bytes>, delta: i64) -> Result<i64, ClientError> {
        let args = vec![word("INCRBY"), key.into(), Bytes::from(delta.to_string())];
        self.write(args, self.deadline(), |v| match v {
            Value::Integer(n) => Ok(n),
            other => Err(unexpected("INCRBY", &other)),
        })
        .await
    }

    /// Up to `limit` pairs with `start <= key < end` (`None`: to the end of the key space),
    /// in key order, across regions.
    ///
    /// Reads region by region, each from its leader, in pages of at most
    /// [`SCAN_PAGE_PAIRS_MAX`]. Each page is linearizable; the scan as a whole is not a
    /// snapshot (a write between pages may or may not be seen).
    pub async fn scan(
        &self,
        start: impl Into<Bytes>,
        end: Option<Bytes>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, ClientError> {
        let deadline = self.deadline();
        let end = end.filter(|e| !e.is_empty());
        let mut from: Bytes = start.into();
        let mut out = Vec::new();
        while out.len() < limit {
            if end.as_ref().is_some_and(|e| from >= *e) {
                break;
            }
            // The page stops at the end of the cached region, so one leader can answer it.
            // If the cache is stale the server walks on into the next region itself.
            let region_end = self
                .inner
                .cache
                .read()
                .locate(&from)
                .map(|r| r.end_key.clone())
                .filter(|e| !e.is_empty());
            let page_end = match (region_end, &end) {
                (Some(r), Some(e)) => Some(r.min(e.clone())),
                (Some(r), None) => Some(r),
                (None, e) => e.clone(),
            };
            let want = (limit - out.len()).min(SCAN_PAGE_PAIRS_MAX);
            let request = [
                word("RANGE"),
                from.clone(),
                page_end.clone().unwrap_or_default(),
                word("LIMIT"),
                Bytes::from(want.to_string()),
            ];
            let page = self.call(&from, &request, deadline, pairs).await?;
            // Checked so a wrong answer cannot send the loop backwards or past the page.
            let in_order = page.windows(2).all(|w| w[0].0 < w[1].0);
            let in_range = page.first().is_none_or(|(k, _)| *k >= from)
                && page
                    .last()
                    .is_none_or(|(k, _)| page_end.as_ref().is_none_or(|e| k < e));
            if page.len() > want || !in_order || !in_range {
                return Err(ClientError::Protocol(
                    "RANGE answered keys out of order or out of range".into(),
                ));
            }
            let full = page.len() == want;
            let last = page.last().map(|(k, _)| successor(k));
            out.extend(page);
            match (full, last, page_end) {
                (true, Some(next), _) => from = next,
                (_, _, Some(pe)) if end.as_ref() != Some(&pe) => from = pe,
                _ => break,
            }
        }
        Ok(out)
    }

    /// Applies `ops` and answers one result per op, in order.
    ///
    /// The ops are grouped by region: one `MSET` for a region's puts and one `DEL` for its
    /// deletes, all sent concurrently, each applied once even when retried. A region's puts
    /// are atomic, and so are its deletes; a batch is **not** atomic across regions (or
    /// between a region's puts and deletes), so some ops may fail while others succeed.
    /// When a key appears in several ops the last one decides its value, and the earlier
    /// ones get its result.
    pub async fn batch(&self, ops: Vec<Op>) -> Vec<Result<(), ClientError>> {
        let deadline = self.deadline();
        let mut last_of: HashMap<&Bytes, usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            last_of.insert(op.key(), i);
        }
        let effective: Vec<(usize, &Op)> = ops
            .iter()
            .enumerate()
            .filter(|(i, op)| last_of.get(op.key()) == Some(i))
            .collect();
        let mut writes: Vec<(Vec<usize>, WriteFuture<'_>)> = Vec::new();
        for group in self.by_region(effective, |(_, op)| op.key()).into_values() {
            let (mut put_ops, mut mset) = (Vec::new(), vec![word("MSET")]);
            let (mut del_ops, mut del) = (Vec::new(), vec![word("DEL")]);
            for (i, op) in group {
                match op {
                    Op::Put { key, value } => {
                        put_ops.push(i);
                        mset.push(key.clone());
                        mset.push(value.clone());
                    }
                    Op::Delete { key } => {
                        del_ops.push(i);
                        del.push(key.clone());
                    }
                }
            }
            if !put_ops.is_empty() {
                writes.push((
                    put_ops,
                    Box::pin(self.write(mset, deadline, ok_status("MSET"))),
                ));
            }
            if !del_ops.is_empty() {
                let f = self.write(del, deadline, count);
                writes.push((del_ops, Box::pin(async move { f.await.map(|_| ()) })));
            }
        }
        let (indices, futures): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
        let mut results: Vec<Option<Result<(), ClientError>>> = vec![None; ops.len()];
        for (ops_of_write, r) in indices.into_iter().zip(join_all(futures).await) {
            for i in ops_of_write {
                results[i] = Some(r.clone());
            }
        }
        (0..ops.len())
            .map(|i| {
                let decider = last_of[ops[i].key()];
                results[decider]
                    .clone()
                    .expect("every key's last op belongs to one write")
            })
            .collect()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.config.call_timeout
    }

    /// Groups items by the cached region of their key; keys the cache does not cover form
    /// one group (its node splits it by region itself).
    fn by_region<T>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> &Bytes,
    ) -> BTreeMap<Option<u64>, Vec<T>> {
        let cache = self.inner.cache.read();
        let mut groups: BTreeMap<Option<u64>, Vec<T>> = BTreeMap::new();
        for item in items {
            let region = cache.locate(key(&item)).map(|r| r.id);
            groups.entry(region).or_default().push(item);
        }
        groups
    }

    fn node_by_id(&self, id: u64) -> Option<&NodeConn> {
        self.inner.nodes.iter().find(|n| n.id() == Some(id))
    }

    /// The node to ask about `key`: its region's leader if known and connected to, else the
    /// next node in turn (which answers with a hint, or forwards).
    fn pick(&self, key: &[u8]) -> &NodeConn {
        let leader = self.inner.cache.read().locate(key).and_then(|r| r.leader);
        if let Some(node) = leader.and_then(|l| self.node_by_id(l)) {
            return node;
        }
        let i = self.inner.next_node.fetch_add(1, Ordering::Relaxed);
        &self.inner.nodes[i % self.inner.nodes.len()]
    }

    /// Fetches the routing table unless it was fetched within [`REFRESH_INTERVAL_MIN`];
    /// callers that arrive while a fetch is running wait for it instead of fetching again.
    async fn refresh_if_stale(&self, deadline: Instant) {
        let mut refreshed = self.inner.refreshed.lock().await;
        if refreshed.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL_MIN) {
            return;
        }
        match tokio::time::timeout_at(deadline, self.refresh_regions()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "routing table refresh failed"),
            Err(_) => return,
        }
        *refreshed = Some(Instant::now());
    }

    /// A write with its own session: `FLOTILLA.SESSION id seq <args…>`. The session is held
    /// until the call ends, so every retry, to whichever node, carries the same pair and
    /// the write applies once.
    async fn write<T>(
        &self,
        args: Vec<Bytes>,
        deadline: Instant,
        parse: impl Fn(Value) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let session = self.inner.sessions.acquire();
        // Writes route by their first key, as the server does.
        let key = args.get(1).cloned().unwrap_or_default();
        let mut wrapped = Vec::with_capacity(args.len() + 3);
        wrapped.push(word("FLOTILLA.SESSION"));
        wrapped.push(Bytes::from(session.client_id().to_string()));
        wrapped.push(Bytes::from(session.seq().to_string()));
        wrapped.extend(args);
        let result = self.call(&key, &wrapped, deadline, parse).await;
        drop(session);
        result
    }

    /// The request to send for `args` about `key`: wrapped in
    /// `FLOTILLA.ROUTE <region> <version> <conf_ver>` with the cached region of `key`, so a
    /// node whose regions changed since answers `EPOCHNOTMATCH` with the new ones; as is
    /// when the cache does not cover `key`.
    fn routed(&self, key: &[u8], args: &[Bytes]) -> Bytes {
        let route = self
            .inner
            .cache
            .read()
            .locate(key)
            .map(|r| (r.id, r.version, r.conf_ver));
        match route {
            None => frame(args),
            Some((id, version, conf_ver)) => {
                let mut wrapped = Vec::with_capacity(args.len() + 4);
                wrapped.push(word("FLOTILLA.ROUTE"));
                wrapped.push(Bytes::from(id.to_string()));
                wrapped.push(Bytes::from(version.to_string()));
                wrapped.push(Bytes::from(conf_ver.to_string()));
                wrapped.extend_from_slice(args);
                frame(&wrapped)
            }
        }
    }

    /// Sends the request `args` to the leader of `key`'s region, with the route of the
    /// cached region, until it is answered or `deadline` passes: follows not-leader hints,
    /// puts the regions of an `EPOCHNOTMATCH` answer in the cache and retries at once (no
    /// refresh, no back-off), refreshes the routing table and backs off on every other
    /// retryable failure, and returns at once on a final one. The request is the same on
    /// every attempt but for its route (a write keeps its session).
    async fn call<T>(
        &self,
        key: &[u8],
        args: &[Bytes],
        deadline: Instant,
        parse: impl Fn(Value) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let config = &self.inner.config;
        let mut attempts = 0u32;
        let mut pauses = 0u32;
        let mut redirects = 0u32;
        let mut epoch_retries = 0u32;
        let mut last: Option<String> = None;
        let mut no_leader: Option<u64> = None;
        loop {
            if attempts > 0 && Instant::now() >= deadline {
                return Err(gave_up(attempts, no_leader, last));
            }
            let node = self.pick(key);
            let request = self.routed(key, args);
            attempts += 1;
            let attempt_deadline = deadline.min(Instant::now() + config.attempt_timeout);
            let answer = tokio::time::timeout_at(attempt_deadline, node.call(request)).await;
            let failure = match answer {
                Ok(Ok(Value::Error(line))) => classify(&line),
                Ok(Ok(value)) => return parse(value),
                Ok(Err(e)) if e.is_retryable() => ServerFailure::Retry(e.to_string()),
                Ok(Err(e)) => return Err(e),
                Err(_) => ServerFailure::Retry(format!("no answer from {} in time", node.addr())),
            };
            match failure {
                ServerFailure::Fatal(line) => return Err(ClientError::Server(line)),
                ServerFailure::NotLeader { region, leader } => {
                    let cached = self.inner.cache.write().set_leader(region, leader);
                    no_leader = Some(region);
                    last = Some(format!("region {region}: not leader at {}", node.addr()));
                    let known = leader
                        .filter(|l| Some(*l) != node.id())
                        .and_then(|l| self.node_by_id(l))
                        .is_some();
                    if cached && known && redirects < REDIRECTS_WITHOUT_PAUSE_MAX {
                        redirects += 1;
                        tracing::trace!(region, ?leader, "following a leader hint");
                        continue;
                    }
                }
                ServerFailure::EpochNotMatch(e) => {
                    no_leader = None;
                    last = Some(format!("region {}: epoch changed", e.region_id));
                    let current = e
                        .current
                        .into_iter()
                        .map(|d| RegionInfo {
                            id: d.id,
                            start_key: d.start_key,
                            end_key: d.end_key,
                            version: d.version,
                            conf_ver: d.conf_ver,
                            leader: d.leader,
                        })
                        .collect();
                    self.inner.cache.write().update(current);
                    if epoch_retries < EPOCH_RETRIES_WITHOUT_PAUSE_MAX {
                        epoch_retries += 1;
                        tracing::trace!(region = e.region_id, "cache fixed from EPOCHNOTMATCH");
                        continue;
                    }
                }
                ServerFailure::Retry(why) => {
                    no_leader = None;
                    last = Some(why);
                }
            }
            redirects = 0;
            epoch_retries = 0;
            tracing::debug!(attempts, last = ?last, "retrying after a pause");
            self.refresh_if_stale(deadline).await;
            let pause = config.backoff.delay(pauses);
            pauses = pauses.saturating_add(1);
            // The call keeps trying until its time is up: a pause longer than what is left
            // is cut short (the loop's check then ends the call at its deadline).
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(gave_up(attempts, no_leader, last));
            }
            tokio::time::sleep(pause.min(left)).await;
        }
    }
}

/// The error of a call that ran out of time.
fn gave_up(attempts: u32, no_leader: Option<u64>, last: Option<String>) -> ClientError {
    match no_leader {
        Some(region) => ClientError::NoLeader { region },
        None => ClientError::Timeout { attempts, last },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let ok = ClientConfig::new(["127.0.0.1:1"]);
        assert!(ok.check().is_ok());
        assert!(ClientConfig::new(Vec::<String>::new()).check().is_err());
        let mut zero = ok.clone();
        zero.call_timeout = Duration::ZERO;
        assert!(zero.check().is_err());
        let mut backwards = ok;
        backwards.backoff.max = Duration::from_micros(1);
        assert!(backwards.check().is_err());
    }

    #[test]
    fn range_replies_become_pairs() {
        let b = |s: &str| Value::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        let got = pairs(Value::Array(vec![b("a"), b("1"), b("b"), b("2")])).unwrap();
        assert_eq!(
            got,
            vec![
                (Bytes::from("a"), Bytes::from("1")),
                (Bytes::from("b"), Bytes::from("2"))
            ]
        );
        assert!(pairs(Value::Array(vec![b("a")])).is_err());
        assert!(pairs(Value::Array(vec![b("a"), Value::Nil])).is_err());
        assert!(pairs(Value::Nil).is_err());
        assert_eq!(successor(b"ab"), Bytes::from_static(b"ab\0"));
    }

    #[test]
    fn giving_up_names_the_region_without_a_leader() {
        assert!(matches!(
            gave_up(3, Some(9), Some("x".into())),
            ClientError::NoLeader { region: 9 }
        ));
        assert!(matches!(
            gave_up(3, None, Some("x".into())),
            ClientError::Timeout { attempts: 3, .. }
        ));
    }

    /// A client against a port nobody listens on fails to connect with a connection error,
    /// not a hang or a panic.
    #[tokio::test]
    async fn connect_to_nothing_is_a_connection_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = Client::connect(ClientConfig::new([addr.to_string()]))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connection { .. }), "{err}");
    }
}
