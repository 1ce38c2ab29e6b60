"""``seo-dist ls EXP_DIR``: committed checkpoints with step, epoch, metrics, size and latest/best/pinned markers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from seo_dist.config import DEFAULT_BEST_METRIC
from seo_dist.errors import UserError
from seo_dist.tracking.layout import ExperimentLayout

"""The metric marking the best checkpoint when neither index.json nor a manifest names one: the config default."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exp_dir", metavar="EXP_DIR", help="an experiment directory or its checkpoints/ folder")
    parser.add_argument(
        "--metric", default=None, help="metric that marks the best checkpoint (default: the tracked one)"
    )
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--maximize", dest="maximize", action="store_true", default=None, help="larger metric is better")
    order.add_argument("--minimize", dest="maximize", action="store_false", help="smaller metric is better")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _tracked(index: dict[str, Any] | None, root: Path, committed: list[Any]) -> tuple[str, bool]:
    """The best metric: from index.json, else from the newest manifest's config, else the default (minimised)."""
    if index and isinstance(index.get("tracked"), dict) and index["tracked"]:
        metric, spec = next(iter(index["tracked"].items()))
        return metric, bool(spec.get("maximize", False)) if isinstance(spec, dict) else False
    if committed:
        from seo_dist.checkpoint.errors import ManifestError
        from seo_dist.checkpoint.manifest import read_manifest

        try:
            cfg = (read_manifest(root / committed[-1].name).config or {}).get("checkpoint", {})
            if isinstance(cfg, dict) and cfg.get("best_metric"):
                return str(cfg["best_metric"]), bool(cfg.get("maximize", False))
        except ManifestError:
            pass
    return DEFAULT_BEST_METRIC, False


def run(args: argparse.Namespace) -> int:
    from seo_dist.checkpoint.index import read_index, read_latest, scan_checkpoints
    from seo_dist.checkpoint.layout import INDEX, LATEST, STAGING_SUFFIX, resolve_checkpoints_root
    from seo_dist.checkpoint.retention import best_checkpoint

    path = Path(args.exp_dir)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; give an experiment directory or its checkpoints/ folder")
    root = resolve_checkpoints_root(path)
    scan = scan_checkpoints(root)
    staging = sorted(p.name for p in root.iterdir() if p.name.endswith(STAGING_SUFFIX) and p.is_dir())
    if not scan.any and not staging:
        is_checkpoints_root = (path / LATEST).exists() or (path / INDEX).exists()
        if not ExperimentLayout(path).is_experiment() and not is_checkpoints_root:
            raise UserError(f"{path} is neither an experiment directory nor a checkpoints folder")
        print(f"no checkpoints under {root}")
        return 0
    index = read_index(root)
    metric, maximize = _tracked(index, root, scan.committed)
    if args.metric:
        metric = args.metric
    if args.maximize is not None:
        maximize = args.maximize
    latest = read_latest(root)
    best = best_checkpoint(scan.committed, metric, maximize)
    pinned = set(index.get("pinned", [])) if index else set()
    rows = [("NAME", "STEP", "EPOCH", "SIZE", "METRICS", "MARKERS")]
    for info in scan.committed:
        metrics = " ".join(f"{k}={v:.4g}" if v is not None else f"{k}=nan" for k, v in sorted(info.metrics.items()))
        marks = [
            m
            for m, on in (
                ("latest", info.name == latest),
                (f"best({metric})", best is not None and info.name == best.name),
                ("pinned", info.step in pinned),
            )
            if on
        ]
        rows.append(
            (
                info.name,
                str(info.step),
                str(info.epoch),
                human_bytes(info.total_bytes),
                metrics or "-",
                ",".join(marks) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    total = sum(i.total_bytes for i in scan.committed)
    print(f"{len(scan.committed)} committed checkpoint(s), {human_bytes(total)} in {root}")
    for folder, reason in scan.broken:
        print(f"INVALID {folder.name}: {reason.split(': ', 1)[-1]}")
    for name in staging:
        print(f"INCOMPLETE {name}: an unfinished save (removed at the next start)")
    return 0
