//! The supervisor loop of `failover exec`.
//!
//! One task owns all state and reacts, in order, to: lease state changes (start, extend,
//! drain, stop workers), guard events (a worker started or ended), health results, a
//! 100 ms tick (restarts due, health checks due, reload progress, reports) and operator
//! control (reload, shutdown). Nothing here decides safety on its own: every worker runs
//! under a guard holding the lease deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use failover_client::clock::Clock;
use failover_client::{Dialer, Endpoints, LeaseConfig, LeaseSession, LeaseState};
use failover_core::supervision::{RestartPolicy, Restarts};
use failover_core::{Epoch, FencingToken};
use failover_proto::executor::{ExecutorReport, WorkerReport};
use failover_proto::types::{Health as WireHealth, LeaseState as WireLease, WorkerState};
use tokio::sync::{mpsc, watch};

use crate::contain::Containment;
use crate::guards::{Gone, LiveGuards};
use crate::health::HealthCheck;
use crate::output::OutputOptions;
use crate::worker::{GuardEvent, Spawn, Worker, WorkerEvent};

/// How often the loop runs its periodic work.
const TICK: Duration = Duration::from_millis(100);
/// How long a new worker of a reload may take to pass its health check.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Without a health check, a new worker counts as healthy after running this long.
const SETTLE_WITHOUT_CHECK: Duration = Duration::from_secs(1);
/// How long an unhealthy executor stays out before it tries to take the lease again.
const UNHEALTHY_COOLDOWN: Duration = Duration::from_secs(30);
/// How long a worker may keep failing its health check before the executor is unhealthy.
const UNHEALTHY_AFTER: Duration = Duration::from_secs(10);
/// How often each running worker is checked.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// What `failover exec` is told.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The failover group.
    pub group: String,
    /// This executor's site.
    pub site: String,
    /// Number of workers.
    pub instances: u32,
    /// PORT of worker i is `port_base + i`.
    pub port_base: u16,
    /// How worker health is checked, if at all.
    pub health: Option<HealthCheck>,
    /// Time a worker gets between TERM and KILL (also kept off the lease's end).
    pub stop_grace: Duration,
    /// Time workers get to stop on a planned switchover before the lease is released.
    pub drain_timeout: Duration,
    /// The worker command and its arguments.
    pub command: Vec<String>,
    /// Where the controllers are.
    pub endpoints: Endpoints,
    /// The `failover` executable (for `failover guard`).
    pub guard_exe: PathBuf,
    /// The topology's `max_clock_drift_ms`.
    pub max_clock_drift: Duration,
    /// The topology's `lease_ttl_ms`.
    pub lease_ttl: Duration,
    /// How often to report to the controllers (the executor's heartbeat).
    pub report_interval: Duration,
    /// This executor's id, unique in the group.
    pub executor_id: String,
    /// Restart policy for crashed workers.
    pub restart: RestartPolicy,
    /// Where worker output goes (log directory, rotation, echo on stderr).
    pub output: OutputOptions,
    /// How each worker tree is contained (cgroup v2 when possible, or process group).
    pub containment: Containment,
    /// Notified once, when the leader first accepts a report: the executor is then
    /// registered with the cluster (`failover exec` tells systemd it is ready).
    pub registered: Option<Arc<tokio::sync::Notify>>,
}

/// Why an executor cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The worker command cannot be found or is not executable.
    #[error("worker command `{0}` not found or not executable")]
    CommandNotFound(String),
    /// No worker command was given.
    #[error("no worker command given (put it after `--`)")]
    NoCommand,
    /// Options that cannot work together.
    #[error("{0}")]
    Invalid(String),
}

/// What the operator can ask of a running executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Replace the workers one by one (SIGHUP, or `failover reload`).
    Reload,
    /// Stop the workers, release the lease, exit.
    Shutdown,
}

/// The stop grace is kept off the lease twice: the lease is believed until `sent + ttl -
/// drift - stop_grace`, and the guard starts stopping a stop grace before that. What is
/// left must outlast a keepalive round, or workers would be stopped between renewals.
fn check_stop_grace(opts: &ExecutorOptions) -> Result<(), ExecutorError> {
    let usable = opts.lease_ttl.saturating_sub(opts.max_clock_drift);
    let left = usable.saturating_sub(opts.stop_grace * 2);
    if left <= opts.report_interval {
        return Err(ExecutorError::Invalid(format!(
            "--stop-grace {:?} is too long for lease_ttl_ms {} and max_clock_drift_ms {}: \
             ttl - drift - 2 x stop grace must exceed the keepalive interval ({:?}); \
             use a stop grace under {:?}",
            opts.stop_grace,
            opts.lease_ttl.as_millis(),
            opts.max_clock_drift.as_millis(),
            opts.report_interval,
            usable.saturating_sub(opts.report_interval) / 2,
        )));
    }
    Ok(())
}

/// Checks that the worker command exists and is executable (a PATH lookup for bare names).
pub fn check_command(command: &[String]) -> Result<PathBuf, ExecutorError> {
    let program = command.first().ok_or(ExecutorError::NoCommand)?;
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
            .unwrap_or_default()
    };
    candidates
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(|| ExecutorError::CommandNotFound(program.clone()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Health of one worker as last checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Unknown,
    Healthy,
    Unhealthy { since: Instant },
}

impl Health {
    fn wire(self) -> WireHealth {
        match self {
            Health::Unknown => WireHealth::Unknown,
            Health::Healthy => WireHealth::Healthy,
            Health::Unhealthy { .. } => WireHealth::Unhealthy,
        }
    }

    fn record(self, ok: bool, now: Instant) -> Health {
        match (ok, self) {
            (true, _) => Health::Healthy,
            (false, Health::Unhealthy { since }) => Health::Unhealthy { since },
            (false, _) => Health::Unhealthy { since: now },
        }
    }
}

/// One worker slot (instance number).
struct Slot {
    instance: u32,
    worker: Option<Worker>,
    restarts: Restarts,
    restart_at: Option<Instant>,
    health: Health,
    last_check: Option<Instant>,
}

/// The lease as the executor last saw it.
#[derive(Debug, Clone, Copy)]
struct Held {
    token: u64,
    epoch: u64,
    valid_until: Instant,
    draining: bool,
}

/// A rolling reload under way: new workers started one by one beside the old ones.
struct Reload {
    generation: u64,
    started: Vec<(Worker, Health)>,
    began: Instant,
}

/// The result of a health check, labelled with the worker it is about.
struct HealthResult {
    generation: u64,
    ok: bool,
}

struct Executor {
    opts: ExecutorOptions,
    dialer: Arc<dyn Dialer>,
    clock: Arc<dyn Clock>,
    session: Option<LeaseSession>,
    lease: Option<watch::Receiver<LeaseState>>,
    lease_state: LeaseState,
    /// The lease state as last logged ([`lease_state_line`]), so each change is logged once.
    lease_logged: Option<String>,
    held: Option<Held>,
    slots: Vec<Slot>,
    /// Every guard not yet heard end: the lease goes back only once this is gone.
    guards: LiveGuards,
    /// Workers out of their slot (a retiring generation, an aborted reload's new ones)
    /// whose guards have not reported their trees gone.
    retired: Vec<Worker>,
    /// A session given up (executor unhealthy) but released only once the guards are gone.
    releasing: Option<LeaseSession>,
    next_generation: u64,
    events: (mpsc::Sender<WorkerEvent>, mpsc::Receiver<WorkerEvent>),
    health: (mpsc::Sender<HealthResult>, mpsc::Receiver<HealthResult>),
    unhealthy: Option<(Instant, String)>,
    reload: Option<Reload>,
    reload_done: (u64, bool, String),
    reload_asked: u64,
    last_report: Option<Instant>,
    reporter: Option<String>,
}

/// Runs an executor until `Control::Shutdown`.
pub async fn run(
    opts: ExecutorOptions,
    dialer: Arc<dyn Dialer>,
    clock: Arc<dyn Clock>,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), ExecutorError> {
    check_command(&opts.command)?;
    if opts.instances == 0 {
        return Err(ExecutorError::Invalid(
            "--instances must be at least 1".into(),
        ));
    }
    check_stop_grace(&opts)?;
    if u32::from(opts.port_base) + opts.instances > u32::from(u16::MAX) {
        return Err(ExecutorError::Invalid(
            "--port-base + --instances exceeds 65535".into(),
        ));
    }
    let slots = (0..opts.instances)
        .map(|instance| Slot {
            instance,
            worker: None,
            restarts: Restarts::new(opts.restart),
            restart_at: None,
            health: Health::Unknown,
            last_check: None,
        })
        .collect();
    let mut ex = Executor {
        opts,
        dialer,
        clock,
        session: None,
        lease: None,
        lease_state: LeaseState::Connecting,
        lease_logged: None,
        held: None,
        slots,
        guards: LiveGuards::default(),
        retired: Vec::new(),
        releasing: None,
        next_generation: 1,
        events: mpsc::channel(256),
        health: mpsc::channel(256),
        unhealthy: None,
        reload: None,
        reload_done: (0, true, String::new()),
        reload_asked: 0,
        last_report: None,
        reporter: None,
    };
    ex.start_session();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            changed = lease_changed(&mut ex.lease) => if changed { ex.on_lease().await },
            Some(event) = ex.events.1.recv() => ex.on_worker_event(event).await,
            Some(result) = ex.health.1.recv() => ex.on_health(result),
            _ = tick.tick() => ex.on_tick().await,
            cmd = control.recv() => match cmd {
                Some(Control::Reload) => ex.begin_reload(ex.reload_asked.max(ex.reload_done.0) + 1),
                Some(Control::Shutdown) | None => {
                    ex.shutdown().await;
                    return Ok(());
                }
            },
        }
    }
}

/// What the executor logs about its lease state: the state and what identifies it (the
/// active site and epoch on standby, the token while held), not what a renewal or a
/// standby poll changes, so a line is logged once per change rather than per keepalive.
pub fn lease_state_line(state: &LeaseState) -> String {
    match state {
        LeaseState::Connecting => "connecting (no leader reached yet)".to_owned(),
        LeaseState::Standby { active_site, epoch } => {
            let active = active_site.as_ref().map_or("no site", |s| s.as_str());
            format!("standby ({active} active at epoch {epoch})")
        }
        LeaseState::Acquired { token, epoch, .. } => {
            format!("acquired (epoch {}, token {})", epoch.0, token.0)
        }
        LeaseState::Draining { token, epoch, .. } => {
            format!("draining (epoch {}, token {})", epoch.0, token.0)
        }
        LeaseState::Lost { reason } => format!("lost ({reason})"),
    }
}

/// Resolves when the lease state changes; pending forever without a session.
async fn lease_changed(lease: &mut Option<watch::Receiver<LeaseState>>) -> bool {
    match lease {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl Executor {
    fn start_session(&mut self) {
        let config = LeaseConfig {
            endpoints: self.opts.endpoints.clone(),
            group: failover_core::GroupName(self.opts.group.clone()),
            site: failover_core::SiteId(self.opts.site.clone()),
            instance: self.opts.executor_id.clone(),
            max_clock_drift: self.opts.max_clock_drift,
            stop_grace: self.opts.stop_grace,
            // A standby acquire is answered from the leader's applied state, without a
            // Raft write: polling often costs little and shortens a failover.
            standby_poll: Duration::from_millis(100),
            release_on_drain: false,
        };
        let session = LeaseSession::start(config, self.dialer.clone(), self.clock.clone());
        self.lease = Some(session.state());
        self.session = Some(session);
    }

    fn env(&self, instance: u32, held: &Held) -> Vec<(String, String)> {
        vec![
            ("FAILOVER_GROUP".into(), self.opts.group.clone()),
            ("FAILOVER_SITE".into(), self.opts.site.clone()),
            ("FAILOVER_EPOCH".into(), held.epoch.to_string()),
            // The fencing value is the epoch: the same for every executor of the site.
            ("FAILOVER_FENCING_TOKEN".into(), held.epoch.to_string()),
            ("FAILOVER_INSTANCE".into(), instance.to_string()),
            ("PORT".into(), self.port(instance).to_string()),
        ]
    }

    fn port(&self, instance: u32) -> u16 {
        // Checked at start: port_base + instances fits in u16.
        (u32::from(self.opts.port_base) + instance) as u16
    }

    fn spawn(&mut self, instance: u32, held: Held) -> Option<Worker> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let spec = Spawn {
            guard_exe: &self.opts.guard_exe,
            command: &self.opts.command,
            env: self.env(instance, &held),
            instance,
            generation,
            deadline: held.valid_until,
            stop_grace: self.opts.stop_grace,
            group: &self.opts.group,
            site: &self.opts.site,
            output: &self.opts.output,
            containment: self.opts.containment,
        };
        match Worker::spawn(spec, self.events.0.clone()) {
            Ok(worker) => {
                tracing::info!(instance, generation, token = held.token, "worker starting");
                self.guards.started(generation, held.valid_until);
                Some(worker)
            }
            Err(e) => {
                tracing::error!(instance, error = %e, "cannot start the guard");
                None
            }
        }
    }

    async fn on_lease(&mut self) {
        let Some(rx) = &mut self.lease else { return };
        let state = rx.borrow_and_update().clone();
        self.lease_state = state.clone();
        let line = lease_state_line(&state);
        if self.lease_logged.as_ref() != Some(&line) {
            tracing::info!(site = %self.opts.site, group = %self.opts.group, "lease state: {line}");
            self.lease_logged = Some(line);
        }
        match state {
            LeaseState::Acquired {
                token,
                epoch,
                valid_until,
                ..
            } => {
                let held = Held {
                    token: token.0,
                    epoch: epoch.0,
                    valid_until,
                    draining: false,
                };
                match self.held {
                    Some(h) if h.token == held.token && !h.draining => {
                        self.held = Some(held);
                        self.extend_all(valid_until).await;
                    }
                    Some(_) => {
                        self.stop_all(self.opts.stop_grace).await;
                        self.held = Some(held);
                    }
                    None => {
                        tracing::info!(token = held.token, epoch = held.epoch, "lease acquired");
                        self.take_cluster_timing();
                        self.held = Some(held);
                        for slot in &mut self.slots {
                            slot.restart_at = None;
                        }
                        // Start at once rather than at the next tick: this is the last
                        // step of a failover.
                        self.start_due_workers(self.clock.now());
                    }
                }
            }
            LeaseState::Draining { valid_until, .. } => {
                if let Some(held) = &mut self.held {
                    if !held.draining {
                        held.draining = true;
                        held.valid_until = valid_until;
                        let left = valid_until.saturating_duration_since(self.clock.now());
                        let grace = self.opts.drain_timeout.min(left);
                        tracing::info!(?grace, "drain notice: stopping workers, then releasing");
                        self.abort_reload("a drain began").await;
                        self.stop_all(grace).await;
                        // Nothing may be running at all: then the lease goes back now.
                        self.after_stop().await;
                    }
                }
            }
            LeaseState::Standby { .. } | LeaseState::Lost { .. } | LeaseState::Connecting => {
                if self.held.take().is_some() {
                    tracing::warn!(state = ?self.lease_state, "lease gone: stopping workers");
                }
                self.abort_reload("the lease was lost").await;
                self.stop_all(self.opts.stop_grace).await;
            }
        }
    }

    async fn extend_all(&mut self, deadline: Instant) {
        let reloading = self.reload.iter_mut().flat_map(|r| &mut r.started);
        let workers = self
            .slots
            .iter_mut()
            .filter_map(|s| s.worker.as_mut())
            .chain(reloading.map(|(w, _)| w));
        for worker in workers {
            // A stopping guard keeps the deadline it had: it is on its way out.
            if !worker.stopping {
                worker.extend(deadline).await;
                self.guards.extended(worker.generation, deadline);
            }
        }
    }

    async fn stop_all(&mut self, grace: Duration) {
        for slot in &mut self.slots {
            slot.restart_at = None;
            if let Some(worker) = &mut slot.worker {
                if !worker.stopping {
                    worker.stop(grace).await;
                }
            }
        }
    }

    /// Whether every worker tree this executor started is gone (or past the deadline its
    /// guard enforces), so the lease may go back.
    fn trees_gone(&self, now: Instant) -> bool {
        match self.guards.gone(now) {
            Some(Gone::Confirmed) => true,
            Some(Gone::PastDeadline) => {
                tracing::warn!(
                    guards = self.guards.len(),
                    "guards past their deadline without reporting: their trees are killed by now"
                );
                true
            }
            None => false,
        }
    }

    async fn on_worker_event(&mut self, event: WorkerEvent) {
        let now = self.clock.now();
        if let GuardEvent::Ended(how) = &event.event {
            self.guards.ended(event.generation);
            if self.on_retired_ended(event.generation, how).await {
                return;
            }
        }
        if let Some(reload) = &mut self.reload {
            if let Some(pos) = reload
                .started
                .iter()
                .position(|(w, _)| w.generation == event.generation)
            {
                match event.event {
                    GuardEvent::Started(pid) => reload.started[pos].0.pid = Some(pid),
                    GuardEvent::Ended(how) => {
                        let (worker, _) = reload.started.remove(pos);
                        worker.reap().await;
                        self.abort_reload(&format!(
                            "new worker {} ended during the reload ({how})",
                            event.instance
                        ))
                        .await;
                    }
                }
                return;
            }
        }
        let holding = self.held.is_some_and(|h| !h.draining);
        let Some(slot) = self.slots.iter_mut().find(|s| s.instance == event.instance) else {
            return;
        };
        let Some(worker) = &mut slot.worker else {
            return;
        };
        if worker.generation != event.generation {
            return;
        }
        match event.event {
            GuardEvent::Started(pid) => worker.pid = Some(pid),
            GuardEvent::Ended(how) => {
                let Some(worker) = slot.worker.take() else {
                    return;
                };
                // The guard says `stopped` when it ended the tree (deadline reached while
                // this executor could not renew, e.g. frozen): not the worker's fault.
                let crashed = !worker.stopping && !how.starts_with("stopped");
                let started_at = worker.started_at;
                worker.reap().await;
                slot.health = Health::Unknown;
                if crashed && holding {
                    let at = slot.restarts.on_exit(started_at, now);
                    tracing::warn!(instance = slot.instance, %how, restart_in = ?at.saturating_duration_since(now), "worker crashed");
                    slot.restart_at = Some(at);
                } else {
                    slot.restarts.on_stopped();
                    tracing::info!(instance = slot.instance, %how, "worker tree gone");
                }
            }
        }
        self.after_stop().await;
    }

    /// A retired worker's guard reported its tree gone: reaps it. False if `generation`
    /// is not a retired worker.
    async fn on_retired_ended(&mut self, generation: u64, how: &str) -> bool {
        let Some(pos) = self.retired.iter().position(|w| w.generation == generation) else {
            return false;
        };
        let worker = self.retired.swap_remove(pos);
        tracing::info!(instance = worker.instance, generation, %how, "retired worker tree gone");
        worker.reap().await;
        self.after_stop().await;
        true
    }

    /// Once every worker tree is gone, a drained lease goes back at once, and so does
    /// the lease of an executor that became unhealthy.
    async fn after_stop(&mut self) {
        let now = self.clock.now();
        let draining = self.held.is_some_and(|h| h.draining);
        if !(draining || self.releasing.is_some()) || !self.trees_gone(now) {
            return;
        }
        if draining {
            tracing::info!("every worker tree gone: releasing the lease");
            self.held = None;
            if let Some(session) = &self.session {
                session.release().await;
            }
        }
        if let Some(session) = self.releasing.take() {
            tracing::info!("every worker tree gone: giving the lease up");
            tokio::spawn(async move { session.shutdown().await });
        }
    }

    fn on_health(&mut self, result: HealthResult) {
        let now = self.clock.now();
        if let Some(reload) = &mut self.reload {
            for (worker, health) in &mut reload.started {
                if worker.generation == result.generation {
                    *health = health.record(result.ok, now);
                }
            }
        }
        for slot in &mut self.slots {
            if slot
                .worker
                .as_ref()
                .is_some_and(|w| w.generation == result.generation)
            {
                slot.health = slot.health.record(result.ok, now);
            }
        }
    }

    /// How often to report: the cadence the cluster sent with the lease, else the
    /// configured one.
    fn report_interval(&self) -> Duration {
        self.session
            .as_ref()
            .and_then(|s| s.granted_timing())
            .and_then(|t| t.keepalive_interval)
            .unwrap_or(self.opts.report_interval)
    }

    /// Checks the stop grace against the timing the cluster sent with the lease (the
    /// configured timing may be the defaults when only endpoints were given): an executor
    /// keeps twice its stop grace off the lease, and what the cluster's timing leaves for
    /// that must outlast a leader election, or elections stop the workers. Warns, since
    /// the lease is already held; `failover exec` refuses the same at start when it knows
    /// the topology.
    fn take_cluster_timing(&mut self) {
        let Some(timing) = self.session.as_ref().and_then(|s| s.granted_timing()) else {
            return;
        };
        if timing.max_clock_drift != self.opts.max_clock_drift || timing.ttl != self.opts.lease_ttl
        {
            tracing::info!(
                ttl = ?timing.ttl,
                max_clock_drift = ?timing.max_clock_drift,
                keepalive = ?timing.keepalive_interval,
                "using the cluster's lease timing"
            );
        }
        let kept = 2 * self.opts.stop_grace;
        if let Some(margin) = timing.ride_out_margin.filter(|m| kept >= *m) {
            tracing::warn!(
                stop_grace = ?self.opts.stop_grace,
                ride_out_margin = ?margin,
                "--stop-grace is too long for the cluster's timing: the executor keeps 2 x stop \
                 grace off the lease, more than the cluster's timing leaves to ride out a \
                 leader election, so an election can stop the workers; use a stop grace under \
                 half the margin (docs/leases.md, \"Riding out controller churn\")"
            );
        }
    }

    async fn on_tick(&mut self) {
        let now = self.clock.now();
        self.after_stop().await;
        self.start_due_workers(now);
        self.check_health(now);
        self.check_unhealthy(now).await;
        self.advance_reload(now).await;
        if self
            .last_report
            .is_none_or(|at| now.saturating_duration_since(at) >= self.report_interval())
        {
            self.last_report = Some(now);
            self.report().await;
        }
    }

    fn start_due_workers(&mut self, now: Instant) {
        // A worker started less than a stop grace before the deadline would be stopped by
        // its guard at once; wait for the next renewal instead.
        let stop_grace = self.opts.stop_grace;
        let Some(held) = self
            .held
            .filter(|h| !h.draining && now + stop_grace < h.valid_until)
        else {
            return;
        };
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            let due = slot.worker.is_none() && slot.restart_at.is_none_or(|at| now >= at);
            if due {
                let instance = slot.instance;
                let worker = self.spawn(instance, held);
                let slot = &mut self.slots[i];
                slot.restart_at = None;
                slot.worker = worker;
            }
        }
    }

    fn check_health(&mut self, now: Instant) {
        let Some(check) = self.opts.health.clone() else {
            return;
        };
        let Some(held) = self.held else { return };
        let mut due = Vec::new();
        for slot in &mut self.slots {
            let Some(worker) = &slot.worker else { continue };
            if worker.stopping
                || slot
                    .last_check
                    .is_some_and(|at| now.saturating_duration_since(at) < HEALTH_INTERVAL)
            {
                continue;
            }
            slot.last_check = Some(now);
            due.push((slot.instance, worker.generation));
        }
        if let Some(reload) = &self.reload {
            due.extend(
                reload
                    .started
                    .iter()
                    .map(|(w, _)| (w.instance, w.generation)),
            );
        }
        for (instance, generation) in due {
            let (check, env, port, results) = (
                check.clone(),
                self.env(instance, &held),
                self.port(instance),
                self.health.0.clone(),
            );
            tokio::spawn(async move {
                let ok = check.run(&env, port).await;
                let _ = results.send(HealthResult { generation, ok }).await;
            });
        }
    }

    /// A crash loop or a long-failing health check makes the executor unhealthy: it stops
    /// its workers, gives the lease up and stays out for a while, so a site whose workers
    /// cannot run does not hold the group.
    async fn check_unhealthy(&mut self, now: Instant) {
        if let Some((until, _)) = &self.unhealthy {
            if now >= *until && self.releasing.is_none() {
                tracing::info!("cooldown over: ready to take the lease again");
                self.unhealthy = None;
                for slot in &mut self.slots {
                    slot.restarts = Restarts::new(self.opts.restart);
                }
                self.start_session();
            }
            return;
        }
        let reason = self.slots.iter().find_map(|s| {
            if s.restarts.crash_looping(now) {
                return Some(format!("worker {} is crash-looping", s.instance));
            }
            match s.health {
                Health::Unhealthy { since }
                    if now.saturating_duration_since(since) >= UNHEALTHY_AFTER =>
                {
                    Some(format!(
                        "worker {} failed its health check for {UNHEALTHY_AFTER:?}",
                        s.instance
                    ))
                }
                _ => None,
            }
        });
        let Some(reason) = reason else { return };
        tracing::error!(%reason, "executor unhealthy: stopping workers and giving the lease up");
        self.unhealthy = Some((now + UNHEALTHY_COOLDOWN, reason));
        self.abort_reload("the executor became unhealthy").await;
        self.stop_all(self.opts.stop_grace).await;
        // The session keeps renewing (its holder is no longer watched, so nothing new
        // starts) and is released once every guard reports its tree gone: the next site
        // cannot start while a worker here still runs.
        self.lease = None;
        self.releasing = self.session.take();
        self.held = None;
        self.after_stop().await;
        self.lease_state = LeaseState::Lost {
            reason: "executor unhealthy".into(),
        };
    }

    fn begin_reload(&mut self, generation: u64) {
        self.reload_asked = self.reload_asked.max(generation);
        if self.reload.is_some() {
            return;
        }
        if self.held.is_none_or(|h| h.draining) {
            self.reload_done = (
                generation,
                true,
                "no workers running (standby); nothing to reload".into(),
            );
            return;
        }
        tracing::info!(generation, "rolling reload begins");
        self.reload = Some(Reload {
            generation,
            started: Vec::new(),
            began: self.clock.now(),
        });
    }

    /// Starts the new workers one at a time, each after the previous passed its health
    /// check; once all are healthy, retires the old ones. Any failure stops the new ones
    /// and leaves the old generation running.
    async fn advance_reload(&mut self, now: Instant) {
        let Some(held) = self.held.filter(|h| !h.draining) else {
            return;
        };
        let Some(reload) = &self.reload else { return };
        if now.saturating_duration_since(reload.began) > RELOAD_TIMEOUT {
            self.abort_reload(&format!(
                "new workers did not pass their health checks within {RELOAD_TIMEOUT:?}"
            ))
            .await;
            return;
        }
        let settled = |(w, h): &(Worker, Health)| match self.opts.health {
            Some(_) => *h == Health::Healthy,
            None => {
                w.pid.is_some()
                    && now.saturating_duration_since(w.started_at) >= SETTLE_WITHOUT_CHECK
            }
        };
        if !reload.started.iter().all(settled) {
            return;
        }
        let next = reload.started.len() as u32;
        if next < self.opts.instances {
            if let Some(worker) = self.spawn(next, held) {
                if let Some(reload) = &mut self.reload {
                    reload.started.push((worker, Health::Unknown));
                }
            }
            return;
        }
        let Some(reload) = self.reload.take() else {
            return;
        };
        for (worker, health) in reload.started {
            let slot = &mut self.slots[worker.instance as usize];
            if let Some(old) = &mut slot.worker {
                old.stop(self.opts.stop_grace).await;
            }
            let old = slot.worker.replace(worker);
            slot.health = health;
            slot.last_check = None;
            // The retiring generation counts until its guards report the trees gone.
            self.retired.extend(old);
        }
        tracing::info!(generation = reload.generation, "rolling reload done");
        self.reload_done = (reload.generation, true, "all workers replaced".into());
    }

    async fn abort_reload(&mut self, why: &str) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        tracing::warn!(generation = reload.generation, %why, "reload rolled back; the old workers keep running");
        for (mut worker, _) in reload.started {
            worker.stop(self.opts.stop_grace).await;
            self.retired.push(worker);
        }
        self.reload_done = (reload.generation, false, format!("rolled back: {why}"));
    }

    fn ready(&self, now: Instant) -> bool {
        self.unhealthy.is_none() && !self.slots.iter().any(|s| s.restarts.crash_looping(now))
    }

    fn report_message(&self, now: Instant) -> ExecutorReport {
        let (state, epoch, token) = match &self.lease_state {
            LeaseState::Acquired { epoch, token, .. } => (WireLease::Acquired, *epoch, *token),
            LeaseState::Draining { epoch, token, .. } => (WireLease::Draining, *epoch, *token),
            LeaseState::Standby { epoch, .. } => (WireLease::Standby, *epoch, FencingToken(0)),
            LeaseState::Lost { .. } => (WireLease::Lost, Epoch(0), FencingToken(0)),
            LeaseState::Connecting => (WireLease::Connecting, Epoch(0), FencingToken(0)),
        };
        let state = if self.unhealthy.is_some() {
            WireLease::Paused
        } else {
            state
        };
        let workers = self
            .slots
            .iter()
            .map(|s| {
                let (pid, worker_state, uptime, generation) = match &s.worker {
                    Some(w) if w.stopping => {
                        (w.pid.unwrap_or(0), WorkerState::Stopping, 0, w.generation)
                    }
                    Some(w) => (
                        w.pid.unwrap_or(0),
                        if w.pid.is_some() {
                            WorkerState::Running
                        } else {
                            WorkerState::Starting
                        },
                        now.saturating_duration_since(w.started_at).as_millis() as u64,
                        w.generation,
                    ),
                    None if s.restart_at.is_some() => (0, WorkerState::Backoff, 0, 0),
                    None => (0, WorkerState::Stopped, 0, 0),
                };
                WorkerReport {
                    instance: s.instance,
                    pid,
                    state: worker_state.into(),
                    restarts: s.restarts.count,
                    uptime_ms: uptime,
                    health: s.health.wire().into(),
                    generation,
                }
            })
            .collect();
        ExecutorReport {
            executor_id: self.opts.executor_id.clone(),
            group: self.opts.group.clone(),
            site: self.opts.site.clone(),
            ready: self.ready(now),
            healthy: self.unhealthy.is_none(),
            lease_state: state.into(),
            epoch: epoch.0,
            fencing_token: token.0,
            workers,
            reload_done: self.reload_done.0,
            reload_ok: self.reload_done.1,
            reload_message: self.reload_done.2.clone(),
            message: self
                .unhealthy
                .as_ref()
                .map(|(_, why)| why.clone())
                .unwrap_or_default(),
        }
    }

    /// Sends the heartbeat report to the leader (following its hint); starts a reload
    /// when the leader asks for a newer one.
    async fn report(&mut self) {
        let report = self.report_message(self.clock.now());
        let addrs = self.opts.endpoints.addrs().to_vec();
        let mut targets: Vec<String> = self.reporter.iter().cloned().collect();
        targets.extend(addrs);
        for addr in targets.into_iter().take(8) {
            let Ok(channel) = self.dialer.channel(&addr) else {
                continue;
            };
            let mut client = failover_proto::wire::executor_client(channel);
            let sent =
                tokio::time::timeout(Duration::from_secs(1), client.report(report.clone())).await;
            match sent {
                Ok(Ok(ack)) => {
                    if let Some(registered) = self.opts.registered.take() {
                        registered.notify_one();
                    }
                    self.reporter = Some(addr);
                    let asked = ack.into_inner().reload_generation;
                    if asked > self.reload_done.0 && asked > self.reload_asked {
                        self.begin_reload(asked);
                    }
                    return;
                }
                Ok(Err(status)) => {
                    self.reporter = status
                        .metadata()
                        .get(failover_proto::wire::LEADER_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if let Some(leader) = self.reporter.clone() {
                        if leader != addr {
                            continue;
                        }
                    }
                }
                Err(_) => self.reporter = None,
            }
        }
    }

    async fn shutdown(&mut self) {
        tracing::info!("shutting down: stopping workers, then releasing the lease");
        self.abort_reload("the executor is shutting down").await;
        self.stop_all(self.opts.stop_grace).await;
        // Bounded by the guards' deadlines: past them, every guard has killed its tree.
        while !self.trees_gone(self.clock.now()) {
            match tokio::time::timeout(TICK, self.events.1.recv()).await {
                Ok(Some(event)) => self.on_worker_event(event).await,
                Ok(None) => break,
                Err(_) => {}
            }
        }
        for session in [self.session.take(), self.releasing.take()]
            .into_iter()
            .flatten()
        {
            session.shutdown().await;
        }
        crate::deregister::deregister(&*self.dialer, &self.opts, self.reporter.as_deref()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_core::{Epoch, FencingToken, LeaseId};

    fn acquired(token: u64, valid_for_ms: u64) -> LeaseState {
        LeaseState::Acquired {
            lease: LeaseId(7),
            token: FencingToken(token),
            epoch: Epoch(3),
            valid_until: Instant::now() + Duration::from_millis(valid_for_ms),
        }
    }

    /// A renewal (a later deadline) or a repeated standby poll gives the same line, so it
    /// is logged once; a new token, a new epoch or another state gives a new line.
    #[test]
    fn lease_state_lines_change_only_with_the_state() {
        assert_eq!(
            lease_state_line(&acquired(5, 100)),
            lease_state_line(&acquired(5, 3500))
        );
        assert_eq!(
            lease_state_line(&acquired(5, 100)),
            "acquired (epoch 3, token 5)"
        );
        assert_ne!(
            lease_state_line(&acquired(5, 100)),
            lease_state_line(&acquired(6, 100))
        );
        let standby = |site: &str, epoch| LeaseState::Standby {
            active_site: (!site.is_empty()).then(|| site.into()),
            epoch: Epoch(epoch),
        };
        assert_eq!(
            lease_state_line(&standby("site-a", 2)),
            "standby (site-a active at epoch 2)"
        );
        assert_ne!(
            lease_state_line(&standby("site-a", 2)),
            lease_state_line(&standby("site-b", 3))
        );
        assert_eq!(
            lease_state_line(&standby("", 4)),
            "standby (no site active at epoch 4)"
        );
    }
}
