"""Which checkpoint folder ``CKPT_DIR`` means: the folder itself, or the latest / best one under an experiment.

``latest`` and ``index.json`` belong to the checkpoint core; both are conveniences that may be stale or
damaged, so they are read defensively and the committed manifests are the fallback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seo_dist.checkpoint.index import newest_commit, read_index, read_latest, scan_checkpoints
from seo_dist.checkpoint.layout import MANIFEST, resolve_checkpoints_root
from seo_dist.checkpoint.retention import best_checkpoint
from seo_dist.config.checkpoint import DEFAULT_BEST_METRIC
from seo_dist.errors import UserError
from seo_dist.export.errors import CorruptCheckpointError, NotACheckpointError
from seo_dist.export.readers import find_reader
from seo_dist.tracking.layout import CONFIG_YAML


def is_checkpoint_folder(path: Path) -> bool:
    return path.is_dir() and ((path / MANIFEST).is_file() or find_reader(path) is not None)


def _best_from_index(root: Path) -> str | None:
    index = read_index(root) or {}
    best = index.get("best")
    if not isinstance(best, dict) or not best:
        return None
    tracked = index.get("tracked")
    tracked = tracked if isinstance(tracked, dict) else {}
    for metric in [*tracked, *best]:
        entry = best.get(metric)
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and (root / entry["name"]).is_dir():
            return entry["name"]
    return None


def _best_metric_from_config(root: Path) -> tuple[str, bool]:
    import yaml

    try:
        raw: Any = yaml.safe_load((root.parent / CONFIG_YAML).read_text())
        section = raw["checkpoint"]
        return str(section.get("best_metric", DEFAULT_BEST_METRIC)), bool(section.get("maximize", False))
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return DEFAULT_BEST_METRIC, False


def _best(root: Path) -> Path:
    name = _best_from_index(root)
    if name is not None:
        return root / name
    metric, maximize = _best_metric_from_config(root)
    info = best_checkpoint(scan_checkpoints(root).committed, metric, maximize)
    if info is None:
        raise UserError(
            f"{root}: no committed checkpoint has a value for {metric!r}, so none is best; "
            "drop --best to consolidate the latest"
        )
    return root / info.name


def _latest(root: Path) -> Path:
    """What a resume would load: ``latest``, or a committed folder created after it (see ``newest_commit``)."""
    name = read_latest(root)
    scan = scan_checkpoints(root)
    if name is not None and scan.by_name(name) is not None:
        return root / str(newest_commit(scan, name))
    if name is not None and (root / name).is_dir():
        return root / name  # not committed: verification names what is wrong with it
    if scan.committed:
        return root / scan.committed[-1].name
    if scan.broken:
        folder, reason = scan.broken[-1]
        raise CorruptCheckpointError(str(folder / MANIFEST), f"no committed checkpoint under {root} ({reason})")
    raise NotACheckpointError(
        f"{root}: no checkpoint here; give a checkpoint folder (checkpoints/step_XXXXXXXX), "
        "an experiment directory or its checkpoints/ folder"
    )


def resolve_checkpoint(path: str | Path, *, best: bool = False) -> Path:
    """The checkpoint folder to consolidate."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if not path.is_dir():
        raise NotACheckpointError(f"{path} is a file; give a checkpoint folder or an experiment directory")
    if is_checkpoint_folder(path):
        if best:
            raise UserError(
                f"{path} is one checkpoint; --best needs an experiment directory or its checkpoints/ folder"
            )
        return path
    root = resolve_checkpoints_root(path)
    return _best(root) if best else _latest(root)
