"""Executor measurements on the example topology (release build), both executors up.

- planned handover: `failover promote SITE --wait` to the new site's first worker running,
  10 promotions alternating sites; median and max.
- deadline margin: how long before the lease deadline the last process of a worker tree
  was gone, as the guards report it, when the active executor is frozen with SIGSTOP
  (5 runs) and when every controller is frozen (5 runs).
- the paths that give the lease back, with workers that ignore SIGTERM (so every stop
  takes the whole grace and ends in SIGKILL): a planned promote away from the site (the
  drain, 3 runs) and the executor's shutdown (SIGINT). For each, the guards' margins, and
  for the drain how long after the last worker tree was gone the executor released the
  lease (never before: a negative value would be a bug).

Usage: python3 scripts/bench-executor.py   (or: make bench); BENCH_KEEP=1 keeps the work dir.
"""
import datetime
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

from benchdoc import wait_for, write_section

# Benchmarks measure plaintext clusters (tls: { insecure: true }); clients must say so.
os.environ.setdefault("FAILOVER_INSECURE", "true")

BIN = "./target/release/failover"
ENDPOINTS = ",".join(f"127.0.0.1:{7100 + i}" for i in range(1, 6))
WORKER = """#!/bin/sh
[ -n "$IGNORE_TERM" ] && trap '' TERM
date +%s%N > "{dir}/start-$FAILOVER_SITE-$FAILOVER_INSTANCE-$$"
sleep 1000 &
while :; do sleep 1; done
"""


def main() -> None:
    work = tempfile.mkdtemp(prefix="failover-bench-exec-")
    env = dict(os.environ, FAILOVER_ENDPOINTS=ENDPOINTS, RUST_LOG="info",
               FAILOVER_LOG_DIR=os.path.join(work, "logs"))
    worker = os.path.join(work, "worker.sh")
    with open(worker, "w") as f:
        f.write(WORKER.format(dir=work))
    os.chmod(worker, 0o755)
    procs = []
    try:
        dev_log = open(os.path.join(work, "dev.out"), "w+")
        # Automatic failover off: the freeze runs stop the active site's workers on purpose,
        # and a lease outlives failure_timeout, so the leader would otherwise move the group.
        config = os.path.join(work, "sites.yaml")
        with open("sites.example.yaml") as src, open(config, "w") as dst:
            dst.write(src.read().replace("auto_failover: true", "auto_failover: false"))
            dst.write("tls: { insecure: true }\n")
        dev = subprocess.Popen([BIN, "dev", "--config", config, "--data-dir", os.path.join(work, "data")],
                               stdout=dev_log, stderr=subprocess.STDOUT)
        procs.append(dev)
        wait_for(lambda: "Press Ctrl-C" in open(dev_log.name).read(), 60)
        execs = {}
        for site in ("site-a", "site-b"):
            log = open(os.path.join(work, f"exec-{site}.log"), "w")
            p = subprocess.Popen([BIN, "exec", "--site", site, "--instances", "2", "--", worker],
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
            procs.append(p)
            execs[site] = (p, log.name)
        wait_for(lambda: starts(work, "site-a"), 20)
        time.sleep(2)  # both executors have reported in
        handovers = []
        for i in range(10):
            site = "site-b" if i % 2 == 0 else "site-a"
            before = time.time_ns()
            subprocess.run([BIN, "promote", site, "--wait"], env=env, check=True, capture_output=True)
            first = wait_for(lambda: min((t for t in starts(work, site) if t > before), default=None), 10)
            handovers.append((first - before) / 1e6)
            time.sleep(0.5)
        active = "site-a"  # after 10 alternating promotions
        exec_margins = freeze_runs(execs[active], [execs[active][0].pid], work, active)
        controllers = controller_pids(os.path.join(work, "data"))
        ctl_margins = freeze_runs(execs[active], controllers, work, active)
        # Workers that ignore SIGTERM: the guard's SIGKILL just before the deadline ends them.
        old, _ = execs.pop(active)
        old.send_signal(signal.SIGINT)
        old.wait(timeout=20)
        log = open(os.path.join(work, f"exec-{active}-stubborn.log"), "w")
        stubborn = subprocess.Popen([BIN, "exec", "--site", active, "--instances", "2", "--", worker],
                                    env=dict(env, IGNORE_TERM="1"), stdout=log, stderr=subprocess.STDOUT)
        procs.append(stubborn)
        kill_margins = freeze_runs((stubborn, log.name), [stubborn.pid], work, active, runs=3)
        other = "site-b" if active == "site-a" else "site-a"
        drain_margins, release_gaps = drain_runs((stubborn, log.name), work, active, other, env)
        wait_for(lambda: len(live_workers(work, active)) == 2, 20)
        seen = len(margins_in(log.name))
        stubborn.send_signal(signal.SIGINT)
        stubborn.wait(timeout=30)
        shutdown_margins = margins_in(log.name)[seen:]
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    rows = [
        ("planned handover, `promote --wait` to first new worker running, median of 10",
         f"{statistics.median(handovers):.0f} ms"),
        ("planned handover, max of 10", f"{max(handovers):.0f} ms"),
        ("executor SIGSTOPped: last process gone before the lease deadline, min of 5 (largest gap)",
         f"{min(exec_margins)} ms before"),
        ("executor SIGSTOPped: same, max of 5", f"{max(exec_margins)} ms before"),
        ("all controllers SIGSTOPped: last process gone before the lease deadline, min of 5",
         f"{min(ctl_margins)} ms before"),
        ("all controllers SIGSTOPped: same, max of 5", f"{max(ctl_margins)} ms before"),
        ("workers ignoring SIGTERM, executor SIGSTOPped: min of 3 (the SIGKILL path)",
         f"{min(kill_margins)} ms before"),
        ("workers ignoring SIGTERM: max of 3", f"{max(kill_margins)} ms before"),
        ("drain (planned promote away), workers ignoring SIGTERM: last process gone before "
         "the lease deadline, min of 3 runs x 2 trees", f"{min(drain_margins)} ms before"),
        ("drain: lease released after the last worker tree was gone, min / max of 3",
         f"{min(release_gaps):.0f} / {max(release_gaps):.0f} µs after"),
        ("shutdown (SIGINT), workers ignoring SIGTERM: last process gone before the lease "
         "deadline, min of 2 trees", f"{min(shutdown_margins)} ms before"),
    ]
    body = [
        f"## Executor (`python3 scripts/bench-executor.py`, release build, {os.cpu_count()} cores)",
        "",
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on the example topology with an "
        "executor of 2 shell-script workers at site-a and at site-b (default timing: TTL 3500 ms, "
        "drift 250 ms; stop grace 500 ms; drain timeout the executor's default). A positive margin means the whole worker tree was gone "
        "that long before the executor's lease deadline; the guard aims for 20 ms.",
        "",
        "| measure | value |",
        "|---|---|",
    ] + [f"| {k} | {v} |" for k, v in rows]
    write_section("executor", "\n".join(body))


def starts(work, site):
    out = []
    for name in os.listdir(work):
        if name.startswith(f"start-{site}-"):
            with open(os.path.join(work, name)) as f:
                text = f.read().strip()
            if text:
                out.append(int(text))
    return out


def controller_pids(data):
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline").read().split("\0")
            except OSError:
                continue
            if "controller" in cmd and any(a.startswith(data) for a in cmd):
                pids.append(int(pid))
    return pids


def freeze_runs(executor, frozen, work, site, runs=5):
    """Freezes `frozen`, waits for the executor's workers to be gone, thaws, and reads the
    margins the guards reported from the executor's log."""
    proc, log = executor
    margins = []
    for _ in range(runs):
        wait_for(lambda: len(live_workers(work, site)) == 2, 20)
        seen = len(margins_in(log))
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: not live_workers(work, site), 10)
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        found = wait_for(lambda: margins_in(log)[seen:], 10)
        margins.extend(int(m) for m in found)
        time.sleep(1)
    return margins


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def margins_in(log):
    return [int(m) for m in re.findall(r"margin_ms=(-?\d+)", ANSI.sub("", open(log).read()))]


def stamped(log, needle):
    """Wall-clock instants (tracing's timestamps) of the log lines containing `needle`."""
    out = []
    for line in ANSI.sub("", open(log).read()).splitlines():
        if needle in line:
            out.append(datetime.datetime.fromisoformat(line.split()[0]))
    return out


def drain_runs(executor, work, site, other, env, runs=3):
    """Promotes `other` and back, `runs` times; returns the margins the draining site's
    guards reported and, per drain, the time from its last worker tree gone to its
    release of the lease (µs, from the executor's log timestamps)."""
    _, log = executor
    margins, gaps = [], []
    for _ in range(runs):
        wait_for(lambda: len(live_workers(work, site)) == 2, 20)
        seen = len(margins_in(log))
        released_before = len(stamped(log, "releasing the lease"))
        subprocess.run([BIN, "promote", other, "--wait"], env=env, check=True, capture_output=True)
        wait_for(lambda: len(margins_in(log)) >= seen + 2 or None, 20)
        released = wait_for(lambda: stamped(log, "releasing the lease")[released_before:] or None, 20)
        gone = stamped(log, "worker tree gone instance=")[-2:]
        margins.extend(margins_in(log)[seen:seen + 2])
        gaps.append((released[0] - max(gone)).total_seconds() * 1e6)
        subprocess.run([BIN, "promote", site, "--wait"], env=env, check=True, capture_output=True)
    return margins, gaps


def live_workers(work, site):
    live = []
    for pid in [n.rsplit("-", 1)[1] for n in os.listdir(work) if n.startswith(f"start-{site}-")]:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            live.append(int(pid))
    return live


if __name__ == "__main__":
    main()
