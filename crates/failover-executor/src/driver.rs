//! The thin driver of `failover exec`: carries out what the supervisor
//! ([`failover_core::executor::Supervisor`]) decides and feeds back what happened.
//!
//! One task owns everything and runs a short fixed sequence per wake-up: take one event
//! (a lease state change, a guard's report, a health result, a tick, operator control),
//! hand it to the supervisor with the injected clock's `now`, then carry out every
//! action it returns, in order. Nothing here decides when a worker starts, stops or
//! restarts, or when the lease goes back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use failover_client::clock::Clock;
use failover_client::{Dialer, LeaseSession, LeaseState};
use failover_core::executor::{Action, Supervisor, WorkerExit, WorkerId, TICK};
use tokio::sync::{mpsc, watch};

use crate::deregister;
use crate::monotonic::Reading;
use crate::options::{self, Control, ExecutorError, ExecutorOptions};
use crate::report::{self, Delivery};
use crate::session::{self, lease_state_line};
use crate::worker::{GuardEvent, Spawn, Worker, WorkerEvent};

/// Bound of the queues guard reports and health results arrive on.
const QUEUE: usize = 256;

/// Runs an executor until `Control::Shutdown` (or until `control` closes).
pub async fn run(
    opts: ExecutorOptions,
    dialer: Arc<dyn Dialer>,
    clock: Arc<dyn Clock>,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), ExecutorError> {
    options::validate(&opts)?;
    let mut driver = Driver::new(opts, dialer, clock);
    driver.start_session();
    let mut tick = tokio::time::interval(TICK);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            changed = lease_changed(&mut driver.lease) => if changed { driver.on_lease() },
            Some(event) = driver.events.1.recv() => driver.on_worker_event(event).await,
            Some((worker, ok)) = driver.health.1.recv() => {
                let now = driver.clock.now();
                driver.supervisor.handle_health(now, worker, ok);
            }
            Some(delivery) = driver.deliveries.1.recv() => driver.on_delivery(delivery),
            _ = tick.tick() => driver.on_tick(shutting_down).await,
            cmd = control.recv(), if !shutting_down => {
                let now = driver.clock.now();
                match cmd {
                    Some(Control::Reload) => driver.supervisor.handle_local_reload(now),
                    Some(Control::Shutdown) | None => {
                        tracing::info!("shutting down: stopping workers, then releasing the lease");
                        shutting_down = true;
                        driver.supervisor.handle_shutdown(now);
                    }
                }
            }
        }
        if driver.carry_out().await {
            driver.finish().await;
            return Ok(());
        }
    }
}

/// Resolves when the lease state changes; pending forever without a session.
async fn lease_changed(lease: &mut Option<watch::Receiver<LeaseState>>) -> bool {
    match lease {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// A health check's answer: the worker and whether it passed.
type HealthResult = (WorkerId, bool);

struct Driver {
    opts: ExecutorOptions,
    dialer: Arc<dyn Dialer>,
    clock: Arc<dyn Clock>,
    supervisor: Supervisor,
    /// The session the supervisor follows.
    session: Option<LeaseSession>,
    lease: Option<watch::Receiver<LeaseState>>,
    /// The lease state as last published (reported to the controllers).
    lease_state: LeaseState,
    /// The lease state as last logged, so each change is logged once.
    lease_logged: Option<String>,
    /// A session given up (executor unhealthy), released once the supervisor says every
    /// tree is gone.
    detached: Option<LeaseSession>,
    workers: BTreeMap<WorkerId, Worker>,
    events: (mpsc::Sender<WorkerEvent>, mpsc::Receiver<WorkerEvent>),
    health: (mpsc::Sender<HealthResult>, mpsc::Receiver<HealthResult>),
    last_report: Option<Instant>,
    /// The controller to send the next report to first (the last one that took it).
    reporter: Option<String>,
    /// The report on its way, if any: at most one at a time, never awaited by the loop
    /// (see [`report`]).
    reporting: Option<tokio::task::JoinHandle<()>>,
    deliveries: (mpsc::Sender<Delivery>, mpsc::Receiver<Delivery>),
    /// This process's incarnation, in every report and in the deregistration.
    incarnation: u64,
}

impl Driver {
    fn new(opts: ExecutorOptions, dialer: Arc<dyn Dialer>, clock: Arc<dyn Clock>) -> Driver {
        let supervisor = Supervisor::new(options::supervisor_config(&opts));
        Driver {
            opts,
            dialer,
            clock,
            supervisor,
            session: None,
            lease: None,
            lease_state: LeaseState::Connecting,
            lease_logged: None,
            detached: None,
            workers: BTreeMap::new(),
            events: mpsc::channel(QUEUE),
            health: mpsc::channel(QUEUE),
            last_report: None,
            reporter: None,
            reporting: None,
            deliveries: mpsc::channel(4),
            incarnation: report::new_incarnation(),
        }
    }

    fn start_session(&mut self) {
        let session = session::start(&self.opts, self.dialer.clone(), self.clock.clone());
        self.lease = Some(session.state());
        self.session = Some(session);
    }

    fn on_lease(&mut self) {
        let Some(rx) = &mut self.lease else { return };
        let state = rx.borrow_and_update().clone();
        let line = lease_state_line(&state);
        if self.lease_logged.as_ref() != Some(&line) {
            tracing::info!(site = %self.opts.site, group = %self.opts.group, "lease state: {line}");
            self.lease_logged = Some(line);
        }
        let newly_acquired = matches!(state, LeaseState::Acquired { .. })
            && !matches!(self.lease_state, LeaseState::Acquired { .. });
        if newly_acquired {
            if let Some(session) = &self.session {
                session::check_cluster_timing(session, &self.opts);
            }
        }
        let view = session::view(&state);
        self.lease_state = state;
        self.supervisor.handle_lease(self.clock.now(), view);
    }

    async fn on_worker_event(&mut self, event: WorkerEvent) {
        let now = self.clock.now();
        match event.event {
            GuardEvent::Started(pid) => {
                self.supervisor
                    .handle_worker_started(now, event.worker, pid)
            }
            GuardEvent::Ended { exit, report } => {
                let instance = event.instance;
                if exit.ended_on_its_own() {
                    tracing::warn!(instance, worker = event.worker.0, %exit, %report, "worker ended");
                } else {
                    tracing::info!(instance, worker = event.worker.0, %report, "worker tree gone");
                }
                if let Some(worker) = self.workers.remove(&event.worker) {
                    worker.reap().await;
                }
                self.supervisor.handle_worker_ended(now, event.worker, exit);
            }
        }
    }

    async fn on_tick(&mut self, shutting_down: bool) {
        let now = self.clock.now();
        self.supervisor.handle_tick(now);
        let interval = session::report_interval(self.session.as_ref(), self.opts.report_interval);
        let due = self
            .last_report
            .is_none_or(|at| now.saturating_duration_since(at) >= interval);
        if due && !shutting_down {
            self.last_report = Some(now);
            self.report(now);
        }
    }

    /// Sends the heartbeat report in a task of its own; skipped while the previous one is
    /// still on its way.
    fn report(&mut self, now: Instant) {
        if self.reporting.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let message = report::message(
            &self.opts,
            self.incarnation,
            &self.supervisor,
            &self.lease_state,
            now,
        );
        let dialer = self.dialer.clone();
        let endpoints = self.opts.endpoints.addrs().to_vec();
        let hint = self.reporter.clone();
        let done = self.deliveries.0.clone();
        self.reporting = Some(tokio::spawn(async move {
            let delivery = report::deliver(dialer, endpoints, hint, message).await;
            // The loop may have ended meanwhile; then nobody needs the outcome.
            let _ = done.send(delivery).await;
        }));
    }

    /// A report's outcome: whom to ask next, and the reload generation the leader asks for.
    fn on_delivery(&mut self, delivery: Delivery) {
        self.reporter = delivery.ask_next;
        let Some(generation) = delivery.reload_generation else {
            return;
        };
        if let Some(registered) = self.opts.registered.take() {
            registered.notify_one();
        }
        let now = self.clock.now();
        self.supervisor.handle_cluster_reload(now, generation);
    }

    /// Carries out every action the supervisor owes, in order; true once it said
    /// [`Action::Exit`].
    async fn carry_out(&mut self) -> bool {
        let mut exit = false;
        while let Some(action) = self.supervisor.poll_action() {
            match action {
                Action::Start {
                    worker,
                    instance,
                    epoch,
                    token,
                    deadline,
                } => self.spawn(worker, instance, epoch.0, token.0, deadline),
                Action::Extend { worker, deadline } => {
                    let deadline_ns = Reading::take(&*self.clock).to_ns(deadline);
                    if let Some(w) = self.workers.get_mut(&worker) {
                        w.extend(deadline_ns).await;
                    }
                }
                Action::Stop { worker, grace } => {
                    if let Some(w) = self.workers.get_mut(&worker) {
                        w.stop(grace).await;
                    }
                }
                Action::CheckHealth { worker, instance } => self.check_health(worker, instance),
                Action::ReleaseLease => {
                    tracing::info!("every worker tree gone: releasing the lease");
                    if let Some(session) = &self.session {
                        session.release().await;
                    }
                }
                Action::DetachLease => self.detach(),
                Action::ReleaseDetached => {
                    if let Some(session) = self.detached.take() {
                        tracing::info!("every worker tree gone: giving the lease up");
                        tokio::spawn(async move { session.shutdown().await });
                    }
                }
                Action::Reacquire => {
                    tracing::info!("cooldown over: ready to take the lease again");
                    self.start_session();
                }
                Action::Exit => exit = true,
            }
        }
        exit
    }

    fn spawn(
        &mut self,
        worker: WorkerId,
        instance: u32,
        epoch: u64,
        token: u64,
        deadline: Instant,
    ) {
        let env = vec![
            ("FAILOVER_GROUP".into(), self.opts.group.clone()),
            ("FAILOVER_SITE".into(), self.opts.site.clone()),
            ("FAILOVER_EPOCH".into(), epoch.to_string()),
            // The fencing value is the epoch: the same for every executor of the site.
            ("FAILOVER_FENCING_TOKEN".into(), epoch.to_string()),
            ("FAILOVER_INSTANCE".into(), instance.to_string()),
            (
                "PORT".into(),
                options::port(&self.opts, instance).to_string(),
            ),
        ];
        let spec = Spawn {
            guard_exe: &self.opts.guard_exe,
            command: &self.opts.command,
            env,
            instance,
            worker,
            deadline_ns: Reading::take(&*self.clock).to_ns(deadline),
            stop_grace: self.opts.stop_grace,
            group: &self.opts.group,
            site: &self.opts.site,
            output: &self.opts.output,
            containment: self.opts.containment,
        };
        match Worker::spawn(spec, self.events.0.clone()) {
            Ok(handle) => {
                tracing::info!(instance, worker = worker.0, token, "worker starting");
                self.workers.insert(worker, handle);
            }
            Err(e) => {
                tracing::error!(instance, error = %e, "cannot start the guard");
                self.supervisor.handle_worker_ended(
                    self.clock.now(),
                    worker,
                    WorkerExit::SpawnFailed,
                );
            }
        }
    }

    fn check_health(&self, worker: WorkerId, instance: u32) {
        let (Some(check), Some(handle)) = (self.opts.health.clone(), self.workers.get(&worker))
        else {
            // Nothing to check: the answer is owed all the same.
            let results = self.health.0.clone();
            tokio::spawn(async move { results.send((worker, false)).await });
            return;
        };
        let env = handle.env.clone();
        let port = options::port(&self.opts, instance);
        let results = self.health.0.clone();
        tokio::spawn(async move {
            let ok = check.run(&env, port).await;
            let _ = results.send((worker, ok)).await;
        });
    }

    /// The executor became unhealthy: the session keeps renewing (nothing new starts
    /// from it) and is given up once every guard reports its tree gone, so the next site
    /// cannot start while a worker here still runs.
    fn detach(&mut self) {
        let reason = self.supervisor.unhealthy_reason().unwrap_or_default();
        tracing::error!(%reason, "executor unhealthy: stopping workers and giving the lease up");
        self.lease = None;
        self.detached = self.session.take();
        self.lease_state = LeaseState::Lost {
            reason: "executor unhealthy".into(),
        };
    }

    /// After [`Action::Exit`]: every tree is gone; close the sessions and deregister.
    async fn finish(&mut self) {
        if let Some(reporting) = self.reporting.take() {
            reporting.abort();
        }
        for session in [self.session.take(), self.detached.take()]
            .into_iter()
            .flatten()
        {
            session.shutdown().await;
        }
        deregister::deregister(
            &*self.dialer,
            &self.opts,
            self.incarnation,
            self.reporter.as_deref(),
        )
        .await;
    }
}
