//! `flotilla_chaos::wgl` agrees with `todc-utils`' Wing-Gong-Lowe checker on random small
//! register and counter histories, unknown outcomes included (todc gets their responses at
//! the end of the history), and finds the non-linearizable ones among them.

use flotilla_chaos::wgl::{self, Entry, Linearizable, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use todc_utils::linearizability::history::{Action, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::Specification;

/// Register writes carry a value; reads carry what they read. `Incr(None)`: unknown.
#[derive(Debug, Clone, Copy)]
enum Op {
    Write(u8),
    Read(u8),
    Incr(Option<u8>),
}

struct Spec;

impl Model for Spec {
    type State = u8;
    type Op = Op;
    fn init() -> u8 {
        0
    }
    fn step(s: &u8, op: &Op) -> Option<u8> {
        match op {
            Op::Write(v) => Some(*v),
            Op::Read(v) => (v == s).then_some(*s),
            Op::Incr(None) => Some(s.wrapping_add(1)),
            Op::Incr(Some(n)) => (*n == s.wrapping_add(1)).then_some(s.wrapping_add(1)),
        }
    }
    fn interchangeable(op: &Op) -> bool {
        matches!(op, Op::Incr(None))
    }
}

impl Specification for Spec {
    type State = u8;
    type Operation = Op;
    fn init() -> u8 {
        0
    }
    fn apply(op: &Op, s: &u8) -> (bool, u8) {
        match <Spec as Model>::step(s, op) {
            Some(n) => (true, n),
            None => (false, *s),
        }
    }
}

fn reference(entries: &[Entry<Op>]) -> bool {
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        events.push((e.invoke, 0, i));
        events.push((e.end, 1, i));
    }
    events.sort();
    let actions = events
        .into_iter()
        .map(|(_, k, i)| {
            let op = entries[i].op;
            (
                i,
                if k == 0 {
                    Action::Call(op)
                } else {
                    Action::Response(op)
                },
            )
        })
        .collect();
    WGLChecker::<Spec>::is_linearizable(History::from_actions(actions))
}

fn random_history(rng: &mut ChaCha8Rng, counter: bool) -> Vec<Entry<Op>> {
    let n = rng.gen_range(1..9);
    (0..n)
        .map(|_| {
            let invoke = rng.gen_range(0..40u64);
            let end = if rng.gen_bool(0.15) {
                u64::MAX
            } else {
                invoke + rng.gen_range(0..15)
            };
            let op = match (counter, rng.gen_range(0..2)) {
                (false, 0) => Op::Write(rng.gen_range(1..4)),
                (true, 0) if end == u64::MAX => Op::Incr(None),
                (true, 0) => Op::Incr(Some(rng.gen_range(1..5))),
                (_, _) => Op::Read(rng.gen_range(0..4)),
            };
            // An unknown read is not in a checked history.
            let end = if matches!(op, Op::Read(_)) && end == u64::MAX {
                invoke + 1
            } else {
                end
            };
            Entry { invoke, end, op }
        })
        .collect()
}

#[test]
fn agrees_with_todc_utils_on_random_histories() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (mut yes, mut no) = (0, 0);
    for case in 0..4000 {
        let counter = case % 2 == 1;
        let h = random_history(&mut rng, counter);
        let ours = wgl::check::<Spec>(&h);
        let theirs = reference(&h);
        assert_ne!(ours, Linearizable::Inconclusive);
        assert_eq!(
            ours == Linearizable::Yes,
            theirs,
            "case {case}: {:?}",
            h.iter()
                .map(|e| (e.invoke, e.end, e.op))
                .collect::<Vec<_>>()
        );
        if theirs {
            yes += 1
        } else {
            no += 1
        }
    }
    // Both kinds occur, so the comparison means something.
    assert!(yes > 500 && no > 500, "yes {yes} no {no}");
}

#[test]
fn many_unknown_increments_stay_tractable() {
    // 300 unknown INCRs, each concurrent with everything after it, between answered ones:
    // exponential for a search that tells the unknown ones apart.
    let mut h = Vec::new();
    let mut count = 0u8;
    for i in 0..600u64 {
        if i % 2 == 0 {
            h.push(Entry {
                invoke: i * 10,
                end: u64::MAX,
                op: Op::Incr(None),
            });
        } else {
            count = count.wrapping_add(1);
            h.push(Entry {
                invoke: i * 10,
                end: i * 10 + 5,
                op: Op::Read(count),
            });
        }
    }
    let started = std::time::Instant::now();
    assert_eq!(wgl::check::<Spec>(&h), Linearizable::Yes);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
