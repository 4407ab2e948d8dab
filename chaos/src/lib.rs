//! Flotilla's fault-tolerance suite, after Jepsen: real `flotilla server` processes on this
//! machine, concurrent clients recording every operation, faults from a seeded schedule,
//! and a checker over the recorded history.
//!
//! - [`nodes`]: the server processes (SIGKILL and restart, SIGSTOP/SIGCONT, `/status`,
//!   leader transfers, region splits and merges);
//! - [`ports`]: ports for the server processes, outside the ephemeral range;
//! - [`proxy`]: a fault-injecting TCP proxy on every raft link (cuts in one or both
//!   directions, isolation, delay), which needs no privileges;
//! - [`faults`]: the seeded schedule of fault episodes, with leader transfers, splits and
//!   merges as churn during them;
//! - [`regions`]: the region layout from `/status`: what a split or merge picks, and the
//!   check after healing that every node's regions tile the key space and agree;
//! - [`workload`]: RESP and `flotilla-client` clients over a few hot keys;
//! - [`history`]: the recorded operations (ok, failed for certain, unknown);
//! - [`checker`]: per-key linearizability (registers and counters, unknown outcomes
//!   included), lost acknowledged writes, invented values;
//! - [`wgl`]: the linearizability search itself;
//! - [`report`] and [`run`]: one run end to end, and its report directory.
//!
//! ```no_run
//! use flotilla_chaos::run::{run, RunConfig};
//!
//! let cfg = RunConfig::new("target/debug/flotilla".into(), "target/chaos".into(), 1, 30);
//! let outcome = run(&cfg).expect("the harness ran");
//! assert!(outcome.passed(), "{}", outcome.verdict.describe());
//! ```
#![deny(missing_docs)]

pub mod checker;
pub mod faults;
pub mod history;
pub mod nodes;
pub mod ports;
pub mod proxy;
pub mod regions;
pub mod report;
pub mod run;
pub mod wgl;
pub mod workload;
