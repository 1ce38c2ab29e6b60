"""The checkpoints root: scanning manifests, the ``latest`` pointer and ``index.json``.

Manifests are the source of truth. ``latest`` and ``index.json`` are conveniences (DeepSpeed and
humans read them), always replaced atomically, and rebuilt from the manifests when they are garbage
or disagree with what is on disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seo_dist.checkpoint.errors import ManifestError
from seo_dist.checkpoint.layout import INDEX, LATEST, parse_step, step_dirs
from seo_dist.checkpoint.manifest import read_manifest
from seo_dist.checkpoint.retention import CheckpointInfo, best_checkpoint, metric_value
from seo_dist.fileio import atomic_write, atomic_write_json

INDEX_FORMAT = "seo_dist.checkpoint.index/1"


@dataclass
class Scan:
    """What is under a checkpoints root, from the manifests."""

    committed: list[CheckpointInfo] = field(default_factory=list)
    """Folders with a readable manifest, oldest step first (not yet hash-verified)."""
    broken: list[tuple[Path, str]] = field(default_factory=list)
    """Checkpoint-named folders without a usable manifest, with the reason."""

    def by_name(self, name: str) -> CheckpointInfo | None:
        return next((i for i in self.committed if i.name == name), None)

    @property
    def any(self) -> bool:
        return bool(self.committed or self.broken)


def scan_checkpoints(root: Path) -> Scan:
    scan = Scan()
    for folder in step_dirs(root):
        try:
            m = read_manifest(folder)
        except ManifestError as e:
            scan.broken.append((folder, str(e)))
            continue
        if m.step != parse_step(folder.name):
            scan.broken.append((folder, f"{folder.name}: manifest says step {m.step}"))
            continue
        scan.committed.append(
            CheckpointInfo(
                name=folder.name,
                step=m.step,
                epoch=m.epoch,
                metrics=m.metrics,
                total_bytes=m.total_bytes,
                created=m.created,
            )
        )
    return scan


def newest_commit(scan: Scan, latest: str | None) -> str | None:
    """The checkpoint that really is the latest: ``latest``, unless a committed folder was created after it.

    A job killed between publishing a folder and rewriting ``latest`` leaves such a folder; a folder from an
    abandoned branch of the run (a resume from an older step) has a higher step but was created earlier, so
    creation time, not step, decides. With no usable ``latest``, the newest committed checkpoint.
    """
    info = scan.by_name(latest) if latest is not None else None
    if info is None:
        return scan.committed[-1].name if scan.committed else None
    later = [i for i in scan.committed if i.created > info.created]
    return max(later, key=lambda i: i.created).name if later else info.name


def read_latest(root: Path) -> str | None:
    """The name in ``latest`` if it names a checkpoint folder, else None."""
    try:
        name = (root / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if parse_step(name) is not None else None


def write_latest(root: Path, name: str) -> None:
    atomic_write(root / LATEST, name)


def build_index(
    scan: Scan, *, latest: str | None, tracked: Mapping[str, bool], pinned: Collection[int]
) -> dict[str, Any]:
    best = {}
    for metric, maximize in tracked.items():
        info = best_checkpoint(scan.committed, metric, maximize)
        if info is not None:
            best[metric] = {
                "name": info.name,
                "step": info.step,
                "value": metric_value(info, metric),
                "maximize": maximize,
            }
    return {
        "format": INDEX_FORMAT,
        "updated": time.time(),
        "latest": latest,
        "tracked": {m: {"maximize": mx} for m, mx in tracked.items()},
        "best": best,
        "pinned": sorted(set(pinned)),
        "checkpoints": [i.to_dict() for i in scan.committed],
    }


def write_index(root: Path, index: dict[str, Any]) -> None:
    atomic_write_json(root / INDEX, index)


def read_index(root: Path) -> dict[str, Any] | None:
    """``index.json`` if it exists and has the expected shape, else None."""
    try:
        data = json.loads((root / INDEX).read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("format") != INDEX_FORMAT
        or not isinstance(data.get("checkpoints"), list)
    ):
        return None
    return data


def index_matches(index: dict[str, Any] | None, scan: Scan, latest: str | None) -> bool:
    """True when the index lists exactly the committed folders and the same latest."""
    if index is None:
        return False
    try:
        names = sorted(c["name"] for c in index["checkpoints"])
    except (TypeError, KeyError):
        return False
    return names == sorted(i.name for i in scan.committed) and index.get("latest") == latest
