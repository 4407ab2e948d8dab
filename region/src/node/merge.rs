//! Region merge: the target's descriptor after it takes in an adjacent source, checked the
//! same way on every replica of the target (its `CommitMerge` applies at one log index).
//!
//! The protocol, in the source's and the target's logs:
//! 1. `PrepareMerge { target }` in the source: from its index on, the source applies no
//!    data command (it is frozen; requests are refused with a retryable error).
//! 2. The source's leader waits until every source replica has that entry in its log
//!    (`matched >= prepare_index`), then proposes `CommitMerge { source, prepare_index }` in
//!    the target, with a session of its own, until it gets a definite answer.
//! 3. A target replica applying `CommitMerge` first applies its own source replica's log up
//!    to `prepare_index` (the entries are there, committed, on every node), then takes the
//!    source's range and sessions; the source's records are removed in the same write.
//! 4. If `CommitMerge` is refused (the regions are not adjacent, their replicas are on
//!    different nodes, the target is merging itself), the source's leader proposes
//!    `RollbackMerge` and the source serves again. A refusal is deterministic (every target
//!    replica refuses alike, and a retry of the same session gets the same answer), so a
//!    source never rolls back after its range was taken.
//!
//! As with split, no data moves: every replica of both regions is on the same node and all
//! regions of a node share one key-value store.

use serde::{Deserialize, Serialize};

use super::descriptor::{MergeState, RegionDescriptor, RegionEpoch};

/// What a target replica does when its `CommitMerge` applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergePlan {
    /// The source as it was prepared.
    pub source: RegionDescriptor,
    /// The source's `PrepareMerge` index.
    pub prepare_index: u64,
}

/// Client ids of the sessions merge commands carry: the top bit, a kind in the next byte
/// and the source region id below, so they never meet a client's or a split's.
pub fn merge_client_id(kind: MergeCommandKind, source: u64) -> u64 {
    (1 << 63) | ((kind as u64) << 56) | source
}

/// The merge commands, for their session ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeCommandKind {
    /// `PrepareMerge`, in the source.
    Prepare = 1,
    /// `CommitMerge`, in the target.
    Commit = 2,
    /// `RollbackMerge`, in the source.
    Rollback = 3,
}

/// The target's descriptor once it has taken in `source`, or why it cannot.
pub fn plan_merge(
    target: &RegionDescriptor,
    source: &RegionDescriptor,
    prepare_index: u64,
) -> Result<RegionDescriptor, String> {
    if target.merging.is_some() {
        return Err(format!("target region {} is merging itself", target.id));
    }
    if source.id == target.id {
        return Err("a region cannot merge into itself".into());
    }
    let prepared = MergeState {
        target: target.id,
        prepare_index,
    };
    if source.merging != Some(prepared) {
        return Err(format!(
            "source region {} is not prepared to merge into region {}",
            source.id, target.id
        ));
    }
    if source.nodes() != target.nodes() {
        return Err(format!(
            "regions {} and {} have replicas on different nodes ({:?} and {:?})",
            source.id,
            target.id,
            source.nodes(),
            target.nodes()
        ));
    }
    let (start_key, end_key) = if !source.end_key.is_empty() && source.end_key == target.start_key {
        (source.start_key.clone(), target.end_key.clone())
    } else if !target.end_key.is_empty() && target.end_key == source.start_key {
        (target.start_key.clone(), source.end_key.clone())
    } else {
        return Err(format!(
            "regions {} and {} are not adjacent",
            source.id, target.id
        ));
    };
    Ok(RegionDescriptor {
        id: target.id,
        start_key,
        end_key,
        epoch: RegionEpoch {
            conf_ver: target.epoch.conf_ver,
            version: target.epoch.version.max(source.epoch.version) + 1,
        },
        peers: target.peers.clone(),
        merging: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{bootstrap_peer_id, PeerMeta, PeerRole};
    use bytes::Bytes;

    fn region(
        id: u64,
        start: &'static [u8],
        end: &'static [u8],
        nodes: &[u64],
    ) -> RegionDescriptor {
        RegionDescriptor {
            id,
            start_key: Bytes::from_static(start),
            end_key: Bytes::from_static(end),
            epoch: RegionEpoch {
                conf_ver: 1,
                version: id,
            },
            peers: nodes
                .iter()
                .map(|&n| PeerMeta {
                    peer_id: bootstrap_peer_id(id, n),
                    node_id: n,
                    role: PeerRole::Voter,
                })
                .collect(),
            merging: None,
        }
    }

    fn prepared(mut r: RegionDescriptor, target: u64) -> RegionDescriptor {
        r.merging = Some(MergeState {
            target,
            prepare_index: 9,
        });
        r
    }

    #[test]
    fn the_target_takes_the_range_on_either_side() {
        let t = region(2, b"f", b"m", &[1, 2, 3]);
        let left = prepared(region(5, b"a", b"f", &[1, 2, 3]), 2);
        let merged = plan_merge(&t, &left, 9).unwrap();
        assert_eq!(
            (merged.start_key.as_ref(), merged.end_key.as_ref()),
            (&b"a"[..], &b"m"[..])
        );
        assert_eq!(merged.epoch.version, 6);
        assert_eq!(merged.id, 2);
        assert_eq!(merged.peers, t.peers);
        let right = prepared(region(7, b"m", b"", &[1, 2, 3]), 2);
        let merged = plan_merge(&t, &right, 9).unwrap();
        assert_eq!(
            (merged.start_key.as_ref(), merged.end_key.as_ref()),
            (&b"f"[..], &b""[..])
        );
    }

    #[test]
    fn a_merge_that_cannot_be_is_refused_with_a_reason() {
        let t = region(2, b"f", b"m", &[1, 2, 3]);
        let far = prepared(region(5, b"p", b"z", &[1, 2, 3]), 2);
        assert!(plan_merge(&t, &far, 9)
            .unwrap_err()
            .contains("not adjacent"));
        let elsewhere = prepared(region(5, b"a", b"f", &[1, 2, 4]), 2);
        assert!(plan_merge(&t, &elsewhere, 9)
            .unwrap_err()
            .contains("different nodes"));
        let unprepared = region(5, b"a", b"f", &[1, 2, 3]);
        assert!(plan_merge(&t, &unprepared, 9)
            .unwrap_err()
            .contains("not prepared"));
        let other_target = prepared(region(5, b"a", b"f", &[1, 2, 3]), 3);
        assert!(plan_merge(&t, &other_target, 9).is_err());
        let left = prepared(region(5, b"a", b"f", &[1, 2, 3]), 2);
        assert!(plan_merge(&t, &left, 8).is_err(), "another prepare index");
        let busy = prepared(t.clone(), 9);
        assert!(plan_merge(&busy, &left, 9)
            .unwrap_err()
            .contains("merging itself"));
    }

    #[test]
    fn merge_sessions_never_meet_split_or_client_ones() {
        let p = merge_client_id(MergeCommandKind::Prepare, 5);
        let c = merge_client_id(MergeCommandKind::Commit, 5);
        assert_ne!(p, c);
        assert_ne!(p, crate::node::SPLIT_CLIENT_BIT | 5);
    }
}
