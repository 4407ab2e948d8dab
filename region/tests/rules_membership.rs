//! Rule tests: membership changes and leadership transfer (Raft paper §6; dissertation
//! §4.1 single-server changes, §4.2.1 learners, §4.3 joint consensus, §3.10 leadership
//! transfer).

mod harness;

use flotilla_common::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition, MessageKind,
};
use flotilla_region::raft::{Error, MemStorage, Role};
use harness::*;

const T: usize = ELECTION_TICK;

fn add_voter(id: u64) -> ConfChange {
    ConfChange::single(ConfChangeKind::AddVoter, id)
}

fn add_learner(id: u64) -> ConfChange {
    ConfChange::single(ConfChangeKind::AddLearner, id)
}

fn remove(id: u64) -> ConfChange {
    ConfChange::single(ConfChangeKind::RemoveNode, id)
}

fn multi(transition: ConfChangeTransition, changes: &[(ConfChangeKind, u64)]) -> ConfChange {
    ConfChange {
        transition,
        changes: changes
            .iter()
            .map(|&(kind, node_id)| ConfChangeSingle { kind, node_id })
            .collect(),
        ..Default::default()
    }
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort();
    v
}

fn voters(net: &Network, id: u64) -> Vec<u64> {
    sorted(net.raft(id).conf_state().voters)
}

fn outgoing(net: &Network, id: u64) -> Vec<u64> {
    sorted(net.raft(id).conf_state().voters_outgoing)
}

/// Dissertation §4.1: "a server always uses the latest configuration in its log, regardless
/// of whether the entry is committed." Adding voter 4 to {1, 2, 3} changes the leader's
/// quorum as soon as the entry is appended: the change itself needs 3 of 4 acknowledgements,
/// and one follower's acknowledgement — enough under the old configuration — is not enough.
#[test]
fn added_voter_counts_in_the_quorum_once_appended() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.peer_mut(1).snapshot_at_applied();
    net.add_new_peer(4);
    net.isolate(4);
    net.hold_if(|m| m.kind == MessageKind::AppendResponse);

    let index = net.node(1).propose_conf_change(add_voter(4)).unwrap();
    net.stabilize();
    assert_eq!(
        voters(&net, 1),
        vec![1, 2, 3, 4],
        "in force on the leader before commit"
    );
    assert_eq!(
        voters(&net, 2),
        vec![1, 2, 3, 4],
        "and on a follower once appended"
    );
    assert!(net.raft(1).progress(4).is_some());
    assert_eq!(net.raft(1).commit_index(), index - 1);

    net.deliver_held_where(|m| m.from == 2);
    assert_eq!(
        net.raft(1).commit_index(),
        index - 1,
        "2 of 4 is no quorum of the new configuration"
    );
    net.deliver_held_where(|m| m.from == 3);
    assert_eq!(net.raft(1).commit_index(), index, "3 of 4");

    // The new member, started empty, gets a snapshot and the log, and then counts.
    net.heal();
    net.tick_all(2 * HEARTBEAT_TICK);
    assert_eq!(voters(&net, 4), vec![1, 2, 3, 4]);
    assert_eq!(net.raft(4).last_index(), net.raft(1).last_index());
    net.crash(3);
    let a = net.propose(1, "with-4");
    assert_eq!(
        net.raft(1).commit_index(),
        a,
        "1, 2, 4 are a quorum of four"
    );
}

/// Dissertation §4.1: one change at a time — the leader refuses a new membership change
/// while the previous one is not yet committed, and accepts it afterwards.
#[test]
fn one_membership_change_at_a_time() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let first = net.node(1).propose_conf_change(add_learner(4)).unwrap();
    let second = net.node(1).propose_conf_change(add_learner(5));
    assert!(
        matches!(second, Err(Error::InvalidConfChange(_))),
        "{second:?}"
    );
    net.round(); // appended on the followers, acknowledgements not yet back
    let again = net.node(1).propose_conf_change(add_learner(5));
    assert!(
        matches!(again, Err(Error::InvalidConfChange(_))),
        "{again:?}"
    );
    assert_eq!(
        net.raft(1).last_index(),
        first,
        "nothing was appended for the refused change"
    );

    net.stabilize();
    assert!(net.raft(1).commit_index() >= first);
    net.change(1, add_learner(5));
    assert_eq!(sorted(net.raft(1).conf_state().learners), vec![4, 5]);
}

/// §6: removing a voter shrinks the quorum; the leader stops replicating to the removed
/// server and refuses its answers; with {1, 2} left, nothing commits without 2 even though 3
/// is still running.
#[test]
fn removed_voter_no_longer_counts() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.change(1, remove(3));
    assert_eq!(voters(&net, 1), vec![1, 2]);
    assert_eq!(voters(&net, 2), vec![1, 2]);
    assert!(net.raft(1).progress(3).is_none());

    let mut ack = msg(MessageKind::AppendResponse, 3, 1, net.term(1));
    ack.index = net.raft(1).last_index();
    assert_eq!(net.node(1).step(ack), Err(Error::UnknownPeer(3)));

    net.crash(2);
    let index = net.node(1).propose(b"a".to_vec()).unwrap();
    net.stabilize();
    assert!(
        net.raft(1).commit_index() < index,
        "3 no longer counts; 2 is needed"
    );
    assert!(
        net.raft(3).last_index() < index,
        "nothing is sent to a removed server"
    );
}

/// §6 "removed servers can disrupt the cluster": server 4 is removed while cut off, so it
/// never learns it; it keeps timing out and campaigning with ever higher terms (PreVote off
/// on it, to make it as disruptive as possible). Because servers ignore vote requests while
/// they hear from a live leader, the leader keeps its term and the cluster keeps committing.
#[test]
fn removed_server_cannot_disrupt_the_cluster() {
    let mut net = Network::empty();
    let cs = flotilla_common::ConfState::with_voters([1, 2, 3, 4]);
    for id in 1..=4 {
        let mut cfg = config(id);
        cfg.pre_vote = id != 4;
        net.add_peer(cfg, MemStorage::new_with_conf_state(cs.clone()));
    }
    net.elect(1);
    net.isolate(4);
    net.change(1, remove(4));
    assert_eq!(voters(&net, 1), vec![1, 2, 3]);
    let term = net.term(1);

    net.heal();
    net.tick_all(10 * T);
    assert!(
        net.term(4) > term + 3,
        "the removed server campaigned again and again"
    );
    assert!(net
        .sent
        .iter()
        .any(|m| m.from == 4 && m.kind == MessageKind::RequestVote));
    assert_eq!(
        net.leaders()
            .into_iter()
            .filter(|&l| l != 4)
            .collect::<Vec<_>>(),
        vec![1]
    );
    for id in 1..=3 {
        assert_eq!(net.term(id), term, "peer {id} kept its term");
    }
    let index = net.propose(1, "undisturbed");
    for id in 1..=3 {
        assert_eq!(net.raft(id).commit_index(), index);
    }
}

/// Dissertation §4.2.2: a leader may remove itself; it manages the cluster until the change
/// commits (without counting itself), then steps down, and the remaining servers elect a
/// leader among themselves.
#[test]
fn removing_the_leader_makes_it_step_down() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let index = net.change(1, remove(1));
    assert_eq!(net.raft(2).commit_index(), index);
    assert_ne!(
        net.role(1),
        Role::Leader,
        "the removed leader stepped down once committed"
    );
    assert_eq!(voters(&net, 2), vec![2, 3]);

    net.tick_all(4 * T);
    let leaders: Vec<u64> = net.leaders();
    assert_eq!(leaders.len(), 1);
    assert!(leaders[0] == 2 || leaders[0] == 3);
    let l = leaders[0];
    let a = net.propose(l, "after-removal");
    assert_eq!(net.raft(2).commit_index(), a);
    assert_eq!(net.raft(3).commit_index(), a);
    assert!(
        net.node(1).campaign().is_err(),
        "a removed server cannot campaign"
    );
}

/// Dissertation §4.2.1 (non-voting members): a learner receives and applies the log, but is
/// not counted for commitment, never campaigns, and is not asked for its vote.
#[test]
fn learner_receives_the_log_but_neither_votes_nor_counts() {
    let mut net = Network::with(&[1, 2], &[3], |_| {});
    net.elect(1);
    net.propose(1, "a");
    assert_eq!(net.peer(3).applied_data(), vec!["a"]);

    // Not counted for commit: with voter 2 down, the learner's acknowledgement is not enough.
    net.crash(2);
    let b = net.node(1).propose(b"b".to_vec()).unwrap();
    net.stabilize();
    assert_eq!(net.raft(3).last_index(), b, "the learner holds b");
    assert!(net.raft(1).commit_index() < b, "but b is not committed");

    // Never campaigns.
    assert!(net.node(3).campaign().is_err());
    net.isolate(3);
    net.tick_n(3, 4 * T);
    assert_eq!(net.role(3), Role::Follower);
    assert!(!net.sent.iter().any(|m| m.from == 3
        && matches!(
            m.kind,
            MessageKind::RequestVote | MessageKind::RequestPreVote
        )));

    // Not asked for a vote: voter 2 alone (1 is gone) cannot win with the learner.
    net.heal();
    net.crash(1);
    net.restart(2);
    net.tick_all(4 * T);
    assert!(net.leaders().is_empty());
    assert!(!net.sent.iter().any(|m| m.to == 3
        && matches!(
            m.kind,
            MessageKind::RequestVote | MessageKind::RequestPreVote
        )));
}

/// Dissertation §4.2.1: a new member first catches up as a learner and is promoted to voter
/// once its log has caught up; from then on it counts for commitment.
#[test]
fn learner_is_promoted_after_catching_up() {
    let mut net = Network::with(&[1, 2], &[3], |_| {});
    net.elect(1);
    net.isolate(3);
    for i in 0..5 {
        net.propose(1, &format!("p{i}"));
    }
    assert!(!net.node(1).learner_caught_up(3), "3 is behind");
    net.heal();
    net.tick_all(HEARTBEAT_TICK);
    assert!(net.node(1).learner_caught_up(3));

    net.change(1, add_voter(3));
    for id in 1..=3 {
        assert_eq!(voters(&net, id), vec![1, 2, 3], "peer {id}");
        assert!(net.raft(id).conf_state().learners.is_empty());
    }
    net.crash(2);
    let c = net.propose(1, "with-3");
    assert_eq!(
        net.raft(1).commit_index(),
        c,
        "1 and the promoted 3 are a quorum of three"
    );
}

/// Dissertation §4.3 joint consensus, automatic leave: replacing voters 2 and 3 by 4 and 5 in
/// one change goes through the joint configuration C_old,new = {1,2,3} & {1,4,5}, and the
/// leader proposes the leave entry by itself once the joint entry is committed.
#[test]
fn joint_consensus_with_automatic_leave() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.peer_mut(1).snapshot_at_applied();
    net.add_new_peer(4);
    net.add_new_peer(5);
    use ConfChangeKind::*;
    let cc = multi(
        ConfChangeTransition::Auto,
        &[
            (AddVoter, 4),
            (AddVoter, 5),
            (RemoveNode, 2),
            (RemoveNode, 3),
        ],
    );
    net.change(1, cc);
    net.tick_all(2 * HEARTBEAT_TICK);

    let history = &net.peer(1).conf_history;
    assert_eq!(
        history.len(),
        2,
        "a joint entry, then the leave entry: {history:?}"
    );
    assert_eq!(sorted(history[0].voters.clone()), vec![1, 4, 5]);
    assert_eq!(sorted(history[0].voters_outgoing.clone()), vec![1, 2, 3]);
    assert!(history[0].auto_leave);
    assert_eq!(sorted(history[1].voters.clone()), vec![1, 4, 5]);
    assert!(history[1].voters_outgoing.is_empty());
    for id in [1, 4, 5] {
        assert_eq!(voters(&net, id), vec![1, 4, 5], "peer {id}");
        assert!(outgoing(&net, id).is_empty());
    }
    net.crash(2);
    net.crash(3);
    let a = net.propose(1, "new-config");
    assert_eq!(net.raft(4).commit_index(), a);
    assert_eq!(net.leaders(), vec![1]);
}

/// Dissertation §4.3 joint consensus, explicit leave: the group stays in C_old,new until the
/// application proposes the leave entry; meanwhile a decision needs a majority of BOTH
/// configurations — the leader with 4 and 5 is a majority of the new five but not of the old
/// three, so nothing commits until 2 or 3 is back.
#[test]
fn joint_consensus_with_explicit_leave_needs_both_majorities() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.peer_mut(1).snapshot_at_applied();
    net.add_new_peer(4);
    net.add_new_peer(5);
    use ConfChangeKind::*;
    let cc = multi(
        ConfChangeTransition::JointExplicit,
        &[(AddVoter, 4), (AddVoter, 5)],
    );
    net.change(1, cc);
    net.tick_all(2 * HEARTBEAT_TICK);
    assert_eq!(voters(&net, 1), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        outgoing(&net, 1),
        vec![1, 2, 3],
        "still joint: no automatic leave"
    );
    assert_eq!(net.peer(1).conf_history.len(), 1);

    net.cut(1, 2);
    net.cut(1, 3);
    let j = net.node(1).propose(b"j".to_vec()).unwrap();
    net.stabilize();
    assert!(
        net.raft(1).commit_index() < j,
        "3 of 5 new, but 1 of 3 old: not committed"
    );
    net.heal();
    net.tick_all(HEARTBEAT_TICK);
    assert_eq!(net.raft(1).commit_index(), j);

    net.change(1, ConfChange::leave_joint());
    for id in 1..=5 {
        assert_eq!(voters(&net, id), vec![1, 2, 3, 4, 5], "peer {id}");
        assert!(outgoing(&net, id).is_empty(), "peer {id}");
    }
}

/// Invalid membership changes are refused with an error, never a panic, and change nothing:
/// leaving a joint configuration that is not joint, removing every voter, entering a joint
/// configuration while already joint, node id 0.
#[test]
fn invalid_membership_changes_are_refused() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    use ConfChangeKind::*;
    let bad = [
        ConfChange::leave_joint(),
        multi(
            ConfChangeTransition::Auto,
            &[(RemoveNode, 1), (RemoveNode, 2), (RemoveNode, 3)],
        ),
        add_voter(0),
    ];
    for cc in bad {
        let last = net.raft(1).last_index();
        let r = net.node(1).propose_conf_change(cc.clone());
        assert!(
            matches!(r, Err(Error::InvalidConfChange(_))),
            "{cc:?}: {r:?}"
        );
        assert_eq!(net.raft(1).last_index(), last, "{cc:?} appended nothing");
        assert_eq!(voters(&net, 1), vec![1, 2, 3]);
    }
    net.change(
        1,
        multi(ConfChangeTransition::JointExplicit, &[(AddLearner, 4)]),
    );
    let again = multi(ConfChangeTransition::JointExplicit, &[(AddLearner, 5)]);
    let r = net.node(1).propose_conf_change(again);
    assert!(
        matches!(r, Err(Error::InvalidConfChange(_))),
        "joint while joint: {r:?}"
    );
    assert_eq!(net.leaders(), vec![1]);
}

/// Dissertation §3.10 leadership transfer: the leader stops accepting proposals, brings a
/// lagging target's log up to date first, and only then sends TimeoutNow; the target
/// campaigns at once (no pre-vote, past the lease) and wins in the next term.
#[test]
fn leader_transfer_brings_the_target_up_to_date_then_sends_timeout_now() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    for i in 0..5 {
        net.propose(1, &format!("p{i}"));
    }
    net.heal();
    let last = net.raft(1).last_index();
    let start = net.sent.len();
    net.node(1).transfer_leader(3).unwrap();
    assert_eq!(net.raft(1).lead_transferee(), Some(3));
    assert_eq!(
        net.node(1).propose(b"during".to_vec()),
        Err(Error::ProposalDropped("leadership transfer in progress")),
        "proposals are dropped during a transfer"
    );
    net.stabilize();

    let sent = &net.sent[start..];
    let timeout_now = sent.iter().position(|m| m.kind == MessageKind::TimeoutNow);
    let caught_up = sent.iter().position(|m| {
        m.kind == MessageKind::AppendResponse && m.from == 3 && !m.reject && m.index == last
    });
    let (t, c) = (
        timeout_now.expect("TimeoutNow sent"),
        caught_up.expect("3 caught up"),
    );
    assert!(
        c < t,
        "TimeoutNow only after the target holds the whole log"
    );
    assert_eq!(
        sent.iter()
            .filter(|m| m.kind == MessageKind::TimeoutNow)
            .count(),
        1
    );
    assert_eq!(net.leaders(), vec![3]);
    assert_eq!(net.term(3), 2);
    assert_eq!(net.raft(1).leader_id(), 3);
}

/// Dissertation §3.10: a transfer to a learner or to an unknown server is refused; to itself
/// it is a no-op; in every case the leader keeps leading and accepting proposals.
#[test]
fn leader_transfer_to_learner_unknown_or_self_is_refused() {
    let mut net = Network::with(&[1, 2, 3], &[4], |_| {});
    net.elect(1);
    assert!(net.node(1).transfer_leader(4).is_err(), "learner");
    assert!(net.node(1).transfer_leader(9).is_err(), "unknown");
    let _ = net.node(1).transfer_leader(1);
    net.stabilize();
    assert_eq!(net.raft(1).lead_transferee(), None);
    assert!(!net.sent.iter().any(|m| m.kind == MessageKind::TimeoutNow));
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.term(1), 1);
    net.propose(1, "still-leading");
}

/// Dissertation §3.10: "if the transfer does not complete within an election timeout, the
/// prior leader aborts the transfer and resumes accepting client requests."
#[test]
fn leader_transfer_aborts_after_an_election_timeout() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.node(1).transfer_leader(3).unwrap();
    net.tick_all(T - 1);
    assert_eq!(net.raft(1).lead_transferee(), Some(3));
    assert!(net.node(1).propose(b"x".to_vec()).is_err());
    net.tick_all(1);
    assert_eq!(net.raft(1).lead_transferee(), None, "aborted after T ticks");
    assert_eq!(net.leaders(), vec![1]);
    net.propose(1, "resumed");
    assert_eq!(net.peer(2).applied_data(), vec!["resumed"]);
}
