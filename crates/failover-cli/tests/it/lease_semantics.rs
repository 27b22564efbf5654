//! Lease semantics across real processes: a holder id acquired twice (the first holder
//! frozen) is never silently superseded; the fencing value is shared by every holder of
//! an epoch and refuses a stale site's writes in a real store (SQLite); and engines that
//! embed the lease API (no `failover exec`) are failed over when their site is lost.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{eventually, Cluster, Proc};
use failover_client::{LeaseSession, LeaseState};
use failover_proto::admin::PromoteRequest;

/// The defaults of the test topology (those of `Timing::default()`).
const STOP_GRACE: Duration = Duration::from_millis(100);
/// L1 at the test topology's timing: failure_timeout 1500 + ttl 3500 + drift 250 + one
/// keepalive round 250.
const L1: Duration = Duration::from_millis(5500);
/// Scheduling slack on a loaded 2-core machine running tests in parallel.
const SLACK: Duration = Duration::from_millis(1000);

/// Environment variable that turns [`holder_child`] into a lease holder process.
const HOLDER_ENV: &str = "FAILOVER_TEST_HOLDER_ENDPOINTS";

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

fn session(endpoints: &str, site: &str, instance: &str) -> LeaseSession {
    crate::common::lease_session(endpoints, site, instance, STOP_GRACE)
}

fn promote(site: &str) -> PromoteRequest {
    PromoteRequest {
        group: "default".into(),
        site: site.into(),
        reason: "lease semantics test".into(),
        actor: "test@lease-semantics".into(),
        wait: true,
        force: false,
    }
}

/// Not a test on its own: with [`HOLDER_ENV`] set, this process holds the lease as
/// instance `engine-1` at site-a and prints `HOLDER <lease> <valid_until unix ms>` each
/// time its belief changes (polled every 2 ms, so the line follows within a few ms),
/// until it is killed. Without the variable it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_child() {
    let Ok(endpoints) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let session = session(&endpoints, "site-a", "engine-1");
    let mut last = None;
    loop {
        let state = session.state().borrow().clone();
        let line = match state {
            LeaseState::Acquired {
                lease, valid_until, ..
            } => {
                let left = valid_until.saturating_duration_since(Instant::now());
                format!("HOLDER {} {}", lease.0, unix_ms(SystemTime::now() + left))
            }
            other => format!("HOLDER none {other:?}"),
        };
        if last.as_ref() != Some(&line) {
            println!("{line}");
            last = Some(line);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What the holder child printed last: its lease and deadline (unix ms), if it holds.
type Printed = Arc<Mutex<Option<(u64, u64)>>>;

fn spawn_holder(cluster: &Cluster) -> (Proc, Printed) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "lease_semantics::holder_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(HOLDER_ENV, cluster.endpoints())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn holder");
    let stdout = child.stdout.take().expect("stdout");
    let printed: Printed = Arc::default();
    let sink = printed.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let parsed = match words.as_slice() {
                ["HOLDER", lease, until] => lease.parse().ok().zip(until.parse().ok()),
                _ => None,
            };
            if line.starts_with("HOLDER") {
                *sink.lock().expect("printed") = parsed;
            }
        }
    });
    (Proc(child), printed)
}

fn stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let i = stat.rfind(')')?;
            stat[i + 2..].split_whitespace().next().map(|s| s == "T")
        })
        .unwrap_or(false)
}

/// A holder frozen (SIGSTOP) while holding, then the same instance id acquired again by
/// another process: the second grant does not drop the first lease, and a promotion
/// away from the site, although the second holder releases at once, completes only after
/// the frozen holder's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_holder_is_not_superseded_by_a_second_acquire() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let (holder, printed) = spawn_holder(&cluster);
    let first = eventually("the first holder to hold", Duration::from_secs(20), || {
        let printed = printed.clone();
        async move { *printed.lock().expect("printed") }
    })
    .await
    .0;
    holder.signal(libc::SIGSTOP);
    eventually(
        "the holder to be stopped",
        Duration::from_secs(5),
        || async { stopped(holder.pid()).then_some(()) },
    )
    .await;
    let (_, deadline_unix_ms) = printed.lock().expect("printed").expect("held when frozen");

    // A standby engine at site-b makes the plain promote possible (it reports ready).
    let b = session(&cluster.endpoints(), "site-b", "engine-b");
    let second = session(&cluster.endpoints(), "site-a", "engine-1");
    eventually("the second acquire", Duration::from_secs(20), || async {
        second.holds().map(|_| ())
    })
    .await;
    let mut client = cluster.client();
    let leases = client.leases("default").await.expect("leases").leases;
    let ids: Vec<(String, u64)> = leases
        .iter()
        .map(|l| (l.holder.clone(), l.lease_id))
        .collect();
    assert!(
        ids.contains(&("engine-1".into(), first)) && ids.len() == 2,
        "the first lease must stay beside the second: {ids:?}"
    );

    let promoted_at = unix_ms(SystemTime::now());
    let done = client.promote(promote("site-b")).await.expect("promote");
    assert_eq!(done.group.expect("group").active_site, "site-b");
    let history = client.history("default").await.expect("history").entries;
    let last = history.last().expect("history");
    assert_eq!((last.epoch, last.to.as_str()), (2, "site-b"));
    eprintln!(
        "frozen holder's deadline {} ms after the promote began; completed after {} ms",
        deadline_unix_ms as i64 - promoted_at as i64,
        last.completed_at_unix_ms as i64 - promoted_at as i64
    );
    assert!(
        last.completed_at_unix_ms >= deadline_unix_ms,
        "the promotion completed at {} before the frozen holder's deadline {}",
        last.completed_at_unix_ms,
        deadline_unix_ms
    );
    eventually(
        "site-b's engine to hold",
        Duration::from_secs(20),
        || async { b.holds().map(|_| ()) },
    )
    .await;
    drop(holder);
    b.shutdown().await;
    second.shutdown().await;
}

/// The SQLite worker: writes under the fencing value with the recipe of docs/leases.md,
/// every 100 ms (`loop DB WRITER`), or once with a given value (`once DB WRITER VALUE`,
/// exit 0 accepted, 3 refused). Logs to stderr only.
const SQLITE_WORKER: &str = r#"
import os, sqlite3, sys, time

def write(db, writer, value):
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        raised = conn.execute(
            "UPDATE fence SET highest = ? WHERE name = 'default' AND highest <= ?",
            (value, value),
        ).rowcount
        if raised != 1:
            conn.execute("ROLLBACK")
            conn.execute("INSERT INTO refused(writer, fencing_value) VALUES (?, ?)", (writer, value))
            return False
        conn.execute("INSERT INTO writes(writer, fencing_value) VALUES (?, ?)", (writer, value))
        conn.execute("COMMIT")
        return True
    finally:
        conn.close()

mode, db, writer = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "once":
    ok = write(db, writer, int(sys.argv[4]))
    sys.exit(0 if ok else 3)
value = int(os.environ["FAILOVER_FENCING_TOKEN"])
while True:
    ok = write(db, writer, value)
    print(f"{writer} value {value}: {'accepted' if ok else 'refused'}", file=sys.stderr, flush=True)
    time.sleep(0.1)
"#;

const SQLITE_SCHEMA: &str = "
CREATE TABLE fence(name TEXT PRIMARY KEY, highest INTEGER NOT NULL);
INSERT INTO fence VALUES ('default', 0);
CREATE TABLE writes(id INTEGER PRIMARY KEY, writer TEXT NOT NULL, fencing_value INTEGER NOT NULL);
CREATE TABLE refused(id INTEGER PRIMARY KEY, writer TEXT NOT NULL, fencing_value INTEGER NOT NULL);
";

/// Runs SQL against the test database with python3's sqlite3; rows as `a|b` lines.
fn sql(db: &Path, query: &str) -> Vec<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1],timeout=10)\nc.executescript(sys.argv[2]) if sys.argv[3]=='script' else [print('|'.join(map(str,r))) for r in c.execute(sys.argv[2])]\nc.commit()",
        ])
        .arg(db)
        .arg(query)
        .arg(if query.contains(';') { "script" } else { "query" })
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writers (and their fencing values) that have written, in the order of their first write.
fn writers(db: &Path) -> Vec<String> {
    sql(
        db,
        "SELECT writer, fencing_value FROM writes GROUP BY writer, fencing_value ORDER BY MIN(id)",
    )
}

/// Two executors at the active site, each with a worker writing to one SQLite table under
/// `FAILOVER_FENCING_TOKEN`: both are accepted (one value per epoch). After a promotion
/// the new site writes with a larger value, and a write carrying the old site's value
/// (a stale worker resuming) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_value_is_shared_by_a_site_and_refuses_the_old_one() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let dir: PathBuf = cluster.data_dir().join("store");
    std::fs::create_dir_all(&dir).expect("store dir");
    let db = dir.join("store.db");
    sql(&db, SQLITE_SCHEMA);
    let worker = dir.join("worker.py");
    std::fs::write(&worker, SQLITE_WORKER).expect("write worker");
    let (worker, db_arg) = (
        worker.to_str().expect("utf8").to_owned(),
        db.to_str().expect("utf8").to_owned(),
    );
    let exec = |site: &str, id: &str| {
        cluster.exec(
            site,
            &["--instances", "1", "--id", id],
            &["python3", &worker, "loop", &db_arg, id],
        )
    };
    let _a1 = exec("site-a", "exec-a1");
    let _a2 = exec("site-a", "exec-a2");
    let _b1 = exec("site-b", "exec-b1");
    eventually(
        "both site-a workers write",
        Duration::from_secs(30),
        || async {
            let w = writers(&db);
            (w.contains(&"exec-a1|1".to_owned()) && w.contains(&"exec-a2|1".to_owned()))
                .then_some(())
        },
    )
    .await;
    assert!(
        sql(&db, "SELECT writer FROM refused").is_empty(),
        "holders of one epoch refused each other"
    );
    let leases = cluster
        .client()
        .leases("default")
        .await
        .expect("leases")
        .leases;
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert_ne!(
        leases[0].fencing_token, leases[1].fencing_token,
        "each lease keeps its own token"
    );

    cluster.wait_executor_ready("site-b").await;
    let mut client = cluster.client();
    client.promote(promote("site-b")).await.expect("promote");
    eventually(
        "site-b's worker writes",
        Duration::from_secs(30),
        || async { writers(&db).contains(&"exec-b1|2".to_owned()).then_some(()) },
    )
    .await;
    // A stale site-a worker (a paused host resuming) writes with the old value: refused.
    let stale = Command::new("python3")
        .args([worker.as_str(), "once", db_arg.as_str(), "stale-a", "1"])
        .status()
        .expect("python3");
    assert_eq!(
        stale.code(),
        Some(3),
        "a write of the old epoch was accepted"
    );
    // No site-a write was accepted after site-b's first.
    let last_a = sql(
        &db,
        "SELECT COALESCE(MAX(id), 0) FROM writes WHERE fencing_value = 1",
    );
    let first_b = sql(&db, "SELECT MIN(id) FROM writes WHERE fencing_value = 2");
    let (last_a, first_b): (u64, u64) = (
        last_a[0].parse().expect("id"),
        first_b[0].parse().expect("id"),
    );
    assert!(
        last_a < first_b,
        "site-a wrote after site-b: {last_a} ≥ {first_b}"
    );
    assert_eq!(
        sql(&db, "SELECT writer, fencing_value FROM refused"),
        vec!["stale-a|1".to_owned()]
    );
}

/// Engines that embed the lease API at two sites, no executor anywhere: the standby
/// engine reports ready through its acquire polls, and when site-a is lost (its
/// controllers SIGKILLed, its engine's session dropped without a release) site-b's engine
/// holds the lease within L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_sessions_fail_over_on_site_loss() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.elect_until(|leader| leader > 2).await;
    let a = session(&cluster.endpoints(), "site-a", "engine-a");
    let b = session(&cluster.endpoints(), "site-b", "engine-b");
    eventually("site-a's engine holds", Duration::from_secs(20), || async {
        a.holds().map(|_| ())
    })
    .await;
    // A healthy active site is not failed over although site-b is ready.
    let calm_until = Instant::now() + L1;
    let mut client = cluster.client();
    while Instant::now() < calm_until {
        let st = client.status().await.expect("status");
        let g = st
            .groups
            .iter()
            .find(|g| g.name == "default")
            .expect("group");
        assert_eq!(
            (g.active_site.as_str(), g.epoch),
            ("site-a", 1),
            "a healthy site was failed over"
        );
        assert!(a.holds().is_some(), "site-a's engine lost its lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let lost_at = Instant::now();
    drop(a);
    cluster.kill9(1);
    cluster.kill9(2);
    let took = eventually(
        "site-b's engine holds",
        L1 + SLACK + Duration::from_secs(10),
        || async { b.holds().map(|_| lost_at.elapsed()) },
    )
    .await;
    eprintln!("engine site loss → site-b holds: {took:?}");
    assert!(
        took <= L1 + SLACK,
        "site-b's engine held {took:?} after site-a was lost (L1 {L1:?})"
    );
    let history = client.history("default").await.expect("history").entries;
    let last = history.last().expect("history");
    assert_eq!(
        (last.kind.as_str(), last.to.as_str(), last.epoch),
        ("failover", "site-b", 2)
    );
    assert_eq!(
        b.holds().map(|v| v.0),
        Some(2),
        "the fencing value is the epoch"
    );
    b.shutdown().await;
}

/// Waits for the session to publish `Draining`; checks that from then on no new work may
/// start (`holds()` is `None`) while running work still has its fencing value.
async fn wait_draining(session: &LeaseSession) {
    let mut state = session.state();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if matches!(*state.borrow_and_update(), LeaseState::Draining { .. }) {
            break;
        }
        tokio::time::timeout_at(deadline, state.changed())
            .await
            .expect("a drain notice")
            .expect("session alive");
    }
    assert_eq!(
        session.holds(),
        None,
        "new work may not start while draining"
    );
    assert!(
        session.fencing_value().is_some(),
        "running work keeps its fencing value until the deadline"
    );
}

/// On a drain notice the session releases one stop grace later, not at once (work that
/// checked `holds()` just before may still run), unless the caller says its work stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_session_releases_after_its_stop_grace_or_when_told() {
    const GRACE: Duration = Duration::from_millis(1000);
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let a = crate::common::lease_session(&cluster.endpoints(), "site-a", "engine-a", GRACE);
    let b = crate::common::lease_session(&cluster.endpoints(), "site-b", "engine-b", GRACE);
    eventually("site-a's engine holds", Duration::from_secs(20), || async {
        a.holds().map(|_| ())
    })
    .await;
    let mut client = cluster.client();
    let took = |client: &mut failover_client::AdminClient| {
        let mut client = client.clone();
        async move {
            let history = client.history("default").await.expect("history").entries;
            let last = history.last().expect("history").clone();
            Duration::from_millis(last.completed_at_unix_ms - last.requested_at_unix_ms)
        }
    };

    // Nobody says the work stopped: the release waits out the stop grace.
    let (promoted, ()) = tokio::join!(client.promote(promote("site-b")), wait_draining(&a));
    promoted.expect("promote");
    let waited = took(&mut client).await;
    eprintln!("drain without a word from the caller: completed after {waited:?}");
    assert!(
        waited >= GRACE,
        "released {waited:?} after the drain began, within the stop grace {GRACE:?}"
    );
    eventually("site-b's engine holds", Duration::from_secs(20), || async {
        b.holds().map(|_| ())
    })
    .await;

    // The caller says its work stopped as soon as the drain begins: released at once.
    let mut back = client.clone();
    let promoting = tokio::spawn(async move { back.promote(promote("site-a")).await });
    wait_draining(&b).await;
    b.release().await;
    promoting.await.expect("join").expect("promote");
    let quick = took(&mut client).await;
    eprintln!("drain with release(): completed after {quick:?}");
    assert!(
        quick < GRACE,
        "release() did not shorten the wait: {quick:?} (stop grace {GRACE:?})"
    );
    a.shutdown().await;
    b.shutdown().await;
}
