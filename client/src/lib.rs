//! The Rust client of Flotilla: async `get`, `put`, `delete`, `incr_by`, `scan` and `batch`
//! against a cluster, over the RESP protocol every node serves on its client address.
//!
//! The client keeps a cache of the cluster's regions (key ranges, epochs, leaders), learned
//! with `FLOTILLA.REGIONS`, and sends each request straight to the node that leads the
//! key's region. When a node answers that it does not lead the region
//! (`-TRYAGAIN region 7: not leader (leader on node 2)`), the client notes the new leader
//! and asks it. Every keyed request carries the route of its cached region
//! (`FLOTILLA.ROUTE <region> <version> <conf_ver> …`); a node whose region split or merged
//! since answers `-TRYAGAIN EPOCHNOTMATCH …` with the regions as they are now, which the
//! client puts in its cache before retrying at once, with no map refresh and no back-off. On
//! any other retryable failure (an election, a broken connection, a node that did not
//! answer in time) it refreshes the region map and retries with exponential back-off and
//! jitter. Every call has a timeout
//! ([`ClientConfig::call_timeout`]) that covers all of its retries. Final errors (a value
//! that is not an integer, …) come back at once as [`ClientError::Server`].
//!
//! Writes apply exactly once even when retried through another node: each is wrapped in
//! `FLOTILLA.SESSION <client id> <seq> …` with a session from a
//! [`SessionPool`](flotilla_common::session_pool::SessionPool) (one client id per write in
//! flight), and every retry carries the same pair, so the region's state machine answers a
//! retry of a write it already applied from its session table.
//!
//! Multi-key calls ([`Client::delete`], [`Client::batch`]) are split by region and sent
//! concurrently; each region's share is atomic, the whole is not.
//!
//! ```no_run
//! use flotilla_client::{Client, ClientConfig, Op};
//!
//! # async fn demo() -> Result<(), flotilla_client::ClientError> {
//! let client = Client::connect(ClientConfig::new([
//!     "10.0.0.1:6379",
//!     "10.0.0.2:6379",
//!     "10.0.0.3:6379",
//! ]))
//! .await?;
//! client.put("user:1", "ada").await?;
//! assert_eq!(client.get("user:1").await?.as_deref(), Some(&b"ada"[..]));
//! assert_eq!(client.incr_by("visits", 1).await?, 1);
//! let results = client
//!     .batch(vec![Op::put("user:2", "grace"), Op::delete("user:1")])
//!     .await;
//! assert!(results.iter().all(|r| r.is_ok()));
//! for (key, value) in client.scan("user:", Some("user;".into()), 100).await? {
//!     println!("{key:?} = {value:?}");
//! }
//! assert_eq!(client.delete(["user:2", "visits"]).await?, 2);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod backoff;
mod client;
mod connection;
mod error;
mod join;
pub mod resp;
mod routing;

pub use backoff::Backoff;
pub use client::{
    Client, ClientConfig, Op, ATTEMPT_TIMEOUT_DEFAULT, BACKOFF_DEFAULT, CALL_TIMEOUT_DEFAULT,
    CONNECT_TIMEOUT_DEFAULT, SCAN_PAGE_PAIRS_MAX,
};
pub use error::ClientError;
pub use routing::RegionInfo;
