//! Applying membership changes to a configuration: single-member changes, and joint
//! consensus (enter the joint configuration, later leave it) for changes of several voters.
//!
//! Every function works on a copy and returns the new configuration and progress table,
//! or an error that leaves the current ones untouched.

use std::collections::BTreeMap;

use flotilla_common::{ConfChangeKind, ConfChangeSingle};

use super::errors::{Error, Result};
use super::progress::Progress;
use super::tracker::{Configuration, ProgressTracker};

type Changed = (Configuration, BTreeMap<u64, Progress>);

/// Builds configurations out of a tracker's current one.
pub struct Changer<'a> {
    tracker: &'a ProgressTracker,
    last_index: u64,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidConfChange(msg.into())
}

impl<'a> Changer<'a> {
    /// A changer from `tracker`'s configuration; new members start probing at
    /// `last_index + 1`.
    pub fn new(tracker: &'a ProgressTracker, last_index: u64) -> Self {
        Changer {
            tracker,
            last_index,
        }
    }

    fn copy(&self) -> Changed {
        (self.tracker.conf.clone(), self.tracker.progress.clone())
    }

    /// A change of at most one voter, outside a joint configuration.
    pub fn simple(&self, changes: &[ConfChangeSingle]) -> Result<Changed> {
        if self.tracker.conf.voters.is_joint() {
            return Err(invalid(
                "cannot make a simple change in a joint configuration",
            ));
        }
        let (mut cfg, mut prs) = self.copy();
        self.apply(&mut cfg, &mut prs, changes)?;
        let before = &self.tracker.conf.voters.incoming.voters;
        let after = &cfg.voters.incoming.voters;
        if before.symmetric_difference(after).count() > 1 {
            return Err(invalid(
                "more than one voter changed without joint consensus",
            ));
        }
        self.check(&cfg, &prs)?;
        Ok((cfg, prs))
    }

    /// Enters the joint configuration (old voters ∧ new voters).
    pub fn enter_joint(&self, auto_leave: bool, changes: &[ConfChangeSingle]) -> Result<Changed> {
        if self.tracker.conf.voters.is_joint() {
            return Err(invalid("already in a joint configuration"));
        }
        let (mut cfg, mut prs) = self.copy();
        if cfg.voters.incoming.voters.is_empty() {
            return Err(invalid(
                "cannot enter a joint configuration from zero voters",
            ));
        }
        cfg.voters.outgoing = cfg.voters.incoming.clone();
        self.apply(&mut cfg, &mut prs, changes)?;
        cfg.auto_leave = auto_leave;
        self.check(&cfg, &prs)?;
        Ok((cfg, prs))
    }

    /// Leaves the joint configuration for its incoming half.
    pub fn leave_joint(&self) -> Result<Changed> {
        if !self.tracker.conf.voters.is_joint() {
            return Err(invalid("not in a joint configuration"));
        }
        let (mut cfg, mut prs) = self.copy();
        let next: Vec<u64> = cfg.learners_next.iter().copied().collect();
        for id in next {
            cfg.learners.insert(id);
        }
        cfg.learners_next.clear();
        let outgoing = std::mem::take(&mut cfg.voters.outgoing.voters);
        for id in outgoing {
            if !cfg.voters.incoming.voters.contains(&id) && !cfg.learners.contains(&id) {
                prs.remove(&id);
            }
        }
        cfg.auto_leave = false;
        self.check(&cfg, &prs)?;
        Ok((cfg, prs))
    }

    fn apply(
        &self,
        cfg: &mut Configuration,
        prs: &mut BTreeMap<u64, Progress>,
        changes: &[ConfChangeSingle],
    ) -> Result<()> {
        for cc in changes {
            if cc.node_id == 0 {
                return Err(invalid("node id 0 is not allowed"));
            }
            match cc.kind {
                ConfChangeKind::AddVoter => {
                    cfg.learners.remove(&cc.node_id);
                    cfg.learners_next.remove(&cc.node_id);
                    cfg.voters.incoming.voters.insert(cc.node_id);
                    self.ensure_progress(prs, cc.node_id);
                }
                ConfChangeKind::AddLearner => {
                    cfg.voters.incoming.voters.remove(&cc.node_id);
                    self.ensure_progress(prs, cc.node_id);
                    // A member still voting in the outgoing half cannot be a learner yet.
                    if cfg.voters.outgoing.voters.contains(&cc.node_id) {
                        cfg.learners_next.insert(cc.node_id);
                    } else {
                        cfg.learners.insert(cc.node_id);
                    }
                }
                ConfChangeKind::RemoveNode => {
                    cfg.voters.incoming.voters.remove(&cc.node_id);
                    cfg.learners.remove(&cc.node_id);
                    cfg.learners_next.remove(&cc.node_id);
                    if !cfg.voters.outgoing.voters.contains(&cc.node_id) {
                        prs.remove(&cc.node_id);
                    }
                }
            }
        }
        if cfg.voters.incoming.voters.is_empty() {
            return Err(invalid("removing all voters is not allowed"));
        }
        Ok(())
    }

    fn ensure_progress(&self, prs: &mut BTreeMap<u64, Progress>, id: u64) {
        prs.entry(id).or_insert_with(|| {
            let mut p = Progress::new(self.last_index + 1, self.tracker.max_inflight);
            // A new member counts as active so that adding it cannot make the leader fail
            // its next quorum check before the member had a chance to answer.
            p.recent_active = true;
            p
        });
    }

    fn check(&self, cfg: &Configuration, prs: &BTreeMap<u64, Progress>) -> Result<()> {
        cfg.check().map_err(invalid)?;
        for id in cfg.members() {
            if !prs.contains_key(&id) {
                return Err(invalid(format!("member {id} has no progress")));
            }
        }
        Ok(())
    }
}
