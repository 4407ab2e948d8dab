//! The balancer: spreads replicas and leaderships evenly over the nodes, drains nodes
//! being removed, and rebuilds the replicas of a node that stayed down longer than
//! `node_down_timeout` on the others.
//!
//! **One node decides.** The node whose replica leads the *first region* (the one that
//! starts at the empty key) is the coordinator: it was chosen through raft, and it changes
//! when that leadership moves. Every `interval` it reads the cluster view (the node
//! directory with liveness, every region with its peers and leader, as gossip shows them),
//! asks [`plan_placement`] what to do, and sends each action as an order
//! ([`NodeMessage::MoveReplica`], [`NodeMessage::TransferLeader`]) to the node leading the
//! region. Two coordinators can overlap only for the moment a leadership takes to change
//! hands; each order is checked again against the region's descriptor by the node that
//! carries it out, and raft takes one membership change of a region at a time, so a
//! duplicate order fails harmlessly.
//!
//! **Every node carries out orders.** A move runs [`NodeHandle::move_replica`] (learner,
//! caught up, promoted, leadership away, old replica removed) on the region's leader node,
//! one move per region at a time, and reports back with [`NodeMessage::MoveDone`]. The
//! moves a node is running are in its gossip, so `ctl status` shows them per node.
//!
//! **What the coordinator counts as in flight** (bounded by `max_concurrent_moves`): the
//! moves it ordered that have not been reported done and do not show in the view yet, and
//! every region with a learner (a move somebody else started, by hand say). Those regions
//! are left alone (`busy`) until the move ends.
//!
//! **Down, limbo, removed.** A node heard from within a few gossip intervals is alive; one
//! not heard from for `node_down_timeout` (counted from when this node became coordinator,
//! for a node never heard from) is down, and its replicas are rebuilt elsewhere. A node in
//! between is left out of the plan: no replica moves to or from it while it may be merely
//! restarting. A node being removed (`Removing`) is drained; once no region lists a replica
//! on it, the coordinator marks it `Removed`, and the transport forgets it.
//!
//! **A learner left behind** (its move died with its coordinator or executor, or a split
//! copied it into a new region) is removed once it has stayed a learner for
//! `stray_learner_timeout` with no move of this coordinator on its region.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{debug, info, warn};

use super::cluster::{ClusterView, NodeInfo, FORWARD_QUEUE_MAX};
use super::descriptor::PeerRole;
use super::directory::NodeState;
use super::error::NodeError;
use super::forward;
use super::membership::OnNode;
use super::node_message::{NodeMessage, RegionSummary};
use super::placement::{
    plan as plan_placement, PlacementAction, PlacementConfig, PlacementNode, PlacementRegion,
};
use super::NodeHandle;

/// The balancer's settings.
#[derive(Debug, Clone)]
pub struct BalancerConfig {
    /// Voters every region should have.
    pub replicas: usize,
    /// Whether this node balances (as coordinator) at all. Orders from another node's
    /// balancer are carried out either way.
    pub enabled: bool,
    /// How often the coordinator plans.
    pub interval: Duration,
    /// A node not heard from for this long is down: its replicas are rebuilt elsewhere.
    pub node_down_timeout: Duration,
    /// Replica moves under way at once in the whole cluster, at most.
    pub max_concurrent_moves: usize,
    /// Leadership transfers one plan starts, at most.
    pub leader_transfers_max: usize,
    /// An ordered move not reported done after this long is forgotten (and may be
    /// planned again).
    pub move_timeout: Duration,
    /// A learner with no move of the coordinator on its region for this long is removed,
    /// and a region with the wrong number of voters for this long is repaired.
    pub stray_learner_timeout: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            replicas: 3,
            enabled: false,
            interval: Duration::from_secs(2),
            node_down_timeout: Duration::from_secs(60),
            max_concurrent_moves: 4,
            leader_transfers_max: 8,
            move_timeout: Duration::from_secs(120),
            stray_learner_timeout: Duration::from_secs(60),
        }
    }
}

/// A move this node is carrying out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveMove {
    /// The region.
    pub region_id: u64,
    /// The node whose replica goes away (`None`: a voter is only added).
    pub from: Option<u64>,
    /// The node that gets one.
    pub to: u64,
}

/// The moves this node is carrying out, shared with status and gossip.
pub type ActiveMoves = Arc<Mutex<BTreeMap<u64, ActiveMove>>>;

/// A move the coordinator ordered and has not seen end.
#[derive(Debug, Clone, Copy)]
struct Order {
    /// The node whose replica goes (`None`: none).
    from: Option<u64>,
    /// The node that gets a voter (`None`: none).
    to: Option<u64>,
    sent: Instant,
}

/// How often the balancer thread looks at its inbox.
const POLL: Duration = Duration::from_millis(20);

/// The coordinator's memory between plans.
#[derive(Debug, Default)]
struct Coordinator {
    /// When this node last became coordinator (`None`: it is not).
    since: Option<Instant>,
    /// Moves ordered, by region.
    orders: BTreeMap<u64, Order>,
    /// Since when each (region, learner node) has been seen a learner.
    learners_seen: BTreeMap<(u64, u64), Instant>,
    /// Since when each region has been seen with the wrong number of voters.
    miscounted_seen: BTreeMap<u64, Instant>,
    /// When the coordinator last planned.
    planned: Option<Instant>,
}

/// Whether the view shows the ordered change of `region` finished: `to` holds a voter and
/// `from` nothing.
fn move_shows_done(r: &RegionSummary, o: &Order) -> bool {
    let on = |n: u64| r.peers.iter().find(|p| p.node_id == n);
    o.from.is_none_or(|f| on(f).is_none())
        && o.to
            .is_none_or(|t| on(t).is_some_and(|p| p.role == PeerRole::Voter))
}

/// A fix for a region with the wrong number of voters (a move that died half-way, a
/// replica on a node that left for good with no node to rebuild it on until now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Remove the voter on `node`: the region has more voters than it should.
    RemoveVoter {
        /// The region.
        region_id: u64,
        /// The node whose voter goes.
        node: u64,
    },
    /// Add a voter on `node` (a learner, promoted once caught up): the region has fewer
    /// voters than it should.
    AddVoter {
        /// The region.
        region_id: u64,
        /// The node that gets it.
        node: u64,
    },
}

/// What to fix in regions that are not busy and have the wrong number of voters:
/// one too many loses the voter on a down node first, then on a draining one, then on the
/// node holding the most replicas — never the leader's; one too few gets a voter on the
/// live, non-draining node without a replica that holds the fewest. A region is fixed
/// only while a quorum of its voters is on live nodes (else nothing can commit). At most
/// `max` repairs.
pub fn plan_repairs(
    nodes: &[PlacementNode],
    regions: &[PlacementRegion],
    replicas: usize,
    max: usize,
) -> Vec<Repair> {
    let node = |id: u64| nodes.iter().find(|n| n.id == id);
    let live = |id: u64| node(id).is_some_and(|n| !n.down);
    let mut load: BTreeMap<u64, usize> = nodes.iter().map(|n| (n.id, 0)).collect();
    for r in regions {
        for n in r.voters.iter().chain(&r.learners) {
            *load.entry(*n).or_insert(0) += 1;
        }
    }
    let mut out = Vec::new();
    for r in regions {
        if out.len() >= max {
            break;
        }
        if r.busy || !r.learners.is_empty() {
            continue;
        }
        let live_voters = r.voters.iter().filter(|&&n| live(n)).count();
        if live_voters * 2 <= r.voters.len() {
            continue;
        }
        if r.voters.len() > replicas {
            let rank = |n: u64| {
                let info = node(n);
                let class = match info {
                    None => 0,
                    Some(i) if i.down => 0,
                    Some(i) if i.draining => 1,
                    Some(_) => 2,
                };
                (
                    class,
                    std::cmp::Reverse(load.get(&n).copied().unwrap_or(0)),
                    n,
                )
            };
            if let Some(&n) = r
                .voters
                .iter()
                .filter(|&&n| Some(n) != r.leader)
                .min_by_key(|&&n| rank(n))
            {
                out.push(Repair::RemoveVoter {
                    region_id: r.id,
                    node: n,
                });
                if let Some(c) = load.get_mut(&n) {
                    *c = c.saturating_sub(1);
                }
            }
        } else if r.voters.len() < replicas {
            let target = nodes
                .iter()
                .filter(|n| !n.down && !n.draining && !r.voters.contains(&n.id))
                .min_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id));
            if let Some(t) = target {
                out.push(Repair::AddVoter {
                    region_id: r.id,
                    node: t.id,
                });
                *load.entry(t.id).or_insert(0) += 1;
            }
        }
    }
    out
}

/// Starts the balancer thread of a node: it carries out orders always, and coordinates
/// when `cfg.enabled` and this node leads the first region. Stops when `stop` is set.
pub(crate) fn start(
    cfg: BalancerConfig,
    handle: NodeHandle,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let node_id = handle.node_id();
    let view = handle.cluster().clone();
    let active = view.active_moves().clone();
    std::thread::Builder::new()
        .name(format!("balancer-{node_id}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(node = node_id, "balancer not started: {e}");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            // Requests other nodes forward to this one are served on this thread too.
            let (tx, rx) = tokio::sync::mpsc::channel(FORWARD_QUEUE_MAX);
            view.serve_forwards(tx);
            local.spawn_local(forward::serve(handle.clone(), rx));
            local.block_on(&rt, run(cfg, handle, view, active, stop));
        })
}

async fn run(
    cfg: BalancerConfig,
    handle: NodeHandle,
    view: Arc<ClusterView>,
    active: ActiveMoves,
    stop: Arc<AtomicBool>,
) {
    let inbox = view.subscribe();
    let me = handle.node_id();
    let mut coord = Coordinator::default();
    while !stop.load(Ordering::Relaxed) {
        while let Ok((from, msg)) = inbox.try_recv() {
            take_order(&handle, &view, &active, &mut coord, from, msg);
        }
        if cfg.enabled {
            for (to, msg) in coordinate(&cfg, &handle, &view, &mut coord) {
                if to == me {
                    take_order(&handle, &view, &active, &mut coord, me, msg);
                } else if let Err(e) = view.send(to, &msg) {
                    debug!(to, "balancer order not sent: {e}");
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Carries out an order from `from` (or takes in a report on one this node gave).
fn take_order(
    handle: &NodeHandle,
    view: &Arc<ClusterView>,
    active: &ActiveMoves,
    coord: &mut Coordinator,
    from: u64,
    msg: NodeMessage,
) {
    match msg {
        NodeMessage::MoveReplica {
            region_id,
            from: from_node,
            to,
        } => run_move(handle, view, active, from, region_id, Some(from_node), to),
        NodeMessage::AddReplica { region_id, to } => {
            run_move(handle, view, active, from, region_id, None, to)
        }
        NodeMessage::TransferLeader { region_id, to } => {
            let handle = handle.clone();
            tokio::task::spawn_local(async move {
                if let Err(e) = handle.transfer_leader(region_id, to).await {
                    debug!(
                        region = region_id,
                        to, "ordered leader transfer failed: {e}"
                    );
                }
            });
        }
        NodeMessage::RemoveReplica { region_id, node } => {
            let handle = handle.clone();
            tokio::task::spawn_local(async move {
                if let Err(e) = handle.remove_replica(region_id, node).await {
                    debug!(region = region_id, node, "ordered removal failed: {e}");
                }
            });
        }
        NodeMessage::MoveDone { region_id, error } => {
            if let Some(e) = error {
                // Failed: the next plan may try again (another way).
                debug!(region = region_id, from, "ordered move failed: {e}");
                coord.orders.remove(&region_id);
            }
        }
        NodeMessage::Gossip(_) | NodeMessage::Forward { .. } | NodeMessage::ForwardReply { .. } => {
        }
    }
}

/// Carries out a move (`from: None`: only adds a voter on `to`) ordered by node `by`, one
/// per region at a time, and reports the outcome to `by`.
fn run_move(
    handle: &NodeHandle,
    view: &Arc<ClusterView>,
    active: &ActiveMoves,
    by: u64,
    region_id: u64,
    from: Option<u64>,
    to: u64,
) {
    {
        let mut a = active.lock();
        if a.contains_key(&region_id) {
            debug!(
                region = region_id,
                "a move of this region is already running here"
            );
            return;
        }
        a.insert(
            region_id,
            ActiveMove {
                region_id,
                from,
                to,
            },
        );
    }
    let (handle, view, active) = (handle.clone(), view.clone(), active.clone());
    tokio::task::spawn_local(async move {
        info!(region = region_id, ?from, to, "moving a replica (ordered)");
        let r = match from {
            Some(f) => handle.move_replica(region_id, f, to).await,
            None => add_voter(&handle, region_id, to).await,
        };
        active.lock().remove(&region_id);
        let error = match r {
            Ok(()) => None,
            Err(e) => {
                warn!(region = region_id, ?from, to, "ordered move failed: {e}");
                Some(e.to_string())
            }
        };
        if by == handle.node_id() {
            // The coordinator ordered itself: it learns the outcome from its view.
            return;
        }
        let done = NodeMessage::MoveDone { region_id, error };
        if let Err(e) = view.send(by, &done) {
            debug!(region = region_id, "move report not sent: {e}");
        }
    });
}

/// Adds a voter of `region_id` on `to`: a learner (kept if one is there), promoted.
async fn add_voter(handle: &NodeHandle, region_id: u64, to: u64) -> Result<(), NodeError> {
    let desc = handle.descriptor(region_id).await?;
    if handle.learner_on(&desc, to).await? == OnNode::Voter {
        return Ok(());
    }
    handle.promote_learner(region_id, to).await
}

/// Whether this node leads the first region (the one starting at the empty key).
fn is_coordinator(handle: &NodeHandle) -> bool {
    handle
        .regions()
        .route(b"")
        .is_some_and(|r| r.start_key.is_empty() && r.leader_node == Some(handle.node_id()))
}

/// One look as coordinator: forget what ended, plan when the interval is up, retire
/// drained nodes. Answers the orders to send, with the node each goes to.
fn coordinate(
    cfg: &BalancerConfig,
    handle: &NodeHandle,
    view: &Arc<ClusterView>,
    coord: &mut Coordinator,
) -> Vec<(u64, NodeMessage)> {
    let mut out = Vec::new();
    if !is_coordinator(handle) {
        if coord.since.take().is_some() {
            info!(
                node = handle.node_id(),
                "no longer the balancer's coordinator"
            );
        }
        coord.orders.clear();
        coord.learners_seen.clear();
        coord.miscounted_seen.clear();
        return out;
    }
    let now = Instant::now();
    let since = *coord.since.get_or_insert_with(|| {
        info!(node = handle.node_id(), "coordinating the balancer");
        now
    });
    // Before planning, wait for a few gossip rounds so the view holds every region.
    if now.duration_since(since) < view.gossip_interval() * 3 {
        return out;
    }
    if coord
        .planned
        .is_some_and(|t| now.duration_since(t) < cfg.interval)
    {
        return out;
    }
    coord.planned = Some(now);
    let regions = view.regions();
    let by_id: BTreeMap<u64, &RegionSummary> = regions.iter().map(|r| (r.id, r)).collect();
    coord.orders.retain(|id, o| {
        now.duration_since(o.sent) < cfg.move_timeout
            && by_id.get(id).is_some_and(|r| !move_shows_done(r, o))
    });
    let nodes = placement_nodes(cfg, view.node_id(), view.nodes(), since, now);
    // Orders go only to nodes heard from lately: the view may still name a leader on a
    // node that just went down (until the new leader's gossip arrives), and an order lost
    // there would hold its region for `move_timeout`.
    let alive: BTreeSet<u64> = view
        .nodes()
        .iter()
        .filter(|n| n.alive)
        .map(|n| n.entry.node_id)
        .collect();
    let leader_of = |region_id: u64| {
        by_id
            .get(&region_id)
            .and_then(|r| r.leader_node)
            .filter(|l| alive.contains(l))
    };
    let mut busy_learners = 0;
    let mut seen = BTreeMap::new();
    let mut stray = Vec::new();
    let placement_regions: Vec<PlacementRegion> = regions
        .iter()
        .map(|r| {
            let voters: Vec<u64> = r
                .peers
                .iter()
                .filter(|p| p.role == PeerRole::Voter)
                .map(|p| p.node_id)
                .collect();
            let learners: Vec<u64> = r
                .peers
                .iter()
                .filter(|p| p.role != PeerRole::Voter)
                .map(|p| p.node_id)
                .collect();
            let ordered = coord.orders.contains_key(&r.id);
            if !learners.is_empty() && !ordered {
                busy_learners += 1;
                for &l in &learners {
                    let first = *coord.learners_seen.get(&(r.id, l)).unwrap_or(&now);
                    seen.insert((r.id, l), first);
                    if now.duration_since(first) >= cfg.stray_learner_timeout {
                        stray.push((r, l));
                    }
                }
            }
            PlacementRegion {
                id: r.id,
                busy: ordered || !learners.is_empty(),
                voters,
                learners,
                leader: r.leader_node,
            }
        })
        .collect();
    coord.learners_seen = seen;
    for (r, learner) in stray {
        if let Some(leader) = leader_of(r.id) {
            info!(
                region = r.id,
                node = learner,
                "removing a learner left behind"
            );
            out.push((
                leader,
                NodeMessage::RemoveReplica {
                    region_id: r.id,
                    node: learner,
                },
            ));
            coord.learners_seen.remove(&(r.id, learner));
        }
    }
    let mut in_flight = coord.orders.len() + busy_learners;
    let mut placement_regions = placement_regions;
    let room = cfg.max_concurrent_moves.saturating_sub(in_flight);
    // A region with one voter too many or too few is normal for a moment (a move between
    // its promotion and its removal, by this balancer or by hand): only one that stays so
    // for `stray_learner_timeout` is repaired.
    let mut miscounted = BTreeMap::new();
    let due: Vec<PlacementRegion> = placement_regions
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if !r.busy && r.voters.len() != cfg.replicas {
                let first = *coord.miscounted_seen.get(&r.id).unwrap_or(&now);
                miscounted.insert(r.id, first);
                r.busy |= now.duration_since(first) < cfg.stray_learner_timeout;
            }
            r
        })
        .collect();
    coord.miscounted_seen = miscounted;
    for repair in plan_repairs(&nodes, &due, cfg.replicas, room) {
        let (region_id, order, msg) = match repair {
            Repair::RemoveVoter { region_id, node } => (
                region_id,
                Order {
                    from: Some(node),
                    to: None,
                    sent: now,
                },
                NodeMessage::RemoveReplica { region_id, node },
            ),
            Repair::AddVoter { region_id, node } => (
                region_id,
                Order {
                    from: None,
                    to: Some(node),
                    sent: now,
                },
                NodeMessage::AddReplica {
                    region_id,
                    to: node,
                },
            ),
        };
        let Some(leader) = leader_of(region_id) else {
            continue;
        };
        info!(
            node = handle.node_id(),
            ?repair,
            "repairing a region's voters"
        );
        coord.miscounted_seen.remove(&region_id);
        coord.orders.insert(region_id, order);
        in_flight += 1;
        if let Some(r) = placement_regions.iter_mut().find(|r| r.id == region_id) {
            r.busy = true;
        }
        out.push((leader, msg));
    }
    let pcfg = PlacementConfig {
        max_concurrent_moves: cfg.max_concurrent_moves,
        leader_transfers_max: cfg.leader_transfers_max,
    };
    for action in plan_placement(&nodes, &placement_regions, in_flight, &pcfg) {
        let Some(leader) = leader_of(action.region_id()) else {
            continue;
        };
        info!(node = handle.node_id(), ?action, "balancing");
        match action {
            PlacementAction::MoveReplica {
                region_id,
                from,
                to,
                ..
            } => {
                coord.orders.insert(
                    region_id,
                    Order {
                        from: Some(from),
                        to: Some(to),
                        sent: now,
                    },
                );
                out.push((
                    leader,
                    NodeMessage::MoveReplica {
                        region_id,
                        from,
                        to,
                    },
                ));
            }
            PlacementAction::TransferLeader { region_id, to, .. } => {
                out.push((leader, NodeMessage::TransferLeader { region_id, to }))
            }
        }
    }
    retire_drained(handle, view, &regions);
    out
}

/// The nodes the plan sees, of `nodes` as coordinator `me` knows them: every node not
/// removed, with `down` for one not heard from for `node_down_timeout` (counted from
/// `since`, when `me` became coordinator, for a node never heard from); one not heard from
/// recently but not yet down is left out.
fn placement_nodes(
    cfg: &BalancerConfig,
    me: u64,
    nodes: Vec<NodeInfo>,
    since: Instant,
    now: Instant,
) -> Vec<PlacementNode> {
    nodes
        .into_iter()
        .filter(|n| n.entry.state != NodeState::Removed)
        .filter_map(|n| {
            let id = n.entry.node_id;
            let silent_for = match n.last_heard {
                Some(age) => age,
                None => now.duration_since(since),
            };
            let down = id != me && !n.alive && silent_for >= cfg.node_down_timeout;
            if !n.alive && !down {
                return None;
            }
            Some(PlacementNode {
                id,
                draining: n.entry.state == NodeState::Removing,
                down,
            })
        })
        .collect()
}

/// Marks `Removed` every `Removing` node no region lists a replica on (and that says it
/// holds none, if it is alive).
fn retire_drained(handle: &NodeHandle, view: &ClusterView, regions: &[RegionSummary]) {
    let holding: BTreeSet<u64> = regions
        .iter()
        .flat_map(|r| r.peers.iter().map(|p| p.node_id))
        .collect();
    for n in view.nodes() {
        let id = n.entry.node_id;
        if n.entry.state != NodeState::Removing || holding.contains(&id) || id == handle.node_id() {
            continue;
        }
        if n.alive && n.replicas > 0 {
            continue;
        }
        match view.mark_removed(id) {
            Ok(()) => info!(node = id, "drained node marked removed"),
            Err(e) => warn!(node = id, "drained node not marked removed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::directory::{NodeAddresses, NodeEntry};

    /// Node `id` as the cluster view shows it: last heard `last_heard` ago (`None`:
    /// never), alive or not.
    fn info(id: u64, state: NodeState, last_heard: Option<Duration>, alive: bool) -> NodeInfo {
        let mut entry = NodeEntry::new(id, NodeAddresses::default());
        entry.state = state;
        NodeInfo {
            entry,
            last_heard,
            alive,
            replicas: 0,
            leaders: 0,
            moves: 0,
            snapshots: 0,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_node_is_down_after_sixty_seconds_of_silence_by_default() {
        assert_eq!(BalancerConfig::default().node_down_timeout, secs(60));
    }

    #[test]
    fn a_silent_node_is_left_out_until_node_down_timeout_then_planned_as_down() {
        let cfg = BalancerConfig::default();
        let now = Instant::now();
        let since = now - secs(600);
        let look = |last_heard: Duration| {
            placement_nodes(
                &cfg,
                1,
                vec![
                    info(1, NodeState::Up, Some(Duration::ZERO), true),
                    info(2, NodeState::Up, Some(last_heard), false),
                ],
                since,
                now,
            )
        };
        let up = node(1, false, false);
        // Silent but not yet down: neither a source nor a target of moves.
        assert_eq!(look(secs(5)), vec![up]);
        assert_eq!(
            look(cfg.node_down_timeout - Duration::from_millis(1)),
            vec![up]
        );
        // Down from node_down_timeout on: its replicas are rebuilt elsewhere.
        assert_eq!(look(cfg.node_down_timeout), vec![up, node(2, true, false)]);
        assert_eq!(look(secs(3600)), vec![up, node(2, true, false)]);
    }

    #[test]
    fn a_node_never_heard_from_is_down_only_node_down_timeout_after_the_coordinator_started() {
        let cfg = BalancerConfig::default();
        let now = Instant::now();
        let look = |coordinating_for: Duration| {
            placement_nodes(
                &cfg,
                1,
                vec![
                    info(1, NodeState::Up, Some(Duration::ZERO), true),
                    info(2, NodeState::Up, None, false),
                ],
                now - coordinating_for,
                now,
            )
        };
        assert_eq!(look(secs(59)), vec![node(1, false, false)]);
        assert_eq!(
            look(secs(60)),
            vec![node(1, false, false), node(2, true, false)]
        );
    }

    #[test]
    fn alive_nodes_are_never_down_removed_ones_are_left_out_and_removing_ones_drain() {
        let cfg = BalancerConfig::default();
        let now = Instant::now();
        let nodes = vec![
            info(1, NodeState::Up, Some(Duration::ZERO), true),
            // Alive counts over a stale age.
            info(2, NodeState::Up, Some(secs(3600)), true),
            info(3, NodeState::Removing, Some(Duration::ZERO), true),
            info(4, NodeState::Removed, Some(secs(3600)), false),
            info(5, NodeState::Removing, Some(secs(3600)), false),
        ];
        assert_eq!(
            placement_nodes(&cfg, 1, nodes, now - secs(3600), now),
            vec![
                node(1, false, false),
                node(2, false, false),
                node(3, false, true),
                node(5, true, true),
            ]
        );
    }

    fn node(id: u64, down: bool, draining: bool) -> PlacementNode {
        PlacementNode { id, draining, down }
    }

    fn region(id: u64, voters: &[u64], leader: u64) -> PlacementRegion {
        PlacementRegion {
            id,
            voters: voters.to_vec(),
            learners: vec![],
            leader: Some(leader),
            busy: false,
        }
    }

    #[test]
    fn an_extra_voter_on_a_down_node_goes_first() {
        let nodes = [
            node(1, false, false),
            node(2, false, false),
            node(3, false, false),
            node(4, true, false),
        ];
        let regions = [region(7, &[1, 2, 3, 4], 1)];
        assert_eq!(
            plan_repairs(&nodes, &regions, 3, 4),
            vec![Repair::RemoveVoter {
                region_id: 7,
                node: 4
            }]
        );
    }

    #[test]
    fn an_extra_voter_goes_from_the_most_loaded_node_never_the_leaders() {
        let nodes = [
            node(1, false, false),
            node(2, false, false),
            node(3, false, false),
            node(4, false, false),
        ];
        // Node 1 holds the most replicas but leads region 7: node 2 (next most) loses it.
        let regions = [
            region(7, &[1, 2, 3, 4], 1),
            region(8, &[1, 2, 3], 3),
            region(9, &[1, 2, 4], 4),
        ];
        assert_eq!(
            plan_repairs(&nodes, &regions, 3, 4),
            vec![Repair::RemoveVoter {
                region_id: 7,
                node: 2
            }]
        );
    }

    #[test]
    fn a_missing_voter_goes_to_the_least_loaded_live_node() {
        let nodes = [
            node(1, false, false),
            node(2, false, false),
            node(3, false, true),
            node(4, true, false),
            node(5, false, false),
            node(6, false, false),
        ];
        let regions = [region(7, &[1, 2], 1), region(8, &[1, 5, 2], 1)];
        assert_eq!(
            plan_repairs(&nodes, &regions, 3, 4),
            vec![Repair::AddVoter {
                region_id: 7,
                node: 6
            }]
        );
    }

    #[test]
    fn busy_regions_without_a_quorum_and_the_limit_are_respected() {
        let nodes = [
            node(1, false, false),
            node(2, true, false),
            node(3, true, false),
            node(4, false, false),
        ];
        let mut busy = region(7, &[1, 4], 1);
        busy.busy = true;
        let mut learning = region(8, &[1, 4], 1);
        learning.learners = vec![2];
        let lost = region(9, &[1, 2, 3, 4], 1); // 2 of 4 live: no quorum
        assert!(plan_repairs(&nodes, &[busy, learning, lost], 3, 4).is_empty());
        let a = region(10, &[1, 4, 2, 3], 1);
        let b = region(11, &[1, 4, 2, 3], 4);
        let fine = region(12, &[1, 4, 2], 1);
        assert_eq!(plan_repairs(&nodes, &[a, b, fine], 4, 1).len(), 0);
        let a = region(10, &[1, 4, 2], 1);
        let b = region(11, &[1, 4, 2], 4);
        assert_eq!(
            plan_repairs(&nodes, &[a, b], 3, 1),
            vec![],
            "three voters, two live of three: right count, nothing to do"
        );
        let a = region(10, &[1, 4, 2, 5], 1);
        let nodes5 = [
            node(1, false, false),
            node(2, false, false),
            node(4, false, false),
            node(5, false, false),
        ];
        let b = region(11, &[1, 4, 2, 5], 4);
        assert_eq!(plan_repairs(&nodes5, &[a, b], 3, 1).len(), 1, "the limit");
    }
}
