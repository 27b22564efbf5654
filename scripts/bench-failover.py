"""Automatic failover recovery time: every process of the active site killed (its two
controllers and its executor) → first worker running at the standby site.

Second case (issue 14): the site lost N s after a planned switchover to it (N = 1, 5,
20), with the Raft leader outside it. The failover cooldown must not hold a lost site
back, so these runs should stay within L1 like the first case.

Each run starts a fresh 5-controller topology (site-a: 2, site-b: 2, witness: 1) on free
loopback ports with an executor of one shell-script worker at site-a and at site-b, waits
until site-a runs and site-b reports ready, then SIGKILLs site-a. Half the runs first make
a site-a controller the Raft leader (the new leader must be elected before it can fail
over), half make it a controller elsewhere. Two timing profiles: the defaults of
sites.example.yaml, and a tightened one.

Usage: python3 scripts/bench-failover.py [--runs N] [--case loss|after-switchover]
       [--after-s N ...] [--bin PATH] [--print-only]      (or: make bench)
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

from benchdoc import wait_for, write_section

# Benchmarks measure plaintext clusters (tls: { insecure: true }); clients must say so.
os.environ.setdefault("FAILOVER_INSECURE", "true")

BIN = "./target/release/failover"
# Seconds between a planned switchover to site-b and site-b's loss.
AFTER_SWITCHOVER_S = [1, 5, 20]
# Each profile: topology timing, and the executor's stop grace (the guard starts stopping
# a stop grace before the lease's end, which itself keeps a stop grace off the TTL).
STOP_GRACE = {"default": "500ms", "tight": "100ms"}
PROFILES = {
    "default": {},
    "tight": {
        # The tightest lease that still rides out a leader election with a 100 ms stop
        # grace: 1500 - 100 - 2 x 200 - (2 x 300 + 50) = 350 >= 2 x 100.
        "raft_heartbeat_ms": 50,
        "election_timeout_min_ms": 150,
        "election_timeout_max_ms": 300,
        "lease_ttl_ms": 1500,
        "keepalive_interval_ms": 200,
        "max_clock_drift_ms": 100,
        "failure_timeout_ms": 600,
    },
}
WORKER = "#!/bin/sh\ndate +%s%N > \"{dir}/start-$FAILOVER_SITE-$$\"\nsleep 1000 &\nwait\n"


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def topology(ports, timing):
    sites = [("site-a", [1, 2]), ("site-b", [3, 4]), ("witness", [5])]
    lines = ["cluster_name: bench", "tls: { insecure: true }", "timing:"]
    lines += [f"  {k}: {v}" for k, v in timing.items()] or ["  {}"]
    if not timing:
        lines = ["cluster_name: bench", "tls: { insecure: true }"]
    lines.append("sites:")
    for name, ids in sites:
        lines.append(f"  - name: {name}\n    controllers:")
        for i in ids:
            lines.append(f"      - {{ id: {i}, addr: \"127.0.0.1:{ports[i - 1]}\" }}")
    lines.append("groups:\n  - name: default\n    sites: [site-a, site-b]")
    return "\n".join(lines) + "\n"


def status(endpoints):
    out = subprocess.run([BIN, "status", "--output", "json", "--endpoints", endpoints],
                         capture_output=True, text=True, timeout=15)
    return json.loads(out.stdout) if out.returncode == 0 else None


class Run:
    def __init__(self, timing, stop_grace):
        self.stop_grace = stop_grace
        self.dir = tempfile.mkdtemp(prefix="failover-bench-fo-")
        self.ports = free_ports(5)
        self.config = os.path.join(self.dir, "sites.yaml")
        with open(self.config, "w") as f:
            f.write(topology(self.ports, timing))
        self.endpoints = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        self.worker = os.path.join(self.dir, "worker.sh")
        with open(self.worker, "w") as f:
            f.write(WORKER.format(dir=self.dir))
        os.chmod(self.worker, 0o755)
        self.controllers = {}
        self.execs = {}

    def start(self, node):
        log = open(os.path.join(self.dir, f"c{node}.log"), "a")
        self.controllers[node] = subprocess.Popen(
            [BIN, "controller", "--config", self.config, "--node", str(node),
             "--data-dir", os.path.join(self.dir, f"c{node}")], stdout=log, stderr=log)

    def kill(self, node):
        p = self.controllers.pop(node)
        p.kill()
        p.wait()

    def leader(self):
        s = status(self.endpoints)
        return s["leader"] if s and s.get("consistent") and s.get("leader") else None

    def elect(self, wanted):
        for _ in range(30):
            leader = wait_for(self.leader, 30)
            if wanted(leader):
                return
            self.kill(leader)
            wait_for(lambda: (lambda l: l and l != leader)(self.leader()), 30)
            self.start(leader)
        raise RuntimeError("no wanted leader")

    def starts(self, site):
        return [int(open(os.path.join(self.dir, n)).read() or 0)
                for n in os.listdir(self.dir) if n.startswith(f"start-{site}-")]

    def once(self, leader_in_a):
        for node in range(1, 6):
            self.start(node)
        wait_for(self.leader, 30)
        self.start_execs()
        wait_for(lambda: self.starts("site-a"), 30)
        self.elect((lambda l: l in (1, 2)) if leader_in_a else (lambda l: l not in (1, 2)))
        wait_for(lambda: self.ready("site-b"), 30)
        lost = time.time_ns()
        self.execs.pop("site-a").kill()
        self.kill(1)
        self.kill(2)
        first = wait_for(lambda: min((t for t in self.starts("site-b") if t > lost), default=None), 60)
        return (first - lost) / 1e6

    def once_after_switchover(self, after_s):
        """site-a active, site-b ready; promote site-b and wait for its worker; kill every
        process of site-b `after_s` seconds after the promote answered; milliseconds until
        site-a's worker runs again."""
        for node in range(1, 6):
            self.start(node)
        wait_for(self.leader, 30)
        self.start_execs()
        wait_for(lambda: self.starts("site-a"), 30)
        self.elect(lambda l: l not in (3, 4))
        wait_for(lambda: self.ready("site-b"), 30)
        subprocess.run([BIN, "promote", "site-b", "--wait", "--endpoints", self.endpoints],
                       check=True, capture_output=True, timeout=30)
        switched = time.monotonic()
        wait_for(lambda: self.starts("site-b"), 30)
        wait_for(lambda: self.ready("site-a"), 30)
        time.sleep(max(0.0, switched + after_s - time.monotonic()))
        lost = time.time_ns()
        self.execs.pop("site-b").kill()
        self.kill(3)
        self.kill(4)
        first = wait_for(lambda: min((t for t in self.starts("site-a") if t > lost), default=None), 60)
        return (first - lost) / 1e6

    def start_execs(self):
        env = dict(os.environ, FAILOVER_ENDPOINTS=self.endpoints)
        for site in ("site-a", "site-b"):
            log = open(os.path.join(self.dir, f"exec-{site}.log"), "a")
            self.execs[site] = subprocess.Popen(
                [BIN, "exec", "--site", site, "--config", self.config,
                 "--stop-grace", self.stop_grace, "--", self.worker],
                env=env, stdout=log, stderr=log)

    def ready(self, site):
        """Whether an executor of `site` reported ready within the last second."""
        s = status(self.endpoints)
        if not s:
            return False
        execs = [e for x in s["sites"] if x["name"] == site for e in x["executors"]]
        return any(e["ready"] and e["last_seen_ms"] < 1000 for e in execs)

    def stop(self, keep=False):
        for p in list(self.execs.values()) + list(self.controllers.values()):
            p.send_signal(signal.SIGKILL)
            p.wait()
        if keep:
            print(f"run failed; its files are kept in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def build():
    """Which binary was measured, for the table's title."""
    return "release build" if BIN == "./target/release/failover" else f"binary {BIN}"


def timing_of(timing):
    """The profile's timing over the defaults, and its L1 bound (ms)."""
    t = {"raft_heartbeat_ms": 100, "election_timeout_max_ms": 500, "lease_ttl_ms": 3500,
         "keepalive_interval_ms": 250, "max_clock_drift_ms": 250, "failure_timeout_ms": 1500}
    t.update(timing)
    l1 = t["failure_timeout_ms"] + t["lease_ttl_ms"] + t["max_clock_drift_ms"] + t["keepalive_interval_ms"]
    return t, l1


def describe(t):
    return (f"ttl {t['lease_ttl_ms']}, drift {t['max_clock_drift_ms']}, failure {t['failure_timeout_ms']}, "
            f"keepalive {t['keepalive_interval_ms']}, election ≤ {t['election_timeout_max_ms']}")


def percentiles(samples):
    every = sorted(samples)
    p99 = every[min(len(every) - 1, int(round(0.99 * (len(every) - 1))))]
    return statistics.median(every), p99, max(every)


def measure(timing, stop_grace, attempt):
    """One fresh run of `attempt(run)`; a failed run keeps its files."""
    run = Run(timing, stop_grace)
    ok = False
    try:
        value = attempt(run)
        ok = True
        return value
    finally:
        run.stop(keep=not ok)


def bench_loss(args, profiles):
    rows = []
    for name, timing in profiles:
        results = {True: [], False: []}
        for i in range(args.runs):
            leader_in_a = i % 2 == 0
            results[leader_in_a].append(
                measure(timing, STOP_GRACE[name], lambda run: run.once(leader_in_a=leader_in_a)))
        t, l1 = timing_of(timing)
        p50, p99, mx = percentiles(results[True] + results[False])
        p50a = statistics.median(results[True]) if results[True] else float("nan")
        p50b = statistics.median(results[False]) if results[False] else float("nan")
        rows.append((name, t, l1, len(results[True]) + len(results[False]), p50, p99, mx, p50a, p50b))
    body = [
        f"## Automatic failover (`python3 scripts/bench-failover.py --runs {args.runs}`, {build()}, {os.cpu_count()} cores)",
        "",
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())}. Site-a (2 controllers + executor) SIGKILLed → "
        "first worker running at site-b. Half the runs with the Raft leader inside site-a. "
        "L1 = failure_timeout + ttl + drift + one keepalive round (it does not count the election).",
        "",
        "| profile | timing (ms) | L1 | runs | p50 | p99 | max | p50, leader in site-a | p50, leader elsewhere |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t, l1, n, p50, p99, mx, p50a, p50b in rows:
        body.append(f"| {name} | {describe(t)} | {l1} ms | {n} | {p50:.0f} ms | {p99:.0f} ms | {mx:.0f} ms | {p50a:.0f} ms | {p50b:.0f} ms |")
    return "failover", body


def bench_after_switchover(args, profiles):
    rows = []
    for name, timing in profiles:
        t, l1 = timing_of(timing)
        for after_s in args.after_s:
            samples = [measure(timing, STOP_GRACE[name], lambda run: run.once_after_switchover(after_s))
                       for _ in range(args.runs)]
            p50, p99, mx = percentiles(samples)
            rows.append((name, t, l1, after_s, len(samples), p50, p99, mx))
    body = [
        f"## Failover right after a switchover (`python3 scripts/bench-failover.py --case after-switchover --runs {args.runs}`, "
        f"{build()}, {os.cpu_count()} cores)",
        "",
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())}. A planned switchover to site-b, then site-b "
        "(2 controllers + executor) SIGKILLed N s after the promote answered → first worker running again "
        "at site-a. Raft leader outside site-b. The failover cooldown holds back only health-based moves, "
        "so every N should stay within L1.",
        "",
        "| profile | timing (ms) | L1 | lost N s after the switchover | runs | p50 | p99 | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t, l1, after_s, n, p50, p99, mx in rows:
        body.append(f"| {name} | {describe(t)} | {l1} ms | {after_s} s | {n} | {p50:.0f} ms | {p99:.0f} ms | {mx:.0f} ms |")
    return "failover-after-switchover", body


def main():
    global BIN
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--profile", choices=list(PROFILES), action="append")
    parser.add_argument("--case", choices=["loss", "after-switchover", "all"], default="all")
    parser.add_argument("--after-s", type=int, action="append",
                        help=f"seconds between the switchover and the loss (default {AFTER_SWITCHOVER_S})")
    parser.add_argument("--bin", default=BIN, help="the failover binary (default: the release build)")
    parser.add_argument("--print-only", action="store_true",
                        help="print the tables instead of writing docs/benchmarks.md")
    args = parser.parse_args()
    BIN = args.bin
    args.after_s = args.after_s or AFTER_SWITCHOVER_S
    profiles = [(n, t) for n, t in PROFILES.items() if not args.profile or n in args.profile]
    cases = {"loss": [bench_loss], "after-switchover": [bench_after_switchover],
             "all": [bench_loss, bench_after_switchover]}[args.case]
    for case in cases:
        section, body = case(args, profiles)
        if args.print_only:
            print("\n".join(body))
        else:
            write_section(section, "\n".join(body))


if __name__ == "__main__":
    main()
