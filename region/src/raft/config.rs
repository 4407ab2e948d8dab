//! The settings of one raft peer.

use super::errors::{Error, Result};

/// How linearizable reads are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadOnlyOption {
    /// ReadIndex: the leader confirms its leadership with a heartbeat round per read batch.
    #[default]
    Safe,
    /// Lease: the leader answers from its lease (needs `check_quorum`); relies on bounded
    /// clock drift between peers.
    LeaseBased,
}

/// The settings of one raft peer.
#[derive(Debug, Clone)]
pub struct Config {
    /// This peer's id; never 0.
    pub id: u64,
    /// Base election timeout T in ticks; the real timeout is random in [T, 2T).
    pub election_tick: usize,
    /// Ticks between leader heartbeats; must be well below `election_tick`.
    pub heartbeat_tick: usize,
    /// The index already applied to the state machine when the peer starts.
    pub applied: u64,
    /// Bytes of entries in one append message, at most (one entry always fits).
    pub max_size_per_msg: u64,
    /// Append messages in flight to one follower in replicate state, at most: the
    /// pipelining window that bounds memory and retransmission after a failure.
    pub max_inflight_msgs: usize,
    /// Bytes of committed entries handed to the application in one Ready, at most.
    pub max_committed_size_per_ready: u64,
    /// Bytes of proposed but uncommitted entries a leader accepts before it drops
    /// proposals, at most: protects memory when followers cannot keep up. 0: no limit.
    pub max_uncommitted_size: u64,
    /// Leaders step down when they have not heard from a quorum in an election timeout.
    pub check_quorum: bool,
    /// Ask for votes in a pre-vote round before bumping the term.
    pub pre_vote: bool,
    /// How reads are confirmed.
    pub read_only_option: ReadOnlyOption,
    /// Seed of the election-timeout randomness.
    pub seed: u64,
}

impl Config {
    /// Defaults suited to a multi-raft node: T = 10 ticks, heartbeat every 2 ticks,
    /// PreVote and CheckQuorum on.
    pub fn new(id: u64) -> Self {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 2,
            applied: 0,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_committed_size_per_ready: 16 << 20,
            max_uncommitted_size: 64 << 20,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            seed: id,
        }
    }

    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<()> {
        if self.id == 0 {
            return Err(Error::InvalidConfig("id must not be 0".into()));
        }
        if self.heartbeat_tick == 0 {
            return Err(Error::InvalidConfig(
                "heartbeat_tick must be positive".into(),
            ));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(Error::InvalidConfig(
                "election_tick must exceed heartbeat_tick".into(),
            ));
        }
        if self.max_inflight_msgs == 0 {
            return Err(Error::InvalidConfig(
                "max_inflight_msgs must be positive".into(),
            ));
        }
        if self.read_only_option == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return Err(Error::InvalidConfig(
                "lease-based reads need check_quorum".into(),
            ));
        }
        Ok(())
    }
}
