//! An in-memory [`KvService`]: one ordered map behind a mutex.
//!
//! It is what the protocol tests run against, and a single-process dev mode: a RESP or HTTP
//! server on top of it behaves like one Flotilla node with one region, minus durability and
//! replication (nothing survives the process). Every operation runs when the method is
//! called, so the returned futures are already complete; that satisfies the ordering contract
//! of [`KvService`] trivially.
//!
//! It is node [`MEMORY_NODE_ID`] with one region ([`MEMORY_REGION_ID`]) covering every key,
//! led by itself. Client sessions are accepted and ignored: nothing here is retried behind
//! the caller's back or replicated, and a write is applied exactly when its call is made,
//! so there is no earlier attempt a session could deduplicate against. A client that sends
//! the same write twice here (after a lost connection) may see it applied twice.

use std::collections::BTreeMap;
use std::future::ready;
use std::ops::Bound;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::service::{
    ClientRoute, ClientSession, EpochNotMatch, EpochStatus, KvService, PutCondition,
    RouteDescriptor, RouteEntry, ServiceError, ServiceFuture,
};

/// The node id the in-memory service answers to `FLOTILLA.NODE`.
pub const MEMORY_NODE_ID: u64 = 1;

/// The id of the one region the in-memory service reports to `FLOTILLA.REGIONS`.
pub const MEMORY_REGION_ID: u64 = 1;

/// Default for [`MemoryKvService::with_bytes_max`]: a dev mode runs on a laptop, and failing
/// writes with `Full` is kinder than the process being killed for memory.
pub const MEMORY_BYTES_MAX_DEFAULT: usize = 1 << 30;

/// The in-memory key-value service. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct MemoryKvService {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    map: BTreeMap<Bytes, Bytes>,
    /// Sum of key and value lengths over `map`.
    bytes: usize,
    bytes_max: usize,
}

impl Default for MemoryKvService {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryKvService {
    /// An empty store that holds up to [`MEMORY_BYTES_MAX_DEFAULT`] bytes of keys and values.
    pub fn new() -> Self {
        Self::with_bytes_max(MEMORY_BYTES_MAX_DEFAULT)
    }

    /// An empty store that refuses writes (with [`ServiceError::Full`]) that would take the
    /// sum of key and value lengths above `bytes_max`.
    pub fn with_bytes_max(bytes_max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: BTreeMap::new(),
                bytes: 0,
                bytes_max,
            }),
        }
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of key and value lengths stored.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

impl Inner {
    /// The size change of writing `value` under `key`, or `Full` if it does not fit.
    fn check_fits(&self, key: &Bytes, value: &Bytes) -> Result<(), ServiceError> {
        let old = self.map.get(key).map_or(0, |v| key.len() + v.len());
        let new = key.len() + value.len();
        let after = self.bytes - old + new;
        if new > old && after > self.bytes_max {
            return Err(ServiceError::Full(format!(
                "memory store full ({} of {} bytes used)",
                self.bytes, self.bytes_max
            )));
        }
        Ok(())
    }

    fn insert(&mut self, key: Bytes, value: Bytes) {
        let new = key.len() + value.len();
        if let Some(old) = self.map.insert(key.clone(), value) {
            self.bytes -= key.len() + old.len();
        }
        self.bytes += new;
    }

    fn remove(&mut self, key: &Bytes) -> bool {
        match self.map.remove(key) {
            Some(old) => {
                self.bytes -= key.len() + old.len();
                true
            }
            None => false,
        }
    }
}

fn done<T: Send + 'static>(result: Result<T, ServiceError>) -> ServiceFuture<T> {
    Box::pin(ready(result))
}

/// Checks a client's route against the one region: anything but region
/// [`MEMORY_REGION_ID`] at the default epoch is stale, answered with that region.
fn check_route(route: ClientRoute) -> Result<(), ServiceError> {
    match route {
        Some(r) if r.region_id != MEMORY_REGION_ID || r.epoch != EpochStatus::default() => {
            Err(ServiceError::EpochNotMatch(EpochNotMatch {
                region_id: r.region_id,
                current: vec![RouteDescriptor {
                    id: MEMORY_REGION_ID,
                    start_key: Bytes::new(),
                    end_key: Bytes::new(),
                    version: 0,
                    conf_ver: 0,
                    leader: Some(MEMORY_NODE_ID),
                }],
            }))
        }
        _ => Ok(()),
    }
}

/// Answers a stale route's error, or goes on.
macro_rules! routed {
    ($route:expr) => {
        if let Err(e) = check_route($route) {
            return done(Err(e));
        }
    };
}

impl KvService for MemoryKvService {
    fn get(&self, key: Bytes, route: ClientRoute) -> ServiceFuture<Option<Bytes>> {
        routed!(route);
        done(Ok(self.inner.lock().map.get(&key).cloned()))
    }

    fn put(
        &self,
        key: Bytes,
        value: Bytes,
        cond: PutCondition,
        _session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<bool> {
        routed!(route);
        let mut inner = self.inner.lock();
        let exists = inner.map.contains_key(&key);
        let write = match cond {
            PutCondition::Always => true,
            PutCondition::IfAbsent => !exists,
            PutCondition::IfPresent => exists,
        };
        if !write {
            return done(Ok(false));
        }
        if let Err(e) = inner.check_fits(&key, &value) {
            return done(Err(e));
        }
        inner.insert(key, value);
        done(Ok(true))
    }

    fn delete(
        &self,
        keys: Vec<Bytes>,
        _session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<u64> {
        routed!(route);
        let mut inner = self.inner.lock();
        let deleted = keys.iter().filter(|k| inner.remove(k)).count();
        done(Ok(deleted as u64))
    }

    fn incr_by(
        &self,
        key: Bytes,
        delta: i64,
        _session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<i64> {
        routed!(route);
        let mut inner = self.inner.lock();
        let current = match inner.map.get(&key) {
            None => 0,
            Some(v) => match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(n) => n,
                None => {
                    return done(Err(ServiceError::InvalidArgument(
                        "value is not an integer or out of range".into(),
                    )))
                }
            },
        };
        let Some(next) = current.checked_add(delta) else {
            return done(Err(ServiceError::InvalidArgument(
                "increment or decrement would overflow".into(),
            )));
        };
        let value = Bytes::from(next.to_string());
        if let Err(e) = inner.check_fits(&key, &value) {
            return done(Err(e));
        }
        inner.insert(key, value);
        done(Ok(next))
    }

    fn batch_put(
        &self,
        pairs: Vec<(Bytes, Bytes)>,
        _session: ClientSession,
        route: ClientRoute,
    ) -> ServiceFuture<()> {
        routed!(route);
        let mut inner = self.inner.lock();
        // All or nothing: size the whole batch against the limit before writing any of it.
        // A key listed twice keeps its last value, so only that one counts.
        let last: BTreeMap<Bytes, Bytes> = pairs.into_iter().collect();
        let freed: usize = last
            .keys()
            .map(|k| inner.map.get(k).map_or(0, |v| k.len() + v.len()))
            .sum();
        let added: usize = last.iter().map(|(k, v)| k.len() + v.len()).sum();
        let after = (inner.bytes - freed).saturating_add(added);
        if added > freed && after > inner.bytes_max {
            return done(Err(ServiceError::Full(format!(
                "memory store full ({} of {} bytes used)",
                inner.bytes, inner.bytes_max
            ))));
        }
        for (k, v) in last {
            inner.insert(k, v);
        }
        done(Ok(()))
    }

    fn scan(
        &self,
        start: Bytes,
        end: Option<Bytes>,
        limit: usize,
        route: ClientRoute,
    ) -> ServiceFuture<Vec<(Bytes, Bytes)>> {
        routed!(route);
        if end.as_ref().is_some_and(|e| *e <= start) {
            return done(Ok(Vec::new()));
        }
        let inner = self.inner.lock();
        let upper = match &end {
            Some(e) => Bound::Excluded(e.clone()),
            None => Bound::Unbounded,
        };
        let pairs = inner
            .map
            .range((Bound::Included(start), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        done(Ok(pairs))
    }

    fn node_id(&self) -> u64 {
        MEMORY_NODE_ID
    }

    fn routes(&self) -> Vec<RouteEntry> {
        vec![RouteEntry {
            id: MEMORY_REGION_ID,
            start_key: Bytes::new(),
            end_key: Bytes::new(),
            epoch: EpochStatus::default(),
            leader: Some(MEMORY_NODE_ID),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn conditional_puts() {
        let s = MemoryKvService::new();
        assert_eq!(
            s.put(b("k"), b("1"), PutCondition::IfPresent, None, None)
                .await,
            Ok(false)
        );
        assert_eq!(
            s.put(b("k"), b("1"), PutCondition::IfAbsent, None, None)
                .await,
            Ok(true)
        );
        assert_eq!(
            s.put(b("k"), b("2"), PutCondition::IfAbsent, None, None)
                .await,
            Ok(false)
        );
        assert_eq!(
            s.put(b("k"), b("3"), PutCondition::IfPresent, None, None)
                .await,
            Ok(true)
        );
        assert_eq!(s.get(b("k"), None).await, Ok(Some(b("3"))));
        assert_eq!(s.bytes(), 2);
    }

    #[tokio::test]
    async fn incr_checks_type_and_overflow() {
        let s = MemoryKvService::new();
        assert_eq!(s.incr_by(b("n"), 5, None, None).await, Ok(5));
        assert_eq!(s.incr_by(b("n"), -7, None, None).await, Ok(-2));
        let max = b(&i64::MAX.to_string());
        s.put(b("n"), max, PutCondition::Always, None, None)
            .await
            .unwrap();
        let overflow = s.incr_by(b("n"), 1, None, None).await;
        assert!(matches!(overflow, Err(ServiceError::InvalidArgument(_))));
        s.put(b("t"), b("abc"), PutCondition::Always, None, None)
            .await
            .unwrap();
        let not_int = s.incr_by(b("t"), 1, None, None).await;
        assert!(matches!(not_int, Err(ServiceError::InvalidArgument(_))));
    }

    #[tokio::test]
    async fn scan_is_ordered_and_bounded() {
        let s = MemoryKvService::new();
        let pairs = ["a", "b", "c", "d"].iter().map(|k| (b(k), b(k))).collect();
        s.batch_put(pairs, None, None).await.unwrap();
        let keys = |v: Vec<(Bytes, Bytes)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let bc = s.scan(b("b"), Some(b("d")), 10, None).await.unwrap();
        assert_eq!(keys(bc), vec![b("b"), b("c")]);
        let abc = s.scan(b("a"), None, 3, None).await.unwrap();
        assert_eq!(keys(abc), vec![b("a"), b("b"), b("c")]);
        assert!(s
            .scan(b("c"), Some(b("b")), 10, None)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.delete(vec![b("a"), b("a"), b("z")], None, None).await,
            Ok(1)
        );
        assert_eq!(s.len(), 3);
    }

    #[tokio::test]
    async fn refuses_writes_past_the_limit() {
        let s = MemoryKvService::with_bytes_max(10);
        assert_eq!(
            s.put(b("k"), b("123456789"), PutCondition::Always, None, None)
                .await,
            Ok(true)
        );
        let full = s
            .put(b("j"), b("1"), PutCondition::Always, None, None)
            .await;
        assert!(matches!(full, Err(ServiceError::Full(_))));
        // Overwriting with a smaller value always fits.
        assert_eq!(
            s.put(b("k"), b("1"), PutCondition::Always, None, None)
                .await,
            Ok(true)
        );
        let full = s
            .batch_put(vec![(b("x"), b("123456789"))], None, None)
            .await;
        assert!(matches!(full, Err(ServiceError::Full(_))));
        // A batch that overwrites a key twice counts its last value once.
        s.batch_put(
            vec![(b("k"), b("12345678")), (b("k"), b("1234"))],
            None,
            None,
        )
        .await
        .unwrap();
        assert_eq!(s.bytes(), 5);
    }
}
