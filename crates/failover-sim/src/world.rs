//! One run: five controllers in three sites, four holders, a seeded fault schedule, and
//! the checks after every step of 25 ms of simulated time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use failover_client::{DialError, Dialer};
use failover_controller::runtime::Freeze;
use failover_controller::services::admin::AdminServer;
use failover_controller::store;
use failover_controller::{Controller, Parts};
use failover_core::lease::HolderTiming;
use failover_core::{GroupName, NodeId, Phase, Topology};
use failover_proto::admin::admin_service_server::AdminService;
use failover_proto::admin::{DemoteRequest, PromoteRequest};
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use crate::check::Checker;
use crate::clock::DriftClock;
use crate::disk::SimDisk;
use crate::holder::Holder;
use crate::net::{Endpoint, Net, SimNetwork, Slot, HOLDER_BASE};
use crate::schedule::{Fault, Layout, Schedule, Target};

/// The simulated topology: site-a (1, 2), site-b (3, 4), a witness (5), one group.
pub const TOPOLOGY: &str = r#"
cluster_name: sim
timing:
  raft_heartbeat_ms: 100
  election_timeout_min_ms: 300
  election_timeout_max_ms: 500
  lease_ttl_ms: 3500
  keepalive_interval_ms: 250
  max_clock_drift_ms: 250
  failure_timeout_ms: 1500
  failover_cooldown_ms: 30000
sites:
  - name: site-a
    controllers:
      - { id: 1, addr: "c1:7100" }
      - { id: 2, addr: "c2:7100" }
  - name: site-b
    controllers:
      - { id: 3, addr: "c3:7100" }
      - { id: 4, addr: "c4:7100" }
  - name: witness
    controllers:
      - { id: 5, addr: "c5:7100" }
groups:
  - name: default
    sites: [site-a, site-b]
    auto_failover: true
"#;

/// Step of the driver: faults fire and properties are checked this often.
const TICK: Duration = Duration::from_millis(25);
/// Faults start once the cluster had time to form.
const FAULTS_FROM: Duration = Duration::from_secs(3);
/// Time a holder keeps off its lease to stop its work.
const STOP_GRACE: Duration = Duration::from_millis(100);

/// How long one run simulates.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// When every fault heals.
    pub heal_at: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heal_at: Duration::from_secs(25),
        }
    }
}

/// What one run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Hash of the whole event trace (same seed, same hash).
    pub trace_hash: u64,
    /// Lines in the trace.
    pub trace_lines: usize,
    /// Properties violated.
    pub violations: Vec<String>,
    /// The last trace lines (for a failure report).
    pub tail: Vec<String>,
    /// Holders at a settled, connected active site that lost their lease.
    pub needless_interruptions: u32,
    /// Every lease lost other than by a drain.
    pub lapses: u32,
    /// Grants acknowledged to holders.
    pub grants: u32,
    /// Promotes and demotes acknowledged to the operator.
    pub changes: u32,
    /// Time from healing to the active site's holders holding, if reached.
    pub recovered_after: Option<Duration>,
}

/// Controllers never dial: the simulation calls services in process.
struct NoDialer(failover_proto::pin::ClusterPin);

impl Dialer for NoDialer {
    fn pin(&self) -> &failover_proto::pin::ClusterPin {
        &self.0
    }

    fn channel(&self, addr: &str) -> Result<failover_proto::wire::Chan, DialError> {
        Err(DialError {
            addr: addr.to_owned(),
            reason: "the simulation has no sockets".into(),
        })
    }
}

struct Node {
    disk: SimDisk,
    clock: DriftClock,
    generation: u64,
    running: Option<Controller>,
    /// Stops every task of the running incarnation while a pause lasts.
    freeze: Freeze,
}

struct World {
    topology: Topology,
    group: GroupName,
    sites: Vec<String>,
    layout: Layout,
    net: Arc<Net>,
    checker: Arc<Mutex<Checker>>,
    nodes: BTreeMap<NodeId, Node>,
    rng: SmallRng,
    origin: Instant,
    leaders: Vec<(NodeId, u64)>,
    applied: Vec<(NodeId, u64)>,
}

/// Runs one seed on a fresh single-threaded runtime with paused time.
pub fn run_seed(seed: u64, options: Options) -> Outcome {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => return failed(seed, format!("cannot build the runtime: {e}")),
    };
    failover_controller::runtime::seed_thread_rng(seed);
    let outcome = runtime.block_on(run(seed, options));
    drop(runtime);
    failover_controller::runtime::unseed_thread_rng();
    outcome
}

fn failed(seed: u64, why: String) -> Outcome {
    Outcome {
        seed,
        trace_hash: 0,
        trace_lines: 0,
        violations: vec![why],
        tail: Vec::new(),
        needless_interruptions: 0,
        lapses: 0,
        grants: 0,
        changes: 0,
        recovered_after: None,
    }
}

async fn run(seed: u64, options: Options) -> Outcome {
    let topology = match Topology::from_yaml(TOPOLOGY, "sim topology") {
        Ok(t) => t,
        Err(e) => return failed(seed, e.to_string()),
    };
    let mut world = World::new(seed, topology);
    let schedule = Schedule::generate(seed, &world.layout, FAULTS_FROM, options.heal_at);
    for id in world.nodes.keys().copied().collect::<Vec<_>>() {
        if let Err(e) = world.start(id).await {
            return failed(seed, e);
        }
    }
    world.spawn_holders();
    let recovered_after = world.drive(&schedule).await;
    world.outcome(seed, recovered_after)
}

impl World {
    fn new(seed: u64, topology: Topology) -> World {
        let origin = Instant::now();
        let mut rng = SmallRng::seed_from_u64(seed);
        let sites: Vec<String> = topology.sites.iter().map(|s| s.name.to_string()).collect();
        let mut site_of: BTreeMap<Endpoint, usize> = BTreeMap::new();
        let mut controllers = vec![Vec::new(); sites.len()];
        for (index, site) in topology.sites.iter().enumerate() {
            for c in &site.controllers {
                site_of.insert(c.id, index);
                controllers[index].push(c.id);
            }
        }
        let group_config = &topology.groups[0];
        let data_sites: Vec<usize> = group_config
            .sites
            .iter()
            .filter_map(|s| sites.iter().position(|n| n == s.as_str()))
            .collect();
        let mut holders = vec![Vec::new(); sites.len()];
        let mut next = HOLDER_BASE;
        for site in &data_sites {
            for _ in 0..2 {
                site_of.insert(next, *site);
                holders[*site].push(next);
                next += 1;
            }
        }
        let drift = topology.timing.max_clock_drift_ms as f64 / topology.timing.lease_ttl_ms as f64;
        let nodes = topology
            .controllers()
            .map(|(_, c)| {
                let rate = 1.0 + rng.random_range(-0.45..0.45) * drift;
                let node = Node {
                    disk: SimDisk::default(),
                    clock: DriftClock::new(origin, rate),
                    generation: 0,
                    running: None,
                    freeze: Freeze::default(),
                };
                (c.id, node)
            })
            .collect();
        World {
            group: group_config.name.clone(),
            layout: Layout {
                controllers,
                holders,
                data_sites,
            },
            sites,
            net: Arc::new(Net::new(seed, site_of)),
            checker: Arc::new(Mutex::new(Checker::new(origin))),
            nodes,
            rng,
            origin,
            leaders: Vec::new(),
            applied: Vec::new(),
            topology,
        }
    }

    fn checker(&self) -> MutexGuard<'_, Checker> {
        self.checker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn trace(&self, text: &str) {
        self.checker().event(Instant::now(), text);
    }

    async fn start(&mut self, id: NodeId) -> Result<(), String> {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Err(format!("no controller {id}"));
        };
        let (log_store, state_machine) =
            store::open_with_backend(node.disk.clone(), id).map_err(|e| e.to_string())?;
        node.generation += 1;
        let parts = Parts {
            log_store,
            state_machine,
            network: SimNetwork {
                net: self.net.clone(),
                from: id,
                generation: node.generation,
            },
            dialer: Arc::new(NoDialer(Default::default())),
            clock: Arc::new(node.clock),
        };
        // Every task the controller spawns, openraft's included, is under this freeze.
        node.freeze = Freeze::default();
        let controller = node
            .freeze
            .wrap(Controller::start_with(self.topology.clone(), id, parts))
            .await
            .map_err(|e| e.to_string())?;
        self.net.up(
            id,
            Slot {
                generation: node.generation,
                raft: controller.raft().clone(),
                ctx: controller.context().clone(),
            },
        );
        node.running = Some(controller);
        Ok(())
    }

    fn spawn_holders(&mut self) {
        let timing = &self.topology.timing;
        let mut index = 0;
        for site in self.layout.data_sites.clone() {
            for endpoint in self.layout.holders[site].clone() {
                let drift = timing.max_clock_drift_ms as f64 / timing.lease_ttl_ms as f64;
                let rate = 1.0 + self.rng.random_range(-0.45..0.45) * drift;
                let holder = Holder {
                    index,
                    endpoint,
                    site: (site, self.sites[site].clone()),
                    group: self.group.clone(),
                    clock: DriftClock::new(self.origin, rate),
                    net: self.net.clone(),
                    checker: self.checker.clone(),
                    keepalive: Duration::from_millis(timing.keepalive_interval_ms),
                    ttl: Duration::from_millis(timing.lease_ttl_ms),
                    timing: HolderTiming {
                        max_clock_drift: Duration::from_millis(timing.max_clock_drift_ms),
                        stop_grace: STOP_GRACE,
                    },
                    controllers: self.nodes.len() as u64,
                };
                tokio::spawn(holder.run());
                index += 1;
            }
        }
    }

    /// The bound on recovery once every fault healed: an election, the failure timeout,
    /// a lease wait and two keepalive rounds, plus a second of slack.
    fn recovery_bound(&self) -> Duration {
        let t = &self.topology.timing;
        Duration::from_millis(
            2 * t.election_timeout_max_ms
                + t.raft_heartbeat_ms
                + t.failure_timeout_ms
                + t.lease_ttl_ms
                + t.max_clock_drift_ms
                + 2 * t.keepalive_interval_ms
                + 1000,
        )
    }

    /// Applies the schedule tick by tick, heals, and waits for recovery. Returns how long
    /// recovery took after healing.
    async fn drive(&mut self, schedule: &Schedule) -> Option<Duration> {
        let bound = self.recovery_bound();
        let end = schedule.heal_at + bound + Duration::from_secs(2);
        let mut faults = schedule.faults.iter().peekable();
        let mut healed_at: Option<Instant> = None;
        let mut recovered: Option<Duration> = None;
        let mut at = self.origin;
        while at < self.origin + end {
            at += TICK;
            tokio::time::sleep_until(at).await;
            while let Some((offset, fault)) =
                faults.next_if(|(offset, _)| self.origin + *offset <= at)
            {
                let _ = offset;
                self.apply(fault).await;
            }
            if healed_at.is_none() && at >= self.origin + schedule.heal_at {
                self.heal().await;
                healed_at = Some(at);
            }
            let leader = self.monitor(at);
            if let (Some(healed), None) = (healed_at, recovered) {
                if self.recovered(leader, at) {
                    recovered = Some(at - healed);
                    self.trace(&format!("recovered {:?} after healing", at - healed));
                } else if at - healed > bound {
                    self.checker().violation(
                        at,
                        format!("L1: the active site's holders do not hold {bound:?} after every fault healed"),
                    );
                    break;
                }
            }
            if !self.checker().violations.is_empty() {
                break;
            }
        }
        if self.checker().violations.is_empty() {
            self.final_check(Instant::now());
        }
        recovered
    }

    async fn apply(&mut self, fault: &Fault) {
        self.trace(&format!("fault {fault:?}"));
        match fault {
            Fault::Crash { target, power_loss } => {
                let up = self.net.up_nodes();
                let id = match target {
                    Target::Node(id) => Some(*id),
                    Target::Leader => self.leader().or_else(|| {
                        (!up.is_empty()).then(|| up[self.rng.random_range(0..up.len())])
                    }),
                };
                if let Some(id) = id {
                    self.crash(id, *power_loss);
                }
            }
            Fault::RestartAll => self.restart_all().await,
            Fault::Cut(cuts) => cuts.iter().for_each(|(a, b)| self.net.block(*a, *b)),
            Fault::Mend(cuts) => cuts.iter().for_each(|(a, b)| self.net.unblock(*a, *b)),
            Fault::Weather {
                loss,
                extra_delay_ms,
            } => self.net.set_weather(*loss, *extra_delay_ms),
            Fault::Pause { target } => {
                let id = match target {
                    Target::Node(id) => Some(*id),
                    Target::Leader => self.leader(),
                };
                if let Some(node) = id.and_then(|id| self.nodes.get(&id).map(|n| (id, n))) {
                    if node.1.running.is_some() {
                        node.1.freeze.freeze();
                        self.trace(&format!("controller {} paused", node.0));
                    }
                }
            }
            Fault::ResumeAll => self.resume_all(),
            Fault::Promote { site, force } => self.operator_promote(Some(*site), *force),
            Fault::Demote => self.operator_promote(None, false),
        }
    }

    fn crash(&mut self, id: NodeId, power_loss: bool) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(controller) = node.running.take() else {
            return;
        };
        self.net.down(id);
        node.disk = node.disk.after_crash(power_loss);
        // A killed process is gone, paused or not: its tasks run down, off the network.
        node.freeze.thaw();
        tokio::spawn(controller.shutdown());
        self.trace(&format!(
            "controller {id} crashed (power loss: {power_loss})"
        ));
    }

    async fn restart_all(&mut self) {
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.running.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in down {
            match self.start(id).await {
                Ok(()) => self.trace(&format!("controller {id} restarted")),
                Err(e) => {
                    let now = Instant::now();
                    self.checker().violation(
                        now,
                        format!("S3: controller {id} cannot restart on what its disk kept: {e}"),
                    );
                }
            }
        }
    }

    /// Every paused controller runs again, its timers firing late.
    fn resume_all(&mut self) {
        let paused: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.freeze.is_frozen())
            .map(|(id, _)| *id)
            .collect();
        for id in paused {
            if let Some(node) = self.nodes.get(&id) {
                node.freeze.thaw();
            }
            self.trace(&format!("controller {id} resumed"));
        }
    }

    async fn heal(&mut self) {
        self.resume_all();
        self.net.heal();
        self.restart_all().await;
        self.trace("every fault healed");
    }

    fn leader(&self) -> Option<NodeId> {
        self.net
            .up_nodes()
            .into_iter()
            .find(|id| self.net.node(*id).is_some_and(|s| s.raft.is_leader()))
    }

    fn operator_promote(&mut self, site: Option<usize>, force: bool) {
        let Some(slot) = self.leader().and_then(|id| self.net.node(id)) else {
            self.trace("operator: no leader to ask");
            return;
        };
        let admin = AdminServer::new(slot.ctx);
        let group = self.group.to_string();
        let site = site.map(|s| self.sites[s].clone());
        let checker = self.checker.clone();
        tokio::spawn(async move {
            let answer = match site {
                Some(site) => {
                    let request = PromoteRequest {
                        group,
                        site,
                        reason: "simulated operator".into(),
                        actor: "operator".into(),
                        wait: true,
                        force,
                    };
                    admin.promote(tonic::Request::new(request)).await
                }
                None => {
                    let request = DemoteRequest {
                        group,
                        reason: "simulated operator".into(),
                        actor: "operator".into(),
                        wait: true,
                    };
                    admin.demote(tonic::Request::new(request)).await
                }
            };
            let now = Instant::now();
            let mut checker = checker.lock().unwrap_or_else(|p| p.into_inner());
            match answer.map(|r| r.into_inner().group) {
                Ok(Some(g)) => {
                    let site = (!g.active_site.is_empty()).then_some(g.active_site);
                    checker.on_change_acked(now, g.epoch, site);
                }
                Ok(None) => checker.event(now, "operator: answer without a group"),
                Err(status) => {
                    checker.event(now, &format!("operator: refused: {:?}", status.code()))
                }
            }
        });
    }

    /// Checks the running controllers' states and notes leadership and connectivity.
    /// Returns the leader, if exactly one leads.
    fn monitor(&mut self, now: Instant) -> Option<NodeId> {
        let mut views = Vec::new();
        let mut leaders = Vec::new();
        let mut applied = Vec::new();
        for id in self.net.up_nodes() {
            let Some(slot) = self.net.node(id) else {
                continue;
            };
            let metrics = slot.raft.metrics().borrow_watched().clone();
            if metrics.state == ServerState::Leader {
                leaders.push((id, metrics.current_term));
            }
            applied.push((id, metrics.last_applied.map_or(0, |l| l.index)));
            views.push((id, slot.ctx.view.read().clone()));
        }
        if applied != self.applied {
            // Every commit on every controller enters the trace, so two runs of one seed
            // agree only if they agree on what was applied where, and when.
            self.trace(&format!("applied {applied:?}"));
            self.applied = applied;
        }
        if leaders != self.leaders {
            self.trace(&format!("leaders {leaders:?}"));
            self.leaders = leaders.clone();
        }
        let leader = leaders
            .iter()
            .max_by_key(|(_, term)| *term)
            .map(|(id, _)| *id);
        let active = leader
            .and_then(|id| views.iter().find(|(v, _)| *v == id))
            .and_then(|(_, state)| state.groups.get(&self.group))
            .filter(|g| g.phase == Phase::Active)
            .and_then(|g| g.active_site.as_ref())
            .and_then(|site| self.sites.iter().position(|s| s == site.as_str()));
        let mut checker = self.checker.lock().unwrap_or_else(|p| p.into_inner());
        checker.check_views(now, &self.group, &views);
        // openraft gives up on every Raft RPC after one heartbeat interval: while a round
        // trip can take longer, heartbeats and the renewals' read-index rounds fail however
        // well connected the holders are (docs/testing.md, "Needless interruptions").
        let too_slow = 2 * self.net.max_delay()
            > Duration::from_millis(self.topology.timing.raft_heartbeat_ms);
        for site in self.layout.data_sites.clone() {
            if too_slow || active != Some(site) || !self.connected_to_quorum(site) {
                checker.disturbed_at.insert(site, now);
            }
        }
        leader
    }

    /// Whether the site's holders reach, both ways, a majority of running (neither
    /// crashed nor paused) controllers that reach each other both ways. The leader need not be among them: a site cut
    /// from the leader but not from a quorum is healthy by the project's rule, so the
    /// lapses it suffers count (its holders renew through a follower that relays;
    /// docs/testing.md).
    fn connected_to_quorum(&self, site: usize) -> bool {
        let holders = &self.layout.holders[site];
        let both =
            |a: Endpoint, b: Endpoint| !self.net.is_blocked(a, b) && !self.net.is_blocked(b, a);
        let reachable: Vec<NodeId> = self
            .net
            .up_nodes()
            .into_iter()
            .filter(|c| !self.nodes.get(c).is_some_and(|n| n.freeze.is_frozen()))
            .filter(|c| holders.iter().all(|h| both(*h, *c)))
            .collect();
        let majority = self.nodes.len() / 2 + 1;
        (0u32..1 << reachable.len()).any(|mask| {
            let chosen: Vec<NodeId> = (0..reachable.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| reachable[i])
                .collect();
            chosen.len() >= majority
                && chosen
                    .iter()
                    .all(|a| chosen.iter().all(|b| a == b || both(*a, *b)))
        })
    }

    /// Whether the group is settled: active at a site whose holders hold, or deliberately
    /// without an active site.
    fn recovered(&self, leader: Option<NodeId>, now: Instant) -> bool {
        let Some(slot) = leader.and_then(|id| self.net.node(id)) else {
            return false;
        };
        let state = slot.ctx.view.read();
        let Some(g) = state.groups.get(&self.group) else {
            return false;
        };
        match (&g.phase, &g.active_site) {
            (Phase::NoActive, _) => true,
            (Phase::Active, Some(site)) => self
                .sites
                .iter()
                .position(|s| s == site.as_str())
                .is_some_and(|s| self.checker().site_holds(s, now)),
            _ => false,
        }
    }

    fn final_check(&self, now: Instant) {
        let Some(slot) = self.leader().and_then(|id| self.net.node(id)) else {
            self.checker()
                .violation(now, "L1: no leader after every fault healed".into());
            return;
        };
        let state = slot.ctx.view.read().clone();
        self.checker().check_final(now, &self.group, &state);
    }

    fn outcome(&self, seed: u64, recovered_after: Option<Duration>) -> Outcome {
        let checker = self.checker();
        Outcome {
            seed,
            trace_hash: checker.trace_hash(),
            trace_lines: checker.trace_lines(),
            violations: checker.violations.clone(),
            tail: checker.tail().cloned().collect(),
            needless_interruptions: checker.needless_interruptions,
            lapses: checker.lapses,
            grants: checker.grant_count,
            changes: checker.change_count,
            recovered_after,
        }
    }
}
