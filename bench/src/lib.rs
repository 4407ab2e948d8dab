//! Flotilla's benchmark suite (`flotilla-bench`): throughput and latency of a real cluster,
//! with etcd and Redis measured side by side on the same machine, by the same driver, with
//! the same keys and values.
//!
//! - [`run`]: `flotilla-bench run` — start the systems, sweep workloads × regions × value
//!   sizes × connections × pipeline depth × offered load, write a JSON file per run.
//! - [`compare`]: `flotilla-bench compare` — builds (or settings) of Flotilla on one sweep,
//!   alternated run by run, with medians and ratios.
//! - [`report`]: `flotilla-bench report` — the JSON files as markdown tables and SVG plots.
//! - [`driver`]: the connections that send operations and time them, closed or open loop.
//! - [`latency`]: HdrHistogram recording without coordinated omission.
//! - [`keys`], [`workload`]: which keys and operations a stream sends.
//! - [`machine`]: the machine and its limits (fdatasync/s, loopback bandwidth, cores).
//! - [`system`]: starting and stopping Flotilla clusters, etcd and Redis.
//! - [`results`]: the JSON schema.
//!
//! The raft-core benchmark lives in `region/benches/raft_core.rs`, the disk and log
//! benchmark in `engine-bench`, the transport's in `transport/benches/throughput.rs`.
#![deny(missing_docs)]

pub mod compare;
pub mod driver;
pub mod keys;
pub mod latency;
pub mod machine;
pub mod report;
pub mod results;
pub mod run;
pub mod system;
pub mod workload;
