//! The store's side of membership changes (see node/membership.rs for the protocol):
//! proposing a change on the leader or sending it there, telling removed replicas they
//! are gone, and destroying this node's replica once it learns it was removed.

use flotilla_common::{Entry, EntryKind, Message, MessageKind, RaftEnvelope};
use flotilla_engine::{KeyRange, LogBatch, RegionBatch, SnapshotMark};
use tracing::{debug, info, warn};

use super::super::descriptor::{PeerMeta, PeerRole, RegionDescriptor};
use super::super::directory::{NodeState, SharedDirectory};
use super::super::error::{storage_error, NodeError};
use super::super::membership::{
    change_done, check_change, plan_change, ChangeOutcome, LeaderView, PeerChange,
};
use super::super::peer::Peer;
use super::Store;
use crate::raft;
use flotilla_transport::Transport;

/// Election timeouts without a word from a leader after which a replica asks whether it
/// is still a member (`Store::probe_membership`): longer than an election takes, so a
/// healthy region never probes.
pub const PROBE_SILENT_ELECTIONS: u64 = 2;

/// What applying one membership change on this node leaves to do once the round is
/// written: notices to the replicas it removed, and whether it removed this node's own.
pub(super) struct MembershipApplied {
    region_id: u64,
    notices: Vec<RaftEnvelope>,
    removed_here: bool,
}

/// Called right after a replica applied a membership change (`before`: its peers before):
/// the leader tells every removed replica at once (it sends them nothing else any more),
/// and a replica that was itself removed is destroyed after the round.
pub(super) fn membership_applied(
    node_id: u64,
    before: &[PeerMeta],
    p: &Peer,
    out: &mut Vec<MembershipApplied>,
) {
    let me = p.raw.raft().id();
    let mut notices = Vec::new();
    if p.is_leader() {
        for gone in before.iter().filter(|b| p.desc.peer(b.peer_id).is_none()) {
            notices.push(removed_notice(node_id, me, &p.desc, gone));
        }
    }
    let removed_here = p.desc.peer(me).is_none();
    if removed_here || !notices.is_empty() {
        out.push(MembershipApplied {
            region_id: p.desc.id,
            notices,
            removed_here,
        });
    }
}

/// "You were removed", from the member `from_peer` on `node_id` to `gone`, with the
/// member's descriptor for the receiver to check.
fn removed_notice(
    node_id: u64,
    from_peer: u64,
    desc: &RegionDescriptor,
    gone: &PeerMeta,
) -> RaftEnvelope {
    let mut m = Message::new(MessageKind::PeerRemoved, from_peer, gone.peer_id, 0);
    m.context = desc.encode().into();
    RaftEnvelope::new(desc.id, node_id, gone.node_id, m)
}

/// Whether `m` may be membership traffic the store handles itself
/// ([`Store::take_membership_message`]). Told apart by kind alone for the messages of the
/// hot path (appends, heartbeats, their answers, forwarded commands look at one entry).
pub(super) fn is_membership_message(m: &Message) -> bool {
    match m.kind {
        MessageKind::PeerRemoved | MessageKind::RequestVote | MessageKind::RequestPreVote => true,
        MessageKind::Propose => m
            .entries
            .first()
            .is_some_and(|e| e.kind == EntryKind::ConfChange),
        _ => false,
    }
}

/// Whether `peer_id` belongs to the raft configuration of `p` (as appended, which may be
/// ahead of its descriptor): voters, outgoing voters and learners.
fn in_configuration(p: &Peer, peer_id: u64) -> bool {
    let cs = p.raw.raft().conf_state();
    cs.voters
        .iter()
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners)
        .chain(&cs.learners_next)
        .any(|&id| id == peer_id)
}

/// Whether a new replica may be placed on `target`: the transport must reach it, and the
/// node directory must not list it in a state other than `Up` (a node being removed gets
/// no new replicas).
fn placeable(
    transport: &dyn Transport,
    directory: &SharedDirectory,
    target: u64,
) -> Result<(), NodeError> {
    if !transport.knows(target) {
        return Err(NodeError::Refused(format!("unknown node {target}")));
    }
    match directory.read().state_of(target) {
        Some(state) if state != NodeState::Up => Err(NodeError::Refused(format!(
            "node {target} is in state {}; only an up node takes new replicas",
            state.as_str()
        ))),
        _ => Ok(()),
    }
}

/// Proposes `change` on `p`, its region's leader, after the leader's checks; `placeable`:
/// whether a new replica may go to a node.
fn propose_change(
    p: &mut Peer,
    change: &PeerChange,
    placeable: impl Fn(u64) -> Result<(), NodeError>,
) -> Result<ChangeOutcome, NodeError> {
    if change_done(&p.desc, change) {
        return Ok(ChangeOutcome::Done);
    }
    let target = change.node_id();
    if matches!(change, PeerChange::AddLearner { .. }) {
        placeable(target)?;
    }
    let r = p.raw.raft();
    // One change at a time, counted to its apply here: the descriptor the next one is
    // checked against must show the previous one.
    if r.pending_conf_index() > p.applied {
        return Err(NodeError::Dropped(format!(
            "region {}: a membership change is being applied",
            p.desc.id
        )));
    }
    let view = LeaderView {
        leader_peer: r.id(),
        last_index: r.last_index(),
        conf_index: r.pending_conf_index(),
        progress: p
            .desc
            .peers
            .iter()
            .filter_map(|x| {
                r.progress(x.peer_id)
                    .map(|pr| (x.peer_id, pr.matched, pr.recent_active))
            })
            .collect(),
    };
    let Some(cc) = plan_change(&p.desc, change, &view)? else {
        return Ok(ChangeOutcome::LeaderOnTarget);
    };
    match p.raw.propose_conf_change(cc) {
        Ok(index) => {
            info!(
                region = p.desc.id,
                ?change,
                index,
                "membership change proposed"
            );
            Ok(ChangeOutcome::Proposed)
        }
        Err(raft::Error::NotLeader { .. }) => Err(p.not_leader()),
        Err(e) => Err(NodeError::Dropped(e.to_string())),
    }
}

impl Store {
    /// This node's replica's descriptor of `region_id`.
    pub(super) fn descriptor_of(&self, region_id: u64) -> Result<RegionDescriptor, NodeError> {
        self.peers
            .get(&region_id)
            .map(|p| p.desc.clone())
            .ok_or(NodeError::RegionNotFound)
    }

    /// Asks for a membership change of `region_id`: proposed here if this replica leads,
    /// else sent to the leader. `check`: the first ask of a caller, checked against this
    /// replica's descriptor for the errors the caller must hear (a later ask may find the
    /// change done already).
    pub(super) fn change_peer(
        &mut self,
        region_id: u64,
        change: PeerChange,
        check: bool,
    ) -> Result<ChangeOutcome, NodeError> {
        let node_id = self.cfg.node_id;
        let p = self
            .peers
            .get_mut(&region_id)
            .ok_or(NodeError::RegionNotFound)?;
        if check {
            check_change(&p.desc, &change)?;
            let target = change.node_id();
            if matches!(change, PeerChange::AddLearner { .. }) {
                placeable(&*self.transport, &self.directory, target)?;
            }
        } else if change_done(&p.desc, &change) {
            return Ok(ChangeOutcome::Done);
        }
        if p.is_leader() {
            let (transport, directory) = (&*self.transport, &self.directory);
            return propose_change(p, &change, |n| placeable(transport, directory, n));
        }
        if matches!(change, PeerChange::Remove { node_id } if p.leader_node() == Some(node_id)) {
            // Answered here, not left to the leader: it would drop the request silently.
            return Ok(ChangeOutcome::LeaderOnTarget);
        }
        let r = p.raw.raft();
        let Some(leader) = p.desc.peer(r.leader_id()) else {
            return Err(p.not_leader());
        };
        let mut m = Message::new(MessageKind::Propose, r.id(), leader.peer_id, r.term());
        m.entries = vec![Entry::new(EntryKind::ConfChange, 0, 0, change.encode())];
        self.transport
            .send(RaftEnvelope::new(region_id, node_id, leader.node_id, m))
            .map_err(|e| NodeError::Dropped(format!("not sent to the leader: {e}")))?;
        Ok(ChangeOutcome::Proposed)
    }

    /// Takes the raft traffic that is about membership, not for the raft core: a
    /// membership change a follower sent to this (leader) replica, a notice that this
    /// node's replica was removed, and vote requests from peers outside the region's
    /// configuration (ignored: a removed replica must not disturb the region; it is told it
    /// was removed instead). Hands back everything else.
    pub(super) fn take_membership_message(&mut self, env: RaftEnvelope) -> Option<RaftEnvelope> {
        let node_id = self.cfg.node_id;
        match env.message.kind {
            MessageKind::Propose if is_membership_message(&env.message) => {
                // (A change for a region not here is dropped: the asker tries again.)
                let p = self.peers.get_mut(&env.region_id)?;
                let change = match env.message.entries.as_slice() {
                    [e] => PeerChange::decode(&e.data),
                    _ => {
                        warn!(
                            region = env.region_id,
                            "a forwarded membership change must travel alone"
                        );
                        return None;
                    }
                };
                let change = match change {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(
                            region = env.region_id,
                            from = env.from_node,
                            "undecodable membership change: {e}"
                        );
                        return None;
                    }
                };
                if !p.is_leader() || !in_configuration(p, env.message.from) {
                    return None; // the asker tries again
                }
                let (transport, directory) = (&*self.transport, &self.directory);
                let outcome = propose_change(p, &change, |n| placeable(transport, directory, n));
                debug!(
                    region = env.region_id,
                    ?change,
                    ?outcome,
                    "forwarded membership change"
                );
                None
            }
            MessageKind::PeerRemoved => {
                self.removed_notice_received(env);
                None
            }
            MessageKind::RequestVote | MessageKind::RequestPreVote => {
                let Some(p) = self.peers.get(&env.region_id) else {
                    return Some(env);
                };
                if in_configuration(p, env.message.from) {
                    return Some(env);
                }
                debug!(
                    region = env.region_id,
                    from = env.message.from,
                    "vote request from a peer outside the configuration ignored"
                );
                let gone = PeerMeta {
                    peer_id: env.message.from,
                    node_id: env.from_node,
                    role: Default::default(),
                };
                let notice = removed_notice(node_id, p.raw.raft().id(), &p.desc, &gone);
                if let Err(e) = self.transport.send(notice) {
                    debug!(region = env.region_id, "removal notice not sent: {e}");
                }
                None
            }
            _ => Some(env),
        }
    }

    /// A member says this node's replica was removed: destroys it if the member's
    /// descriptor is newer (a higher `conf_ver`) and does not list it. Peer ids are never
    /// reused, so a replica missing from a newer membership was removed for good.
    fn removed_notice_received(&mut self, env: RaftEnvelope) {
        let region_id = env.region_id;
        let Some(p) = self.peers.get(&region_id) else {
            return;
        };
        let theirs = match RegionDescriptor::decode(&env.message.context) {
            Ok(d) => d,
            Err(e) => {
                warn!(
                    region = region_id,
                    from = env.from_node,
                    "bad removal notice: {e}"
                );
                return;
            }
        };
        let me = p.raw.raft().id();
        let from = env.message.from;
        if theirs.id != region_id || env.message.to != me {
            debug!(
                region = region_id,
                from = env.from_node,
                "removal notice not for this replica"
            );
            return;
        }
        if theirs.epoch.conf_ver < p.desc.epoch.conf_ver
            && p.desc.peer(from).is_none()
            && !in_configuration(p, from)
        {
            // A probe from a replica that hears no leader (see `probe_membership`), and
            // that this newer membership no longer lists: tell it.
            let gone = PeerMeta {
                peer_id: from,
                node_id: env.from_node,
                role: Default::default(),
            };
            let notice = removed_notice(self.cfg.node_id, me, &p.desc, &gone);
            if let Err(e) = self.transport.send(notice) {
                debug!(region = region_id, "removal notice not sent: {e}");
            }
            return;
        }
        if theirs.epoch.conf_ver <= p.desc.epoch.conf_ver || theirs.peer(me).is_some() {
            debug!(
                region = region_id,
                from = env.from_node,
                "removal notice does not apply"
            );
            return;
        }
        info!(
            region = region_id,
            conf_ver = theirs.epoch.conf_ver,
            "a member says this replica was removed"
        );
        if let Err(e) = self.destroy_replica(region_id) {
            warn!(region = region_id, "removed replica not destroyed: {e}");
        }
    }

    /// A merge source's leader on a node without a replica of the target (replicas moved
    /// since the merge was asked for) cannot propose the target's `CommitMerge`: it hands
    /// the source's leadership to the next voter, so that a leader on a node that has the
    /// target drives the merge (which the target refuses and the source rolls back if the
    /// two are on different nodes).
    pub(super) fn hand_off_merge(&mut self, source: u64) {
        let node_id = self.cfg.node_id;
        let Some(p) = self.peers.get_mut(&source) else {
            return;
        };
        if p.raw.raft().lead_transferee().is_some() {
            return;
        }
        let mut voters: Vec<PeerMeta> = p
            .desc
            .peers
            .iter()
            .copied()
            .filter(|x| x.role == PeerRole::Voter)
            .collect();
        voters.sort_by_key(|x| x.node_id);
        let next = voters
            .iter()
            .find(|x| x.node_id > node_id)
            .or_else(|| voters.first())
            .filter(|x| x.node_id != node_id);
        if let Some(to) = next {
            info!(
                region = source,
                to_node = to.node_id,
                "merge source: no target replica here, handing the leadership on"
            );
            let _ = p.raw.transfer_leader(to.peer_id);
        }
    }

    /// Asks, for every replica that has not heard from a leader for
    /// [`PROBE_SILENT_ELECTIONS`] election timeouts, whether it is still a member: sends
    /// its descriptor in a `PeerRemoved` message to the other peers it knows, and a member
    /// with a newer membership that no longer lists it answers with the notice. A voter
    /// removed while away learns it from its vote requests as well; a learner never
    /// campaigns, so this is how a learner removed while it was down or cut off learns it.
    pub(super) fn probe_membership(&mut self) {
        let silent = PROBE_SILENT_ELECTIONS * self.cfg.election_ticks as u64;
        let node_id = self.cfg.node_id;
        let mut probes = Vec::new();
        for p in self.peers.values() {
            let r = p.raw.raft();
            if p.is_leader() || (r.election_elapsed() as u64) < silent {
                continue;
            }
            let me = r.id();
            for other in p.desc.peers.iter().filter(|x| x.peer_id != me) {
                // Addressed like a notice, but from a replica with an older membership: the
                // receiver answers only if its own is newer and lacks the sender.
                probes.push(removed_notice(node_id, me, &p.desc, other));
            }
        }
        for probe in probes {
            if let Err(e) = self.transport.send(probe) {
                debug!("membership probe not sent: {e}");
            }
        }
    }

    /// Finishes the membership changes a round applied (after its write): sends the
    /// removal notices and destroys the replicas removed from this node.
    pub(super) fn finish_membership(&mut self, applied: Vec<MembershipApplied>) {
        for a in applied {
            for notice in a.notices {
                if let Err(e) = self.transport.send(notice) {
                    debug!(region = a.region_id, "removal notice not sent: {e}");
                }
            }
            if a.removed_here {
                if let Err(e) = self.destroy_replica(a.region_id) {
                    warn!(region = a.region_id, "removed replica not destroyed: {e}");
                }
            }
        }
    }

    /// Destroys this node's replica of `region_id`: fails what waits on it, cuts its raft
    /// log, deletes its data range (unless another region here owns part of it) and its
    /// records, and drops its route.
    pub(super) fn destroy_replica(&mut self, region_id: u64) -> Result<(), NodeError> {
        let Some(mut p) = self.peers.remove(&region_id) else {
            return Ok(());
        };
        p.fail_all(NodeError::Dropped(format!(
            "the replica of region {region_id} was removed from this node"
        )));
        let applied = p.applied;
        let term = p.raw.raft().term();
        self.regions.retain(|id| id != region_id);
        self.orphans.remove(&region_id);
        self.destroy_records(region_id, &p.desc, applied, term)?;
        info!(
            region = region_id,
            "replica removed from this node destroyed"
        );
        Ok(())
    }

    /// Deletes what this node stores of a region it no longer holds a replica of (also at
    /// start, for one whose destruction a crash interrupted): its raft log is cut to
    /// nothing after `applied`, its data range deleted unless a region here overlaps it,
    /// its descriptor, applied index and sessions removed.
    pub(super) fn destroy_records(
        &mut self,
        region_id: u64,
        desc: &RegionDescriptor,
        applied: u64,
        term: u64,
    ) -> Result<(), NodeError> {
        let storage = storage_error;
        if applied > 0 && self.kv.applied_index(region_id) >= applied {
            let term = self.log.term(region_id, applied).unwrap_or(term);
            let permit = self
                .kv
                .compaction_permit(region_id, applied)
                .map_err(storage)?;
            let mut batch = LogBatch::new();
            batch.push(RegionBatch::new(region_id).with_snapshot(
                SnapshotMark {
                    index: applied,
                    term,
                },
                permit,
            ));
            self.log.write(batch).map_err(storage)?;
        }
        self.forget_commit_past_log(region_id)?;
        let overlaps = self.peers.values().any(|o| {
            let a = &o.desc;
            (desc.end_key.is_empty() || a.start_key < desc.end_key)
                && (a.end_key.is_empty() || desc.start_key < a.end_key)
        });
        let range = KeyRange::new(desc.start_key.clone(), desc.end_key.clone());
        if overlaps {
            warn!(
                region = region_id,
                "destroyed replica's range overlaps a region here: its data stays"
            );
        }
        self.kv
            .destroy_region(region_id, (!overlaps).then_some(&range))
            .map_err(storage)?;
        Ok(())
    }

    /// Lowers the stored commit index of a region with no replica here to the last index
    /// of what is left of its log. A replica destroyed with entries committed but not yet
    /// applied leaves a hard state whose commit is past the entries kept (the log is cut
    /// at the applied index); a replica of the region created here later (a new raft peer,
    /// from a snapshot) would refuse to load over it. The term and vote stay: terms only
    /// grow, and a vote of the old peer binds nobody the new one could vote for.
    pub(super) fn forget_commit_past_log(&mut self, region_id: u64) -> Result<(), NodeError> {
        let hs = self.log.hard_state(region_id);
        let last = self.log.last_index(region_id);
        if hs.commit <= last {
            return Ok(());
        }
        let hs = flotilla_common::HardState { commit: last, ..hs };
        let mut batch = LogBatch::new();
        batch.push(RegionBatch::new(region_id).with_hard_state(hs));
        self.log.write(batch).map_err(storage_error)?;
        Ok(())
    }

    /// At start: destroys what is left of regions whose descriptor here no longer lists
    /// this node (a crash between applying the removal and destroying the replica).
    pub(super) fn destroy_leftovers(&mut self, ids: &[u64]) -> Result<(), NodeError> {
        for &region_id in ids {
            if self.peers.contains_key(&region_id) {
                continue;
            }
            let Some(bytes) = self.kv.descriptor(region_id).map_err(storage_error)? else {
                continue;
            };
            let Ok(desc) = RegionDescriptor::decode(&bytes) else {
                continue;
            };
            if desc.peer_on_node(self.cfg.node_id).is_some() {
                continue;
            }
            let applied = self.kv.applied_index(region_id);
            let term = self.log.hard_state(region_id).term;
            info!(
                region = region_id,
                "destroying a replica removed before a restart"
            );
            self.destroy_records(region_id, &desc, applied, term)?;
        }
        Ok(())
    }
}
