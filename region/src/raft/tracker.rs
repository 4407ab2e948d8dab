//! The leader's table of followers and the group's current configuration.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_common::ConfState;

use super::progress::Progress;
use super::quorum::{JointConfig, VoteResult};

/// Who votes, who learns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configuration {
    /// The voters (joint while changing several of them).
    pub voters: JointConfig,
    /// Non-voting members.
    pub learners: BTreeSet<u64>,
    /// Outgoing voters that become learners when the joint configuration is left.
    pub learners_next: BTreeSet<u64>,
    /// Whether the leader leaves the joint configuration by itself.
    pub auto_leave: bool,
}

impl Configuration {
    /// The configuration described by `cs`.
    pub fn from_conf_state(cs: &ConfState) -> Self {
        let mut c = Configuration::default();
        c.voters.incoming.voters = cs.voters.iter().copied().collect();
        c.voters.outgoing.voters = cs.voters_outgoing.iter().copied().collect();
        c.learners = cs.learners.iter().copied().collect();
        c.learners_next = cs.learners_next.iter().copied().collect();
        c.auto_leave = cs.auto_leave;
        c
    }

    /// This configuration as a [`ConfState`].
    pub fn to_conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.incoming.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
            voters_outgoing: self.voters.outgoing.voters.iter().copied().collect(),
            learners_next: self.learners_next.iter().copied().collect(),
            auto_leave: self.auto_leave,
        }
    }

    /// Every member, voter or learner.
    pub fn members(&self) -> BTreeSet<u64> {
        let mut ids = self.voters.ids();
        ids.extend(&self.learners);
        ids.extend(&self.learners_next);
        ids
    }

    /// The structural rules of a configuration; `Err` names the broken one.
    pub fn check(&self) -> Result<(), String> {
        for id in &self.learners {
            if self.voters.contains(*id) {
                return Err(format!("{id} is both a voter and a learner"));
            }
        }
        for id in &self.learners_next {
            if !self.voters.outgoing.voters.contains(id) {
                return Err(format!(
                    "{id} is in learners_next but not an outgoing voter"
                ));
            }
            if self.voters.incoming.voters.contains(id) {
                return Err(format!("{id} is in learners_next and an incoming voter"));
            }
        }
        if !self.voters.is_joint() && (!self.learners_next.is_empty() || self.auto_leave) {
            return Err("learners_next or auto_leave outside a joint configuration".into());
        }
        Ok(())
    }
}

/// Progress of every member, the configuration, and votes of the current election.
#[derive(Debug, Clone)]
pub struct ProgressTracker {
    /// The current configuration.
    pub conf: Configuration,
    /// One entry per member.
    pub progress: BTreeMap<u64, Progress>,
    /// Votes received in the current election.
    pub votes: HashMap<u64, bool>,
    /// In-flight window size for new progresses.
    pub max_inflight: usize,
}

impl ProgressTracker {
    /// An empty tracker.
    pub fn new(max_inflight: usize) -> Self {
        ProgressTracker {
            conf: Configuration::default(),
            progress: BTreeMap::new(),
            votes: HashMap::new(),
            max_inflight,
        }
    }

    /// The index a quorum of voters has durably matched.
    pub fn committed(&self) -> u64 {
        let prs = &self.progress;
        self.conf
            .voters
            .committed_index(|id| prs.get(&id).map(|p| p.matched))
    }

    /// Forgets the current election's votes.
    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records `id`'s answer (the first one counts).
    pub fn record_vote(&mut self, id: u64, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    /// (granted, rejected, result) of the current election.
    pub fn tally_votes(&self) -> (usize, usize, VoteResult) {
        let (mut granted, mut rejected) = (0, 0);
        for id in self.conf.voters.ids() {
            match self.votes.get(&id) {
                Some(true) => granted += 1,
                Some(false) => rejected += 1,
                None => {}
            }
        }
        let votes = &self.votes;
        (
            granted,
            rejected,
            self.conf.voters.vote_result(|id| votes.get(&id).copied()),
        )
    }

    /// Whether a quorum was heard from since the last call (counting `self_id` as
    /// active); clears the marks for the next period.
    pub fn quorum_recently_active(&mut self, self_id: u64) -> bool {
        let mut active = HashMap::new();
        for (&id, pr) in self.progress.iter_mut() {
            active.insert(id, id == self_id || pr.recent_active);
            if id != self_id {
                pr.recent_active = false;
            }
        }
        self.conf.voters.vote_result(|id| active.get(&id).copied()) == VoteResult::Won
    }

    /// The newest leader clock that a quorum of voters has echoed back (self at `now`):
    /// every member of that quorum heard from this leader at or after that tick.
    pub fn quorum_lease_tick(&self, self_id: u64, now: u64) -> u64 {
        let prs = &self.progress;
        let acked = |id: u64| {
            if id == self_id {
                Some(now)
            } else {
                prs.get(&id).map(|p| p.lease_ack_tick)
            }
        };
        self.conf.voters.committed_index(acked)
    }

    /// Whether `id` is a voter of either half.
    pub fn is_voter(&self, id: u64) -> bool {
        self.conf.voters.contains(id)
    }

    /// Whether the only voter is `id`.
    pub fn is_singleton(&self, id: u64) -> bool {
        let ids = self.conf.voters.ids();
        ids.len() == 1 && ids.contains(&id)
    }
}
