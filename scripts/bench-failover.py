"""Automatic failover recovery time: every process of the active site killed (its two
controllers and its executor) → first worker running at the standby site.

Each run starts a fresh 5-controller topology (site-a: 2, site-b: 2, witness: 1) on free
loopback ports with an executor of one shell-script worker at site-a and at site-b, waits
until site-a runs and site-b reports ready, then SIGKILLs site-a. Half the runs first make
a site-a controller the Raft leader (the new leader must be elected before it can fail
over), half make it a controller elsewhere. Two timing profiles: the defaults of
sites.example.yaml, and a tightened one.

Usage: python3 scripts/bench-failover.py [--runs N]   (or: make bench)
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

BIN = "./target/release/failover"
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
    lines = ["cluster_name: bench", "timing:"]
    lines += [f"  {k}: {v}" for k, v in timing.items()] or ["  {}"]
    if not timing:
        lines = ["cluster_name: bench"]
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
        env = dict(os.environ, FAILOVER_ENDPOINTS=self.endpoints)
        for site in ("site-a", "site-b"):
            log = open(os.path.join(self.dir, f"exec-{site}.log"), "a")
            self.execs[site] = subprocess.Popen(
                [BIN, "exec", "--site", site, "--config", self.config,
                 "--stop-grace", self.stop_grace, "--", self.worker],
                env=env, stdout=log, stderr=log)
        wait_for(lambda: self.starts("site-a"), 30)
        self.elect((lambda l: l in (1, 2)) if leader_in_a else (lambda l: l not in (1, 2)))

        def b_ready():
            s = status(self.endpoints)
            if not s:
                return False
            b = [e for site in s["sites"] if site["name"] == "site-b" for e in site["executors"]]
            return any(e["ready"] and e["last_seen_ms"] < 1000 for e in b)
        wait_for(b_ready, 30)
        lost = time.time_ns()
        self.execs.pop("site-a").kill()
        self.kill(1)
        self.kill(2)
        first = wait_for(lambda: min((t for t in self.starts("site-b") if t > lost), default=None), 60)
        return (first - lost) / 1e6

    def stop(self, keep=False):
        for p in list(self.execs.values()) + list(self.controllers.values()):
            p.send_signal(signal.SIGKILL)
            p.wait()
        if keep:
            print(f"run failed; its files are kept in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--profile", choices=list(PROFILES), action="append")
    args = parser.parse_args()
    rows = []
    for name, timing in PROFILES.items():
        if args.profile and name not in args.profile:
            continue
        results = {True: [], False: []}
        for i in range(args.runs):
            run = Run(timing, STOP_GRACE[name])
            ok = False
            try:
                results[i % 2 == 0].append(run.once(leader_in_a=i % 2 == 0))
                ok = True
            finally:
                run.stop(keep=not ok)
        every = sorted(results[True] + results[False])
        t = {"raft_heartbeat_ms": 100, "election_timeout_max_ms": 500, "lease_ttl_ms": 3500,
             "keepalive_interval_ms": 250, "max_clock_drift_ms": 250, "failure_timeout_ms": 1500}
        t.update(timing)
        l1 = t["failure_timeout_ms"] + t["lease_ttl_ms"] + t["max_clock_drift_ms"] + t["keepalive_interval_ms"]
        p99 = every[min(len(every) - 1, int(round(0.99 * (len(every) - 1))))]
        rows.append((name, t, l1, len(every), statistics.median(every), p99, max(every),
                     statistics.median(results[True]), statistics.median(results[False])))
    body = [
        f"## Automatic failover (`python3 scripts/bench-failover.py --runs {args.runs}`, release build, {os.cpu_count()} cores)",
        "",
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())}. Site-a (2 controllers + executor) SIGKILLed → "
        "first worker running at site-b. Half the runs with the Raft leader inside site-a. "
        "L1 = failure_timeout + ttl + drift + one keepalive round (it does not count the election).",
        "",
        "| profile | timing (ms) | L1 | runs | p50 | p99 | max | p50, leader in site-a | p50, leader elsewhere |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t, l1, n, p50, p99, mx, p50a, p50b in rows:
        timing = (f"ttl {t['lease_ttl_ms']}, drift {t['max_clock_drift_ms']}, failure {t['failure_timeout_ms']}, "
                  f"keepalive {t['keepalive_interval_ms']}, election ≤ {t['election_timeout_max_ms']}")
        body.append(f"| {name} | {timing} | {l1} ms | {n} | {p50:.0f} ms | {p99:.0f} ms | {mx:.0f} ms | {p50a:.0f} ms | {p50b:.0f} ms |")
    write_section("failover", "\n".join(body))


if __name__ == "__main__":
    main()
