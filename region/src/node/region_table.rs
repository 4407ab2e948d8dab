//! The global region table: every region of the cluster as gossip (and this node's own
//! replicas) describe it, so any node can route any key.
//!
//! **Merge rule.** Per region id the newer summary wins: the higher epoch `version`, then
//! the higher `conf_ver`, then (same epoch) the higher leader term. A summary whose range
//! overlaps a region with a higher version is stale (that region split or merged over it)
//! and is dropped, as is every entry an incoming summary of a higher version overlaps.

use std::collections::BTreeMap;

use super::node_message::RegionSummary;

/// Every region known to this node, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionTable {
    by_id: BTreeMap<u64, RegionSummary>,
}

fn rank(s: &RegionSummary) -> (u64, u64, u64) {
    (s.epoch.version, s.epoch.conf_ver, s.term)
}

impl RegionTable {
    /// Merges one summary; `replace_ties`: it wins against an entry of the same rank (this
    /// node's own replica's view). Answers whether the table changed.
    pub fn merge(&mut self, s: RegionSummary, replace_ties: bool) -> bool {
        if let Some(old) = self.by_id.get(&s.id) {
            let newer = rank(&s) > rank(old) || (replace_ties && rank(&s) == rank(old));
            if !newer || *old == s {
                return false;
            }
        }
        // Stale if a region with a higher version already covers part of its range.
        if self
            .by_id
            .values()
            .any(|o| o.id != s.id && o.epoch.version > s.epoch.version && o.overlaps(&s))
        {
            return false;
        }
        self.by_id
            .retain(|_, o| o.id == s.id || !(o.epoch.version < s.epoch.version && o.overlaps(&s)));
        self.by_id.insert(s.id, s);
        true
    }

    /// Every region, in key order.
    pub fn all(&self) -> Vec<RegionSummary> {
        let mut v: Vec<RegionSummary> = self.by_id.values().cloned().collect();
        v.sort_by(|a, b| a.start_key.cmp(&b.start_key).then(a.id.cmp(&b.id)));
        v
    }

    /// The region holding `key`, if known (the newest, should two still overlap).
    pub fn route(&self, key: &[u8]) -> Option<RegionSummary> {
        self.by_id
            .values()
            .filter(|r| r.contains(key))
            .max_by_key(|r| rank(r))
            .cloned()
    }

    /// The summary of region `id`.
    pub fn get(&self, id: u64) -> Option<&RegionSummary> {
        self.by_id.get(&id)
    }

    /// Forgets region `id` (this node saw it destroyed, merged away).
    pub fn remove(&mut self, id: u64) {
        self.by_id.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::RegionEpoch;
    use bytes::Bytes;

    fn s(
        id: u64,
        start: &'static [u8],
        end: &'static [u8],
        v: u64,
        c: u64,
        term: u64,
    ) -> RegionSummary {
        RegionSummary {
            id,
            start_key: Bytes::from_static(start),
            end_key: Bytes::from_static(end),
            epoch: RegionEpoch {
                conf_ver: c,
                version: v,
            },
            peers: vec![],
            leader_node: Some(term),
            term,
        }
    }

    fn table(items: &[RegionSummary]) -> RegionTable {
        let mut t = RegionTable::default();
        for i in items {
            t.merge(i.clone(), false);
        }
        t
    }

    #[test]
    fn newer_epoch_then_higher_term_wins() {
        let mut t = table(&[s(1, b"", b"", 1, 1, 5)]);
        assert!(!t.merge(s(1, b"", b"", 1, 1, 4), false), "older term");
        assert!(t.merge(s(1, b"", b"", 1, 1, 6), false), "newer term");
        assert!(
            t.merge(s(1, b"", b"", 1, 2, 1), false),
            "newer conf_ver beats term"
        );
        assert!(!t.merge(s(1, b"", b"", 1, 1, 9), false), "older conf_ver");
        assert!(
            t.merge(s(1, b"", b"", 2, 1, 1), false),
            "newer version beats conf_ver"
        );
        assert_eq!(
            t.get(1).unwrap().epoch,
            RegionEpoch {
                conf_ver: 1,
                version: 2
            }
        );
        // Ties: only this node's own view replaces.
        let mut own = s(1, b"", b"", 2, 1, 1);
        own.leader_node = Some(42);
        assert!(!t.merge(own.clone(), false));
        assert!(t.merge(own, true));
        assert_eq!(t.get(1).unwrap().leader_node, Some(42));
    }

    #[test]
    fn a_split_drops_the_old_range_and_stale_news_stays_out() {
        // Region 1 covers everything; it splits at "m" into 1 ["", m) and 2 [m, "").
        let mut t = table(&[s(1, b"", b"", 1, 1, 3)]);
        assert!(t.merge(s(2, b"m", b"", 2, 1, 3), false));
        assert_eq!(
            t.all().len(),
            1,
            "the old, wider region 1 is covered by 2: dropped"
        );
        assert!(t.merge(s(1, b"", b"m", 2, 1, 3), false));
        assert_eq!(t.route(b"a").unwrap().id, 1);
        assert_eq!(t.route(b"z").unwrap().id, 2);
        // Old gossip of region 1 before the split does not come back.
        assert!(!t.merge(s(1, b"", b"", 1, 1, 9), false));
        assert_eq!(t.route(b"z").unwrap().id, 2);
        // Any order of the same news gives the same table.
        let a = table(&[
            s(1, b"", b"m", 2, 1, 3),
            s(2, b"m", b"", 2, 1, 3),
            s(1, b"", b"", 1, 1, 3),
        ]);
        let b = table(&[
            s(1, b"", b"", 1, 1, 3),
            s(1, b"", b"m", 2, 1, 3),
            s(2, b"m", b"", 2, 1, 3),
        ]);
        assert_eq!(a, t);
        assert_eq!(b, t);
    }

    #[test]
    fn a_merge_drops_the_source() {
        let mut t = table(&[s(1, b"", b"m", 2, 1, 3), s(2, b"m", b"", 2, 1, 3)]);
        // Region 2 took in region 1: version 3 over the whole range.
        assert!(t.merge(s(2, b"", b"", 3, 1, 3), false));
        assert_eq!(t.all().iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(t.route(b"a").unwrap().id, 2);
        assert!(
            !t.merge(s(1, b"", b"m", 2, 1, 8), false),
            "the source stays gone"
        );
    }
}
