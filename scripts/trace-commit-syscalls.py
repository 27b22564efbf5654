#!/usr/bin/env python3
"""Shows with strace that a commit is on stable storage before it is acknowledged.

Starts three controllers (site-a, site-b, witness) on loopback, attaches strace to each,
sends one `failover promote site-b --wait` to the leader, and checks, from the traces:

1. the leader read the request (its bytes carry "site-b") before anything below;
2. for each of the two Raft entries the reply depends on (BeginPromotion and
   CompletePromotion), the leader wrote the page holding it to its data file (raft.redb)
   and an fdatasync of that file started after the write and returned before the leader
   wrote the reply (whose bytes carry "site-b" too);
3. the same holds on a Raft majority (2 of 3) of the controllers, each for its own data
   file, so the entries were on stable storage on a quorum before the acknowledgement;
4. no controller used sync_file_range (which writes no metadata and flushes no device
   cache) on the data file. Snapshot files use it only to pace their writeback, and are
   fsynced before the data file names them.

Prints the leader's storage and socket events of the commit in order, and exits 1 if a
check fails. strace comes from Debian's package; the script installs it if missing.

Usage: python3 scripts/trace-commit-syscalls.py [--bin target/debug/failover]
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

# Benchmarks measure plaintext clusters (tls: { insecure: true }); clients must say so.
os.environ.setdefault("FAILOVER_INSECURE", "true")

DATA_FILE = "raft.redb"
# The two Raft entries a `promote --wait` reply depends on.
ENTRIES = ("BeginPromotion", "CompletePromotion")
SYSCALLS = ("openat,read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg,"
            "pwrite64,pwritev,pwritev2,fsync,fdatasync,sync_file_range,rename,renameat,renameat2")
# 1700000000.123456 pid? syscall(args) = ret <duration>
LINE = re.compile(r"^(\d+)\s+(\d+\.\d+) (\w+)\((.*)\) = (-?\d+|\?)[^<]*(?:<(\d+\.\d+)>)?")
UNFINISHED = re.compile(r"^(\d+)\s+(\d+\.\d+) (\w+)\((.*) <unfinished \.\.\.>$")
RESUMED = re.compile(r"^(\d+)\s+(\d+\.\d+) <\.\.\. (\w+) resumed>(.*)\) = (-?\d+|\?)[^<]*(?:<(\d+\.\d+)>)?")


def ensure_strace() -> str:
    path = shutil.which("strace")
    if path:
        return path
    print("strace is missing: installing Debian's package", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "strace"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("strace") or sys.exit("strace still not found after installing it")


def free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def topology(ports: list) -> str:
    sites = [("site-a", 1), ("site-b", 2), ("witness", 3)]
    text = "cluster_name: trace\ntls: { insecure: true }\nsites:\n"
    for (site, node), port in zip(sites, ports):
        text += f"  - name: {site}\n    controllers:\n      - {{ id: {node}, addr: \"127.0.0.1:{port}\" }}\n"
    text += "groups:\n  - name: default\n    sites: [site-a, site-b]\n    auto_failover: false\n"
    return text


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def wait_leader(binary: str, endpoints: str, deadline_s: float = 60.0) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        out = run([binary, "status", "--endpoints", endpoints, "--output", "json"])
        if out.returncode == 0:
            status = json.loads(out.stdout)
            if status.get("leader") and status.get("consistent") and status.get("groups"):
                return status
        time.sleep(0.2)
    sys.exit("no leader within 60 s")


def parse(path: str) -> list:
    """Every traced call as (start, end, syscall, args, result), joining the halves of
    calls strace printed as `<unfinished ...>` and `<... resumed>` (other threads ran)."""
    events, pending = [], {}
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.strip()
            m = UNFINISHED.match(line)
            if m:
                tid, ts, name, args = m.groups()
                pending[(tid, name)] = (float(ts), args)
                continue
            m = RESUMED.match(line)
            if m:
                tid, _, name, rest, result, duration = m.groups()
                if (tid, name) in pending:
                    start, args = pending.pop((tid, name))
                    events.append((start, start + float(duration or 0), name, args + rest, result))
                continue
            m = LINE.match(line)
            if m:
                _, ts, name, args, result, duration = m.groups()
                start = float(ts)
                events.append((start, start + float(duration or 0), name, args, result))
    return sorted(events)


def synced_at(events: list, entry: str, since: float):
    """When the first fdatasync (or fsync) of the data file that started after the write
    holding `entry` returned; None if the entry was never written or never synced."""
    written = next((e for e in events if e[0] >= since and e[2].startswith("pwrite")
                    and on_data_file(e[3]) and entry in e[3]), None)
    if written is None:
        return None
    sync = next((e for e in events if e[0] >= written[1] and e[2] in ("fdatasync", "fsync")
                 and on_data_file(e[3]) and e[4] == "0"), None)
    return None if sync is None else sync[1]


def on_data_file(args: str) -> bool:
    return f"{DATA_FILE}>" in args.split(",")[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default="target/debug/failover")
    parser.add_argument("--keep", action="store_true", help="keep the traces and data dirs")
    args = parser.parse_args()
    strace = ensure_strace()
    if not os.path.exists(args.bin):
        subprocess.run(["cargo", "build", "-p", "failover-cli"], check=True)
    binary = os.path.abspath(args.bin)

    work = tempfile.mkdtemp(prefix="failover-trace-")
    ports = free_ports(3)
    config = os.path.join(work, "sites.yaml")
    with open(config, "w") as f:
        f.write(topology(ports))
    endpoints = ",".join(f"127.0.0.1:{p}" for p in ports)
    procs, tracers = [], []
    try:
        for node in (1, 2, 3):
            log = open(os.path.join(work, f"controller-{node}.log"), "w")
            procs.append(subprocess.Popen(
                [binary, "controller", "--node", str(node), "--config", config,
                 "--data-dir", os.path.join(work, f"data-{node}")],
                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, RUST_LOG="warn")))
        status = wait_leader(binary, endpoints)
        leader = status["leader"]
        traces = {}
        for node, proc in zip((1, 2, 3), procs):
            traces[node] = os.path.join(work, f"strace-{node}.txt")
            tracers.append(subprocess.Popen(
                [strace, "-f", "-ttt", "-T", "-yy", "-s", "65536", "-e", f"trace={SYSCALLS}",
                 "-o", traces[node], "-p", str(proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.5)  # strace attaches to every thread
        leader_addr = f"127.0.0.1:{ports[leader - 1]}"
        out = run([binary, "promote", "site-b", "--wait", "--reason", "syscall trace",
                   "--endpoints", leader_addr, "--output", "json"])
        if out.returncode != 0:
            print(out.stdout, out.stderr, file=sys.stderr)
            return 1
        time.sleep(0.5)
    finally:
        for t in tracers:
            t.terminate()
        for t in tracers:
            t.wait()
        for p in procs:
            p.kill()
            p.wait()

    return check(traces, leader, ports[leader - 1], work, args.keep)


def check(traces: dict, leader: int, leader_port: int, work: str, keep: bool) -> int:
    events = {node: parse(path) for node, path in traces.items()}
    lead = events[leader]
    local = f"127.0.0.1:{leader_port}->"
    reads = [e for e in lead if e[2] in ("read", "readv", "recvfrom", "recvmsg")
             and local in e[3] and "site-b" in e[3] and e[4] not in ("-1", "?")]
    writes = [e for e in lead if e[2] in ("write", "writev", "sendto", "sendmsg")
              and local in e[3] and "site-b" in e[3]]
    if not reads or not writes:
        print("FAIL: cannot find the promote request or its reply in the leader's trace", file=sys.stderr)
        return 1
    t_request = reads[0][0]
    t_ack = min(e[0] for e in writes if e[0] > t_request)
    window = [e for e in lead if t_request <= e[0] <= t_ack]
    print(f"leader {leader}: request read at {t_request:.6f}, reply written at {t_ack:.6f} "
          f"({(t_ack - t_request) * 1000:.1f} ms)")
    for start, end, name, args_, result in window:
        if on_data_file(args_) or name in ("fsync", "fdatasync", "sync_file_range"):
            print(f"  +{(start - t_request) * 1000:8.2f} ms  {name}({args_.split(',')[0]}, ...) = {result}"
                  f"  [{(end - start) * 1000:.2f} ms]")
    print(f"  +{(t_ack - t_request) * 1000:8.2f} ms  reply to the client")

    failures = []
    for node, evs in events.items():
        if any(e[2] == "sync_file_range" and on_data_file(e[3]) for e in evs):
            failures.append(f"controller {node} called sync_file_range on its data file")
    for entry in ENTRIES:
        synced = {}
        for node, evs in events.items():
            at = synced_at(evs, entry, t_request)
            if at is not None:
                synced[node] = at
        shown = ", ".join(f"{n}: +{(t - t_request) * 1000:.2f} ms" for n, t in sorted(synced.items()))
        print(f"{entry} written and fdatasynced (returned) on controllers: {shown or 'none'}")
        before = [n for n, t in synced.items() if t <= t_ack]
        if leader not in before:
            failures.append(f"the leader did not fdatasync the {entry} entry before the reply")
        if len(before) < 2:
            failures.append(f"fewer than a majority (2 of 3) fdatasynced the {entry} entry before the reply")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    if not failures:
        print("OK: every write the reply depends on was fdatasynced on a quorum before the reply")
    if keep or failures:
        print(f"traces kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
