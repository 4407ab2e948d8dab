//! `--system etcd`: etcd's gRPC KV API through the `etcd-client` crate. Calls of one
//! client multiplex on its HTTP/2 connection, as pipelined requests do on a RESP one.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};

use super::slots::{CallFuture, Caller};
use crate::workload::Op;

/// Connecting to a member is abandoned after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One etcd client connected to one member (members forward writes to the leader, as
/// Flotilla's followers do).
#[derive(Clone)]
pub struct EtcdCaller {
    kv: KvClient,
}

impl EtcdCaller {
    /// Connects to the member at `addr` (`host:port` of its client URL).
    pub async fn connect(addr: &str) -> Result<EtcdCaller, String> {
        let opts = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
        let client = Client::connect([format!("http://{addr}")], Some(opts))
            .await
            .map_err(|e| format!("etcd {addr}: {e}"))?;
        Ok(EtcdCaller {
            kv: client.kv_client(),
        })
    }
}

impl Caller for EtcdCaller {
    fn call(&self, op: Op) -> CallFuture {
        let mut kv = self.kv.clone();
        Box::pin(async move {
            match op {
                Op::Set { key, value } => {
                    let n = value.len() as u64;
                    kv.put(key.to_vec(), value.to_vec(), None).await.map(|_| n)
                }
                // Linearizable: etcd's default range is not serializable.
                Op::Get { key } => kv
                    .get(key.to_vec(), None)
                    .await
                    .map(|r| r.kvs().iter().map(|kv| kv.value().len() as u64).sum()),
                Op::Scan { start, limit } => {
                    // Range end "\0": every key from `start` on.
                    let opts = GetOptions::new()
                        .with_range(vec![0u8])
                        .with_limit(i64::from(limit));
                    kv.get(start.to_vec(), Some(opts))
                        .await
                        .map(|r| r.kvs().iter().map(|kv| kv.value().len() as u64).sum())
                }
            }
            .map_err(|e| e.to_string())
        })
    }
}
