"""Worker for the 2-rank tracking tests, run under ``torchrun``: ExperimentTracker used on its own, the way
a user's script would. Writes ``<out>/rank<N>.json`` with what each rank saw.

Modes:
  ok       start (default or given id), log steps [0, steps) on every rank, end completed
  resume   first try to start the same id without resume (must fail on every rank), then resume from
           --resume-step and log up to --steps
  fail     raise at step 3 on every rank inside ``tracker.track()`` (status failed, re-raised)
  sigterm  log until SIGTERM/SIGINT arrives (status interrupted); rank 0 touches <out>/ready after step 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from seo_dist import dist
from seo_dist.config import ExperimentConfig
from seo_dist.errors import UserError
from seo_dist.tracking import ExperimentTracker, install_interrupt_handlers


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", required=True, choices=["ok", "resume", "fail", "sigterm"])
    p.add_argument("--base-dir", required=True)
    p.add_argument("--exp-id", default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resume-step", type=int, default=None)
    p.add_argument("--wandb", default="offline")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    dist.init_distributed(timeout_s=60)
    rank = dist.get_rank()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"rank": rank, "world_size": dist.get_world_size(), "host": dist.hostname()}

    def config() -> ExperimentConfig:
        return ExperimentConfig(
            experiment_name=f"dist-{args.mode}",
            experiment_id=args.exp_id,
            base_dir=args.base_dir,
            wandb=args.wandb,
            metrics_logging_interval=5,
            code_snapshot=False,
        )

    def save() -> None:
        (out / f"rank{rank}.json").write_text(json.dumps(result))

    handle = install_interrupt_handlers() if args.mode == "sigterm" else None
    first_step = 0
    resume = False
    if args.mode == "resume":
        try:
            ExperimentTracker(config()).start_experiment()
            result["exists_error"] = None
        except UserError as e:
            result["exists_error"] = str(e)
        resume, first_step = True, args.resume_step + 1

    tracker = ExperimentTracker(config(), hparams={"lr": 1e-3, "seed": 1})
    try:
        with tracker.track(resume=resume, resume_step=args.resume_step if resume else None) as exp_dir:
            result["exp_dir"] = str(exp_dir)
            step = first_step
            while step < args.steps or args.mode == "sigterm":
                loss = 10.0 / (step + 1)
                tracker.log_metrics({"train/loss": loss, "perf/tokens_per_s": 1000.0 + step, "train/lr": 1e-3}, step)
                if step % 5 == 0:
                    tracker.log_metrics({"val/loss": loss * 1.1}, step)
                    tracker.log_event("rank_heartbeat", step=step, source_rank=rank)
                if step == 7 and args.mode == "ok":  # a per-rank note, e.g. a straggler reporting itself
                    tracker.log_event("straggler", step=step, all_ranks=True, level="warning", source_rank=rank)
                if args.mode == "fail" and step == 3:
                    raise RuntimeError(f"boom at step 3 on rank {rank}")
                if args.mode == "sigterm":
                    if step == 3 and rank == 0:
                        tracker.flush()
                        (out / "ready").touch()
                    time.sleep(0.05)
                step += 1
            tracker.flush()
        result["status"] = "completed"
    except KeyboardInterrupt as e:
        result["status"] = "interrupted"
        result["error"] = repr(e)
        result["signal"] = handle.signum if handle else None
        save()
        return 130
    except Exception as e:
        result["status"] = "failed"
        result["error"] = repr(e)
        save()
        return 1
    save()
    dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
