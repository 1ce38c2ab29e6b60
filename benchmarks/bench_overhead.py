"""seo_dist's training step against a plain DeepSpeed loop on the same model, interleaved A, B, A, B ...

A (peer): benchmarks/plain_deepspeed_peer.py, DeepSpeed and nothing else. B: ``python -m seo_dist.train`` with
configs/tiny_cpu.yaml (tracking and profiling on, as shipped; checkpoints off, since the peer saves none).
Both: GPT-2 ``--layers`` x ``--width`` (default 4 x 256), vocabulary ``--vocab`` (default 4096: set explicitly,
since the model otherwise takes the trained tokenizer's size), micro batch 8, sequence 128, ZeRO-2
(configs/deepspeed/zero2.json), gradient clipping 1.0, AdamW, ``--nproc`` ranks under torchrun.

Step time: each run's own per-step timing, as 10-step window means: the peer times every step on the host;
for seo_dist, the wall time between two consecutive log rows of metrics.jsonl (10 whole loop iterations, the
logging included). The first window (warm-up; for seo_dist, everything before the first log row) is dropped
and the median of the rest is the run's step time. Start-up (imports, DeepSpeed init, data) is excluded. Per pair the ratio
peer/seo_dist is the relative throughput (1.0 = no overhead); the table gives every pair, the median and the
spread (min-max) of the ratio.

    python benchmarks/bench_overhead.py --pairs 5 --steps 60 --json benchmarks/out/overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WINDOW = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    e.update(TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    return e


def torchrun(nproc: int) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc-per-node", str(nproc), "--master-port", str(free_port())]


def window_median(window_means: list[float]) -> float:
    """The run's step time: the median of its 10-step window means after the first (warm-up) window."""
    kept = window_means[1:] or window_means
    return statistics.median(kept)


def run_peer(args: argparse.Namespace, tmp: Path, i: int) -> tuple[float, float]:
    out = tmp / f"peer_{i}.json"
    cmd = [*torchrun(args.nproc), str(REPO / "benchmarks" / "plain_deepspeed_peer.py"), "--steps", str(args.steps),
           "--n-layer", str(args.layers), "--n-embd", str(args.width), "--n-head", str(args.heads),
           "--vocab", str(args.vocab), "--out", str(out)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env(), capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"peer run failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    times = json.loads(out.read_text())["step_times_s"]
    windows = [statistics.fmean(times[k : k + WINDOW]) for k in range(0, len(times) - WINDOW + 1, WINDOW)]
    return window_median(windows), wall


VARIANTS = {
    # what seo_dist adds around the step, switched off one at a time (``--variants``) to find where time goes
    "shipped": [],
    "auto_gc": ["train.gc_interval=0"],  # Python's automatic collection, as the peer has it
    "no_wandb": ["experiment.wandb=disabled"],
    "no_tensorboard": ["experiment.tensorboard=false"],
    "no_profiling": ["profiling.enabled=false"],
    "slow_heartbeat": ["monitor.heartbeat_interval_s=60"],
    "bare": ["experiment.wandb=disabled", "experiment.tensorboard=false", "profiling.enabled=false",
             "monitor.heartbeat_interval_s=60", "experiment.console=false"],
}  # fmt: skip


def run_seo(args: argparse.Namespace, tmp: Path, i: int, variant: str = "shipped") -> tuple[float, float]:
    base = tmp / "experiments"
    sets = [
        *VARIANTS[variant], f"experiment.base_dir={base}", f"experiment.experiment_id=seo_{variant}_{i}", "experiment.checkpoint_enabled=false",
        f"model.config.n_layer={args.layers}", f"model.config.n_embd={args.width}", f"model.config.n_head={args.heads}",
        f"model.config.vocab_size={args.vocab}",
        f"train.max_steps={args.steps}", f"train.log_interval={WINDOW}", "train.eval_interval=0",
        "train.eval_batches=1", "train.progress_bar=false", "train.micro_batch_size=8", "train.seq_len=128",
    ]  # fmt: skip
    cmd = [*torchrun(args.nproc), "-m", "seo_dist.train", "--config", str(REPO / "configs" / "tiny_cpu.yaml"),
           "--set", *sets]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env(), capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"seo_dist run failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    rows = [
        json.loads(line)
        for line in (base / f"seo_{variant}_{i}" / "metrics" / "metrics.jsonl").read_text().splitlines()
    ]
    logged = [r["time"] for r in rows if "train/lr" in r]  # one row per log window, stamped when logged
    # the wall time between two log rows: 10 whole loop iterations, logging and bookkeeping included (the
    # profiler's perf/step_time_s spans only the step itself, from its first phase to step_end)
    windows = [(b - a) / WINDOW for a, b in zip(logged, logged[1:])]
    return statistics.median(windows), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=5, help="interleaved (peer, seo_dist) pairs (at least 5 for a report)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run (multiple of 10, >= 20)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096, help="model vocabulary of both (>= the trained tokenizer's)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", default="benchmarks/out/overhead.json")
    p.add_argument(
        "--variants",
        default="shipped",
        help=f"comma-separated seo_dist variants run after the peer in every round: {', '.join(VARIANTS)}",
    )
    args = p.parse_args()
    if args.steps < 2 * WINDOW or args.steps % WINDOW:
        p.error(f"--steps must be a multiple of {WINDOW}, at least {2 * WINDOW}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or (unknown := [v for v in variants if v not in VARIANTS]):
        p.error(f"--variants: unknown {unknown or 'empty list'}; choose from {', '.join(VARIANTS)}")
    load = os.getloadavg()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        for i in range(args.pairs):
            peer, peer_wall = run_peer(args, Path(tmp), i)
            row: dict[str, float] = {"peer_step_s": peer, "peer_wall_s": peer_wall}
            for v in variants:
                seo, seo_wall = run_seo(args, Path(tmp), i, v)
                row.update({f"{v}_step_s": seo, f"{v}_ratio": peer / seo, f"{v}_wall_s": seo_wall})
            rounds.append(row)
            shown = ", ".join(f"{v} {row[f'{v}_step_s'] * 1e3:.1f} ms ({row[f'{v}_ratio']:.3f})" for v in variants)
            print(f"round {i + 1}/{args.pairs}: peer {peer * 1e3:.1f} ms, {shown}", flush=True)
    summary: dict[str, object] = {"peer_step_ms_median": statistics.median(r["peer_step_s"] for r in rounds) * 1e3,
                                  "goal": ">= 0.98 (shipped)"}  # fmt: skip
    for v in variants:
        ratios = [r[f"{v}_ratio"] for r in rounds]
        summary[v] = {"step_ms_median": statistics.median(r[f"{v}_step_s"] for r in rounds) * 1e3,
                      "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}  # fmt: skip
    print(f"\n{'round':>5} {'peer ms':>9} " + " ".join(f"{v + ' ms':>16} {'ratio':>6}" for v in variants))
    for i, r in enumerate(rounds, 1):
        cells = " ".join(f"{r[f'{v}_step_s'] * 1e3:>16.1f} {r[f'{v}_ratio']:>6.3f}" for v in variants)
        print(f"{i:>5} {r['peer_step_s'] * 1e3:>9.1f} {cells}")
    print(f"median peer: {summary['peer_step_ms_median']:.1f} ms")
    for v in variants:
        m = summary[v]
        print(
            f"  {v}: {m['step_ms_median']:.1f} ms, throughput ratio {m['ratio_median']:.3f} "  # type: ignore[index]
            f"(min {m['ratio_min']:.3f}, max {m['ratio_max']:.3f})"
        )  # type: ignore[index]
    write_report(args.json, {"args": vars(args), "rounds": rounds, "summary": summary, "machine": machine(load)})


if __name__ == "__main__":
    main()
