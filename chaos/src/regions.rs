//! The cluster's region layout as `/status` shows it: picking what a split or a merge of the
//! schedule acts on, and checking after the run that every node's regions tile the key
//! space and that the nodes agree.
//!
//! Splits and merges are churn, like leader transfers: their admin calls may time out or be
//! refused under faults, and that is recorded, not judged. What is judged is the client
//! history ([`crate::checker`]) and, once everything healed, the layout ([`check_layout`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::Rng;

use crate::nodes::RegionStatus;

/// One region's range and epoch as one node reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RegionRange {
    /// The region's id.
    pub id: u64,
    /// First key (inclusive).
    pub start: Vec<u8>,
    /// End (exclusive); empty means the end of the key space.
    pub end: Vec<u8>,
    /// Epoch version (splits and merges).
    pub version: u64,
    /// Epoch conf_ver (membership changes).
    pub conf_ver: u64,
}

impl RegionRange {
    /// Whether `key` falls in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }
}

/// The ranges of a `/status` answer, sorted by start key.
pub fn ranges(status: &BTreeMap<u64, RegionStatus>) -> Vec<RegionRange> {
    let mut out: Vec<RegionRange> = status
        .iter()
        .map(|(&id, r)| RegionRange {
            id,
            start: r.start_key.clone(),
            end: r.end_key.clone(),
            version: r.version,
            conf_ver: r.conf_ver,
        })
        .collect();
    out.sort_by(|a, b| a.start.cmp(&b.start).then(a.id.cmp(&b.id)));
    out
}

/// A key as text: printable ASCII as itself, other bytes as `\xNN`.
pub fn show_key(key: &[u8]) -> String {
    let mut s = String::new();
    for &b in key {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    format!("\"{s}\"")
}

fn show(regions: &[RegionRange]) -> String {
    regions
        .iter()
        .map(|r| {
            format!(
                "{}[{}, {}) v{}",
                r.id,
                show_key(&r.start),
                show_key(&r.end),
                r.version
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why `regions` (sorted by start key) do not tile the key space — the first starts at the
/// empty key, each ends where the next starts, the last ends at the end (empty) — or `None`
/// when they do.
pub fn tiling_problem(regions: &[RegionRange]) -> Option<String> {
    let Some(first) = regions.first() else {
        return Some("no regions".into());
    };
    if !first.start.is_empty() {
        return Some(format!(
            "the first region {} starts at {}, not at the empty key",
            first.id,
            show_key(&first.start)
        ));
    }
    for w in regions.windows(2) {
        if w[0].end.is_empty() {
            return Some(format!(
                "region {} ends at the end of the key space but region {} starts at {}",
                w[0].id,
                w[1].id,
                show_key(&w[1].start)
            ));
        }
        if w[0].end != w[1].start {
            let what = if w[0].end < w[1].start {
                "gap"
            } else {
                "overlap"
            };
            return Some(format!(
                "{what}: region {} ends at {} but region {} starts at {}",
                w[0].id,
                show_key(&w[0].end),
                w[1].id,
                show_key(&w[1].start)
            ));
        }
    }
    let last = regions.last().expect("not empty");
    if !last.end.is_empty() {
        return Some(format!(
            "the last region {} ends at {}, not at the end of the key space",
            last.id,
            show_key(&last.end)
        ));
    }
    None
}

/// Checks the layout every node reports (node id, its sorted ranges or `None` when it did
/// not answer): each tiles the key space and all are the same (ids, ranges, epochs).
/// Answers a description of every problem, one per line.
pub fn check_layout(views: &[(u64, Option<Vec<RegionRange>>)]) -> Result<(), String> {
    let mut problems = String::new();
    for (node, view) in views {
        match view {
            None => {
                let _ = writeln!(problems, "n{node}: no /status answer");
            }
            Some(regions) => {
                if let Some(p) = tiling_problem(regions) {
                    let _ = writeln!(
                        problems,
                        "n{node}: regions do not tile the key space: {p}; regions: {}",
                        show(regions)
                    );
                }
            }
        }
    }
    let answered: Vec<&(u64, Option<Vec<RegionRange>>)> =
        views.iter().filter(|(_, v)| v.is_some()).collect();
    if let Some((first, Some(reference))) = answered.first() {
        for (node, view) in &answered[1..] {
            let view = view.as_ref().expect("answered");
            if view != reference {
                let _ = writeln!(
                    problems,
                    "n{node} and n{first} disagree: n{node}: {}; n{first}: {}",
                    show(view),
                    show(reference)
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// What a split of the schedule asks for: the region, and the key (`None`: the middle of
/// the region's data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPick {
    /// The region to split.
    pub region: u64,
    /// The split key.
    pub key: Option<Vec<u8>>,
    /// The hot keys in the region before the split.
    pub hot: Vec<String>,
}

/// Picks a region holding hot keys and where to split it: with two or more hot keys,
/// mostly at a key between two neighbouring hot keys (the next hot key itself, or one just
/// after the previous), so they end up in different regions, else with no key; with one
/// hot key, just before or just after it. `None` when no region holds a hot key.
pub fn pick_split(
    regions: &[RegionRange],
    hot: &[String],
    rng: &mut impl Rng,
) -> Option<SplitPick> {
    let mut candidates: Vec<(&RegionRange, Vec<&String>)> = regions
        .iter()
        .map(|r| {
            let mut keys: Vec<&String> = hot.iter().filter(|k| r.contains(k.as_bytes())).collect();
            keys.sort();
            (r, keys)
        })
        .filter(|(_, keys)| !keys.is_empty())
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let (region, keys) = candidates.swap_remove(rng.gen_range(0..candidates.len()));
    let key = if keys.len() >= 2 {
        if rng.gen_bool(0.25) {
            None
        } else {
            let i = rng.gen_range(1..keys.len());
            let (prev, next) = (keys[i - 1].as_bytes(), keys[i].as_bytes());
            let mut after_prev = prev.to_vec();
            after_prev.push(rng.gen_range(1..=0xff));
            if rng.gen_bool(0.5) && after_prev.as_slice() < next {
                Some(after_prev)
            } else {
                Some(next.to_vec())
            }
        }
    } else {
        let k = keys[0].as_bytes();
        let mut after = k.to_vec();
        after.push(0);
        let at_k_ok = k > region.start.as_slice();
        let after_ok = region.contains(&after);
        match (at_k_ok, after_ok) {
            (true, true) if rng.gen_bool(0.5) => Some(k.to_vec()),
            (_, true) => Some(after),
            (true, false) => Some(k.to_vec()),
            (false, false) => None,
        }
    };
    Some(SplitPick {
        region: region.id,
        key,
        hot: keys.into_iter().cloned().collect(),
    })
}

/// Picks two adjacent regions (one's end is the other's start) and which is merged into
/// which: answers (source, target), or `None` when there is no adjacent pair.
pub fn pick_merge(regions: &[RegionRange], rng: &mut impl Rng) -> Option<(u64, u64)> {
    let pairs: Vec<(u64, u64)> = regions
        .iter()
        .flat_map(|a| {
            regions
                .iter()
                .filter(move |b| !a.end.is_empty() && a.end == b.start)
                .map(move |b| (a.id, b.id))
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let (left, right) = pairs[rng.gen_range(0..pairs.len())];
    Some(if rng.gen_bool(0.5) {
        (left, right)
    } else {
        (right, left)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn r(id: u64, start: &[u8], end: &[u8]) -> RegionRange {
        RegionRange {
            id,
            start: start.to_vec(),
            end: end.to_vec(),
            version: 1,
            conf_ver: 1,
        }
    }

    #[test]
    fn tiling() {
        assert_eq!(tiling_problem(&[r(1, b"", b"")]), None);
        assert_eq!(tiling_problem(&[r(1, b"", b"m"), r(2, b"m", b"")]), None);
        assert!(tiling_problem(&[]).unwrap().contains("no regions"));
        assert!(tiling_problem(&[r(1, b"a", b"")])
            .unwrap()
            .contains("first"));
        assert!(tiling_problem(&[r(1, b"", b"m")]).unwrap().contains("last"));
        assert!(tiling_problem(&[r(1, b"", b"m"), r(2, b"n", b"")])
            .unwrap()
            .starts_with("gap"));
        assert!(tiling_problem(&[r(1, b"", b"n"), r(2, b"m", b"")])
            .unwrap()
            .starts_with("overlap"));
        assert!(tiling_problem(&[r(1, b"", b""), r(2, b"m", b"")])
            .unwrap()
            .contains("end of the key space"));
    }

    #[test]
    fn layouts_must_tile_and_agree() {
        let good = vec![r(1, b"", b"m"), r(2, b"m", b"")];
        assert_eq!(
            check_layout(&[(1, Some(good.clone())), (2, Some(good.clone()))]),
            Ok(())
        );
        let e =
            check_layout(&[(1, Some(good.clone())), (2, Some(vec![r(1, b"", b"")]))]).unwrap_err();
        assert!(e.contains("disagree"), "{e}");
        let e = check_layout(&[(1, Some(good.clone())), (2, None)]).unwrap_err();
        assert!(e.contains("n2: no /status answer"), "{e}");
        let e = check_layout(&[(1, Some(vec![r(1, b"", b"m")]))]).unwrap_err();
        assert!(e.contains("do not tile"), "{e}");
        let mut other_epoch = good.clone();
        other_epoch[0].version = 2;
        assert!(check_layout(&[(1, Some(good)), (2, Some(other_epoch))]).is_err());
    }

    #[test]
    fn splits_separate_hot_keys_and_merges_pick_neighbours() {
        let hot: Vec<String> = ["b/reg0", "e/cnt0", "w/reg3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let regions = vec![r(1, b"", b"a"), r(2, b"a", b"s"), r(3, b"s", b"")];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut keyed = 0;
        for _ in 0..200 {
            let p = pick_split(&regions, &hot, &mut rng).expect("a hot region");
            assert_ne!(p.region, 1, "region 1 holds no hot key");
            let region = regions.iter().find(|x| x.id == p.region).unwrap();
            if let Some(k) = &p.key {
                keyed += 1;
                assert!(region.contains(k) && k > &region.start, "{p:?}");
                if p.region == 2 {
                    // Between the two hot keys: they end up apart.
                    assert!(k.as_slice() > b"b/reg0".as_slice(), "{p:?}");
                    assert!(k.as_slice() <= b"e/cnt0".as_slice(), "{p:?}");
                }
            }
        }
        assert!(keyed > 100);
        assert_eq!(pick_split(&[r(1, b"", b"a")], &hot, &mut rng), None);
        for _ in 0..50 {
            let (s, t) = pick_merge(&regions, &mut rng).unwrap();
            assert!(
                matches!((s, t), (1, 2) | (2, 1) | (2, 3) | (3, 2)),
                "{s} {t}"
            );
        }
        assert_eq!(pick_merge(&[r(1, b"", b"")], &mut rng), None);
    }
}
