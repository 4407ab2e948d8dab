//! Replica placement: which replicas to move and which leaderships to transfer, as a
//! pure function of the cluster as the gossip shows it (issue 9's balancer).
//!
//! [`plan`] does no I/O, reads no clock and knows nothing of the store: a balancer calls it
//! every few seconds with the nodes, the regions and the number of moves still running,
//! and carries out what it returns with [`super::NodeHandle::move_replica`] and
//! [`super::NodeHandle::transfer_leader`]. Everything it returns is in a deterministic
//! order (regions and nodes by id, never a hash map's order), so the same view always
//! gives the same plan.
//!
//! A move is the four-step dance of `membership.rs` (learner → caught up → promote →
//! leadership away → remove), one voter change at a time: it is slow (a snapshot to
//! send) and it needs the region to commit four entries. Hence the rules, in priority
//! order:
//!
//! 1. **Re-replicate** (safety first): a replica on a `down` node moves to a live node.
//!    Regions with the most down voters go first (they are closest to losing their
//!    quorum). A region whose live voters are not a quorum is skipped: it cannot commit
//!    the change, and asking would only hold a move slot.
//! 2. **Drain**: leaderships on `draining` nodes are transferred to a live voter on a
//!    non-draining node (cheap, and the node stops serving at once), then the replicas
//!    there (voters and learners) move off.
//! 3. **Replica balance**: while the replica counts (voters + learners) of the live,
//!    non-draining nodes differ by more than one, a replica moves from the most loaded
//!    node to the least loaded one that lacks the region, preferring a region whose leader
//!    is elsewhere (no leadership transfer inside the move). A move is only ever taken
//!    from a node above the share it will end with to one below it (`helps`), so no
//!    replica moves twice and "within one of the mean" is reached in the fewest moves;
//!    every move also lowers the sum of the squared counts, so the rule cannot undo
//!    itself from one plan to the next.
//! 4. **Leader balance**: while the leader counts of those nodes differ by more than one,
//!    leaderships are transferred towards the node with the fewest, only to nodes that hold
//!    a voter of the region. When no region of the most loaded node has a voter on the
//!    least loaded one, the transfer goes along a chain (A leads a region with a voter on
//!    B, B one with a voter on C): the shortest chain that helps is taken, only its last
//!    links when the plan has fewer transfers left than the chain is long.
//!
//! In every rule the target of a move is the live, non-draining node without a replica of
//! the region that has the fewest replicas (ties: the lowest id); with none, the region is
//! left as it is. A plan acts at most once on a region, never on a `busy` one (a move in
//! flight, or frozen for a merge), starts at most `max_concurrent_moves - moves_in_flight`
//! moves and transfers at most `leader_transfers_max` leaderships (rules 2 and 4
//! together). Each chosen action updates the counts the next choice sees: a move adds one
//! replica to its target and takes one from its source (and the leadership with it, when
//! it moves the leader's replica, as `move_replica` does). A balanced, healthy cluster
//! plans nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The limits of one plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementConfig {
    /// Replica moves running in the cluster at once, at most (those already in flight
    /// count).
    pub max_concurrent_moves: usize,
    /// Leadership transfers one plan asks for, at most (draining and balancing together).
    pub leader_transfers_max: usize,
}

/// A node as the gossip shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementNode {
    /// The node's id.
    pub id: u64,
    /// Being removed: every replica and leadership moves off, none moves on.
    pub draining: bool,
    /// Not heard from for the node-down timeout: its replicas are re-created elsewhere.
    pub down: bool,
}

/// A region as the gossip shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRegion {
    /// The region's id.
    pub id: u64,
    /// The nodes holding its voters.
    pub voters: Vec<u64>,
    /// The nodes holding its learners.
    pub learners: Vec<u64>,
    /// The node of its leader, if one is known.
    pub leader: Option<u64>,
    /// A move already in flight, or frozen for a merge: the plan leaves it alone.
    pub busy: bool,
}

impl PlacementRegion {
    /// Whether `node` holds a replica (voter or learner) of the region.
    pub fn holds(&self, node: u64) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }
}

/// Why an action was planned, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlacementReason {
    /// The source node is down (rule 1).
    NodeDown,
    /// The source node is draining (rule 2).
    NodeDraining,
    /// The source node holds more replicas than its share (rule 3).
    ReplicaBalance,
    /// The source node leads more regions than its share (rule 4).
    LeaderBalance,
}

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementAction {
    /// Move the replica of `region_id` on `from` to `to`, keeping its role
    /// ([`super::NodeHandle::move_replica`]).
    MoveReplica {
        /// The region.
        region_id: u64,
        /// The node holding the replica now.
        from: u64,
        /// The node to hold it: live, not draining, without a replica of the region.
        to: u64,
        /// Why.
        reason: PlacementReason,
    },
    /// Transfer the leadership of `region_id` from `from` to the voter on `to`
    /// ([`super::NodeHandle::transfer_leader`]).
    TransferLeader {
        /// The region.
        region_id: u64,
        /// The node of its leader as the plan saw it.
        from: u64,
        /// The node holding the voter to lead: live, not draining.
        to: u64,
        /// Why.
        reason: PlacementReason,
    },
}

impl PlacementAction {
    /// The region the action is about.
    pub fn region_id(&self) -> u64 {
        match *self {
            PlacementAction::MoveReplica { region_id, .. }
            | PlacementAction::TransferLeader { region_id, .. } => region_id,
        }
    }
}

/// The actions that bring the cluster (`nodes`, `regions`) closer to a safe and balanced
/// placement, with `moves_in_flight` moves still running; see the module docs for the
/// rules. Nodes a region names but `nodes` does not are never a source, a target or
/// counted live: no action ever names one.
pub fn plan(
    nodes: &[PlacementNode],
    regions: &[PlacementRegion],
    moves_in_flight: usize,
    cfg: &PlacementConfig,
) -> Vec<PlacementAction> {
    let mut planner = Planner::new(nodes, regions, moves_in_flight, cfg);
    planner.re_replicate();
    planner.drain();
    planner.balance_replicas();
    planner.balance_leaders();
    planner.actions
}

/// One plan under construction: the counts as the actions chosen so far leave them.
struct Planner<'a> {
    /// Known nodes by id.
    nodes: BTreeMap<u64, PlacementNode>,
    /// Regions by id (the first of a duplicated id).
    regions: Vec<&'a PlacementRegion>,
    /// Replicas (voters + learners) per known node.
    replicas: BTreeMap<u64, usize>,
    /// Leaderships per known node.
    leaders: BTreeMap<u64, usize>,
    /// The regions with a replica on each known node, by id.
    by_node: BTreeMap<u64, Vec<&'a PlacementRegion>>,
    /// Regions this plan acted on.
    acted: BTreeSet<u64>,
    /// Moves this plan may still start.
    moves_left: usize,
    /// Transfers this plan may still ask for.
    transfers_left: usize,
    /// The plan.
    actions: Vec<PlacementAction>,
}

impl<'a> Planner<'a> {
    fn new(
        nodes: &[PlacementNode],
        regions: &'a [PlacementRegion],
        moves_in_flight: usize,
        cfg: &PlacementConfig,
    ) -> Self {
        let mut by_id = BTreeMap::new();
        for n in nodes {
            by_id.entry(n.id).or_insert(*n);
        }
        let mut sorted: Vec<&PlacementRegion> = regions.iter().collect();
        sorted.sort_by_key(|r| r.id);
        sorted.dedup_by_key(|r| r.id);
        let mut replicas: BTreeMap<u64, usize> = by_id.keys().map(|&id| (id, 0)).collect();
        let mut leaders = replicas.clone();
        let mut by_node: BTreeMap<u64, Vec<&PlacementRegion>> = BTreeMap::new();
        for &r in &sorted {
            for n in r.voters.iter().chain(&r.learners) {
                if let Some(c) = replicas.get_mut(n) {
                    *c += 1;
                    by_node.entry(*n).or_default().push(r);
                }
            }
            if let Some(c) = r.leader.and_then(|l| leaders.get_mut(&l)) {
                *c += 1;
            }
        }
        Planner {
            nodes: by_id,
            regions: sorted,
            replicas,
            leaders,
            by_node,
            acted: BTreeSet::new(),
            moves_left: cfg.max_concurrent_moves.saturating_sub(moves_in_flight),
            transfers_left: cfg.leader_transfers_max,
            actions: Vec::new(),
        }
    }

    /// Known and down.
    fn is_down(&self, node: u64) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.down)
    }

    /// Known, up and draining.
    fn is_draining(&self, node: u64) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.draining && !n.down)
    }

    /// Known, up and not draining: may receive replicas and leaderships.
    fn is_target(&self, node: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| !n.draining && !n.down)
    }

    /// The live, non-draining nodes, by id.
    fn targets(&self) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|&n| self.is_target(n))
            .collect()
    }

    /// Whether the plan may act on `r`: not busy, not acted on yet, and with a quorum of
    /// its voters on known, live nodes (otherwise it can commit no change).
    fn actionable(&self, r: &PlacementRegion) -> bool {
        let live = r
            .voters
            .iter()
            .filter(|&&v| self.nodes.get(&v).is_some_and(|n| !n.down))
            .count();
        !r.busy && !self.acted.contains(&r.id) && live > r.voters.len() / 2
    }

    /// The node a replica of `r` moves to: the live, non-draining node without one with the
    /// fewest replicas, the lowest id among equals.
    fn move_target(&self, r: &PlacementRegion) -> Option<u64> {
        self.targets()
            .into_iter()
            .filter(|&n| !r.holds(n))
            .min_by_key(|&n| (self.replicas[&n], n))
    }

    fn push_move(&mut self, r: &PlacementRegion, from: u64, to: u64, reason: PlacementReason) {
        debug_assert!(self.moves_left > 0 && r.holds(from) && !r.holds(to));
        self.moves_left -= 1;
        self.acted.insert(r.id);
        *self.replicas.get_mut(&from).expect("a known source") -= 1;
        *self.replicas.get_mut(&to).expect("a known target") += 1;
        if r.leader == Some(from) {
            // `move_replica` hands the leadership to the new voter before the removal.
            *self.leaders.get_mut(&from).expect("a known source") -= 1;
            *self.leaders.get_mut(&to).expect("a known target") += 1;
        }
        self.actions.push(PlacementAction::MoveReplica {
            region_id: r.id,
            from,
            to,
            reason,
        });
    }

    fn push_transfer(&mut self, r: &PlacementRegion, from: u64, to: u64, reason: PlacementReason) {
        debug_assert!(self.transfers_left > 0 && r.leader == Some(from));
        debug_assert!(r.voters.contains(&to) && from != to);
        self.transfers_left -= 1;
        self.acted.insert(r.id);
        *self.leaders.get_mut(&from).expect("a known leader") -= 1;
        *self.leaders.get_mut(&to).expect("a known target") += 1;
        self.actions.push(PlacementAction::TransferLeader {
            region_id: r.id,
            from,
            to,
            reason,
        });
    }

    /// Rule 1: replicas on down nodes, regions with the most down voters first.
    fn re_replicate(&mut self) {
        let mut todo: Vec<(usize, &'a PlacementRegion)> = self
            .regions
            .iter()
            .copied()
            .filter(|r| r.voters.iter().chain(&r.learners).any(|&n| self.is_down(n)))
            .map(|r| (r.voters.iter().filter(|&&v| self.is_down(v)).count(), r))
            .collect();
        todo.sort_by_key(|&(down, r)| (std::cmp::Reverse(down), r.id));
        for (_, r) in todo {
            if self.moves_left == 0 {
                return;
            }
            if !self.actionable(r) {
                continue;
            }
            // A down voter first (it counts against the quorum), then a down learner.
            let down_on = |nodes: &[u64]| nodes.iter().copied().filter(|&n| self.is_down(n)).min();
            let from = down_on(&r.voters).or_else(|| down_on(&r.learners));
            if let (Some(from), Some(to)) = (from, self.move_target(r)) {
                self.push_move(r, from, to, PlacementReason::NodeDown);
            }
        }
    }

    /// Rule 2: leaderships off draining nodes, then their replicas.
    fn drain(&mut self) {
        let regions = self.regions.clone();
        for &r in &regions {
            if self.transfers_left == 0 {
                break;
            }
            let Some(leader) = r.leader.filter(|&l| self.is_draining(l)) else {
                continue;
            };
            if !self.actionable(r) {
                continue;
            }
            let to = r
                .voters
                .iter()
                .copied()
                .filter(|&v| self.is_target(v))
                .min_by_key(|&v| (self.leaders[&v], v));
            if let Some(to) = to {
                self.push_transfer(r, leader, to, PlacementReason::NodeDraining);
            }
        }
        for &r in &regions {
            if self.moves_left == 0 {
                return;
            }
            if !self.actionable(r) {
                continue;
            }
            // A replica whose move needs no leadership transfer first, the lowest node id
            // among equals.
            let from = r
                .voters
                .iter()
                .chain(&r.learners)
                .copied()
                .filter(|&n| self.is_draining(n))
                .min_by_key(|&n| (r.leader == Some(n), n));
            if let (Some(from), Some(to)) = (from, self.move_target(r)) {
                self.push_move(r, from, to, PlacementReason::NodeDraining);
            }
        }
    }

    /// Rule 3: replicas from the most loaded live, non-draining nodes to the least loaded,
    /// until they are within one of each other.
    fn balance_replicas(&mut self) {
        while self.moves_left > 0 {
            let nodes = self.targets();
            let total = nodes.iter().map(|n| self.replicas[n]).sum();
            // The most loaded source, the least loaded target, a move that needs no
            // leadership transfer, the lowest ids: in this order.
            let mut best = None;
            for &src in &nodes {
                for &dst in &nodes {
                    let (cs, cd) = (self.replicas[&src], self.replicas[&dst]);
                    if !helps(cs, cd, total, nodes.len()) {
                        continue;
                    }
                    let Some(r) = self.region_to_move(src, dst) else {
                        continue;
                    };
                    let key = (std::cmp::Reverse(cs), cd, r.leader == Some(src), src, dst);
                    if best.as_ref().is_none_or(|(k, _)| key < *k) {
                        best = Some((key, r));
                    }
                }
            }
            let Some(((_, _, _, src, dst), r)) = best else {
                return;
            };
            self.push_move(r, src, dst, PlacementReason::ReplicaBalance);
        }
    }

    /// The region whose replica on `src` moves to `dst`: one the plan may act on that
    /// `dst` lacks, led elsewhere if possible, the lowest id among equals.
    fn region_to_move(&self, src: u64, dst: u64) -> Option<&'a PlacementRegion> {
        self.by_node
            .get(&src)?
            .iter()
            .copied()
            .filter(|r| !r.holds(dst) && self.actionable(r))
            .min_by_key(|r| (r.leader == Some(src), r.id))
    }

    /// Rule 4: leaderships towards the live, non-draining nodes that lead the fewest, until
    /// their counts are within one of each other.
    fn balance_leaders(&mut self) {
        while self.transfers_left > 0 {
            let nodes = self.targets();
            // edges[u][v]: the lowest region led by u with a voter on v that may move.
            let mut edges: BTreeMap<u64, BTreeMap<u64, &'a PlacementRegion>> = BTreeMap::new();
            for &r in &self.regions {
                let Some(u) = r.leader.filter(|&l| self.is_target(l)) else {
                    continue;
                };
                if !r.voters.contains(&u) || !self.actionable(r) {
                    continue;
                }
                for &v in &r.voters {
                    if v != u && self.is_target(v) {
                        edges.entry(u).or_default().entry(v).or_insert(r);
                    }
                }
            }
            let Some(path) = self.shortest_leader_path(&nodes, &edges) else {
                return;
            };
            // A chain longer than the transfers left: its last links only. A node inside
            // a shortest chain leads more than its end (or the chain would be shorter)
            // without being above its share (or the chain would stop there), so this
            // loses nothing, and the next plan finds a shorter chain.
            let links = path.len() - 1;
            let skip = links.saturating_sub(self.transfers_left);
            for w in path[skip..].windows(2) {
                let r = edges[&w[0]][&w[1]];
                self.push_transfer(r, w[0], w[1], PlacementReason::LeaderBalance);
            }
        }
    }

    /// The shortest chain of leadership transfers u → … → v that [`helps`]; among equally
    /// short ones, the busiest u, then the idlest v, then the lowest ids.
    fn shortest_leader_path(
        &self,
        nodes: &[u64],
        edges: &BTreeMap<u64, BTreeMap<u64, &'a PlacementRegion>>,
    ) -> Option<Vec<u64>> {
        let total = nodes.iter().map(|n| self.leaders[n]).sum();
        // ((length, busiest u, idlest v, u, v), the chain).
        type Key = (usize, std::cmp::Reverse<usize>, usize, u64, u64);
        let mut best: Option<(Key, Vec<u64>)> = None;
        for &u in nodes {
            let lu = self.leaders[&u];
            let mut parent: BTreeMap<u64, u64> = BTreeMap::new();
            let mut dist: BTreeMap<u64, usize> = BTreeMap::from([(u, 0)]);
            let mut queue = VecDeque::from([u]);
            let mut found: Option<(usize, usize, u64)> = None;
            while let Some(x) = queue.pop_front() {
                let d = dist[&x];
                if found.is_some_and(|(fd, _, _)| d >= fd) {
                    break;
                }
                for &y in edges.get(&x).map(|e| e.keys()).into_iter().flatten() {
                    if dist.contains_key(&y) {
                        continue;
                    }
                    dist.insert(y, d + 1);
                    parent.insert(y, x);
                    queue.push_back(y);
                    let ly = self.leaders[&y];
                    if helps(lu, ly, total, nodes.len())
                        && found.is_none_or(|(_, fl, fy)| (ly, y) < (fl, fy))
                    {
                        found = Some((d + 1, ly, y));
                    }
                }
            }
            let Some((d, ly, v)) = found else {
                continue;
            };
            let key = (d, std::cmp::Reverse(lu), ly, u, v);
            if best.as_ref().is_some_and(|(k, _)| *k <= key) {
                continue;
            }
            let mut path = vec![v];
            let mut x = v;
            while x != u {
                x = parent[&x];
                path.push(x);
            }
            path.reverse();
            best = Some((key, path));
        }
        best.map(|(_, path)| path)
    }
}

/// Whether taking one of `total` items (replicas, leaderships) from a node holding `from`
/// and giving it to one holding `to` brings `nodes` nodes closer to holding
/// `total / nodes` or one more each, with no item that will have to move again: the source
/// is above the share it will end with and the target below. Where the counts differ by
/// more than one, the most and the least loaded node always pass.
fn helps(from: usize, to: usize, total: usize, nodes: usize) -> bool {
    let lo = total / nodes;
    let hi = total.div_ceil(nodes);
    (from > hi && to < hi) || (from > lo && to < lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PlacementAction::{MoveReplica, TransferLeader};
    use PlacementReason::{LeaderBalance, NodeDown, NodeDraining, ReplicaBalance};

    fn nodes(ids: std::ops::RangeInclusive<u64>) -> Vec<PlacementNode> {
        ids.map(|id| PlacementNode {
            id,
            draining: false,
            down: false,
        })
        .collect()
    }

    fn set(nodes: &mut [PlacementNode], id: u64, draining: bool, down: bool) {
        let n = nodes.iter_mut().find(|n| n.id == id).unwrap();
        n.draining = draining;
        n.down = down;
    }

    fn region(id: u64, voters: &[u64], leader: Option<u64>) -> PlacementRegion {
        PlacementRegion {
            id,
            voters: voters.to_vec(),
            learners: Vec::new(),
            leader,
            busy: false,
        }
    }

    fn cfg(max_concurrent_moves: usize, leader_transfers_max: usize) -> PlacementConfig {
        PlacementConfig {
            max_concurrent_moves,
            leader_transfers_max,
        }
    }

    fn mv(region_id: u64, from: u64, to: u64, reason: PlacementReason) -> PlacementAction {
        MoveReplica {
            region_id,
            from,
            to,
            reason,
        }
    }

    fn tl(region_id: u64, from: u64, to: u64, reason: PlacementReason) -> PlacementAction {
        TransferLeader {
            region_id,
            from,
            to,
            reason,
        }
    }

    #[test]
    fn a_balanced_healthy_cluster_plans_nothing() {
        let regions: Vec<_> = (1..=3).map(|r| region(r, &[1, 2, 3], Some(r))).collect();
        assert_eq!(plan(&nodes(1..=3), &regions, 0, &cfg(4, 4)), vec![]);
        // Five nodes, each with three replicas and one leadership.
        let regions: Vec<_> = (1..=5u64)
            .map(|r| region(r, &[r, r % 5 + 1, (r + 1) % 5 + 1], Some(r)))
            .collect();
        assert_eq!(plan(&nodes(1..=5), &regions, 0, &cfg(4, 4)), vec![]);
        // Within one of each other is balanced: 4 and 3 replicas, 2 and 1 leaderships.
        let regions = vec![
            region(1, &[1, 2, 3], Some(1)),
            region(2, &[2, 3, 4], Some(2)),
            region(3, &[3, 4, 1], Some(3)),
            region(4, &[4, 1, 2], Some(4)),
            region(5, &[1, 2, 3], Some(1)),
        ];
        assert_eq!(plan(&nodes(1..=4), &regions, 0, &cfg(4, 4)), vec![]);
    }

    #[test]
    fn a_voter_on_a_down_node_moves_to_the_live_node_with_fewest_replicas() {
        let mut ns = nodes(1..=5);
        set(&mut ns, 1, false, true);
        let regions = vec![
            region(10, &[1, 2, 3], Some(2)),
            region(20, &[4, 2, 3], Some(4)),
        ];
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(4, 4)),
            vec![mv(10, 1, 5, NodeDown)]
        );
        // Equally loaded targets: the lowest id.
        let regions = vec![region(10, &[1, 2, 3], Some(2))];
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(4, 4)),
            vec![mv(10, 1, 4, NodeDown)]
        );
    }

    #[test]
    fn a_learner_on_a_down_node_moves_too() {
        let mut ns = nodes(1..=5);
        set(&mut ns, 1, false, true);
        let mut r = region(7, &[2, 3, 4], Some(2));
        r.learners = vec![1];
        assert_eq!(plan(&ns, &[r], 0, &cfg(4, 4)), vec![mv(7, 1, 5, NodeDown)]);
    }

    #[test]
    fn regions_with_the_most_down_voters_go_first() {
        let mut ns = nodes(1..=7);
        set(&mut ns, 1, false, true);
        set(&mut ns, 2, false, true);
        let regions = vec![
            region(1, &[1, 3, 4], Some(3)),
            // Two of five voters down: still a quorum, and closer to losing it.
            region(2, &[1, 2, 3, 4, 5], Some(3)),
        ];
        // (No leader transfers: node 3 leads both.)
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(1, 0)),
            vec![mv(2, 1, 6, NodeDown)]
        );
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(2, 0)),
            vec![mv(2, 1, 6, NodeDown), mv(1, 1, 7, NodeDown)]
        );
    }

    #[test]
    fn a_region_without_a_quorum_of_live_voters_is_left_alone() {
        let mut ns = nodes(1..=6);
        set(&mut ns, 1, false, true);
        set(&mut ns, 2, false, true);
        let regions = vec![
            region(1, &[1, 2, 3], Some(3)),
            region(2, &[1, 4, 5], Some(4)),
        ];
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(4, 4)),
            vec![mv(2, 1, 6, NodeDown)]
        );
        // Voters on nodes nobody knows are not live either.
        let regions = vec![region(1, &[3, 8, 9], Some(3))];
        assert_eq!(plan(&ns, &regions, 0, &cfg(4, 4)), vec![]);
    }

    #[test]
    fn without_a_valid_target_nothing_is_planned() {
        // Three nodes, one down: every live node holds the region already.
        let mut ns = nodes(1..=3);
        set(&mut ns, 3, false, true);
        let regions = vec![region(1, &[1, 2, 3], Some(1))];
        assert_eq!(plan(&ns, &regions, 0, &cfg(4, 4)), vec![]);
        // Three nodes, one draining: the leader leaves it, the replica cannot.
        let mut ns = nodes(1..=3);
        set(&mut ns, 3, true, false);
        let regions = vec![region(1, &[1, 2, 3], Some(3))];
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(4, 4)),
            vec![tl(1, 3, 1, NodeDraining)]
        );
    }

    #[test]
    fn a_busy_region_is_left_alone() {
        let mut ns = nodes(1..=5);
        set(&mut ns, 1, false, true);
        set(&mut ns, 2, true, false);
        let mut regions = vec![
            region(1, &[1, 3, 4], Some(3)),
            region(2, &[2, 3, 4], Some(2)),
        ];
        regions.iter_mut().for_each(|r| r.busy = true);
        assert_eq!(plan(&ns, &regions, 0, &cfg(4, 4)), vec![]);
        regions[1].busy = false;
        // Node 3 leads the busy region 1 (counted), node 4 nothing.
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(4, 4)),
            vec![tl(2, 2, 4, NodeDraining)]
        );
    }

    #[test]
    fn moves_stop_at_the_limit_counting_those_in_flight() {
        let mut ns = nodes(1..=6);
        set(&mut ns, 1, false, true);
        let regions: Vec<_> = (1..=4).map(|r| region(r, &[1, 2, 3], Some(2))).collect();
        // Each move counts for the next target: 4, 5 and 6 get one each. (No leader
        // transfers here: node 2 leads all four.)
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(3, 0)),
            vec![
                mv(1, 1, 4, NodeDown),
                mv(2, 1, 5, NodeDown),
                mv(3, 1, 6, NodeDown)
            ]
        );
        assert_eq!(
            plan(&ns, &regions, 2, &cfg(3, 0)),
            vec![mv(1, 1, 4, NodeDown)]
        );
        assert_eq!(plan(&ns, &regions, 3, &cfg(3, 0)), vec![]);
        assert_eq!(plan(&ns, &regions, 5, &cfg(3, 0)), vec![]);
    }

    #[test]
    fn moves_in_flight_leave_leader_transfers_alone() {
        let mut ns = nodes(1..=4);
        set(&mut ns, 1, true, false);
        let regions = vec![region(1, &[1, 2, 3], Some(1))];
        assert_eq!(
            plan(&ns, &regions, 2, &cfg(2, 1)),
            vec![tl(1, 1, 2, NodeDraining)]
        );
    }

    #[test]
    fn a_drain_moves_leaders_first_then_voters_and_learners() {
        let mut ns = nodes(1..=5);
        set(&mut ns, 1, true, false);
        let mut r3 = region(3, &[2, 3, 4], Some(3));
        r3.learners = vec![1];
        let regions = vec![
            region(1, &[1, 2, 3], Some(1)),
            region(2, &[1, 2, 3], Some(2)),
            r3,
        ];
        // Leaders: 1 on node 1, 2 and 3, none on 4 and 5; region 1's voters on live
        // nodes are on 2 and 3, which lead one each: the lowest id. Region 2 goes to node
        // 5 (no replica), region 3's learner to 5 as well (the only node without one).
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(5, 5)),
            vec![
                tl(1, 1, 2, NodeDraining),
                mv(2, 1, 5, NodeDraining),
                mv(3, 1, 5, NodeDraining),
            ]
        );
        // No transfer left: the leader's replica moves, the leadership with it. Region 1
        // goes first, to node 5 (none there), then region 2 to node 4 (one each now).
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(5, 0)),
            vec![
                mv(1, 1, 5, NodeDraining),
                mv(2, 1, 4, NodeDraining),
                mv(3, 1, 5, NodeDraining),
            ]
        );
    }

    #[test]
    fn a_region_is_acted_on_once_per_plan() {
        let mut ns = nodes(1..=5);
        set(&mut ns, 1, false, true);
        set(&mut ns, 2, true, false);
        // A down voter and a draining leader: the down voter moves, nothing else.
        let regions = vec![region(1, &[1, 2, 3], Some(2))];
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(5, 5)),
            vec![mv(1, 1, 4, NodeDown)]
        );
    }

    #[test]
    fn replica_balance_moves_a_region_led_elsewhere_to_the_least_loaded_node() {
        let regions = vec![
            region(1, &[1, 2, 3], Some(1)),
            region(2, &[1, 2, 3], Some(2)),
        ];
        // Counts 2, 2, 2, 0: node 1 (most, lowest id) gives region 2 (led by node 2) to 4.
        assert_eq!(
            plan(&nodes(1..=4), &regions, 0, &cfg(5, 5)),
            vec![mv(2, 1, 4, ReplicaBalance)]
        );
        // Counts 3, 2, 2, 2, 0, node 1 leading all three: only its own regions to give.
        // The move takes region 1's leadership to node 5 (counted), so leaders are 2 on
        // node 1, 1 on node 5: one more goes, to the idlest voter's node (2 over 4).
        let regions = vec![
            region(1, &[1, 2, 3], Some(1)),
            region(2, &[1, 2, 4], Some(1)),
            region(3, &[1, 3, 4], Some(1)),
        ];
        assert_eq!(
            plan(&nodes(1..=5), &regions, 0, &cfg(5, 5)),
            vec![mv(1, 1, 5, ReplicaBalance), tl(2, 1, 2, LeaderBalance)]
        );
        let regions = vec![
            region(1, &[1, 2, 3], Some(1)),
            region(2, &[1, 2, 3], Some(1)),
            region(3, &[1, 2, 3], Some(1)),
        ];
        // Counts 3, 3, 3, 0, 0: nodes 2 and 3 give regions they do not lead first; then
        // node 1 has only its own regions left to give, and its leadership goes along.
        assert_eq!(
            plan(&nodes(1..=5), &regions, 0, &cfg(5, 5)),
            vec![
                mv(1, 2, 4, ReplicaBalance),
                mv(2, 3, 5, ReplicaBalance),
                mv(3, 1, 4, ReplicaBalance),
            ]
        );
    }

    #[test]
    fn leaders_go_from_the_most_to_the_fewest() {
        let regions: Vec<_> = (1..=6).map(|r| region(r, &[1, 2, 3], Some(1))).collect();
        assert_eq!(
            plan(&nodes(1..=3), &regions, 0, &cfg(5, 10)),
            vec![
                tl(1, 1, 2, LeaderBalance),
                tl(2, 1, 3, LeaderBalance),
                tl(3, 1, 2, LeaderBalance),
                tl(4, 1, 3, LeaderBalance),
            ]
        );
        // At most `leader_transfers_max` per plan.
        assert_eq!(
            plan(&nodes(1..=3), &regions, 0, &cfg(5, 1)),
            vec![tl(1, 1, 2, LeaderBalance)]
        );
        assert_eq!(plan(&nodes(1..=3), &regions, 0, &cfg(5, 0)), vec![]);
    }

    #[test]
    fn leaders_go_only_to_voters_along_a_chain_when_needed() {
        // Node 1 leads regions 1-4 (voters on 1, 2, 3; a learner on 4), nodes 2 and 3
        // lead 5-8 (voters on 2, 3, 4). Node 4 holds no voter of node 1's regions: its
        // leaderships come from node 2, which takes some of node 1's. No moves allowed.
        let mut regions: Vec<_> = (1..=4)
            .map(|r| {
                let mut r = region(r, &[1, 2, 3], Some(1));
                r.learners = vec![4];
                r
            })
            .collect();
        regions.extend((5..=8).map(|r| region(r, &[2, 3, 4], Some(2 + (r - 5) % 2))));
        assert_eq!(
            plan(&nodes(1..=4), &regions, 0, &cfg(0, 10)),
            vec![
                tl(1, 1, 2, LeaderBalance),
                tl(5, 2, 4, LeaderBalance),
                tl(2, 1, 2, LeaderBalance),
                tl(7, 2, 4, LeaderBalance),
            ]
        );
        // One transfer per plan: a chain's last link goes first.
        let first = plan(&nodes(1..=4), &regions, 0, &cfg(0, 1));
        assert_eq!(first, vec![tl(5, 2, 4, LeaderBalance)]);
    }

    #[test]
    fn a_region_without_a_known_leader_is_skipped() {
        let mut regions: Vec<_> = (1..=4).map(|r| region(r, &[1, 2, 3], None)).collect();
        assert_eq!(plan(&nodes(1..=3), &regions, 0, &cfg(5, 5)), vec![]);
        regions[2].leader = Some(1);
        regions[3].leader = Some(1);
        // Node 1 leads two, the others none: one transfer, never of a leaderless region.
        assert_eq!(
            plan(&nodes(1..=3), &regions, 0, &cfg(5, 5)),
            vec![tl(3, 1, 2, LeaderBalance)]
        );
        // A draining node's leaderless region: nothing to transfer, the replica moves.
        let mut ns = nodes(1..=4);
        set(&mut ns, 1, true, false);
        let regions = vec![region(1, &[1, 2, 3], None)];
        assert_eq!(
            plan(&ns, &regions, 0, &cfg(5, 5)),
            vec![mv(1, 1, 4, NodeDraining)]
        );
    }

    #[test]
    fn an_unknown_node_is_never_named() {
        // Node 9 is in no gossip: not live, not a source, not a target, its leadership
        // not counted.
        let regions = vec![
            region(1, &[1, 2, 9], Some(9)),
            region(2, &[1, 2, 9], Some(9)),
            region(3, &[1, 2, 9], Some(9)),
        ];
        let actions = plan(&nodes(1..=4), &regions, 0, &cfg(5, 5));
        for a in &actions {
            let (from, to) = match *a {
                MoveReplica { from, to, .. } | TransferLeader { from, to, .. } => (from, to),
            };
            assert!(from != 9 && to != 9, "{a:?}");
        }
        // Counts 3, 3, 0, 0 on known nodes: nodes 1 and 2 give one each to 3 and 4.
        assert_eq!(
            actions,
            vec![mv(1, 1, 3, ReplicaBalance), mv(2, 2, 4, ReplicaBalance)]
        );
    }

    /// splitmix64: a small, seeded, deterministic generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn one_in(&mut self, n: u64) -> bool {
            self.below(n) == 0
        }
    }

    const VOTERS: usize = 3;

    /// A cluster the simulation applies plans to: a move starts as a learner on its
    /// target (the region busy) and completes before the next plan's actions start.
    struct Cluster {
        nodes: Vec<PlacementNode>,
        regions: Vec<PlacementRegion>,
        in_flight: Vec<(usize, u64, u64)>,
        moves: usize,
        /// Moves of a leader's replica (the leadership went along).
        leader_moves: usize,
        transfers: usize,
        /// Actions applied, by reason.
        reasons: BTreeMap<PlacementReason, usize>,
    }

    impl Cluster {
        fn target(&self, id: u64) -> bool {
            self.nodes
                .iter()
                .any(|n| n.id == id && !n.down && !n.draining)
        }

        fn known(&self, id: u64) -> bool {
            self.nodes.iter().any(|n| n.id == id)
        }

        /// Checks a plan against the state it was made from.
        fn check(&self, actions: &[PlacementAction], cfg: &PlacementConfig) -> Result<(), String> {
            let mut seen = BTreeSet::new();
            let mut moves = 0;
            let mut transfers = 0;
            for a in actions {
                let id = a.region_id();
                if !seen.insert(id) {
                    return Err(format!("{a:?}: region {id} twice in one plan"));
                }
                let r = self
                    .regions
                    .iter()
                    .find(|r| r.id == id)
                    .ok_or(format!("{a:?}: no such region"))?;
                if r.busy {
                    return Err(format!("{a:?}: region busy"));
                }
                match *a {
                    MoveReplica { from, to, .. } => {
                        moves += 1;
                        if !self.known(from) || !r.holds(from) {
                            return Err(format!("{a:?}: source holds no replica"));
                        }
                        if !self.target(to) || r.holds(to) {
                            return Err(format!("{a:?}: bad target for {r:?}"));
                        }
                    }
                    TransferLeader { from, to, .. } => {
                        transfers += 1;
                        if r.leader != Some(from) || !r.voters.contains(&to) || from == to {
                            return Err(format!("{a:?}: bad transfer of {r:?}"));
                        }
                        if !self.target(to) {
                            return Err(format!("{a:?}: to a down or draining node"));
                        }
                    }
                }
            }
            if self.in_flight.len() + moves > cfg.max_concurrent_moves {
                return Err(format!(
                    "{moves} moves with {} in flight, limit {}",
                    self.in_flight.len(),
                    cfg.max_concurrent_moves
                ));
            }
            if transfers > cfg.leader_transfers_max {
                return Err(format!("{transfers} transfers"));
            }
            Ok(())
        }

        /// Completes the moves in flight, then starts `actions`.
        fn apply(&mut self, actions: &[PlacementAction]) {
            for (i, from, to) in std::mem::take(&mut self.in_flight) {
                let r = &mut self.regions[i];
                r.learners.retain(|&n| n != to);
                if let Some(v) = r.voters.iter_mut().find(|v| **v == from) {
                    *v = to;
                } else {
                    let l = r.learners.iter_mut().find(|l| **l == from).unwrap();
                    *l = to;
                }
                if r.leader == Some(from) {
                    r.leader = Some(to);
                }
                r.busy = false;
            }
            for a in actions {
                let reason = match *a {
                    MoveReplica { reason, .. } | TransferLeader { reason, .. } => reason,
                };
                *self.reasons.entry(reason).or_default() += 1;
                let i = self
                    .regions
                    .iter()
                    .position(|r| r.id == a.region_id())
                    .unwrap();
                let r = &mut self.regions[i];
                match *a {
                    MoveReplica { from, to, .. } => {
                        self.moves += 1;
                        self.leader_moves += usize::from(r.leader == Some(from));
                        r.learners.push(to);
                        r.busy = true;
                        self.in_flight.push((i, from, to));
                    }
                    TransferLeader { to, .. } => {
                        self.transfers += 1;
                        r.leader = Some(to);
                    }
                }
            }
        }

        /// No region with two replicas on a node, or with other than `VOTERS` voters.
        fn check_regions(&self) -> Result<(), String> {
            for r in &self.regions {
                let mut all: Vec<u64> = r.voters.iter().chain(&r.learners).copied().collect();
                all.sort_unstable();
                all.dedup();
                if all.len() != r.voters.len() + r.learners.len() || r.voters.len() != VOTERS {
                    return Err(format!("bad region {r:?}"));
                }
            }
            Ok(())
        }

        /// max - min of `count` over the live, non-draining nodes.
        fn spread(&self, count: impl Fn(u64) -> usize) -> usize {
            let counts: Vec<usize> = self
                .nodes
                .iter()
                .filter(|n| self.target(n.id))
                .map(|n| count(n.id))
                .collect();
            counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0)
        }

        /// The state a finished balancer must leave.
        fn check_settled(&self) -> Result<(), String> {
            let replicas = |n| self.regions.iter().filter(|r| r.holds(n)).count();
            let leaders = |n| self.regions.iter().filter(|r| r.leader == Some(n)).count();
            if self.spread(replicas) > 1 {
                return Err("replica counts more than one apart".into());
            }
            if self.spread(leaders) > 1 {
                return Err("leader counts more than one apart".into());
            }
            for r in &self.regions {
                let no_target = self
                    .nodes
                    .iter()
                    .all(|n| !self.target(n.id) || r.holds(n.id));
                for n in r.voters.iter().chain(&r.learners) {
                    if !self.target(*n) && !no_target {
                        return Err(format!("{r:?} left on down or draining node {n}"));
                    }
                }
                let led_on_target = r.leader.is_some_and(|l| self.target(l));
                if !led_on_target && r.voters.iter().any(|&v| self.target(v)) {
                    return Err(format!("{r:?} led from a down or draining node"));
                }
            }
            Ok(())
        }
    }

    /// A random cluster: 3-8 nodes, 1-120 regions of three voters (all on nodes 1-3 in a
    /// third of the seeds), some nodes draining, at most one down.
    fn random_cluster(rng: &mut Rng) -> Cluster {
        let n = 3 + rng.below(6);
        let mut nodes = nodes(1..=n);
        let skewed = rng.one_in(3);
        let regions = (0..1 + rng.below(120))
            .map(|i| {
                let mut voters = Vec::new();
                while voters.len() < VOTERS {
                    let v = 1 + rng.below(if skewed { 3 } else { n });
                    if !voters.contains(&v) {
                        voters.push(v);
                    }
                }
                let leader = voters[rng.below(VOTERS as u64) as usize];
                region(1000 + 7 * i, &voters, Some(leader))
            })
            .collect();
        for node in nodes.iter_mut() {
            node.draining = rng.one_in(5);
        }
        if rng.one_in(2) {
            let down = 1 + rng.below(n);
            nodes[down as usize - 1].down = true;
        }
        let mut c = Cluster {
            nodes,
            regions,
            in_flight: Vec::new(),
            moves: 0,
            leader_moves: 0,
            transfers: 0,
            reasons: BTreeMap::new(),
        };
        // A leader on the down node lost its leadership to a live voter.
        let down: Vec<u64> = c.nodes.iter().filter(|n| n.down).map(|n| n.id).collect();
        for r in &mut c.regions {
            if r.leader.is_some_and(|l| down.contains(&l)) {
                let live: Vec<u64> = r
                    .voters
                    .iter()
                    .copied()
                    .filter(|v| !down.contains(v))
                    .collect();
                r.leader = Some(live[rng.below(live.len() as u64) as usize]);
            }
        }
        c
    }

    /// Plans and applies until a plan is empty with no move in flight.
    fn settle(c: &mut Cluster, cfg: &PlacementConfig) -> Result<usize, String> {
        for plans in 1..=500 {
            let actions = plan(&c.nodes, &c.regions, c.in_flight.len(), cfg);
            c.check(&actions, cfg)?;
            if actions.is_empty() && c.in_flight.is_empty() {
                return Ok(plans);
            }
            c.apply(&actions);
            c.check_regions()?;
        }
        Err("not settled after 500 plans".into())
    }

    #[test]
    fn simulation_settles_every_random_cluster_balanced_and_safe() {
        let mut total_plans = 0;
        let mut reasons: BTreeMap<PlacementReason, usize> = BTreeMap::new();
        for seed in 0..200 {
            let mut rng = Rng(seed);
            let mut c = random_cluster(&mut rng);
            let cfg = cfg(1 + rng.below(6) as usize, 1 + rng.below(6) as usize);
            let outcome = settle(&mut c, &cfg).and_then(|plans| {
                c.check_settled()?;
                Ok(plans)
            });
            match outcome {
                Ok(plans) => {
                    total_plans += plans;
                    for (reason, n) in &c.reasons {
                        *reasons.entry(*reason).or_default() += n;
                    }
                }
                Err(e) => panic!(
                    "seed {seed}, {:?}, {cfg:?}: {e}\nregions: {:?}",
                    c.nodes, c.regions
                ),
            }
            // Settled means stable: the next plan is empty too.
            assert_eq!(plan(&c.nodes, &c.regions, 0, &cfg), vec![], "seed {seed}");
        }
        assert!(total_plans > 200, "the simulation did something");
        // Every rule had work to do in some seeds.
        for reason in [NodeDown, NodeDraining, ReplicaBalance, LeaderBalance] {
            assert!(reasons.get(&reason).is_some_and(|&n| n > 0), "{reasons:?}");
        }
    }

    #[test]
    fn growing_from_three_to_five_nodes_takes_the_fewest_moves() {
        // 30 regions on nodes 1-3 (10 leaderships each), nodes 4 and 5 new: 90 replicas,
        // 18 per node, so 36 moves (12 off each old node) and no more; 6 leaderships per
        // node, so 12 leaderships change nodes (by a transfer, or with a moved replica).
        let regions = (1..=30)
            .map(|r| region(r, &[1, 2, 3], Some(1 + r % 3)))
            .collect();
        let mut c = Cluster {
            nodes: nodes(1..=5),
            regions,
            in_flight: Vec::new(),
            moves: 0,
            leader_moves: 0,
            transfers: 0,
            reasons: BTreeMap::new(),
        };
        let cfg = cfg(4, 4);
        let first = plan(&c.nodes, &c.regions, 0, &cfg);
        assert_eq!(first.len(), 4);
        for a in &first {
            let MoveReplica {
                region_id, from, ..
            } = *a
            else {
                panic!("{a:?}");
            };
            let leader = c.regions.iter().find(|r| r.id == region_id).unwrap().leader;
            assert_ne!(leader, Some(from), "{a:?} needs a leadership transfer");
        }
        settle(&mut c, &cfg).unwrap();
        c.check_settled().unwrap();
        assert_eq!(c.moves, 36);
        assert_eq!(c.transfers + c.leader_moves, 12);
    }
}
