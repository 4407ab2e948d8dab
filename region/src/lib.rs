//! Flotilla's regions: the raft core (pure, no I/O) in [`raft`] and, later, the region
//! actor and the node that hosts many regions.
#![deny(missing_docs)]

pub mod node;
pub mod raft;
pub mod sim;

pub use raft::{Config, MemStorage, RawNode, Ready, Role, Storage};
