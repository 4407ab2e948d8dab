//! `--client native`: Flotilla's Rust client (`flotilla-client`), which sends each call
//! straight to the leader of its key's region (no forwarding hop) and wraps every write in
//! a session for exactly-once retries.

use flotilla_client::{Client, ClientConfig};

use super::slots::{CallFuture, Caller};
use crate::workload::Op;

/// One `flotilla-client` [`Client`]: connections to every node, shared by its slots.
#[derive(Clone)]
pub struct NativeCaller {
    client: Client,
}

impl NativeCaller {
    /// Connects to the cluster whose RESP addresses are `nodes`.
    pub async fn connect(nodes: &[String]) -> Result<NativeCaller, String> {
        let client = Client::connect(ClientConfig::new(nodes.iter().cloned()))
            .await
            .map_err(|e| format!("flotilla-client: {e}"))?;
        Ok(NativeCaller { client })
    }
}

impl Caller for NativeCaller {
    fn call(&self, op: Op) -> CallFuture {
        let client = self.client.clone();
        Box::pin(async move {
            match op {
                Op::Set { key, value } => {
                    let n = value.len() as u64;
                    client.put(key, value).await.map(|_| n)
                }
                Op::Get { key } => client
                    .get(key)
                    .await
                    .map(|v| v.map_or(0, |v| v.len() as u64)),
                Op::Scan { start, limit } => client
                    .scan(start, None, limit as usize)
                    .await
                    .map(|pairs| pairs.iter().map(|(_, v)| v.len() as u64).sum()),
            }
            .map_err(|e| e.to_string())
        })
    }
}
