//! What a leader knows of one follower's log, and how it replicates to it.
//!
//! States: `Probe` — one append per heartbeat interval until the follower's match is
//! found; `Replicate` — pipelined appends within the in-flight window; `Snapshot` — a
//! snapshot is on its way, appends wait.

use super::inflights::Inflights;

/// How the leader is currently sending to a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressState {
    /// Finding where the logs match; one append at a time.
    #[default]
    Probe,
    /// Streaming appends optimistically.
    Replicate,
    /// Waiting for a snapshot to be installed.
    Snapshot,
}

/// The leader's view of one follower.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The highest index known to match the leader's log.
    pub matched: u64,
    /// The next index to send.
    pub next_idx: u64,
    /// How to send.
    pub state: ProgressState,
    /// In snapshot state: the snapshot's index.
    pub pending_snapshot: u64,
    /// In probe state: whether an append was sent since the last heartbeat.
    pub probe_sent: bool,
    /// Whether the follower was heard from since the last quorum check.
    pub recent_active: bool,
    /// The latest leader clock (in ticks) echoed by the follower: its lease acknowledgement.
    pub lease_ack_tick: u64,
    /// Appends in flight.
    pub ins: Inflights,
    /// The highest commit index this leader told the follower it may commit (in an
    /// append, or a `Commit`): a `Commit` is sent only past it. Reset with the state.
    pub commit_sent: u64,
}

impl Progress {
    /// A follower expected to need entries from `next_idx`.
    pub fn new(next_idx: u64, ins_cap: usize) -> Self {
        Progress {
            matched: 0,
            next_idx,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            probe_sent: false,
            recent_active: false,
            lease_ack_tick: 0,
            ins: Inflights::new(ins_cap),
            commit_sent: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.commit_sent = 0;
        self.state = state;
        self.ins.reset();
    }

    /// Back to probing after the match point.
    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next_idx = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next_idx = self.matched + 1;
        }
    }

    /// Start streaming after the match point.
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_idx = self.matched + 1;
    }

    /// A snapshot at `snapshot_idx` is being sent.
    pub fn become_snapshot(&mut self, snapshot_idx: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_idx;
    }

    /// The follower acknowledged `n`; returns whether that was news.
    pub fn maybe_update(&mut self, n: u64) -> bool {
        let updated = n > self.matched;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next_idx = self.next_idx.max(n + 1);
        updated
    }

    /// Entries up to `last` were sent (replicate state moves `next_idx` on at once).
    pub fn sent_entries(&mut self, last: u64, count: usize) {
        match self.state {
            ProgressState::Replicate => {
                if count > 0 {
                    self.next_idx = last + 1;
                    self.ins.add(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }

    /// The follower rejected an append at `rejected`, hinting `match_hint`; returns whether
    /// the rejection was news (stale rejections are ignored).
    pub fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            // A rejection of something already matched is stale.
            if rejected <= self.matched {
                return false;
            }
            self.next_idx = self.matched + 1;
            return true;
        }
        // Probe: only the rejection of the append just sent counts.
        if self.next_idx == 0 || self.next_idx - 1 != rejected {
            return false;
        }
        self.next_idx = (match_hint + 1).min(rejected).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// Whether the leader should hold off sending appends.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.ins.full(),
            ProgressState::Snapshot => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_pauses_after_one_send_and_resumes_on_ack() {
        let mut p = Progress::new(5, 4);
        assert!(!p.is_paused());
        p.sent_entries(7, 3);
        assert!(p.is_paused());
        assert!(p.maybe_update(7));
        assert!(!p.is_paused());
        assert_eq!(p.next_idx, 8);
    }

    #[test]
    fn stale_rejection_is_ignored() {
        let mut p = Progress::new(10, 4);
        p.matched = 5;
        p.become_replicate();
        assert!(!p.maybe_decr_to(4, 4));
        assert!(p.maybe_decr_to(8, 6));
        assert_eq!(p.next_idx, 6);
        let mut q = Progress::new(10, 4);
        assert!(
            !q.maybe_decr_to(5, 3),
            "probe only believes a rejection of next-1"
        );
        assert!(q.maybe_decr_to(9, 3));
        assert_eq!(q.next_idx, 4);
    }
}
