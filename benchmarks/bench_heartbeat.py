"""Cost of the heartbeat on the training thread: ``Monitor.beat(step)`` once per step, and a slow phase
entered and left (``with monitor.phase(...)``), with the monitor thread publishing every second.

    python benchmarks/bench_heartbeat.py [--calls 200000] [--out benchmarks/results/heartbeat.json]

Prints a table (median of 5 rounds, nanoseconds per call) and writes JSON. Goal: beat() under 20 us.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _common import machine, write_report

from seo_dist.config.sections import MonitorConfig
from seo_dist.monitor.watchdog import Monitor


def per_call_ns(fn, calls: int, rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for i in range(calls):
            fn(i)
        samples.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--out", default="benchmarks/results/heartbeat.json")
    args = parser.parse_args()
    load = os.getloadavg()
    monitor = Monitor(MonitorConfig(heartbeat_interval_s=1.0), tracker=None, exp_dir=None).start()
    try:
        baseline = per_call_ns(lambda i: None, args.calls)
        beat = per_call_ns(monitor.beat, args.calls) - baseline

        def phase(i: int) -> None:
            with monitor.phase("validation"):
                pass

        slow_phase = per_call_ns(phase, args.calls // 4) - baseline
    finally:
        monitor.stop()
    rows = [("beat(step), once per step", beat), ("with phase(...): enter + leave", slow_phase)]
    print(f"{'operation':<36} {'ns/call':>10}")
    for name, ns in rows:
        print(f"{name:<36} {ns:>10.0f}")
    print(f"goal: beat() < 20000 ns -> {'met' if beat < 20_000 else 'NOT met'}")
    write_report(args.out, {"benchmark": "heartbeat", "calls": args.calls,
                            "ns_per_call": {name: round(ns, 1) for name, ns in rows},
                            "machine": machine(load)})  # fmt: skip


if __name__ == "__main__":
    main()
