//! The recorded history: every client operation with its invocation and completion time and
//! what came of it.
//!
//! An outcome is one of three: `Ok` (the server answered with a result), `Fail` (the operation
//! certainly had no effect: a read that errored, or a write refused with "not leader" or as
//! invalid), or `Unknown` (a timeout, a broken connection, any other error of a write: it may
//! or may not have been applied). Classifying an ambiguous error as `Fail` would make the
//! checker report bugs that are not there, so anything not certain is `Unknown`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum OpKind {
    /// `SET key value`; values are unique across the run.
    Set {
        /// The value written.
        value: String,
    },
    /// `GET key`.
    Get,
    /// `INCR key` (or `INCRBY key 1` from the Rust client).
    Incr,
    /// `RANGE "" ""`: a read of every hot key at once (each key's part is checked as a read
    /// of that key at the same interval).
    Range,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Outcome {
    /// Answered. `value` is the value read or the counter after `INCR`; `pairs` the pairs of a
    /// range read.
    Ok {
        /// `GET`: the value (`None` for nil); `INCR`: the new count in decimal.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        value: Option<String>,
        /// `RANGE`: every pair read.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pairs: Option<Vec<(String, String)>>,
    },
    /// Certainly not applied.
    Fail {
        /// The error.
        error: String,
    },
    /// May or may not have been applied.
    Unknown {
        /// The error.
        error: String,
    },
}

impl Outcome {
    /// A plain `Ok` with a single value (or none).
    pub fn ok(value: Option<String>) -> Outcome {
        Outcome::Ok { value, pairs: None }
    }

    /// Short name: `ok`, `fail` or `unknown`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Fail { .. } => "fail",
            Outcome::Unknown { .. } => "unknown",
        }
    }
}

/// One operation of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the history (in order of completion).
    pub id: u64,
    /// Which client: `resp-3`, `rust-1`, `final`.
    pub client: String,
    /// The key (`RANGE` reads: empty).
    pub key: String,
    /// The operation.
    #[serde(flatten)]
    pub kind: OpKind,
    /// Microseconds since the start of the run when the request was sent.
    pub invoke_us: u64,
    /// Microseconds since the start of the run when the answer (or the failure) came.
    pub complete_us: u64,
    /// What came of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Collects records from many clients at once; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    records: Arc<Mutex<Vec<Record>>>,
}

impl Recorder {
    /// A recorder whose clock starts at `start`.
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            records: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Microseconds since the start of the run.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records one finished operation invoked at `invoke_us`; completion is now.
    pub fn record(&self, client: &str, key: &str, kind: OpKind, invoke_us: u64, outcome: Outcome) {
        let complete_us = self.now_us();
        let mut records = self.records.lock();
        let id = records.len() as u64;
        records.push(Record {
            id,
            client: client.to_string(),
            key: key.to_string(),
            kind,
            invoke_us,
            complete_us,
            outcome,
        });
    }

    /// Every record so far.
    pub fn snapshot(&self) -> Vec<Record> {
        self.records.lock().clone()
    }
}

/// Writes `records` as one JSON object per line.
pub fn write_jsonl(path: &Path, records: &[Record]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in records {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_jsonl`] (to re-check a run's history).
pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}
