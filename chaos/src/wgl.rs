//! A Wing-Gong-Lowe linearizability search for one object, with memoization and one
//! reduction that keeps histories with many unknown outcomes tractable.
//!
//! Why not `todc-utils`' `WGLChecker` (which the tests use as a reference): its memo is keyed
//! by the exact set of operations linearized so far, so `k` concurrent operations with unknown
//! outcome (their response at the end of the history, concurrent with everything after them)
//! make up to `2^k` distinct sets; a run with faults has hundreds of those, and a 30-second
//! history did not finish in minutes. Here, operations that are *interchangeable* (same
//! operation, no result to check, response at the end: unknown `INCR`s) are linearized in
//! invocation order only, which loses no linearization (any one using a later-invoked copy
//! can use the earliest instead, as its interval contains the later one's), so only one
//! set per number of them is explored.

use std::collections::HashSet;
use std::hash::Hash;

/// The sequential specification of the object.
pub trait Model {
    /// The object's state.
    type State: Clone + Eq + Hash;
    /// An operation with its result.
    type Op;
    /// The state before any operation.
    fn init() -> Self::State;
    /// Whether `op` (with its result) is valid in `state`, and the state after it.
    fn step(state: &Self::State, op: &Self::Op) -> Option<Self::State>;
    /// Whether `op` is interchangeable with every other op for which this is true (same
    /// effect, no result to check, unknown outcome).
    fn interchangeable(op: &Self::Op) -> bool;
}

/// One operation: `[invoke, end]`, `end` = `u64::MAX` for an unknown outcome.
pub struct Entry<O> {
    /// Invocation time.
    pub invoke: u64,
    /// Completion time (`u64::MAX`: unknown, may take effect any time after `invoke`).
    pub end: u64,
    /// The operation.
    pub op: O,
}

/// The search gave up after this many distinct configurations (a history this hard is
/// reported as inconclusive, never as passed).
pub const CONFIGURATIONS_MAX: usize = 20_000_000;

/// What the search found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linearizable {
    /// A linearization exists.
    Yes,
    /// None exists.
    No,
    /// The search hit [`CONFIGURATIONS_MAX`].
    Inconclusive,
}

/// Searches for a linearization of `entries` (any order; sorted here).
pub fn check<M: Model>(entries: &[Entry<M::Op>]) -> Linearizable {
    let n = entries.len();
    if n == 0 {
        return Linearizable::Yes;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (entries[i].invoke, entries[i].end));
    let e = |k: usize| &entries[order[k]];
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let is_done = |done: &[u64], k: usize| done[k / 64] & (1 << (k % 64)) != 0;
    let mut visited: HashSet<(Vec<u64>, M::State)> = HashSet::new();

    // Candidates: not yet linearized, invoked no later than the earliest end among the
    // ops not yet linearized (nothing unfinished precedes them); of interchangeable ops,
    // only the first not linearized.
    let candidates = |done: &[u64]| -> Vec<usize> {
        let mut min_end = u64::MAX;
        let mut out = Vec::new();
        let mut took_interchangeable = false;
        for k in 0..n {
            if is_done(done, k) {
                continue;
            }
            let en = e(k);
            if en.invoke > min_end {
                break;
            }
            min_end = min_end.min(en.end);
            if M::interchangeable(&en.op) {
                if took_interchangeable {
                    continue;
                }
                took_interchangeable = true;
            }
            out.push(k);
        }
        // An op taken before min_end fell below its invocation is no longer a candidate.
        out.retain(|&k| e(k).invoke <= min_end);
        out
    };

    struct Frame<S> {
        cands: Vec<usize>,
        next: usize,
        applied: Option<(usize, S)>,
    }
    let mut state = M::init();
    let mut count = 0usize;
    let mut stack = vec![Frame {
        cands: candidates(&done),
        next: 0,
        applied: None,
    }];
    loop {
        if count == n {
            return Linearizable::Yes;
        }
        let top = stack.last_mut().expect("the stack is never empty here");
        if top.next >= top.cands.len() {
            stack.pop();
            let Some(parent) = stack.last_mut() else {
                return Linearizable::No;
            };
            let (k, prev) = parent.applied.take().expect("a parent applied an op");
            done[k / 64] &= !(1 << (k % 64));
            state = prev;
            count -= 1;
            continue;
        }
        let k = top.cands[top.next];
        top.next += 1;
        let Some(next) = M::step(&state, &e(k).op) else {
            continue;
        };
        done[k / 64] |= 1 << (k % 64);
        if !visited.insert((done.clone(), next.clone())) {
            done[k / 64] &= !(1 << (k % 64));
            continue;
        }
        if visited.len() > CONFIGURATIONS_MAX {
            return Linearizable::Inconclusive;
        }
        top.applied = Some((k, std::mem::replace(&mut state, next)));
        count += 1;
        let cands = candidates(&done);
        stack.push(Frame {
            cands,
            next: 0,
            applied: None,
        });
    }
}
