//! Types shared by every Flotilla crate: the raft protocol's data (entries, hard state,
//! messages, snapshots, configuration changes) and [`codec`], the only module allowed to
//! encode or decode bytes for the disk or the network.
#![deny(missing_docs)]

pub mod codec;
mod envelope;
pub mod epoch_not_match;
pub mod session_pool;
mod types;

pub use envelope::RaftEnvelope;
pub use types::*;
