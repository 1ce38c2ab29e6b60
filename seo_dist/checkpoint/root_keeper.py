"""Rank 0's upkeep of the checkpoints root around each commit: disk space before it, ``latest``, retention and
``index.json`` after it, the sweep of abandoned saves at start, and pins.

Only rank 0 calls these (from :func:`~.commit.prepare_staging` and :func:`~.commit.commit_checkpoint`, or
guarded by ``dist.is_rank_zero()``); what they decide reaches the other ranks through those collectives.
The writer thread commits while the training thread may pin: one lock orders their writes of ``latest``
and ``index.json``.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from seo_dist import dist
from seo_dist.checkpoint.errors import DiskSpaceError
from seo_dist.checkpoint.events import EventRelay
from seo_dist.checkpoint.index import (
    build_index,
    index_matches,
    newest_commit,
    read_index,
    read_latest,
    scan_checkpoints,
    write_index,
    write_latest,
)
from seo_dist.checkpoint.manifest import Manifest
from seo_dist.checkpoint.retention import plan_deletions, plan_space_pruning
from seo_dist.checkpoint.storage import disk_free_bytes, remove_folder, sweep_abandoned
from seo_dist.errors import error_line


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What the upkeep keeps and how it makes room."""

    keep_last: int
    """Newest checkpoints always kept (>= 2)."""
    keep_best: int
    """Best checkpoints kept per tracked metric (0: none beyond the single best)."""
    cleanup: bool
    """Delete what retention does not keep after each commit (False keeps everything)."""
    disk_headroom: float
    """Free space required before a save, as a multiple of the expected checkpoint size."""
    prune_for_space: bool
    """When space is short, delete the oldest unprotected checkpoints first (else fail the save)."""


class RootKeeper:
    """Keeps one checkpoints root consistent: ``latest`` names a committed checkpoint, ``index.json`` agrees
    with the manifests, and only what :class:`RetentionPolicy` allows is deleted.

    ``tracked`` (metric -> maximize) is shared with the caller; ``pinned`` steps are never deleted.
    """

    def __init__(
        self,
        root: Path,
        policy: RetentionPolicy,
        *,
        tracked: Mapping[str, bool],
        pinned: Collection[int],
        events: EventRelay,
    ) -> None:
        self.root = root
        self.policy = policy
        self.tracked = tracked
        self.events = events
        self._pinned = {int(s) for s in pinned}
        self._swept = False
        self._lock = threading.RLock()

    @property
    def pinned(self) -> set[int]:
        return set(self._pinned)

    def pin(self, step: int) -> None:
        """Never delete the checkpoint of ``step``; recorded in index.json, so a resumed run honours it too."""
        with self._lock:
            self._pinned.add(int(step))
            self.refresh_index()

    def sweep(self) -> list[Path]:
        """Delete staging folders left by crashed saves, then repair ``latest``/``index.json`` from the manifests.
        The caller makes sure no save is in flight."""
        with self._lock:
            self._swept = True
            removed = sweep_abandoned(self.root)
            if removed:
                self.events.emit("checkpoint_swept", paths=[str(p) for p in removed])
            self._reconcile()
        return removed

    def _reconcile(self) -> None:
        """Point ``latest`` at a committed checkpoint and make index.json agree with the manifests; pins recorded
        in the index (by an earlier run) are adopted."""
        if not self.root.is_dir():
            return
        scan = scan_checkpoints(self.root)
        index = read_index(self.root)
        if index is not None and isinstance(index.get("pinned"), list):
            self._pinned |= {int(s) for s in index["pinned"] if isinstance(s, int)}
        latest = read_latest(self.root)
        repaired = newest_commit(scan, latest)
        if repaired is not None and repaired != latest:
            write_latest(self.root, repaired)
            self.events.emit("checkpoint_latest_repaired", was=latest, now=repaired)
            latest = repaired
        if not index_matches(index, scan, latest) and scan.committed:
            write_index(self.root, build_index(scan, latest=latest, tracked=self.tracked, pinned=self._pinned))
            self.events.emit("checkpoint_index_rebuilt", checkpoints=len(scan.committed))

    def refresh_index(self) -> None:
        """Rewrite index.json from the manifests (rank 0; nothing to do before the first commit)."""
        with self._lock:
            if dist.is_rank_zero() and self.root.is_dir():
                scan = scan_checkpoints(self.root)
                if scan.committed:
                    latest = read_latest(self.root)
                    write_index(self.root, build_index(scan, latest=latest, tracked=self.tracked, pinned=self._pinned))

    def ensure_space(self, step: int, estimate: int) -> None:
        """Before the staging folder of ``step`` is created: sweep once, then make sure the checkpoint fits
        (expected size: the last committed one, else ``estimate``), pruning the oldest unprotected checkpoints
        if the policy allows; raises :class:`~.errors.DiskSpaceError` otherwise."""
        if not self._swept:
            self.sweep()
        scan = scan_checkpoints(self.root)
        expected = scan.committed[-1].total_bytes if scan.committed else estimate
        needed = int(expected * self.policy.disk_headroom)
        free = disk_free_bytes(self.root)
        if free >= needed:
            return
        plan = plan_space_pruning(
            scan.committed,
            needed,
            free,
            tracked=self.tracked,
            keep_best=self.policy.keep_best,
            pinned=self._pinned,
            latest=read_latest(self.root),
        )
        if plan is None or not self.policy.prune_for_space:
            self.events.emit("checkpoint_disk_full", step=step, needed_bytes=needed, free_bytes=free)
            raise DiskSpaceError(
                f"not enough disk for checkpoint {step} under {self.root}: about {needed / 1e9:.2f} GB needed, "
                f"{free / 1e9:.2f} GB free"
                + ("" if plan is None else " (pruning for space is off)")
                + "; free space or lower checkpoint.keep_last"
            )
        for info in plan:
            remove_folder(self.root / info.name)
        self.events.emit(
            "checkpoint_pruned",
            reason="disk_space",
            steps=[i.step for i in plan],
            freed_bytes=sum(i.total_bytes for i in plan),
        )
        self.refresh_index()

    def after_commit(self, final: Path, manifest: Manifest) -> list[str]:
        """Once ``final`` is committed: move ``latest`` to it, apply retention, rewrite the index. Returns the
        problems met (the checkpoint itself is safe; they become ``checkpoint_warning`` events)."""
        with self._lock:
            problems = []
            write_latest(self.root, final.name)
            scan = scan_checkpoints(self.root)
            if self.policy.cleanup:
                doomed = plan_deletions(
                    scan.committed,
                    keep_last=self.policy.keep_last,
                    keep_best=self.policy.keep_best,
                    tracked=self.tracked,
                    pinned=self._pinned,
                    latest=final.name,
                )
                deleted = []
                for info in doomed:
                    try:
                        remove_folder(self.root / info.name)
                        deleted.append(info.step)
                    except OSError as e:
                        problems.append(f"retention could not delete {info.name}: {error_line(e)}")
                if deleted:
                    self.events.emit("checkpoint_pruned", reason="retention", steps=deleted)
                    scan = scan_checkpoints(self.root)
                try:
                    from seo_dist.checkpoint.reshard import prune_orphans

                    prune_orphans(self.root)  # universal forms of the checkpoints just deleted
                except OSError as e:
                    problems.append(f"retention could not delete a universal folder: {error_line(e)}")
            write_index(self.root, build_index(scan, latest=final.name, tracked=self.tracked, pinned=self._pinned))
            return problems
