//! Checks a recorded history: per-key linearizability, no acknowledged write lost, no value
//! that was never written.
//!
//! **Linearizability** is checked key by key with a Wing-Gong-Lowe search ([`crate::wgl`];
//! why not `todc-utils`' checker is said there, and the tests check the two agree). A key with `INCR`s is a counter (state: the count; a missing key reads
//! as 0), any other key a register (state: which `SET` wrote the value; values are unique,
//! so a value names its write). Checking keys separately is exact for single-key operations
//! (linearizability is local, Herlihy and Wing 1990); a `RANGE` read is checked as one read
//! per key at the same interval, which is necessary for it to be linearizable but does not
//! show that its keys were read at one instant (regions are read one by one anyway).
//!
//! **Unknown outcomes**: a write whose outcome is unknown gets its response at the end of the
//! history (it may take effect at any point after its invocation, or never: taking effect
//! after every other operation is the same as never). An unknown `INCR` carries no result. A
//! write that certainly failed is left out; a read that failed or is unknown is left out
//! (it constrains nothing).
//!
//! **Minimal failing sub-history**: only sound reductions are made, so the sub-history shown
//! is a proof on its own: dropping reads (fewer constraints), dropping a register write whose
//! value no kept read returned (no kept read could have seen it as the last write), and
//! dropping every operation invoked after all kept reads and `INCR` results completed (they
//! are ordered after everything that constrains the kept ones).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::wgl::{self, Linearizable, Model};
use serde::Serialize;

use crate::history::{OpKind, Outcome, Record};

/// The client name of the reads made after the faults healed; the lost-write check looks
/// at these.
pub const FINAL_CLIENT: &str = "final";

/// Time the search for a smaller failing sub-history may take per key.
const MINIMIZE_BUDGET: Duration = Duration::from_secs(20);

/// A register value: 0 is nil, else the index of the `SET` that wrote it (1-based);
/// [`INVENTED`] for a value no `SET` wrote.
type ValueId = u64;
const NIL: ValueId = 0;
const INVENTED: ValueId = u64::MAX;

/// One operation on a register.
#[derive(Debug, Clone, Copy)]
enum RegisterOp {
    Write(ValueId),
    Read(ValueId),
}

struct RegisterSpec;

impl Model for RegisterSpec {
    type State = ValueId;
    type Op = RegisterOp;

    fn init() -> ValueId {
        NIL
    }

    fn step(state: &ValueId, op: &RegisterOp) -> Option<ValueId> {
        match op {
            RegisterOp::Write(v) => Some(*v),
            RegisterOp::Read(v) => (v == state).then_some(*state),
        }
    }

    fn interchangeable(_: &RegisterOp) -> bool {
        false // values are unique
    }
}

/// One operation on a counter.
#[derive(Debug, Clone, Copy)]
enum CounterOp {
    /// `INCR`, with the count it answered (`None`: outcome unknown).
    Incr(Option<i64>),
    Read(i64),
}

struct CounterSpec;

impl Model for CounterSpec {
    type State = i64;
    type Op = CounterOp;

    fn init() -> i64 {
        0
    }

    fn step(state: &i64, op: &CounterOp) -> Option<i64> {
        match op {
            CounterOp::Incr(None) => Some(state + 1),
            CounterOp::Incr(Some(n)) => (*n == state + 1).then_some(state + 1),
            CounterOp::Read(v) => (v == state).then_some(*state),
        }
    }

    fn interchangeable(op: &CounterOp) -> bool {
        matches!(op, CounterOp::Incr(None))
    }
}

/// One operation of one key's history, as checked.
#[derive(Debug, Clone, Serialize)]
pub struct KeyOp {
    /// The record it comes from.
    pub record: u64,
    /// Its client.
    pub client: String,
    /// `set`, `get`, `incr`, `range`.
    pub op: String,
    /// The value written, read, or counted (`nil` for none; `?` for an unknown result).
    pub value: String,
    /// Invocation, µs.
    pub invoke_us: u64,
    /// Completion, µs; `None` for an unknown outcome (it may take effect at any later time).
    pub complete_us: Option<u64>,
    /// Whether its result constrains the history (reads and answered `INCR`s).
    #[serde(skip)]
    constrained: bool,
}

impl KeyOp {
    fn end(&self) -> u64 {
        self.complete_us.unwrap_or(u64::MAX)
    }
}

/// What kind of object a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KeyKind {
    /// `SET`/`GET`.
    Register,
    /// `INCR`/`GET`.
    Counter,
}

/// A failing key: its kind, the smallest failing sub-history found, and the full count.
#[derive(Debug, Clone, Serialize)]
pub struct KeyFailure {
    /// The key.
    pub key: String,
    /// Register or counter.
    pub kind: KeyKind,
    /// Operations of the key in the checked history.
    pub ops_total: usize,
    /// A sub-history that is not linearizable on its own (sound: see the module doc).
    pub minimal: Vec<KeyOp>,
}

/// The checker's verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Keys checked, with their operation counts.
    pub keys: BTreeMap<String, usize>,
    /// Keys whose history is not linearizable.
    pub not_linearizable: Vec<KeyFailure>,
    /// Acknowledged writes the final reads do not reflect.
    pub lost_writes: Vec<String>,
    /// Values read that no write wrote.
    pub invented_values: Vec<String>,
    /// Values read whose write certainly failed.
    pub failed_writes_visible: Vec<String>,
    /// Keys without a successful final read (the lost-write check could not run for them).
    pub final_reads_missing: Vec<String>,
    /// Keys whose search was too large to finish (never counted as passed).
    pub inconclusive: Vec<String>,
}

impl Verdict {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.not_linearizable.is_empty()
            && self.lost_writes.is_empty()
            && self.invented_values.is_empty()
            && self.failed_writes_visible.is_empty()
            && self.final_reads_missing.is_empty()
            && self.inconclusive.is_empty()
    }

    /// A human-readable account of every failure (empty when [`Verdict::ok`]).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for f in &self.not_linearizable {
            let _ = writeln!(
                s,
                "key {:?} ({:?}): not linearizable; minimal sub-history ({} of {} ops):",
                f.key,
                f.kind,
                f.minimal.len(),
                f.ops_total
            );
            s.push_str(&render(&f.minimal));
        }
        for (what, list) in [
            ("lost write", &self.lost_writes),
            ("invented value", &self.invented_values),
            ("failed write visible", &self.failed_writes_visible),
            ("no final read", &self.final_reads_missing),
            (
                "checker inconclusive (search too large)",
                &self.inconclusive,
            ),
        ] {
            for item in list {
                let _ = writeln!(s, "{what}: {item}");
            }
        }
        s
    }
}

/// Renders a key's operations, one per line, in invocation order.
pub fn render(ops: &[KeyOp]) -> String {
    let mut sorted: Vec<&KeyOp> = ops.iter().collect();
    sorted.sort_by_key(|o| (o.invoke_us, o.end()));
    let mut s = String::new();
    for o in sorted {
        let end = o.complete_us.map_or_else(
            || "unknown".to_string(),
            |c| format!("{:.6}s", c as f64 / 1e6),
        );
        let _ = writeln!(
            s,
            "  #{:<6} {:<8} {:<5} {:<24} [{:.6}s, {end}]",
            o.record,
            o.client,
            o.op,
            o.value,
            o.invoke_us as f64 / 1e6
        );
    }
    s
}

/// Checks `records`. `hot_keys` are the keys a `RANGE` read covers (a key missing from its
/// answer was read as nil).
pub fn check(records: &[Record], hot_keys: &[String]) -> Verdict {
    let mut verdict = Verdict::default();
    let counters: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.kind == OpKind::Incr)
        .map(|r| r.key.as_str())
        .collect();
    // Every value a SET tried to write, with whether that SET certainly failed.
    let mut written: HashMap<(&str, &str), (ValueId, bool)> = HashMap::new();
    for r in records {
        if let OpKind::Set { value } = &r.kind {
            let id = written.len() as u64 + 1;
            let failed = matches!(r.outcome, Outcome::Fail { .. });
            written.insert((r.key.as_str(), value.as_str()), (id, failed));
        }
    }
    let mut keys: BTreeSet<&str> = hot_keys.iter().map(String::as_str).collect();
    keys.extend(
        records
            .iter()
            .filter(|r| !r.key.is_empty())
            .map(|r| r.key.as_str()),
    );

    for key in keys {
        let kind = if counters.contains(key) {
            KeyKind::Counter
        } else {
            KeyKind::Register
        };
        let ops = key_ops(records, key);
        verdict.keys.insert(key.to_string(), ops.len());
        // Values nobody wrote, and values of writes that failed.
        for o in ops.iter().filter(|o| o.op == "get" || o.op == "range") {
            if o.value == "nil" {
                continue;
            }
            let what = format!("key {key:?}: {} #{} read {:?}", o.client, o.record, o.value);
            match kind {
                KeyKind::Register => match written.get(&(key, o.value.as_str())) {
                    None => verdict.invented_values.push(what),
                    Some((_, true)) => verdict.failed_writes_visible.push(what),
                    Some(_) => {}
                },
                KeyKind::Counter => {
                    if o.value.parse::<i64>().is_err() {
                        verdict.invented_values.push(what);
                    }
                }
            }
        }
        let result = linearizable(kind, &ops, &written, key);
        if result == Linearizable::Inconclusive {
            verdict.inconclusive.push(key.to_string());
        }
        if result == Linearizable::No {
            let minimal = minimize(kind, &ops, &written, key);
            verdict.not_linearizable.push(KeyFailure {
                key: key.to_string(),
                kind,
                ops_total: ops.len(),
                minimal,
            });
        }
        lost_writes(kind, key, records, &ops, &mut verdict);
    }
    verdict
}

/// The operations of `key` that the checker uses (see the module doc for what is left out).
fn key_ops(records: &[Record], key: &str) -> Vec<KeyOp> {
    let mut ops = Vec::new();
    for r in records {
        let op = |op: &str, value: String, complete: Option<u64>, constrained: bool| KeyOp {
            record: r.id,
            client: r.client.clone(),
            op: op.to_string(),
            value,
            invoke_us: r.invoke_us,
            complete_us: complete,
            constrained,
        };
        match (&r.kind, &r.outcome) {
            (OpKind::Range, Outcome::Ok { pairs, .. }) => {
                let found = pairs
                    .as_ref()
                    .and_then(|p| p.iter().find(|(k, _)| k == key))
                    .map_or_else(|| "nil".to_string(), |(_, v)| v.clone());
                ops.push(op("range", found, Some(r.complete_us), true));
            }
            _ if r.key != key => {}
            (OpKind::Get, Outcome::Ok { value, .. }) => ops.push(op(
                "get",
                value.clone().unwrap_or_else(|| "nil".into()),
                Some(r.complete_us),
                true,
            )),
            (OpKind::Set { value }, Outcome::Ok { .. }) => {
                ops.push(op("set", value.clone(), Some(r.complete_us), false))
            }
            (OpKind::Set { value }, Outcome::Unknown { .. }) => {
                ops.push(op("set", value.clone(), None, false))
            }
            (OpKind::Incr, Outcome::Ok { value, .. }) => ops.push(op(
                "incr",
                value.clone().unwrap_or_else(|| "nil".into()),
                Some(r.complete_us),
                true,
            )),
            (OpKind::Incr, Outcome::Unknown { .. }) => {
                ops.push(op("incr", "?".into(), None, false))
            }
            // Failed writes had no effect; reads that failed constrain nothing.
            _ => {}
        }
    }
    ops
}

fn linearizable(
    kind: KeyKind,
    ops: &[KeyOp],
    written: &HashMap<(&str, &str), (ValueId, bool)>,
    key: &str,
) -> Linearizable {
    match kind {
        KeyKind::Register => {
            let value_id = |v: &str| -> ValueId {
                if v == "nil" {
                    NIL
                } else {
                    written.get(&(key, v)).map_or(INVENTED, |(id, _)| *id)
                }
            };
            let read: BTreeSet<&str> = ops
                .iter()
                .filter(|o| o.op != "set")
                .map(|o| o.value.as_str())
                .collect();
            let entries: Vec<wgl::Entry<RegisterOp>> = ops
                .iter()
                // An unknown write nobody read may as well take effect after everything:
                // leaving it out changes nothing and keeps the search small.
                .filter(|o| {
                    !(o.op == "set" && o.complete_us.is_none() && !read.contains(o.value.as_str()))
                })
                .map(|o| wgl::Entry {
                    invoke: o.invoke_us,
                    end: o.end(),
                    op: if o.op == "set" {
                        RegisterOp::Write(value_id(&o.value))
                    } else {
                        RegisterOp::Read(value_id(&o.value))
                    },
                })
                .collect();
            wgl::check::<RegisterSpec>(&entries)
        }
        KeyKind::Counter => {
            let entries: Vec<wgl::Entry<CounterOp>> = ops
                .iter()
                .map(|o| wgl::Entry {
                    invoke: o.invoke_us,
                    end: o.end(),
                    op: match (o.op.as_str(), o.value.as_str()) {
                        ("incr", "?") => CounterOp::Incr(None),
                        ("incr", v) => CounterOp::Incr(Some(v.parse().unwrap_or(i64::MIN))),
                        (_, "nil") => CounterOp::Read(0),
                        (_, v) => CounterOp::Read(v.parse().unwrap_or(i64::MIN)),
                    },
                })
                .collect();
            wgl::check::<CounterSpec>(&entries)
        }
    }
}

/// The smallest failing sub-history found within [`MINIMIZE_BUDGET`], by sound reductions
/// only (module doc).
fn minimize(
    kind: KeyKind,
    ops: &[KeyOp],
    written: &HashMap<(&str, &str), (ValueId, bool)>,
    key: &str,
) -> Vec<KeyOp> {
    let started = Instant::now();
    let fails = |s: &[KeyOp]| linearizable(kind, s, written, key) == Linearizable::No;
    let mut sorted = ops.to_vec();
    sorted.sort_by_key(|o| o.invoke_us);

    // 1. The shortest prefix (by invocation) that fails, among cuts where every kept
    //    constrained op completed before the first dropped op was invoked.
    let valid_cut = |n: usize| -> bool {
        n == sorted.len()
            || sorted[..n]
                .iter()
                .filter(|o| o.constrained)
                .all(|o| o.end() < sorted[n].invoke_us)
    };
    let cuts: Vec<usize> = (1..=sorted.len()).filter(|&n| valid_cut(n)).collect();
    let (mut lo, mut hi) = (0usize, cuts.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(&sorted[..cuts[mid]]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut current: Vec<KeyOp> = sorted[..cuts[lo]].to_vec();

    // 2. Drop reads one by one, and register writes whose value no kept read returned.
    let mut i = current.len();
    while i > 0 && started.elapsed() < MINIMIZE_BUDGET {
        i -= 1;
        let o = &current[i];
        let droppable = match (kind, o.op.as_str()) {
            (_, "get") | (_, "range") => true,
            (KeyKind::Register, "set") => {
                !current.iter().any(|r| r.op != "set" && r.value == o.value)
            }
            _ => false,
        };
        if !droppable {
            continue;
        }
        let mut candidate = current.clone();
        candidate.remove(i);
        if fails(&candidate) {
            current = candidate;
        }
    }
    // Register writes left unread after dropping reads.
    if kind == KeyKind::Register {
        let unread: Vec<usize> = (0..current.len())
            .filter(|&i| {
                current[i].op == "set"
                    && !current
                        .iter()
                        .any(|r| r.op != "set" && r.value == current[i].value)
            })
            .collect();
        let mut candidate = current.clone();
        for &i in unread.iter().rev() {
            candidate.remove(i);
        }
        if fails(&candidate) {
            current = candidate;
        }
    }
    current
}

/// The final reads (client [`FINAL_CLIENT`]) must reflect every acknowledged write.
fn lost_writes(kind: KeyKind, key: &str, records: &[Record], ops: &[KeyOp], v: &mut Verdict) {
    let finals: Vec<&KeyOp> = ops
        .iter()
        .filter(|o| o.client == FINAL_CLIENT && (o.op == "get" || o.op == "range"))
        .collect();
    let has_writes = ops.iter().any(|o| o.op == "set" || o.op == "incr");
    let tried_final = records
        .iter()
        .any(|r| r.client == FINAL_CLIENT && r.key == key);
    if finals.is_empty() {
        if has_writes || tried_final {
            v.final_reads_missing.push(key.to_string());
        }
        return;
    }
    for f in finals {
        match kind {
            KeyKind::Counter => {
                let acked = ops
                    .iter()
                    .filter(|o| o.op == "incr" && o.value != "?")
                    .count() as i64;
                let unknown = ops
                    .iter()
                    .filter(|o| o.op == "incr" && o.value == "?")
                    .count() as i64;
                let got: i64 = if f.value == "nil" {
                    0
                } else {
                    f.value.parse().unwrap_or(i64::MIN)
                };
                if got < acked {
                    v.lost_writes.push(format!(
                        "counter {key:?}: final read #{} = {got}, but {acked} INCRs were acknowledged",
                        f.record
                    ));
                }
                if got > acked + unknown {
                    v.invented_values.push(format!(
                        "counter {key:?}: final read #{} = {got}, above {acked} acknowledged + {unknown} unknown INCRs",
                        f.record
                    ));
                }
            }
            KeyKind::Register => {
                let source = ops.iter().find(|o| o.op == "set" && o.value == f.value);
                let acked_writes = ops
                    .iter()
                    .filter(|o| o.op == "set" && o.complete_us.is_some());
                for w in acked_writes {
                    // `w` was acknowledged and invoked after the write of the final value
                    // completed, so it must come later: the final value cannot be older.
                    let superseded = match source {
                        None => true, // nil (or invented, reported elsewhere)
                        Some(s) => s.complete_us.is_some_and(|c| c < w.invoke_us),
                    };
                    if superseded && w.end() < f.invoke_us {
                        v.lost_writes.push(format!(
                            "register {key:?}: final read #{} = {:?}, but write #{} of {:?} ({}) was acknowledged after it",
                            f.record, f.value, w.record, w.value, w.client
                        ));
                        break;
                    }
                }
            }
        }
    }
}
