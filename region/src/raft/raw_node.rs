//! The caller's handle on a raft peer: feed it input, take a [`Ready`] out, handle it,
//! report back.
//!
//! Handling a Ready, in order:
//! 1. send `messages` (they may leave before anything is persisted: a leader's appends);
//! 2. if `snapshot` is set, install it in storage and restore the state machine from it;
//! 3. persist `entries` (an entry at index i replaces the stored suffix from i) and
//!    `hard_state` — with one fsync when `must_sync`;
//! 4. only now send `persisted_messages` (votes and acknowledgements promise durability);
//! 5. apply `committed_entries` in order (configuration entries through
//!    [`RawNode::apply_conf_change`]). These are only entries this peer had persisted
//!    before this Ready, so steps 3 and 5 may also run the other way round or at once: a
//!    caller that applies first answers its clients without waiting for this Ready's sync,
//!    and after a crash restarts with an applied index past its stored commit index, which
//!    [`RawNode::new`] accepts (an applied entry was committed);
//! 6. answer each of `read_states` once the state machine has applied its index;
//! 7. call [`RawNode::advance`] — or, when persisting and applying run elsewhere,
//!    [`RawNode::on_persisted`] and [`RawNode::advance_apply_to`] as each finishes.

use bytes::Bytes;
use flotilla_common::{ConfChange, ConfState, Entry, HardState, Message, Snapshot};

use super::config::Config;
use super::errors::{Error, Result};
use super::progress::ProgressState;
use super::raft::{Raft, Role, SoftState};
use super::read_only::ReadState;
use super::storage::Storage;

/// Everything a peer needs done: what to persist, send and apply.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ready {
    /// Sequence number of this Ready (starts at 1).
    pub number: u64,
    /// The new leader/role, if it changed.
    pub soft_state: Option<SoftState>,
    /// The new term/vote/commit to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Confirmed reads.
    pub read_states: Vec<ReadState>,
    /// Entries to persist.
    pub entries: Vec<Entry>,
    /// A snapshot to install.
    pub snapshot: Option<Snapshot>,
    /// Committed, durable entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Messages that may be sent at once.
    pub messages: Vec<Message>,
    /// Messages to send only after `entries`, `hard_state` and `snapshot` are durable.
    pub persisted_messages: Vec<Message>,
    /// Whether persisting needs an fsync (term, vote, entries or snapshot changed).
    pub must_sync: bool,
}

impl Ready {
    /// The positions (term, index) this Ready makes durable, in the order to report them
    /// with [`RawNode::on_persisted`]: the snapshot's, then the last entry's.
    pub fn persisted_marks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let snapshot = self
            .snapshot
            .as_ref()
            .map(|s| (s.metadata.term, s.metadata.index));
        let last = self.entries.last().map(|e| (e.term, e.index));
        snapshot.into_iter().chain(last)
    }
}

/// One member's replication state, as a leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressStatus {
    /// The member.
    pub id: u64,
    /// Highest index known to match.
    pub matched: u64,
    /// Next index to send.
    pub next_idx: u64,
    /// How the leader sends to it.
    pub state: ProgressState,
}

/// A peer's state, for monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This peer.
    pub id: u64,
    /// Term, vote, commit.
    pub hard_state: HardState,
    /// Leader and role.
    pub soft_state: SoftState,
    /// The applied index.
    pub applied: u64,
    /// First index in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// The membership in force.
    pub conf_state: ConfState,
    /// Per-member replication (leaders only).
    pub progress: Vec<ProgressStatus>,
}

/// A raft peer with the Ready protocol around it.
pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_soft_state: SoftState,
    prev_hard_state: HardState,
    ready_number: u64,
}

impl<S: Storage> std::fmt::Debug for RawNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.raft.fmt(f)
    }
}

impl<S: Storage> RawNode<S> {
    /// A peer over `store`, resuming from what it holds.
    pub fn new(config: &Config, store: S) -> Result<Self> {
        let raft = Raft::new(config, store)?;
        Ok(RawNode {
            prev_soft_state: raft.soft_state(),
            prev_hard_state: raft.hard_state(),
            raft,
            ready_number: 0,
        })
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now (with a pre-vote round if enabled).
    pub fn campaign(&mut self) -> Result<()> {
        if !self.raft.promotable() {
            return Err(Error::ProposalDropped("not a voter: cannot campaign"));
        }
        self.raft.hup(false);
        Ok(())
    }

    /// Starts an election now with no pre-vote round, for a group that has never had a
    /// leader (a region fresh from a split or a new cluster): a pre-vote guards a live
    /// leader against a term bump, and there is none to guard, so the round would only
    /// add a round trip. Safety does not rest on pre-votes: votes decide as always.
    pub fn campaign_without_pre_vote(&mut self) -> Result<()> {
        if !self.raft.promotable() {
            return Err(Error::ProposalDropped("not a voter: cannot campaign"));
        }
        self.raft.hup_without_pre_vote();
        Ok(())
    }

    /// Proposes a command; returns its log index (leader only).
    pub fn propose(&mut self, data: impl Into<Bytes>) -> Result<u64> {
        self.raft.propose(data.into())
    }

    /// Proposes several commands as one append; returns the last index.
    pub fn propose_batch(&mut self, data: impl IntoIterator<Item = Bytes>) -> Result<u64> {
        self.raft.propose_batch(data)
    }

    /// Forwards commands from a follower to its leader; returns the leader's id.
    pub fn forward_proposals(&mut self, data: impl IntoIterator<Item = Bytes>) -> Result<u64> {
        self.raft.forward_proposals(data)
    }

    /// Proposes a membership change; returns its log index.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<u64> {
        self.raft.propose_conf_change(cc)
    }

    /// Requests a linearizable read named by `ctx` (answered by a ReadState).
    pub fn read_index(&mut self, ctx: impl Into<Bytes>) -> Result<()> {
        self.raft.read_index(ctx.into())
    }

    /// Hands leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) -> Result<()> {
        self.raft.transfer_leader(to)
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, m: Message) -> Result<()> {
        self.raft.step(m)
    }

    /// The caller applies a configuration entry: returns the membership to store with the
    /// applied index. The change itself took effect when the entry was appended.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState> {
        cc.result
            .clone()
            .ok_or_else(|| Error::InvalidConfChange("configuration entry carries no result".into()))
    }

    /// `id` could not be reached.
    pub fn report_unreachable(&mut self, id: u64) {
        self.raft.report_unreachable(id);
    }

    /// The snapshot sent to `id` was installed, or failed.
    pub fn report_snapshot(&mut self, id: u64, success: bool) {
        self.raft.report_snapshot(id, success);
    }

    /// Whether there is anything to do.
    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.soft_state() != self.prev_soft_state
            || r.hard_state() != self.prev_hard_state
            || !r.read_states.is_empty()
            || !r.msgs.is_empty()
            || !r.raft_log.unstable_entries().is_empty()
            || r.raft_log.unstable.next_snapshot().is_some()
            || r.raft_log.has_next_committed()
    }

    /// Takes out everything to do; see the module docs for how to handle it.
    pub fn ready(&mut self) -> Ready {
        self.ready_number += 1;
        let r = &mut self.raft;
        let mut rd = Ready {
            number: self.ready_number,
            ..Default::default()
        };
        let ss = r.soft_state();
        if ss != self.prev_soft_state {
            rd.soft_state = Some(ss);
            self.prev_soft_state = ss;
        }
        let hs = r.hard_state();
        let vote_changed =
            hs.term != self.prev_hard_state.term || hs.vote != self.prev_hard_state.vote;
        if hs != self.prev_hard_state {
            rd.hard_state = Some(hs);
            self.prev_hard_state = hs;
        }
        rd.read_states = std::mem::take(&mut r.read_states);
        rd.snapshot = r.raft_log.unstable.next_snapshot().cloned();
        rd.entries = r.raft_log.unstable_entries().to_vec();
        // Storage errors here mean entries vanished under us: hand out nothing this time
        // and try again; the committed range stays pending.
        rd.committed_entries = r
            .raft_log
            .next_committed(r.max_committed_size_per_ready)
            .unwrap_or_default();
        if let Some(last) = rd.committed_entries.last() {
            r.raft_log.applying = r.raft_log.applying.max(last.index);
        }
        if let Some(snap) = &rd.snapshot {
            r.raft_log.applying = r.raft_log.applying.max(snap.metadata.index);
        }
        let msgs = std::mem::take(&mut r.msgs);
        // A leader's messages may leave before its own write is durable (it counts itself
        // only once it is). Everything else promises durable state: a vote, an
        // acknowledgement, or a campaign in a term whose vote is not yet on disk.
        if r.role() == Role::Leader && !vote_changed {
            rd.messages = msgs;
        } else {
            rd.persisted_messages = msgs;
        }
        rd.must_sync = vote_changed || !rd.entries.is_empty() || rd.snapshot.is_some();
        r.raft_log.unstable.accept_in_progress();
        rd
    }

    /// Everything in `rd` was persisted and its committed entries applied.
    pub fn advance(&mut self, rd: Ready) {
        for (term, index) in rd.persisted_marks() {
            self.raft.on_persisted(term, index);
        }
        self.advance_apply(&rd);
    }

    /// The committed entries (or the snapshot) of `rd` were applied; what it persists may
    /// still be on its way to the disk, and is reported with [`RawNode::on_persisted`] for
    /// each of [`Ready::persisted_marks`] once it is durable.
    pub fn advance_apply(&mut self, rd: &Ready) {
        let applied = rd
            .committed_entries
            .last()
            .map(|e| e.index)
            .or(rd.snapshot.as_ref().map(|s| s.metadata.index));
        if let Some(applied) = applied {
            self.raft.applied_to(applied);
        }
    }

    /// Entries up to (`term`, `index`) — or the snapshot at that position — are durable.
    pub fn on_persisted(&mut self, term: u64, index: u64) {
        self.raft.on_persisted(term, index);
    }

    /// The state machine applied everything up to `index`.
    pub fn advance_apply_to(&mut self, index: u64) {
        self.raft.applied_to(index);
    }

    /// Whether learner `id` has caught up with the commit index (time to promote it).
    pub fn learner_caught_up(&self, id: u64) -> bool {
        let conf = &self.raft.tracker.conf;
        (conf.learners.contains(&id) || conf.learners_next.contains(&id))
            && self
                .raft
                .progress(id)
                .is_some_and(|p| p.matched >= self.raft.commit_index())
    }

    /// The peer's state.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        let progress = if r.role() == Role::Leader {
            r.tracker
                .progress
                .iter()
                .map(|(&id, p)| ProgressStatus {
                    id,
                    matched: p.matched,
                    next_idx: p.next_idx,
                    state: p.state,
                })
                .collect()
        } else {
            Vec::new()
        };
        Status {
            id: r.id(),
            hard_state: r.hard_state(),
            soft_state: r.soft_state(),
            applied: r.applied(),
            first_index: r.first_index(),
            last_index: r.last_index(),
            conf_state: r.conf_state(),
            progress,
        }
    }

    /// The peer, for inspection.
    pub fn raft(&self) -> &Raft<S> {
        &self.raft
    }

    /// The peer, mutable (tests and simulations).
    pub fn raft_mut(&mut self) -> &mut Raft<S> {
        &mut self.raft
    }

    /// The storage under the log.
    pub fn store(&self) -> &S {
        self.raft.store()
    }
}
