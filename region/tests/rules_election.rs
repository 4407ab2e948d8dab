//! Rule tests: roles, terms and elections (Raft paper §5.1, §5.2, §5.4.1, §6; thesis §9.6).
//!
//! Each test names the rule it checks and tells the protocol's story step by step on an
//! in-memory network (see `harness`).

mod harness;

use std::collections::BTreeSet;

use flotilla_common::{ConfState, HardState, Message, MessageKind};
use flotilla_region::raft::{MemStorage, Role};
use harness::*;

const T: usize = ELECTION_TICK;

/// A network holding only peer 1 of a group of `voters`: what it sends stays on the wire
/// for the test to read, and nobody answers unless the test does.
fn lone(voters: &[u64], pre_vote: bool) -> Network {
    let s = MemStorage::new_with_conf_state(ConfState::with_voters(voters.iter().copied()));
    Network::from_storages(vec![(1, s)], |c| c.pre_vote = pre_vote)
}

fn vote_request(from: u64, to: u64, term: u64, last_term: u64, last_index: u64) -> Message {
    let mut m = msg(MessageKind::RequestVote, from, to, term);
    m.log_term = last_term;
    m.index = last_index;
    m
}

/// The vote responses peer `from` put on the wire to `to`.
fn vote_responses(net: &Network, from: u64, to: u64) -> Vec<Message> {
    net.in_flight
        .iter()
        .filter(|m| m.kind == MessageKind::RequestVoteResponse && m.from == from && m.to == to)
        .cloned()
        .collect()
}

/// §5.2: "When servers start up, they begin as followers", in term 0 with no vote and no
/// leader, and stay followers as long as they hear nothing and the timeout has not fired.
#[test]
fn servers_start_as_followers() {
    let mut net = Network::new(&[1, 2, 3]);
    for id in 1..=3 {
        assert_eq!(net.role(id), Role::Follower);
        assert_eq!(net.term(id), 0);
        assert_eq!(net.raft(id).vote(), 0);
        assert_eq!(net.raft(id).leader_id(), 0);
    }
    net.tick_all(T - 1);
    assert!(net
        .peers
        .values()
        .all(|p| p.raft().role() == Role::Follower));
    assert!(
        net.sent.is_empty(),
        "nothing is sent before an election timeout"
    );
}

/// §5.1 terms are a logical clock: "If a candidate or leader discovers that its term is out
/// of date, it immediately reverts to follower state." Every role — follower,
/// pre-candidate, candidate, leader — that receives a message of a higher term becomes a
/// follower of that term (with the sender as leader when the message is an append).
#[test]
fn higher_term_message_turns_every_role_into_follower() {
    for role in [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
    ] {
        let mut net = Network::with(&[1, 2, 3], &[], |c| c.pre_vote = role != Role::Candidate);
        match role {
            Role::Follower => {}
            Role::PreCandidate | Role::Candidate => {
                net.node(1).campaign().unwrap();
                net.flush(1);
            }
            Role::Leader => net.elect(1),
        }
        assert_eq!(net.role(1), role);
        let term = net.term(1);

        let m = msg(MessageKind::Append, 2, 1, term + 1);
        net.node(1).step(m).unwrap();
        net.flush(1);

        let r = net.raft(1);
        assert_eq!(r.role(), Role::Follower, "{role:?} must step down");
        assert_eq!(r.term(), term + 1, "{role:?} must adopt the higher term");
        assert_eq!(
            r.leader_id(),
            2,
            "{role:?} must follow the sender of the append"
        );
        assert_eq!(r.vote(), 0, "a new term starts without a vote");
        assert_eq!(
            net.peer(1).store.rl().hard_state().term,
            term + 1,
            "the new term is persisted"
        );
    }
}

/// §5.1: "If a server receives a request with a stale term number, it rejects the request."
/// A stale append changes nothing (log, term, leader) and the answer carries the current term
/// so that the stale leader learns it is out of date; a stale vote request gets no vote.
#[test]
fn stale_term_messages_are_rejected() {
    let stores = (1..=3)
        .map(|id| (id, storage_with_log(&[1, 2, 3], &[], 5)))
        .collect();
    let mut net = Network::from_storages(stores, |_| {});
    net.elect(1);
    assert_eq!(net.term(2), 6);
    let log_before = net.log(2);
    let vote_before = net.raft(2).vote();

    // A deposed leader 3 from term 5 sends an append that would overwrite index 1.
    let mut append = msg(MessageKind::Append, 3, 2, 5);
    append.entries = entries(1, &[5]);
    append.commit = 1;
    let _ = net.node(2).step(append);
    net.flush(2);
    assert_eq!(
        net.log(2),
        log_before,
        "a stale append must not touch the log"
    );
    assert_eq!(net.term(2), 6);
    assert_eq!(net.raft(2).leader_id(), 1);
    assert_eq!(net.role(2), Role::Follower);
    for m in net.in_flight.iter().filter(|m| m.from == 2 && m.to == 3) {
        assert_eq!(
            m.term, 6,
            "any answer tells the stale sender the current term: {m:?}"
        );
        assert!(m.kind != MessageKind::AppendResponse || m.reject || m.index == 0);
    }

    // A stale vote request gets no vote.
    let _ = net.node(2).step(vote_request(3, 2, 5, 6, 100));
    net.flush(2);
    assert_eq!(net.raft(2).vote(), vote_before);
    assert_eq!(net.term(2), 6);
    assert!(vote_responses(&net, 2, 3).iter().all(|m| m.reject));
}

/// §5.2: election timeouts are "chosen randomly from a fixed interval" — here [T, 2T). Over
/// many seeds a follower that hears nothing starts campaigning after exactly its randomized
/// timeout, every value of the interval occurs (both ends), and nothing outside it.
#[test]
fn election_timeout_is_random_in_t_to_2t() {
    let mut seen = BTreeSet::new();
    for seed in 0..400u64 {
        let s = MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3]));
        let mut net = Network::from_storages(vec![(1, s)], |c| c.seed = seed);
        let timeout = net.raft(1).randomized_election_timeout();
        let mut ticks = 0;
        while net.role(1) == Role::Follower {
            net.tick(1);
            ticks += 1;
            assert!(ticks < 2 * T, "seed {seed}: no campaign within 2T ticks");
        }
        assert_eq!(
            ticks, timeout,
            "seed {seed}: campaign fires at the randomized timeout"
        );
        assert!(
            (T..2 * T).contains(&ticks),
            "seed {seed}: timeout {ticks} outside [T, 2T)"
        );
        seen.insert(ticks);
    }
    assert_eq!(
        seen,
        (T..2 * T).collect::<BTreeSet<_>>(),
        "every timeout in [T, 2T) occurs"
    );
}

/// §5.2: "Leaders send periodic heartbeats ... to all followers in order to maintain their
/// authority." The leader sends one heartbeat to each follower every H ticks, and with
/// heartbeats flowing no follower ever campaigns (H ≪ T).
#[test]
fn leader_heartbeats_every_h_ticks() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let start = net.sent.len();
    for t in 1..=4 * T {
        net.tick_all(1);
        for f in [2, 3] {
            let beats = net.sent[start..]
                .iter()
                .filter(|m| m.kind == MessageKind::Heartbeat && m.from == 1 && m.to == f)
                .count();
            assert_eq!(
                beats,
                t / HEARTBEAT_TICK,
                "after {t} ticks, heartbeats to {f}"
            );
        }
    }
    assert!(
        !net.sent[start..].iter().any(|m| matches!(
            m.kind,
            MessageKind::RequestPreVote | MessageKind::RequestVote
        )),
        "no follower campaigns while heartbeats arrive"
    );
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.term(1), 1);
}

/// §5.2: "To begin an election, a follower increments its current term and transitions to
/// candidate state. It then votes for itself and issues RequestVote RPCs in parallel to each
/// of the other servers." (PreVote off.) The term and self-vote are in the Ready's hard state.
#[test]
fn candidate_increments_term_and_votes_for_itself() {
    let mut net = lone(&[1, 2, 3], false);
    net.tick_n(1, 2 * T);
    assert_eq!(net.role(1), Role::Candidate);
    assert_eq!(net.term(1), 1);
    assert_eq!(net.raft(1).vote(), 1);
    assert_eq!(
        net.peer(1).store.rl().hard_state(),
        HardState {
            term: 1,
            vote: 1,
            commit: 0
        }
    );
    let mut to: Vec<u64> = net
        .in_flight
        .iter()
        .filter(|m| m.kind == MessageKind::RequestVote && m.term == 1)
        .map(|m| m.to)
        .collect();
    to.sort();
    assert_eq!(to, vec![2, 3]);
}

/// §5.2: a candidate "wins an election if it receives votes from a majority of the servers
/// in the full cluster for the same term"; with a majority of refusals it goes back to
/// follower; otherwise it keeps waiting as a candidate.
#[test]
fn candidate_needs_a_majority_of_votes() {
    let cases: [(u64, &[u64], &[u64], Role); 7] = [
        (1, &[], &[], Role::Leader),
        (3, &[2], &[], Role::Leader),
        (3, &[], &[2], Role::Candidate),
        (3, &[], &[2, 3], Role::Follower),
        (5, &[2, 3], &[], Role::Leader),
        (5, &[2], &[3], Role::Candidate),
        (5, &[2], &[3, 4, 5], Role::Follower),
    ];
    for (size, grants, rejects, want) in cases {
        let voters: Vec<u64> = (1..=size).collect();
        let mut net = lone(&voters, false);
        net.node(1).campaign().unwrap();
        net.flush(1);
        for (&id, reject) in grants
            .iter()
            .map(|g| (g, false))
            .chain(rejects.iter().map(|r| (r, true)))
        {
            let mut m = msg(MessageKind::RequestVoteResponse, id, 1, 1);
            m.reject = reject;
            net.node(1).step(m).unwrap();
        }
        net.flush(1);
        assert_eq!(
            net.role(1),
            want,
            "size {size}, grants {grants:?}, rejects {rejects:?}"
        );
        assert_eq!(
            net.term(1),
            1,
            "losing an election does not change the term"
        );
    }
}

/// §5.2: "If the AppendEntries RPC is from another server claiming to be leader [whose term]
/// is at least as large as the candidate's current term, then the candidate recognizes the
/// leader as legitimate and returns to follower state."
#[test]
fn candidate_steps_down_for_a_leader_of_its_term() {
    let mut net = lone(&[1, 2, 3], false);
    net.node(1).campaign().unwrap();
    net.flush(1);
    assert_eq!((net.role(1), net.term(1)), (Role::Candidate, 1));
    net.node(1).step(msg(MessageKind::Append, 2, 1, 1)).unwrap();
    net.flush(1);
    assert_eq!((net.role(1), net.term(1)), (Role::Follower, 1));
    assert_eq!(net.raft(1).leader_id(), 2);
    assert_eq!(net.raft(1).vote(), 1, "the vote of the term stays cast");
}

/// §5.2: "If many followers become candidates at the same time, votes could be split ...
/// each candidate will time out and start a new election by incrementing its term."
#[test]
fn candidate_without_majority_starts_a_new_election_after_timeout() {
    let mut net = lone(&[1, 2, 3], false);
    net.node(1).campaign().unwrap();
    net.flush(1);
    net.in_flight.clear();
    net.tick_n(1, 2 * T);
    assert_eq!((net.role(1), net.term(1)), (Role::Candidate, 2));
    assert!(net
        .in_flight
        .iter()
        .any(|m| m.kind == MessageKind::RequestVote && m.term == 2));
}

/// A group that never had a leader (a region fresh from a split) may skip the pre-vote
/// round: the campaign asks for real votes in term 1 at once, and it wins in one round trip.
/// A peer that knows a live leader still refuses such a vote (§6, CheckQuorum).
#[test]
fn a_campaign_without_pre_vote_asks_for_votes_at_once() {
    let mut net = Network::new(&[1, 2, 3]);
    net.node(1).campaign_without_pre_vote().unwrap();
    net.flush(1);
    assert_eq!(net.role(1), Role::Candidate);
    assert_eq!((net.term(1), net.raft(1).vote()), (1, 1));
    assert_eq!(net.in_flight.len(), 2);
    assert!(
        net.in_flight
            .iter()
            .all(|m| m.kind == MessageKind::RequestVote && m.term == 1),
        "{:?}",
        net.in_flight
    );
    net.stabilize();
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.term(1), 1, "one term, no pre-vote round");

    // Peer 2, following the live leader 1, ignores peer 3's campaign.
    net.node(3).campaign_without_pre_vote().unwrap();
    net.stabilize();
    assert_eq!(net.leaders(), vec![1], "a live leader is not disturbed");
    assert_eq!(net.raft(2).vote(), 1);
}

/// Thesis §9.6 PreVote: a pre-candidate asks "would you vote for me in term t+1?" without
/// changing its own term or vote, and the peers that answer change neither theirs; only
/// after a majority said yes does the real election bump the term.
#[test]
fn pre_vote_changes_neither_term_nor_vote() {
    let mut net = Network::new(&[1, 2, 3]);
    net.node(1).campaign().unwrap();
    net.flush(1);
    assert_eq!(net.role(1), Role::PreCandidate);
    assert_eq!((net.term(1), net.raft(1).vote()), (0, 0));
    assert_eq!(net.peer(1).store.rl().hard_state(), HardState::default());
    let asks: Vec<&Message> = net
        .in_flight
        .iter()
        .filter(|m| m.kind == MessageKind::RequestPreVote)
        .collect();
    assert_eq!(asks.len(), 2);
    assert!(
        asks.iter().all(|m| m.term == 1),
        "a pre-vote asks about the next term"
    );

    net.deliver_where(|m| m.kind == MessageKind::RequestPreVote);
    for id in [2, 3] {
        assert_eq!(
            (net.term(id), net.raft(id).vote()),
            (0, 0),
            "peer {id} answered a pre-vote"
        );
        assert_eq!(net.peer(id).store.rl().hard_state(), HardState::default());
    }
    let answers: Vec<&Message> = net
        .in_flight
        .iter()
        .filter(|m| m.kind == MessageKind::RequestPreVoteResponse)
        .collect();
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|m| !m.reject));

    net.stabilize();
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.term(1), 1, "the real election took exactly one term");
}

/// Thesis §9.6 PreVote: a node cut off from the cluster keeps failing its pre-votes and so
/// never bumps its term; when it comes back, the leader and the cluster's term are unchanged
/// and it simply follows again.
#[test]
fn partitioned_node_rejoins_without_bumping_the_term() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.tick_all(10 * T);
    assert_eq!(
        net.term(3),
        1,
        "pre-votes never bumped the isolated node's term"
    );
    assert_ne!(net.role(3), Role::Leader);
    assert!(net
        .sent
        .iter()
        .any(|m| m.from == 3 && m.kind == MessageKind::RequestPreVote));
    assert!(!net
        .sent
        .iter()
        .any(|m| m.from == 3 && m.kind == MessageKind::RequestVote));

    net.heal();
    net.tick_all(2 * T);
    assert_eq!(net.leaders(), vec![1]);
    for id in 1..=3 {
        assert_eq!(net.term(id), 1, "peer {id}");
    }
    assert_eq!(net.role(3), Role::Follower);
    assert_eq!(net.raft(3).leader_id(), 1);
    let index = net.propose(1, "after-rejoin");
    assert_eq!(net.peer(3).applied.last().map(|(i, _)| *i), Some(index));
}

/// CheckQuorum (thesis §6.2): a leader that has not heard from a majority within an election
/// timeout steps down — here a leader cut off from everyone gives up leadership after at
/// least T and at most 2T ticks (the window in which it last heard from its followers),
/// without bumping its term, while the majority side elects a new leader.
#[test]
fn check_quorum_isolated_leader_steps_down() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    let mut ticks = 0;
    while net.role(1) == Role::Leader {
        net.tick_all(1);
        ticks += 1;
        assert!(
            ticks <= 2 * T,
            "isolated leader still leads after {ticks} ticks"
        );
    }
    assert!(
        ticks >= T,
        "stepped down after {ticks} ticks, before a full election timeout"
    );
    assert_eq!(net.role(1), Role::Follower);
    assert_eq!(net.term(1), 1, "stepping down does not change the term");
    net.tick_all(3 * T);
    let others: Vec<u64> = net.leaders().into_iter().filter(|&l| l != 1).collect();
    assert_eq!(others.len(), 1, "the majority side elected one leader");
    assert!(net.term(others[0]) > 1);
}

/// §6 (disruptive servers): "if a server receives a RequestVote RPC within the minimum
/// election timeout of hearing from a current leader, it does not update its term or grant
/// its vote." Once a full election timeout passes without the leader, the same request is
/// honoured.
#[test]
fn vote_requests_ignored_while_a_leader_is_live() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let (last_term, last_index) = (net.raft(3).last_term(), net.raft(3).last_index());
    net.isolate(2);

    // Peer 3 (up to date, so it would deserve the vote) asks with a much higher term.
    let _ = net
        .node(2)
        .step(vote_request(3, 2, 9, last_term, last_index));
    net.flush(2);
    assert_eq!(
        (net.term(2), net.raft(2).vote()),
        (1, 1),
        "follower ignored it"
    );
    assert!(vote_responses(&net, 2, 3).iter().all(|m| m.reject));
    let _ = net
        .node(1)
        .step(vote_request(3, 1, 9, last_term, last_index));
    net.flush(1);
    assert_eq!(
        (net.role(1), net.term(1)),
        (Role::Leader, 1),
        "leader ignored it"
    );

    // Still within the minimum election timeout after T-1 silent ticks.
    net.tick_n(2, T - 1);
    net.in_flight.clear();
    let _ = net
        .node(2)
        .step(vote_request(3, 2, 9, last_term, last_index));
    net.flush(2);
    assert_eq!(net.term(2), 1);
    assert!(vote_responses(&net, 2, 3).iter().all(|m| m.reject));

    // A full election timeout without the leader: the request is honoured.
    net.tick(2);
    net.in_flight.clear();
    net.node(2)
        .step(vote_request(3, 2, 9, last_term, last_index))
        .unwrap();
    net.flush(2);
    assert_eq!((net.term(2), net.raft(2).vote()), (9, 3));
    let answers = vote_responses(&net, 2, 3);
    assert_eq!(answers.len(), 1);
    assert!(!answers[0].reject);
}

/// §5.4.1 election restriction: a voter denies its vote if its own log is more up to date
/// than the candidate's — compared by the last entries' terms first, then by length.
#[test]
fn vote_only_for_a_candidate_with_an_up_to_date_log() {
    // The voter's log ends with (term 2, index 3).
    let cases = [
        (1, 3, false),  // older last term, same length
        (1, 10, false), // older last term, longer log: term wins
        (2, 2, false),  // same last term, shorter
        (2, 3, true),   // identical
        (2, 4, true),   // same last term, longer
        (3, 1, true),   // newer last term, shorter: term wins
    ];
    for (last_term, last_index, grant) in cases {
        let s = storage_with_log(&[1, 2, 3], &[1, 1, 2], 2);
        let mut net = Network::from_storages(vec![(1, s)], |_| {});
        let _ = net
            .node(1)
            .step(vote_request(2, 1, 3, last_term, last_index));
        net.flush(1);
        let case = format!("candidate last ({last_term}, {last_index})");
        assert_eq!(
            net.term(1),
            3,
            "{case}: the higher term is adopted either way"
        );
        assert_eq!(net.raft(1).vote(), if grant { 2 } else { 0 }, "{case}");
        let answers = vote_responses(&net, 1, 2);
        assert_eq!(answers.len(), 1, "{case}");
        assert_eq!(answers[0].reject, !grant, "{case}");
    }
}

/// §5.2: "Each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis." A second candidate of the same term is refused; the same
/// candidate asking again (its answer was lost) gets the same vote; a new term frees the vote.
#[test]
fn at_most_one_vote_per_term() {
    let mut net = lone(&[1, 2, 3], true);
    let ask = |net: &mut Network, from: u64, term: u64| -> bool {
        net.in_flight.clear();
        let _ = net.node(1).step(vote_request(from, 1, term, 0, 0));
        net.flush(1);
        let answers = vote_responses(net, 1, from);
        assert_eq!(answers.len(), 1, "one answer to {from} in term {term}");
        !answers[0].reject
    };
    assert!(
        ask(&mut net, 2, 1),
        "first candidate of term 1 gets the vote"
    );
    assert!(
        !ask(&mut net, 3, 1),
        "second candidate of term 1 is refused"
    );
    assert_eq!(net.raft(1).vote(), 2);
    assert!(
        ask(&mut net, 2, 1),
        "a retried request of the same candidate gets the same vote"
    );
    assert!(ask(&mut net, 3, 2), "a new term, a new vote");
    assert_eq!((net.term(1), net.raft(1).vote()), (2, 3));
}

/// Figure 2 ("updated on stable storage before responding to RPCs"): the term and vote are
/// in the Ready's hard state, and the vote reply is only among the messages that leave after
/// persisting, never among those that may leave before.
#[test]
fn vote_is_durable_before_the_reply_leaves() {
    let s = MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3]));
    let mut node = flotilla_region::raft::RawNode::new(&config(1), s.clone()).unwrap();
    node.step(vote_request(2, 1, 1, 0, 0)).unwrap();
    let rd = ready_of(&mut node, &s);
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 1,
            vote: 2,
            commit: 0
        })
    );
    assert!(
        !rd.messages
            .iter()
            .any(|m| m.kind == MessageKind::RequestVoteResponse),
        "a vote must not leave before it is durable: {:?}",
        rd.messages
    );
    let votes: Vec<&Message> = rd
        .persisted_messages
        .iter()
        .filter(|m| m.kind == MessageKind::RequestVoteResponse)
        .collect();
    assert_eq!(votes.len(), 1);
    assert_eq!((votes[0].to, votes[0].term, votes[0].reject), (2, 1, false));
    assert_eq!(
        s.rl().hard_state(),
        HardState {
            term: 1,
            vote: 2,
            commit: 0
        }
    );
}
