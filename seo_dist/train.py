"""``python -m seo_dist.train --config F [--set k=v ...] [--resume EXP_DIR]``.

Runs unchanged under ``torchrun`` (one or many nodes), the ``deepspeed`` launcher (its
``--local_rank=N`` argument is accepted) and plain ``python`` (world size 1). ``seo-dist train``
is the same command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from seo_dist import dist
from seo_dist.errors import UserError
from seo_dist.tracking.layout import CONFIG_YAML


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="job YAML file (default with --resume: EXP_DIR/config.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=1e-3 deepspeed.zero_optimization.stage=3",
    )
    parser.add_argument(
        "--resume", type=Path, help="experiment directory (or one of its checkpoint folders) to continue"
    )


def resolve_job(args: argparse.Namespace):
    """The validated JobConfig for these arguments (raises UserError with one line on bad input)."""
    from seo_dist.config import load_config

    overrides = [o for group in args.overrides for o in group]
    config_path = args.config
    exp_dir = None
    if args.resume is not None:
        from seo_dist.resume import resume_experiment_dir

        exp_dir = resume_experiment_dir(args.resume)  # checked before anything else is loaded
    if config_path is None:
        if exp_dir is None:
            raise UserError("missing --config; pass --config configs/tiny_cpu.yaml (or --resume EXP_DIR)")
        config_path = exp_dir / CONFIG_YAML
    return load_config(config_path, overrides)


def run(args: argparse.Namespace) -> int:
    from seo_dist.checkpoint.errors import CheckpointSaveError
    from seo_dist.resume import plan_resume
    from seo_dist.trainer import NonFiniteLossError, SEOTrainer

    job = resolve_job(args)
    _quiet_libraries()
    try:
        dist.init_distributed(job.monitor.startup_collective_timeout_s)
        plan = plan_resume(args.resume, job.experiment)  # collective on a torchrun restart
        result = SEOTrainer(job, resume=plan).train()
    except (NonFiniteLossError, CheckpointSaveError) as e:
        # the run's outcome, not a bug: one line (metadata.json and events.jsonl hold the details and traceback)
        sys.stderr.write(f"seo_dist: training stopped: {e}\n")
        return 1
    finally:
        dist.cleanup()
    if dist.get_dist_info().is_rank_zero:
        where = f" in {result.exp_dir}" if result.exp_dir else ""
        final = f"{result.final_val_loss:.4f}" if result.final_val_loss is not None else "n/a"
        print(
            f"seo_dist: {result.status} at step {result.step}; val/loss {result.initial_val_loss:.4f} -> "
            f"{final}{where}",
            flush=True,
        )
    return 0


def _quiet_libraries() -> None:
    """DeepSpeed and transformers log a lot at INFO on every rank; keep warnings and errors."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except Exception:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = dist.strip_local_rank_arg(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="python -m seo_dist.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        sys.stderr.write(f"seo_dist: error: {e}\n")
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
