//! Flotilla's benchmark suite: drives real clusters and reports throughput and latency
//! (see bench/README.md once the node exists; the raft-core benchmark lives in
//! `region/benches/raft_core.rs`).
#![deny(missing_docs)]
