//! Flotilla's transport: one TCP connection per pair of nodes, carrying batched raft
//! messages of all regions in checksummed frames.
#![deny(missing_docs)]
