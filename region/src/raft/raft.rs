//! One raft peer as a pure state machine: `step` a message, `tick` the clock, propose;
//! what must be persisted and sent accumulates inside and is taken out by
//! [`RawNode::ready`](super::RawNode::ready).
//!
//! `step` does the term checks and voting once (§5.1, §5.2, §5.4.1, PreVote, CheckQuorum
//! and the lease that protects a live leader), then hands the message to the handler of
//! the current role.

use std::collections::BTreeSet;

use bytes::Bytes;
use flotilla_common::{
    codec, ConfChange, ConfState, Entry, EntryKind, HardState, Message, MessageKind, Snapshot,
};
use tracing::{debug, info, warn};

use super::conf_change::Changer;
use super::config::{Config, ReadOnlyOption};
use super::errors::{Error, Result, StorageError};
use super::progress::{Progress, ProgressState};
use super::quorum::VoteResult;
use super::raft_log::RaftLog;
use super::read_only::{ReadOnly, ReadState};
use super::rng::SplitMix64;
use super::storage::Storage;
use super::tracker::{Configuration, ProgressTracker};

/// The role a peer plays in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Asks whether it could win before disrupting anyone with a new term.
    PreCandidate,
    /// Campaigns in a new term.
    Candidate,
    /// Leads the current term.
    Leader,
}

/// State that need not be durable: who leads, and this peer's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SoftState {
    /// The known leader, 0 if none.
    pub leader_id: u64,
    /// This peer's role.
    pub role: Role,
}

/// Marks vote requests of a campaign started by `TimeoutNow`: they bypass the lease that
/// otherwise protects a live leader, because that leader asked for them.
pub const CAMPAIGN_TRANSFER: &[u8] = b"transfer";

/// Ticks of lease kept back from the election timeout: peers tick independently, so a
/// follower may count its timeout up to a tick ahead of the leader; one more tick covers
/// the time a new leader needs before it can commit anything.
pub const LEASE_MARGIN_TICKS: usize = 2;

/// ReadIndex requests held on a new leader until it commits an entry of its term, at most.
const PENDING_READ_INDEX_MAX: usize = 4096;

/// A raft peer.
pub struct Raft<S: Storage> {
    id: u64,
    term: u64,
    vote: u64,
    role: Role,
    leader_id: u64,
    pub(crate) raft_log: RaftLog<S>,
    pub(crate) tracker: ProgressTracker,
    pub(crate) msgs: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    read_only: ReadOnly,
    pending_read_index: Vec<Message>,
    lead_transferee: Option<u64>,
    pending_conf_index: u64,
    /// Configurations in force from each index: `conf_history[0]` is the one at or below
    /// the commit index; later ones come from uncommitted conf-change entries and are
    /// dropped again if those entries are truncated.
    conf_history: Vec<(u64, Configuration)>,
    uncommitted_size: u64,
    election_elapsed: usize,
    heartbeat_elapsed: usize,
    randomized_election_timeout: usize,
    /// Ticks since this peer started; the clock the lease is measured in.
    clock: u64,
    /// After a restart with lease reads on: refuse votes for one election timeout, since
    /// this peer may have acknowledged a leader's lease just before it crashed.
    restart_vote_guard: bool,
    election_tick: usize,
    heartbeat_tick: usize,
    check_quorum: bool,
    pre_vote: bool,
    read_only_option: ReadOnlyOption,
    max_size_per_msg: u64,
    max_uncommitted_size: u64,
    pub(crate) max_committed_size_per_ready: u64,
    rng: SplitMix64,
}

impl<S: Storage> std::fmt::Debug for Raft<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raft")
            .field("id", &self.id)
            .field("term", &self.term)
            .field("vote", &self.vote)
            .field("role", &self.role)
            .field("leader_id", &self.leader_id)
            .field("commit", &self.raft_log.committed)
            .field("last_index", &self.raft_log.last_index())
            .finish()
    }
}

fn conf_state_of(e: &Entry) -> Option<ConfState> {
    if e.kind != EntryKind::ConfChange {
        return None;
    }
    codec::decode::<ConfChange>(&e.data)
        .ok()
        .and_then(|cc| cc.result)
}

impl<S: Storage> Raft<S> {
    /// A peer over `store`, resuming from whatever it holds.
    ///
    /// `store.initial_state().conf_state` must be the membership as of the newest
    /// configuration entry that is no longer in the log (or the bootstrap membership);
    /// configuration entries still in the log are replayed on top of it.
    pub fn new(config: &Config, store: S) -> Result<Self> {
        config.validate()?;
        let state = store.initial_state()?;
        let raft_log = RaftLog::new(store)?;
        let mut r = Raft {
            id: config.id,
            term: 0,
            vote: 0,
            role: Role::Follower,
            leader_id: 0,
            raft_log,
            tracker: ProgressTracker::new(config.max_inflight_msgs),
            msgs: Vec::new(),
            read_states: Vec::new(),
            read_only: ReadOnly::default(),
            pending_read_index: Vec::new(),
            lead_transferee: None,
            pending_conf_index: 0,
            conf_history: Vec::new(),
            uncommitted_size: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_tick,
            clock: 0,
            restart_vote_guard: false,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            check_quorum: config.check_quorum,
            pre_vote: config.pre_vote,
            read_only_option: config.read_only_option,
            max_size_per_msg: config.max_size_per_msg,
            max_uncommitted_size: config.max_uncommitted_size,
            max_committed_size_per_ready: config.max_committed_size_per_ready,
            rng: SplitMix64::new(config.seed ^ config.id.rotate_left(32)),
        };
        let base = Configuration::from_conf_state(&state.conf_state);
        base.check()
            .map_err(|e| Error::InvalidConfig(format!("stored membership: {e}")))?;
        let hs = state.hard_state;
        if hs.commit > r.raft_log.last_index() {
            return Err(StorageError::Other(format!(
                "stored commit {} is past the last log index {}",
                hs.commit,
                r.raft_log.last_index()
            ))
            .into());
        }
        r.term = hs.term;
        r.vote = hs.vote;
        r.raft_log.commit_to(hs.commit);
        if config.applied > 0 {
            // Only committed entries are applied, so an applied index past the stored
            // commit index is itself proof of commitment: the application may apply a
            // round's committed entries before that round's hard state is durable (a node
            // that applies while its log write is in flight, then crashes). It must still
            // lie within the log.
            if config.applied > r.raft_log.last_index() {
                return Err(Error::InvalidConfig(format!(
                    "applied {} is past the last log index {}",
                    config.applied,
                    r.raft_log.last_index()
                )));
            }
            r.raft_log.commit_to(config.applied);
            r.raft_log.applied_to(config.applied);
        }
        r.conf_history.push((r.raft_log.first_index() - 1, base));
        let first = r.raft_log.first_index();
        let last = r.raft_log.last_index();
        if last >= first {
            for e in r.raft_log.slice(first, last + 1, u64::MAX)? {
                if let Some(cs) = conf_state_of(&e) {
                    r.conf_history
                        .push((e.index, Configuration::from_conf_state(&cs)));
                }
            }
        }
        r.install_latest_conf();
        r.prune_conf_history();
        r.restart_vote_guard = config.read_only_option == ReadOnlyOption::LeaseBased && hs.term > 0;
        let term = r.term;
        r.become_follower(term, 0);
        info!(
            id = r.id,
            term = r.term,
            commit = r.raft_log.committed,
            "raft peer started"
        );
        Ok(r)
    }

    // ---- accessors -------------------------------------------------------------------

    /// This peer's id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }
    /// Whom this peer voted for in the current term (0: nobody).
    pub fn vote(&self) -> u64 {
        self.vote
    }
    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The known leader (0: none).
    pub fn leader_id(&self) -> u64 {
        self.leader_id
    }
    /// The commit index.
    pub fn commit_index(&self) -> u64 {
        self.raft_log.committed
    }
    /// The index the application reported applied.
    pub fn applied(&self) -> u64 {
        self.raft_log.applied
    }
    /// The highest index known durable.
    pub fn persisted(&self) -> u64 {
        self.raft_log.persisted
    }
    /// The first index still in the log.
    pub fn first_index(&self) -> u64 {
        self.raft_log.first_index()
    }
    /// The last index of the log.
    pub fn last_index(&self) -> u64 {
        self.raft_log.last_index()
    }
    /// The term of the last entry.
    pub fn last_term(&self) -> u64 {
        self.raft_log.last_term()
    }
    /// The term of the entry at `index`, if the log holds it.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.raft_log.term(index).ok()
    }
    /// The log's entries in `[lo, hi)`, durable or not.
    pub fn entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>> {
        self.raft_log.slice(lo, hi, u64::MAX)
    }
    /// The membership in force (the newest configuration entry in the log).
    pub fn conf_state(&self) -> ConfState {
        self.tracker.conf.to_conf_state()
    }
    /// The leader's view of member `id`.
    pub fn progress(&self, id: u64) -> Option<&Progress> {
        self.tracker.progress.get(&id)
    }
    /// The member leadership is being transferred to.
    pub fn lead_transferee(&self) -> Option<u64> {
        self.lead_transferee
    }
    /// Ticks since the last reset of the election timer.
    pub fn election_elapsed(&self) -> usize {
        self.election_elapsed
    }
    /// The current randomized election timeout, in [T, 2T).
    pub fn randomized_election_timeout(&self) -> usize {
        self.randomized_election_timeout
    }
    /// The index of the newest configuration entry this leader proposed (or the last index
    /// when it was elected); another change waits until it is committed.
    pub fn pending_conf_index(&self) -> u64 {
        self.pending_conf_index
    }
    /// The durable-state part of this peer.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.raft_log.committed,
        }
    }
    /// The volatile part: leader and role.
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            leader_id: self.leader_id,
            role: self.role,
        }
    }
    /// The storage under the log.
    pub fn store(&self) -> &S {
        &self.raft_log.store
    }
    /// Whether this peer may campaign: it votes in its latest configuration, or in the
    /// committed one (the change that removes it is not committed yet).
    pub fn promotable(&self) -> bool {
        // Dissertation §4.2.2: a peer missing from its latest configuration still campaigns
        // while the entry that removed it is uncommitted — it may hold entries the others
        // need (a removed leader that restarted with the only copy of the leave-joint
        // entry deadlocked the group otherwise: simulation seed 10198, 3 nodes). Its own
        // vote does not count unless it is in the latest configuration.
        let committed = self.raft_log.committed;
        self.tracker.is_voter(self.id)
            || self
                .conf_history
                .iter()
                .rev()
                .find(|(i, _)| *i <= committed)
                .is_some_and(|(_, c)| c.voters.contains(self.id))
    }
    /// ReadIndex requests waiting for their heartbeat quorum.
    pub fn pending_read_count(&self) -> usize {
        self.read_only.len() + self.pending_read_index.len()
    }

    // ---- role changes ----------------------------------------------------------------

    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = 0;
        }
        self.leader_id = 0;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.lead_transferee = None;
        self.tracker.reset_votes();
        let last = self.raft_log.last_index();
        let persisted = self.raft_log.persisted;
        let cap = self.tracker.max_inflight;
        for (&id, pr) in self.tracker.progress.iter_mut() {
            *pr = Progress::new(last + 1, cap);
            if id == self.id {
                pr.matched = persisted;
            }
        }
        self.pending_conf_index = 0;
        self.uncommitted_size = 0;
        self.read_only.clear();
        self.pending_read_index.clear();
    }

    fn reset_randomized_election_timeout(&mut self) {
        self.randomized_election_timeout =
            self.rng.range(self.election_tick, 2 * self.election_tick);
    }

    pub(crate) fn become_follower(&mut self, term: u64, leader_id: u64) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader_id = leader_id;
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader cannot become a pre-candidate"
        );
        // A pre-candidate changes neither its term nor its vote: that is the point.
        self.role = Role::PreCandidate;
        self.tracker.reset_votes();
        self.leader_id = 0;
        debug!(id = self.id, term = self.term, "became pre-candidate");
    }

    fn become_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader cannot become a candidate"
        );
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.role = Role::Candidate;
        debug!(id = self.id, term = self.term, "became candidate");
    }

    fn become_leader(&mut self) {
        assert!(
            matches!(self.role, Role::Candidate),
            "only a candidate can become leader"
        );
        let term = self.term;
        self.reset(term);
        self.leader_id = self.id;
        self.role = Role::Leader;
        // Any configuration entry in the uncommitted tail may still be pending.
        self.pending_conf_index = self.raft_log.last_index();
        if let Some(pr) = self.tracker.progress.get_mut(&self.id) {
            pr.become_replicate();
            pr.recent_active = true;
        }
        // §5.4.2 / §8: an entry of the new term lets older entries commit with it, and
        // tells followers who leads.
        let noop = Entry::new(EntryKind::Normal, 0, 0, Bytes::new());
        self.append_entries(vec![noop])
            .expect("an empty entry always fits");
        info!(id = self.id, term = self.term, "became leader");
    }

    // ---- clock -----------------------------------------------------------------------

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.clock += 1;
        match self.role {
            Role::Leader => self.tick_heartbeat(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_tick {
            self.restart_vote_guard = false;
        }
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_tick {
            self.election_elapsed = 0;
            if self.check_quorum && !self.tracker.quorum_recently_active(self.id) {
                info!(
                    id = self.id,
                    term = self.term,
                    "lost contact with a quorum; stepping down"
                );
                let term = self.term;
                self.become_follower(term, 0);
                return;
            }
            if self.lead_transferee.take().is_some() {
                debug!(id = self.id, "leader transfer timed out");
            }
        }
        if self.heartbeat_elapsed >= self.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    // ---- elections -------------------------------------------------------------------

    /// Starts an election now (the election timeout fired, or the application asked).
    pub fn hup(&mut self, transfer: bool) {
        self.start_election(self.pre_vote && !transfer, transfer);
    }

    /// Starts an election now with no pre-vote round (see
    /// `RawNode::campaign_without_pre_vote`).
    pub fn hup_without_pre_vote(&mut self) {
        self.start_election(false, false);
    }

    fn start_election(&mut self, pre: bool, transfer: bool) {
        if self.role == Role::Leader {
            return;
        }
        if !self.promotable() {
            debug!(id = self.id, "not a voter; not campaigning");
            return;
        }
        self.campaign(pre, transfer);
    }

    fn campaign(&mut self, pre: bool, transfer: bool) {
        let (kind, term) = if pre {
            self.become_pre_candidate();
            (MessageKind::RequestPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageKind::RequestVote, self.term)
        };
        self.tracker.record_vote(self.id, true);
        if self.poll() == VoteResult::Won {
            // A single voter wins at once.
            if pre {
                self.campaign(false, transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let (last_index, last_term) = (self.raft_log.last_index(), self.raft_log.last_term());
        for id in self.tracker.conf.voters.ids() {
            if id == self.id {
                continue;
            }
            let mut m = Message::new(kind, self.id, id, term);
            m.index = last_index;
            m.log_term = last_term;
            m.commit = self.raft_log.committed;
            if transfer {
                m.context = Bytes::from_static(CAMPAIGN_TRANSFER);
            }
            self.msgs.push(m);
        }
    }

    fn poll(&self) -> VoteResult {
        self.tracker.tally_votes().2
    }

    /// Whether a live leader is known: votes are then ignored (§6 "disruptive servers").
    fn in_lease(&self) -> bool {
        (self.check_quorum && self.leader_id != 0 && self.election_elapsed < self.election_tick)
            || self.restart_vote_guard
    }

    // ---- step ------------------------------------------------------------------------

    /// Feeds a message from a peer. Bad input is an error and changes nothing.
    pub fn step(&mut self, m: Message) -> Result<()> {
        if m.to != self.id {
            return Err(Error::InvalidMessage(format!(
                "addressed to {}, not {}",
                m.to, self.id
            )));
        }
        if m.from == 0 || m.from == self.id {
            return Err(Error::InvalidMessage(format!("bad sender {}", m.from)));
        }
        if m.term == 0 {
            return Err(Error::InvalidMessage("term 0".into()));
        }
        if m.term > self.term {
            if matches!(
                m.kind,
                MessageKind::RequestVote | MessageKind::RequestPreVote
            ) {
                let forced = m.context.as_ref() == CAMPAIGN_TRANSFER;
                if !forced && self.in_lease() {
                    debug!(
                        id = self.id,
                        from = m.from,
                        "ignoring vote request: leader lease"
                    );
                    return Ok(());
                }
            }
            match m.kind {
                // A pre-vote request never changes our term; nor does a granted pre-vote
                // (the pre-candidate bumps its term once it has a quorum).
                MessageKind::RequestPreVote => {}
                MessageKind::RequestPreVoteResponse if !m.reject => {}
                MessageKind::Append
                | MessageKind::Heartbeat
                | MessageKind::Snapshot
                | MessageKind::Commit => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, 0),
            }
        } else if m.term < self.term {
            match m.kind {
                // A stale leader (or one cut off while we moved on) learns our term, so it
                // steps down even if check quorum keeps us from advancing through votes.
                MessageKind::Append | MessageKind::Heartbeat | MessageKind::Commit
                    if self.check_quorum || self.pre_vote =>
                {
                    self.send(Message::new(
                        MessageKind::AppendResponse,
                        self.id,
                        m.from,
                        self.term,
                    ));
                }
                MessageKind::RequestPreVote => {
                    let mut r = Message::new(
                        MessageKind::RequestPreVoteResponse,
                        self.id,
                        m.from,
                        self.term,
                    );
                    r.reject = true;
                    self.send(r);
                }
                _ => debug!(
                    id = self.id,
                    from = m.from,
                    term = m.term,
                    "ignoring stale-term message"
                ),
            }
            return Ok(());
        }

        match m.kind {
            MessageKind::RequestVote | MessageKind::RequestPreVote => {
                self.handle_vote_request(m);
                Ok(())
            }
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    fn handle_vote_request(&mut self, m: Message) {
        let pre = m.kind == MessageKind::RequestPreVote;
        let can_vote = self.vote == m.from
            || (self.vote == 0 && self.leader_id == 0)
            || (pre && m.term > self.term);
        let resp_kind = if pre {
            MessageKind::RequestPreVoteResponse
        } else {
            MessageKind::RequestVoteResponse
        };
        if can_vote && self.raft_log.is_up_to_date(m.index, m.log_term) {
            // A granted pre-vote answers in the term asked about, so the pre-candidate
            // does not mistake it for a newer term.
            let mut r = Message::new(resp_kind, self.id, m.from, m.term);
            r.reject = false;
            self.send(r);
            if !pre {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            let mut r = Message::new(resp_kind, self.id, m.from, self.term);
            r.reject = true;
            self.send(r);
        }
    }

    fn step_candidate(&mut self, m: Message) -> Result<()> {
        match m.kind {
            MessageKind::Append => {
                self.become_follower(m.term, m.from);
                self.handle_append(m)
            }
            MessageKind::Heartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
                Ok(())
            }
            MessageKind::Commit => {
                self.become_follower(m.term, m.from);
                self.handle_commit(&m);
                Ok(())
            }
            MessageKind::Snapshot => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m)
            }
            MessageKind::RequestPreVoteResponse | MessageKind::RequestVoteResponse => {
                let expected = if self.role == Role::PreCandidate {
                    MessageKind::RequestPreVoteResponse
                } else {
                    MessageKind::RequestVoteResponse
                };
                if m.kind != expected {
                    return Ok(());
                }
                self.tracker.record_vote(m.from, !m.reject);
                match self.poll() {
                    VoteResult::Won => {
                        if self.role == Role::PreCandidate {
                            self.campaign(false, false);
                        } else {
                            self.become_leader();
                            self.bcast_append();
                        }
                    }
                    VoteResult::Lost => {
                        let term = self.term;
                        self.become_follower(term, 0);
                    }
                    VoteResult::Pending => {}
                }
                Ok(())
            }
            _ => {
                debug!(id = self.id, kind = ?m.kind, "candidate ignores message");
                Ok(())
            }
        }
    }

    fn step_follower(&mut self, m: Message) -> Result<()> {
        match m.kind {
            MessageKind::Append => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_append(m)
            }
            MessageKind::Heartbeat => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_heartbeat(m);
                Ok(())
            }
            MessageKind::Commit => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_commit(&m);
                Ok(())
            }
            MessageKind::Snapshot => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_snapshot(m)
            }
            MessageKind::TimeoutNow => {
                info!(
                    id = self.id,
                    from = m.from,
                    "leader transfer: campaigning now"
                );
                self.hup(true);
                Ok(())
            }
            MessageKind::TransferLeader | MessageKind::ReadIndex | MessageKind::Propose => {
                if self.leader_id == 0 {
                    return Err(Error::NotLeader { leader_hint: 0 });
                }
                let mut fwd = m;
                fwd.to = self.leader_id;
                fwd.from = self.id;
                self.send(fwd);
                Ok(())
            }
            MessageKind::ReadIndexResponse => {
                if m.from != self.leader_id {
                    return Err(Error::InvalidMessage(
                        "read index answer from a non-leader".into(),
                    ));
                }
                self.read_states.push(ReadState {
                    index: m.index,
                    request_ctx: m.context,
                });
                Ok(())
            }
            _ => {
                debug!(id = self.id, kind = ?m.kind, "follower ignores message");
                Ok(())
            }
        }
    }

    fn step_leader(&mut self, m: Message) -> Result<()> {
        match m.kind {
            MessageKind::AppendResponse => self.handle_append_response(m),
            MessageKind::HeartbeatResponse => self.handle_heartbeat_response(m),
            MessageKind::ReadIndex => {
                if !self.tracker.progress.contains_key(&m.from) {
                    return Err(Error::UnknownPeer(m.from));
                }
                self.handle_read_index(m);
                Ok(())
            }
            MessageKind::TransferLeader => self.handle_transfer_leader(m.index),
            MessageKind::Propose => self.handle_forwarded_proposal(m),
            MessageKind::Append
            | MessageKind::Heartbeat
            | MessageKind::Snapshot
            | MessageKind::Commit => {
                // Two leaders in one term would break election safety: refuse loudly.
                warn!(
                    id = self.id,
                    from = m.from,
                    term = m.term,
                    "another leader in my term"
                );
                Err(Error::InvalidMessage(
                    "leader message in the leader's own term".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    // ---- follower side of replication ------------------------------------------------

    fn handle_append(&mut self, m: Message) -> Result<()> {
        if self.tracker.conf.members().is_empty() && self.raft_log.last_index() == 0 {
            // A new peer knows no membership: entries alone cannot tell it who votes, so it
            // asks for a snapshot (which carries the membership) first.
            let mut r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
            r.reject = true;
            r.index = m.index;
            r.request_snapshot = true;
            self.send(r);
            return Ok(());
        }
        for (i, e) in m.entries.iter().enumerate() {
            if e.index != m.index + 1 + i as u64 || e.term > m.term || e.term < m.log_term {
                return Err(Error::InvalidMessage(format!(
                    "append entries are not contiguous after ({}, {})",
                    m.index, m.log_term
                )));
            }
        }
        if m.index < self.raft_log.committed {
            let mut r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
            r.index = self.raft_log.committed;
            self.send(r);
            return Ok(());
        }
        match self
            .raft_log
            .maybe_append(m.index, m.log_term, m.commit, &m.entries)?
        {
            Some((last_new, appended_from)) => {
                if let Some(from) = appended_from {
                    let skip = (from - m.index - 1) as usize;
                    self.on_entries_appended(&m.entries[skip..]);
                }
                let mut r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
                r.index = last_new;
                self.send(r);
            }
            None => {
                // §5.3 with the fast back-off: tell the leader the last index whose term
                // could still match, so it skips a whole conflicting term at once.
                let probe = m.index.min(self.raft_log.last_index());
                let (hint, hint_term) = self.raft_log.find_conflict_by_term(probe, m.log_term);
                let mut r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
                r.reject = true;
                r.index = m.index;
                r.reject_hint = hint;
                r.log_term = hint_term;
                self.send(r);
            }
        }
        Ok(())
    }

    fn handle_heartbeat(&mut self, m: Message) {
        self.raft_log.commit_to(m.commit);
        let mut r = Message::new(MessageKind::HeartbeatResponse, self.id, m.from, self.term);
        r.context = m.context;
        r.index = m.index;
        self.send(r);
    }

    /// Like a heartbeat's commit, unanswered: the leader sends no more than this follower
    /// acknowledged in its term, so the entries up to it match the leader's.
    fn handle_commit(&mut self, m: &Message) {
        self.raft_log.commit_to(m.commit);
    }

    fn handle_snapshot(&mut self, m: Message) -> Result<()> {
        let Some(snap) = m.snapshot else {
            return Err(Error::InvalidMessage(
                "snapshot message without a snapshot".into(),
            ));
        };
        let (index, term) = (snap.metadata.index, snap.metadata.term);
        let mut r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
        if self.restore(*snap) {
            info!(id = self.id, index, term, "installing snapshot");
            r.index = self.raft_log.last_index();
        } else {
            r.index = self.raft_log.committed;
        }
        self.send(r);
        Ok(())
    }

    /// Replaces the log with `snap` unless the log already holds it; true if restored.
    fn restore(&mut self, snap: Snapshot) -> bool {
        let (index, term) = (snap.metadata.index, snap.metadata.term);
        if index <= self.raft_log.committed {
            return false;
        }
        if self.role != Role::Follower {
            warn!(id = self.id, "non-follower asked to restore a snapshot");
            return false;
        }
        let conf = Configuration::from_conf_state(&snap.metadata.conf_state);
        if let Err(e) = conf.check() {
            warn!(
                id = self.id,
                "snapshot with a broken membership ignored: {e}"
            );
            return false;
        }
        if self.raft_log.match_term(index, term) {
            // The log already has the snapshot's last entry: just commit up to it.
            self.raft_log.commit_to(index);
            return false;
        }
        self.raft_log.restore(snap);
        self.conf_history.clear();
        self.conf_history.push((index, conf));
        self.install_latest_conf();
        true
    }

    // ---- configuration ---------------------------------------------------------------

    /// Records the configurations carried by entries just appended at `ents[0].index`
    /// and after (they take effect on append, §4.1 of the Raft dissertation), after
    /// dropping those of the entries this append replaced.
    fn on_entries_appended(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        let start = first.index;
        let mut changed = false;
        while self.conf_history.len() > 1
            && self.conf_history.last().is_some_and(|(i, _)| *i >= start)
        {
            self.conf_history.pop();
            changed = true;
        }
        for e in ents {
            if let Some(cs) = conf_state_of(e) {
                self.conf_history
                    .push((e.index, Configuration::from_conf_state(&cs)));
                changed = true;
            }
        }
        if changed {
            self.install_latest_conf();
        }
    }

    fn install_latest_conf(&mut self) {
        let conf = self
            .conf_history
            .last()
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        self.tracker.conf = conf;
        let members = self.tracker.conf.members();
        let last = self.raft_log.last_index();
        let cap = self.tracker.max_inflight;
        self.tracker.progress.retain(|id, _| members.contains(id));
        for id in members {
            self.tracker.progress.entry(id).or_insert_with(|| {
                let mut p = Progress::new(last + 1, cap);
                p.recent_active = true;
                p
            });
        }
    }

    fn prune_conf_history(&mut self) {
        let committed = self.raft_log.committed;
        while self.conf_history.len() > 1 && self.conf_history[1].0 <= committed {
            self.conf_history.remove(0);
        }
    }

    /// The membership as of the configuration entry at `index` (for the application to
    /// store when it applies that entry).
    pub fn conf_state_at(&self, index: u64) -> Option<ConfState> {
        self.conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, c)| c.to_conf_state())
    }

    // ---- leader side of replication --------------------------------------------------

    pub(crate) fn send(&mut self, m: Message) {
        // Acknowledgements are cumulative: of two successive ones to the same leader in the
        // same term (a follower that took two appends in one Ready), the later covers the
        // earlier — the leader's view of the follower, its window and its commit end the
        // same after one as after both — so only the higher index leaves.
        if is_plain_ack(&m) {
            if let Some(last) = self.msgs.last_mut() {
                if is_plain_ack(last) && last.to == m.to && last.term == m.term {
                    if m.index > last.index {
                        *last = m;
                    }
                    return;
                }
            }
        }
        self.msgs.push(m);
    }

    /// Sends an append (or a snapshot) to `to` if it is not paused; true if sent.
    fn maybe_send_append(&mut self, to: u64, send_if_empty: bool) -> bool {
        let Some(pr) = self.tracker.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next_idx;
        let term = self.raft_log.term(next - 1);
        let ents = self.raft_log.entries(next, self.max_size_per_msg);
        if !send_if_empty && ents.as_ref().is_ok_and(|e| e.is_empty()) {
            return false;
        }
        match (term, ents) {
            (Ok(log_term), Ok(ents)) => {
                let mut m = Message::new(MessageKind::Append, self.id, to, self.term);
                m.index = next - 1;
                m.log_term = log_term;
                m.commit = self.raft_log.committed;
                let n = ents.len();
                let last = ents.last().map_or(next - 1, |e| e.index);
                m.entries = ents;
                if let Some(pr) = self.tracker.progress.get_mut(&to) {
                    pr.sent_entries(last, n);
                    // The follower commits no further than the entries it holds.
                    pr.commit_sent = pr.commit_sent.max(m.commit.min(last));
                }
                self.send(m);
                true
            }
            _ => self.send_snapshot(to),
        }
    }

    fn send_snapshot(&mut self, to: u64) -> bool {
        let Some(pr) = self.tracker.progress.get(&to) else {
            return false;
        };
        if !pr.recent_active {
            debug!(
                id = self.id,
                to, "not sending a snapshot to an inactive peer"
            );
            return false;
        }
        let snap = match self.raft_log.store.snapshot(pr.next_idx.saturating_sub(1)) {
            Ok(s) if !s.is_empty() => s,
            Ok(_) | Err(StorageError::SnapshotTemporarilyUnavailable) => {
                debug!(id = self.id, to, "snapshot not ready yet");
                return false;
            }
            Err(e) => {
                warn!(id = self.id, to, "cannot read snapshot: {e}");
                return false;
            }
        };
        let index = snap.metadata.index;
        if let Some(pr) = self.tracker.progress.get_mut(&to) {
            pr.become_snapshot(index);
        }
        let mut m = Message::new(MessageKind::Snapshot, self.id, to, self.term);
        m.snapshot = Some(Box::new(snap));
        self.send(m);
        debug!(id = self.id, to, index, "sent snapshot");
        true
    }

    pub(crate) fn bcast_append(&mut self) {
        let ids: Vec<u64> = self
            .tracker
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect();
        for id in ids {
            self.maybe_send_append(id, true);
        }
    }

    /// Tells the followers that the commit index moved. etcd and raft-rs send each an
    /// append, empty when there is nothing new, and each is answered; here a follower in
    /// replicate state learns it at the lowest cost that still tells it soon
    /// ([`Raft::announce_commit`]). Other followers get the append as in etcd.
    fn bcast_commit(&mut self) {
        let followers: Vec<(u64, ProgressState)> = self
            .tracker
            .progress
            .iter()
            .filter(|&(&id, _)| id != self.id)
            .map(|(&id, pr)| (id, pr.state))
            .collect();
        for (id, state) in followers {
            if state == ProgressState::Replicate {
                self.announce_commit(id);
            } else {
                self.maybe_send_append(id, true);
            }
        }
    }

    /// Tells follower `to` (in replicate state) the commit index, if it may not know it:
    /// - it has entries past the commit index in flight: nothing now — the next append
    ///   carries the index (a busy leader sends one in the same round, with the round's
    ///   proposals), and when those entries are acknowledged this runs again;
    /// - it has entries to be sent: they are, and their append carries the index;
    /// - entries up to the commit index are still in flight: nothing now — this runs
    ///   again at their acknowledgement;
    /// - it acknowledged everything committed: a `Commit`, which nothing answers.
    ///
    /// So under load a commit costs no message of its own, and at low load one unanswered
    /// message per follower instead of an append and its answer. A lost `Commit` is made
    /// good by the next append or heartbeat.
    fn announce_commit(&mut self, to: u64) {
        let committed = self.raft_log.committed;
        let last = self.raft_log.last_index();
        let Some(pr) = self.tracker.progress.get(&to) else {
            return;
        };
        if pr.state != ProgressState::Replicate || pr.next_idx > committed + 1 {
            return;
        }
        if pr.next_idx <= last {
            while self.maybe_send_append(to, false) {}
            return;
        }
        if pr.matched < committed || pr.commit_sent >= committed {
            return;
        }
        let mut m = Message::new(MessageKind::Commit, self.id, to, self.term);
        m.commit = committed;
        if let Some(pr) = self.tracker.progress.get_mut(&to) {
            pr.commit_sent = committed;
        }
        self.send(m);
    }

    fn bcast_heartbeat(&mut self) {
        let ctx = self.read_only.last_pending_ctx().unwrap_or_default();
        self.bcast_heartbeat_with_ctx(ctx);
    }

    fn bcast_heartbeat_with_ctx(&mut self, ctx: Bytes) {
        let ids: Vec<u64> = self
            .tracker
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect();
        for id in ids {
            let matched = self.tracker.progress[&id].matched;
            let mut m = Message::new(MessageKind::Heartbeat, self.id, id, self.term);
            // Never tell a follower to commit past what it is known to hold.
            m.commit = matched.min(self.raft_log.committed);
            m.context = ctx.clone();
            m.index = self.clock;
            self.send(m);
        }
    }

    fn handle_append_response(&mut self, m: Message) -> Result<()> {
        let last_index = self.raft_log.last_index();
        let Some(pr) = self.tracker.progress.get_mut(&m.from) else {
            return Err(Error::UnknownPeer(m.from));
        };
        pr.recent_active = true;
        if m.reject {
            if m.request_snapshot {
                pr.become_probe();
                pr.next_idx = 1;
                if !self.send_snapshot(m.from) {
                    if let Some(pr) = self.tracker.progress.get_mut(&m.from) {
                        pr.probe_sent = true; // try again at the next heartbeat
                    }
                }
                return Ok(());
            }
            let hint = if m.log_term > 0 {
                self.raft_log
                    .find_conflict_by_term(m.reject_hint, m.log_term)
                    .0
            } else {
                m.reject_hint
            };
            let pr = self
                .tracker
                .progress
                .get_mut(&m.from)
                .expect("checked above");
            if pr.maybe_decr_to(m.index, hint) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.maybe_send_append(m.from, true);
            }
            return Ok(());
        }
        if m.index > last_index {
            return Err(Error::InvalidMessage(format!(
                "peer {} acknowledged index {} past the last index {last_index}",
                m.from, m.index
            )));
        }
        let first_index = self.raft_log.first_index();
        let old_paused = pr.is_paused();
        if !pr.maybe_update(m.index) {
            return Ok(());
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot => {
                if pr.matched + 1 >= first_index {
                    pr.become_probe();
                    pr.become_replicate();
                }
            }
            ProgressState::Replicate => pr.ins.free_to(m.index),
        }
        if self.maybe_commit() {
            self.bcast_commit();
        } else if old_paused {
            self.maybe_send_append(m.from, true);
        }
        // Pipeline: keep sending while there are entries and room in the window.
        while self.maybe_send_append(m.from, false) {}
        // The follower caught up with the commit index and may not know it.
        self.announce_commit(m.from);
        if self.lead_transferee == Some(m.from)
            && self
                .tracker
                .progress
                .get(&m.from)
                .is_some_and(|p| p.matched == self.raft_log.last_index())
        {
            self.send_timeout_now(m.from);
        }
        Ok(())
    }

    fn handle_heartbeat_response(&mut self, m: Message) -> Result<()> {
        let clock = self.clock;
        let last_index = self.raft_log.last_index();
        let Some(pr) = self.tracker.progress.get_mut(&m.from) else {
            return Err(Error::UnknownPeer(m.from));
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        // The follower echoes the clock of the heartbeat it answers: it heard from this
        // leader at or after that tick. An echo from the future is a bad peer.
        if m.index <= clock {
            pr.lease_ack_tick = pr.lease_ack_tick.max(m.index);
        }
        if pr.state == ProgressState::Replicate && pr.ins.full() {
            pr.ins.free_first_one();
        }
        if pr.matched < last_index {
            self.maybe_send_append(m.from, true);
        }
        // Lease-based reads fall back to this heartbeat round while the lease is not
        // valid, so the acknowledgements count in both modes.
        if m.context.is_empty() {
            return Ok(());
        }
        let Some(acks) = self.read_only.recv_ack(m.from, &m.context) else {
            return Ok(());
        };
        let acks: BTreeSet<u64> = acks.iter().copied().collect();
        if self
            .tracker
            .conf
            .voters
            .vote_result(|id| acks.contains(&id).then_some(true))
            != VoteResult::Won
        {
            return Ok(());
        }
        for rs in self.read_only.advance(&m.context) {
            self.answer_read(rs.req, rs.index);
        }
        Ok(())
    }

    /// Commits what a quorum holds; on a change, does what the new commit allows.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let mci = self.tracker.committed();
        let before = self.raft_log.committed;
        if !self.raft_log.maybe_commit(mci, self.term) {
            return false;
        }
        let committed = self.raft_log.committed;
        // Free the uncommitted budget for what just committed.
        if let Ok(ents) = self.raft_log.slice(before + 1, committed + 1, u64::MAX) {
            let size: u64 = ents.iter().map(|e| e.size_bytes()).sum();
            self.uncommitted_size = self.uncommitted_size.saturating_sub(size);
        }
        self.prune_conf_history();
        if self.role == Role::Leader && committed >= self.pending_conf_index {
            if !self.tracker.is_voter(self.id) {
                // The configuration that removed this leader is committed: step down.
                info!(
                    id = self.id,
                    term = self.term,
                    "removed from the voters; stepping down"
                );
                let term = self.term;
                self.become_follower(term, 0);
                return true;
            }
            if self.tracker.conf.voters.is_joint() && self.tracker.conf.auto_leave {
                let _ = self.propose_conf_change_inner(ConfChange::leave_joint(), true);
            }
        }
        if self.role == Role::Leader && self.committed_entry_in_current_term() {
            for m in std::mem::take(&mut self.pending_read_index) {
                self.handle_read_index(m);
            }
        }
        true
    }

    fn committed_entry_in_current_term(&self) -> bool {
        self.raft_log.term_or_zero(self.raft_log.committed) == self.term
    }

    fn send_timeout_now(&mut self, to: u64) {
        self.send(Message::new(
            MessageKind::TimeoutNow,
            self.id,
            to,
            self.term,
        ));
    }

    // ---- proposals -------------------------------------------------------------------

    fn check_can_propose(&self) -> Result<()> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        if self.lead_transferee.is_some() {
            return Err(Error::ProposalDropped("leadership transfer in progress"));
        }
        if !self.tracker.progress.contains_key(&self.id) {
            return Err(Error::ProposalDropped("leader was removed from the group"));
        }
        Ok(())
    }

    fn append_entries(&mut self, mut ents: Vec<Entry>) -> Result<u64> {
        let size: u64 = ents.iter().map(|e| e.size_bytes()).sum();
        if self.max_uncommitted_size > 0
            && self.uncommitted_size > 0
            && self.uncommitted_size + size > self.max_uncommitted_size
        {
            return Err(Error::ProposalDropped("too many uncommitted bytes"));
        }
        let last = self.raft_log.last_index();
        for (i, e) in ents.iter_mut().enumerate() {
            e.term = self.term;
            e.index = last + 1 + i as u64;
        }
        self.uncommitted_size += size;
        let new_last = self.raft_log.append(&ents);
        self.on_entries_appended(&ents);
        Ok(new_last)
    }

    /// Appends a client command (leader only) and starts replicating it; returns its index.
    pub fn propose(&mut self, data: Bytes) -> Result<u64> {
        self.check_can_propose()?;
        let index = self.append_entries(vec![Entry::new(EntryKind::Normal, 0, 0, data)])?;
        self.bcast_append();
        Ok(index)
    }

    /// Appends several client commands as one batch; returns the last index.
    pub fn propose_batch(&mut self, data: impl IntoIterator<Item = Bytes>) -> Result<u64> {
        self.check_can_propose()?;
        let ents: Vec<Entry> = data
            .into_iter()
            .map(|d| Entry::new(EntryKind::Normal, 0, 0, d))
            .collect();
        if ents.is_empty() {
            return Ok(self.raft_log.last_index());
        }
        let index = self.append_entries(ents)?;
        self.bcast_append();
        Ok(index)
    }

    /// Sends client commands to the leader, for a follower that accepted them: the leader
    /// appends them as if proposed there (a follower learns the outcome by applying them).
    /// Returns the leader's id. Only plain commands travel this way; membership changes
    /// are proposed on the leader.
    pub fn forward_proposals(&mut self, data: impl IntoIterator<Item = Bytes>) -> Result<u64> {
        if self.role == Role::Leader {
            return Err(Error::ProposalDropped("this peer leads: propose instead"));
        }
        if self.leader_id == 0 {
            return Err(Error::NotLeader { leader_hint: 0 });
        }
        let mut m = Message::new(MessageKind::Propose, self.id, self.leader_id, self.term);
        m.entries = data
            .into_iter()
            .map(|d| Entry::new(EntryKind::Normal, 0, 0, d))
            .collect();
        if !m.entries.is_empty() {
            self.send(m);
        }
        Ok(self.leader_id)
    }

    fn handle_forwarded_proposal(&mut self, m: Message) -> Result<()> {
        if !self.tracker.progress.contains_key(&m.from) {
            return Err(Error::UnknownPeer(m.from));
        }
        if m.entries.iter().any(|e| e.kind != EntryKind::Normal) {
            return Err(Error::InvalidMessage(
                "a forwarded proposal may carry only plain commands".into(),
            ));
        }
        self.check_can_propose()?;
        if m.entries.is_empty() {
            return Ok(());
        }
        self.append_entries(m.entries)?;
        self.bcast_append();
        Ok(())
    }

    /// Appends a membership change (leader only); it takes effect at once on this leader,
    /// and on each follower when the entry reaches its log.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<u64> {
        self.check_can_propose()?;
        self.propose_conf_change_inner(cc, false)
    }

    fn propose_conf_change_inner(&mut self, mut cc: ConfChange, auto: bool) -> Result<u64> {
        if self.pending_conf_index > self.raft_log.committed {
            return Err(Error::InvalidConfChange(format!(
                "the change at {} is not committed yet",
                self.pending_conf_index
            )));
        }
        let last = self.raft_log.last_index();
        let changer = Changer::new(&self.tracker, last);
        let (conf, _) = if cc.leaves_joint() {
            changer.leave_joint()?
        } else if let Some(auto_leave) = cc.enters_joint() {
            changer.enter_joint(auto_leave, &cc.changes)?
        } else {
            changer.simple(&cc.changes)?
        };
        cc.result = Some(conf.to_conf_state());
        let data = codec::encode(&cc).map_err(|e| Error::InvalidConfChange(e.to_string()))?;
        let index = self.append_entries(vec![Entry::new(EntryKind::ConfChange, 0, 0, data)])?;
        self.pending_conf_index = index;
        info!(id = self.id, index, auto, conf = ?cc.result, "proposed membership change");
        self.bcast_append();
        Ok(index)
    }

    // ---- reads -----------------------------------------------------------------------

    /// Asks for a linearizable read; the answer comes as a [`ReadState`] in a Ready.
    pub fn read_index(&mut self, ctx: Bytes) -> Result<()> {
        match self.role {
            Role::Leader => {
                let m = Message {
                    kind: MessageKind::ReadIndex,
                    from: self.id,
                    to: self.id,
                    term: self.term,
                    context: ctx,
                    ..Default::default()
                };
                self.handle_read_index(m);
                Ok(())
            }
            _ if self.leader_id != 0 => {
                let mut m =
                    Message::new(MessageKind::ReadIndex, self.id, self.leader_id, self.term);
                m.context = ctx;
                self.send(m);
                Ok(())
            }
            _ => Err(Error::NotLeader { leader_hint: 0 }),
        }
    }

    fn lease_valid(&self) -> bool {
        let lease = self.election_tick.saturating_sub(LEASE_MARGIN_TICKS) as u64;
        let acked = self.tracker.quorum_lease_tick(self.id, self.clock);
        // 0 means "no quorum has echoed a heartbeat of this term yet": a peer that only
        // voted for us is not bound to a leader, so there is no lease to read from.
        self.check_quorum
            && self.lead_transferee.is_none()
            && acked > 0
            && self.clock < acked.saturating_add(lease)
    }

    fn handle_read_index(&mut self, m: Message) {
        if self.tracker.is_singleton(self.id) {
            let index = self.raft_log.committed;
            self.answer_read(m, index);
            return;
        }
        if !self.committed_entry_in_current_term() {
            // §6.4: a new leader does not know the commit index until an entry of its own
            // term commits; hold the read until then.
            if self.pending_read_index.len() < PENDING_READ_INDEX_MAX {
                self.pending_read_index.push(m);
            }
            return;
        }
        let index = self.raft_log.committed;
        if self.read_only_option == ReadOnlyOption::LeaseBased && self.lease_valid() {
            self.answer_read(m, index);
            return;
        }
        let ctx = m.context.clone();
        if self.read_only.add_request(index, m, self.id) {
            self.bcast_heartbeat_with_ctx(ctx);
        }
    }

    fn answer_read(&mut self, req: Message, index: u64) {
        if req.from == self.id {
            self.read_states.push(ReadState {
                index,
                request_ctx: req.context,
            });
        } else {
            let mut r = Message::new(MessageKind::ReadIndexResponse, self.id, req.from, self.term);
            r.index = index;
            r.context = req.context;
            self.send(r);
        }
    }

    // ---- leader transfer -------------------------------------------------------------

    /// Hands leadership to `to`: it is brought up to date, then told to campaign at once.
    pub fn transfer_leader(&mut self, to: u64) -> Result<()> {
        match self.role {
            Role::Leader => self.handle_transfer_leader(to),
            _ if self.leader_id != 0 => {
                let mut m = Message::new(
                    MessageKind::TransferLeader,
                    self.id,
                    self.leader_id,
                    self.term,
                );
                m.index = to;
                self.send(m);
                Ok(())
            }
            _ => Err(Error::NotLeader { leader_hint: 0 }),
        }
    }

    fn handle_transfer_leader(&mut self, to: u64) -> Result<()> {
        if to == self.id {
            return Ok(()); // already leader
        }
        if !self.tracker.progress.contains_key(&to) {
            return Err(Error::UnknownPeer(to));
        }
        if !self.tracker.is_voter(to) {
            return Err(Error::InvalidMessage(format!(
                "cannot transfer leadership to learner {to}"
            )));
        }
        if self.lead_transferee == Some(to) {
            return Ok(());
        }
        // The transfer must finish within one election timeout, or it is abandoned.
        self.election_elapsed = 0;
        self.lead_transferee = Some(to);
        info!(id = self.id, to, "transferring leadership");
        if self.tracker.progress[&to].matched == self.raft_log.last_index() {
            self.send_timeout_now(to);
        } else {
            self.maybe_send_append(to, true);
        }
        Ok(())
    }

    // ---- reports from the caller -----------------------------------------------------

    /// The caller could not reach `id`: stop pipelining to it.
    pub fn report_unreachable(&mut self, id: u64) {
        if let Some(pr) = self.tracker.progress.get_mut(&id) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    /// The snapshot sent to `id` was installed (or failed to be).
    pub fn report_snapshot(&mut self, id: u64, success: bool) {
        if let Some(pr) = self.tracker.progress.get_mut(&id) {
            if pr.state != ProgressState::Snapshot {
                return;
            }
            if !success {
                pr.pending_snapshot = 0;
            }
            pr.become_probe();
            // Wait for the next heartbeat answer before probing again.
            pr.probe_sent = true;
        }
    }

    /// The caller made entries up to (`term`, `index`) durable (or the snapshot at that
    /// position). A leader counts itself toward the quorum only from here.
    pub fn on_persisted(&mut self, term: u64, index: u64) {
        if self
            .raft_log
            .unstable
            .snapshot
            .as_ref()
            .is_some_and(|s| s.metadata.index == index && s.metadata.term == term)
        {
            self.raft_log.stable_snap_to(index);
        } else {
            self.raft_log.stable_to(index, term);
        }
        if self.role == Role::Leader {
            let persisted = self.raft_log.persisted;
            let updated = self
                .tracker
                .progress
                .get_mut(&self.id)
                .is_some_and(|pr| pr.maybe_update(persisted));
            if updated && self.maybe_commit() {
                self.bcast_commit();
            }
        }
    }

    /// The application applied everything up to `index`.
    pub fn applied_to(&mut self, index: u64) {
        self.raft_log.applied_to(index);
    }
}

/// An accepted append's acknowledgement: a plain statement that the sender holds the log up
/// to `index`, which a later one to the same leader in the same term supersedes.
fn is_plain_ack(m: &Message) -> bool {
    m.kind == MessageKind::AppendResponse && !m.reject && !m.request_snapshot
}
