//! A loopback cluster of real `failover controller` processes for integration tests.
//!
//! Ports come from the OS (bound to port 0, then released), data lives in a temp dir,
//! and every process is killed when the [`Cluster`] is dropped, also when a test fails.
#![allow(dead_code)]

pub mod workers;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use failover_client::tls::TlsFiles;
use failover_client::{AdminClient, Dialer, Endpoints, TlsDialer};
use failover_proto::admin::StatusResponse;

/// The `failover` binary under test.
pub fn failover_bin() -> &'static str {
    env!("CARGO_BIN_EXE_failover")
}

/// `n` distinct ports the OS considers free right now.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One controller of the test topology.
pub struct Node {
    pub id: u64,
    pub site: &'static str,
    pub addr: String,
    /// Where it serves HTTP (`/active`, `/health`, `/metrics`).
    pub http_addr: String,
    child: Option<Child>,
}

impl Node {
    /// The pid of the running controller, if it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

/// The example topology (site-a: 1, 2; site-b: 3, 4; witness: 5) on free ports, over
/// mutual TLS with certificates made for it in its directory (`tls/`): the processes
/// it starts, and the CLI commands a test runs (through FAILOVER_TLS_* set for this test
/// process), use the operator certificate, executors their site's engine certificate.
/// [`Cluster::new_insecure`] runs one in plaintext.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub nodes: Vec<Node>,
    /// Plaintext (`tls: { insecure: true }`).
    pub insecure: bool,
}

const SITES: [(u64, &str); 5] = [
    (1, "site-a"),
    (2, "site-a"),
    (3, "site-b"),
    (4, "site-b"),
    (5, "witness"),
];

impl Cluster {
    /// Writes the topology; starts nothing.
    pub fn new() -> Cluster {
        Cluster::new_with(|yaml| yaml)
    }

    /// Like [`Cluster::new`], with the topology text passed through `edit` first.
    pub fn new_with(edit: impl FnOnce(String) -> String) -> Cluster {
        Cluster::build(edit, false)
    }

    /// A cluster in plaintext without authentication (`tls: { insecure: true }`).
    pub fn new_insecure() -> Cluster {
        Cluster::build(|yaml| yaml, true)
    }

    /// Like [`Cluster::new_insecure`], with the topology text passed through `edit` first.
    pub fn new_insecure_with(edit: impl FnOnce(String) -> String) -> Cluster {
        Cluster::build(edit, true)
    }

    fn build(edit: impl FnOnce(String) -> String, insecure: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(2 * SITES.len());
        let (grpc, http) = ports.split_at(SITES.len());
        let nodes: Vec<Node> = SITES
            .iter()
            .zip(grpc.iter().zip(http))
            .map(|(&(id, site), (port, http_port))| Node {
                id,
                site,
                addr: format!("127.0.0.1:{port}"),
                http_addr: format!("127.0.0.1:{http_port}"),
                child: None,
            })
            .collect();
        let config = dir.path().join("sites.yaml");
        let tls = dir.path().join("tls");
        let yaml = if insecure {
            std::env::set_var("FAILOVER_INSECURE", "true");
            topology_yaml(&nodes, None)
        } else {
            let plain = topology_yaml(&nodes, None);
            let topology = failover_core::Topology::from_yaml(&plain, "test").expect("topology");
            failover_cli::certs::issue_for(&topology, &tls).expect("certificates");
            // This test process's CLI commands and clients speak as the operator.
            std::env::set_var("FAILOVER_TLS_CA", tls.join("ca.pem"));
            std::env::set_var("FAILOVER_TLS_CERT", tls.join("operator-dev.pem"));
            std::env::set_var("FAILOVER_TLS_KEY", tls.join("operator-dev.key"));
            topology_yaml(&nodes, Some(&tls))
        };
        std::fs::write(&config, edit(yaml)).expect("write topology");
        Cluster {
            dir,
            config,
            nodes,
            insecure,
        }
    }

    /// The TLS files of a client certificate issued for this cluster: `operator-dev`,
    /// `reader-dev`, `engine-<site>`.
    pub fn tls_files(&self, name: &str) -> TlsFiles {
        let tls = self.dir.path().join("tls");
        TlsFiles {
            ca: tls.join("ca.pem"),
            cert: tls.join(format!("{name}.pem")),
            key: tls.join(format!("{name}.key")),
        }
    }

    /// A dialer presenting the certificate `name` (see [`Cluster::tls_files`]); plaintext
    /// for an insecure cluster.
    pub fn dialer_as(&self, name: &str) -> Arc<dyn Dialer> {
        if self.insecure {
            return Arc::new(failover_client::TcpDialer::default());
        }
        let tls = failover_client::tls::client_tls(self.tls_files(name)).expect("client TLS");
        Arc::new(TlsDialer::new(tls))
    }

    /// The operator's dialer.
    pub fn dialer(&self) -> Arc<dyn Dialer> {
        self.dialer_as("operator-dev")
    }

    /// The dialer of `site`'s engines (executors, lease sessions).
    pub fn engine_dialer(&self, site: &str) -> Arc<dyn Dialer> {
        self.dialer_as(&format!("engine-{site}"))
    }

    /// Environment that makes a `failover` process speak as `name` (see
    /// [`Cluster::tls_files`]).
    pub fn tls_env(&self, name: &str) -> Vec<(&'static str, PathBuf)> {
        if self.insecure {
            return Vec::new();
        }
        let files = self.tls_files(name);
        vec![
            ("FAILOVER_TLS_CA", files.ca),
            ("FAILOVER_TLS_CERT", files.cert),
            ("FAILOVER_TLS_KEY", files.key),
        ]
    }

    /// Environment for an executor of `site`.
    pub fn engine_env(&self, site: &str) -> Vec<(&'static str, PathBuf)> {
        self.tls_env(&format!("engine-{site}"))
    }

    /// Starts every controller.
    pub fn start_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.start(id);
        }
    }

    /// Starts controller `id` (again) on its own data dir.
    pub fn start(&mut self, id: u64) {
        self.start_with(id, &[], &[]);
    }

    /// Like [`Cluster::start`], with extra arguments and environment variables.
    pub fn start_with(&mut self, id: u64, args: &[&str], env: &[(&str, &Path)]) {
        let data_dir = self.dir.path().join(format!("controller-{id}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("controller-{id}.log")))
            .expect("log file");
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "controller {id} is already running");
        let child = Command::new(failover_bin())
            .args(["controller", "--node", &id.to_string(), "--config"])
            .arg(self.config_path())
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn controller");
        self.node_mut(id).child = Some(child);
    }

    fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    /// SIGKILLs controller `id` and reaps it.
    pub fn kill9(&mut self, id: u64) {
        let mut child = self
            .node_mut(id)
            .child
            .take()
            .expect("controller is running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// Sends SIGTERM to controller `id` and waits up to `within` for it to exit; its exit
    /// code, or `None` if it had to be killed.
    pub fn terminate(&mut self, id: u64, within: Duration) -> Option<i32> {
        let mut child = self
            .node_mut(id)
            .child
            .take()
            .expect("controller is running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Waits up to `within` for controller `id` to exit by itself and reaps it; its exit
    /// code (`None`: ended by a signal). Panics if it still runs then.
    pub fn wait_exit(&mut self, id: u64, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self
            .node_mut(id)
            .child
            .as_mut()
            .expect("controller started");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.node_mut(id).child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "controller {id} still runs after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs every running controller.
    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Controller `id` of the topology.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("known controller")
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("known controller")
    }

    /// Every controller's address, comma separated (`--endpoints`, FAILOVER_ENDPOINTS).
    pub fn endpoints(&self) -> String {
        let list: Vec<&str> = self.nodes.iter().map(|n| n.addr.as_str()).collect();
        list.join(",")
    }

    /// A client that knows every controller.
    pub fn client(&self) -> AdminClient {
        AdminClient::with_dialer(
            Endpoints::parse(&self.endpoints()).expect("endpoints"),
            self.dialer(),
        )
    }

    /// A client that knows only controller `id`.
    pub fn client_of(&self, id: u64) -> AdminClient {
        let node = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .expect("known controller");
        AdminClient::with_dialer(
            Endpoints::parse(&node.addr).expect("endpoint"),
            self.dialer(),
        )
    }

    /// Waits until a leader is known and every group exists; returns that status.
    pub async fn wait_ready(&self, timeout: Duration) -> StatusResponse {
        let client = self.client();
        eventually("a leader and the default group", timeout, || {
            let mut client = client.clone();
            async move {
                let status = client.status().await.ok()?;
                (status.leader != 0 && status.consistent && !status.groups.is_empty())
                    .then_some(status)
            }
        })
        .await
    }

    /// The log of controller `id`, for failure messages.
    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("controller-{id}.log")))
            .unwrap_or_default()
    }

    /// What the executors of `site` logged, for failure messages.
    pub fn exec_log(&self, site: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("exec-{site}.log")))
            .unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A process that is SIGKILLed (and SIGCONTinued first, if stopped) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

impl Cluster {
    /// `failover exec` for `site` with extra arguments, logging to the test dir.
    pub fn exec(&self, site: &str, args: &[&str], command: &[&str]) -> Proc {
        self.exec_with_env(site, args, command, &[])
    }

    /// Like [`Cluster::exec`], with extra environment variables.
    pub fn exec_with_env(
        &self,
        site: &str,
        args: &[&str],
        command: &[&str],
        env: &[(&str, &Path)],
    ) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("exec-{site}.log")))
            .expect("log file");
        let child = Command::new(failover_bin())
            .args(["exec", "--site", site, "--config"])
            .arg(&self.config)
            .args(args)
            .arg("--")
            .args(command)
            .envs(self.engine_env(site))
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("FAILOVER_ENDPOINTS", self.endpoints())
            .env("FAILOVER_LOG_DIR", self.dir.path().join("worker-logs"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn exec");
        Proc(child)
    }

    /// Sends `signal` to every running controller.
    pub fn signal_all(&self, signal: i32) {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                // SAFETY: kill(2) on our own children.
                unsafe { libc::kill(child.id() as i32, signal) };
            }
        }
    }
}

/// Lines of each controller's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

impl Drop for Cluster {
    fn drop(&mut self) {
        self.signal_all(libc::SIGCONT);
        self.kill_all();
        // A failed test shows what the controllers said last, so a failure seen once
        // (under load, in CI) can be understood without running it again.
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = self.log_of(node.id);
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                eprintln!(
                    "--- controller {} ({}), last {} lines:",
                    node.id,
                    node.site,
                    tail.len()
                );
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
        if std::env::var_os("FAILOVER_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("test data kept in {}", dir.keep().display());
        }
    }
}

/// The test topology; with certificates from `tls` (made by `certs::issue_for`), else
/// insecure.
fn topology_yaml(nodes: &[Node], tls: Option<&Path>) -> String {
    let mut yaml = String::from("cluster_name: test\n");
    match tls {
        Some(dir) => yaml.push_str(&format!(
            "tls: {{ ca: \"{}\" }}\n",
            dir.join("ca.pem").display()
        )),
        None => yaml.push_str("tls: { insecure: true }\n"),
    }
    yaml.push_str("sites:\n");
    for site in ["site-a", "site-b", "witness"] {
        yaml.push_str(&format!("  - name: {site}\n    controllers:\n"));
        for n in nodes.iter().filter(|n| n.site == site) {
            let certs = tls.map_or(String::new(), |dir| {
                format!(
                    ", cert: \"{}\", key: \"{}\"",
                    dir.join(format!("controller-{}.pem", n.id)).display(),
                    dir.join(format!("controller-{}.key", n.id)).display()
                )
            });
            yaml.push_str(&format!(
                "      - {{ id: {}, addr: \"{}\", http_addr: \"{}\"{certs} }}\n",
                n.id, n.addr, n.http_addr
            ));
        }
    }
    yaml.push_str("groups:\n  - name: default\n    sites: [site-a, site-b]\n");
    yaml
}

impl Cluster {
    /// Waits until an executor of `site` reports ready (a promote to it needs that).
    pub async fn wait_executor_ready(&self, site: &str) {
        let client = self.client();
        eventually(
            &format!("{site}'s executor ready"),
            Duration::from_secs(20),
            || {
                let mut client = client.clone();
                async move {
                    let s = client.status().await.ok()?;
                    let site = s.sites.iter().find(|s| s.name == site)?;
                    site.executors
                        .iter()
                        .any(|e| e.report.as_ref().is_some_and(|r| r.ready))
                        .then_some(())
                }
            },
        )
        .await;
    }

    /// Kills the leader (restarting it once another is elected, or it wins again) until
    /// the leader satisfies `wanted`. Each round is a fresh election among the others.
    pub async fn elect_until(&mut self, wanted: impl Fn(u64) -> bool) {
        for _ in 0..30 {
            let leader = self.wait_ready(Duration::from_secs(30)).await.leader;
            if wanted(leader) {
                return;
            }
            self.kill9(leader);
            eventually("a new leader", Duration::from_secs(30), || {
                let mut client = self.client();
                async move {
                    let st = client.status().await.ok()?;
                    (st.consistent && st.leader != 0 && st.leader != leader).then_some(())
                }
            })
            .await;
            self.start(leader);
        }
        panic!("30 elections never produced the wanted leader");
    }
}

/// The dialer of `site`'s engines of the cluster this test process made last (its
/// certificates' directory is where FAILOVER_TLS_CA points); plaintext for an insecure one.
pub fn engine_dialer(site: &str) -> Arc<dyn Dialer> {
    env_dialer(&format!("engine-{site}"))
}

/// The operator's dialer of the cluster this test process made last.
pub fn operator_dialer() -> Arc<dyn Dialer> {
    env_dialer("operator-dev")
}

/// A lease client of `site`'s engine to the controller at `addr`.
pub fn lease_client(
    site: &str,
    addr: &str,
) -> failover_proto::lease::lease_service_client::LeaseServiceClient<failover_proto::wire::Chan> {
    failover_proto::lease::lease_service_client::LeaseServiceClient::new(
        engine_dialer(site).channel(addr).expect("channel"),
    )
}

/// Asks `client` for site-a's lease as instance `instance` (ready) until it is granted: the
/// leader creates the group in its first pass, and answers standby or refuses until then.
pub async fn wait_granted(
    client: &failover_proto::lease::lease_service_client::LeaseServiceClient<
        failover_proto::wire::Chan,
    >,
    instance: &str,
) -> failover_proto::lease::Grant {
    use failover_proto::lease::{acquire_response, AcquireRequest};
    eventually("site-a granted", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            let answer = client
                .acquire(AcquireRequest {
                    group: "default".into(),
                    site: "site-a".into(),
                    instance: instance.into(),
                    ready: true,
                })
                .await
                .ok()?
                .into_inner();
            match answer.result {
                Some(acquire_response::Result::Granted(grant)) => Some(grant),
                _ => None,
            }
        }
    })
    .await
}

/// The dialer presenting certificate `name` of the cluster this test process made last.
fn env_dialer(name: &str) -> Arc<dyn Dialer> {
    let Some(ca) = std::env::var_os("FAILOVER_TLS_CA") else {
        return Arc::new(failover_client::TcpDialer::default());
    };
    let dir = PathBuf::from(ca).parent().expect("tls dir").to_owned();
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    Arc::new(TlsDialer::new(
        failover_client::tls::client_tls(files).expect("engine TLS"),
    ))
}

/// The clock drift a [`lease_session`] allows for.
pub const SESSION_DRIFT: Duration = Duration::from_millis(250);

/// An embedded lease session of `site`'s engine `instance` in group `default`, allowing
/// for [`SESSION_DRIFT`], with a standby poll of 100 ms and release on drain.
pub fn lease_session(
    endpoints: &str,
    site: &str,
    instance: &str,
    stop_grace: Duration,
) -> failover_client::LeaseSession {
    failover_client::LeaseSession::start(
        failover_client::LeaseConfig {
            endpoints: Endpoints::parse(endpoints).expect("endpoints"),
            group: "default".into(),
            site: site.into(),
            instance: instance.into(),
            max_clock_drift: SESSION_DRIFT,
            stop_grace,
            standby_poll: Duration::from_millis(100),
            release_on_drain: true,
            cluster_id: None,
            token: None,
        },
        engine_dialer(site),
        Arc::new(failover_client::SystemClock),
    )
}
