//! A region's descriptor: its key range, epoch and replicas.

use bytes::Bytes;
use flotilla_common::{codec, ConfState};
use serde::{Deserialize, Serialize};

/// Versions of a region's shape: `version` grows on split and merge, `conf_ver` on
/// membership changes. A request carrying an older epoch is answered with `EpochNotMatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegionEpoch {
    /// Membership changes so far.
    pub conf_ver: u64,
    /// Splits and merges so far.
    pub version: u64,
}

/// Whether a replica votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PeerRole {
    /// Votes and counts toward the quorum.
    #[default]
    Voter,
    /// Receives the log only.
    Learner,
}

/// One replica of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMeta {
    /// The raft peer id (unique across the cluster).
    pub peer_id: u64,
    /// The node hosting it.
    pub node_id: u64,
    /// Voter or learner.
    pub role: PeerRole,
}

/// A region: a contiguous key range `[start_key, end_key)` and its replicas. An empty
/// `end_key` means "to the end of the key space".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegionDescriptor {
    /// The region id (unique across the cluster).
    pub id: u64,
    /// First key of the range (inclusive).
    pub start_key: Bytes,
    /// End of the range (exclusive); empty: unbounded.
    pub end_key: Bytes,
    /// Shape versions.
    pub epoch: RegionEpoch,
    /// Replicas.
    pub peers: Vec<PeerMeta>,
    /// Set while the region is being merged into another (it serves no writes then).
    pub merging: Option<MergeState>,
}

/// A region frozen for a merge: from its `PrepareMerge` on, it applies no data command;
/// the target region's `CommitMerge` takes its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeState {
    /// The region it merges into.
    pub target: u64,
    /// The log index of its `PrepareMerge`: the target's replicas apply this region's log
    /// up to here before they take its range.
    pub prepare_index: u64,
}

impl RegionDescriptor {
    /// The nodes hosting its replicas, sorted.
    pub fn nodes(&self) -> Vec<u64> {
        let mut n: Vec<u64> = self.peers.iter().map(|p| p.node_id).collect();
        n.sort_unstable();
        n
    }

    /// Whether `key` falls in this region's range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_ref() && (self.end_key.is_empty() || key < self.end_key.as_ref())
    }

    /// The replica hosted on `node_id`.
    pub fn peer_on_node(&self, node_id: u64) -> Option<PeerMeta> {
        self.peers.iter().copied().find(|p| p.node_id == node_id)
    }

    /// The replica with raft id `peer_id`.
    pub fn peer(&self, peer_id: u64) -> Option<PeerMeta> {
        self.peers.iter().copied().find(|p| p.peer_id == peer_id)
    }

    /// The raft membership these replicas form.
    pub fn conf_state(&self) -> ConfState {
        let mut cs = ConfState::default();
        for p in &self.peers {
            match p.role {
                PeerRole::Voter => cs.voters.push(p.peer_id),
                PeerRole::Learner => cs.learners.push(p.peer_id),
            }
        }
        cs
    }

    /// Encodes for the `meta` column family.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).expect("a descriptor always encodes")
    }

    /// Decodes from the `meta` column family.
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes)
    }
}

/// Splits the whole key space into `n` regions at evenly spaced boundaries of the first
/// key byte (then the second), for pre-splitting a new cluster.
pub fn even_boundaries(n: usize) -> Vec<Bytes> {
    let n = n.max(1);
    (1..n)
        .map(|i| {
            let v = (i as u64 * 65536 / n as u64) as u16;
            Bytes::copy_from_slice(&v.to_be_bytes())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_round_trip() {
        let d = RegionDescriptor {
            id: 7,
            start_key: Bytes::from_static(b"b"),
            end_key: Bytes::from_static(b"d"),
            epoch: RegionEpoch {
                conf_ver: 1,
                version: 2,
            },
            peers: vec![
                PeerMeta {
                    peer_id: 1,
                    node_id: 1,
                    role: PeerRole::Voter,
                },
                PeerMeta {
                    peer_id: 2,
                    node_id: 2,
                    role: PeerRole::Learner,
                },
            ],
            merging: Some(MergeState {
                target: 9,
                prepare_index: 40,
            }),
        };
        assert!(d.contains(b"b") && d.contains(b"c") && !d.contains(b"d") && !d.contains(b"a"));
        assert_eq!(d.conf_state().voters, vec![1]);
        assert_eq!(d.conf_state().learners, vec![2]);
        assert_eq!(RegionDescriptor::decode(&d.encode()).unwrap(), d);
        let open = RegionDescriptor {
            end_key: Bytes::new(),
            ..d
        };
        assert!(open.contains(b"zzzz"));
    }

    #[test]
    fn boundaries_are_sorted_and_distinct() {
        let b = even_boundaries(16);
        assert_eq!(b.len(), 15);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        assert!(even_boundaries(1).is_empty());
    }
}
