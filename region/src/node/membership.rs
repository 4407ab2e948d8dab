//! Membership changes at the node level: moving a region's replicas between nodes.
//!
//! A replica is moved in four steps, one raft membership change at a time (so no joint
//! configuration is ever needed; raft refuses a change while the previous one is not
//! committed):
//!
//! 1. **add a learner** on the destination node, with a fresh peer id
//!    ([`member_peer_id`]); the destination has no replica yet, so the region's leader
//!    finds it rejecting appends and asks for a snapshot (see the store's orphan path), and
//!    the replica is created from the snapshot's descriptor, then follows by appends;
//! 2. **wait until it has caught up**: the leader refuses to promote a learner that does
//!    not hold the entry that added it, or whose match index is more than
//!    [`PROMOTE_LAG_MAX`] entries behind its last index (a voter that cannot acknowledge
//!    recent entries would make the region stall on one more failure);
//! 3. **promote** it to voter;
//! 4. **remove** the replica on the source node. The leader is never removed: the
//!    leadership is moved first (to the new voter, which is caught up).
//!
//! Every change is a raft `ConfChange` entry, applied by every replica at the same index:
//! the descriptor's peers change and its `conf_ver` grows by one. A change is proposed on
//! the region's leader; a follower that is asked sends it to the leader as a `Propose`
//! message carrying one `ConfChange` entry with the encoded [`PeerChange`] (the leader's
//! store, not its raft core, takes it: the checks below need the node's view), and the
//! caller waits until the change shows in its own replica's descriptor, asking again
//! (each request is idempotent) until its time is up.
//!
//! A removed replica destroys itself once it learns it was removed: by applying the
//! change, or — when it never sees that entry (the leader stops sending to a removed peer
//! as soon as the entry is appended, and a replica may be down meanwhile) — by a
//! `PeerRemoved` notice carrying a member's descriptor, newer than its own and without it.
//! The leader sends that notice when the removal applies, and every member answers a vote
//! request from a peer outside its configuration with it (and ignores the vote request).

use bytes::Bytes;
use flotilla_common::{codec, ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

use super::descriptor::{PeerMeta, PeerRole, RegionDescriptor};
use super::error::NodeError;
use super::store::{StoreMsg, PEER_ID_NODE_SPAN};
use super::{NodeHandle, RETRY_PAUSE_MAX, RETRY_PAUSE_MIN};

/// Peer ids handed out for replicas added by membership changes have this bit set; those
/// of bootstrap and split regions (`region * 2^16 + node`, region ids below
/// [`super::REGION_ID_MAX`] < 2^47) never do. A peer id is therefore never reused: a
/// replica removed from a node and added again later is a new raft peer, which cannot
/// inherit the votes of the old one.
pub const MEMBER_PEER_ID_BIT: u64 = 1 << 63;

/// Counters at or above this cannot make a [`member_peer_id`].
pub const MEMBER_PEER_COUNTER_MAX: u64 = (MEMBER_PEER_ID_BIT >> 16) - 1;

/// Entries a learner may lag behind its leader's last index and still be promoted: about
/// one round's worth under load, so the new voter acknowledges new entries at once.
pub const PROMOTE_LAG_MAX: u64 = 64;

/// Pause between two looks at the local descriptor while a change is under way.
const POLL_PAUSE: Duration = Duration::from_millis(10);

/// How long a proposed change may take to show in the local descriptor before it is asked
/// again: a forwarded proposal can be lost (a leader change) without a word. Asking again
/// is harmless: the leader does nothing for a change it has applied already, and raft
/// refuses a second change while one is not committed.
const CHANGE_WAIT: Duration = Duration::from_millis(500);

/// The peer id of a replica added by a membership change: `counter` from the durable id
/// counter of the node that asks for the change, `node_id` that node's id, so no two
/// nodes ever hand out the same id.
pub fn member_peer_id(counter: u64, node_id: u64) -> Result<u64, NodeError> {
    if counter > MEMBER_PEER_COUNTER_MAX || node_id == 0 || node_id >= PEER_ID_NODE_SPAN {
        return Err(NodeError::Refused(format!(
            "no peer id from counter {counter} and node {node_id}"
        )));
    }
    Ok(MEMBER_PEER_ID_BIT | counter << 16 | node_id)
}

/// Whether `peer_id` was handed out by [`member_peer_id`] (a replica added to a running
/// region, which its node creates as soon as it hears from the region).
pub fn is_member_peer_id(peer_id: u64) -> bool {
    peer_id & MEMBER_PEER_ID_BIT != 0
}

/// One change of one replica of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerChange {
    /// Add a learner on `node_id`, as raft peer `peer_id` (from [`member_peer_id`]).
    AddLearner {
        /// The node to host it.
        node_id: u64,
        /// Its raft id, unused in the region so far.
        peer_id: u64,
    },
    /// Make the learner on `node_id` a voter (refused until it has caught up).
    Promote {
        /// The node hosting the learner.
        node_id: u64,
    },
    /// Remove the replica on `node_id` (never the leader's, never the last voter).
    Remove {
        /// The node hosting it.
        node_id: u64,
    },
    /// Two voter changes together, through a joint configuration (raft §4.3): the learner
    /// on `promote` becomes a voter and the voter on `remove` leaves, in one change that
    /// the leader leaves by itself once it is committed. The region never has more voters
    /// than before (no four-voter step with three nodes' quorum of three), and every
    /// decision in between needs a majority of both the old and the new voters.
    Replace {
        /// The node hosting the learner to promote.
        promote: u64,
        /// The node whose voter goes.
        remove: u64,
    },
}

impl PeerChange {
    /// The node whose replica changes (for a replacement: the one that gains a voter).
    pub fn node_id(&self) -> u64 {
        match *self {
            PeerChange::AddLearner { node_id, .. }
            | PeerChange::Promote { node_id }
            | PeerChange::Remove { node_id } => node_id,
            PeerChange::Replace { promote, .. } => promote,
        }
    }

    /// Encodes for a forwarded proposal.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).expect("a peer change always encodes")
    }

    /// Decodes a forwarded proposal.
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes)
    }
}

/// What a node holds of a region once [`NodeHandle::learner_on`] is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnNode {
    /// A voter (left as it was).
    Voter,
    /// A learner (there before, or just added).
    Learner,
}

/// What the store did with a change request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// This node's replica already shows the change applied.
    Done,
    /// Proposed (here, or sent to the leader): look again later.
    Proposed,
    /// A removal of the leader's own replica: move the leadership first.
    LeaderOnTarget,
}

/// Whether `desc` shows `change` applied.
pub fn change_done(desc: &RegionDescriptor, change: &PeerChange) -> bool {
    match *change {
        PeerChange::AddLearner { node_id, peer_id } => desc
            .peer_on_node(node_id)
            .is_some_and(|p| p.peer_id == peer_id),
        PeerChange::Promote { node_id } => desc
            .peer_on_node(node_id)
            .is_some_and(|p| p.role == PeerRole::Voter),
        PeerChange::Remove { node_id } => desc.peer_on_node(node_id).is_none(),
        PeerChange::Replace { promote, remove } => {
            change_done(desc, &PeerChange::Promote { node_id: promote })
                && change_done(desc, &PeerChange::Remove { node_id: remove })
        }
    }
}

/// Checks a change against the region as `desc` describes it, before anything is
/// proposed: the errors a caller must hear (the change can never succeed as asked).
pub fn check_change(desc: &RegionDescriptor, change: &PeerChange) -> Result<(), NodeError> {
    let region = desc.id;
    let node = change.node_id();
    if let PeerChange::Replace { promote, remove } = *change {
        if promote == remove {
            return Err(NodeError::Refused(format!(
                "a replica cannot replace itself (node {promote})"
            )));
        }
        check_change(desc, &PeerChange::Promote { node_id: promote })?;
        check_change(desc, &PeerChange::Remove { node_id: remove })?;
        if desc
            .peer_on_node(remove)
            .is_some_and(|p| p.role != PeerRole::Voter)
        {
            return Err(NodeError::Refused(format!(
                "the replica of region {region} on node {remove} is not a voter"
            )));
        }
        return Ok(());
    }
    if node == 0 || node >= PEER_ID_NODE_SPAN {
        return Err(NodeError::Refused(format!("bad node id {node}")));
    }
    if desc.merging.is_some() {
        return Err(NodeError::Refused(format!(
            "region {region} is being merged: no membership change until it is done"
        )));
    }
    let on_node = desc.peer_on_node(node);
    match *change {
        PeerChange::AddLearner { peer_id, .. } => {
            if let Some(p) = on_node {
                return Err(NodeError::Refused(format!(
                    "region {region} already has a replica on node {node} (peer {})",
                    p.peer_id
                )));
            }
            if desc.peer(peer_id).is_some() || !is_member_peer_id(peer_id) {
                return Err(NodeError::Refused(format!(
                    "peer id {peer_id} cannot be given to a new replica of region {region}"
                )));
            }
        }
        PeerChange::Promote { .. } => match on_node {
            None => {
                return Err(NodeError::Refused(format!(
                    "region {region} has no replica on node {node}"
                )))
            }
            Some(p) if p.role == PeerRole::Voter => {
                return Err(NodeError::Refused(format!(
                    "the replica of region {region} on node {node} is a voter already"
                )))
            }
            Some(_) => {}
        },
        PeerChange::Remove { .. } => {
            let Some(p) = on_node else {
                return Err(NodeError::Refused(format!(
                    "region {region} has no replica on node {node}"
                )));
            };
            let voters = desc
                .peers
                .iter()
                .filter(|x| x.role == PeerRole::Voter)
                .count();
            if p.role == PeerRole::Voter && voters <= 1 {
                return Err(NodeError::Refused(format!(
                    "node {node} holds the last voter of region {region}"
                )));
            }
        }
        // Checked above, as a promotion and a removal.
        PeerChange::Replace { .. } => {}
    }
    Ok(())
}

/// What the leader knows that a change depends on.
pub(crate) struct LeaderView {
    /// The leader's own peer id.
    pub leader_peer: u64,
    /// The leader's last log index.
    pub last_index: u64,
    /// The index of the last membership change the leader proposed (or, if it has proposed
    /// none, its last index when elected): a learner is caught up only once it holds it,
    /// which also means it was created from a snapshot that names it.
    pub conf_index: u64,
    /// (peer id, match index, recently active) of every follower it tracks.
    pub progress: Vec<(u64, u64, bool)>,
}

/// The raft change the region's leader proposes for `change`, after checking it against
/// its descriptor and what it knows of its followers. `Ok(None)`: the leader's own replica
/// would be removed ([`ChangeOutcome::LeaderOnTarget`]).
pub(crate) fn plan_change(
    desc: &RegionDescriptor,
    change: &PeerChange,
    leader: &LeaderView,
) -> Result<Option<ConfChange>, NodeError> {
    check_change(desc, change)?;
    if let PeerChange::Replace { promote, remove } = *change {
        let gone = desc.peer_on_node(remove).expect("checked");
        if gone.peer_id == leader.leader_peer {
            return Ok(None);
        }
        // The promotion's own checks (caught up), as a single change would have them.
        let Some(up) = plan_change(desc, &PeerChange::Promote { node_id: promote }, leader)? else {
            return Ok(None);
        };
        let mut cc = ConfChange {
            transition: ConfChangeTransition::JointImplicit,
            changes: up.changes,
            context: up.context,
            result: None,
        };
        cc.changes.push(ConfChangeSingle {
            kind: ConfChangeKind::RemoveNode,
            node_id: gone.peer_id,
        });
        return Ok(Some(cc));
    }
    let node = change.node_id();
    let (kind, meta) = match *change {
        PeerChange::AddLearner { node_id, peer_id } => (
            ConfChangeKind::AddLearner,
            PeerMeta {
                peer_id,
                node_id,
                role: PeerRole::Learner,
            },
        ),
        PeerChange::Promote { .. } => {
            let p = desc.peer_on_node(node).expect("checked");
            let caught_up = leader
                .progress
                .iter()
                .find(|(id, _, _)| *id == p.peer_id)
                .is_some_and(|&(_, matched, active)| {
                    // A new learner's match index is 0: with a short log, 0 + the lag
                    // allowed would pass. It must hold at least its own addition.
                    active
                        && matched >= leader.conf_index
                        && matched + PROMOTE_LAG_MAX >= leader.last_index
                });
            if !caught_up {
                return Err(NodeError::Dropped(format!(
                    "the learner of region {} on node {node} has not caught up yet",
                    desc.id
                )));
            }
            (
                ConfChangeKind::AddVoter,
                PeerMeta {
                    role: PeerRole::Voter,
                    ..p
                },
            )
        }
        PeerChange::Remove { .. } => {
            let p = desc.peer_on_node(node).expect("checked");
            if p.peer_id == leader.leader_peer {
                return Ok(None);
            }
            (ConfChangeKind::RemoveNode, p)
        }
        PeerChange::Replace { .. } => {
            return Err(NodeError::Refused(
                "a replacement is planned as one joint change".into(),
            ))
        }
    };
    let mut cc = ConfChange::single(kind, meta.peer_id);
    cc.context = Bytes::from(codec::encode(&meta).expect("a peer always encodes"));
    Ok(Some(cc))
}

impl NodeHandle {
    /// Adds a learner replica of `region_id` on `node_id` (which must have no replica of
    /// it); returns its peer id once this node's replica has applied the change. Call it on
    /// a node that holds a replica of the region; the change goes through the region's
    /// leader. The replica on `node_id` is created as soon as that node hears from the
    /// leader (from a snapshot), and follows the log as a non-voting member.
    pub async fn add_learner(&self, region_id: u64, node_id: u64) -> Result<u64, NodeError> {
        let deadline = Instant::now() + self.timeout;
        let desc = self.descriptor(region_id).await?;
        if let Some(p) = desc.peer_on_node(node_id) {
            return Err(NodeError::Refused(format!(
                "region {region_id} already has a replica on node {node_id} (peer {})",
                p.peer_id
            )));
        }
        let counter = self.call(|reply| StoreMsg::AllocateId { reply }).await?;
        let peer_id = member_peer_id(counter, self.node_id)?;
        let change = PeerChange::AddLearner { node_id, peer_id };
        self.change_peer(region_id, change, deadline).await?;
        Ok(peer_id)
    }

    /// Makes the learner of `region_id` on `node_id` a voter, once the leader sees it
    /// caught up (within [`PROMOTE_LAG_MAX`] entries); waits for that until this handle's
    /// timeout.
    pub async fn promote_learner(&self, region_id: u64, node_id: u64) -> Result<(), NodeError> {
        let deadline = Instant::now() + self.timeout;
        self.change_peer(region_id, PeerChange::Promote { node_id }, deadline)
            .await
    }

    /// Removes the replica of `region_id` on `node_id`. Refused for the last voter, and
    /// for the leader's replica (move the leadership first, [`NodeHandle::transfer_leader`]).
    /// The removed replica deletes its data once it learns of the change.
    pub async fn remove_replica(&self, region_id: u64, node_id: u64) -> Result<(), NodeError> {
        let deadline = Instant::now() + self.timeout;
        self.change_peer(region_id, PeerChange::Remove { node_id }, deadline)
            .await
    }

    /// Moves the replica of `region_id` from `from_node` to `to_node`: adds a learner on
    /// `to_node`, waits until it has caught up, promotes it, moves the leadership away
    /// from `from_node` if it is there, and removes the replica on `from_node` — one
    /// membership change at a time. Each step may take up to this handle's timeout. A
    /// learner already on `to_node` (an interrupted move) is reused.
    pub async fn move_replica(
        &self,
        region_id: u64,
        from_node: u64,
        to_node: u64,
    ) -> Result<(), NodeError> {
        if from_node == to_node {
            return Err(NodeError::Refused(format!(
                "a replica cannot move from node {from_node} to itself"
            )));
        }
        let desc = self.descriptor(region_id).await?;
        let from = desc.peer_on_node(from_node).ok_or_else(|| {
            NodeError::Refused(format!(
                "region {region_id} has no replica on node {from_node}"
            ))
        })?;
        if self.learner_on(&desc, to_node).await? == OnNode::Voter {
            return Err(NodeError::Refused(format!(
                "region {region_id} already has a voter on node {to_node}"
            )));
        }
        if from.role == PeerRole::Voter {
            self.promote_learner(region_id, to_node).await?;
        }
        let deadline = Instant::now() + self.timeout;
        let change = PeerChange::Remove { node_id: from_node };
        loop {
            match self.change_peer(region_id, change, deadline).await {
                Err(NodeError::Refused(why)) if why.contains(LEADER_ON_TARGET) => {
                    // The leadership goes to the new voter (caught up: the transfer
                    // finishes at once), then the removal is asked again.
                    self.transfer_leader(region_id, to_node).await?;
                    self.wait_leader_not_on(region_id, from_node, deadline)
                        .await?;
                }
                r => return r,
            }
        }
    }

    /// Moves the voter of `region_id` on `from_node` to `to_node` with joint consensus:
    /// adds a learner on `to_node` (or reuses one), waits until it has caught up, then in
    /// one joint change promotes it and removes the voter on `from_node` (the leader
    /// leaves the joint configuration by itself). Unlike [`NodeHandle::move_replica`] the
    /// region never counts one voter more than before. The leadership is moved off
    /// `from_node` first if it is there (to another voter).
    pub async fn replace_voter(
        &self,
        region_id: u64,
        from_node: u64,
        to_node: u64,
    ) -> Result<(), NodeError> {
        if from_node == to_node {
            return Err(NodeError::Refused(format!(
                "a replica cannot replace itself (node {from_node})"
            )));
        }
        let desc = self.descriptor(region_id).await?;
        check_change(&desc, &PeerChange::Remove { node_id: from_node })?;
        if self.learner_on(&desc, to_node).await? == OnNode::Voter {
            return Err(NodeError::Refused(format!(
                "region {region_id} already has a voter on node {to_node}"
            )));
        }
        let deadline = Instant::now() + self.timeout;
        let change = PeerChange::Replace {
            promote: to_node,
            remove: from_node,
        };
        loop {
            match self.change_peer(region_id, change, deadline).await {
                Err(NodeError::Refused(why)) if why.contains(LEADER_ON_TARGET) => {
                    // A learner cannot take the leadership: another voter does.
                    let desc = self.descriptor(region_id).await?;
                    let Some(other) = desc
                        .peers
                        .iter()
                        .find(|p| p.role == PeerRole::Voter && p.node_id != from_node)
                    else {
                        return Err(NodeError::Refused(format!(
                            "region {region_id} has no other voter to lead it"
                        )));
                    };
                    self.transfer_leader(region_id, other.node_id).await?;
                    self.wait_leader_not_on(region_id, from_node, deadline)
                        .await?;
                }
                r => return r,
            }
        }
    }

    /// Makes sure `node_id` holds a replica of the region `desc` describes: a learner is
    /// added unless one is there (an interrupted move's, reused). Answers what the node
    /// holds now; a voter is left as it is.
    pub(crate) async fn learner_on(
        &self,
        desc: &RegionDescriptor,
        node_id: u64,
    ) -> Result<OnNode, NodeError> {
        match desc.peer_on_node(node_id) {
            Some(p) if p.role == PeerRole::Voter => Ok(OnNode::Voter),
            Some(_) => Ok(OnNode::Learner),
            None => {
                self.add_learner(desc.id, node_id).await?;
                Ok(OnNode::Learner)
            }
        }
    }

    /// This node's replica's descriptor of `region_id`.
    pub async fn descriptor(&self, region_id: u64) -> Result<RegionDescriptor, NodeError> {
        self.call(|reply| StoreMsg::Descriptor { region_id, reply })
            .await
    }

    /// One change, asked again while it may still succeed (no leader, a proposal lost on
    /// its way, a learner not caught up yet), until the local replica shows it or
    /// `deadline`. A removal of the leader is refused with [`LEADER_ON_TARGET`] in the
    /// reason.
    async fn change_peer(
        &self,
        region_id: u64,
        change: PeerChange,
        deadline: Instant,
    ) -> Result<(), NodeError> {
        let removes_me = matches!(
            change,
            PeerChange::Remove { node_id } | PeerChange::Replace { remove: node_id, .. }
                if node_id == self.node_id
        );
        let mut pause = RETRY_PAUSE_MIN;
        let mut first = true;
        loop {
            let asked = self
                .call(|reply| StoreMsg::ChangePeer {
                    region_id,
                    change,
                    check: first,
                    reply,
                })
                .await;
            first = false;
            match asked {
                Ok(ChangeOutcome::Done) => return Ok(()),
                Ok(ChangeOutcome::LeaderOnTarget) => {
                    return Err(NodeError::Refused(format!(
                        "the replica of region {region_id} on node {} {LEADER_ON_TARGET}",
                        change.node_id()
                    )))
                }
                Ok(ChangeOutcome::Proposed) => {
                    // Wait for it to apply here; a lost proposal is asked again.
                    let wait_until = (Instant::now() + CHANGE_WAIT).min(deadline);
                    while Instant::now() < wait_until {
                        tokio::time::sleep(POLL_PAUSE).await;
                        match self.descriptor(region_id).await {
                            Ok(d) if change_done(&d, &change) => return Ok(()),
                            Err(NodeError::RegionNotFound) if removes_me => return Ok(()),
                            _ => {}
                        }
                    }
                    pause = RETRY_PAUSE_MIN;
                }
                Err(NodeError::RegionNotFound) if removes_me => return Ok(()),
                Err(e @ (NodeError::NotLeader { .. } | NodeError::Dropped(_))) => {
                    if Instant::now() + pause >= deadline {
                        return Err(match e {
                            NodeError::Dropped(why) => {
                                NodeError::Refused(format!("not done in time: {why}"))
                            }
                            e => e,
                        });
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout);
            }
        }
    }

    /// Waits until this node sees the leader of `region_id` elsewhere than on `node_id`.
    async fn wait_leader_not_on(
        &self,
        region_id: u64,
        node_id: u64,
        deadline: Instant,
    ) -> Result<(), NodeError> {
        loop {
            let leader = self
                .regions
                .all()
                .into_iter()
                .find(|r| r.id == region_id)
                .and_then(|r| r.leader_node);
            if leader.is_some_and(|n| n != node_id) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout);
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }
}

/// The words a refused removal of the leader's replica carries.
pub const LEADER_ON_TARGET: &str = "is the leader: transfer the leadership first";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{bootstrap_peer_id, RegionEpoch};

    fn region(learner_on: Option<u64>) -> RegionDescriptor {
        let mut peers: Vec<PeerMeta> = [1, 2, 3]
            .map(|n| PeerMeta {
                peer_id: bootstrap_peer_id(5, n),
                node_id: n,
                role: PeerRole::Voter,
            })
            .to_vec();
        if let Some(n) = learner_on {
            peers.push(PeerMeta {
                peer_id: member_peer_id(9, 1).unwrap(),
                node_id: n,
                role: PeerRole::Learner,
            });
        }
        RegionDescriptor {
            id: 5,
            epoch: RegionEpoch {
                conf_ver: 1,
                version: 1,
            },
            peers,
            ..Default::default()
        }
    }

    fn leader(lagging: u64) -> LeaderView {
        let d = region(Some(4));
        LeaderView {
            leader_peer: bootstrap_peer_id(5, 1),
            last_index: 1000,
            conf_index: 900,
            progress: d
                .peers
                .iter()
                .map(|p| (p.peer_id, 1000 - lagging, true))
                .collect(),
        }
    }

    #[test]
    fn a_replacement_is_one_joint_change_of_a_caught_up_learner_and_a_voter() {
        let d = region(Some(4));
        let replace = PeerChange::Replace {
            promote: 4,
            remove: 3,
        };
        check_change(&d, &replace).unwrap();
        let cc = plan_change(&d, &replace, &leader(0))
            .unwrap()
            .expect("planned");
        assert_eq!(cc.transition, ConfChangeTransition::JointImplicit);
        assert_eq!(cc.enters_joint(), Some(true), "left by the leader itself");
        let kinds: Vec<(ConfChangeKind, u64)> =
            cc.changes.iter().map(|c| (c.kind, c.node_id)).collect();
        assert_eq!(
            kinds,
            vec![
                (ConfChangeKind::AddVoter, member_peer_id(9, 1).unwrap()),
                (ConfChangeKind::RemoveNode, bootstrap_peer_id(5, 3)),
            ]
        );
        // Not caught up: refused like a promotion; the leader's own voter: move it first.
        assert!(plan_change(&d, &replace, &leader(500)).is_err());
        let own = PeerChange::Replace {
            promote: 4,
            remove: 1,
        };
        assert_eq!(plan_change(&d, &own, &leader(0)).unwrap(), None);
        // Refused: no learner to promote, a voter already, itself, nothing to remove.
        for bad in [
            (region(None), 4, 3),
            (region(Some(4)), 2, 3),
            (region(Some(4)), 4, 4),
            (region(Some(4)), 4, 7),
        ] {
            let change = PeerChange::Replace {
                promote: bad.1,
                remove: bad.2,
            };
            assert!(check_change(&bad.0, &change).is_err(), "{change:?}");
        }
        // Done once the learner votes and the voter is gone.
        assert!(!change_done(&d, &replace));
        let mut after = d.clone();
        after.peers.retain(|p| p.node_id != 3);
        after
            .peers
            .iter_mut()
            .for_each(|p| p.role = PeerRole::Voter);
        assert!(change_done(&after, &replace));
    }

    #[test]
    fn member_peer_ids_never_meet_region_peer_ids() {
        let id = member_peer_id(7, 3).unwrap();
        assert!(is_member_peer_id(id));
        assert!(!is_member_peer_id(bootstrap_peer_id(
            super::super::REGION_ID_MAX,
            PEER_ID_NODE_SPAN - 1
        )));
        assert_ne!(member_peer_id(7, 3).unwrap(), member_peer_id(7, 4).unwrap());
        assert_ne!(member_peer_id(7, 3).unwrap(), member_peer_id(8, 3).unwrap());
        assert!(member_peer_id(MEMBER_PEER_COUNTER_MAX + 1, 3).is_err());
        assert!(member_peer_id(1, 0).is_err());
    }

    #[test]
    fn bad_changes_are_refused_with_a_reason() {
        let d = region(None);
        let fresh = member_peer_id(1, 1).unwrap();
        let refused = |c: PeerChange, d: &RegionDescriptor| {
            matches!(check_change(d, &c), Err(NodeError::Refused(_)))
        };
        assert!(refused(
            PeerChange::AddLearner {
                node_id: 2,
                peer_id: fresh
            },
            &d
        ));
        assert!(refused(
            PeerChange::AddLearner {
                node_id: 4,
                peer_id: bootstrap_peer_id(5, 4)
            },
            &d
        ));
        assert!(refused(PeerChange::Promote { node_id: 2 }, &d));
        assert!(refused(PeerChange::Promote { node_id: 4 }, &d));
        assert!(refused(PeerChange::Remove { node_id: 4 }, &d));
        assert!(refused(PeerChange::Remove { node_id: 0 }, &d));
        let mut lone = d.clone();
        lone.peers.truncate(1);
        assert!(refused(PeerChange::Remove { node_id: 1 }, &lone));
        let mut merging = d.clone();
        merging.merging = Some(crate::node::MergeState {
            target: 6,
            prepare_index: 3,
        });
        assert!(refused(PeerChange::Remove { node_id: 3 }, &merging));
        assert!(check_change(
            &d,
            &PeerChange::AddLearner {
                node_id: 4,
                peer_id: fresh
            }
        )
        .is_ok());
    }

    #[test]
    fn the_leader_plans_only_what_is_safe() {
        let d = region(Some(4));
        // A learner far behind is not promoted (yet); one close enough is.
        let promote = PeerChange::Promote { node_id: 4 };
        assert!(matches!(
            plan_change(&d, &promote, &leader(500)),
            Err(NodeError::Dropped(_))
        ));
        // Regression: a learner that has nothing yet (match index 0) on a log shorter
        // than the lag allowed was promoted at once, before it held any data.
        let short = LeaderView {
            last_index: 40,
            conf_index: 38,
            ..leader(1000)
        };
        assert!(matches!(
            plan_change(&d, &promote, &short),
            Err(NodeError::Dropped(_))
        ));
        let cc = plan_change(&d, &promote, &leader(10)).unwrap().unwrap();
        assert_eq!(cc.changes[0].kind, ConfChangeKind::AddVoter);
        let meta: PeerMeta = codec::decode(&cc.context).unwrap();
        assert_eq!((meta.node_id, meta.role), (4, PeerRole::Voter));
        // The leader's own replica is never removed; another is.
        assert_eq!(
            plan_change(&d, &PeerChange::Remove { node_id: 1 }, &leader(0)).unwrap(),
            None
        );
        let cc = plan_change(&d, &PeerChange::Remove { node_id: 3 }, &leader(0))
            .unwrap()
            .unwrap();
        assert_eq!(cc.changes[0].kind, ConfChangeKind::RemoveNode);
        assert_eq!(cc.changes[0].node_id, bootstrap_peer_id(5, 3));
    }

    #[test]
    fn done_is_judged_from_the_descriptor() {
        let d = region(Some(4));
        let learner = d.peer_on_node(4).unwrap().peer_id;
        assert!(change_done(
            &d,
            &PeerChange::AddLearner {
                node_id: 4,
                peer_id: learner
            }
        ));
        assert!(!change_done(&d, &PeerChange::Promote { node_id: 4 }));
        assert!(!change_done(&d, &PeerChange::Remove { node_id: 3 }));
        assert!(change_done(&d, &PeerChange::Remove { node_id: 7 }));
    }
}
