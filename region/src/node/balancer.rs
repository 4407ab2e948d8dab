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

use super::cluster::ClusterView;
use super::descriptor::PeerRole;
use super::directory::NodeState;
use super::node_message::{NodeMessage, RegionSummary};
use super::placement::{
    plan as plan_placement, PlacementAction, PlacementConfig, PlacementNode, PlacementRegion,
};
use super::NodeHandle;

/// The balancer's settings.
#[derive(Debug, Clone)]
pub struct BalancerConfig {
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
    /// A learner with no move of the coordinator on its region for this long is removed.
    pub stray_learner_timeout: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
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
    /// The node whose replica goes away.
    pub from: u64,
    /// The node that gets one.
    pub to: u64,
}

/// The moves this node is carrying out, shared with status and gossip.
pub type ActiveMoves = Arc<Mutex<BTreeMap<u64, ActiveMove>>>;

/// A move the coordinator ordered and has not seen end.
#[derive(Debug, Clone, Copy)]
struct Order {
    from: u64,
    to: u64,
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
    /// When the coordinator last planned.
    planned: Option<Instant>,
}

/// Whether the view shows the ordered move of `region` finished: `to` holds a voter (or
/// the learner it was to become, when it replaced a learner) and `from` nothing.
fn move_shows_done(r: &RegionSummary, o: &Order) -> bool {
    let on = |n: u64| r.peers.iter().find(|p| p.node_id == n);
    on(o.from).is_none() && on(o.to).is_some_and(|p| p.role == PeerRole::Voter)
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
        } => {
            let m = ActiveMove {
                region_id,
                from: from_node,
                to,
            };
            {
                let mut a = active.lock();
                if a.contains_key(&region_id) {
                    debug!(
                        region = region_id,
                        "a move of this region is already running here"
                    );
                    return;
                }
                a.insert(region_id, m);
            }
            let (handle, view, active) = (handle.clone(), view.clone(), active.clone());
            tokio::task::spawn_local(async move {
                info!(
                    region = region_id,
                    from = from_node,
                    to,
                    "moving a replica (ordered)"
                );
                let r = handle.move_replica(region_id, from_node, to).await;
                active.lock().remove(&region_id);
                let error = match r {
                    Ok(()) => None,
                    Err(e) => {
                        warn!(
                            region = region_id,
                            from = from_node,
                            to,
                            "ordered move failed: {e}"
                        );
                        Some(e.to_string())
                    }
                };
                let done = NodeMessage::MoveDone {
                    region_id,
                    from: from_node,
                    to,
                    error,
                };
                if from == handle.node_id() {
                    // The coordinator ordered itself: it learns the outcome from its view.
                    return;
                }
                if let Err(e) = view.send(from, &done) {
                    debug!(region = region_id, "move report not sent: {e}");
                }
            });
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
        NodeMessage::MoveDone {
            region_id,
            from: from_node,
            to,
            error,
        } => {
            if let Some(o) = coord.orders.get(&region_id) {
                if o.from == from_node && o.to == to && error.is_some() {
                    // Failed: the next plan may try again (another way).
                    coord.orders.remove(&region_id);
                }
            }
            let _ = from;
        }
        NodeMessage::Gossip(_) => {}
    }
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
    let nodes = placement_nodes(cfg, view, since, now);
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
        if let Some(leader) = r.leader_node {
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
    let in_flight = coord.orders.len() + busy_learners;
    let pcfg = PlacementConfig {
        max_concurrent_moves: cfg.max_concurrent_moves,
        leader_transfers_max: cfg.leader_transfers_max,
    };
    for action in plan_placement(&nodes, &placement_regions, in_flight, &pcfg) {
        let Some(leader) = by_id.get(&action.region_id()).and_then(|r| r.leader_node) else {
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
                        from,
                        to,
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

/// The nodes the plan sees: every node not removed, with `down` for one not heard from
/// for `node_down_timeout`; one not heard from recently but not yet down is left out.
fn placement_nodes(
    cfg: &BalancerConfig,
    view: &ClusterView,
    since: Instant,
    now: Instant,
) -> Vec<PlacementNode> {
    let me = view.node_id();
    view.nodes()
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
