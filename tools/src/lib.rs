//! The `flotilla` command-line tools and the Rust client library; the server and client
//! arrive with the node (see the project's issues).
#![deny(missing_docs)]
