//! Flotilla's storage engine: one batched write-ahead log shared by all regions of a node,
//! and the key-value state machine on RocksDB (see docs/architecture.md).
#![deny(missing_docs)]
