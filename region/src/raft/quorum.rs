//! Majorities: how many acknowledgements commit an index, and who wins an election —
//! for a simple configuration and for a joint one (both majorities needed).

use std::collections::BTreeSet;

/// The outcome of counting votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteResult {
    /// Neither a majority for nor against yet.
    Pending,
    /// A majority refused.
    Lost,
    /// A majority granted.
    Won,
}

/// A set of voters deciding by simple majority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    /// The voters.
    pub voters: BTreeSet<u64>,
}

impl MajorityConfig {
    /// The highest index acknowledged by a majority; `u64::MAX` for an empty configuration
    /// (so it never holds a joint configuration back).
    pub fn committed_index(&self, acked: impl Fn(u64) -> Option<u64>) -> u64 {
        if self.voters.is_empty() {
            return u64::MAX;
        }
        let mut idx: Vec<u64> = self
            .voters
            .iter()
            .map(|&id| acked(id).unwrap_or(0))
            .collect();
        idx.sort_unstable_by(|a, b| b.cmp(a));
        idx[self.voters.len() / 2]
    }

    /// Counts votes (`None`: not yet answered). An empty configuration wins.
    pub fn vote_result(&self, vote: impl Fn(u64) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut yes, mut missing) = (0, 0);
        for &id in &self.voters {
            match vote(id) {
                Some(true) => yes += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let q = self.voters.len() / 2 + 1;
        if yes >= q {
            VoteResult::Won
        } else if yes + missing >= q {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// The incoming and outgoing voters of a joint configuration (outgoing empty when not
/// joint): every decision needs a majority of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JointConfig {
    /// Voters of the new configuration.
    pub incoming: MajorityConfig,
    /// Voters of the old configuration during a joint change.
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    /// Whether `id` votes in either half.
    pub fn contains(&self, id: u64) -> bool {
        self.incoming.voters.contains(&id) || self.outgoing.voters.contains(&id)
    }

    /// All voters of both halves.
    pub fn ids(&self) -> BTreeSet<u64> {
        self.incoming
            .voters
            .union(&self.outgoing.voters)
            .copied()
            .collect()
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.voters.is_empty()
    }

    /// The highest index both majorities acknowledged.
    pub fn committed_index(&self, acked: impl Fn(u64) -> Option<u64> + Copy) -> u64 {
        self.incoming
            .committed_index(acked)
            .min(self.outgoing.committed_index(acked))
    }

    /// The joint election result: won only if both halves won.
    pub fn vote_result(&self, vote: impl Fn(u64) -> Option<bool> + Copy) -> VoteResult {
        let a = self.incoming.vote_result(vote);
        let b = self.outgoing.vote_result(vote);
        if a == b {
            return a;
        }
        if a == VoteResult::Lost || b == VoteResult::Lost {
            return VoteResult::Lost;
        }
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ids: &[u64]) -> MajorityConfig {
        MajorityConfig {
            voters: ids.iter().copied().collect(),
        }
    }

    #[test]
    fn committed_index_is_the_majority_median() {
        let c = cfg(&[1, 2, 3]);
        assert_eq!(c.committed_index(|id| Some([0, 10, 5, 7][id as usize])), 7);
        let c = cfg(&[1, 2, 3, 4]);
        assert_eq!(
            c.committed_index(|id| Some([0, 10, 5, 7, 1][id as usize])),
            5
        );
        assert_eq!(cfg(&[]).committed_index(|_| None), u64::MAX);
    }

    #[test]
    fn joint_needs_both_majorities() {
        let j = JointConfig {
            incoming: cfg(&[1, 2, 3]),
            outgoing: cfg(&[3, 4, 5]),
        };
        let acked = |id: u64| Some([0, 9, 9, 4, 4, 4][id as usize]);
        assert_eq!(j.committed_index(acked), 4);
        let votes = |id: u64| Some(matches!(id, 1 | 2));
        assert_eq!(j.vote_result(votes), VoteResult::Lost);
        let votes = |id: u64| {
            if id == 3 || id == 1 || id == 4 {
                Some(true)
            } else {
                None
            }
        };
        assert_eq!(j.vote_result(votes), VoteResult::Won);
    }

    #[test]
    fn vote_pending_until_decided() {
        let c = cfg(&[1, 2, 3]);
        assert_eq!(
            c.vote_result(|id| (id == 1).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(
            c.vote_result(|id| (id != 1).then_some(false)),
            VoteResult::Lost
        );
    }
}
