"""``seo-dist runs [BASE_DIR]``: one line per experiment (id, name, status, start, duration, steps, best val/loss)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base_dir", nargs="?", default="experiments", help="experiments folder (default: experiments)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per run instead of a table")


def run(args: argparse.Namespace) -> int:
    from seo_dist.tracking.analysis import find_runs, runs_table

    runs = find_runs(args.base_dir)
    if args.json:
        for r in runs:
            print(json.dumps(r.to_dict()))
    elif not runs:
        print(f"no experiments under {args.base_dir}")
    else:
        print(runs_table(runs))
    return 0
