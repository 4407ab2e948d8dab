//! The raft protocol's data types: what is written to the log and sent between peers.
//!
//! Messages are one flat struct (like etcd's and raft-rs's) with a [`MessageKind`]: the
//! fields a kind does not use stay at their defaults. A flat struct keeps batching and
//! encoding on the transport simple.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What an entry's payload means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum EntryKind {
    /// A command for the state machine (empty data: a leader's no-op).
    #[default]
    Normal,
    /// An encoded [`ConfChange`].
    ConfChange,
}

/// One record of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: u64,
    /// The entry's position in the log (the first entry has index 1).
    pub index: u64,
    /// How `data` is to be read.
    pub kind: EntryKind,
    /// The payload. `Bytes` so that fanning an entry out to many followers is a reference
    /// count, not a copy.
    pub data: Bytes,
}

/// Fixed cost counted for an entry in size limits, on top of its data.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

impl Entry {
    /// Builds an entry.
    pub fn new(kind: EntryKind, term: u64, index: u64, data: impl Into<Bytes>) -> Self {
        Entry {
            term,
            index,
            kind,
            data: data.into(),
        }
    }

    /// The bytes this entry counts for in message and batch size limits.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// The state a peer must make durable before it answers: its term, its vote in that term,
/// and how far it knows the log to be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HardState {
    /// The current term.
    pub term: u64,
    /// The peer voted for in `term` (0: none).
    pub vote: u64,
    /// The highest index known to be committed.
    pub commit: u64,
}

/// The membership of a group: who votes and who only learns. During a joint change
/// `voters_outgoing` holds the old voters and both majorities are needed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfState {
    /// Voters of the (incoming) configuration.
    pub voters: Vec<u64>,
    /// Non-voting members that receive the log.
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration while in a joint configuration; empty otherwise.
    pub voters_outgoing: Vec<u64>,
    /// Voters being demoted: they become learners when the joint configuration is left.
    pub learners_next: Vec<u64>,
    /// Whether the leader leaves the joint configuration by itself once it is committed.
    pub auto_leave: bool,
}

impl ConfState {
    /// A configuration of the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = u64>) -> Self {
        ConfState {
            voters: voters.into_iter().collect(),
            ..Default::default()
        }
    }
}

/// What a single configuration change does to one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfChangeKind {
    /// Add a voter, or promote a learner to voter.
    AddVoter,
    /// Add a learner, or demote a voter to learner.
    AddLearner,
    /// Remove the member.
    RemoveNode,
}

/// One member's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfChangeSingle {
    /// What happens.
    pub kind: ConfChangeKind,
    /// To whom.
    pub node_id: u64,
}

/// How a change of several voters passes through the joint configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ConfChangeTransition {
    /// Simple change when possible (at most one voter changes), else joint with auto-leave.
    #[default]
    Auto,
    /// Always joint; the leader leaves it by itself once it is committed.
    JointImplicit,
    /// Always joint; the application proposes the empty change that leaves it.
    JointExplicit,
}

/// A membership change, proposed as an [`EntryKind::ConfChange`] entry.
///
/// No changes at all means "leave the joint configuration".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfChange {
    /// How to pass through the joint configuration.
    pub transition: ConfChangeTransition,
    /// The member changes, applied together.
    pub changes: Vec<ConfChangeSingle>,
    /// Opaque application data carried with the change (for example the new member's address).
    pub context: Bytes,
    /// The membership after this change. Left `None` by the proposer; the leader fills it in
    /// when it appends the change, so that every peer adopts exactly that membership when
    /// the entry reaches its log (changes take effect on append) and replaying is idempotent.
    pub result: Option<ConfState>,
}

impl ConfChange {
    /// A change of a single member.
    pub fn single(kind: ConfChangeKind, node_id: u64) -> Self {
        ConfChange {
            changes: vec![ConfChangeSingle { kind, node_id }],
            ..Default::default()
        }
    }

    /// The empty change that leaves a joint configuration.
    pub fn leave_joint() -> Self {
        ConfChange::default()
    }

    /// `Some(auto_leave)` if this change must go through a joint configuration.
    pub fn enters_joint(&self) -> Option<bool> {
        let joint = self.transition != ConfChangeTransition::Auto || self.changes.len() > 1;
        if !joint || self.changes.is_empty() {
            return None;
        }
        Some(matches!(
            self.transition,
            ConfChangeTransition::Auto | ConfChangeTransition::JointImplicit
        ))
    }

    /// Whether this is the empty change that leaves a joint configuration.
    pub fn leaves_joint(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Where a snapshot sits in the log and the membership at that point.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotMetadata {
    /// The last index the snapshot covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The membership as of `index`.
    pub conf_state: ConfState,
}

/// A state machine image at a log position.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its position and membership.
    pub metadata: SnapshotMetadata,
    /// The state machine's image, opaque to raft.
    pub data: Bytes,
}

impl Snapshot {
    /// Whether this is the empty placeholder (index 0).
    pub fn is_empty(&self) -> bool {
        self.metadata.index == 0
    }
}

/// The kinds of message peers exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum MessageKind {
    /// Leader → follower: entries after (`index`, `log_term`), and the leader's commit.
    #[default]
    Append,
    /// Follower → leader: accepted up to `index`, or rejected with a hint.
    AppendResponse,
    /// Candidate → all: vote for me in `term`; my last entry is (`index`, `log_term`).
    RequestVote,
    /// The answer to a vote request (`reject` tells).
    RequestVoteResponse,
    /// Pre-candidate → all: would you vote for me in `term` (not yet my term)?
    RequestPreVote,
    /// The answer to a pre-vote request.
    RequestPreVoteResponse,
    /// Leader → follower: install this snapshot.
    Snapshot,
    /// Leader → follower: I am alive; you may commit up to `commit`.
    Heartbeat,
    /// Follower → leader: answer to a heartbeat (also confirms leadership for reads).
    HeartbeatResponse,
    /// Leader → transferee: campaign now, skipping pre-vote and lease checks.
    TimeoutNow,
    /// Follower → leader: a read request forwarded to the leader (`context` names it).
    ReadIndex,
    /// Leader → follower: the read index (`index`) for the request named by `context`.
    ReadIndexResponse,
    /// Follower → leader: a leader-transfer request forwarded to the leader.
    TransferLeader,
    /// Follower → leader: client commands (`entries`, all `Normal`) accepted by a follower
    /// and forwarded for the leader to append. Nothing answers it: the follower learns the
    /// outcome by applying the entries like every replica.
    Propose,
    /// Member → a replica its region no longer lists (it asked for votes, or was just
    /// removed): "you were removed". `context` carries the sender's region descriptor, so
    /// the receiver can check that it is newer than its own before it destroys itself.
    /// Handled by the node, never by the raft core.
    PeerRemoved,
    /// Node → node: a message of the cluster layer (gossip, later a balancer's orders),
    /// not of any region. Travels with `region_id == 0`; `context` carries the encoded
    /// node message. Handled by the node's cluster component, never by a region or the
    /// raft core.
    Node,
    /// Leader → follower: you may commit up to `commit` (the follower holds the log that
    /// far). Sent instead of an empty `Append` to a follower that acknowledged everything
    /// committed and has nothing in flight; nothing answers it (a lost one is made good by
    /// the next append or heartbeat).
    Commit,
}

/// A raft message between two peers of one group.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Message {
    /// What the message is.
    pub kind: MessageKind,
    /// The sending peer.
    pub from: u64,
    /// The receiving peer.
    pub to: u64,
    /// The sender's term (for pre-vote requests: the term it would campaign in).
    pub term: u64,
    /// Append: term of the entry before `entries`. Votes: the candidate's last term.
    /// Rejected append response: term of the follower's entry at `reject_hint`.
    pub log_term: u64,
    /// Append: index before `entries`. Votes: candidate's last index. Append response:
    /// last index accepted, or the rejected index. Read index response: the read index.
    pub index: u64,
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// The sender's commit index.
    pub commit: u64,
    /// A snapshot to install. Boxed: a snapshot rides on few messages, and held inline it
    /// would more than double every message's size (moved several times on its way).
    pub snapshot: Option<Box<Snapshot>>,
    /// Whether a request was refused.
    pub reject: bool,
    /// On a rejected append: the follower's guess of the last index that can match.
    pub reject_hint: u64,
    /// Opaque data: read-request ids, or a campaign marker for leader transfer.
    pub context: bytes::Bytes,
    /// On a rejected append: the follower has no membership yet (a new peer) and needs a
    /// snapshot before it can take entries.
    pub request_snapshot: bool,
}

impl Message {
    /// A message with the addressing fields set and everything else at its default.
    pub fn new(kind: MessageKind, from: u64, to: u64, term: u64) -> Self {
        Message {
            kind,
            from,
            to,
            term,
            ..Default::default()
        }
    }

    /// Whether this is a response that a peer sends back to a request.
    pub fn is_response(&self) -> bool {
        matches!(
            self.kind,
            MessageKind::AppendResponse
                | MessageKind::RequestVoteResponse
                | MessageKind::RequestPreVoteResponse
                | MessageKind::HeartbeatResponse
                | MessageKind::ReadIndexResponse
        )
    }
}
