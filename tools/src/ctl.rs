//! `flotilla ctl`: inspects and steers a running node through its HTTP status address.
//!
//! ```text
//! flotilla ctl --addr 127.0.0.1:7001 status
//! flotilla ctl --addr 127.0.0.1:7001 regions [--json]
//! flotilla ctl --addr 127.0.0.1:7001 transfer-leader 3 2
//! flotilla ctl --addr 127.0.0.1:7001 split 3 'user:5000'
//! flotilla ctl --addr 127.0.0.1:7001 merge 70001 3
//! flotilla ctl --addr 127.0.0.1:7001 move-replica 3 2 4
//! flotilla ctl --addr 127.0.0.1:7001 add-learner 3 4
//! flotilla ctl --addr 127.0.0.1:7001 remove-replica 3 4
//! flotilla ctl --addr 127.0.0.1:7001 regions --all
//! flotilla ctl --addr 127.0.0.1:7001 add-node --id 4 --raft-addr 10.0.0.4:9000
//! flotilla ctl --addr 127.0.0.1:7001 remove-node 4
//! ```
//!
//! Tables are for people; `--json` prints what the server sent, for scripts.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use hyper::{Method, StatusCode};

use crate::escape::escape;
use crate::http::{HttpClientError, StatusClient};
use crate::service::{
    ClusterNodeStatus, ClusterRegionStatus, MemberRole, NodeStatus, PeerStatus, RegionStatus,
    ReplicaRole, SnapshotsStatus,
};
use flotilla_region::node::NodeAddresses;

/// Default of `--timeout-ms`: a status server answers in milliseconds; a node that takes
/// longer is in trouble, and the operator should hear so rather than wait.
pub const CTL_TIMEOUT_MILLIS_DEFAULT: u64 = 5_000;

/// The least `move-replica` waits for its answer, whatever `--timeout-ms` says: a move is
/// up to four membership steps (learner, promotion, leader transfer, removal), each
/// allowed the node's request timeout (default 5 s), and a learner that must catch up
/// from a snapshot takes a while.
pub const MOVE_TIMEOUT_MILLIS_MIN: u64 = 60_000;

/// How long `status` waits for each other node's own `/status` (for its snapshot
/// progress; `--timeout-ms` if shorter): a node that does not answer by then shows `?`.
pub const NODE_SNAPSHOTS_TIMEOUT_MILLIS: u64 = 1_000;

/// `flotilla ctl` arguments.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The node's HTTP status address (its `--status-addr`), as HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a request after this many milliseconds.
    #[arg(long, default_value_t = CTL_TIMEOUT_MILLIS_DEFAULT)]
    pub timeout_ms: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `flotilla ctl` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// The node: id, number of regions, how many it leads, by role; then the cluster's
    /// nodes: addresses, state, alive, replicas and leaders (from gossip), and the
    /// snapshot progress each node reports of itself (asked of it, 1 s at most).
    Status,
    /// Every region with a replica on the node: range, epoch, role, term, commit, applied,
    /// leader. With `--all`: every region of the cluster the node knows of (from gossip).
    Regions {
        /// List the whole cluster's regions, not only the node's replicas.
        #[arg(long)]
        all: bool,
    },
    /// Add a node to the cluster's directory (it starts with `--join`, or is added here
    /// first and started with `--join` later); gossip spreads it.
    AddNode {
        /// The new node's id (1 ..= 65535, never used before).
        #[arg(long)]
        id: u64,
        /// Its raft address, IP:PORT.
        #[arg(long)]
        raft_addr: String,
        /// Its RESP address, IP:PORT.
        #[arg(long)]
        client_addr: Option<String>,
        /// Its status (HTTP) address, IP:PORT.
        #[arg(long)]
        status_addr: Option<String>,
    },
    /// Mark NODE removing: it takes no new replicas (refused when fewer than three up
    /// nodes would remain).
    RemoveNode {
        /// The node id.
        node: u64,
    },
    /// Ask REGION's leader to hand leadership to its replica on NODE.
    TransferLeader {
        /// The region id.
        region: u64,
        /// The node id to lead it.
        node: u64,
    },
    /// Merge region SOURCE into the adjacent region TARGET (same nodes).
    Merge {
        /// The region that goes away.
        source: u64,
        /// The region that takes its range.
        target: u64,
    },
    /// Move REGION's replica on node FROM to node TO (which must hold none): learner on TO,
    /// promoted once caught up, leadership moved off FROM if there, replica on FROM removed.
    /// Waits until done (at least 60 s, or `--timeout-ms` if longer); an interrupted move
    /// can be run again.
    MoveReplica {
        /// The region id.
        region: u64,
        /// The node whose replica goes away.
        from: u64,
        /// The node that gets a replica.
        to: u64,
        /// Move a voter through a joint configuration: the caught-up learner is promoted
        /// and the old voter removed in one change (never one voter more than before).
        #[arg(long)]
        joint: bool,
    },
    /// Add a learner (non-voting) replica of REGION on NODE, which must hold none.
    AddLearner {
        /// The region id.
        region: u64,
        /// The node to host it.
        node: u64,
    },
    /// Remove REGION's replica on NODE (not the leader's, not the last voter).
    RemoveReplica {
        /// The region id.
        region: u64,
        /// The node whose replica goes away.
        node: u64,
    },
    /// Split REGION at KEY (escaped text: `\\xNN` for any byte), or at the middle of its
    /// data when no KEY is given.
    Split {
        /// The region id.
        region: u64,
        /// Where the new region starts.
        key: Option<String>,
    },
}

/// Why a `ctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The request did not complete.
    #[error(transparent)]
    Http(#[from] HttpClientError),
    /// The server answered with an error status.
    #[error("{status}: {message}")]
    Server {
        /// The HTTP status.
        status: StatusCode,
        /// The server's error message (or its whole body).
        message: String,
    },
    /// The server's answer was not the JSON expected.
    #[error("unexpected answer from the server: {0}")]
    BadAnswer(#[from] serde_json::Error),
    /// A key given on the command line could not be read.
    #[error("bad key {0}")]
    BadKey(String),
    /// An address given on the command line could not be read.
    #[error("bad address: {0}")]
    BadAddress(String),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs one `ctl` command and writes its output to `out`.
pub async fn run(args: &CtlArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let client = StatusClient::new(&args.addr, Duration::from_millis(args.timeout_ms));
    match &args.command {
        CtlCommand::Status | CtlCommand::Regions { .. } => {
            let body = call(&client, Method::GET, "/status").await?;
            let status: NodeStatus = serde_json::from_slice(&body)?;
            let all = matches!(args.command, CtlCommand::Regions { all: true });
            match (&args.command, args.json) {
                (CtlCommand::Status, true) => {
                    writeln!(out, "{}", String::from_utf8_lossy(&body).trim_end())?
                }
                (_, true) if all => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&status.cluster_regions)?
                )?,
                (_, true) => writeln!(out, "{}", serde_json::to_string_pretty(&status.regions)?)?,
                (CtlCommand::Status, false) => {
                    out.write_all(status_table(&status).as_bytes())?;
                    if !status.nodes.is_empty() {
                        let timeout = Duration::from_millis(
                            args.timeout_ms.min(NODE_SNAPSHOTS_TIMEOUT_MILLIS),
                        );
                        let snapshots = nodes_snapshots(&status, timeout).await;
                        writeln!(out)?;
                        out.write_all(nodes_table(&status.nodes, &snapshots).as_bytes())?;
                    }
                }
                (_, false) if all => {
                    out.write_all(cluster_regions_table(&status.cluster_regions).as_bytes())?
                }
                (_, false) => out.write_all(regions_table(&status.regions).as_bytes())?,
            }
        }
        CtlCommand::AddNode {
            id,
            raft_addr,
            client_addr,
            status_addr,
        } => {
            let parse = |name: &str, a: &str| -> Result<std::net::SocketAddr, CtlError> {
                a.parse()
                    .map_err(|_| CtlError::BadAddress(format!("--{name} {a:?} is not IP:PORT")))
            };
            let addresses = NodeAddresses {
                raft_addr: Some(parse("raft-addr", raft_addr)?),
                client_addr: client_addr
                    .as_deref()
                    .map(|a| parse("client-addr", a))
                    .transpose()?,
                status_addr: status_addr
                    .as_deref()
                    .map(|a| parse("status-addr", a))
                    .transpose()?,
            };
            let path = crate::join::add_node_path(*id, &addresses, None);
            admin(&client, &path, args.json, out, |v| {
                let n = v["nodes"].as_array().map_or(0, Vec::len);
                format!("added node {id} at {raft_addr}; the cluster lists {n} node(s)")
            })
            .await?;
        }
        CtlCommand::RemoveNode { node } => {
            let path = format!("/admin/remove-node?id={node}");
            admin(&client, &path, args.json, out, |_| {
                format!("node {node} is removing: it takes no new replicas")
            })
            .await?;
        }
        CtlCommand::Split { region, key } => {
            let mut path = format!("/admin/split?region={region}");
            if let Some(k) = key {
                let bytes = crate::escape::unescape(k)
                    .map_err(|e| CtlError::BadKey(format!("{k:?}: {e}")))?;
                path.push_str(&format!("&key={}", crate::http::encode_hex(&bytes)));
            }
            admin(&client, &path, args.json, out, |v| {
                format!("split region {region}: new regions {}", v["new_regions"])
            })
            .await?;
        }
        CtlCommand::Merge { source, target } => {
            let path = format!("/admin/merge?source={source}&target={target}");
            admin(&client, &path, args.json, out, |_| {
                format!("merged region {source} into region {target}")
            })
            .await?;
        }
        CtlCommand::MoveReplica {
            region,
            from,
            to,
            joint,
        } => {
            let millis = args.timeout_ms.max(MOVE_TIMEOUT_MILLIS_MIN);
            let client = StatusClient::new(&args.addr, Duration::from_millis(millis));
            let path =
                format!("/admin/move-replica?region={region}&from={from}&to={to}&joint={joint}");
            admin(&client, &path, args.json, out, |_| {
                format!("moved region {region}'s replica from node {from} to node {to}")
            })
            .await?;
        }
        CtlCommand::AddLearner { region, node } => {
            let path = format!("/admin/add-learner?region={region}&node={node}");
            admin(&client, &path, args.json, out, |v| {
                format!(
                    "added a learner of region {region} on node {node}: peer {}",
                    v["peer"]
                )
            })
            .await?;
        }
        CtlCommand::RemoveReplica { region, node } => {
            let path = format!("/admin/remove-replica?region={region}&node={node}");
            admin(&client, &path, args.json, out, |_| {
                format!("removed region {region}'s replica on node {node}")
            })
            .await?;
        }
        CtlCommand::TransferLeader { region, node } => {
            let path = format!("/admin/transfer-leader?region={region}&node={node}");
            admin(&client, &path, args.json, out, |_| {
                format!("asked region {region} to transfer its leadership to node {node}")
            })
            .await?;
        }
    }
    Ok(())
}

/// POSTs an admin request and prints its answer: the JSON as it came with `--json`, else
/// the line `human` makes of it.
async fn admin(
    client: &StatusClient,
    path: &str,
    json: bool,
    out: &mut dyn Write,
    human: impl FnOnce(&serde_json::Value) -> String,
) -> Result<(), CtlError> {
    let body = call(client, Method::POST, path).await?;
    if json {
        writeln!(out, "{}", String::from_utf8_lossy(&body).trim_end())?;
    } else {
        // Answers are JSON objects; one that is not still gets its line.
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        writeln!(out, "{}", human(&v))?;
    }
    Ok(())
}

/// One request; a non-2xx answer becomes [`CtlError::Server`] with the server's message.
async fn call(client: &StatusClient, method: Method, path: &str) -> Result<bytes::Bytes, CtlError> {
    let resp = client.request(method, path).await?;
    if resp.status.is_success() {
        return Ok(resp.body);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).trim().to_owned());
    Err(CtlError::Server {
        status: resp.status,
        message,
    })
}

/// What `status` learned of a node's snapshots by asking the node itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSnapshots {
    /// The node's own `/status` answered this.
    Answered(SnapshotsStatus),
    /// Not asked: the node is `removed`.
    NotAsked,
    /// Unknown: the node did not answer in time, answered an error or something else than
    /// a status, or has no status address.
    Unknown,
}

/// The part of a `/status` answer that `status` reads from the other nodes.
#[derive(serde::Deserialize)]
struct SnapshotsOnly {
    #[serde(default)]
    snapshots: SnapshotsStatus,
}

/// Asks every node of `status`'s directory (concurrently, each within `timeout`) for its
/// own snapshot progress; the node that sent `status` is not asked again.
pub async fn nodes_snapshots(
    status: &NodeStatus,
    timeout: Duration,
) -> BTreeMap<u64, NodeSnapshots> {
    let mut found = BTreeMap::new();
    let mut asks = tokio::task::JoinSet::new();
    for node in &status.nodes {
        let known = if node.id == status.node_id {
            NodeSnapshots::Answered(status.snapshots)
        } else if node.state == "removed" {
            NodeSnapshots::NotAsked
        } else if let Some(addr) = &node.status_addr {
            let (id, client) = (node.id, StatusClient::new(addr.clone(), timeout));
            asks.spawn(async move { (id, ask_snapshots(&client).await) });
            continue;
        } else {
            NodeSnapshots::Unknown
        };
        found.insert(node.id, known);
    }
    while let Some(asked) = asks.join_next().await {
        if let Ok((id, answer)) = asked {
            found.insert(id, answer);
        }
    }
    found
}

/// One node's snapshot progress from its `/status`, or [`NodeSnapshots::Unknown`].
async fn ask_snapshots(client: &StatusClient) -> NodeSnapshots {
    match call(client, Method::GET, "/status").await {
        Ok(body) => serde_json::from_slice::<SnapshotsOnly>(&body)
            .map_or(NodeSnapshots::Unknown, |s| {
                NodeSnapshots::Answered(s.snapshots)
            }),
        Err(_) => NodeSnapshots::Unknown,
    }
}

/// A SNAPSHOTS cell of the nodes table: `2 streams, 12.0/64.0 MiB` (sent and received
/// together, bytes done / in all), `1 build, 3.0 MiB read`, both joined by `; `; `-` when
/// none is under way or the node was not asked; `?` when unknown.
pub fn snapshots_cell(snapshots: &NodeSnapshots) -> String {
    let s = match snapshots {
        NodeSnapshots::Answered(s) => s,
        NodeSnapshots::NotAsked => return "-".to_string(),
        NodeSnapshots::Unknown => return "?".to_string(),
    };
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut parts = Vec::new();
    let streams = s.sending + s.receiving;
    if streams > 0 {
        let done = s.sending_bytes_done + s.receiving_bytes_done;
        let total = s.sending_bytes_total + s.receiving_bytes_total;
        parts.push(format!(
            "{}, {:.1}/{:.1} MiB",
            plural(streams, "stream"),
            mib(done),
            mib(total)
        ));
    }
    if s.building > 0 {
        parts.push(format!(
            "{}, {:.1} MiB read",
            plural(s.building, "build"),
            mib(s.building_bytes_read)
        ));
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join("; ")
    }
}

/// The `status` table: one row per fact.
pub fn status_table(status: &NodeStatus) -> String {
    let count = |role: ReplicaRole| status.regions.iter().filter(|r| r.role == role).count();
    let roles = [
        ReplicaRole::Leader,
        ReplicaRole::Follower,
        ReplicaRole::Candidate,
        ReplicaRole::PreCandidate,
        ReplicaRole::Learner,
    ];
    let mut rows = vec![
        vec!["node".to_string(), status.node_id.to_string()],
        vec!["regions".to_string(), status.regions.len().to_string()],
    ];
    for role in roles {
        rows.push(vec![role.as_str().to_string(), count(role).to_string()]);
    }
    rows.push(vec!["snapshots".to_string(), status.snapshots.summary()]);
    table(&["FIELD", "VALUE"], &rows)
}

/// The `regions` table: one row per region, keys in the escaped form of [`crate::escape`];
/// an empty end key (the end of the key space) shows as `+inf`. PEERS lists the nodes
/// holding a replica, learners marked `(l)`: `1,2,4(l)`.
pub fn regions_table(regions: &[RegionStatus]) -> String {
    let rows: Vec<Vec<String>> = regions
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                key_cell(&r.start_key),
                end_key_cell(&r.end_key),
                r.epoch.conf_ver.to_string(),
                r.epoch.version.to_string(),
                r.role.as_str().to_string(),
                r.term.to_string(),
                r.commit.to_string(),
                r.applied.to_string(),
                r.leader.map_or_else(|| "-".to_string(), |n| n.to_string()),
                peers_cell(&r.peers),
            ]
        })
        .collect();
    table(
        &[
            "REGION", "START", "END", "CONF_VER", "VERSION", "ROLE", "TERM", "COMMIT", "APPLIED",
            "LEADER", "PEERS",
        ],
        &rows,
    )
}

/// The nodes table of `status`: one row per node of the directory. SNAPSHOTS is the
/// [`snapshots_cell`] of the node's entry in `snapshots` (`?` when it has none).
pub fn nodes_table(
    nodes: &[ClusterNodeStatus],
    snapshots: &BTreeMap<u64, NodeSnapshots>,
) -> String {
    let opt = |a: &Option<String>| a.clone().unwrap_or_else(|| "-".to_string());
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.state.clone(),
                if n.alive { "yes" } else { "no" }.to_string(),
                n.last_heard_ms
                    .map_or_else(|| "never".to_string(), |ms| format!("{ms}ms")),
                n.replicas.to_string(),
                n.leaders.to_string(),
                n.moves.to_string(),
                snapshots_cell(snapshots.get(&n.id).unwrap_or(&NodeSnapshots::Unknown)),
                opt(&n.raft_addr),
                opt(&n.client_addr),
                opt(&n.status_addr),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "STATE",
            "ALIVE",
            "HEARD",
            "REPLICAS",
            "LEADERS",
            "MOVES",
            "SNAPSHOTS",
            "RAFT",
            "CLIENT",
            "STATUS",
        ],
        &rows,
    )
}

/// The `regions --all` table: every region of the cluster the node knows of.
pub fn cluster_regions_table(regions: &[ClusterRegionStatus]) -> String {
    let rows: Vec<Vec<String>> = regions
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                key_cell(&r.start_key),
                end_key_cell(&r.end_key),
                r.epoch.conf_ver.to_string(),
                r.epoch.version.to_string(),
                r.leader.map_or_else(|| "-".to_string(), |n| n.to_string()),
                r.term.to_string(),
                peers_cell(&r.peers),
            ]
        })
        .collect();
    table(
        &[
            "REGION", "START", "END", "CONF_VER", "VERSION", "LEADER", "TERM", "PEERS",
        ],
        &rows,
    )
}

/// A key cell: the escaped key in quotes.
fn key_cell(key: &[u8]) -> String {
    format!("\"{}\"", escape(key))
}

/// An end-key cell: `+inf` for the end of the key space, else the key.
fn end_key_cell(key: &[u8]) -> String {
    if key.is_empty() {
        "+inf".to_string()
    } else {
        key_cell(key)
    }
}

/// The PEERS cell: node ids in the descriptor's order, learners marked `(l)`; `-` when
/// the server sent none.
fn peers_cell(peers: &[PeerStatus]) -> String {
    if peers.is_empty() {
        return "-".to_string();
    }
    peers
        .iter()
        .map(|p| match p.role {
            MemberRole::Voter => p.node.to_string(),
            MemberRole::Learner => format!("{}(l)", p.node),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Left-aligned columns two spaces apart, a header row first.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }

    #[test]
    fn peers_cell_marks_learners() {
        let peer = |node, role| PeerStatus {
            node,
            peer: node,
            role,
        };
        assert_eq!(
            peers_cell(&[
                peer(1, MemberRole::Voter),
                peer(2, MemberRole::Voter),
                peer(4, MemberRole::Learner)
            ]),
            "1,2,4(l)"
        );
        assert_eq!(peers_cell(&[]), "-");
    }

    fn node(id: u64, state: &str, status_addr: Option<&str>) -> ClusterNodeStatus {
        ClusterNodeStatus {
            id,
            raft_addr: Some(format!("10.0.0.{id}:9000")),
            client_addr: None,
            status_addr: status_addr.map(str::to_owned),
            state: state.to_string(),
            alive: state != "removed",
            last_heard_ms: Some(40 * id),
            replicas: 3,
            leaders: 1,
            moves: 0,
            // Gossip's count, which the table no longer shows.
            snapshots: 7,
            generation: 1,
        }
    }

    #[test]
    fn nodes_table_shows_each_node_s_own_snapshot_progress_or_a_dash_or_a_question_mark() {
        let nodes = [
            node(1, "up", Some("10.0.0.1:8000")),
            node(2, "up", Some("10.0.0.2:8000")),
            node(3, "removing", Some("10.0.0.3:8000")),
            node(4, "up", None),
            node(5, "removed", Some("10.0.0.5:8000")),
            node(6, "up", Some("10.0.0.6:8000")),
        ];
        let snapshots = BTreeMap::from([
            (
                1,
                NodeSnapshots::Answered(SnapshotsStatus {
                    sending: 1,
                    sending_bytes_done: 4 << 20,
                    sending_bytes_total: 32 << 20,
                    receiving: 1,
                    receiving_bytes_done: 8 << 20,
                    receiving_bytes_total: 32 << 20,
                    ..Default::default()
                }),
            ),
            (2, NodeSnapshots::Answered(SnapshotsStatus::default())),
            (
                3,
                NodeSnapshots::Answered(SnapshotsStatus {
                    building: 1,
                    building_bytes_read: 3 << 20,
                    sending: 1,
                    sending_bytes_done: 1 << 19,
                    sending_bytes_total: 1 << 20,
                    ..Default::default()
                }),
            ),
            (4, NodeSnapshots::Unknown),
            (5, NodeSnapshots::NotAsked),
            // Node 6 has no entry: it never answered.
        ]);
        assert_eq!(
            nodes_table(&nodes, &snapshots),
            "NODE  STATE     ALIVE  HEARD  REPLICAS  LEADERS  MOVES  SNAPSHOTS                                     RAFT           CLIENT  STATUS\n\
             1     up        yes    40ms   3         1        0      2 streams, 12.0/64.0 MiB                      10.0.0.1:9000  -       10.0.0.1:8000\n\
             2     up        yes    80ms   3         1        0      -                                             10.0.0.2:9000  -       10.0.0.2:8000\n\
             3     removing  yes    120ms  3         1        0      1 stream, 0.5/1.0 MiB; 1 build, 3.0 MiB read  10.0.0.3:9000  -       10.0.0.3:8000\n\
             4     up        yes    160ms  3         1        0      ?                                             10.0.0.4:9000  -       -\n\
             5     removed   no     200ms  3         1        0      -                                             10.0.0.5:9000  -       10.0.0.5:8000\n\
             6     up        yes    240ms  3         1        0      ?                                             10.0.0.6:9000  -       10.0.0.6:8000\n"
        );
    }

    #[test]
    fn snapshots_cell_counts_streams_and_builds_in_the_singular_and_the_plural() {
        let cell = |s| snapshots_cell(&NodeSnapshots::Answered(s));
        assert_eq!(
            cell(SnapshotsStatus {
                receiving: 2,
                receiving_bytes_done: 3 << 20,
                receiving_bytes_total: 10 << 20,
                ..Default::default()
            }),
            "2 streams, 3.0/10.0 MiB"
        );
        assert_eq!(
            cell(SnapshotsStatus {
                building: 2,
                building_bytes_read: 1 << 20,
                ..Default::default()
            }),
            "2 builds, 1.0 MiB read"
        );
        assert_eq!(cell(SnapshotsStatus::default()), "-");
        assert_eq!(snapshots_cell(&NodeSnapshots::Unknown), "?");
        assert_eq!(snapshots_cell(&NodeSnapshots::NotAsked), "-");
    }
}
