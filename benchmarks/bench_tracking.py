"""Per-call cost of ``ExperimentTracker.log_metrics`` on rank 0 and on rank 1, against calling
``SummaryWriter.add_scalar`` directly for the same scalars.

Runs itself under ``torchrun --standalone --nproc-per-node 2`` (gloo on CPU), so rank 1 is a real
non-zero rank: the tracker reads its rank through ``seo_dist.dist`` like in training. Each phase runs
while the other rank waits at a barrier, so the two ranks do not compete for the two cores.

Scenarios (each call logs ``--scalars`` values):
  burst  calls back to back: the sink thread competes with the caller for the GIL (worst case)
  paced  a GIL-free matmul (about 1 ms on one core) between calls, like a step that mostly runs kernels

``--mlflow server`` adds the MLflow sink, logging to an ``mlflow server`` this script starts on 127.0.0.1
(sqlite store in a temporary folder): ``log_metrics`` must stay an enqueue while its sender thread posts
the rows.

  python benchmarks/bench_tracking.py [--calls 5000] [--scalars 8] [--mlflow server] [--out benchmarks/out/bench_tracking.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import machine, write_report  # benchmarks/ is on sys.path: these run as scripts

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "bench_tracking.json"


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "mean_us": statistics.fmean(ordered) / 1e3,
        "p50_us": ordered[n // 2] / 1e3,
        "p99_us": ordered[min(n - 1, int(n * 0.99))] / 1e3,
        "max_us": ordered[-1] / 1e3,
    }


def _time_calls(fn: Callable[[int], None], calls: int, paced: bool) -> dict[str, float]:
    """Per-call times of ``fn(step)``; ``paced`` puts a GIL-free matmul (~1 ms, like a step's kernels) between calls."""
    import torch

    a = torch.randn(192, 192)
    samples = []
    clock = time.perf_counter_ns
    for step in range(calls):
        t0 = clock()
        fn(step)
        samples.append(clock() - t0)
        if paced:
            for _ in range(4):
                torch.mm(a, a)
    return _percentiles(samples)


def _metrics(scalars: int) -> Callable[[int], dict[str, float]]:
    names = ["train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/step_s", "mem/rss_gb",
             "mem/device_gb", "ckpt/stall_s"]  # fmt: skip
    names += [f"extra/m{i}" for i in range(max(0, scalars - len(names)))]
    names = names[:scalars]
    return lambda step: {name: 1.0 / (step + 1 + i) for i, name in enumerate(names)}


def worker(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from torch.utils.tensorboard import SummaryWriter

    from seo_dist import dist
    from seo_dist.config import ExperimentConfig, MlflowConfig
    from seo_dist.tracking import ExperimentTracker

    dist.init_distributed(timeout_s=600)
    rank = dist.get_rank()
    make = _metrics(args.scalars)
    workdir = dist.broadcast_object(tempfile.mkdtemp(prefix="bench_tracking_") if rank == 0 else None)
    results: dict[str, Any] = {}

    for scenario, paced in (("burst", False), ("paced", True)):
        mlflow = MlflowConfig(enabled=bool(args.mlflow_uri), tracking_uri=args.mlflow_uri, experiment_name="bench",
                              close_timeout_s=600.0)  # fmt: skip
        cfg = ExperimentConfig(experiment_id=f"bench_{scenario}", base_dir=workdir, wandb=args.wandb, mlflow=mlflow,
                               code_snapshot=False, console=False, metrics_logging_interval=10**9)  # fmt: skip
        tracker = ExperimentTracker(cfg)
        tracker.start_experiment()
        rows = [make(s) for s in range(args.calls)]  # built up front: measure the call, not the dict
        for measured_rank in (0, 1):
            dist.barrier()
            if rank == measured_rank:
                t0 = time.perf_counter()
                stats = _time_calls(lambda s, t=tracker, r=rows: t.log_metrics(r[s], s), args.calls, paced)
                enqueued = time.perf_counter() - t0
                tracker.flush()
                drained = time.perf_counter() - t0
                stats["drain_us_per_call"] = drained / args.calls * 1e6 if rank == 0 and not paced else 0.0
                stats["loop_s"], stats["until_flushed_s"] = enqueued, drained
                results[f"tracker_{scenario}"] = stats
        if rank == 0:
            writer = SummaryWriter(log_dir=str(Path(workdir) / f"direct_{scenario}"))

            def add_scalars(step: int, w: Any = writer, r: list[dict[str, float]] = rows) -> None:
                for name, value in r[step].items():
                    w.add_scalar(name, value, global_step=step)

            results[f"add_scalar_{scenario}"] = _time_calls(add_scalars, args.calls, paced)
            writer.close()
        dist.barrier()
        tracker.end_experiment("completed")

    gathered = dist.all_gather_object(results)
    if rank == 0:
        report(gathered, args)
    dist.cleanup()
    return 0


def report(per_rank: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = []
    for scenario in ("burst", "paced"):
        direct = per_rank[0][f"add_scalar_{scenario}"]
        for label, stats in (
            ("rank 0 log_metrics (enqueue)", per_rank[0][f"tracker_{scenario}"]),
            ("rank 1 log_metrics (no-op)", per_rank[1][f"tracker_{scenario}"]),
            (f"rank 0 add_scalar x{args.scalars}", direct),
        ):
            rows.append({"scenario": scenario, "what": label, **{k: round(v, 3) for k, v in stats.items()},
                         "vs_add_scalar": round(stats["mean_us"] / direct["mean_us"], 4)})  # fmt: skip
    header = (
        f"{'scenario':<8} {'what':<30} {'mean us':>9} {'p50 us':>8} {'p99 us':>9} {'max us':>9} {'x add_scalar':>12} "
        f"{'drain us':>9}"
    )
    sinks = (
        "jsonl+tensorboard" + ("+wandb" if args.wandb != "disabled" else "") + ("+mlflow" if args.mlflow_uri else "")
    )
    print(f"log_metrics vs SummaryWriter.add_scalar: {args.calls} calls x {args.scalars} scalars, sinks "
          f"{sinks}, 2 ranks (torchrun, gloo, CPU)")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:
        drain = f"{r['drain_us_per_call']:.1f}" if r.get("drain_us_per_call") else "-"
        print(f"{r['scenario']:<8} {r['what']:<30} {r['mean_us']:>9.2f} {r['p50_us']:>8.2f} {r['p99_us']:>9.2f} "
              f"{r['max_us']:>9.1f} {r['vs_add_scalar']:>12.4f} {drain:>9}")  # fmt: skip
    write_report(
        args.out,
        {
            "benchmark": "bench_tracking",
            "calls": args.calls,
            "scalars_per_call": args.scalars,
            "wandb": args.wandb,
            "mlflow": bool(args.mlflow_uri),
            "machine": machine(),
            "rows": rows,
            "notes": "drain us (burst only) = time until the sink thread had written every row (JSONL + "
            "TensorBoard; not MLflow, whose sender thread posts on its own), per call: the sustained logging rate the sinks keep up with; burst means and maxima "
            "include GIL hand-offs to the sink thread (sys.getswitchinterval() = 5 ms)",
        },
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--scalars", type=int, default=8)
    p.add_argument("--wandb", choices=["disabled", "offline"], default="disabled")
    p.add_argument(
        "--mlflow", choices=["off", "server"], default="off", help="server: also log to a local mlflow server"
    )
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mlflow-uri", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.calls < 100 or args.scalars < 1:
        p.error("--calls must be >= 100 and --scalars >= 1")
    if args.worker:
        return worker(args)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__, "--worker",
           "--calls", str(args.calls), "--scalars", str(args.scalars), "--wandb", args.wandb, "--out", str(Path(args.out).resolve())]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "WANDB_MODE": "offline"}
    with mlflow_server(args.mlflow == "server") as uri:
        return subprocess.call(cmd + (["--mlflow-uri", uri] if uri else []), env=env)


@contextlib.contextmanager
def mlflow_server(start: bool) -> Iterator[str | None]:
    """A local ``mlflow server`` (sqlite store in a temporary folder) for the run, or None."""
    if not start:
        yield None
        return
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench_mlflow_") as tmp:
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
               "--artifacts-destination", f"{tmp}/artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.5)
            yield uri
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
