//! The `flotilla` command-line tools and the client-facing protocol layers.
//!
//! - [`service`]: the traits between the protocol servers and the node ([`KvService`],
//!   [`StatusSource`]), and [`MemoryKvService`], an in-memory backend for tests and a
//!   single-process dev mode.
//! - [`resp`]: the Redis-protocol (RESP2) server on the client address.
//! - [`http`]: the status server: `/metrics`, `/status`, `/health` and the admin endpoints.
//! - [`ctl`]: `flotilla ctl`, the command line that talks to the status server.
//! - [`cluster`]: `flotilla cluster`, a local cluster of server processes to try Flotilla out.
#![deny(missing_docs)]

pub mod cluster;
pub mod ctl;
pub mod escape;
pub mod http;
pub mod join;
mod memory;
pub mod node_service;
pub mod resp;
pub mod server;
pub mod service;

pub use http::{install_prometheus_recorder, StatusServer};
pub use memory::{MemoryKvService, MEMORY_BYTES_MAX_DEFAULT, MEMORY_NODE_ID, MEMORY_REGION_ID};
pub use node_service::NodeService;
pub use resp::{RespLimits, RespServer};
pub use service::{
    AddNodeRequest, ClientRoute, ClientSession, ClusterNodeStatus, ClusterRegionStatus,
    EpochNotMatch, EpochStatus, ExpectedRoute, KvService, MemberRole, NodeStatus, PeerStatus,
    PutCondition, RegionStatus, ReplicaRole, RouteEntry, ServiceError, ServiceFuture,
    SnapshotsStatus, StatusSource,
};
