//! Rule tests: log replication, commitment and the leader's view of each follower (Raft
//! paper §5.3, §5.4.2, Figures 7 and 8; etcd/raft-rs progress and flow control; §7 log
//! compaction and snapshots).

mod harness;

use bytes::Bytes;
use flotilla_common::{ConfState, Entry, EntryKind, Message, MessageKind};
use flotilla_region::raft::{Error, MemStorage, ProgressState, RawNode, Role};
use harness::*;

fn append(
    from: u64,
    to: u64,
    term: u64,
    prev: (u64, u64),
    ents: Vec<Entry>,
    commit: u64,
) -> Message {
    let mut m = msg(MessageKind::Append, from, to, term);
    m.index = prev.0;
    m.log_term = prev.1;
    m.entries = ents;
    m.commit = commit;
    m
}

/// Entries of one term at consecutive indexes.
fn ents_at(first: u64, terms: &[u64]) -> Vec<Entry> {
    entries(first, terms)
}

/// A lone follower 1 (of group 1, 2, 3) whose log holds `terms` and whose term is `term`.
fn follower_with(terms: &[u64], term: u64) -> Network {
    Network::from_storages(vec![(1, storage_with_log(&[1, 2, 3], terms, term))], |_| {})
}

fn append_responses(net: &Network, from: u64) -> Vec<Message> {
    net.in_flight
        .iter()
        .filter(|m| m.kind == MessageKind::AppendResponse && m.from == from)
        .cloned()
        .collect()
}

/// A group led by 1 whose proposals `a` and `b` went out in two appends to each follower,
/// all still on the wire; returns their indexes.
fn two_appends_on_the_wire() -> (Network, u64, u64) {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let a = net.node(1).propose(b"a".to_vec()).unwrap();
    net.flush(1);
    let b = net.node(1).propose(b"b".to_vec()).unwrap();
    net.flush(1);
    (net, a, b)
}

/// §5.4.2 and §8: a new leader appends an entry of its own term at once (an empty no-op);
/// it replicates and commits everywhere, and the application sees no command for it.
#[test]
fn leader_appends_an_empty_entry_when_elected() {
    let mut net = Network::new(&[1, 2, 3]);
    net.node(1).campaign().unwrap();
    while net.role(1) != Role::Leader {
        assert!(net.round() > 0, "the election stalled");
    }
    let noop = net.raft(1).entries(1, 2).unwrap();
    assert_eq!(noop.len(), 1);
    assert_eq!((noop[0].term, noop[0].index), (1, 1));
    assert!(
        noop[0].data.is_empty(),
        "the election entry carries no command"
    );
    net.stabilize();
    for id in 1..=3 {
        assert_eq!(net.log(id), vec![(1, 1)], "peer {id}");
        assert_eq!(net.raft(id).commit_index(), 1, "peer {id}");
        assert_eq!(net.peer(id).applied_index, 1);
        assert!(
            net.peer(id).applied.is_empty(),
            "the no-op is not a command"
        );
    }
}

/// §5.3: "A log entry is committed once the leader that created the entry has replicated it
/// on a majority of the servers"; the leader then tells followers the commit index in later
/// appends and they apply. A follower that was unreachable catches up afterwards.
#[test]
fn leader_commits_once_a_majority_holds_the_entry() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.cut(1, 3);
    let index = net.propose(1, "a");
    assert_eq!(index, 2);
    for id in [1, 2] {
        assert_eq!(net.raft(id).commit_index(), 2, "peer {id}: 2 of 3 hold it");
        assert_eq!(net.peer(id).applied_data(), vec!["a"]);
    }
    assert_eq!(net.raft(3).last_index(), 1);

    net.heal();
    net.tick_all(HEARTBEAT_TICK);
    assert_eq!(net.log(3), net.log(1));
    assert_eq!(net.peer(3).applied_data(), vec!["a"]);
}

/// DESIGN "write path" step 5 (thesis §10.2.1): the leader may send appends before its own
/// write is durable, but counts itself toward the quorum only after it. With one follower's
/// acknowledgement and its own write still pending, the entry is not committed.
#[test]
fn leader_counts_itself_only_after_its_write_is_durable() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let store = net.peer(1).store.clone();
    let index = net.node(1).propose(b"a".to_vec()).unwrap();
    let mut rd = net.node(1).ready();
    assert_eq!(rd.entries.last().map(|e| e.index), Some(index));
    let appends = std::mem::take(&mut rd.messages);
    assert_eq!(
        appends
            .iter()
            .filter(|m| m.kind == MessageKind::Append)
            .count(),
        2,
        "appends leave early"
    );
    for m in appends.into_iter().filter(|m| m.to == 2) {
        net.node(2).step(m).unwrap();
    }
    net.flush(2);
    let acks: Vec<Message> = net
        .in_flight
        .drain(..)
        .filter(|m| m.from == 2 && m.kind == MessageKind::AppendResponse)
        .collect();
    assert_eq!(acks.len(), 1);
    net.node(1).step(acks[0].clone()).unwrap();
    assert_eq!(
        net.raft(1).commit_index(),
        1,
        "the leader's own copy is not durable yet"
    );

    store.wl().append(&rd.entries).unwrap();
    if let Some(hs) = rd.hard_state {
        store.wl().set_hard_state(hs);
    }
    net.node(1).advance(rd);
    assert_eq!(
        net.raft(1).commit_index(),
        index,
        "durable on the leader and on 2: committed"
    );
}

/// §5.3 AppendEntries consistency check: a follower accepts entries only if its log holds an
/// entry at prevLogIndex whose term is prevLogTerm; otherwise it refuses and keeps its log.
#[test]
fn follower_checks_prev_index_and_term_before_appending() {
    // The follower's log: (index 1, term 1), (index 2, term 2).
    let cases = [
        ((0, 0), true),
        ((1, 1), true),
        ((2, 2), true),
        ((1, 2), false), // the term at index 1 differs
        ((2, 1), false), // the term at index 2 differs
        ((3, 2), false), // index 3 is missing
    ];
    for (prev, accept) in cases {
        let mut net = follower_with(&[1, 2], 2);
        let new = ents_at(prev.0 + 1, &[3]);
        net.node(1).step(append(2, 1, 3, prev, new, 0)).unwrap();
        net.flush(1);
        let resp = append_responses(&net, 1);
        assert_eq!(resp.len(), 1, "prev {prev:?}");
        assert_eq!(resp[0].reject, !accept, "prev {prev:?}");
        let want: Vec<u64> = if accept {
            assert_eq!(resp[0].index, prev.0 + 1, "acknowledges the last new entry");
            let mut kept = [1, 2][..prev.0 as usize].to_vec();
            kept.push(3);
            kept
        } else {
            assert_eq!(resp[0].index, prev.0, "names the refused position");
            vec![1, 2]
        };
        assert_eq!(net.log_terms(1), want, "prev {prev:?}");
    }
}

/// (prevLogIndex, prevLogTerm), the new entries' terms, the follower's terms afterwards.
type TruncationCase = ((u64, u64), &'static [u64], &'static [u64]);

/// §5.3: "If an existing entry conflicts with a new one (same index but different terms),
/// delete the existing entry and all that follow it"; entries the follower already has are
/// kept, including ones past the append (an old, reordered append must not cut the log).
#[test]
fn follower_truncates_only_a_conflicting_suffix() {
    // The follower's log has terms [1, 2, 2]; the leader is in term 3.
    let cases: [TruncationCase; 4] = [
        ((1, 1), &[3], &[1, 3]),             // conflict at 2: 2 and 3 go
        ((1, 1), &[2], &[1, 2, 2]),          // no conflict: nothing is cut
        ((1, 1), &[2, 2, 2], &[1, 2, 2, 2]), // extends past the end
        ((3, 2), &[3], &[1, 2, 2, 3]),       // plain append
    ];
    for (prev, new_terms, want) in cases {
        let mut net = follower_with(&[1, 2, 2], 2);
        let new = ents_at(prev.0 + 1, new_terms);
        net.node(1).step(append(2, 1, 3, prev, new, 0)).unwrap();
        net.flush(1);
        assert_eq!(net.log_terms(1), want, "prev {prev:?}, new {new_terms:?}");
        assert_eq!(
            net.peer(1).store.rl().hard_state().term,
            3,
            "the durable log and term follow the in-memory one"
        );
        let stored = net.peer(1).store.clone();
        use flotilla_region::raft::Storage;
        assert_eq!(
            stored.last_index().unwrap(),
            want.len() as u64,
            "storage truncated too"
        );
    }
}

/// §5.3 / Figure 2: "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit,
/// index of last new entry)" — a follower never commits past what this append verified.
#[test]
fn follower_commits_up_to_the_last_verified_entry() {
    let mut net = follower_with(&[1, 1, 1], 1);
    net.node(1)
        .step(append(2, 1, 2, (1, 1), ents_at(2, &[1]), 3))
        .unwrap();
    net.flush(1);
    assert_eq!(
        net.raft(1).commit_index(),
        2,
        "index 3 is not verified by this append"
    );
    net.node(1)
        .step(append(2, 1, 2, (2, 1), ents_at(3, &[1]), 3))
        .unwrap();
    net.flush(1);
    assert_eq!(net.raft(1).commit_index(), 3);
    assert_eq!(net.peer(1).applied_data(), vec!["e1", "e2", "e3"]);
}

/// Figure 2 ("respond after entries are on stable storage"): a follower's acknowledgement
/// only leaves after the entries it covers are persisted.
#[test]
fn follower_acknowledges_only_durable_entries() {
    let s = MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3]));
    let mut node = RawNode::new(&config(1), s.clone()).unwrap();
    node.step(append(2, 1, 1, (0, 0), ents_at(1, &[1, 1]), 0))
        .unwrap();
    let rd = ready_of(&mut node, &s);
    assert_eq!(rd.entries.len(), 2);
    assert!(!rd
        .messages
        .iter()
        .any(|m| m.kind == MessageKind::AppendResponse));
    let acks: Vec<&Message> = rd
        .persisted_messages
        .iter()
        .filter(|m| m.kind == MessageKind::AppendResponse)
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].index, acks[0].reject), (2, false));
    use flotilla_region::raft::Storage;
    assert_eq!(s.last_index().unwrap(), 2);
}

/// §5.3 (end: "the protocol can be optimized to reduce the number of rejected AppendEntries
/// RPCs"): a follower whose log has many entries of a term the leader does not have is
/// repaired in one round trip per conflicting term, not one per entry — the reject hint
/// makes the leader skip the whole term.
#[test]
fn reject_hint_skips_a_whole_conflicting_term() {
    // Leader 1 and peer 3: index 1 of term 1, then 50 entries of term 3.
    // Follower 2: index 1 of term 1, then 60 entries of term 2, none of them in the leader's log.
    let mut leader_terms = vec![1];
    leader_terms.extend([3; 50]);
    let mut follower_terms = vec![1];
    follower_terms.extend([2; 60]);
    let stores = vec![
        (1, storage_with_log(&[1, 2, 3], &leader_terms, 3)),
        (2, storage_with_log(&[1, 2, 3], &follower_terms, 2)),
        (3, storage_with_log(&[1, 2, 3], &leader_terms, 3)),
    ];
    let mut net = Network::from_storages(stores, |_| {});
    net.elect(1);
    let rejects = net
        .sent_of(MessageKind::AppendResponse, 2, 1)
        .iter()
        .filter(|m| m.reject)
        .count();
    assert!(
        rejects <= 2,
        "{rejects} rejections for one conflicting term"
    );
    assert_eq!(net.log(2), net.log(1));
    assert_eq!(
        net.raft(2).last_index(),
        52,
        "50 + 1 + the new leader's entry"
    );

    // Two conflicting terms ([2 × 10, 4 × 10] against the leader's [5 × 20]): at most one
    // rejection per term.
    let mut leader_terms = vec![1];
    leader_terms.extend([5; 20]);
    let mut follower_terms = vec![1];
    follower_terms.extend([2; 10]);
    follower_terms.extend([4; 10]);
    let stores = vec![
        (1, storage_with_log(&[1, 2, 3], &leader_terms, 5)),
        (2, storage_with_log(&[1, 2, 3], &follower_terms, 4)),
        (3, storage_with_log(&[1, 2, 3], &leader_terms, 5)),
    ];
    let mut net = Network::from_storages(stores, |_| {});
    net.elect(1);
    let rejects = net
        .sent_of(MessageKind::AppendResponse, 2, 1)
        .iter()
        .filter(|m| m.reject)
        .count();
    assert!(
        rejects <= 2,
        "{rejects} rejections for two conflicting terms"
    );
    assert_eq!(net.log(2), net.log(1));
}

/// §5.3 Figure 7: whatever a follower's log looks like — missing entries (a, b), extra
/// uncommitted entries (c, d), or conflicting entries of terms the leader never saw (e, f) —
/// the leader of term 8 brings it in line with its own log.
#[test]
fn figure_7_every_follower_log_converges_to_the_leaders() {
    let leader: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [(&str, &[u64]); 6] = [
        ("a", &[1, 1, 1, 4, 4, 5, 5, 6, 6]),
        ("b", &[1, 1, 1, 4]),
        ("c", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),
        ("d", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]),
        ("e", &[1, 1, 1, 4, 4, 4, 4]),
        ("f", &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),
    ];
    for (name, log) in followers {
        let follower_term = *log.last().unwrap();
        let stores = vec![
            (1, storage_with_log(&[1, 2, 3], leader, 7)),
            (2, storage_with_log(&[1, 2, 3], log, follower_term)),
            (3, storage_with_log(&[1, 2, 3], &[], 0)),
        ];
        let mut net = Network::from_storages(stores, |_| {});
        net.elect(1);
        assert_eq!(net.term(1), 8, "({name})");
        let mut want = leader.to_vec();
        want.push(8);
        assert_eq!(
            net.log_terms(1),
            want,
            "({name}) the leader's log is append-only"
        );
        assert_eq!(net.log_terms(2), want, "({name}) follower converged");
        assert_eq!(net.raft(2).commit_index(), 11, "({name})");
    }
}

/// Builds Figure 8 of the Raft paper up to step (c) on five peers S1..S5 (PreVote and
/// CheckQuorum off, one entry per append, as in the paper's model):
/// - S1 leads term 1; its no-op (1,1) is committed everywhere;
/// - (a) S1 appends "x" at index 2 and replicates it to S2 only, then crashes;
/// - (b) S5 is elected in term 2 by S3, S4, S5 and appends "y" at index 3 (after its no-op at
///   2), replicating nothing, then crashes;
/// - (c) S1 restarts and is elected in term 3 by S2, S3, S4; it gets "x" onto S3 — a
///   majority (S1, S2, S3) now holds index 2 — while its own term-3 entry reaches only S2.
fn figure_8_until_c() -> Network {
    let mut net = Network::with(&[1, 2, 3, 4, 5], &[], |c| {
        c.pre_vote = false;
        c.check_quorum = false;
        c.max_size_per_msg = 1;
    });
    net.elect(1);
    assert!(net.peers.values().all(|p| p.raft().commit_index() == 1));

    // (a)
    for id in [3, 4, 5] {
        net.cut(1, id);
    }
    assert_eq!(net.propose(1, "x"), 2);
    assert_eq!(net.log(2), vec![(1, 1), (1, 2)]);
    assert_eq!(net.raft(1).commit_index(), 1, "x is on 2 of 5");
    net.crash(1);
    net.heal();

    // (b)
    net.drop_if(|m| m.from == 5 && m.kind == MessageKind::Append);
    net.elect(5);
    assert_eq!(net.term(5), 2);
    assert_eq!(net.node(5).propose(b"y".to_vec()).unwrap(), 3);
    net.stabilize();
    assert_eq!(net.log(5), vec![(1, 1), (2, 2), (2, 3)]);
    assert_eq!(net.log(3), vec![(1, 1)], "S5 replicated nothing");
    net.crash(5);
    net.heal();

    // (c)
    net.restart(1);
    // All appends to S4 are lost. S3's first append (after index 2, which S3 lacks) is
    // refused and makes S1 probe back and send "x"; the appends that would then carry index
    // 3 to S3 are lost.
    let mut to_3_with_index_3 = 0;
    net.drop_if(move |m| {
        if m.from != 1 || m.kind != MessageKind::Append {
            return false;
        }
        if m.to == 3 && m.entries.iter().any(|e| e.index >= 3) {
            to_3_with_index_3 += 1;
            return to_3_with_index_3 > 1;
        }
        m.to == 4
    });
    net.elect(1);
    assert_eq!(net.term(1), 3);
    assert_eq!(net.log(1), vec![(1, 1), (1, 2), (3, 3)]);
    assert_eq!(net.log(2), vec![(1, 1), (1, 2), (3, 3)]);
    assert_eq!(
        net.log(3),
        vec![(1, 1), (1, 2)],
        "x reached S3, the term-3 entry did not"
    );
    assert_eq!(net.log(4), vec![(1, 1)]);
    net
}

/// §5.4.2 Figure 8 (c)→(d): an entry from an earlier term stored on a majority is still not
/// committed by counting replicas — rightly so, because S5 can then win an election (S2, S3,
/// S4 vote for its newer last term) and overwrite it everywhere. Nobody ever applies "x".
#[test]
fn figure_8_old_term_entry_on_a_majority_is_not_committed() {
    let mut net = figure_8_until_c();
    assert_eq!(
        net.raft(1).commit_index(),
        1,
        "(c) x (term 1) is on a majority but not committed"
    );
    assert!(net.peers.values().all(|p| p.applied.is_empty()));

    // (d)
    net.crash(1);
    net.heal();
    net.restart(5);
    net.elect(5);
    assert_eq!(net.term(5), 4);
    net.stabilize();
    let want = vec![(1, 1), (2, 2), (2, 3), (4, 4)];
    for id in [2, 3, 4, 5] {
        assert_eq!(
            net.log(id),
            want,
            "(d) S{id} holds S5's log: x was overwritten"
        );
        assert_eq!(net.raft(id).commit_index(), 4);
        assert_eq!(net.peer(id).applied_data(), vec!["y"], "S{id}");
    }
}

/// §5.4.2 Figure 8 (c)→(e): once the leader's current-term entry reaches a majority, it
/// commits — and the older entry "x" commits with it, by the Log Matching property. S5 can no
/// longer be elected, and its "y" is overwritten.
#[test]
fn figure_8_old_term_entry_commits_with_a_current_term_entry() {
    let mut net = figure_8_until_c();
    net.heal();
    net.tick_all(HEARTBEAT_TICK);
    assert_eq!(
        net.raft(1).commit_index(),
        3,
        "(e) the term-3 entry is on a majority"
    );
    for id in 1..=4 {
        assert_eq!(net.peer(id).applied_data(), vec!["x"], "S{id}");
    }

    net.restart(5);
    for _ in 0..2 {
        net.node(5).campaign().unwrap();
        net.stabilize();
        assert_ne!(
            net.role(5),
            Role::Leader,
            "S5's log (last term 2) is behind a majority"
        );
    }
    net.elect(1);
    net.tick_all(HEARTBEAT_TICK);
    assert_eq!(net.log(5), net.log(1));
    assert_eq!(
        net.peer(5).applied_data(),
        vec!["x"],
        "y was never committed"
    );
}

/// etcd/raft-rs progress: a follower starts in Probe (one append at a time until the match
/// point is found), switches to Replicate on the first success, and goes back to Probe when
/// an append is refused (here because the previous append was lost).
#[test]
fn progress_probe_then_replicate_then_probe_on_reject() {
    let mut net = Network::new(&[1, 2, 3]);
    net.node(1).campaign().unwrap();
    while net.role(1) != Role::Leader {
        assert!(net.round() > 0, "the election stalled");
    }
    assert_eq!(net.progress_state(1, 2), ProgressState::Probe);
    assert_eq!(net.matched(1, 2), 0);
    net.stabilize();
    assert_eq!(net.progress_state(1, 2), ProgressState::Replicate);
    assert_eq!(net.matched(1, 2), 1);

    // The append of "a" to 2 is lost; 3 acknowledges and "a" commits.
    net.node(1).propose(b"a".to_vec()).unwrap();
    let lost = net.take_where(|m| m.to == 2 && m.kind == MessageKind::Append);
    assert_eq!(lost.len(), 1);
    net.deliver_where(|m| m.to == 3);
    net.deliver_where(|m| m.from == 3);
    assert_eq!(net.raft(1).commit_index(), 2);
    assert_eq!(
        net.progress_state(1, 2),
        ProgressState::Replicate,
        "optimistic: loss unknown"
    );
    assert_eq!(net.raft(1).progress(2).unwrap().next_idx, 3);

    // Nothing is sent to 2 for the commit: its append of "a" is still unacknowledged (the
    // commit is announced at that acknowledgement). The next heartbeat's answer shows 2
    // behind; the append that follows (after index 2) cannot be placed: refused, and the
    // leader goes back to probing from 2's match point.
    assert!(net.take_where(|m| m.to == 2).is_empty());
    net.tick_n(1, HEARTBEAT_TICK);
    net.deliver_where(|m| m.to == 2 && m.kind == MessageKind::Heartbeat);
    net.deliver_where(|m| m.from == 2 && m.kind == MessageKind::HeartbeatResponse);
    net.deliver_where(|m| m.to == 2 && m.kind == MessageKind::Append);
    let refusals =
        net.deliver_where(|m| m.from == 2 && m.kind == MessageKind::AppendResponse && m.reject);
    assert_eq!(refusals, 1);
    assert_eq!(net.progress_state(1, 2), ProgressState::Probe);
    assert_eq!(
        net.raft(1).progress(2).unwrap().next_idx,
        2,
        "probe from the match point + 1"
    );

    net.stabilize();
    assert_eq!(net.progress_state(1, 2), ProgressState::Replicate);
    assert_eq!(net.matched(1, 2), 2);
    assert_eq!(net.log(2), net.log(1));
}

/// etcd/raft-rs flow control: in Replicate the leader pipelines at most
/// `max_inflight_msgs` appends without acknowledgement; with acks withheld it stops there,
/// and resumes as soon as acknowledgements free the window.
#[test]
fn inflight_window_bounds_unacknowledged_appends() {
    let mut net = Network::with(&[1, 2, 3], &[], |c| c.max_inflight_msgs = 3);
    net.elect(1);
    assert_eq!(net.progress_state(1, 2), ProgressState::Replicate);
    net.hold_if(|m| m.from == 2 && m.kind == MessageKind::AppendResponse);
    let start = net.sent.len();
    for i in 0..10 {
        net.node(1).propose(format!("p{i}").into_bytes()).unwrap();
        net.stabilize();
    }
    let to_2 = |net: &Network, from: usize| {
        net.sent[from..]
            .iter()
            .filter(|m| m.kind == MessageKind::Append && m.to == 2 && !m.entries.is_empty())
            .count()
    };
    assert_eq!(
        to_2(&net, start),
        3,
        "three appends in flight, then the window is full"
    );
    assert_eq!(
        net.raft(1).commit_index(),
        11,
        "3 keeps acknowledging, so commits go on"
    );
    assert_eq!(net.matched(1, 2), 1);
    assert_eq!(net.raft(1).last_index(), 11);

    let resumed = net.sent.len();
    net.release();
    net.stabilize();
    assert!(
        to_2(&net, resumed) >= 1,
        "acks free the window and sending resumes"
    );
    assert_eq!(net.matched(1, 2), 11);
    assert_eq!(net.log(2), net.log(1));
}

/// A commit is announced without a message of its own to a follower that has entries past
/// it in flight: the next append carries the new commit index (etcd and raft-rs send an
/// empty append to every follower at every commit, and each is answered — a quarter of a
/// busy region's messages). A leader that stops writing still tells every follower its
/// last commit at once, without waiting for a heartbeat.
#[test]
fn a_commit_rides_on_the_next_append_to_a_follower_with_entries_in_flight() {
    let (mut net, a, b) = two_appends_on_the_wire();
    // Follower 2 takes both appends, one after the other; only its acknowledgement of `a`
    // reaches the leader.
    let is_ack_from_2 = |m: &Message| m.kind == MessageKind::AppendResponse && m.from == 2;
    net.deliver_where(|m| {
        m.kind == MessageKind::Append && m.to == 2 && m.entries.last().map(|e| e.index) == Some(a)
    });
    let ack_a = net.take_where(is_ack_from_2);
    net.deliver_where(|m| m.kind == MessageKind::Append && m.to == 2);
    let acks = net.take_where(is_ack_from_2);
    assert_eq!((ack_a.len(), acks.len()), (1, 1));
    assert_eq!((ack_a[0].index, acks[0].index), (a, b));
    let sent = net.sent.len();
    net.deliver(ack_a[0].clone());
    net.flush(1);
    assert_eq!(net.raft(1).commit_index(), a, "a is on 1 and 2: committed");
    let empty: Vec<&Message> = net.sent[sent..]
        .iter()
        .filter(|m| m.kind == MessageKind::Append && m.entries.is_empty())
        .collect();
    assert!(
        empty.is_empty(),
        "2 has b in flight and 3 has a and b: no empty append, got {empty:?}"
    );
    assert_eq!(net.raft(2).commit_index(), 1);

    // The next proposal's append tells 2 that a committed.
    let c = net.node(1).propose(b"c".to_vec()).unwrap();
    net.flush(1);
    let to_2 = net.take_where(|m| m.kind == MessageKind::Append && m.to == 2);
    assert_eq!(to_2.len(), 1);
    assert_eq!(to_2[0].commit, a, "the append of c carries the commit of a");
    net.deliver(to_2[0].clone());
    net.flush(2);
    assert_eq!(net.raft(2).commit_index(), a);

    // The leader stops writing: once everything commits, every follower learns it at once.
    net.send(acks[0].clone());
    net.stabilize();
    assert_eq!(net.raft(1).commit_index(), c);
    for id in [2, 3] {
        assert_eq!(net.raft(id).commit_index(), c, "peer {id}");
        assert_eq!(
            net.peer(id).applied_data(),
            vec!["a", "b", "c"],
            "peer {id}"
        );
    }
}

/// At low load a commit costs each follower one unanswered `Commit` instead of an empty
/// append and its answer: a write is two appends, two acknowledgements and two commits. A
/// follower whose acknowledgement is still on its way is told at that acknowledgement.
#[test]
fn a_follower_that_holds_everything_committed_is_told_the_commit_without_an_answer() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let start = net.sent.len();
    let a = net.propose(1, "a");
    let kinds: Vec<MessageKind> = net.sent[start..].iter().map(|m| m.kind).collect();
    let count = |k: MessageKind| kinds.iter().filter(|&&kind| kind == k).count();
    assert_eq!(count(MessageKind::Append), 2, "{kinds:?}");
    assert_eq!(count(MessageKind::AppendResponse), 2, "{kinds:?}");
    assert_eq!(count(MessageKind::Commit), 2, "{kinds:?}");
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    for id in [2, 3] {
        assert_eq!(net.raft(id).commit_index(), a, "peer {id}");
        assert_eq!(net.peer(id).applied_data(), vec!["a"], "peer {id}");
    }

    // 3's acknowledgement is late: 2's commits the entry, and 3 learns the commit only
    // when its own acknowledgement arrives.
    let b = net.node(1).propose(b"b".to_vec()).unwrap();
    net.deliver_where(|m| m.kind == MessageKind::Append);
    let late = net.take_where(|m| m.kind == MessageKind::AppendResponse && m.from == 3);
    assert_eq!(late.len(), 1);
    net.deliver_where(|m| m.from == 2);
    assert_eq!(net.raft(1).commit_index(), b);
    assert!(
        net.take_where(|m| m.to == 3).is_empty(),
        "3's append is unacknowledged: nothing for it yet"
    );
    net.send(late[0].clone());
    net.stabilize();
    assert_eq!(net.raft(3).commit_index(), b);
    assert_eq!(net.peer(3).applied_data(), vec!["a", "b"]);
}

/// A `Commit` is a leader's message like an append: from a stale leader it is answered with
/// the newer term (so that leader steps down); it makes a candidate of its term a follower;
/// and a leader that receives one in its own term refuses it.
#[test]
fn a_commit_message_obeys_the_term_rules_of_a_leaders_message() {
    // No leader lease, so that 2 can take over from a live 1.
    let mut net = Network::with(&[1, 2, 3], &[], |c| c.check_quorum = false);
    net.elect(1);
    net.elect(2);
    let term = net.term(2);
    assert_eq!(net.role(1), Role::Follower);

    let mut stale = msg(MessageKind::Commit, 1, 3, term - 1);
    stale.commit = 1;
    net.node(3).step(stale).unwrap();
    net.flush(3);
    let answers = append_responses(&net, 3);
    assert_eq!(answers.len(), 1);
    assert_eq!((answers[0].to, answers[0].term), (1, term));
    net.take_where(|_| true);

    net.node(3).campaign().unwrap();
    net.flush(3);
    net.take_where(|_| true);
    assert_eq!(net.role(3), Role::PreCandidate);
    let mut commit = msg(MessageKind::Commit, 2, 3, net.term(3));
    commit.commit = 1;
    net.node(3).step(commit).unwrap();
    assert_eq!(net.role(3), Role::Follower);
    assert_eq!(net.raft(3).leader_id(), 2);

    let mut twin = msg(MessageKind::Commit, 1, 2, term);
    twin.commit = 1;
    assert!(net.node(2).step(twin).is_err(), "two leaders in one term");
}

/// Acknowledgements are cumulative: a follower that takes two appends before its next Ready
/// answers once, with the higher index, and the leader's view ends as after two answers. A
/// refusal is never folded into an acknowledgement.
#[test]
fn a_follower_answers_appends_taken_together_with_one_acknowledgement() {
    let (mut net, a, b) = two_appends_on_the_wire();
    let to_2 = net.take_where(|m| m.kind == MessageKind::Append && m.to == 2);
    assert_eq!(to_2.len(), 2);
    for m in to_2 {
        net.node(2).step(m).unwrap();
    }
    net.flush(2);
    let acks = append_responses(&net, 2);
    assert_eq!(acks.len(), 1, "one acknowledgement for both: {acks:?}");
    assert_eq!(acks[0].index, b);
    assert!(!acks[0].reject);
    net.take_where(|m| m.to == 3);
    net.stabilize();
    assert_eq!(net.matched(1, 2), b);
    assert_eq!(net.raft(1).commit_index(), b, "1 and 2 hold a and b");
    assert!(a < b);

    // An append that does not match is refused, and the refusal leaves beside the
    // acknowledgement of one that does.
    let term = net.term(1);
    let good = append(1, 3, term, (1, 1), ents_at(2, &[term, term]), 1);
    let bad = append(1, 3, term, (9, term), ents_at(10, &[term]), 1);
    net.node(3).step(good).unwrap();
    net.node(3).step(bad).unwrap();
    net.flush(3);
    let answers = append_responses(&net, 3);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(!answers[0].reject && answers[0].index == b);
    assert!(answers[1].reject);
}

/// §7 log compaction / InstallSnapshot: the leader compacts its log below its applied index;
/// a follower that needs the compacted entries is sent the snapshot (its progress is in
/// Snapshot state meanwhile), installs it, and catches up with the entries after it — its
/// state machine ends up equal to the leader's.
#[test]
fn lagging_follower_catches_up_from_a_snapshot() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    for i in 0..10 {
        net.propose(1, &format!("p{i}"));
    }
    assert_eq!(net.raft(1).commit_index(), 11);
    net.peer_mut(1).compact_to_applied();
    assert_eq!(
        net.raft(1).first_index(),
        11,
        "entries below the applied index are gone"
    );
    net.propose(1, "after-compaction");

    net.heal();
    net.hold_if(|m| m.kind == MessageKind::Snapshot);
    for _ in 0..2 * HEARTBEAT_TICK {
        net.tick_all(1);
        if !net.held.is_empty() {
            break;
        }
    }
    assert_eq!(net.held.len(), 1, "the leader sends a snapshot");
    assert_eq!(net.held[0].snapshot.as_ref().unwrap().metadata.index, 11);
    assert_eq!(net.progress_state(1, 3), ProgressState::Snapshot);

    net.release();
    net.stabilize();
    net.tick_all(HEARTBEAT_TICK);
    assert_eq!(net.progress_state(1, 3), ProgressState::Replicate);
    assert_eq!(net.matched(1, 3), 12);
    assert_eq!(
        net.raft(3).first_index(),
        12,
        "3's log starts after the snapshot"
    );
    assert_eq!(net.log(3), net.log(1)[1..].to_vec());
    assert_eq!(net.peer(3).applied_data(), net.peer(1).applied_data());
    assert_eq!(net.peer(3).applied_data().len(), 11);
}

/// etcd/raft-rs `report_snapshot`: when the transport reports that a snapshot did not get
/// through, the leader leaves Snapshot state for Probe and tries again later; the follower
/// still catches up in the end.
#[test]
fn failed_snapshot_returns_the_follower_to_probe() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    for i in 0..5 {
        net.propose(1, &format!("p{i}"));
    }
    net.peer_mut(1).compact_to_applied();
    net.heal();
    net.hold_if(|m| m.kind == MessageKind::Snapshot);
    for _ in 0..2 * HEARTBEAT_TICK {
        net.tick_all(1);
        if !net.held.is_empty() {
            break;
        }
    }
    assert_eq!(net.progress_state(1, 3), ProgressState::Snapshot);
    net.drop_held();
    assert_eq!(
        net.progress_state(1, 3),
        ProgressState::Probe,
        "failure reported: probe again"
    );

    net.heal();
    net.tick_all(4 * HEARTBEAT_TICK);
    assert_eq!(net.progress_state(1, 3), ProgressState::Replicate);
    assert_eq!(net.peer(3).applied_data(), net.peer(1).applied_data());
}

/// §7: each server compacts its own log independently, below what it applied; a follower
/// that compacted and then crashed restarts from its snapshot plus the log after it, applies
/// nothing twice, and keeps replicating.
#[test]
fn compacted_follower_restarts_from_its_snapshot() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..5 {
        net.propose(1, &format!("p{i}"));
    }
    net.peer_mut(2).compact_to_applied();
    net.propose(1, "p5");
    let before = net.peer(2).applied_data();
    net.crash(2);
    net.restart(2);
    net.stabilize();
    assert_eq!(net.raft(2).first_index(), 6);
    assert_eq!(
        net.peer(2).applied_data(),
        before,
        "rebuilt from snapshot + replayed log"
    );
    net.propose(1, "p6");
    assert_eq!(net.peer(2).applied_data(), net.peer(1).applied_data());
    assert_eq!(net.peer(2).applied_data().len(), 7);
}

/// Proposal forwarding (etcd's MsgProp, raft-rs's propose on a follower): commands a
/// follower accepted reach the leader, which appends them in its term; every replica,
/// the forwarding follower included, applies them in log order.
#[test]
fn a_follower_forwards_proposals_to_the_leader() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let leader = net
        .node(2)
        .forward_proposals([b"a".to_vec().into(), b"b".to_vec().into()]);
    assert_eq!(
        leader,
        Ok(1),
        "the follower names the leader it forwarded to"
    );
    let forwarded: Vec<Message> = net
        .peer_mut(2)
        .flush()
        .into_iter()
        .filter(|m| m.kind == MessageKind::Propose)
        .collect();
    assert_eq!(forwarded.len(), 1, "one message carries the whole batch");
    assert_eq!((forwarded[0].from, forwarded[0].to), (2, 1));
    for m in forwarded {
        net.send(m);
    }
    net.stabilize();
    for id in [1, 2, 3] {
        let data = net.peer(id).applied_data();
        assert_eq!(data, vec![Bytes::from("a"), Bytes::from("b")], "peer {id}");
    }
    let term = net.term(1);
    let last = net.raft(1).last_index();
    let appended = net.raft(1).entries(last - 1, last + 1).unwrap();
    assert!(
        appended.iter().all(|e| e.term == term),
        "appended in the leader's term"
    );
}

/// A follower that knows no leader cannot forward: the caller hears so at once instead of
/// waiting for an answer that never comes.
#[test]
fn a_follower_without_a_leader_refuses_to_forward() {
    let mut net = Network::new(&[1, 2, 3]);
    let r = net.node(2).forward_proposals([Bytes::from("x")]);
    assert!(
        matches!(r, Err(Error::NotLeader { leader_hint: 0 })),
        "{r:?}"
    );
    assert!(net.peer_mut(2).flush().is_empty(), "nothing was sent");
}

/// A forwarded proposal is subject to the leader's own rules: during a leadership transfer
/// it is dropped, as a local one would be; and only plain commands may be forwarded, never
/// a membership change smuggled in as an entry of another kind.
#[test]
fn the_leader_applies_its_proposal_rules_to_forwarded_commands() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let last = net.raft(1).last_index();
    // A transfer to 3 that cannot finish while 3 is cut off.
    net.isolate(3);
    net.node(1).transfer_leader(3).unwrap();
    let mut m = msg(MessageKind::Propose, 2, 1, net.term(1));
    m.entries = vec![Entry::new(EntryKind::Normal, 0, 0, b"late".to_vec())];
    let r = net.node(1).step(m);
    assert!(matches!(r, Err(Error::ProposalDropped(_))), "{r:?}");
    assert_eq!(net.raft(1).last_index(), last, "nothing appended");

    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let last = net.raft(1).last_index();
    let mut m = msg(MessageKind::Propose, 2, 1, net.term(1));
    m.entries = vec![Entry::new(EntryKind::ConfChange, 0, 0, b"cc".to_vec())];
    let r = net.node(1).step(m);
    assert!(matches!(r, Err(Error::InvalidMessage(_))), "{r:?}");
    assert_eq!(net.raft(1).last_index(), last, "nothing appended");
}

/// A node applies a round's committed entries before that round's log write is durable
/// (the leader answers its clients sooner), so after a crash its state machine may have
/// applied past the commit index its log stored. Only committed entries are ever applied:
/// on restart the applied index raises the commit index, and nothing is applied twice. An
/// applied index past the log's end is still refused.
#[test]
fn restart_with_applied_past_the_stored_commit_trusts_the_applied_index() {
    let s = MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3]));
    s.wl().append(&ents_at(1, &[1, 1, 1, 1])).unwrap();
    s.wl().set_hard_state(flotilla_common::HardState {
        term: 1,
        vote: 2,
        commit: 2,
    });
    let mut cfg = config(1);
    cfg.applied = 3;
    let node = RawNode::new(&cfg, s.clone()).unwrap();
    assert_eq!(node.raft().commit_index(), 3);
    assert_eq!(node.raft().applied(), 3);
    let mut node = node;
    assert!(
        !node.has_ready() || node.ready().committed_entries.is_empty(),
        "entries up to the applied index are not handed out again"
    );

    cfg.applied = 5;
    assert!(
        RawNode::new(&cfg, s).is_err(),
        "applied past the last log index"
    );
}

/// Pipelined persistence (a node goes on stepping and taking Readies while earlier ones'
/// writes are on their way to the disk, etcd's "async storage writes"): a write reports
/// durable only what it wrote. When a new leader's append replaces entries whose write is
/// still in flight, the old write finishing — even after storage took its entries — must
/// not make the replacements durable: the follower hands them out to apply, and
/// acknowledges them, only once their own write is done.
#[test]
fn a_finished_write_does_not_vouch_for_entries_that_replaced_its_own() {
    use flotilla_region::raft::Storage;
    let s = MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3]));
    let mut node = RawNode::new(&config(1), s.clone()).unwrap();
    // Leader 2 of term 1 appends 1..=3; their write starts but is not done.
    node.step(append(2, 1, 1, (0, 0), ents_at(1, &[1, 1, 1]), 0))
        .unwrap();
    let first = node.ready();
    assert_eq!(first.entries.len(), 3);
    // Leader 3 of term 2 replaces 2 and 3 with its own 2, committed up to 2.
    node.step(append(3, 1, 2, (1, 1), ents_at(2, &[2]), 2))
        .unwrap();
    let second = node.ready();
    assert_eq!(
        second
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect::<Vec<_>>(),
        vec![(2, 2)],
        "only the replacement is handed out to write"
    );
    assert!(second.committed_entries.is_empty(), "nothing durable yet");
    // The first write finishes: storage holds 1..=3 of term 1.
    s.wl().append(&first.entries).unwrap();
    for (term, index) in first.persisted_marks() {
        node.on_persisted(term, index);
    }
    let committed: Vec<u64> = if node.has_ready() {
        node.ready()
            .committed_entries
            .iter()
            .map(|e| e.index)
            .collect()
    } else {
        Vec::new()
    };
    assert!(
        !committed.contains(&2),
        "entry 2 of term 2 is handed out to apply before its write is done: {committed:?}"
    );
    // The second write finishes: now 2 of term 2 is durable, and applies.
    s.wl().append(&second.entries).unwrap();
    for (term, index) in second.persisted_marks() {
        node.on_persisted(term, index);
    }
    assert_eq!(s.last_index().unwrap(), 2);
    let rd = node.ready();
    let applied: Vec<(u64, u64)> = rd
        .committed_entries
        .iter()
        .map(|e| (e.index, e.term))
        .collect();
    assert!(
        applied.ends_with(&[(2, 2)]),
        "entry 2 of term 2 applies once durable: {applied:?}"
    );
}
