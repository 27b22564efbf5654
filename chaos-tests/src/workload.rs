//! The workload: a real PostgreSQL server in a namespace of its own, a ledger table that
//! refuses a fencing value lower than the highest it has seen (atomically with the write),
//! and the worker that the executors run: it appends jobs with its `FAILOVER_EPOCH` and
//! records every attempt, accepted or refused, with a host monotonic timestamp.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::netns::run;
use crate::recorder::{append, now_ns, Outcome, WorkerEvent};

/// The ledger and its fence: one row holding the highest fencing value seen.
pub const SCHEMA: &str = "
CREATE TABLE fence (id int PRIMARY KEY, highest bigint NOT NULL);
INSERT INTO fence VALUES (1, 0);
CREATE TABLE ledger (
    seq      bigserial PRIMARY KEY,
    epoch    bigint NOT NULL,
    site     text   NOT NULL,
    instance int    NOT NULL,
    pid      int    NOT NULL,
    job      bigint NOT NULL,
    mono_ns  bigint NOT NULL
);
";

/// One fenced append, in one statement: the fence row is raised to `$1` only if it is not
/// higher already, and the job is inserted only if that happened. The row lock on the
/// fence serializes writers; under READ COMMITTED a writer that waited re-checks the
/// condition against the row as committed by the one before it. No row returned: refused.
pub const FENCED_INSERT: &str = "
WITH f AS (
    UPDATE fence SET highest = $1 WHERE id = 1 AND highest <= $1 RETURNING highest
)
INSERT INTO ledger (epoch, site, instance, pid, job, mono_ns)
SELECT $1, $2, $3, $4, $5, $6 FROM f
RETURNING seq";

/// The same append without the fence (the etcd baseline: a lock, no fencing).
pub const PLAIN_INSERT: &str = "
INSERT INTO ledger (epoch, site, instance, pid, job, mono_ns)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING seq";

/// A PostgreSQL data directory initialised once per harness invocation and copied for
/// each run (initdb is the slow part).
pub struct Template {
    dir: PathBuf,
    bin: PathBuf,
}

/// The PostgreSQL binaries: the newest `/usr/lib/postgresql/*/bin` that has `postgres`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql): run chaos-tests/setup.sh")?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").exists() && b.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found
        .pop()
        .context("no postgres and initdb under /usr/lib/postgresql/*/bin: run chaos-tests/setup.sh")
}

impl Template {
    /// Runs initdb (as the postgres user) into `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Template> {
        let bin = bin_dir()?;
        std::fs::create_dir_all(dir)?;
        chmod(dir.parent().unwrap_or(dir), 0o755)?;
        chown_postgres(dir)?;
        run(Command::new("setpriv")
            .args(as_postgres())
            .arg(bin.join("initdb"))
            .args(["-D"])
            .arg(dir)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]))
        .context("initdb failed")?;
        std::fs::write(
            dir.join("pg_hba.conf"),
            "local all all trust\nhost all all 10.213.0.0/24 trust\n",
        )?;
        Ok(Template {
            dir: dir.to_path_buf(),
            bin,
        })
    }

    /// Copies the template into `data` (owned by postgres) and returns the server's argv.
    pub fn instance(&self, data: &Path, socket_dir: &Path) -> anyhow::Result<Vec<String>> {
        run(Command::new("cp").arg("-a").arg(&self.dir).arg(data))?;
        std::fs::create_dir_all(socket_dir)?;
        chown_postgres(socket_dir)?;
        let mut argv: Vec<String> = vec!["setpriv".into()];
        argv.extend(as_postgres().iter().map(|s| s.to_string()));
        argv.push(self.bin.join("postgres").display().to_string());
        for arg in [
            "-D".to_string(),
            data.display().to_string(),
            "-k".into(),
            socket_dir.display().to_string(),
            "-p".into(),
            crate::sites::PG_PORT.to_string(),
            "-c".into(),
            format!("listen_addresses={}", crate::sites::PG_IP),
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "full_page_writes=off".into(),
            "-c".into(),
            "max_connections=60".into(),
            "-c".into(),
            "shared_buffers=16MB".into(),
        ] {
            argv.push(arg);
        }
        Ok(argv)
    }
}

fn as_postgres() -> [&'static str; 3] {
    ["--reuid=postgres", "--regid=postgres", "--init-groups"]
}

fn chown_postgres(path: &Path) -> anyhow::Result<()> {
    run(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path))
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// A connection to the server over its unix socket (reachable from the host's namespace).
pub fn connect_local(socket_dir: &Path, timeout: Duration) -> anyhow::Result<postgres::Client> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut config = postgres::Config::new();
        config
            .host_path(socket_dir)
            .port(crate::sites::PG_PORT)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        match config.connect(postgres::NoTls) {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context("PostgreSQL did not accept connections in time")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One accepted row of the ledger.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LedgerRow {
    /// Commit order.
    pub seq: i64,
    /// The fencing value written with.
    pub epoch: i64,
    /// The writer's site.
    pub site: String,
    /// The writer's pid.
    pub pid: i32,
    /// When the writer sent it (monotonic ns).
    pub mono_ns: i64,
}

/// Every accepted row, in commit order.
pub fn read_ledger(client: &mut postgres::Client) -> anyhow::Result<Vec<LedgerRow>> {
    let rows = client.query(
        "SELECT seq, epoch, site, pid, mono_ns FROM ledger ORDER BY seq",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| LedgerRow {
            seq: r.get(0),
            epoch: r.get(1),
            site: r.get(2),
            pid: r.get(3),
            mono_ns: r.get(4),
        })
        .collect())
}

/// What `chaos worker` is given.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Directory the worker appends its events to (`w-<pid>.jsonl`).
    #[arg(long)]
    pub events_dir: PathBuf,
    /// Address of PostgreSQL (`host:port`).
    #[arg(long)]
    pub pg: String,
    /// Pause between two writes.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Print progress on stdout as engines do (else on stderr only).
    #[arg(long)]
    pub stdout: bool,
    /// Ignore SIGTERM (the guard must KILL it), as some engines do.
    #[arg(long)]
    pub ignore_term: bool,
    /// Write without the fence check (the etcd baseline).
    #[arg(long)]
    pub no_fence: bool,
}

/// Longest a worker runs (a bound on its loop; the guard stops it long before).
const WORKER_MAX_RUN: Duration = Duration::from_secs(3600);

/// The worker: records its start, starts a child (engines do), then appends fenced jobs
/// until it is stopped.
pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let start_ns = now_ns();
    let pid = std::process::id() as i32;
    let site = std::env::var("FAILOVER_SITE").context("FAILOVER_SITE is not set")?;
    let epoch: u64 = std::env::var("FAILOVER_EPOCH")
        .context("FAILOVER_EPOCH is not set")?
        .parse()
        .context("FAILOVER_EPOCH is not a number")?;
    let instance: u32 = std::env::var("FAILOVER_INSTANCE")
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    let executor = std::env::var("CHAOS_EXECUTOR").unwrap_or_default();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.events_dir.join(format!("w-{pid}.jsonl")))
        .context("cannot open the worker's event file")?;
    append(
        &mut file,
        &WorkerEvent::Start {
            t_ns: start_ns,
            pid,
            site: site.clone(),
            instance,
            epoch,
            executor,
        },
    )?;
    if args.ignore_term {
        // SAFETY: setting a signal disposition in this single-threaded process.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    // A child of its own, as engines start helpers: the guard must stop it too.
    let _helper = Command::new("sleep").arg("3600").spawn();
    let say = |text: &str| {
        if args.stdout {
            println!("{text}");
        }
        eprintln!("{text}");
    };
    say(&format!(
        "engine worker {pid} started: site {site}, instance {instance}, fencing value {epoch}"
    ));
    let began = Instant::now();
    let mut client: Option<postgres::Client> = None;
    let mut job: i64 = 0;
    while began.elapsed() < WORKER_MAX_RUN {
        let Some(c) = client.as_mut() else {
            match connect_remote(&args.pg) {
                Ok(c) => client = Some(c),
                Err(e) => {
                    eprintln!("worker {pid}: cannot reach the ledger: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            continue;
        };
        job += 1;
        let t_ns = now_ns();
        let sql = if args.no_fence {
            PLAIN_INSERT
        } else {
            FENCED_INSERT
        };
        let outcome = write_once(c, sql, epoch, &site, instance, pid, job, t_ns);
        let done_ns = now_ns();
        if let Outcome::Error { message } = &outcome {
            eprintln!("worker {pid}: write failed: {message}");
            client = None;
        } else if let Outcome::Refused { highest } = &outcome {
            eprintln!("worker {pid}: ledger refused fencing value {epoch} (highest {highest})");
        } else if job % 20 == 0 {
            say(&format!(
                "worker {pid}: {job} jobs written at fencing value {epoch}"
            ));
        }
        append(
            &mut file,
            &WorkerEvent::Attempt {
                t_ns,
                done_ns,
                epoch,
                outcome,
            },
        )?;
        std::thread::sleep(args.interval);
    }
    Ok(())
}

fn connect_remote(addr: &str) -> anyhow::Result<postgres::Client> {
    let (host, port) = addr.rsplit_once(':').context("--pg is not host:port")?;
    let mut config = postgres::Config::new();
    config
        .host(host)
        .port(port.parse().context("--pg has no valid port")?)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1))
        .tcp_user_timeout(Duration::from_millis(1500))
        .options("-c statement_timeout=2000");
    Ok(config.connect(postgres::NoTls)?)
}

#[allow(clippy::too_many_arguments)]
fn write_once(
    client: &mut postgres::Client,
    sql: &str,
    epoch: u64,
    site: &str,
    instance: u32,
    pid: i32,
    job: i64,
    t_ns: u64,
) -> Outcome {
    let params: [&(dyn postgres::types::ToSql + Sync); 6] = [
        &(epoch as i64),
        &site,
        &(instance as i32),
        &pid,
        &job,
        &(t_ns as i64),
    ];
    match client.query_opt(sql, &params) {
        Ok(Some(row)) => Outcome::Accepted { seq: row.get(0) },
        Ok(None) => {
            let highest = client
                .query_one("SELECT highest FROM fence WHERE id = 1", &[])
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(-1);
            Outcome::Refused { highest }
        }
        Err(e) => Outcome::Error {
            message: e.to_string(),
        },
    }
}
