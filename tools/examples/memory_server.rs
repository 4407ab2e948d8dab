//! A RESP server over the in-memory store: one process, no replication, nothing kept on exit.
//! Handy for trying redis-cli and redis-benchmark against the protocol layer alone.
//!
//! ```text
//! cargo run --release -p flotilla-tools --example memory_server -- 127.0.0.1:6380
//! redis-benchmark -p 6380 -t set,get -q
//! ```

use std::sync::Arc;

use flotilla_tools::{MemoryKvService, RespServer};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6380".to_string());
    let server = RespServer::bind(&addr, Arc::new(MemoryKvService::new())).await?;
    println!(
        "RESP on {} (in memory); stop with Ctrl-C",
        server.local_addr()?
    );
    server.serve(std::future::pending()).await
}
