"""A tiny training loop under the StepProfiler, run by tests/test_profiling_dist.py through torchrun.

Each scenario runs on every rank; each rank writes what it saw (the collected metrics, the
summary, and its own stopwatch times of each step, to check the profiler against) into
``<out>/rank<R>.json``.

Scenarios:
- ``independent``: no collectives in the loop, so a slowed rank really has longer steps. The
  slow rank sleeps ``--slow-s`` in its data phase for steps 1-3 and a third of that for 4-6,
  with a collect after step 3 and after step 6 (the second must only see steps 4-6).
- ``synced`` / ``synced_slow0``: gradients are all-reduced in the backward phase, as in data
  parallel training: every rank's step time is the same, the slow rank (1, then 0) must
  still be named. ``profiling.peak_tflops`` is set, so MFU is reported even on the CPU.
- ``trace``: torch.profiler window (wait 1, warmup 1, active 2) into ``<out>/traces``.
- ``disabled``: ``enabled: false`` must return ``{}`` everywhere.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seo_dist import dist
from seo_dist.config import ProfilingConfig
from seo_dist.profiling import StepProfiler

MICRO_BATCH, SEQ_LEN, WIDTH = 8, 16, 64
TOKENS = MICRO_BATCH * SEQ_LEN
FLOPS_PER_TOKEN = 6.0 * (WIDTH * 4 * WIDTH * 2)


def run_loop(
    prof: StepProfiler,
    *,
    steps: int,
    collect_every: int,
    slow_rank: int,
    slow_s: list[float],
    all_reduce: bool,
) -> dict[str, Any]:
    torch.manual_seed(dist.get_rank())
    model = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    rank = dist.get_rank()
    metrics, own_step_s = [], []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        with prof.phase("data"):
            x = torch.randn(MICRO_BATCH, SEQ_LEN, WIDTH)
            if rank == slow_rank:
                time.sleep(slow_s[(step - 1) // collect_every])
        with prof.phase("forward"):
            loss = model(x).pow(2).mean()
        with prof.phase("backward"):
            loss.backward()
            if all_reduce:
                for p in model.parameters():
                    torch.distributed.all_reduce(p.grad)
        with prof.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        prof.step_end(step)
        own_step_s.append(time.perf_counter() - t0)
        if step % collect_every == 0:
            metrics.append(prof.collect(step))
    return {"metrics": metrics, "summary": prof.summary(), "own_step_s": own_step_s}


def make_profiler(config: ProfilingConfig, trace_dir: Path | None = None) -> StepProfiler:
    return StepProfiler(
        config,
        device=torch.device("cpu"),
        flops_per_token=FLOPS_PER_TOKEN,
        tokens_per_step_per_rank=TOKENS,
        samples_per_step_per_rank=MICRO_BATCH,
        trace_dir=trace_dir,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slow-s", type=float, default=0.06)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_distributed()
    slow = [args.slow_s, args.slow_s / 3]
    results: dict[str, Any] = {}

    loop = {"steps": 6, "collect_every": 3, "slow_s": slow}
    with make_profiler(ProfilingConfig()) as prof:
        results["independent"] = run_loop(prof, slow_rank=1, all_reduce=False, **loop)
    for name, slow_rank in (("synced", 1), ("synced_slow0", 0)):
        with make_profiler(ProfilingConfig(peak_tflops=0.5)) as prof:
            results[name] = run_loop(prof, slow_rank=slow_rank, all_reduce=True, **loop)

    trace_config = ProfilingConfig(trace=True, trace_wait=1, trace_warmup=1, trace_active=2, trace_repeat=1)
    with make_profiler(trace_config, trace_dir=args.out / "traces") as prof:
        results["trace"] = run_loop(prof, steps=6, collect_every=6, slow_rank=-1, slow_s=[0.0], all_reduce=True)

    with make_profiler(ProfilingConfig(enabled=False)) as prof:
        results["disabled"] = run_loop(prof, steps=4, collect_every=2, slow_rank=-1, slow_s=[0.0, 0.0], all_reduce=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.cleanup()


if __name__ == "__main__":
    main()
