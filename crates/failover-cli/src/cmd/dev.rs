//! `failover dev`: the whole topology of a config file on this machine, one child process
//! per controller, until Ctrl-C. The controllers log to `<data-dir>/controller-N.log` in
//! the format given to `dev` (`--log-format`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use std::sync::Arc;

use failover_client::tls::TlsFiles;
use failover_client::{AdminClient, Dialer, Endpoints, TcpDialer, TlsDialer};
use failover_core::Topology;

/// How long `dev` waits for a leader and every group before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a controller gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Arguments of `failover dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// The topology to start.
    #[arg(long, default_value = "sites.example.yaml")]
    pub config: PathBuf,
    /// Where the controllers keep their data (one sub-directory each) and logs.
    #[arg(long, default_value = ".dev-data")]
    pub data_dir: PathBuf,
}

/// The controller processes; all are stopped when this is dropped, also on error paths.
struct Children(Vec<(u64, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &self.0 {
            // SAFETY: plain kill(2) on a pid we spawned and have not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (id, child) in &mut self.0 {
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                eprintln!("controller {id} did not stop within {STOP_GRACE:?}; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub(crate) async fn run(args: DevArgs, log_format: super::LogFormat) -> anyhow::Result<()> {
    let topology = super::load_topology(&args.config)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let (config, dialer, client_env) = secure(&args, &topology)?;
    let started = Instant::now();
    let mut children = spawn_controllers(&topology, &config, &args.data_dir, log_format)?;
    let mut client = AdminClient::with_dialer(Endpoints::from_topology(&topology), dialer);
    let status = wait_until_ready(&mut client, &topology, &mut children).await?;
    println!(
        "failover dev: {topology} ready in {} ms (leader elected, groups created)\n",
        started.elapsed().as_millis()
    );
    for (site, c) in topology.controllers() {
        println!("  controller {} ({site}): {}", c.id, c.addr);
    }
    let endpoints: Vec<&str> = topology
        .controllers()
        .map(|(_, c)| c.addr.as_str())
        .collect();
    println!("\n  export FAILOVER_ENDPOINTS={}", endpoints.join(","));
    for line in &client_env {
        println!("  {line}");
    }
    println!("  logs and data: {}\n", args.data_dir.display());
    let quorum = super::status::QuorumJson::confirmed(status.controllers.len());
    print!("{}", super::status::status_table(&status, &quorum));
    println!("\nPress Ctrl-C to stop.");
    super::controller::wait_for_stop_signal().await?;
    println!("stopping {} controllers", children.0.len());
    drop(children);
    Ok(())
}

/// The topology the controllers run (with a throwaway CA and certificates generated into
/// `<data-dir>/tls` unless the topology says `insecure: true`), how `dev` itself dials
/// them, and the lines that tell the user how to point the CLI at them.
fn secure(
    args: &DevArgs,
    topology: &Topology,
) -> anyhow::Result<(PathBuf, Arc<dyn Dialer>, Vec<String>)> {
    if topology.insecure() {
        let config = std::fs::canonicalize(&args.config)
            .with_context(|| format!("cannot resolve {}", args.config.display()))?;
        println!("failover dev: INSECURE (tls.insecure: true): plaintext, no authentication");
        let env = vec!["export FAILOVER_INSECURE=true".to_owned()];
        return Ok((config, Arc::new(TcpDialer::default()), env));
    }
    if topology.tls.is_some() {
        // The topology brings its own certificates: `dev` speaks as the client the
        // environment names.
        let config = std::fs::canonicalize(&args.config)
            .with_context(|| format!("cannot resolve {}", args.config.display()))?;
        let var = |name: &str| {
            std::env::var_os(name).map(PathBuf::from).with_context(|| {
                format!(
                    "{} configures TLS: set FAILOVER_TLS_CA, FAILOVER_TLS_CERT and \
                     FAILOVER_TLS_KEY to an operator or reader certificate for `dev` to use \
                     ({name} is not set), or drop the tls section to get throwaway ones",
                    args.config.display()
                )
            })
        };
        let files = TlsFiles {
            ca: var("FAILOVER_TLS_CA")?,
            cert: var("FAILOVER_TLS_CERT")?,
            key: var("FAILOVER_TLS_KEY")?,
        };
        let dialer = Arc::new(TlsDialer::new(failover_client::tls::client_tls(files)?));
        return Ok((config, dialer, Vec::new()));
    }
    let data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("cannot resolve {}", args.data_dir.display()))?;
    let tls_dir = data_dir.join("tls");
    let mut secured = crate::certs::issue_for(topology, &tls_dir)?;
    let token_file = reader_token(&mut secured, &tls_dir)?;
    let config = data_dir.join("topology.yaml");
    // JSON is YAML: the controllers read it as a topology file.
    let text = serde_json::to_string_pretty(&secured)?;
    std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
    let files = TlsFiles {
        ca: tls_dir.join("ca.pem"),
        cert: tls_dir.join("operator-dev.pem"),
        key: tls_dir.join("operator-dev.key"),
    };
    let env = vec![
        format!("export FAILOVER_TLS_CA={}", files.ca.display()),
        format!("export FAILOVER_TLS_CERT={}", files.cert.display()),
        format!("export FAILOVER_TLS_KEY={}", files.key.display()),
        format!(
            "(operator certificate; reader-dev.pem is read-only, engine-<site>.pem are for \
             `failover exec`: all in {})",
            tls_dir.display()
        ),
        format!(
            "(read-only without a certificate: FAILOVER_TLS_CA={} FAILOVER_TOKEN_FILE={} \
             failover status)",
            tls_dir.join("ca.pem").display(),
            token_file.display()
        ),
    ];
    let dialer = Arc::new(TlsDialer::new(failover_client::tls::client_tls(files)?));
    Ok((config, dialer, env))
}

fn spawn_controllers(
    topology: &Topology,
    config: &Path,
    data_dir: &Path,
    log_format: super::LogFormat,
) -> anyhow::Result<Children> {
    let exe = std::env::current_exe().context("cannot find the failover executable")?;
    let mut children = Children(Vec::new());
    for (_, c) in topology.controllers() {
        let log_path = data_dir.join(format!("controller-{}.log", c.id));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut command = Command::new(&exe);
        // `--log-format` reaches every process dev starts.
        command
            .arg("--log-format")
            .arg(log_format.as_arg())
            .arg("controller")
            .arg("--config")
            .arg(config)
            .arg("--node")
            .arg(c.id.to_string())
            .arg("--data-dir")
            .arg(data_dir.join(format!("controller-{}", c.id)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it makes the child get SIGTERM if dev dies,
        // so no controller outlives a `dev` that was killed.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start controller {}", c.id))?;
        children.0.push((c.id, child));
    }
    Ok(children)
}

async fn wait_until_ready(
    client: &mut AdminClient,
    topology: &Topology,
    children: &mut Children,
) -> anyhow::Result<failover_proto::admin::StatusResponse> {
    client.deadline = Duration::from_millis(500);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(status) = client.status().await {
            let groups_ready = topology
                .groups
                .iter()
                .all(|g| status.groups.iter().any(|s| s.name == g.name.as_str()));
            if status.leader != 0 && groups_ready {
                client.deadline = Duration::from_secs(10);
                return Ok(status);
            }
        }
        for (id, child) in &mut children.0 {
            if let Ok(Some(exit)) = child.try_wait() {
                anyhow::bail!(
                    "controller {id} exited during start-up ({exit}); see its log in the data dir"
                );
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("no leader elected within {READY_TIMEOUT:?}; see the controller logs");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The name of the reader token `dev` issues.
const DEV_READER_TOKEN: &str = "reader-dev-token";

/// Writes a reader token to `<tls>/reader-dev.token` (kept across restarts of `dev`) and
/// lets it in through `topology`'s `tokens:`; returns the token file.
fn reader_token(topology: &mut Topology, tls_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = tls_dir.join("reader-dev.token");
    let token = match super::read_token(&path) {
        Ok(token) => token,
        Err(_) => {
            let token = super::token::fresh_token()?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            writeln!(file, "{token}")
                .with_context(|| format!("cannot write {}", path.display()))?;
            token
        }
    };
    topology.tokens.retain(|t| t.name != DEV_READER_TOKEN);
    topology
        .tokens
        .push(super::token::entry(DEV_READER_TOKEN, "reader", &[], &token));
    Ok(path)
}
