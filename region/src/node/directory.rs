//! The node directory: every node of the cluster with its addresses and state, as this
//! node knows it. Spread by gossip (see the cluster module), persisted in
//! `<data_dir>/nodes`.
//!
//! **Merge rule.** Entries of one node are totally ordered, and a merge keeps the greater:
//! a `Removed` entry beats every other (removal is terminal), then the higher
//! `generation`, then (only to break ties between entries that should not exist: two
//! writers bumping the same generation) the state and the addresses. A total order makes
//! the merge commutative, associative and idempotent, so any order of gossip converges.
//!
//! **Who writes.** A node is the authority for its own addresses: it bumps its own entry's
//! generation when they change. `add-node` and `remove-node` (on any node) bump the
//! generation of the entry they write.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use flotilla_common::codec;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::error::NodeError;
use super::store::PEER_ID_NODE_SPAN;

/// The directory's file in a data directory.
pub const DIRECTORY_FILE: &str = "nodes";

/// Up nodes that must remain after a `remove-node`, at least (a region keeps three
/// replicas).
pub const UP_NODES_MIN: usize = 3;

/// A node's place in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// A member: may hold replicas.
    Up,
    /// Being drained: gets no new replicas; marked `Removed` once it holds none.
    Removing,
    /// Gone for good; its id is never used again.
    Removed,
}

impl NodeState {
    /// The name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Removing => "removing",
            NodeState::Removed => "removed",
        }
    }
}

/// A node's addresses; `None` for one not known (yet).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct NodeAddresses {
    /// Raft traffic (the transport).
    pub raft_addr: Option<SocketAddr>,
    /// The RESP server.
    pub client_addr: Option<SocketAddr>,
    /// The HTTP status server.
    pub status_addr: Option<SocketAddr>,
}

/// One node in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeEntry {
    /// The node's id (1 .. 65536).
    pub node_id: u64,
    /// Where to reach it.
    pub addresses: NodeAddresses,
    /// Its state.
    pub state: NodeState,
    /// Grows with every change of the entry; the higher wins a merge.
    pub generation: u64,
}

impl NodeEntry {
    /// An `Up` entry of generation 1.
    pub fn new(node_id: u64, addresses: NodeAddresses) -> Self {
        NodeEntry {
            node_id,
            addresses,
            state: NodeState::Up,
            generation: 1,
        }
    }

    /// The key of the merge order (see the module docs).
    fn rank(&self) -> (bool, u64, NodeState, NodeAddresses) {
        (
            self.state == NodeState::Removed,
            self.generation,
            self.state,
            self.addresses,
        )
    }

    /// Whether `self` wins a merge against `other` (an entry of the same node).
    pub fn supersedes(&self, other: &NodeEntry) -> bool {
        self.rank() > other.rank()
    }
}

/// Checks a node id: 1 ..= 65535 (peer ids keep 16 bits for it).
pub fn check_node_id(node_id: u64) -> Result<(), NodeError> {
    if node_id == 0 || node_id >= PEER_ID_NODE_SPAN {
        return Err(NodeError::Refused(format!(
            "node id {node_id} is out of range (1 ..= {})",
            PEER_ID_NODE_SPAN - 1
        )));
    }
    Ok(())
}

/// The directory: one entry per node, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDirectory {
    entries: BTreeMap<u64, NodeEntry>,
}

/// A directory shared between the cluster component and the store.
pub type SharedDirectory = Arc<RwLock<NodeDirectory>>;

/// What the directory file holds.
#[derive(Serialize, Deserialize)]
struct DirectoryFile {
    entries: Vec<NodeEntry>,
}

impl NodeDirectory {
    /// A directory of `entries` (merged, so duplicates resolve by the merge rule).
    pub fn from_entries(entries: impl IntoIterator<Item = NodeEntry>) -> Self {
        let mut d = NodeDirectory::default();
        for e in entries {
            d.merge_entry(e);
        }
        d
    }

    /// Every entry, by node id.
    pub fn entries(&self) -> Vec<NodeEntry> {
        self.entries.values().cloned().collect()
    }

    /// The entry of `node_id`.
    pub fn get(&self, node_id: u64) -> Option<&NodeEntry> {
        self.entries.get(&node_id)
    }

    /// The state of `node_id`, if it is listed.
    pub fn state_of(&self, node_id: u64) -> Option<NodeState> {
        self.entries.get(&node_id).map(|e| e.state)
    }

    /// Nodes in state `Up`.
    pub fn up_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.state == NodeState::Up)
            .count()
    }

    /// Merges one entry; answers whether the directory changed.
    pub fn merge_entry(&mut self, e: NodeEntry) -> bool {
        match self.entries.get(&e.node_id) {
            Some(old) if !e.supersedes(old) => false,
            _ => {
                self.entries.insert(e.node_id, e);
                true
            }
        }
    }

    /// Merges every entry of `other`; answers the entries that changed here (as they are
    /// now).
    pub fn merge(&mut self, other: impl IntoIterator<Item = NodeEntry>) -> Vec<NodeEntry> {
        let mut changed = Vec::new();
        for e in other {
            if self.merge_entry(e.clone()) {
                changed.push(e);
            }
        }
        changed
    }

    /// Makes `node_id`'s own entry carry `addresses` (the node is their authority):
    /// bumps its generation when they differ, keeps its state. Answers the entry if it
    /// changed. A removed node is refused: its id is retired.
    pub fn assert_own(
        &mut self,
        node_id: u64,
        addresses: NodeAddresses,
    ) -> Result<Option<NodeEntry>, NodeError> {
        match self.entries.get(&node_id) {
            Some(e) if e.state == NodeState::Removed => Err(NodeError::Refused(format!(
                "node {node_id} was removed from the cluster; its id cannot serve again \
                 (start a node with a new id and a new data directory)"
            ))),
            Some(e) if e.addresses == addresses => Ok(None),
            Some(e) => {
                let e = NodeEntry {
                    addresses,
                    generation: e.generation + 1,
                    ..e.clone()
                };
                self.entries.insert(node_id, e.clone());
                Ok(Some(e))
            }
            None => {
                let e = NodeEntry::new(node_id, addresses);
                self.entries.insert(node_id, e.clone());
                Ok(Some(e))
            }
        }
    }

    /// Adds node `node_id` at `addresses` (`add-node`): a new `Up` entry, or nothing for
    /// one already listed with these addresses. `readdress`: the node registers itself
    /// (a `--join`), so it may change the addresses of its existing entry. Refused: a bad
    /// id, a removed or removing node, another node's addresses.
    pub fn add_node(
        &mut self,
        node_id: u64,
        addresses: NodeAddresses,
        readdress: bool,
    ) -> Result<Option<NodeEntry>, NodeError> {
        check_node_id(node_id)?;
        if addresses.raft_addr.is_none() {
            return Err(NodeError::Refused(format!(
                "node {node_id}: a raft address is needed"
            )));
        }
        let Some(old) = self.entries.get(&node_id) else {
            let e = NodeEntry::new(node_id, addresses);
            self.entries.insert(node_id, e.clone());
            return Ok(Some(e));
        };
        match old.state {
            NodeState::Removed => {
                return Err(NodeError::Refused(format!(
                    "node {node_id} was removed; a removed id cannot be added again (use a new id)"
                )))
            }
            NodeState::Removing => {
                return Err(NodeError::Refused(format!(
                    "node {node_id} is being removed (state removing); it cannot be added again"
                )))
            }
            NodeState::Up => {}
        }
        // Addresses not given keep what is known.
        let merged = NodeAddresses {
            raft_addr: addresses.raft_addr,
            client_addr: addresses.client_addr.or(old.addresses.client_addr),
            status_addr: addresses.status_addr.or(old.addresses.status_addr),
        };
        if merged == old.addresses {
            return Ok(None);
        }
        let known = |a: Option<SocketAddr>, b: Option<SocketAddr>| a.is_none() || a == b;
        let only_fills_in = old.addresses.raft_addr == merged.raft_addr
            && known(old.addresses.client_addr, merged.client_addr)
            && known(old.addresses.status_addr, merged.status_addr);
        if !readdress && !only_fills_in {
            return Err(NodeError::Refused(format!(
                "node {node_id} is already in the cluster with other addresses ({}); \
                 only the node itself may change them",
                describe(&old.addresses)
            )));
        }
        let e = NodeEntry {
            addresses: merged,
            generation: old.generation + 1,
            ..old.clone()
        };
        self.entries.insert(node_id, e.clone());
        Ok(Some(e))
    }

    /// Marks `node_id` `Removing` (`remove-node`); nothing if it already is. Refused for
    /// an unknown or removed node, and when fewer than [`UP_NODES_MIN`] `Up` nodes would
    /// remain.
    pub fn remove_node(&mut self, node_id: u64) -> Result<Option<NodeEntry>, NodeError> {
        let Some(old) = self.entries.get(&node_id) else {
            return Err(NodeError::Refused(format!(
                "node {node_id} is not in the cluster"
            )));
        };
        match old.state {
            NodeState::Removing => return Ok(None),
            NodeState::Removed => {
                return Err(NodeError::Refused(format!(
                    "node {node_id} was removed already"
                )))
            }
            NodeState::Up => {}
        }
        let left = self.up_count() - 1;
        if left < UP_NODES_MIN {
            return Err(NodeError::Refused(format!(
                "removing node {node_id} would leave {left} up node(s); at least {UP_NODES_MIN} must remain"
            )));
        }
        Ok(Some(self.set_state(node_id, NodeState::Removing)))
    }

    /// Sets `node_id`'s state with a new generation (the balancer marks a drained node
    /// `Removed` with it). The node must be listed.
    fn set_state(&mut self, node_id: u64, state: NodeState) -> NodeEntry {
        let e = self
            .entries
            .get_mut(&node_id)
            .expect("checked by the caller");
        e.state = state;
        e.generation += 1;
        e.clone()
    }

    /// Marks a `Removing` node `Removed` (terminal). Refused unless it is `Removing`.
    pub fn mark_removed(&mut self, node_id: u64) -> Result<Option<NodeEntry>, NodeError> {
        match self.state_of(node_id) {
            Some(NodeState::Removing) => Ok(Some(self.set_state(node_id, NodeState::Removed))),
            Some(NodeState::Removed) => Ok(None),
            Some(NodeState::Up) => Err(NodeError::Refused(format!(
                "node {node_id} is up; remove-node marks it removing first"
            ))),
            None => Err(NodeError::Refused(format!(
                "node {node_id} is not in the cluster"
            ))),
        }
    }

    /// The directory as it is stored: `[crc32c u32 LE][codec bytes]`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, NodeError> {
        let body = codec::encode(&DirectoryFile {
            entries: self.entries(),
        })
        .map_err(|e| NodeError::Storage(format!("{DIRECTORY_FILE}: {e}")))?;
        let mut out = crc32c::crc32c(&body).to_le_bytes().to_vec();
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Reads what [`NodeDirectory::to_bytes`] wrote; a bad checksum or encoding is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 4 {
            return Err(format!("{} bytes, too short", bytes.len()));
        }
        let (sum, body) = bytes.split_at(4);
        let want = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
        if crc32c::crc32c(body) != want {
            return Err("checksum mismatch (the file is corrupt)".into());
        }
        let file: DirectoryFile = codec::decode(body).map_err(|e| e.to_string())?;
        for e in &file.entries {
            if check_node_id(e.node_id).is_err() {
                return Err(format!("bad node id {}", e.node_id));
            }
        }
        Ok(NodeDirectory::from_entries(file.entries))
    }

    /// Loads `<data_dir>/nodes`; `None` if there is none. A file that cannot be read is
    /// an error naming it.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, NodeError> {
        let path = data_dir.join(DIRECTORY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => NodeDirectory::from_bytes(&bytes).map(Some).map_err(|why| {
                NodeError::Storage(format!(
                    "node directory {}: {why}; restore it or remove the data directory",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::Storage(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes `<data_dir>/nodes` durably: a temporary file, synced, renamed over the old
    /// one, and the directory synced.
    pub fn save(&self, data_dir: &Path) -> Result<(), NodeError> {
        let path = data_dir.join(DIRECTORY_FILE);
        let io = |e: std::io::Error| NodeError::Storage(format!("{}: {e}", path.display()));
        let bytes = self.to_bytes()?;
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

fn describe(a: &NodeAddresses) -> String {
    let s = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
    format!(
        "raft {}, client {}, status {}",
        s(a.raft_addr),
        s(a.client_addr),
        s(a.status_addr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn entry(id: u64, port: u16, state: NodeState, generation: u64) -> NodeEntry {
        NodeEntry {
            node_id: id,
            addresses: NodeAddresses {
                raft_addr: addr(port),
                ..Default::default()
            },
            state,
            generation,
        }
    }

    fn merged(a: &[NodeEntry], b: &[NodeEntry]) -> NodeDirectory {
        let mut d = NodeDirectory::from_entries(a.iter().cloned());
        d.merge(b.iter().cloned());
        d
    }

    #[test]
    fn merge_is_commutative_idempotent_and_generation_ordered() {
        let a = vec![
            entry(1, 9001, NodeState::Up, 3),
            entry(2, 9002, NodeState::Up, 1),
            entry(3, 9003, NodeState::Removing, 2),
        ];
        let b = vec![
            entry(1, 9101, NodeState::Up, 2),
            entry(2, 9202, NodeState::Removing, 2),
            entry(3, 9003, NodeState::Up, 1),
            entry(4, 9004, NodeState::Up, 1),
            // Same generation, different content: a total order still picks one.
            entry(5, 9005, NodeState::Up, 1),
        ];
        let mut a = a;
        a.push(entry(5, 9105, NodeState::Up, 1));
        let ab = merged(&a, &b);
        let ba = merged(&b, &a);
        assert_eq!(ab, ba, "commutative");
        assert_eq!(merged(&ab.entries(), &b), ab, "idempotent");
        assert_eq!(merged(&ab.entries(), &ab.entries()), ab, "idempotent");
        assert_eq!(ab.get(1).unwrap().addresses.raft_addr, addr(9001));
        assert_eq!(ab.get(2).unwrap().state, NodeState::Removing);
        assert_eq!(ab.get(3).unwrap().state, NodeState::Removing);
        assert_eq!(ab.get(4).unwrap().generation, 1);
        assert_eq!(ab.get(5).unwrap().addresses.raft_addr, addr(9105));
        // A lower generation never wins.
        let mut d = ab.clone();
        assert!(!d.merge_entry(entry(1, 9999, NodeState::Up, 1)));
        assert_eq!(d, ab);
    }

    #[test]
    fn removed_is_terminal() {
        let mut d = NodeDirectory::from_entries([entry(7, 9007, NodeState::Removed, 2)]);
        assert!(!d.merge_entry(entry(7, 9107, NodeState::Up, 50)));
        assert_eq!(d.state_of(7), Some(NodeState::Removed));
        // From the other side too.
        let mut d2 = NodeDirectory::from_entries([entry(7, 9107, NodeState::Up, 50)]);
        assert!(d2.merge_entry(entry(7, 9007, NodeState::Removed, 2)));
        assert_eq!(d2, d);
        let e = d.add_node(7, entry(7, 9007, NodeState::Up, 1).addresses, true);
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("removed id cannot be added"),
            "re-adding a removed id"
        );
        let e = d.assert_own(7, NodeAddresses::default()).unwrap_err();
        assert!(e.to_string().contains("was removed"), "{e}");
    }

    #[test]
    fn add_node_checks_ids_and_addresses() {
        let mut d = NodeDirectory::from_entries([entry(1, 9001, NodeState::Up, 1)]);
        let a4 = entry(4, 9004, NodeState::Up, 1).addresses;
        for bad in [0, 65536, 1 << 40] {
            let e = d.add_node(bad, a4, false).unwrap_err();
            assert!(e.to_string().contains("out of range"), "{e}");
        }
        let e = d.add_node(4, NodeAddresses::default(), false).unwrap_err();
        assert!(e.to_string().contains("raft address"), "{e}");
        let added = d.add_node(4, a4, false).unwrap().unwrap();
        assert_eq!((added.state, added.generation), (NodeState::Up, 1));
        assert_eq!(
            d.add_node(4, a4, false).unwrap(),
            None,
            "same again: nothing"
        );
        // Filling in an address not known yet is fine; another raft address is not,
        // unless the node registers itself.
        let with_client = NodeAddresses {
            client_addr: addr(7004),
            ..a4
        };
        assert_eq!(
            d.add_node(4, with_client, false)
                .unwrap()
                .unwrap()
                .generation,
            2
        );
        let moved = entry(4, 9904, NodeState::Up, 1).addresses;
        let e = d.add_node(4, moved, false).unwrap_err();
        assert!(e.to_string().contains("other addresses"), "{e}");
        let e = d.add_node(4, moved, true).unwrap().unwrap();
        assert_eq!((e.addresses.raft_addr, e.generation), (addr(9904), 3));
        assert_eq!(e.addresses.client_addr, addr(7004), "kept");
    }

    #[test]
    fn remove_node_keeps_three_up_nodes() {
        let mut d = NodeDirectory::from_entries(
            (1..=4).map(|i| entry(i, 9000 + i as u16, NodeState::Up, 1)),
        );
        let e = d.remove_node(9).unwrap_err();
        assert!(e.to_string().contains("not in the cluster"), "{e}");
        let r = d.remove_node(4).unwrap().unwrap();
        assert_eq!((r.state, r.generation), (NodeState::Removing, 2));
        assert_eq!(d.remove_node(4).unwrap(), None, "again: nothing");
        let e = d.remove_node(3).unwrap_err();
        assert!(e.to_string().contains("would leave 2 up node(s)"), "{e}");
        let e = d
            .add_node(4, entry(4, 9004, NodeState::Up, 1).addresses, true)
            .unwrap_err();
        assert!(e.to_string().contains("state removing"), "{e}");
        assert!(
            d.mark_removed(3).is_err(),
            "an up node is not marked removed"
        );
        assert_eq!(
            d.mark_removed(4).unwrap().unwrap().state,
            NodeState::Removed
        );
    }

    #[test]
    fn own_addresses_bump_the_generation_and_keep_the_state() {
        let mut d = NodeDirectory::from_entries([entry(2, 9002, NodeState::Removing, 5)]);
        assert_eq!(
            d.assert_own(2, entry(2, 9002, NodeState::Up, 1).addresses)
                .unwrap(),
            None
        );
        let e = d
            .assert_own(2, entry(2, 9102, NodeState::Up, 1).addresses)
            .unwrap()
            .unwrap();
        assert_eq!((e.state, e.generation), (NodeState::Removing, 6));
    }

    #[test]
    fn persistence_round_trips_and_a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeDirectory::load(dir.path()).unwrap(), None);
        let d = NodeDirectory::from_entries([
            entry(1, 9001, NodeState::Up, 3),
            entry(2, 9002, NodeState::Removed, 4),
        ]);
        d.save(dir.path()).unwrap();
        assert_eq!(NodeDirectory::load(dir.path()).unwrap(), Some(d.clone()));
        let path = dir.path().join(DIRECTORY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let e = NodeDirectory::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        std::fs::write(&path, [1u8, 2]).unwrap();
        let e = NodeDirectory::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
        // A good checksum over bytes that are no directory.
        let body = [0xffu8; 9];
        let mut bytes = crc32c::crc32c(&body).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        std::fs::write(&path, &bytes).unwrap();
        let e = NodeDirectory::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("node directory"), "{e}");
    }
}
