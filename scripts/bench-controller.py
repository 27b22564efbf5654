"""Controller cluster measurements on the example topology (release build).

- time from `failover dev` to an elected leader with the groups created,
- `failover promote` latency on the idle cluster (20 promotions, alternating sites):
  the CLI's wall time and the leader-side time it reports,
- controller RSS at idle.

Usage: python3 scripts/bench-controller.py   (or: make bench)
"""
import json
import shutil
import os
import signal
import statistics
import subprocess
import tempfile
import time

from benchdoc import write_section

# Benchmarks measure plaintext clusters (tls: { insecure: true }); clients must say so.
os.environ.setdefault("FAILOVER_INSECURE", "true")

BIN = "./target/release/failover"
ENDPOINTS = ",".join(f"127.0.0.1:{7100 + i}" for i in range(1, 6))


def main() -> None:
    data = tempfile.mkdtemp(prefix="failover-bench-")
    log = open(os.path.join(data, "dev.out"), "w+")
    config = os.path.join(data, "sites.yaml")
    with open("sites.example.yaml") as src, open(config, "w") as dst:
        dst.write(src.read() + "tls: { insecure: true }\n")
    dev = subprocess.Popen([BIN, "dev", "--config", config, "--data-dir", data],
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        ready_ms = wait_ready(log)
        env = dict(os.environ, FAILOVER_ENDPOINTS=ENDPOINTS)
        wall_ms, leader_ms = [], []
        for i in range(20):
            site = "site-b" if i % 2 == 0 else "site-a"
            start = time.perf_counter()
            out = subprocess.run([BIN, "promote", site, "--wait", "--reason", f"bench {i}", "--output", "json"],
                                 env=env, check=True, capture_output=True, text=True).stdout
            wall_ms.append((time.perf_counter() - start) * 1000)
            leader_ms.append(json.loads(out)["elapsed_ms"])
        time.sleep(2)
        rss = controller_rss_mib(data)
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
    rows = [
        ("`failover dev` start to elected leader with groups created", f"{ready_ms} ms"),
        ("`failover promote --wait`, CLI wall time, median of 20", f"{statistics.median(wall_ms):.1f} ms"),
        ("`failover promote --wait`, CLI wall time, max of 20", f"{max(wall_ms):.1f} ms"),
        ("`failover promote --wait`, leader-side time (two Raft commits), median of 20",
         f"{statistics.median(leader_ms):.0f} ms"),
        ("controller RSS at idle, median of 5", f"{statistics.median(rss):.1f} MiB"),
        ("controller RSS at idle, max of 5", f"{max(rss):.1f} MiB"),
    ]
    body = [
        f"## Controller cluster (`python3 scripts/bench-controller.py`, release build, {os.cpu_count()} cores)",
        "",
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on the example topology "
        "(5 controllers on loopback, redb, fdatasync on every append and vote).",
        "",
        "| measure | value |",
        "|---|---|",
    ] + [f"| {k} | {v} |" for k, v in rows]
    write_section("controller", "\n".join(body))


def wait_ready(log) -> int:
    deadline = time.time() + 60
    while time.time() < deadline:
        log.seek(0)
        for line in log.read().splitlines():
            if "ready in" in line:
                return int(line.split("ready in ")[1].split(" ms")[0])
        time.sleep(0.05)
    raise SystemExit("dev did not become ready")


def controller_rss_mib(data: str) -> list:
    rss = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline").read().split("\0")
            if "controller" in cmdline and any(a.startswith(data) for a in cmdline):
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        rss.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return rss


if __name__ == "__main__":
    main()
