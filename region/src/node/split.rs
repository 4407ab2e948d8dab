//! Region split: the descriptors a `Split` command produces, checked the same way on every
//! replica (it is applied at the same log index everywhere, so every replica gets the same
//! answer).
//!
//! The split moves no data: every replica of the old region is on the node that hosts the
//! new ones, and all regions of a node share one key-value store. Only the ranges change.

use bytes::Bytes;

use super::descriptor::{PeerMeta, RegionDescriptor, RegionEpoch};
use super::store::{bootstrap_peer_id, PEER_ID_NODE_SPAN};

/// Region ids must stay at or below this so that their peer ids (`region * 2^16 + node`)
/// fit below 2^63: peer ids with the top bit set are those membership changes hand out
/// (`membership::MEMBER_PEER_ID_BIT`), so the two kinds never meet.
pub const REGION_ID_MAX: u64 = (1 << (63 - 16)) - 1;

/// The region ids a node hands out for splits: its durable counter in the high bits, its
/// node id in the low 16, so two nodes never hand out the same id and no bootstrap region
/// (ids below 2^16) is ever reused.
pub fn split_region_id(counter: u64, node_id: u64) -> u64 {
    counter * PEER_ID_NODE_SPAN + node_id
}

/// What a split leaves: the old region, shrunk, and the new ones, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPlan {
    /// The old region with its new end and epoch.
    pub left: RegionDescriptor,
    /// The new regions.
    pub new: Vec<RegionDescriptor>,
}

/// Checks a split of `desc` and builds its descriptors; the error says what is wrong.
pub fn plan_split(
    desc: &RegionDescriptor,
    split_keys: &[Bytes],
    new_region_ids: &[u64],
) -> Result<SplitPlan, String> {
    if split_keys.is_empty() {
        return Err("a split needs at least one key".into());
    }
    if split_keys.len() != new_region_ids.len() {
        return Err(format!(
            "{} split keys but {} new region ids",
            split_keys.len(),
            new_region_ids.len()
        ));
    }
    if split_keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err("split keys must be strictly ascending".into());
    }
    for k in split_keys {
        if k.as_ref() <= desc.start_key.as_ref() || !desc.contains(k) {
            return Err(format!(
                "split key {k:?} is not strictly inside region {} ({:?}..{:?})",
                desc.id, desc.start_key, desc.end_key
            ));
        }
    }
    let mut ids = new_region_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != new_region_ids.len()
        || new_region_ids
            .iter()
            .any(|&id| id == 0 || id == desc.id || id > REGION_ID_MAX)
    {
        return Err(format!("bad new region ids {new_region_ids:?}"));
    }
    let epoch = RegionEpoch {
        conf_ver: desc.epoch.conf_ver,
        version: desc.epoch.version + 1,
    };
    let left = RegionDescriptor {
        end_key: split_keys[0].clone(),
        epoch,
        ..desc.clone()
    };
    let new = new_region_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| RegionDescriptor {
            id,
            start_key: split_keys[i].clone(),
            end_key: split_keys
                .get(i + 1)
                .cloned()
                .unwrap_or_else(|| desc.end_key.clone()),
            epoch,
            peers: desc
                .peers
                .iter()
                .map(|p| PeerMeta {
                    peer_id: bootstrap_peer_id(id, p.node_id),
                    ..*p
                })
                .collect(),
            merging: None,
        })
        .collect();
    Ok(SplitPlan { left, new })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::PeerRole;

    fn region() -> RegionDescriptor {
        RegionDescriptor {
            id: 4,
            start_key: Bytes::from_static(b"b"),
            end_key: Bytes::from_static(b"m"),
            epoch: RegionEpoch {
                conf_ver: 3,
                version: 7,
            },
            peers: [1, 2, 3]
                .map(|n| PeerMeta {
                    peer_id: bootstrap_peer_id(4, n),
                    node_id: n,
                    role: PeerRole::Voter,
                })
                .to_vec(),
            merging: None,
        }
    }

    #[test]
    fn the_parts_tile_the_old_range_with_a_newer_epoch() {
        let keys = [Bytes::from_static(b"d"), Bytes::from_static(b"h")];
        let plan = plan_split(&region(), &keys, &[70_001, 70_002]).unwrap();
        let ranges: Vec<(&[u8], &[u8])> = std::iter::once(&plan.left)
            .chain(&plan.new)
            .map(|d| (d.start_key.as_ref(), d.end_key.as_ref()))
            .collect();
        assert_eq!(
            ranges,
            vec![(&b"b"[..], &b"d"[..]), (b"d", b"h"), (b"h", b"m")]
        );
        for d in std::iter::once(&plan.left).chain(&plan.new) {
            assert_eq!(
                d.epoch,
                RegionEpoch {
                    conf_ver: 3,
                    version: 8
                }
            );
            let nodes: Vec<u64> = d.peers.iter().map(|p| p.node_id).collect();
            assert_eq!(nodes, vec![1, 2, 3], "same nodes");
            assert!(d
                .peers
                .iter()
                .all(|p| p.peer_id == bootstrap_peer_id(d.id, p.node_id)));
        }
        assert_eq!(plan.left.id, 4);
    }

    #[test]
    fn bad_splits_are_refused_with_a_reason() {
        let r = region();
        let k = |s: &'static [u8]| Bytes::from_static(s);
        assert!(plan_split(&r, &[], &[]).is_err());
        assert!(plan_split(&r, &[k(b"d")], &[1, 2]).is_err());
        assert!(
            plan_split(&r, &[k(b"b")], &[70_001]).is_err(),
            "at the start"
        );
        assert!(
            plan_split(&r, &[k(b"a")], &[70_001]).is_err(),
            "before the start"
        );
        assert!(plan_split(&r, &[k(b"m")], &[70_001]).is_err(), "at the end");
        assert!(plan_split(&r, &[k(b"h"), k(b"d")], &[70_001, 70_002]).is_err());
        assert!(plan_split(&r, &[k(b"d"), k(b"h")], &[70_001, 70_001]).is_err());
        assert!(plan_split(&r, &[k(b"d")], &[4]).is_err(), "its own id");
        assert!(plan_split(&r, &[k(b"d")], &[0]).is_err());
        assert!(plan_split(&r, &[k(b"d")], &[REGION_ID_MAX + 1]).is_err());
    }

    #[test]
    fn split_ids_of_two_nodes_never_meet_nor_a_bootstrap_id() {
        assert_ne!(split_region_id(1, 1), split_region_id(1, 2));
        assert_ne!(split_region_id(2, 1), split_region_id(1, 2));
        assert!(split_region_id(1, 1) >= PEER_ID_NODE_SPAN);
    }
}
