//! What the systemd units in deploy/systemd/ rely on: `READY=1` on the notify socket once a
//! controller or an executor actually serves, `STOPPING=1` when it stops, and unit files
//! that `systemd-analyze verify` accepts.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{eventually, failover_bin, workers, Cluster};

/// A notify socket as systemd provides one (`NOTIFY_SOCKET`), in the test's temp dir.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path, name: &str) -> NotifySocket {
        let path = dir.join(name);
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket { socket, path }
    }

    /// The next message that contains `wanted`, or a panic naming what came instead.
    fn wait_for(&self, wanted: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {wanted:?} within {timeout:?} on {}; got {seen:?}",
                self.path.display()
            );
            self.socket
                .set_read_timeout(Some(left))
                .expect("read timeout");
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if message.lines().any(|l| l == wanted) {
                    return message;
                }
                seen.push(message);
            }
        }
    }
}

/// A controller started with `NOTIFY_SOCKET` sends `READY=1` once it serves: at that
/// moment its gRPC answers a status call and its HTTP port accepts connections. SIGTERM
/// makes it send `STOPPING=1` before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_notifies_ready_when_serving_and_stopping_on_sigterm() {
    let mut cluster = Cluster::new();
    let notify = NotifySocket::bind(cluster.data_dir(), "notify-1.sock");
    cluster.start_with(1, &[], &[("NOTIFY_SOCKET", &notify.path)]);
    for id in 2..=5 {
        cluster.start(id);
    }
    let message = notify.wait_for("READY=1", Duration::from_secs(30));
    assert!(message.contains("STATUS=controller 1 serving"), "{message}");
    let node = &cluster.nodes[0];
    std::net::TcpStream::connect(&node.http_addr).expect("HTTP bound when READY=1 is sent");
    let status = cluster
        .client_of(1)
        .status()
        .await
        .expect("gRPC answers when READY=1 is sent");
    assert_ne!(status.answered_by, 0, "{status:?}");
    cluster.wait_ready(Duration::from_secs(30)).await;
    let exit = cluster.terminate(1, Duration::from_secs(15));
    notify.wait_for("STOPPING=1", Duration::from_secs(1));
    assert_eq!(exit, Some(0), "{}", cluster.log_of(1));
}

/// An executor sends `READY=1` only once the leader accepted its first report: the status
/// then already lists it at its site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_notifies_ready_once_registered() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let dir = cluster.data_dir().join("work");
    std::fs::create_dir_all(&dir).expect("work dir");
    let script = workers::script(&dir);
    let notify = NotifySocket::bind(cluster.data_dir(), "notify-exec.sock");
    let exec = cluster.exec_with_env(
        "site-b",
        &["--id", "exec-b"],
        &[script.to_str().expect("utf8")],
        &[("NOTIFY_SOCKET", &notify.path)],
    );
    let message = notify.wait_for("READY=1", Duration::from_secs(30));
    assert!(message.contains("registered with the cluster"), "{message}");
    let status = cluster.client().status().await.expect("status");
    let site = status
        .sites
        .iter()
        .find(|s| s.name == "site-b")
        .expect("site-b");
    assert!(
        site.executors
            .iter()
            .any(|e| e.report.as_ref().is_some_and(|r| r.executor_id == "exec-b")),
        "READY=1 before the leader knew the executor: {site:?}"
    );
    exec.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", Duration::from_secs(5));
    eventually("the executor to exit", Duration::from_secs(20), || async {
        (!crate::common::alive(exec.pid())).then_some(())
    })
    .await;
}

/// The unit files pass `systemd-analyze verify` (with the binary under test in
/// `ExecStart=`, and a template instance for `@` units). Skipped, with a message, on a
/// machine without systemd-analyze.
#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&units).expect("deploy/systemd") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if !name.ends_with(".service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read unit");
        assert!(text.contains("Type=notify"), "{name} must use Type=notify");
        let text = text.replace("/usr/local/bin/failover", failover_bin());
        let instance = name.replace("@.service", "@1.service");
        let copy = dir.path().join(&instance);
        std::fs::write(&copy, text).expect("write unit copy");
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .output()
            .expect("run systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Lines about units other than ours (the host's own configuration) are not ours
        // to judge.
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&instance) || l.contains(dir.path().to_str().expect("utf8")))
            .collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "systemd-analyze verify {instance}: {}\n{stderr}",
            out.status
        );
        checked.push(name);
    }
    checked.sort();
    assert_eq!(
        checked,
        ["failover-controller@.service", "failover-exec@.service"],
        "unit files in deploy/systemd"
    );
}
