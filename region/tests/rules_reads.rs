//! Rule tests: linearizable reads (dissertation §6.4 ReadIndex and leases), client sessions
//! (dissertation §6.3), and bad input (rejected or ignored, never a panic).

mod harness;

use bytes::Bytes;
use flotilla_common::{codec, MessageKind};
use flotilla_region::raft::{
    Command, Error, ReadOnlyOption, ReadState, Role, SessionOutcome, SessionTable,
};
use harness::*;

const T: usize = ELECTION_TICK;

fn read(index: u64, ctx: &str) -> ReadState {
    ReadState {
        index,
        request_ctx: Bytes::copy_from_slice(ctx.as_bytes()),
    }
}

fn lease_network() -> Network {
    Network::with(&[1, 2, 3], &[], |c| {
        c.read_only_option = ReadOnlyOption::LeaseBased
    })
}

/// Dissertation §6.4 ReadIndex: the leader records its commit index as the read index, then
/// confirms it is still leader with a heartbeat round; only when a majority (itself and one
/// follower, of three) has answered does the read state come out.
#[test]
fn read_index_is_confirmed_by_a_heartbeat_round() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let a = net.propose(1, "a");
    net.node(1).read_index(&b"r1"[..]).unwrap();
    net.flush(1);
    assert!(
        net.peer(1).read_states.is_empty(),
        "not before the heartbeat round"
    );
    let beats: Vec<u64> = net
        .in_flight
        .iter()
        .filter(|m| m.kind == MessageKind::Heartbeat && m.context.as_ref() == b"r1")
        .map(|m| m.to)
        .collect();
    assert_eq!(beats, vec![2, 3]);
    net.deliver_where(|m| m.kind == MessageKind::Heartbeat);
    assert!(net.peer(1).read_states.is_empty());
    net.deliver_where(|m| m.from == 2 && m.kind == MessageKind::HeartbeatResponse);
    assert_eq!(
        net.peer(1).read_states,
        vec![read(a, "r1")],
        "read index = commit index"
    );
}

/// Dissertation §6.4 step 1: a new leader does not know the commit index until it commits an
/// entry of its own term; a read asked before that is held, and answered after, with the
/// new commit index.
#[test]
fn read_index_waits_until_the_leader_commits_in_its_term() {
    let mut net = Network::new(&[1, 2, 3]);
    net.node(1).campaign().unwrap();
    while net.role(1) != Role::Leader {
        assert!(net.round() > 0, "the election stalled");
    }
    assert_eq!(net.raft(1).commit_index(), 0);
    net.node(1).read_index(&b"early"[..]).unwrap();
    net.flush(1);
    assert!(net.peer(1).read_states.is_empty());
    assert!(!net.in_flight.iter().any(|m| m.context.as_ref() == b"early"));
    net.stabilize();
    assert_eq!(net.peer(1).read_states, vec![read(1, "early")]);
}

/// Dissertation §6.4: a follower can serve a linearizable read by asking the leader for a
/// read index; the leader confirms leadership as for its own reads and answers the follower.
#[test]
fn follower_read_index_is_forwarded_to_the_leader() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let a = net.propose(1, "a");
    net.node(2).read_index(&b"f"[..]).unwrap();
    net.stabilize();
    assert_eq!(net.peer(2).read_states, vec![read(a, "f")]);
    assert!(
        net.peer(1).read_states.is_empty(),
        "the answer goes to the asking follower"
    );
    assert_eq!(net.sent_of(MessageKind::ReadIndex, 2, 1).len(), 1);
    assert_eq!(net.sent_of(MessageKind::ReadIndexResponse, 1, 2).len(), 1);
}

/// Dissertation §6.4: a leader cut off from the majority cannot confirm its leadership, so
/// it never answers a read — while the majority elects a new leader and commits new writes
/// that such a read would miss.
#[test]
fn partitioned_old_leader_cannot_answer_read_index() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    net.node(1).read_index(&b"stale"[..]).unwrap();
    net.tick_all(4 * T);
    let new = net
        .leaders()
        .into_iter()
        .find(|&l| l != 1)
        .expect("a new leader");
    net.propose(new, "newer");
    net.tick_all(T);
    assert!(
        net.peer(1).read_states.is_empty(),
        "no read state from the old leader"
    );
    assert_ne!(net.role(1), Role::Leader);
}

/// Dissertation §6.4.1 lease reads: while a majority acknowledged its heartbeats within the
/// lease (shorter than the election timeout), the leader answers a read at once, without a
/// round of messages.
#[test]
fn lease_read_is_answered_without_a_round_while_the_lease_holds() {
    let mut net = lease_network();
    net.elect(1);
    net.tick_all(HEARTBEAT_TICK);
    let commit = net.raft(1).commit_index();
    net.node(1).read_index(&b"l"[..]).unwrap();
    net.flush(1);
    assert_eq!(net.peer(1).read_states, vec![read(commit, "l")]);
    assert!(
        net.in_flight.is_empty(),
        "no heartbeat round for a lease read"
    );
}

/// Dissertation §6.4.1: a freshly elected leader holds no lease yet (no follower has
/// acknowledged a heartbeat of its term, and a follower that only voted may still vote for
/// someone else); its first read needs the heartbeat round, and is answered after it.
#[test]
fn new_leader_has_no_lease_until_a_quorum_acknowledges() {
    let mut net = lease_network();
    net.elect(1);
    net.node(1).read_index(&b"first"[..]).unwrap();
    net.flush(1);
    assert!(
        net.peer(1).read_states.is_empty(),
        "no lease yet: no answer without a round"
    );
    net.stabilize();
    assert_eq!(
        net.peer(1).read_states,
        vec![read(1, "first")],
        "answered after the round"
    );
}

/// Dissertation §6.4.1: once the lease has run out — the leader is cut off and no heartbeat
/// was acknowledged within the lease — a read is not answered, even though the leader has
/// not stepped down yet (CheckQuorum acts later); the other side may already elect a leader.
#[test]
fn lease_read_is_refused_after_losing_the_quorum() {
    let mut net = lease_network();
    net.elect(1);
    net.tick_all(HEARTBEAT_TICK);
    net.isolate(1);
    net.tick_all(T - HEARTBEAT_TICK);
    assert_eq!(net.role(1), Role::Leader, "CheckQuorum has not fired yet");
    net.node(1).read_index(&b"late"[..]).unwrap();
    net.flush(1);
    assert!(net.peer(1).read_states.is_empty(), "the lease has expired");
    net.tick_all(2 * T);
    assert!(net.peer(1).read_states.is_empty());
    assert_ne!(net.role(1), Role::Leader);
}

/// Dissertation §6.3 client sessions: each command carries (client id, sequence); the state
/// machine applies a sequence once, answers a retry with the stored answer, and refuses an
/// older sequence. Here a client retries a command whose reply was lost, so the log holds
/// it twice; every replica applies it once — and so does one restored from a snapshot of
/// the session table.
#[test]
fn retried_command_is_applied_once() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let cmd = |seq: u64, op: &str| Command {
        client_id: 7,
        seq,
        payload: Bytes::from(op.to_string()),
    };
    for c in [
        cmd(1, "incr"),
        cmd(1, "incr"),
        cmd(2, "incr"),
        cmd(1, "incr"),
    ] {
        net.node(1).propose(c.encode()).unwrap();
        net.stabilize();
    }
    let mut tables = Vec::new();
    for id in 1..=3 {
        let mut table = SessionTable::new();
        let mut counter = 0u64;
        let outcomes: Vec<SessionOutcome> = net
            .peer(id)
            .applied_data()
            .iter()
            .map(|data| {
                let c = Command::decode(data).unwrap();
                table.apply(c.client_id, c.seq, || {
                    counter += 1;
                    Bytes::from(counter.to_string())
                })
            })
            .collect();
        assert_eq!(
            outcomes,
            vec![
                SessionOutcome::Applied(Bytes::from("1")),
                SessionOutcome::Duplicate(Bytes::from("1")),
                SessionOutcome::Applied(Bytes::from("2")),
                SessionOutcome::Stale,
            ],
            "peer {id}"
        );
        assert_eq!(
            counter, 2,
            "peer {id} applied the command twice, not four times"
        );
        tables.push(table);
    }
    let image = codec::encode(&tables[0]).unwrap();
    let mut restored: SessionTable = codec::decode(&image).unwrap();
    let again = restored.apply(7, 2, || panic!("a retry must not be applied"));
    assert_eq!(again, SessionOutcome::Duplicate(Bytes::from("2")));
}

/// Bad input: a message from a peer that is not a member is refused — its acknowledgements
/// do not move the leader's match indexes or commit, and its heartbeat answers do not
/// confirm a pending read.
#[test]
fn messages_from_an_unknown_peer_are_refused() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.cut(1, 2);
    net.cut(1, 3);
    let a = net.node(1).propose(b"a".to_vec()).unwrap();
    net.node(1).read_index(&b"r"[..]).unwrap();
    net.stabilize();
    let term = net.term(1);
    for from in [7, 8, 9] {
        let mut ack = msg(MessageKind::AppendResponse, from, 1, term);
        ack.index = a;
        assert_eq!(net.node(1).step(ack), Err(Error::UnknownPeer(from)));
        let mut beat = msg(MessageKind::HeartbeatResponse, from, 1, term);
        beat.context = Bytes::from_static(b"r");
        assert_eq!(net.node(1).step(beat), Err(Error::UnknownPeer(from)));
        let mut ri = msg(MessageKind::ReadIndex, from, 1, term);
        ri.context = Bytes::from_static(b"x");
        assert_eq!(net.node(1).step(ri), Err(Error::UnknownPeer(from)));
    }
    net.flush(1);
    assert!(
        net.raft(1).commit_index() < a,
        "strangers do not make a quorum"
    );
    assert!(
        net.peer(1).read_states.is_empty(),
        "strangers do not confirm a read"
    );
    assert!(net
        .in_flight
        .iter()
        .all(|m| m.to != 7 && m.to != 8 && m.to != 9));
}

/// Bad input: an acknowledgement of an index past the end of the leader's log is refused
/// and changes neither the follower's match index nor the commit index.
#[test]
fn append_response_past_the_end_of_the_log_is_refused() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.cut(1, 3);
    net.cut(1, 2);
    let a = net.node(1).propose(b"a".to_vec()).unwrap();
    net.stabilize();
    let (matched, commit) = (net.matched(1, 2), net.raft(1).commit_index());
    let mut ack = msg(MessageKind::AppendResponse, 2, 1, net.term(1));
    ack.index = a + 100;
    assert!(matches!(
        net.node(1).step(ack),
        Err(Error::InvalidMessage(_))
    ));
    assert_eq!(net.matched(1, 2), matched);
    assert_eq!(net.raft(1).commit_index(), commit);
    assert!(commit < a);
}

/// Bad input: a heartbeat (or append) with an absurd commit index does not make a follower
/// commit past the entries it holds — no panic, commit clamped.
#[test]
fn huge_commit_index_is_clamped_to_the_log() {
    let stores = vec![(1, storage_with_log(&[1, 2, 3], &[1, 1, 1], 1))];
    let mut net = Network::from_storages(stores, |_| {});
    let mut beat = msg(MessageKind::Heartbeat, 2, 1, 1);
    beat.commit = u64::MAX;
    net.node(1).step(beat).unwrap();
    net.flush(1);
    assert!(net.raft(1).commit_index() <= 3);
    assert!(net.peer(1).store.rl().hard_state().commit <= 3);

    let mut app = msg(MessageKind::Append, 2, 1, 1);
    app.index = 3;
    app.log_term = 1;
    app.entries = entries(4, &[1]);
    app.commit = u64::MAX;
    net.node(1).step(app).unwrap();
    net.flush(1);
    assert_eq!(
        net.raft(1).commit_index(),
        4,
        "clamped to the last entry the append verified"
    );
}

/// Bad input: malformed messages — entries that do not follow the previous index, entries
/// newer than the message's term, a snapshot message without a snapshot, a message for
/// another peer, from peer 0 or of term 0 — are refused with an error, and the receiver's
/// log and term are unchanged.
#[test]
fn malformed_messages_are_refused_without_change() {
    let stores = vec![(1, storage_with_log(&[1, 2, 3], &[1, 1], 1))];
    let mut net = Network::from_storages(stores, |_| {});
    let before = (net.log(1), net.term(1));

    let mut gap = msg(MessageKind::Append, 2, 1, 1);
    gap.index = 2;
    gap.log_term = 1;
    gap.entries = entries(5, &[1]);
    let mut future = msg(MessageKind::Append, 2, 1, 1);
    future.index = 2;
    future.log_term = 1;
    future.entries = entries(3, &[9]);
    let no_snapshot = msg(MessageKind::Snapshot, 2, 1, 1);
    let elsewhere = msg(MessageKind::Append, 2, 3, 5);
    let from_zero = msg(MessageKind::Append, 0, 1, 5);
    let term_zero = msg(MessageKind::RequestVote, 2, 1, 0);
    for m in [gap, future, no_snapshot, elsewhere, from_zero, term_zero] {
        let r = net.node(1).step(m.clone());
        assert!(matches!(r, Err(Error::InvalidMessage(_))), "{m:?}: {r:?}");
        net.flush(1);
        assert_eq!((net.log(1), net.term(1)), before, "{m:?} changed the peer");
    }
}
