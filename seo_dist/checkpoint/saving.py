"""The save pipeline: prepare (collective), write or stage this rank's files, commit (collective).

A synchronous save runs all three on the training thread. A background save prepares and stages (copies every
tensor to host buffers) on the training thread, then hands the write and the commit to the
:class:`~.async_save.BackgroundWriter` thread, whose collectives use the manager's own gloo group. At most one
save is in flight: the next save, a load, ``poll`` and ``wait`` first collect it (:meth:`SavePipeline.collect`),
which turns its failure into an error raised on the training thread (:meth:`SavePipeline.raise_pending`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seo_dist import dist
from seo_dist.checkpoint.async_save import BackgroundWriter, CommitGroup, write_staged
from seo_dist.checkpoint.backend import CheckpointBackend
from seo_dist.checkpoint.commit import RankOutcome, commit_checkpoint, prepare_staging
from seo_dist.checkpoint.errors import CheckpointSaveError, PeersLostAfterCommit
from seo_dist.checkpoint.events import EventRelay
from seo_dist.checkpoint.hashing import FileRecord, HashingWriter, write_torch_file
from seo_dist.checkpoint.layout import checkpoint_name, rank_state_file
from seo_dist.checkpoint.manifest import ConfigStamp, Manifest, clean_metrics, collect_versions
from seo_dist.checkpoint.root_keeper import RootKeeper
from seo_dist.checkpoint.signing import SigningKey
from seo_dist.checkpoint.staging import HostStager
from seo_dist.errors import error_line
from seo_dist.fileio import fsync_dir

log = logging.getLogger(__name__)

SaveStats = dict[str, Any]
"""One save's timings and sizes, as :meth:`~.manager.CheckpointManager.poll` documents them."""


@dataclass(frozen=True, slots=True)
class SaveRequest:
    """What one save writes besides the model state."""

    step: int
    epoch: int = 0
    metrics: Mapping[str, Any] | None = None
    rank_state: object = None
    """This rank's trainer state (data loader position...), returned by the load."""


@dataclass(frozen=True, slots=True)
class _BackendFacts:
    """What the manifest records about the backend, read on the training thread before a save goes to the
    background (the writer thread never touches the engine)."""

    zero_stage: int
    engine_name: str


def _rank_file(request: SaveRequest) -> dict[str, Any]:
    """This rank's seo_dist state file: step, epoch, world, RNG states (captured now) and the trainer's state."""
    from seo_dist.checkpoint.rng import capture_rng_state

    return {
        "step": request.step,
        "epoch": request.epoch,
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "rng": capture_rng_state(),
        "rank_state": request.rank_state,
    }


def write_run_files(files: Mapping[str, bytes], folder: Path, algorithm: str) -> tuple[list[FileRecord], list[str]]:
    """Write the run's own files (``{relative path: bytes}``) into ``folder``, hashed and fsynced, for the
    manifest; errors are returned, not raised, as for the engine's files."""
    records: list[FileRecord] = []
    errors: list[str] = []
    parents: set[Path] = set()
    for relpath, data in files.items():
        path = folder / relpath
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            parents.add(path.parent)
            with HashingWriter(path, relpath, algorithm) as writer:
                writer.write(data)
            records.append(writer.close())
        except Exception as e:  # noqa: BLE001 - goes to the commit, which fails on every rank
            errors.append(f"{relpath}: {error_line(e)}")
    for parent in parents - {folder}:
        fsync_dir(parent)
    return records, errors


def _write_stats(outcome: RankOutcome, write_s: float) -> SaveStats:
    rank_bytes = sum(r.size for r in outcome.records)
    return {
        "write_s": write_s,
        "rank_bytes": rank_bytes,
        "write_gbps": rank_bytes / 1e9 / write_s if write_s > 0 else 0.0,
    }


class SavePipeline:
    """Saves into one checkpoints root; collects background saves and keeps their stats and errors.

    ``on_error="raise"`` keeps a background save's failure to raise on the training thread; ``"warn"`` logs it.
    ``run_files`` (``{relative path: bytes}``) are written by rank 0 into every checkpoint and listed in its
    manifest (the trainer passes what an export needs: the model config and the tokenizer).
    """

    def __init__(
        self,
        root: Path,
        *,
        hash_algorithm: str,
        stamp: ConfigStamp,
        keeper: RootKeeper,
        events: EventRelay,
        group: CommitGroup,
        writer: BackgroundWriter,
        on_error: str,
        pin_memory: bool | None = None,
        signing_key: SigningKey | None = None,
        run_files: Mapping[str, bytes] | None = None,
    ) -> None:
        self.root = root
        self.signing_key = signing_key
        self.run_files = dict(run_files or {})
        self.hash_algorithm = hash_algorithm
        self.stamp = stamp
        self.keeper = keeper
        self.events = events
        self.group = group
        self.on_error = on_error
        self.writer = writer
        self.stager = HostStager(pin_memory=pin_memory)
        self.last_save: SaveStats | None = None
        self._copying: SaveStats | None = None
        """The stats of the save whose background copy the training thread has not waited for yet."""
        self.finished: list[SaveStats] = []
        self.pending_error: CheckpointSaveError | PeersLostAfterCommit | None = None

    # ------------------------------------------------------------------ one save

    def prewarm(self, backend: CheckpointBackend) -> None:
        """Collective (the backend's staging is): a dry run of a background save's staging into a scratch folder
        that copies nothing and records the host buffers a save needs; a background thread then allocates them
        and touches their pages, so that the first save stalls no longer than the next ones."""
        if backend.copies_files_on_save:
            return
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="seo-dist-prewarm-") as scratch:
            folder = Path(scratch) / "prewarm"
            folder.mkdir()
            with self.stager.planning():
                _, errors = backend.stage(Path(scratch), folder, self.stager)
                self.stager.stage(rank_state_file(dist.get_rank()), _rank_file(SaveRequest(step=0)))
        if errors:  # the real save reports them; here they only mean fewer buffers ready
            log.warning("checkpoint staging dry run: %s", "; ".join(errors))
        log.debug(
            "checkpoint staging planned in %.3f s; buffers allocated in the background", time.perf_counter() - start
        )

    def save(
        self,
        backend: CheckpointBackend,
        request: SaveRequest,
        *,
        background: bool,
        entered: float,
        copy_in_background: bool = False,
    ) -> Path | None:
        """Save now or in the background (the caller has collected the previous save); ``entered`` is when the
        caller started waiting for it. A :class:`~.errors.CheckpointSaveError` is raised (``on_error="raise"``)
        or logged, returning None."""
        stats: SaveStats = {
            "step": request.step,
            "path": str(self.root / checkpoint_name(request.step)),
            "async": background,
            "wait_s": time.perf_counter() - entered,
            "error": None,
        }
        try:
            if background:
                path = self._save_in_background(backend, request, stats, entered, copy_in_background)
            else:
                path = self._save_now(backend, request, stats, entered)
        except CheckpointSaveError as e:
            stats.update(error=error_line(e), stall_s=time.perf_counter() - entered)
            self.finished.append(stats)
            if self.on_error == "raise":
                raise
            log.error("checkpoint %s failed, training goes on (checkpoint.on_error=warn): %s", request.step, e)
            return None
        if not background:
            stats["stall_s"] = time.perf_counter() - entered
        return path

    def _save_now(self, backend: CheckpointBackend, request: SaveRequest, stats: SaveStats, start: float) -> Path:
        staging = self._prepare(backend, request.step)
        write_start = time.perf_counter()
        outcome = self._write_files(backend, staging, request)
        write_s = time.perf_counter() - write_start
        stats.update(stage_s=0.0, **_write_stats(outcome, write_s))
        facts = _BackendFacts(backend.zero_stage, backend.engine_name)
        path = self._commit(facts, outcome, request, start=start, write_s=write_s)
        self._finish_stats(stats)
        self.finished.append(stats)
        return path

    def _save_in_background(
        self, backend: CheckpointBackend, request: SaveRequest, stats: SaveStats, start: float, copy_later: bool
    ) -> Path:
        """Stage on this thread (the backend's save, with every file copied to host buffers, or with the copies
        queued for a background thread when ``copy_later``), then hand the write and the commit to the writer
        thread."""
        self.group.ensure_own()
        staging = self._prepare(backend, request.step)
        self.stager.wait_prewarmed()  # normally long done: started before the first step
        allocated_before = self.stager.allocated_bytes
        stage_start = time.perf_counter()
        with self.stager.deferring(copy_later):
            files, errors = backend.stage(self.root, staging, self.stager)
            try:  # RNG state now, not when the write runs
                files.append(self.stager.stage(rank_state_file(dist.get_rank()), _rank_file(request)))
            except Exception as e:  # noqa: BLE001 - fails the commit on every rank
                errors.append(error_line(e))
        if copy_later:
            self.stager.start_copies()
            stats["copy_wait_s"] = 0.0  # added to by wait_for_staging
            self._copying = stats
        else:
            self.stager.synchronize()
        stats.update(
            stage_s=time.perf_counter() - stage_start,
            staged_bytes=sum(f.nbytes for f in files),
            staging_buffer_bytes=self.stager.pool_bytes,
            staging_pinned_bytes=self.stager.pinned_bytes,
            staging_allocated_bytes=self.stager.allocated_bytes - allocated_before,
        )
        facts = _BackendFacts(backend.zero_stage, backend.engine_name)
        stats["stall_s"] = time.perf_counter() - start  # what remains (the submit) takes microseconds

        def write_and_commit(st: SaveStats) -> None:
            """Writer thread: write the staged files (unless staging failed), then the collective commit."""
            write_start = time.perf_counter()
            if copy_later:
                try:  # an error here must still reach the commit below, or the other ranks wait there for this one
                    self.stager.wait_copied(device=True)
                    copy_error = self.stager.take_copy_error()
                except Exception as e:  # noqa: BLE001 - e.g. a failed CUDA event synchronisation
                    copy_error = e
                st["copy_s"] = self.stager.copy_s
                if copy_error is not None:
                    errors.append(f"copy to host buffers: {error_line(copy_error)}")
            records, write_errors = write_staged(files, staging, self.hash_algorithm) if not errors else ([], [])
            if not errors and dist.is_rank_zero():
                more, more_errors = write_run_files(self.run_files, staging, self.hash_algorithm)
                records, write_errors = records + more, write_errors + more_errors
            outcome = RankOutcome(dist.get_rank(), records, errors + write_errors)
            write_s = time.perf_counter() - write_start
            st.update(_write_stats(outcome, write_s))
            extra: dict[str, float] = {k: st[k] for k in ("stall_s", "stage_s", "wait_s") if k in st}
            self._commit(facts, outcome, request, start=start, write_s=write_s, extra=extra)
            self._finish_stats(st)

        self.writer.submit(write_and_commit, stats)
        return self.root / checkpoint_name(request.step)

    def wait_for_staging(self) -> float:
        """Block until the background copy of the last save (``copy_in_background``) is done; seconds waited,
        also added to that save's ``copy_wait_s``. Cheap when there is none: call it before every optimizer step."""
        stats = self._copying
        if stats is None:
            return 0.0
        waited = self.stager.wait_copied()
        self.stager.order_device_work()
        stats["copy_wait_s"] += waited
        if not self.stager.copying:
            self._copying = None
        return waited

    def _prepare(self, backend: CheckpointBackend, step: int) -> Path:
        """Collective: disk check (prune or fail), sweep once, create the staging folder; returns it."""
        estimate = backend.estimate_bytes()
        try:
            return prepare_staging(
                self.root, step, group=self.group.group, before=lambda: self.keeper.ensure_space(step, estimate)
            )
        except Exception as e:
            self.events.emit("checkpoint_save_failed", step=step, error=error_line(e))
            raise

    def _write_files(self, backend: CheckpointBackend, staging: Path, request: SaveRequest) -> RankOutcome:
        """Local: this rank's files (engine shards + its seo_dist state file); errors are returned, not raised."""
        outcome = RankOutcome(dist.get_rank())
        try:
            written, failed = backend.write(self.root, staging)
            outcome.records += written
            outcome.errors += failed
            name = rank_state_file(dist.get_rank())
            outcome.records.append(write_torch_file(_rank_file(request), staging, name, self.hash_algorithm))
            if dist.is_rank_zero():
                written, failed = write_run_files(self.run_files, staging, self.hash_algorithm)
                outcome.records += written
                outcome.errors += failed
        except Exception as e:  # noqa: BLE001 - goes to the commit, which fails on every rank
            outcome.errors.append(error_line(e))
        return outcome

    def _commit(
        self,
        facts: _BackendFacts,
        outcome: RankOutcome,
        request: SaveRequest,
        *,
        start: float,
        write_s: float,
        extra: Mapping[str, float] | None = None,
    ) -> Path:
        """Collective: gather, manifest, rename, latest, retention, index (see :func:`.commit.commit_checkpoint`).
        ``start``: when the save began; ``extra``: more stats for ``last_save`` (a background save's stall)."""
        step, world_size, clean = request.step, dist.get_world_size(), clean_metrics(request.metrics)

        def make_manifest(files: dict[str, dict[str, Any]]) -> Manifest:
            return Manifest(
                step=step,
                epoch=request.epoch,
                hash_algorithm=self.hash_algorithm,
                files=files,
                world_size=world_size,
                zero_stage=facts.zero_stage,
                engine=facts.engine_name,
                metrics=clean,
                config_hash=self.stamp.config_hash,
                config=self.stamp.config,
                versions=collect_versions(),
            )

        commit_start = time.perf_counter()
        try:
            result = commit_checkpoint(
                self.root,
                step,
                outcome,
                make_manifest,
                group=self.group.group,
                after_commit=self.keeper.after_commit,
                signing_key=self.signing_key,
            )
        except PeersLostAfterCommit as e:  # committed; the job must stop all the same
            self.events.emit("checkpoint_saved", step=step, path=str(e.path), peers_lost=True, error=str(e))
            raise
        except Exception as e:
            self.events.emit("checkpoint_save_failed", step=step, error=str(e))
            raise
        end = time.perf_counter()
        self.last_save = {
            "step": step,
            "path": str(result.path),
            "bytes": result.manifest.total_bytes,
            "files": len(result.manifest.files),
            "write_s": write_s,
            "commit_s": end - commit_start,
            "total_s": end - start,
            **dict(extra or {}),
        }
        self.events.emit("checkpoint_saved", **self.last_save)
        for warning in result.warnings:
            self.events.emit("checkpoint_warning", step=step, message=warning)
        return result.path

    def _finish_stats(self, stats: SaveStats) -> None:
        assert self.last_save is not None
        stats.update({k: self.last_save[k] for k in ("path", "bytes", "files", "commit_s", "total_s")})

    # ------------------------------------------------------------------ background results

    def collect(self, *, block: bool) -> None:
        """Pick up a finished background save (stats into :attr:`finished`, its error kept in
        :attr:`pending_error`) and deliver the events its thread deferred."""
        stats, error = self.writer.collect(block)
        if stats is not None:
            if error is not None:
                failure = (
                    error
                    if isinstance(error, (CheckpointSaveError, PeersLostAfterCommit))
                    else CheckpointSaveError(
                        f"checkpoint {checkpoint_name(stats['step'])} not committed: {error_line(error)}"
                    )
                )
                stats["error"] = error_line(failure)
                if self.on_error == "raise":
                    self.pending_error = failure
                else:
                    log.error(
                        "background checkpoint %s failed, training goes on (checkpoint.on_error=warn): %s",
                        stats["step"],
                        failure,
                    )
            self.finished.append(stats)
        self.events.deliver_deferred()

    def raise_pending(self) -> None:
        """Raise the kept failure of a background save, once."""
        error, self.pending_error = self.pending_error, None
        if error is not None:
            raise error

    def take_finished(self) -> list[SaveStats]:
        """The stats of the saves finished since the last call, oldest first."""
        done, self.finished = self.finished, []
        return done

    def close(self) -> None:
        """Stop the writer thread (after the save in flight) and free the staging buffers."""
        self.writer.shutdown()
        self.stager.release()
