//! `GET /active` across a real network partition: never 200 for two sites at once.
//!
//! Each site runs in its own network namespace (site-a: controllers 1 and 2, site-b: 3
//! and 4, witness: 5), joined by a bridge in a hub namespace; an executor runs at site-a
//! and at site-b. The test makes sure the Raft leader is at site-a, then detaches site-a
//! from the bridge: packets vanish, no connection is reset, and the old leader keeps its
//! follower (both controllers of site-a share the namespace). The majority elects a new
//! leader and fails the group over to site-b while the test samples `/active` for both
//! sites on every controller through a separate management link per namespace. At no
//! sample may two controllers answer 200 for different sites; the cut-off controllers must
//! fall silent (503) within about one leader lease of the cut (`election_timeout_max_ms`,
//! 500 ms, plus sampling slack), and site-b must become active.
//!
//! Needs root (network namespaces); skipped with a message otherwise. Every namespace is
//! named uniquely per run and deleted when the test ends, also when it fails.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{failover_bin, workers, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TTL_MS: u64 = 3500;
const SITES: [&str; 3] = ["site-a", "site-b", "witness"];
/// Controllers: (id, index of its site in `SITES`, gRPC port).
const CONTROLLERS: [(u64, usize, u16); 5] = [
    (1, 0, 7101),
    (2, 0, 7102),
    (3, 1, 7103),
    (4, 1, 7104),
    (5, 2, 7105),
];

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// The namespaces and links of one run; dropping it deletes them.
struct Net {
    tag: String,
    /// Third octet of this run's management subnets.
    octet: u32,
    namespaces: Vec<String>,
}

impl Net {
    fn hub(&self) -> String {
        format!("fo{}h", self.tag)
    }
    fn ns(&self, site: usize) -> String {
        format!("fo{}s{site}", self.tag)
    }
    /// The hub end of site `site`'s data link.
    fn hub_end(&self, site: usize) -> String {
        format!("fo{}d{site}", self.tag)
    }
    /// The site's address on the data network (Raft, lease API).
    fn data_ip(site: usize) -> String {
        format!("10.201.0.{}", site + 1)
    }
    /// The site's address on its management link (HTTP, reachable from the test).
    fn mgmt_ip(&self, site: usize) -> String {
        format!("10.202.{}.{}", self.octet, 4 * site + 2)
    }

    fn create() -> Net {
        let pid = std::process::id();
        let tag = format!("{:x}", pid & 0xfffff);
        let mut net = Net {
            tag,
            octet: pid % 250 + 1,
            namespaces: Vec::new(),
        };
        let hub = net.hub();
        must(&["netns", "add", &hub]);
        net.namespaces.push(hub.clone());
        must(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &hub, "link", "set", "br0", "up"]);
        for site in 0..SITES.len() {
            let ns = net.ns(site);
            must(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            // Data link: site namespace <-> hub bridge.
            let hub_end = net.hub_end(site);
            must(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &hub_end,
                "netns", &hub,
            ]);
            must(&["-n", &hub, "link", "set", &hub_end, "master", "br0", "up"]);
            let data = format!("{}/24", Net::data_ip(site));
            must(&["-n", &ns, "addr", "add", &data, "dev", "eth0"]);
            must(&["-n", &ns, "link", "set", "eth0", "up"]);
            // Management link: root namespace <-> site namespace, a /30 of its own.
            let root_end = format!("fo{}m{site}", net.tag);
            must(&[
                "link", "add", &root_end, "type", "veth", "peer", "name", "mgmt", "netns", &ns,
            ]);
            let root_ip = format!("10.202.{}.{}/30", net.octet, 4 * site + 1);
            must(&["addr", "add", &root_ip, "dev", &root_end]);
            must(&["link", "set", &root_end, "up"]);
            let site_ip = format!("{}/30", net.mgmt_ip(site));
            must(&["-n", &ns, "addr", "add", &site_ip, "dev", "mgmt"]);
            must(&["-n", &ns, "link", "set", "mgmt", "up"]);
        }
        net
    }

    /// Detaches (or re-attaches) `site` from the bridge: its packets go nowhere, and no
    /// connection is reset.
    fn cut(&self, site: usize, cut: bool) {
        let hub = self.hub();
        let end = self.hub_end(site);
        if cut {
            must(&["-n", &hub, "link", "set", &end, "nomaster"]);
        } else {
            must(&["-n", &hub, "link", "set", &end, "master", "br0"]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth pairs with an end inside it.
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// `GET path` on `addr` within 300 ms: the status, or `None` on any transport error.
async fn status_of(addr: &str, path: &str) -> Option<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8(response).ok()?;
        response.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_millis(300), exchange)
        .await
        .ok()
        .flatten()
}

/// Every (controller, site) that answered 200 in one round of requests sent at once.
async fn sample(http: &[(u64, String)]) -> BTreeSet<(u64, &'static str)> {
    let mut asks = Vec::new();
    for (id, addr) in http {
        for site in ["site-a", "site-b"] {
            let addr = addr.clone();
            let id = *id;
            asks.push(tokio::spawn(async move {
                let path = format!("/active/default/{site}");
                (status_of(&addr, &path).await == Some(200)).then_some((id, site))
            }));
        }
    }
    let mut yes = BTreeSet::new();
    for ask in asks {
        if let Ok(Some(hit)) = ask.await {
            yes.insert(hit);
        }
    }
    yes
}

/// The controller that says it leads (`failover_raft_is_leader 1` in its metrics).
async fn leader(http: &[(u64, String)]) -> Option<u64> {
    for (id, addr) in http {
        let body = async {
            let mut stream = TcpStream::connect(addr).await.ok()?;
            let request =
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.ok()?;
            Some(response)
        };
        let body = tokio::time::timeout(Duration::from_millis(500), body)
            .await
            .ok()
            .flatten();
        if body.is_some_and(|b| b.contains("failover_raft_is_leader 1\n")) {
            return Some(*id);
        }
    }
    None
}

fn topology(net: &Net) -> String {
    let mut yaml =
        format!("cluster_name: partition\ntls: {{ insecure: true }}\ntiming: {{ lease_ttl_ms: {TTL_MS} }}\nsites:\n");
    for (s, name) in SITES.iter().enumerate() {
        yaml.push_str(&format!("  - name: {name}\n    controllers:\n"));
        for (id, site, port) in CONTROLLERS.iter().filter(|c| c.1 == s) {
            yaml.push_str(&format!(
                "      - {{ id: {id}, addr: \"{}:{port}\", http_addr: \"{}:{}\" }}\n",
                Net::data_ip(*site),
                net.mgmt_ip(*site),
                port + 100
            ));
        }
    }
    yaml.push_str("groups:\n  - name: default\n    sites: [site-a, site-b]\n");
    yaml
}

struct Run {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    controllers: Vec<(u64, Option<Proc>)>,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.controllers.clear();
        if std::env::var_os("FAILOVER_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("test data kept in {}", dir.keep().display());
        }
    }
}

impl Run {
    fn spawn(&self, net: &Net, site: usize, args: &[&str], log: &str) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))
            .expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &net.ns(site), failover_bin()])
            .args(args)
            // Partitions test the protocol: the namespaced cluster runs in plaintext.
            .env("FAILOVER_INSECURE", "true")
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn in namespace");
        Proc(child)
    }

    fn start(&mut self, net: &Net, id: u64) {
        let (_, site, _) = CONTROLLERS[(id - 1) as usize];
        let data = self.dir.path().join(format!("controller-{id}"));
        let config = self.config.to_str().expect("utf8").to_owned();
        let args = [
            "controller",
            "--node",
            &id.to_string(),
            "--config",
            &config,
            "--data-dir",
            data.to_str().expect("utf8"),
        ];
        let proc = self.spawn(net, site, &args, &format!("controller-{id}.log"));
        self.controllers[(id - 1) as usize].1 = Some(proc);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_is_never_200_for_two_sites_across_a_partition() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let net = Net::create();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("sites.yaml");
    std::fs::write(&config, topology(&net)).expect("write topology");
    let mut run = Run {
        dir,
        config,
        controllers: (1..=5).map(|id| (id, None)).collect(),
    };
    for id in 1..=5 {
        run.start(&net, id);
    }
    let http: Vec<(u64, String)> = CONTROLLERS
        .iter()
        .map(|(id, site, port)| (*id, format!("{}:{}", net.mgmt_ip(*site), port + 100)))
        .collect();

    // Executors at both data sites, each inside its site's namespace.
    let work = run.dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let script = workers::script(&work);
    let config = run.config.to_str().expect("utf8").to_owned();
    let mut executors = Vec::new();
    for (site, name) in [(0, "site-a"), (1, "site-b")] {
        let args = [
            "exec",
            "--site",
            name,
            "--config",
            &config,
            "--",
            script.to_str().expect("utf8"),
        ];
        executors.push(run.spawn(&net, site, &args, &format!("exec-{name}.log")));
    }

    // Wait for site-a to be reported active, and for the leader to be at site-a. A
    // leader elsewhere is killed and restarted only once the others elected a new one:
    // restarted at once, it would win again (its followers still honour its lease when
    // its own election timer fires), so each round is an election among the other four.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (None, BTreeSet::new());
    let mut leader_kills = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no leader at site-a with site-a active; last seen: leader {:?}, 200s {:?}",
            last.0,
            last.1
        );
        let yes = sample(&http).await;
        let lead = leader(&http).await;
        last = (lead, yes.clone());
        match lead {
            Some(id @ (1 | 2)) if yes.contains(&(id, "site-a")) => break,
            Some(id @ 3..=5) => {
                let slot = &mut run.controllers[(id - 1) as usize].1;
                drop(slot.take());
                leader_kills += 1;
                let elected = Instant::now() + Duration::from_secs(20);
                while leader(&http).await.is_none_or(|new| new == id) {
                    assert!(Instant::now() < elected, "no leader after killing {id}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                run.start(&net, id);
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    let cut_at = Instant::now();
    net.cut(0, true);
    let mut last_a_200: Option<Duration> = None;
    let mut b_active_at: Option<Duration> = None;
    let mut samples = 0;
    // Sample through the failover and a while after it.
    while cut_at.elapsed() < Duration::from_secs(60) {
        let yes = sample(&http).await;
        samples += 1;
        let sites: BTreeSet<&str> = yes.iter().map(|(_, s)| *s).collect();
        assert!(
            sites.len() <= 1,
            "sample {samples}, {:?} after the cut: 200 for two sites: {yes:?}",
            cut_at.elapsed()
        );
        if yes.iter().any(|(id, s)| *s == "site-a" && *id <= 2) {
            last_a_200 = Some(cut_at.elapsed());
        }
        if sites.contains("site-b") && b_active_at.is_none() {
            b_active_at = Some(cut_at.elapsed());
        }
        if b_active_at.is_some_and(|at| cut_at.elapsed() > at + Duration::from_secs(3)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_at = b_active_at.expect("site-b became active on the majority side within 60 s");
    if let Some(last) = last_a_200 {
        assert!(
            last < Duration::from_millis(1500),
            "a cut-off controller answered 200 for site-a {last:?} after the cut"
        );
    }
    // Heal and keep sampling: the old side learns of site-b, still never two sites.
    net.cut(0, false);
    let healed = Instant::now();
    while healed.elapsed() < Duration::from_secs(5) {
        let yes = sample(&http).await;
        samples += 1;
        let sites: BTreeSet<&str> = yes.iter().map(|(_, s)| *s).collect();
        assert!(
            sites.len() <= 1,
            "after healing: 200 for two sites: {yes:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{leader_kills} leader kills to place the leader; {samples} samples; site-a last 200 on the cut side {last_a_200:?} after the cut; \
         site-b active {b_at:?} after the cut"
    );
    drop(executors);
    run.controllers.clear();
}
