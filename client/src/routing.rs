//! The client's region cache: which region holds a key, and which node leads it.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use crate::error::ClientError;
use crate::resp::Value;

/// One region as the client knows it (from `FLOTILLA.REGIONS` and leader hints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// The region's id.
    pub id: u64,
    /// First key (inclusive).
    pub start_key: Bytes,
    /// End key (exclusive); empty means the end of the key space.
    pub end_key: Bytes,
    /// Splits and merges so far.
    pub version: u64,
    /// Membership changes so far.
    pub conf_ver: u64,
    /// The node that leads the region, as last heard.
    pub leader: Option<u64>,
}

impl RegionInfo {
    /// Whether `key` lies in `[start_key, end_key)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_ref() && (self.end_key.is_empty() || key < self.end_key.as_ref())
    }
}

/// Regions by start key. It may be stale in every way (a region split, a leader moved); the
/// server says so, and the client refreshes it and retries.
#[derive(Debug, Default)]
pub(crate) struct RegionCache {
    by_start: BTreeMap<Bytes, RegionInfo>,
}

impl RegionCache {
    /// Replaces the cache with one node's routing table. An empty table (a node that is
    /// still starting) leaves the cache as it was. A leader hint the client already has is
    /// kept for a region the node reports without a leader and with the same epoch: the
    /// hint may be stale, but sending there costs at most one redirect, while forgetting it
    /// costs a guess.
    pub fn replace(&mut self, regions: Vec<RegionInfo>) {
        if regions.is_empty() {
            return;
        }
        let mut old = std::mem::take(&mut self.by_start);
        for mut r in regions {
            if r.leader.is_none() {
                if let Some(prev) = old.remove(&r.start_key) {
                    let same =
                        prev.id == r.id && prev.version == r.version && prev.conf_ver == r.conf_ver;
                    if same {
                        r.leader = prev.leader;
                    }
                }
            }
            self.by_start.insert(r.start_key.clone(), r);
        }
    }

    /// Puts `regions` (the current descriptors of an `EPOCHNOTMATCH` error, disjoint) in
    /// the cache: every cached region whose range overlaps one of them, or with the id of
    /// one of them, is dropped first. What they do not cover stays as it was (or becomes a
    /// gap, which a later request fills by a refresh).
    pub fn update(&mut self, regions: Vec<RegionInfo>) {
        let overlaps = |a: &RegionInfo, b: &RegionInfo| {
            (a.end_key.is_empty() || b.start_key < a.end_key)
                && (b.end_key.is_empty() || a.start_key < b.end_key)
        };
        self.by_start
            .retain(|_, old| !regions.iter().any(|r| r.id == old.id || overlaps(r, old)));
        for r in regions {
            self.by_start.insert(r.start_key.clone(), r);
        }
    }

    /// The region holding `key`, if the cache covers it.
    pub fn locate(&self, key: &[u8]) -> Option<&RegionInfo> {
        let below = (Bound::Unbounded, Bound::Included(key));
        let (_, r) = self.by_start.range::<[u8], _>(below).next_back()?;
        r.contains(key).then_some(r)
    }

    /// Records that `region` is led on `leader` (`None`: the asked replica did not know).
    /// Answers whether the region is in the cache.
    pub fn set_leader(&mut self, region: u64, leader: Option<u64>) -> bool {
        match self.by_start.values_mut().find(|r| r.id == region) {
            Some(r) => {
                r.leader = leader;
                true
            }
            None => false,
        }
    }

    /// Every cached region in key order.
    pub fn all(&self) -> Vec<RegionInfo> {
        self.by_start.values().cloned().collect()
    }
}

/// A non-negative integer reply: an id or a counter (large ones come as decimal bulks, since
/// RESP integers are signed).
pub(crate) fn unsigned(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(n) => u64::try_from(*n).ok(),
        Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// Reads a `FLOTILLA.REGIONS` reply: `[id, start, end, version, conf_ver, leader or nil]`
/// per region.
pub(crate) fn parse_regions(reply: Value) -> Result<Vec<RegionInfo>, ClientError> {
    let bad = |why: &str| ClientError::Protocol(format!("FLOTILLA.REGIONS: {why}"));
    let Value::Array(rows) = reply else {
        return Err(bad("not an array"));
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Value::Array(f) = row else {
            return Err(bad("a row is not an array"));
        };
        let [id, start, end, version, conf_ver, leader] = f.as_slice() else {
            return Err(bad("a row does not have 6 fields"));
        };
        let (Value::Bulk(start), Value::Bulk(end)) = (start, end) else {
            return Err(bad("a key is not a bulk string"));
        };
        let leader = match leader {
            Value::Nil => None,
            v => Some(unsigned(v).ok_or_else(|| bad("bad leader"))?),
        };
        out.push(RegionInfo {
            id: unsigned(id).ok_or_else(|| bad("bad region id"))?,
            start_key: start.clone(),
            end_key: end.clone(),
            version: unsigned(version).ok_or_else(|| bad("bad version"))?,
            conf_ver: unsigned(conf_ver).ok_or_else(|| bad("bad conf_ver"))?,
            leader,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u64, start: &str, end: &str, leader: Option<u64>) -> RegionInfo {
        RegionInfo {
            id,
            start_key: Bytes::copy_from_slice(start.as_bytes()),
            end_key: Bytes::copy_from_slice(end.as_bytes()),
            version: 1,
            conf_ver: 1,
            leader,
        }
    }

    fn three() -> RegionCache {
        let mut c = RegionCache::default();
        c.replace(vec![
            region(1, "", "g", Some(1)),
            region(2, "g", "p", Some(2)),
            region(3, "p", "", None),
        ]);
        c
    }

    #[test]
    fn keys_route_to_the_region_holding_them() {
        let c = three();
        let id = |k: &[u8]| c.locate(k).map(|r| r.id);
        assert_eq!(id(b""), Some(1));
        assert_eq!(id(b"a"), Some(1));
        assert_eq!(id(b"f\xff"), Some(1));
        assert_eq!(id(b"g"), Some(2), "a start key belongs to its region");
        assert_eq!(id(b"o"), Some(2));
        assert_eq!(id(b"p"), Some(3));
        assert_eq!(id(b"\xff\xff"), Some(3), "the last region is unbounded");
    }

    #[test]
    fn a_gap_in_the_cache_routes_nowhere() {
        let mut c = RegionCache::default();
        assert!(c.locate(b"a").is_none());
        c.replace(vec![region(2, "g", "p", Some(2))]);
        assert!(c.locate(b"a").is_none(), "below the first region");
        assert!(c.locate(b"p").is_none(), "past a bounded last region");
        assert_eq!(c.locate(b"h").map(|r| r.id), Some(2));
    }

    #[test]
    fn leader_hints_update_one_region() {
        let mut c = three();
        assert!(c.set_leader(2, Some(3)));
        assert_eq!(c.locate(b"h").and_then(|r| r.leader), Some(3));
        assert_eq!(c.locate(b"a").and_then(|r| r.leader), Some(1));
        assert!(c.set_leader(1, None));
        assert_eq!(c.locate(b"a").and_then(|r| r.leader), None);
        assert!(!c.set_leader(99, Some(1)), "unknown region");
    }

    #[test]
    fn a_refresh_replaces_ranges_but_keeps_a_hint_the_node_lacks() {
        let mut c = three();
        c.set_leader(3, Some(2));
        // Region 2 split into 2 and 4; region 3 is reported without a leader.
        let mut split = region(2, "g", "k", Some(1));
        split.version = 2;
        let mut right = region(4, "k", "p", Some(1));
        right.version = 2;
        c.replace(vec![
            region(1, "", "g", Some(1)),
            split,
            right,
            region(3, "p", "", None),
        ]);
        assert_eq!(c.locate(b"h").map(|r| r.id), Some(2));
        assert_eq!(c.locate(b"m").map(|r| r.id), Some(4));
        assert_eq!(c.locate(b"q").and_then(|r| r.leader), Some(2));
        assert_eq!(c.all().len(), 4);
        // A node with no regions yet does not wipe the cache.
        c.replace(Vec::new());
        assert_eq!(c.all().len(), 4);
    }

    #[test]
    fn an_update_replaces_only_the_overlapping_regions() {
        let mut c = three();
        // Region 2 ["g", "p") split into 2 ["g", "k") and 4 ["k", "p").
        let mut left = region(2, "g", "k", Some(3));
        left.version = 2;
        let mut right = region(4, "k", "p", None);
        right.version = 2;
        c.update(vec![left.clone(), right.clone()]);
        assert_eq!(c.locate(b"h"), Some(&left));
        assert_eq!(c.locate(b"m"), Some(&right));
        assert_eq!(c.locate(b"a").map(|r| r.id), Some(1), "untouched");
        assert_eq!(c.locate(b"q").map(|r| r.id), Some(3), "untouched");
        assert_eq!(c.all().len(), 4);
        // Regions 2 and 4 merged into 4 ["g", "p"); region 3 moved its start (a merge of
        // a region the client never saw): the old entries go, by range and by id.
        let mut merged = region(4, "g", "p", Some(1));
        merged.version = 3;
        c.update(vec![merged.clone()]);
        assert_eq!(c.locate(b"h"), Some(&merged));
        assert_eq!(c.all().len(), 3);
        c.update(vec![region(3, "r", "", None)]);
        assert!(c.locate(b"p").is_none(), "a gap where the old entry was");
        assert_eq!(c.locate(b"s").map(|r| r.id), Some(3));
        assert_eq!(c.all().len(), 3);
    }

    #[test]
    fn parses_the_routing_table_reply() {
        let row = |id: i64, s: &str, e: &str, leader: Value| {
            Value::Array(vec![
                Value::Integer(id),
                Value::Bulk(Bytes::copy_from_slice(s.as_bytes())),
                Value::Bulk(Bytes::copy_from_slice(e.as_bytes())),
                Value::Integer(3),
                Value::Integer(1),
                leader,
            ])
        };
        let reply = Value::Array(vec![
            row(1, "", "m", Value::Integer(2)),
            row(2, "m", "", Value::Nil),
        ]);
        let regions = parse_regions(reply).unwrap();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].leader, Some(2));
        assert_eq!(regions[0].version, 3);
        assert_eq!(regions[1].leader, None);
        assert_eq!(regions[1].start_key, Bytes::from("m"));

        let huge = Value::Bulk(Bytes::from(u64::MAX.to_string()));
        assert_eq!(unsigned(&huge), Some(u64::MAX));
        assert!(parse_regions(Value::Array(vec![row(-1, "", "", Value::Nil)])).is_err());
        assert!(parse_regions(Value::Array(vec![Value::Integer(1)])).is_err());
        assert!(parse_regions(Value::Status("OK".into())).is_err());
        assert!(parse_regions(Value::Array(vec![Value::Array(vec![])])).is_err());
    }
}
