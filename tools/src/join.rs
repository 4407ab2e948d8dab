//! `flotilla server --join`: a new node asks a running node (through its status address)
//! to add it to the cluster's directory, and starts from the directory it answers.

use std::time::Duration;

use flotilla_region::node::{NodeAddresses, NodeEntry};
use hyper::Method;

use crate::http::StatusClient;

/// How long a join waits for the running node's answer.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The query of `POST /admin/add-node` for node `id` at `addresses` (and, for a node
/// joining by itself, its `cluster_id`).
pub fn add_node_path(id: u64, addresses: &NodeAddresses, cluster_id: Option<u64>) -> String {
    let mut path = format!("/admin/add-node?id={id}");
    for (name, a) in [
        ("raft_addr", addresses.raft_addr),
        ("client_addr", addresses.client_addr),
        ("status_addr", addresses.status_addr),
    ] {
        if let Some(a) = a {
            path.push_str(&format!("&{name}={a}"));
        }
    }
    if let Some(c) = cluster_id {
        path.push_str(&format!("&cluster_id={c}"));
    }
    path
}

/// Asks the node whose status server is at `via` to add node `id` (with `addresses`, in
/// cluster `cluster_id`); answers the cluster's directory. Every failure is a message
/// naming `via`.
pub async fn join(
    via: &str,
    id: u64,
    addresses: NodeAddresses,
    cluster_id: u64,
) -> Result<Vec<NodeEntry>, String> {
    let client = StatusClient::new(via, JOIN_TIMEOUT);
    let path = add_node_path(id, &addresses, Some(cluster_id));
    let resp = client
        .request(Method::POST, &path)
        .await
        .map_err(|e| format!("--join {via}: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&resp.body).map_err(|e| {
        format!("--join {via}: the answer is not JSON ({e}); is that a flotilla status address?")
    })?;
    if !resp.status.is_success() {
        let why = v["error"].as_str().unwrap_or("no reason given");
        return Err(format!("--join {via}: refused ({}): {why}", resp.status));
    }
    let nodes: Vec<NodeEntry> = serde_json::from_value(v["nodes"].clone())
        .map_err(|e| format!("--join {via}: the answer lists no directory ({e})"))?;
    if !nodes.iter().any(|n| n.node_id == id) {
        return Err(format!(
            "--join {via}: the answer's directory does not list node {id}"
        ));
    }
    Ok(nodes)
}
