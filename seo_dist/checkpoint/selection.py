"""Which checkpoint folders a load tries, in order: the chosen one first, then its fallbacks.

- ``latest``: the folder named by ``latest`` (or a committed folder created after it: the job died before
  rewriting ``latest``), then older ones newest first, then any newer ones (left by an abandoned branch).
- ``best``: committed checkpoints ranked by the metric, best first.
- a checkpoint folder: that folder, then older ones in the same checkpoints root.
- an experiment directory or a checkpoints root: as ``latest`` there.

Folders without a valid manifest are included (except for ``best``) so that a load reports them and falls back.
"""

from __future__ import annotations

from pathlib import Path

from seo_dist.checkpoint.errors import NoCheckpointError
from seo_dist.checkpoint.index import newest_commit, read_latest, scan_checkpoints
from seo_dist.checkpoint.layout import MANIFEST, parse_step, resolve_checkpoints_root, step_dirs
from seo_dist.checkpoint.retention import rank_by_metric


def load_candidates(default_root: Path, which: str | Path, metric: str, maximize: bool) -> list[Path]:
    """Folders to try for ``which`` (``latest``, ``best`` or a path); raises :class:`NoCheckpointError` if none."""
    explicit: Path | None = None
    if str(which) in ("latest", "best"):
        root = default_root
    else:
        path = Path(which)
        if not path.exists():
            raise NoCheckpointError(
                f"{path} does not exist; give a checkpoint folder, a checkpoints folder or an experiment directory"
            )
        if path.is_dir() and ((path / MANIFEST).exists() or parse_step(path.name) is not None):
            root, explicit = path.parent, path
        else:
            root = resolve_checkpoints_root(path)
    scan = scan_checkpoints(root)
    if explicit is None and not scan.any:
        raise NoCheckpointError(f"no checkpoints under {root}")
    newest_first = list(reversed(step_dirs(root)))
    if str(which) == "best":
        ranked = rank_by_metric(scan.committed, metric, maximize)
        if not ranked:
            seen = sorted({k for i in scan.committed for k in i.metrics})
            raise NoCheckpointError(
                f"no checkpoint under {root} has metric {metric!r} (recorded: {', '.join(seen) or 'none'})"
            )
        return [root / i.name for i in ranked]
    if explicit is not None:
        pivot = parse_step(explicit.name)
        older = [d for d in newest_first if pivot is not None and _step(d) < pivot]
        return [explicit, *older]
    latest = read_latest(root)
    if latest is not None and scan.by_name(latest) is not None:
        latest = newest_commit(scan, latest)  # a folder committed after `latest` was last written wins
    first = [root / latest] if latest is not None and (root / latest).is_dir() else []
    pivot = parse_step(first[0].name) if first else None
    rest = [d for d in newest_first if d not in first]
    if pivot is not None:
        rest = [d for d in rest if _step(d) < pivot] + [d for d in rest if _step(d) > pivot]
    return first + rest


def _step(folder: Path) -> int:
    step = parse_step(folder.name)
    return -1 if step is None else step  # step_dirs() lists step folders only; -1 never happens
