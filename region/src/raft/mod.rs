//! The raft core: a pure, deterministic state machine with no I/O.
//!
//! It is driven only by [`RawNode::tick`], [`RawNode::step`] and the proposal methods, and
//! answers with a [`Ready`]: entries and hard state to persist, messages to send, a
//! snapshot to install, committed entries to apply and confirmed reads. Older entries are
//! read through [`Storage`]; [`MemStorage`] serves tests and simulations, the engine
//! serves real nodes. Randomness (election timeouts) comes from a seed in [`Config`].
//!
//! A three-peer group, one leader elected and one command committed, all in memory:
//!
//! ```
//! use flotilla_common::ConfState;
//! use flotilla_region::raft::{Config, MemStorage, RawNode, Role};
//!
//! let mut nodes: Vec<RawNode<MemStorage>> = (1..=3)
//!     .map(|id| {
//!         let store = MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3]));
//!         RawNode::new(&Config::new(id), store).unwrap()
//!     })
//!     .collect();
//! nodes[0].campaign().unwrap();
//! let mut proposed = false;
//! for _round in 0..20 {
//!     let mut inflight = Vec::new();
//!     for node in nodes.iter_mut() {
//!         while node.has_ready() {
//!             let rd = node.ready();
//!             inflight.extend(rd.messages.iter().cloned());
//!             let store = node.store().clone();
//!             store.wl().append(&rd.entries).unwrap();
//!             if let Some(hs) = rd.hard_state { store.wl().set_hard_state(hs) }
//!             inflight.extend(rd.persisted_messages.iter().cloned());
//!             node.advance(rd);
//!         }
//!     }
//!     for m in inflight {
//!         nodes[(m.to - 1) as usize].step(m).unwrap();
//!     }
//!     if nodes[0].raft().role() == Role::Leader && !proposed {
//!         nodes[0].propose(&b"x=1"[..]).unwrap();
//!         proposed = true;
//!     }
//! }
//! assert_eq!(nodes[0].raft().role(), Role::Leader);
//! assert!(nodes.iter().all(|n| n.raft().commit_index() == 2)); // no-op + command
//! ```

mod conf_change;
mod config;
mod errors;
mod inflights;
mod log_unstable;
mod progress;
mod quorum;
#[allow(clippy::module_inception)]
mod raft;
mod raft_log;
mod raw_node;
mod read_only;
mod rng;
pub mod session;
mod storage;
mod tracker;

pub use config::{Config, ReadOnlyOption};
pub use errors::{Error, Result, StorageError};
pub use inflights::Inflights;
pub use progress::{Progress, ProgressState};
pub use quorum::{JointConfig, MajorityConfig, VoteResult};
pub use raft::{Raft, Role, SoftState, CAMPAIGN_TRANSFER, LEASE_MARGIN_TICKS};
pub use raft_log::{limit_size, RaftLog};
pub use raw_node::{ProgressStatus, RawNode, Ready, Status};
pub use read_only::ReadState;
pub use rng::SplitMix64;
pub use session::{Command, SessionOutcome, SessionTable};
pub use storage::{MemStorage, MemStorageCore, RaftState, Storage};
pub use tracker::{Configuration, ProgressTracker};
