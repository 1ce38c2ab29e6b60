"""Which committed checkpoints to keep: pure functions over their step and metrics, easy to test exhaustively.

Kept = union of the newest ``keep_last``, the best ``keep_best`` by each tracked metric, the pinned
steps, and always the current ``latest`` and the best one. The caller deletes the rest only after a new
checkpoint has been committed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What retention, load selection and ``seo-dist ls`` need to know about one committed checkpoint."""

    name: str
    step: int
    epoch: int = 0
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    total_bytes: int = 0
    created: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "step": self.step,
            "epoch": self.epoch,
            "metrics": dict(self.metrics),
            "total_bytes": self.total_bytes,
            "created": self.created,
        }


def metric_value(info: CheckpointInfo, metric: str) -> float | None:
    value = info.metrics.get(metric)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def rank_by_metric(infos: Sequence[CheckpointInfo], metric: str, maximize: bool) -> list[CheckpointInfo]:
    """Checkpoints that have ``metric``, best first; on a tie the newer step wins."""
    scored = [(v, i) for i in infos if (v := metric_value(i, metric)) is not None]
    scored.sort(key=lambda vi: ((-vi[0] if maximize else vi[0]), -vi[1].step))
    return [i for _, i in scored]


def best_checkpoint(infos: Sequence[CheckpointInfo], metric: str, maximize: bool) -> CheckpointInfo | None:
    ranked = rank_by_metric(infos, metric, maximize)
    return ranked[0] if ranked else None


def protected(
    infos: Sequence[CheckpointInfo],
    *,
    tracked: Mapping[str, bool],
    keep_best: int,
    pinned: Collection[int],
    latest: str | None,
) -> set[str]:
    """Never deleted, not even to make room on disk: latest, the best per tracked metric, pinned steps."""
    keep = {i.name for i in infos if i.step in set(pinned)}
    if latest is not None:
        keep.add(latest)
    if keep_best > 0:
        for metric, maximize in tracked.items():
            best = best_checkpoint(infos, metric, maximize)
            if best is not None:
                keep.add(best.name)
    return keep


def retained(
    infos: Sequence[CheckpointInfo],
    *,
    keep_last: int,
    keep_best: int,
    tracked: Mapping[str, bool],
    pinned: Collection[int],
    latest: str | None,
) -> set[str]:
    """Names of the checkpoints retention keeps."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    by_step = sorted(infos, key=lambda i: i.step, reverse=True)
    keep = {i.name for i in by_step[:keep_last]}
    for metric, maximize in tracked.items():
        keep.update(i.name for i in rank_by_metric(infos, metric, maximize)[:keep_best])
    return keep | protected(infos, tracked=tracked, keep_best=keep_best, pinned=pinned, latest=latest)


def plan_deletions(
    infos: Sequence[CheckpointInfo],
    *,
    keep_last: int,
    keep_best: int,
    tracked: Mapping[str, bool],
    pinned: Collection[int],
    latest: str | None,
) -> list[CheckpointInfo]:
    """Checkpoints to delete, oldest first."""
    keep = retained(infos, keep_last=keep_last, keep_best=keep_best, tracked=tracked, pinned=pinned, latest=latest)
    return sorted((i for i in infos if i.name not in keep), key=lambda i: i.step)


def plan_space_pruning(
    infos: Sequence[CheckpointInfo],
    needed_bytes: int,
    free_bytes: int,
    *,
    tracked: Mapping[str, bool],
    keep_best: int,
    pinned: Collection[int],
    latest: str | None,
) -> list[CheckpointInfo] | None:
    """Oldest unprotected checkpoints whose deletion frees enough room, or None if even deleting all
    of them would not be enough (then nothing should be deleted)."""
    if free_bytes >= needed_bytes:
        return []
    keep = protected(infos, tracked=tracked, keep_best=keep_best, pinned=pinned, latest=latest)
    plan: list[CheckpointInfo] = []
    for info in sorted(infos, key=lambda i: i.step):
        if free_bytes >= needed_bytes:
            break
        if info.name in keep:
            continue
        plan.append(info)
        free_bytes += info.total_bytes
    return plan if free_bytes >= needed_bytes else None
