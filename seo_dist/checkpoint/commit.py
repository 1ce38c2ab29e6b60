"""The commit protocol, independent of what writes the files (DeepSpeed today, torch FSDP next).

1. :func:`prepare_staging` (all ranks): rank 0 runs its pre-save checks, clears and creates
   ``step_XXXXXXXX.tmp``; the outcome is broadcast, so a failure there raises on every rank.
2. Every rank writes its files into the staging folder through :class:`~.hashing.HashingWriter`
   (hashed while written, fsynced) and ends with a :class:`RankOutcome`: its file records, or its error.
3. :func:`commit_checkpoint` (all ranks): outcomes are gathered to rank 0 (this is the barrier). Only if
   every rank succeeded does rank 0 fsync the staging folder, write ``manifest.json`` last, rename the
   folder to its final name and fsync the parent. Then ``after_commit`` (latest, index, retention) runs.
   The result is broadcast: every rank returns the path or raises the same
   :class:`~.errors.CheckpointSaveError`; no rank is left waiting on a rank that failed. If that broadcast
   itself fails (a rank died after handing in its files), rank 0 raises :class:`~.errors.PeersLostAfterCommit`:
   the folder is committed and verifies, only the other ranks could not be told.

Every collective takes ``group``: the async path runs steps 2-3 on a background thread with its own
gloo group, never the training group.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from seo_dist import dist
from seo_dist.checkpoint.errors import CheckpointError, CheckpointSaveError, PeersLostAfterCommit
from seo_dist.checkpoint.hashing import FileRecord
from seo_dist.checkpoint.layout import checkpoint_name, staging_name
from seo_dist.checkpoint.manifest import Manifest, records_to_files, write_manifest
from seo_dist.checkpoint.signing import SigningKey
from seo_dist.checkpoint.storage import publish_folder
from seo_dist.errors import error_line
from seo_dist.fileio import fsync_dir

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

T = TypeVar("T")


@dataclass
class RankOutcome:
    """What one rank contributes to a commit."""

    rank: int
    records: list[FileRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_wire(self) -> tuple[int, list[tuple[str, int, str]], list[str]]:
        return self.rank, [(r.path, r.size, r.hash) for r in self.records], list(self.errors)

    @classmethod
    def from_wire(cls, wire: tuple[int, list[tuple[str, int, str]], list[str]]) -> RankOutcome:
        rank, records, errors = wire
        return cls(rank, [FileRecord(*r) for r in records], list(errors))


@dataclass
class CommitResult:
    path: Path
    manifest: Manifest
    warnings: list[str] = field(default_factory=list)
    """Problems after the commit (latest/index/retention); the checkpoint itself is safe."""


def _portable(exc: Exception) -> Exception:
    """``exc`` itself if it survives pickling (to re-raise it on every rank), else a CheckpointError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return CheckpointError(error_line(exc))


def run_on_rank_zero(fn: Callable[[], T], group: ProcessGroup | None = None) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank; if it raised, every rank raises it.

    This is how rank-0-only work (manifest, renames, index, choosing what to load) stays collective-safe:
    the other ranks wait in the broadcast, which rank 0 always reaches.
    """
    payload: tuple[bool, Any]
    if dist.is_rank_zero():
        try:
            payload = (True, fn())
        except Exception as e:  # noqa: BLE001 - shipped to every rank, re-raised below
            payload = (False, _portable(e))
    else:
        payload = (True, None)
    ok, value = dist.broadcast_object(payload, src=0, group=group)
    if not ok:
        raise value  # type: ignore[misc]  # the exception rank 0 shipped
    return value  # type: ignore[return-value]


def prepare_staging(
    root: Path, step: int, *, group: ProcessGroup | None = None, before: Callable[[], None] | None = None
) -> Path:
    """All ranks. Returns the empty staging folder for ``step``; ``before`` runs first on rank 0."""
    staging = root / staging_name(step)

    def on_rank_zero() -> None:
        if before is not None:
            before()
        try:
            root.mkdir(parents=True, exist_ok=True)
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir()
            fsync_dir(root)
        except OSError as e:
            raise CheckpointSaveError(f"cannot create {staging}: {error_line(e)}") from e

    run_on_rank_zero(on_rank_zero, group)
    return staging


def commit_checkpoint(
    root: Path,
    step: int,
    local: RankOutcome,
    make_manifest: Callable[[dict[str, dict[str, Any]]], Manifest],
    *,
    group: ProcessGroup | None = None,
    after_commit: Callable[[Path, Manifest], list[str]] | None = None,
    signing_key: SigningKey | None = None,
) -> CommitResult:
    """All ranks. Commit the staging folder of ``step`` if every rank wrote its files; see the module doc.
    ``signing_key``: sign the manifest (rank 0 needs it; the files' hashes must already be collision resistant)."""
    staging = root / staging_name(step)
    final = root / checkpoint_name(step)
    outcomes = [RankOutcome.from_wire(w) for w in dist.all_gather_object(local.to_wire(), group=group)]
    published: list[Path] = []

    def on_rank_zero() -> tuple[Path, Manifest, list[str]]:
        failures = [f"rank {o.rank}: {err}" for o in outcomes for err in o.errors]
        if failures:
            shutil.rmtree(staging, ignore_errors=True)
            raise CheckpointSaveError(f"checkpoint {final.name} not committed: " + "; ".join(failures))
        try:
            manifest = make_manifest(records_to_files([r for o in outcomes for r in o.records]))
            fsync_dir(staging)
            if signing_key is None:
                write_manifest(staging, manifest)
            else:
                write_manifest(staging, manifest, signing_key)
            fsync_dir(staging)
            publish_folder(staging, final)
        except Exception as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise CheckpointSaveError(f"checkpoint {final.name} not committed: {error_line(e)}") from e
        published.append(final)
        warnings = []
        if after_commit is not None:
            try:
                warnings = after_commit(final, manifest)
            except Exception as e:  # noqa: BLE001 - the checkpoint is committed; report, don't fail the save
                warnings = [f"after commit: {error_line(e)}"]
        return final, manifest, warnings

    try:
        result = run_on_rank_zero(on_rank_zero, group)
    except Exception as e:
        if published:  # rank 0, after the rename: only the broadcast of the result failed
            raise PeersLostAfterCommit(
                published[0],
                f"checkpoint {final.name} committed (it verifies), but the other ranks could not be told, "
                f"a rank is probably gone: {error_line(e)}",
            ) from e
        raise
    return CommitResult(path=result[0], manifest=result[1], warnings=result[2])
