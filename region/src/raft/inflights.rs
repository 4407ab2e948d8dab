//! The bounded window of append messages in flight to one follower.
//!
//! In replicate state the leader sends appends without waiting for each answer
//! (pipelining); this window caps how many, so a slow or dead follower costs bounded
//! memory and a bounded resend after it recovers.

use std::collections::VecDeque;

/// Last indexes of the appends in flight, oldest first.
#[derive(Debug, Clone)]
pub struct Inflights {
    window: VecDeque<u64>,
    cap: usize,
}

impl Inflights {
    /// An empty window of `cap` messages.
    pub fn new(cap: usize) -> Self {
        Inflights {
            window: VecDeque::with_capacity(cap.min(64)),
            cap,
        }
    }

    /// Whether no more appends may be sent.
    pub fn full(&self) -> bool {
        self.window.len() >= self.cap
    }

    /// Appends in flight.
    pub fn count(&self) -> usize {
        self.window.len()
    }

    /// Records an append whose last entry is `last`. Indexes must grow.
    pub fn add(&mut self, last: u64) {
        debug_assert!(!self.full(), "inflights window overflow");
        debug_assert!(self.window.back().is_none_or(|&b| b <= last));
        self.window.push_back(last);
    }

    /// The follower acknowledged everything up to `to`: frees those appends.
    pub fn free_to(&mut self, to: u64) {
        while self.window.front().is_some_and(|&f| f <= to) {
            self.window.pop_front();
        }
    }

    /// Frees the oldest append (a heartbeat answer shows the follower is alive).
    pub fn free_first_one(&mut self) {
        self.window.pop_front();
    }

    /// Forgets everything in flight.
    pub fn reset(&mut self) {
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_fills_and_frees_in_order() {
        let mut w = Inflights::new(3);
        for i in [5, 7, 9] {
            assert!(!w.full());
            w.add(i);
        }
        assert!(w.full());
        w.free_to(6);
        assert_eq!(w.count(), 2);
        w.free_to(100);
        assert_eq!(w.count(), 0);
        w.add(10);
        w.free_first_one();
        assert_eq!(w.count(), 0);
    }
}
