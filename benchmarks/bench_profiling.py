"""Cost of the profiling hooks: training step time with ``profiling.enabled`` on and off.

Runs the real trainer in this process (world size 1, DeepSpeed ZeRO-2 on the CPU) for a tiny
GPT-2 and for GPT-2 124M (12 x 768), alternating on/off runs so drift hits both equally, and
reports the median per-step loop time. Prints a table, writes JSON.

    python benchmarks/bench_profiling.py [--repeats 3] [--out benchmarks/out/bench_profiling.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from _common import machine, write_report  # benchmarks/ is on sys.path: these run as scripts

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    "tiny (4x128)": [
        "model.config.n_layer=4",
        "model.config.n_embd=128",
        "model.config.n_head=4",
        "train.micro_batch_size=8",
        "train.max_steps=40",
    ],
    "gpt2-124M (12x768)": [
        "model.config.n_layer=12",
        "model.config.n_embd=768",
        "model.config.n_head=12",
        "train.micro_batch_size=2",
        "train.max_steps=10",
    ],
}


def run_once(overrides: list[str], enabled: bool, workdir: Path) -> float:
    from seo_dist.config import load_config
    from seo_dist.trainer import SEOTrainer

    job = load_config(
        REPO / "configs" / "tiny_cpu.yaml",
        [
            *overrides,
            f"profiling.enabled={str(enabled).lower()}",
            "train.eval_interval=0",
            "train.eval_batches=1",
            "train.progress_bar=false",
            "train.log_interval=5",
            "checkpoint.save_interval=0",
            "checkpoint.save_final=false",
            f"experiment.base_dir={workdir}",
            "experiment.wandb=disabled",
            "experiment.tensorboard=false",
            "experiment.console=false",
            "experiment.code_snapshot=false",
        ],
    )
    result = SEOTrainer(job).train()
    return result.loop_time_s / result.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "bench_profiling.json")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    from seo_dist.train import _quiet_libraries

    _quiet_libraries()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeats):
                for enabled in (False, True):
                    times[enabled].append(run_once(MODELS[name], enabled, Path(tmp)))
            off, on = statistics.median(times[False]), statistics.median(times[True])
            rows.append(
                {
                    "model": name,
                    "step_s_off": off,
                    "step_s_on": on,
                    "overhead_pct": 100 * (on - off) / off,
                    "runs_off": times[False],
                    "runs_on": times[True],
                }
            )
    print(f"{'model':<22} {'step off (s)':>13} {'step on (s)':>12} {'overhead':>9}")
    for r in rows:
        print(f"{r['model']:<22} {r['step_s_off']:>13.4f} {r['step_s_on']:>12.4f} {r['overhead_pct']:>8.2f}%")
    write_report(
        args.out,
        {"benchmark": "profiling_overhead", "repeats": args.repeats, "machine": machine(load_before), "rows": rows},
    )


if __name__ == "__main__":
    main()
