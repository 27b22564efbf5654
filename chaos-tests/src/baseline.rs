//! The baseline the table compares against: the same workload and faults with the
//! workers gated by an etcd lock (Debian's etcd-server, one member per site, three in
//! all) and no fencing, as teams wire it by hand. Each gate holds an `etcdctl lock`
//! session (TTL in seconds) and runs the worker while it holds it; when etcdctl reports
//! the session gone, the gate SIGKILLs the worker at once: the best a lock without
//! fencing can do. The worker writes without the fence check, with the lock key's create
//! revision as its (unenforced) fencing value, so the checker can count the stale writes
//! the ledger let through.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// The etcd client port on every member's address.
pub const CLIENT_PORT: u16 = 2379;
/// The etcd peer port.
pub const PEER_PORT: u16 = 2380;
/// The lock's name.
pub const LOCK: &str = "chaos-baseline-group";

/// The argv of one etcd member (`name` at `ip`) of a cluster of `members`.
pub fn member_argv(
    name: &str,
    ip: Ipv4Addr,
    members: &[(String, Ipv4Addr)],
    data: &Path,
    timing: &failover_core::Timing,
) -> Vec<String> {
    let initial = members
        .iter()
        .map(|(n, a)| format!("{n}=http://{a}:{PEER_PORT}"))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "etcd".into(),
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--listen-client-urls".into(),
        format!("http://{ip}:{CLIENT_PORT}"),
        "--advertise-client-urls".into(),
        format!("http://{ip}:{CLIENT_PORT}"),
        "--listen-peer-urls".into(),
        format!("http://{ip}:{PEER_PORT}"),
        "--initial-advertise-peer-urls".into(),
        format!("http://{ip}:{PEER_PORT}"),
        "--initial-cluster".into(),
        initial,
        "--initial-cluster-state".into(),
        "new".into(),
        "--heartbeat-interval".into(),
        timing.raft_heartbeat_ms.to_string(),
        "--election-timeout".into(),
        timing.election_timeout_max_ms.to_string(),
    ]
}

/// What `chaos etcd-gate` is given.
#[derive(Debug, Clone, clap::Args)]
pub struct GateArgs {
    /// etcd endpoints, comma separated.
    #[arg(long)]
    pub endpoints: String,
    /// The session TTL in seconds (etcd's unit).
    #[arg(long, default_value_t = 2)]
    pub ttl_s: u64,
    /// The worker command.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Longest a gate runs (a bound on its loop; the harness stops it long before).
const GATE_MAX_ROUNDS: u32 = 10_000;

/// Acquires the lock, runs the worker while the session lives, and starts over.
pub fn gate(args: GateArgs) -> anyhow::Result<()> {
    for _ in 0..GATE_MAX_ROUNDS {
        let mut lock = Command::new("etcdctl")
            .args([
                "--endpoints",
                &args.endpoints,
                "lock",
                "--ttl",
                &args.ttl_s.to_string(),
                LOCK,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot run etcdctl (install etcd-client)")?;
        let stdout = lock.stdout.take().context("etcdctl has no stdout")?;
        let mut key = String::new();
        let mut reader = BufReader::new(stdout);
        if reader.read_line(&mut key).unwrap_or(0) == 0 {
            let _ = lock.wait();
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let revision = create_revision(&args.endpoints, key.trim()).unwrap_or(0);
        eprintln!("etcd gate: holding {} (revision {revision})", key.trim());
        let mut worker = Command::new(&args.command[0])
            .args(&args.command[1..])
            .env("FAILOVER_EPOCH", revision.to_string())
            .env("FAILOVER_INSTANCE", "0")
            .spawn()
            .context("cannot start the worker")?;
        supervise(&mut lock, &mut worker);
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Waits until the session ends (etcdctl exits: the worker is killed) or the worker
/// exits (the lock is given up).
fn supervise(lock: &mut Child, worker: &mut Child) {
    loop {
        if let Ok(Some(_)) = lock.try_wait() {
            eprintln!("etcd gate: session gone, killing the worker");
            let _ = worker.kill();
            let _ = worker.wait();
            return;
        }
        if let Ok(Some(_)) = worker.try_wait() {
            let _ = lock.kill();
            let _ = lock.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn create_revision(endpoints: &str, key: &str) -> anyhow::Result<i64> {
    let out = Command::new("etcdctl")
        .args(["--endpoints", endpoints, "get", key, "-w", "json"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v.get("kvs")
        .and_then(|k| k.get(0))
        .and_then(|k| k.get("create_revision"))
        .and_then(serde_json::Value::as_i64)
        .context("no create_revision in etcdctl's answer")
}
