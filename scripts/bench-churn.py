#!/usr/bin/env python3
"""Controller churn benchmark (L3): how often does churn that leaves the active site
connected to a quorum interrupt its workers?

Runs the multi-process churn test (crates/failover-cli/tests/it/churn.rs) in a release build
at the topology's default timing, with `--kills` leader kills (SIGKILL, restart), `--freezes`
leader freezes (SIGSTOP until another leader is confirmed, SIGCONT), `--rejoins` follower
rejoins (alternately SIGSTOP/SIGCONT and SIGKILL/restart, each 2.5 s) and `--rolling`
rolling restarts of all five controllers, counting instead of failing at the first
interruption. Writes the result to docs/benchmarks.md (section `churn`).

    python3 scripts/bench-churn.py [--kills 50] [--freezes 10] [--rejoins 20] [--rolling 2]
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchdoc import write_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--freezes", type=int, default=10)
    parser.add_argument("--rejoins", type=int, default=20)
    parser.add_argument("--rolling", type=int, default=2)
    parser.add_argument("--test-timing", action="store_true",
                        help="use the churn test's slowed-down timing instead of the defaults")
    args = parser.parse_args()
    env = dict(os.environ)
    env.update({
        "FAILOVER_CHURN_KILLS": str(args.kills),
        "FAILOVER_CHURN_FREEZES": str(args.freezes),
        "FAILOVER_CHURN_REJOINS": str(args.rejoins),
        "FAILOVER_CHURN_ROLLING": str(args.rolling),
        "FAILOVER_CHURN_COUNT": "1",
    })
    if not args.test_timing:
        env["FAILOVER_CHURN_DEFAULT_TIMING"] = "1"
    started = time.time()
    proc = subprocess.run(
        ["cargo", "test", "--release", "-p", "failover-cli", "--test", "it", "--",
         "churn::controller_churn_never_restarts_active_workers", "--exact", "--nocapture",
         "--test-threads", "1"],
        env=env, capture_output=True, text=True)
    took = time.time() - started
    summary = None
    for line in proc.stdout.splitlines() + proc.stderr.splitlines():
        if "churn-summary " in line:
            summary = json.loads(line.split("churn-summary ", 1)[1])
    if proc.returncode != 0 or summary is None:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        sys.exit(f"churn run failed (exit {proc.returncode})")
    events = [l for l in proc.stderr.splitlines() if "site-a workers interrupted by" in l]
    timing = "the churn test's timing (heartbeat 150, election 450-750, ttl 4500)" if args.test_timing \
        else "default timing (heartbeat 100, election 300-500, ttl 3500, keepalive 250, drift 250)"
    load = os.getloadavg()[0]
    body = f"""## Controller churn (`python3 scripts/bench-churn.py`, release build, 2 cores)

Five controller processes on loopback, one `failover exec` with 2 shell workers (each with a
child) at site-a, {timing}, executor stop grace 500 ms. Every event leaves site-a connected to
a quorum, so the target is zero interruptions (L3).

| event | count |
|---|---|
| leader killed (SIGKILL) and restarted | {summary['leader_kills']} |
| leader frozen (SIGSTOP) until another leader is confirmed, then resumed | {summary['leader_freezes']} |
| follower rejoins (frozen 2.5 s or killed and restarted 2.5 s later) | {summary['rejoins']} |
| rolling restarts of all five controllers (SIGTERM, start) | {summary['rolling_restarts']} |
| leaders stopped by a rolling restart / of them handed leadership over first | {summary.get('rolling_leader_stops', '-')} / {summary.get('rolling_handovers', '-')} |
| **events that interrupted site-a's workers** | **{summary['interrupting_events']}** |
| worker starts after the first ones | {summary['worker_starts_after_first']} |
| rejoins that deposed the leader | {summary['rejoins_that_deposed_the_leader']} |
| time to a confirmed new leader after a kill or freeze, median / max (seen by polling status) | {summary['new_leader_median_ms']} / {summary['new_leader_max_ms']} ms |

Run took {took:.0f} s; 1-minute load average at the end {load:.1f} (the machine is shared).
""" + ("".join(f"\n- {e}" for e in events) if events else "")
    write_section("churn", body)


if __name__ == "__main__":
    main()
