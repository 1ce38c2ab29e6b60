"""``seo-dist compare EXP EXP ...``: overlay loss curves in one PNG and print the config keys that differ."""

from __future__ import annotations

import argparse

from seo_dist.config.checkpoint import TRAIN_LOSS, VAL_LOSS
from seo_dist.errors import UserError

DEFAULT_METRICS = (TRAIN_LOSS, VAL_LOSS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exp_dirs", nargs="+", metavar="EXP_DIR", help="two or more experiment directories")
    parser.add_argument("--out", default="compare.png", help="PNG to write (default: compare.png)")
    parser.add_argument(
        "--metric",
        action="append",
        default=None,
        help="metric to overlay; repeat for several (default: train/loss, val/loss)",
    )


def run(args: argparse.Namespace) -> int:
    from seo_dist.tracking.analysis import config_differences, format_table, load_run, plot_compare

    if len(args.exp_dirs) < 2:
        raise UserError(
            "compare needs at least two experiment directories, e.g. seo-dist compare experiments/a experiments/b"
        )
    runs = [load_run(d) for d in args.exp_dirs]
    out = plot_compare(args.exp_dirs, args.out, list(args.metric or DEFAULT_METRICS))
    ids = [r.experiment_id for r in runs]
    print(
        format_table(
            ["run", "status", "last step", "best val/loss", "config hash"],
            [
                [r.experiment_id, r.status, str(r.last_step), str(r.best_value), (r.config_hash or "-")[:12]]
                for r in runs
            ],
        )
    )
    diffs = config_differences([r.config for r in runs])
    print()
    if diffs:
        print(f"config keys that differ ({len(diffs)}):")
        print(format_table(["key", *ids], [[key, *(repr(v) for v in values)] for key, values in diffs]))
    else:
        print("configs are identical")
    print(f"\nplot: {out}")
    return 0
