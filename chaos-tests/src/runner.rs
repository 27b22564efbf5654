//! One run: lay out the namespaces, start PostgreSQL, the controllers and the executors,
//! wait until the first site writes, apply a scenario's faults, heal, wait until a site
//! writes again, collect the history, and take everything down (also on error or Ctrl-C).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::cluster::{wait_for, Operator};
use crate::netns::Network;
use crate::procs::{Procs, Spec};
use crate::recorder::{now_ns, HarnessEvent, Observer, WorkerLog};
use crate::sites::{Plan, PG_IP, PG_PORT};
use crate::workload::{connect_local, read_ledger, LedgerRow, Template};

/// Executors per data site (each runs one engine instance).
pub const EXECUTORS_PER_SITE: u32 = 2;
/// Stop grace given to the executors (TERM → KILL).
pub const STOP_GRACE: &str = "500ms";

/// What every run of one invocation shares.
#[derive(Debug, Clone)]
pub struct Options {
    /// The sites file.
    pub sites: PathBuf,
    /// The `failover` binary the cluster runs.
    pub failover_bin: PathBuf,
    /// This binary (its `worker` subcommand is the engine).
    pub chaos_bin: PathBuf,
    /// Whether workers print on stdout too (off until the executor stops reading the
    /// worker's stdout as the guard's control channel).
    pub worker_stdout: bool,
    /// Where run directories go.
    pub work_dir: PathBuf,
    /// Run the etcd-lock baseline (no controllers, no executors, no fencing) instead.
    pub baseline: bool,
    /// Mutual TLS on every channel (certificates issued per run), else plaintext.
    pub tls: bool,
}

/// A running cluster under test and what the harness recorded so far.
pub struct Cluster {
    /// Processes (dropped first: killed before the namespaces go).
    pub procs: Procs,
    /// The namespaces.
    pub net: Network,
    /// Layout and timing.
    pub plan: Plan,
    /// The operator's CLI.
    pub op: Operator,
    /// The run's directory.
    pub dir: PathBuf,
    /// What the harness recorded.
    pub events: Vec<HarnessEvent>,
    /// Executors a fault hit directly (their workers' stops are not needless).
    pub affected_executors: BTreeSet<String>,
    /// Whether any injected delay fell back to loss and throttling (no netem).
    pub netem_missing: bool,
    observer: Option<Observer>,
    options: Options,
    /// Where the run's CA and certificates are, when it runs over TLS.
    tls_dir: Option<PathBuf>,
}

/// What a finished run hands to the checker.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Collected {
    /// Every worker process.
    pub workers: Vec<WorkerLog>,
    /// The ledger's accepted rows.
    pub ledger: Vec<LedgerRow>,
    /// The group's history as the controllers report it.
    pub history: Vec<serde_json::Value>,
    /// The harness's events.
    pub events: Vec<HarnessEvent>,
    /// When the faults began (after warm-up), monotonic ns.
    pub faults_from_ns: u64,
    /// When the history was collected, monotonic ns.
    pub end_ns: u64,
    /// The site active when the faults began.
    pub initial_active: String,
    /// The site active at the end.
    pub final_active: String,
    /// Executors hit directly by a fault.
    pub affected_executors: Vec<String>,
    /// Whether the cluster had a writing active site again after healing.
    pub settled: bool,
    /// Whether delay and reordering could not be injected (kernel without netem).
    pub netem_missing: bool,
}

impl Cluster {
    /// Starts everything for one run in `dir` and waits until the first site writes.
    pub fn start(
        options: &Options,
        plan: Plan,
        template: &Template,
        run_id: &str,
    ) -> anyhow::Result<Cluster> {
        let dir = options.work_dir.join(run_id);
        std::fs::create_dir_all(dir.join("events"))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        set_mode(&dir, 0o755)?;
        set_mode(&dir.join("events"), 0o777)?;
        let config = dir.join("topology.yaml");
        let tls_dir = (options.tls && !options.baseline).then(|| dir.join("tls"));
        let yaml = match &tls_dir {
            Some(tls_dir) => plan.secured_topology_yaml(tls_dir)?,
            None => plan.topology_yaml()?,
        };
        std::fs::write(&config, yaml)?;
        let net = Network::create(run_id, &plan)?;
        let op = Operator {
            ns: net.ops.ns.clone(),
            bin: options.failover_bin.clone(),
            config: config.clone(),
            group: plan.group.clone(),
            env: client_env(tls_dir.as_deref(), "operator-dev"),
        };
        let mut cluster = Cluster {
            procs: Procs::default(),
            net,
            plan,
            op,
            dir: dir.clone(),
            events: Vec::new(),
            affected_executors: BTreeSet::new(),
            netem_missing: false,
            observer: Some(Observer::start(dir.join("events"))),
            options: options.clone(),
            tls_dir,
        };
        cluster.start_postgres(template)?;
        if options.baseline {
            cluster.start_etcd()?;
        } else {
            for id in cluster.plan.controllers() {
                cluster.start_controller(id)?;
            }
            wait_for(Duration::from_secs(60), || cluster.op.leader())
                .context("no Raft leader within 60 s")?;
        }
        for site in cluster.data_sites() {
            for k in 1..=EXECUTORS_PER_SITE {
                cluster.start_executor(&site, k)?;
            }
        }
        cluster.warm_up()?;
        Ok(cluster)
    }

    fn start_postgres(&mut self, template: &Template) -> anyhow::Result<()> {
        let socket = self.dir.join("pgsock");
        let argv = template.instance(&self.dir.join("pgdata"), &socket)?;
        let spec = Spec {
            ns: self.net.pg.ns.clone(),
            argv,
            env: Vec::new(),
            log: self.dir.join("logs/postgres.log"),
        };
        self.procs.start("postgres", spec)?;
        let mut client = connect_local(&socket, Duration::from_secs(30))?;
        client.batch_execute(crate::workload::SCHEMA)?;
        Ok(())
    }

    /// The etcd members of the baseline: one per site, three at most.
    fn etcd_members(&self) -> Vec<(String, std::net::Ipv4Addr)> {
        self.plan
            .sites
            .iter()
            .take(3)
            .map(|s| (format!("etcd-{}", s.name), s.ip))
            .collect()
    }

    fn start_etcd(&mut self) -> anyhow::Result<()> {
        let members = self.etcd_members();
        for (i, (name, ip)) in members.iter().enumerate() {
            let site = self.plan.sites[i].name.clone();
            let argv = crate::baseline::member_argv(
                name,
                *ip,
                &members,
                &self.dir.join(name),
                &self.plan.timing,
            );
            let spec = Spec {
                ns: self.net.site(&site)?.ns.clone(),
                argv,
                env: Vec::new(),
                log: self.dir.join(format!("logs/{name}.log")),
            };
            self.procs.start(name, spec)?;
        }
        Ok(())
    }

    /// Whether this run is the etcd baseline.
    pub fn baseline(&self) -> bool {
        self.options.baseline
    }

    /// The active site: the group's, or in the baseline the site of the latest write.
    pub fn active_site(&self) -> Option<String> {
        if !self.options.baseline {
            return self
                .op
                .group()
                .map(|g| g.active_site)
                .filter(|s| !s.is_empty());
        }
        let mut client = connect_local(&self.dir.join("pgsock"), Duration::from_secs(5)).ok()?;
        read_ledger(&mut client)
            .ok()?
            .last()
            .map(|r| r.site.clone())
    }

    /// The name of a controller's process.
    pub fn controller_name(id: u64) -> String {
        format!("c{id}")
    }

    fn start_controller(&mut self, id: u64) -> anyhow::Result<()> {
        let site = self
            .plan
            .site_of(id)
            .with_context(|| format!("controller {id} has no site"))?
            .name
            .clone();
        let ns = self.net.site(&site)?.ns.clone();
        let bin = self.options.failover_bin.display().to_string();
        let spec = Spec {
            ns,
            argv: vec![
                bin,
                "controller".into(),
                "--config".into(),
                self.op.config.display().to_string(),
                "--node".into(),
                id.to_string(),
                "--data-dir".into(),
                self.dir.join(format!("c{id}")).display().to_string(),
            ],
            env: Vec::new(),
            log: self.dir.join(format!("logs/c{id}.log")),
        };
        self.procs.start(&Cluster::controller_name(id), spec)
    }

    /// The name of an executor's process.
    pub fn executor_name(site: &str, k: u32) -> String {
        format!("exec-{site}-{k}")
    }

    fn start_executor(&mut self, site: &str, k: u32) -> anyhow::Result<()> {
        let name = Cluster::executor_name(site, k);
        let mut worker = vec![
            self.options.chaos_bin.display().to_string(),
            "worker".into(),
            "--events-dir".into(),
            self.dir.join("events").display().to_string(),
            "--pg".into(),
            format!("{PG_IP}:{PG_PORT}"),
        ];
        if self.options.worker_stdout {
            worker.push("--stdout".into());
        }
        if k == 2 {
            worker.push("--ignore-term".into());
        }
        if self.options.baseline {
            return self.start_gate(site, &name, worker);
        }
        let mut argv = vec![
            self.options.failover_bin.display().to_string(),
            "exec".into(),
            "--site".into(),
            site.into(),
            "--group".into(),
            self.plan.group.clone(),
            "--config".into(),
            self.op.config.display().to_string(),
            "--instances".into(),
            "1".into(),
            "--id".into(),
            name.clone(),
            "--stop-grace".into(),
            STOP_GRACE.into(),
            "--drain-timeout".into(),
            "2s".into(),
            "--".into(),
        ];
        argv.extend(worker);
        let spec = Spec {
            ns: self.net.site(site)?.ns.clone(),
            argv,
            env: std::iter::once(("CHAOS_EXECUTOR".into(), name.clone()))
                .chain(client_env(
                    self.tls_dir.as_deref(),
                    &format!("engine-{site}"),
                ))
                .collect(),
            log: self.dir.join(format!("logs/{name}.log")),
        };
        self.procs.start(&name, spec)
    }

    fn start_gate(
        &mut self,
        site: &str,
        name: &str,
        mut worker: Vec<String>,
    ) -> anyhow::Result<()> {
        worker.push("--no-fence".into());
        // Each gate talks to its own site's member (etcd 3.4's client balances requests
        // over every endpoint, so a watch could sit on a cut-off member for seconds).
        let members = self.etcd_members();
        let own = self.net.site(site)?.ip;
        let endpoints = members
            .iter()
            .filter(|(_, ip)| *ip == own || !members.iter().any(|(_, m)| *m == own))
            .map(|(_, ip)| format!("http://{ip}:{}", crate::baseline::CLIENT_PORT))
            .collect::<Vec<_>>()
            .join(",");
        let ttl_s = self.plan.timing.lease_ttl_ms.div_ceil(1000).max(1);
        let mut argv = vec![
            self.options.chaos_bin.display().to_string(),
            "etcd-gate".into(),
            "--endpoints".into(),
            endpoints,
            "--ttl-s".into(),
            ttl_s.to_string(),
            "--".into(),
        ];
        argv.extend(worker);
        let spec = Spec {
            ns: self.net.site(site)?.ns.clone(),
            argv,
            env: vec![
                ("CHAOS_EXECUTOR".into(), name.to_string()),
                ("FAILOVER_SITE".into(), site.to_string()),
            ],
            log: self.dir.join(format!("logs/{name}.log")),
        };
        self.procs.start(name, spec)
    }

    /// Sites eligible for the group (they run executors).
    pub fn data_sites(&self) -> Vec<String> {
        self.plan.group_sites.clone()
    }

    /// Waits until the active site's workers have written and a standby reports ready.
    fn warm_up(&mut self) -> anyhow::Result<()> {
        if self.options.baseline {
            wait_for(Duration::from_secs(60), || self.active_site())
                .context("no baseline worker wrote within 60 s")?;
            return Ok(());
        }
        let active = wait_for(Duration::from_secs(60), || {
            self.op.group().filter(|g| !g.active_site.is_empty())
        })
        .context("no active site within 60 s")?
        .active_site;
        let socket = self.dir.join("pgsock");
        let mut client = connect_local(&socket, Duration::from_secs(10))?;
        wait_for(Duration::from_secs(60), || {
            let rows = read_ledger(&mut client).ok()?;
            let writers: BTreeSet<i32> = rows
                .iter()
                .filter(|r| r.site == active)
                .map(|r| r.pid)
                .collect();
            (writers.len() >= EXECUTORS_PER_SITE as usize).then_some(())
        })
        .with_context(|| format!("the workers of {active} did not write within 60 s"))?;
        for site in self.data_sites().iter().filter(|s| **s != active) {
            wait_for(Duration::from_secs(30), || {
                self.op.site_ready(site).then_some(())
            })
            .with_context(|| format!("no executor of {site} reported ready within 30 s"))?;
        }
        Ok(())
    }

    /// Records an event.
    pub fn note(&mut self, text: impl Into<String>) {
        self.events.push(HarnessEvent::Note {
            t_ns: now_ns(),
            text: text.into(),
        });
    }

    /// Kills a controller with SIGKILL.
    pub fn kill_controller(&mut self, id: u64) {
        self.procs.kill(&Cluster::controller_name(id));
        self.note(format!("controller {id} SIGKILLed"));
    }

    /// Starts a controller again on its data dir.
    pub fn restart_controller(&mut self, id: u64) -> anyhow::Result<()> {
        self.procs.restart(&Cluster::controller_name(id))?;
        self.note(format!("controller {id} restarted"));
        Ok(())
    }

    /// SIGKILLs an executor (its guards then stop its workers).
    pub fn kill_executor(&mut self, name: &str) {
        self.procs.kill(name);
        self.affected_executors.insert(name.to_string());
        self.note(format!("{name} SIGKILLed"));
    }

    /// Starts an executor again.
    pub fn restart_executor(&mut self, name: &str) -> anyhow::Result<()> {
        self.procs.restart(name)?;
        self.note(format!("{name} restarted"));
        Ok(())
    }

    /// The pids of every process of a site (controllers, executors, guards, workers).
    pub fn site_pids(&self, site: &str) -> anyhow::Result<Vec<i32>> {
        Ok(crate::netns::pids(&self.net.site(site)?.ns))
    }

    /// Collects the history, then stops the observer.
    pub fn collect(
        &mut self,
        faults_from_ns: u64,
        initial_active: String,
        settled: bool,
    ) -> anyhow::Result<Collected> {
        let end_ns = now_ns();
        let mut client = connect_local(&self.dir.join("pgsock"), Duration::from_secs(10))?;
        let ledger = read_ledger(&mut client)?;
        let history = if self.options.baseline {
            Vec::new()
        } else {
            wait_for(Duration::from_secs(20), || self.op.history().ok())
                .context("no controller answered `failover history` within 20 s")?
        };
        let final_active = self.active_site().unwrap_or_default();
        let exits = self
            .observer
            .take()
            .map(Observer::finish)
            .unwrap_or_default();
        let workers = crate::recorder::read_workers(&self.dir.join("events"), &exits);
        Ok(Collected {
            workers,
            ledger,
            history,
            events: self.events.clone(),
            faults_from_ns,
            end_ns,
            initial_active,
            final_active,
            affected_executors: self.affected_executors.iter().cloned().collect(),
            settled,
            netem_missing: self.netem_missing,
        })
    }

    /// Stops every process and removes the namespaces.
    pub fn teardown(mut self) {
        // Executors first: their guards stop the workers.
        for name in self.procs.names() {
            if name.starts_with("exec-") {
                self.procs.kill(&name);
            }
        }
        self.procs.kill_all();
        self.net.remove();
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Sleeps, but gives up at once on Ctrl-C.
pub fn pause(duration: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + duration;
    while std::time::Instant::now() < deadline {
        if crate::interrupted() {
            anyhow::bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(20).min(duration));
    }
    Ok(())
}

/// Undoes every fault (links, drops, frozen processes, killed processes), then waits until
/// a site is active and its workers write at the current epoch. Returns whether that
/// happened within `timeout`.
pub fn heal_and_settle(cluster: &mut Cluster, timeout: Duration) -> anyhow::Result<bool> {
    cluster.net.heal()?;
    for site in cluster.plan.sites.clone() {
        let pids = cluster.site_pids(&site.name)?;
        crate::procs::signal_all(&pids, libc::SIGCONT);
    }
    let controllers = if cluster.baseline() {
        Vec::new()
    } else {
        cluster.plan.controllers()
    };
    for id in controllers {
        if cluster.procs.pid(&Cluster::controller_name(id)).is_none() {
            cluster.restart_controller(id)?;
        }
    }
    for site in cluster.data_sites() {
        for k in 1..=EXECUTORS_PER_SITE {
            let name = Cluster::executor_name(&site, k);
            if cluster.procs.pid(&name).is_none() {
                cluster.restart_executor(&name)?;
            }
        }
    }
    let healed_ns = now_ns() as i64;
    let mut client = connect_local(&cluster.dir.join("pgsock"), Duration::from_secs(10))?;
    if cluster.baseline() {
        let settled = wait_for(timeout, || {
            let rows = read_ledger(&mut client).ok()?;
            rows.iter().any(|r| r.mono_ns > healed_ns).then_some(())
        });
        return Ok(settled.is_some());
    }
    let settled = wait_for(timeout, || {
        let g = cluster.op.group()?;
        if g.active_site.is_empty() || g.phase != "active" {
            return None;
        }
        let rows = read_ledger(&mut client).ok()?;
        rows.iter()
            .any(|r| r.site == g.active_site && r.epoch as u64 == g.epoch && r.mono_ns > healed_ns)
            .then_some(())
    });
    Ok(settled.is_some())
}

/// The environment that gives a `failover` client (the CLI, `failover exec`) the
/// certificate `name` issued in `tls_dir` (none in plaintext runs).
fn client_env(tls_dir: Option<&Path>, name: &str) -> Vec<(String, String)> {
    let Some(dir) = tls_dir else {
        return Vec::new();
    };
    let path = |file: String| dir.join(file).display().to_string();
    vec![
        ("FAILOVER_TLS_CA".into(), path("ca.pem".into())),
        ("FAILOVER_TLS_CERT".into(), path(format!("{name}.pem"))),
        ("FAILOVER_TLS_KEY".into(), path(format!("{name}.key"))),
    ]
}
