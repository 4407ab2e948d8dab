//! The checker on hand-made histories: it must fail the bad ones (a stale read, a counter
//! that counted a write twice, a lost acknowledged write, an invented value, a failed write
//! that became visible) and pass the good ones, unknown outcomes included.

use flotilla_chaos::checker::{check, FINAL_CLIENT};
use flotilla_chaos::history::{OpKind, Outcome, Record};

fn keys() -> Vec<String> {
    vec!["r".into(), "c".into()]
}

struct H(Vec<Record>);

impl H {
    fn op(
        &mut self,
        client: &str,
        key: &str,
        kind: OpKind,
        t: (u64, u64),
        outcome: Outcome,
    ) -> &mut Self {
        let id = self.0.len() as u64;
        self.0.push(Record {
            id,
            client: client.into(),
            key: key.into(),
            kind,
            invoke_us: t.0,
            complete_us: t.1,
            outcome,
        });
        self
    }
    fn set(&mut self, c: &str, v: &str, t: (u64, u64)) -> &mut Self {
        self.op(
            c,
            "r",
            OpKind::Set { value: v.into() },
            t,
            Outcome::ok(None),
        )
    }
    fn set_unknown(&mut self, c: &str, v: &str, t: (u64, u64)) -> &mut Self {
        self.op(
            c,
            "r",
            OpKind::Set { value: v.into() },
            t,
            Outcome::Unknown {
                error: "timeout".into(),
            },
        )
    }
    fn set_failed(&mut self, c: &str, v: &str, t: (u64, u64)) -> &mut Self {
        self.op(
            c,
            "r",
            OpKind::Set { value: v.into() },
            t,
            Outcome::Fail {
                error: "TRYAGAIN not leader".into(),
            },
        )
    }
    fn get(&mut self, c: &str, key: &str, v: Option<&str>, t: (u64, u64)) -> &mut Self {
        self.op(c, key, OpKind::Get, t, Outcome::ok(v.map(str::to_string)))
    }
    fn incr(&mut self, c: &str, n: Option<i64>, t: (u64, u64)) -> &mut Self {
        let outcome = match n {
            Some(n) => Outcome::ok(Some(n.to_string())),
            None => Outcome::Unknown {
                error: "timeout".into(),
            },
        };
        self.op(c, "c", OpKind::Incr, t, outcome)
    }
}

#[test]
fn a_linearizable_history_with_unknown_writes_passes() {
    let mut h = H(Vec::new());
    h.set("a", "a1", (0, 10))
        .get("b", "r", Some("a1"), (12, 20))
        // Unknown: may have happened (read at 40) ...
        .set_unknown("a", "a2", (25, 30))
        .get("b", "r", Some("a2"), (40, 45))
        // ... and another unknown that never shows.
        .set_unknown("b", "b1", (46, 47))
        .set("a", "a3", (50, 60))
        .get("b", "r", Some("a3"), (70, 80))
        .incr("a", Some(1), (0, 5))
        .incr("b", None, (6, 8)) // applied: the next INCR answers 3
        .incr("a", Some(3), (10, 12))
        .incr("b", None, (13, 14)) // never applied
        .get(FINAL_CLIENT, "r", Some("a3"), (100, 101))
        .get(FINAL_CLIENT, "c", Some("3"), (100, 101));
    let v = check(&h.0, &keys());
    assert!(v.ok(), "{}", v.describe());
}

#[test]
fn a_stale_read_is_not_linearizable_and_the_minimal_history_shows_it() {
    let mut h = H(Vec::new());
    h.set("a", "a1", (0, 10))
        .set("a", "a2", (20, 30))
        .get("b", "r", Some("a2"), (35, 40))
        // Stale: a2 was read before this read began, and nothing wrote a1 again.
        .get("c", "r", Some("a1"), (45, 50));
    for i in 0..20u64 {
        // Unrelated noise the minimal history should drop.
        h.get("d", "r", Some("a2"), (36 + i, 37 + i));
    }
    h.get(FINAL_CLIENT, "r", Some("a2"), (100, 101));
    let v = check(&h.0, &keys());
    assert!(!v.ok());
    assert_eq!(v.not_linearizable.len(), 1, "{}", v.describe());
    let f = &v.not_linearizable[0];
    assert_eq!(f.key, "r");
    assert!(f.minimal.len() <= 4, "{}", v.describe());
    assert!(f.minimal.iter().any(|o| o.value == "a1" && o.op == "get"));
}

#[test]
fn a_counter_that_counted_a_retry_twice_is_caught() {
    let mut h = H(Vec::new());
    h.incr("a", Some(1), (0, 10))
        .incr("b", Some(2), (20, 30))
        // One INCR, answered 4: some write was applied twice.
        .incr("a", Some(4), (40, 50))
        .get(FINAL_CLIENT, "c", Some("4"), (100, 101));
    let v = check(&h.0, &keys());
    assert!(!v.ok());
    assert!(
        v.not_linearizable.iter().any(|f| f.key == "c"),
        "{}",
        v.describe()
    );
    // The final count is above what was acknowledged or unknown.
    assert!(!v.invented_values.is_empty(), "{}", v.describe());
}

#[test]
fn a_lost_acknowledged_write_is_caught() {
    let mut h = H(Vec::new());
    h.set("a", "a1", (0, 10))
        .set("a", "a2", (20, 30))
        .get(FINAL_CLIENT, "r", Some("a1"), (100, 101))
        .incr("a", Some(1), (0, 10))
        .incr("a", Some(2), (20, 30))
        .get(FINAL_CLIENT, "c", Some("1"), (100, 101));
    let v = check(&h.0, &keys());
    assert!(!v.ok());
    assert_eq!(v.lost_writes.len(), 2, "{}", v.describe());
    assert!(v.not_linearizable.iter().any(|f| f.key == "r"));
    assert!(v.not_linearizable.iter().any(|f| f.key == "c"));
}

#[test]
fn a_register_reset_to_nil_loses_writes() {
    let mut h = H(Vec::new());
    h.set("a", "a1", (0, 10))
        .get(FINAL_CLIENT, "r", None, (100, 101));
    let v = check(&h.0, &keys());
    assert_eq!(v.lost_writes.len(), 1, "{}", v.describe());
}

#[test]
fn invented_values_and_visible_failed_writes_are_caught() {
    let mut h = H(Vec::new());
    h.set("a", "a1", (0, 10))
        .set_failed("a", "a2", (20, 30))
        .get("b", "r", Some("a2"), (40, 50))
        .get("b", "r", Some("zz"), (60, 70))
        .get(FINAL_CLIENT, "r", Some("a1"), (100, 101));
    let v = check(&h.0, &keys());
    assert_eq!(v.failed_writes_visible.len(), 1, "{}", v.describe());
    assert_eq!(v.invented_values.len(), 1, "{}", v.describe());
    assert!(!v.not_linearizable.is_empty());
}

#[test]
fn a_key_written_but_never_read_at_the_end_is_reported() {
    let mut h = H(Vec::new());
    h.set("a", "a1", (0, 10));
    let v = check(&h.0, &keys());
    assert_eq!(v.final_reads_missing, vec!["r".to_string()]);
    assert!(!v.ok());
}

#[test]
fn range_reads_are_checked_per_key() {
    let mut h = H(Vec::new());
    h.set("a", "a1", (0, 10)).set("a", "a2", (20, 30));
    // A range read after a2 was acknowledged that still sees a1: stale.
    h.op(
        "b",
        "",
        OpKind::Range,
        (40, 50),
        Outcome::Ok {
            value: None,
            pairs: Some(vec![("r".into(), "a1".into())]),
        },
    );
    h.get(FINAL_CLIENT, "r", Some("a2"), (100, 101));
    let v = check(&h.0, &keys());
    assert!(
        v.not_linearizable.iter().any(|f| f.key == "r"),
        "{}",
        v.describe()
    );
}

#[test]
fn a_long_concurrent_history_checks_quickly() {
    // 8 clients, 2000 operations on one register, with unknown writes sprinkled in: the
    // checker must finish (well) within a CI budget.
    let mut h = H(Vec::new());
    let mut last = String::from("nil");
    for i in 0..2000u64 {
        let c = format!("c{}", i % 8);
        let t = (i * 10, i * 10 + 5);
        match i % 4 {
            0 => {
                let v = format!("{c}-{i}");
                if i % 40 == 0 {
                    h.set_unknown(&c, &v, t);
                } else {
                    h.set(&c, &v, t);
                    last = v;
                }
            }
            _ => {
                let read = if last == "nil" {
                    None
                } else {
                    Some(last.as_str())
                };
                h.get(&c, "r", read, t);
            }
        }
    }
    let final_value = last.clone();
    h.get(FINAL_CLIENT, "r", Some(&final_value), (30_000, 30_001));
    let started = std::time::Instant::now();
    let v = check(&h.0, &keys());
    assert!(v.ok(), "{}", v.describe());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
