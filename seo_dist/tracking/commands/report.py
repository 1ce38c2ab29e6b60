"""``seo-dist report EXP_DIR``: PNG plots into ``artifacts/plots/`` and a printed summary of one experiment."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exp_dir", help="an experiment directory, e.g. experiments/exp_1700000000")
    parser.add_argument("--out", default=None, help="folder for the PNG plots (default: EXP_DIR/artifacts/plots)")
    parser.add_argument("--no-plots", action="store_true", help="print the summary only")


def run(args: argparse.Namespace) -> int:
    from seo_dist.tracking.analysis import load_run, plot_report, read_events, read_metrics, summary_text

    run_info = load_run(args.exp_dir)
    plots = [] if args.no_plots else plot_report(args.exp_dir, args.out)
    print(summary_text(run_info, read_metrics(args.exp_dir), read_events(args.exp_dir), plots))
    return 0
