//! The `failover` command as an operator meets it: `dev`, JSON output, bad input.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{failover_bin, Cluster};

/// Kills the process on drop, so a failing test leaves nothing running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn failover(args: &[&str]) -> std::process::Output {
    Command::new(failover_bin())
        .args(args)
        .output()
        .expect("run failover")
}

/// `failover dev` starts every controller, reports readiness, answers `status --output json`
/// with the documented keys, passes `--log-format json` on to every controller (each line
/// of their log files is a JSON object), and stops every controller on SIGINT.
#[test]
fn dev_starts_the_topology_and_stops_it_on_sigint() {
    let cluster = Cluster::new(); // only for its topology file and temp dir
    let data_dir = cluster.data_dir().join("dev");
    let mut dev = Running(
        Command::new(failover_bin())
            .args(["--log-format", "json", "dev", "--config"])
            .arg(&cluster.config)
            .arg("--data-dir")
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dev"),
    );
    let stdout = dev.0.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("Press Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("dev never became ready: {printed:?}"));
        printed.push(line);
    }
    assert!(
        printed.iter().any(|l| l.contains("ready in")),
        "{printed:?}"
    );

    let endpoints: Vec<&str> = cluster.nodes.iter().map(|n| n.addr.as_str()).collect();
    // An election may still follow the first one right after start: poll briefly for an
    // answer from a confirmed leader.
    let deadline = Instant::now() + Duration::from_secs(15);
    let json: serde_json::Value = loop {
        let out = failover(&[
            "status",
            "--output",
            "json",
            "--endpoints",
            &cluster.endpoints(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        if json["consistent"] == true && json["leader"].as_u64().is_some_and(|l| l >= 1) {
            break json;
        }
        assert!(Instant::now() < deadline, "no confirmed leader: {json}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(json["term"].as_u64().is_some());
    let controllers = json["controllers"].as_array().expect("controllers");
    assert_eq!(controllers.len(), 5);
    for c in controllers {
        for key in ["id", "site", "addr", "role", "reachable"] {
            assert!(!c[key].is_null(), "controller lacks {key}: {c}");
        }
    }
    let group = &json["groups"][0];
    assert_eq!(group["name"], "default");
    assert_eq!(group["active_site"], "site-a");
    assert_eq!(group["epoch"], 1);
    assert_eq!(group["phase"], "active");

    for node in &cluster.nodes {
        let path = data_dir.join(format!("controller-{}.log", node.id));
        let log = std::fs::read_to_string(&path).expect("controller log");
        assert!(!log.is_empty(), "{} is empty", path.display());
        for line in log.lines() {
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
            assert!(parsed.is_ok(), "not JSON in {}: {line}", path.display());
        }
    }

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(dev.0.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = dev.0.try_wait().expect("wait dev") {
            break exit;
        }
        assert!(Instant::now() < deadline, "dev did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "dev exited with {exit}");
    for addr in endpoints {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "controller at {addr} still listens after dev stopped"
        );
    }
}

/// An invalid topology is refused before anything starts, naming file, field and reason.
#[test]
fn invalid_topology_is_refused_with_field_path() {
    let cluster = Cluster::new();
    let text = std::fs::read_to_string(&cluster.config).expect("read");
    let bad = cluster.data_dir().join("bad.yaml");
    std::fs::write(
        &bad,
        text.replace("sites: [site-a, site-b]", "sites: [site-a, site-z]"),
    )
    .expect("write");
    let out = failover(&[
        "controller",
        "--node",
        "1",
        "--data-dir",
        "/nonexistent",
        "--config",
        bad.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml: groups[0].sites[1]: unknown site `site-z`"),
        "{stderr}"
    );
}

/// Unknown sites and groups are clear errors with a non-zero exit; nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_refuses_unknown_site_and_group() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let endpoints = cluster.endpoints();
    let out = failover(&["promote", "site-z", "--endpoints", &endpoints]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("site `site-z` is not eligible for group `default`"));
    let out = failover(&[
        "promote",
        "site-b",
        "--group",
        "nope",
        "--endpoints",
        &endpoints,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown group `nope`"));
    let out = failover(&["history", "--output", "json", "--endpoints", &endpoints]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history JSON");
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(1),
        "only the creation: {history}"
    );
    let out = failover(&["status", "--endpoints", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(3), "unreachable cluster exits 3");

    // A reader that goes away (`| head -1`) ends the command by SIGPIPE, as it ends `cat`,
    // not with a panic and exit code 101.
    let mut child = Command::new(failover_bin())
        .args(["history", "--output", "json", "--endpoints", &endpoints])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run history");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("history ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}
