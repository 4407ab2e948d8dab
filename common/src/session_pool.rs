//! Client sessions for exactly-once writes with many writes in flight.
//!
//! A region's state machine remembers, per client id, only the *last* sequence it applied
//! (and refuses an older one as stale): that is enough for one client with one write in
//! flight, which retries that write with the same (id, sequence) until it has an answer.
//! A process with many concurrent writers needs one such session per write in flight:
//! with a single id, write 8 could apply before write 7, and 7 (or its retry) would then be
//! refused as stale.
//!
//! [`SessionPool`] hands out [`Session`]s: a client id and the next sequence of that id.
//! A session is held for the whole life of one write, retries included, and returns to the
//! pool when dropped; the next write to take the same id gets a higher sequence. The pool
//! grows to the largest number of writes ever in flight at once, and no further, so the
//! state machines keep a bounded number of sessions per client process.

use parking_lot::Mutex;
use std::sync::Arc;

/// The ids and last sequences of one client process's sessions.
#[derive(Debug)]
pub struct SessionPool {
    base: u64,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Idle sessions: (client id, last sequence handed out).
    idle: Vec<(u64, u64)>,
    /// Sessions created so far (the next id is `base + created`).
    created: u64,
}

impl SessionPool {
    /// A pool whose client ids are `base`, `base + 1`, … . `base` must be unique to this
    /// client process among every process that writes to the cluster (mix in the node or
    /// host id and the start time, or a random number).
    pub fn new(base: u64) -> Arc<SessionPool> {
        Arc::new(SessionPool {
            base,
            state: Mutex::new(PoolState::default()),
        })
    }

    /// A session for one write: an idle id with its next sequence, or a new id.
    pub fn acquire(self: &Arc<Self>) -> Session {
        let mut s = self.state.lock();
        let (client_id, seq) = match s.idle.pop() {
            Some((id, last)) => (id, last + 1),
            None => {
                let id = self.base.wrapping_add(s.created);
                s.created += 1;
                (id, 1)
            }
        };
        Session {
            client_id,
            seq,
            pool: self.clone(),
        }
    }

    /// Client ids created so far: the most writes that were ever in flight at once.
    pub fn sessions_created(&self) -> u64 {
        self.state.lock().created
    }
}

/// One write's (client id, sequence). Retries of the write reuse it; dropping it returns
/// the id to its pool.
#[derive(Debug)]
pub struct Session {
    client_id: u64,
    seq: u64,
    pool: Arc<SessionPool>,
}

impl Session {
    /// The client id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The sequence of this write within its client id.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// `(client id, sequence)`, as commands carry them.
    pub fn pair(&self) -> (u64, u64) {
        (self.client_id, self.seq)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.pool.state.lock().idle.push((self.client_id, self.seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writes_get_distinct_ids() {
        let pool = SessionPool::new(1000);
        let a = pool.acquire();
        let b = pool.acquire();
        assert_ne!(a.client_id(), b.client_id());
        assert_eq!((a.seq(), b.seq()), (1, 1));
        assert_eq!(pool.sessions_created(), 2);
    }

    #[test]
    fn a_returned_id_comes_back_with_a_higher_sequence() {
        let pool = SessionPool::new(7);
        let first = pool.acquire().pair();
        let again = pool.acquire().pair();
        assert_eq!(first.0, again.0);
        assert!(again.1 > first.1);
        assert_eq!(pool.sessions_created(), 1);
    }

    #[test]
    fn sequences_of_one_id_only_grow_across_many_writes() {
        let pool = SessionPool::new(0);
        let mut last = std::collections::HashMap::new();
        for round in 0..50 {
            let held: Vec<Session> = (0..(round % 5 + 1)).map(|_| pool.acquire()).collect();
            for s in &held {
                let prev = last.insert(s.client_id(), s.seq()).unwrap_or(0);
                assert!(
                    s.seq() > prev,
                    "id {} went from {prev} to {}",
                    s.client_id(),
                    s.seq()
                );
            }
        }
        // Never more ids than writes held at once.
        assert_eq!(pool.sessions_created(), 5);
    }
}
