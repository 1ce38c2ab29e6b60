"""``CheckpointManager``: the brief's API over the commit protocol, verification, retention and load fallback.

Every public method that saves or loads is collective: all ranks call it with the same arguments.
Rank 0 alone writes the manifest, ``latest`` and ``index.json``, deletes folders and emits events;
whatever it decides is broadcast, and its errors are re-raised on every rank.

With ``async_save`` a save blocks training only while each rank copies its state to host buffers;
writing, hashing, fsync and the commit run on a background thread (:mod:`.async_save`) whose
collectives use the manager's own gloo group. :meth:`CheckpointManager.poll` (every step) and
:meth:`CheckpointManager.wait` hand back the finished saves' stats and raise their errors.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seo_dist import dist
from seo_dist.checkpoint.async_save import BackgroundWriter, write_staged
from seo_dist.checkpoint.commit import RankOutcome, commit_checkpoint, describe_error, prepare_staging, run_on_rank_zero
from seo_dist.checkpoint.errors import (
    CheckpointSaveError,
    DiskSpaceError,
    ManifestError,
    NoValidCheckpointError,
    PeersLostAfterCommit,
)
from seo_dist.checkpoint.hashing import ALGORITHMS, DEFAULT_ALGORITHM, FileRecord, write_torch_file
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
from seo_dist.checkpoint.layout import MANIFEST, TORCH_STATE_FILE, checkpoint_name, rank_state_file
from seo_dist.checkpoint.manifest import Manifest, clean_metrics, collect_versions, read_manifest
from seo_dist.checkpoint.retention import CheckpointInfo, best_checkpoint, plan_deletions, plan_space_pruning
from seo_dist.checkpoint.selection import load_candidates
from seo_dist.checkpoint.staging import HostStager, StagedFile
from seo_dist.checkpoint.storage import disk_free_bytes, remove_folder, sweep_abandoned
from seo_dist.checkpoint.strategy import CheckpointStrategy
from seo_dist.checkpoint.verify import VERIFY_MODES, extra_files, verify_files

log = logging.getLogger(__name__)

EventFn = Callable[..., Any]
"""``event_fn(name, **fields)``; the trainer passes ``tracker.log_event``."""

ON_ERROR_MODES = ("raise", "warn")


@dataclass(frozen=True, slots=True)
class _SaveTarget:
    """What the commit needs to know about the backend, read on the training thread before the save goes
    to the background (the writer thread never touches the engine)."""

    zero_stage: int
    engine_name: str


def _is_deepspeed_engine(obj: Any) -> bool:
    return any(c.__name__ == "DeepSpeedEngine" and c.__module__.startswith("deepspeed") for c in type(obj).__mro__)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (added and removed keys included)."""
    a, b = _flatten(dict(old or {})), _flatten(dict(new or {}))
    return sorted(k for k in set(a) | set(b) if a.get(k, ...) != b.get(k, ...))


def _write_stats(outcome: RankOutcome, write_s: float) -> dict[str, Any]:
    rank_bytes = sum(r.size for r in outcome.records)
    return {
        "write_s": write_s,
        "rank_bytes": rank_bytes,
        "write_gbps": rank_bytes / 1e9 / write_s if write_s > 0 else 0.0,
    }


class CheckpointManager:
    """Save, verify, retain and load checkpoints under ``checkpoint_dir`` (``<experiment>/checkpoints``).

    One class holds every policy (interval, retention of newest/best/pinned, best-model tracking for
    several metrics, free-disk check, load fallback): each exists to protect a run, so there is no
    reduced "basic" mode. :class:`AdvancedCheckpointManager` is the same class under the brief's other name.

    Args:
        checkpoint_dir: the checkpoints root.
        strategy: when to save and what to keep.
        hash_algorithm: ``xxh3_128`` (default, fastest), ``blake3`` or ``sha256``.
        verify_on_load: ``full`` (re-hash), ``quick`` (sizes) or ``off``.
        event_fn: called on rank 0 as ``event_fn(name, **fields)`` for saves, prunes, fallbacks...
        config_hash, config: the job's config hash and resolved config dict, stored in each manifest;
            a resume with a different hash gets a ``checkpoint_config_changed`` event naming the keys.
        tracked_metrics: more metrics to track the best of (``{name: maximize}``), besides ``strategy.best_metric``.
        disk_headroom: free space required before a save, as a multiple of the expected checkpoint size.
        prune_for_space: when space is short, delete the oldest unprotected checkpoints first (else fail).
        group: process group for the manager's collectives. Background commits never use the training
            group: with no group given, the manager creates its own gloo group (a collective, so every rank
            constructs the manager) when ``async_save`` is on, or at the first background save if
            ``torch.distributed`` was not initialised yet.
        async_save: stage to host buffers and write/commit in the background (see :meth:`save_checkpoint`).
            Off by default here, so that the brief's ``save_checkpoint`` returns a committed checkpoint;
            :meth:`from_config` follows ``checkpoint.async_save`` (on by default).
        on_error: a failed save (``CheckpointSaveError``) is raised on the training thread (``raise``), or
            logged (event ``checkpoint_save_failed``, error level) while training goes on (``warn``).
        pin_memory: pinned staging buffers for CUDA tensors (default: when CUDA is available).
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        strategy: CheckpointStrategy | None = None,
        *,
        hash_algorithm: str = DEFAULT_ALGORITHM,
        verify_on_load: str = "full",
        event_fn: EventFn | None = None,
        config_hash: str | None = None,
        config: Mapping[str, Any] | None = None,
        tracked_metrics: Mapping[str, bool] | None = None,
        disk_headroom: float = 1.1,
        prune_for_space: bool = True,
        group: Any = None,
        async_save: bool = False,
        on_error: str = "raise",
        pin_memory: bool | None = None,
    ) -> None:
        if hash_algorithm not in ALGORITHMS:
            raise ValueError(f"hash_algorithm must be one of {', '.join(ALGORITHMS)}, got {hash_algorithm!r}")
        if verify_on_load not in VERIFY_MODES:
            raise ValueError(f"verify_on_load must be one of {', '.join(VERIFY_MODES)}, got {verify_on_load!r}")
        if disk_headroom < 1.0:
            raise ValueError(f"disk_headroom must be >= 1.0, got {disk_headroom}")
        if on_error not in ON_ERROR_MODES:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_MODES)}, got {on_error!r}")
        self.root = Path(checkpoint_dir)
        self.strategy = strategy if strategy is not None else CheckpointStrategy()
        self.hash_algorithm = hash_algorithm
        self.verify_on_load = verify_on_load
        self.event_fn = event_fn
        self.config_hash = config_hash
        self.config = dict(config) if config is not None else None
        self.tracked: dict[str, bool] = {
            self.strategy.best_metric: self.strategy.maximize,
            **dict(tracked_metrics or {}),
        }
        self.disk_headroom = disk_headroom
        self.prune_for_space = prune_for_space
        self.async_save = async_save
        self.on_error = on_error
        self.group = group
        self._owns_group = False
        if async_save:
            self._ensure_background_group()
        self._pinned = set(self.strategy.pinned)
        self._swept = False
        self._lock = threading.RLock()  # latest/index/retention: the writer thread commits, the training thread pins
        self.last_save: dict[str, Any] | None = None
        """Timings and sizes of the last committed save (``step``, ``path``, ``bytes``, ``files``, ``write_s``,
        ``commit_s``, ``total_s``, plus the stall/staging times of an asynchronous save)."""
        self._writer = BackgroundWriter()
        self._stager = HostStager(pin_memory=pin_memory)
        self._finished: list[dict[str, Any]] = []
        self._pending_error: CheckpointSaveError | PeersLostAfterCommit | None = None
        self._deferred_events: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self._closed = False
        if async_save:
            atexit.register(self._close_at_exit)

    @classmethod
    def from_config(cls, checkpoint_dir: str | Path, cfg: Any, **kwargs: Any) -> CheckpointManager:
        """From :class:`seo_dist.config.CheckpointConfig`; ``kwargs`` as in the constructor (event_fn, config...).
        Collective when ``cfg.async_save`` (it creates the manager's gloo group)."""
        kwargs.setdefault("hash_algorithm", cfg.hash_algorithm)
        kwargs.setdefault("verify_on_load", cfg.verify_on_load)
        kwargs.setdefault("async_save", cfg.async_save)
        kwargs.setdefault("on_error", cfg.on_error)
        return cls(checkpoint_dir, CheckpointStrategy.from_config(cfg), **kwargs)

    # ------------------------------------------------------------------ queries (local, no collectives)

    def should_save(self, step: int, *, final: bool = False) -> bool:
        return self.strategy.should_save(step, final=final)

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Committed checkpoints (readable manifest), oldest first; not hash-verified."""
        return scan_checkpoints(self.root).committed

    def has_checkpoints(self) -> bool:
        """True if any checkpoint folder exists, committed or damaged (then a resume must not start from scratch)."""
        return scan_checkpoints(self.root).any

    def latest_checkpoint(self) -> Path | None:
        name = read_latest(self.root)
        if name is not None and (self.root / name / MANIFEST).is_file():
            return self.root / name
        committed = self.list_checkpoints()
        return self.root / committed[-1].name if committed else None

    def best_checkpoint(self, metric: str | None = None, maximize: bool | None = None) -> CheckpointInfo | None:
        metric, maximize = self._metric(metric, maximize)
        return best_checkpoint(self.list_checkpoints(), metric, maximize)

    @property
    def pinned(self) -> set[int]:
        return set(self._pinned)

    def pin(self, step: int) -> None:
        """Never delete the checkpoint of ``step``. Kept in index.json, so a resumed run honours it too."""
        with self._lock:
            self._pinned.add(int(step))
            self._refresh_index()

    def unpin(self, step: int) -> None:
        with self._lock:
            self._pinned.discard(int(step))
            self._refresh_index()

    # ------------------------------------------------------------------ housekeeping

    def sweep_abandoned(self) -> list[Path]:
        """Rank 0: delete staging folders left by crashed saves, repair ``latest``/``index.json`` from the
        manifests. Call at start, before the first save (the first save does it anyway). Other ranks: no-op."""
        if not dist.is_rank_zero():
            return []
        self._collect(block=True)  # never sweep the staging folder of a save in flight (local: no collective)
        with self._lock:
            self._swept = True
            removed = sweep_abandoned(self.root)
            if removed:
                self._event("checkpoint_swept", paths=[str(p) for p in removed])
            self._reconcile()
        return removed

    def _reconcile(self) -> None:
        """Rank 0: point ``latest`` at a committed checkpoint and make index.json agree with the manifests."""
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
            self._event("checkpoint_latest_repaired", was=latest, now=repaired)
            latest = repaired
        if not index_matches(index, scan, latest) and scan.committed:
            write_index(self.root, build_index(scan, latest=latest, tracked=self.tracked, pinned=self._pinned))
            self._event("checkpoint_index_rebuilt", checkpoints=len(scan.committed))

    def _refresh_index(self) -> None:
        with self._lock:
            self._write_fresh_index()

    def _write_fresh_index(self) -> None:
        if dist.is_rank_zero() and self.root.is_dir():
            scan = scan_checkpoints(self.root)
            if scan.committed:
                write_index(
                    self.root,
                    build_index(scan, latest=read_latest(self.root), tracked=self.tracked, pinned=self._pinned),
                )

    # ------------------------------------------------------------------ save

    def save_checkpoint(
        self,
        model_or_engine: Any,
        optimizer: Any = None,
        scheduler: Any = None,
        step: int = 0,
        metrics: Mapping[str, Any] | None = None,
        *,
        epoch: int = 0,
        rank_state: Any = None,
        blocking: bool | None = None,
    ) -> Path | None:
        """Save a checkpoint of ``step`` (collective). Returns its folder (``None`` if it failed with ``on_error="warn"``).

        ``model_or_engine``: a DeepSpeed engine (its optimizer and LR scheduler are saved by DeepSpeed;
        ``optimizer``/``scheduler`` are ignored) or a plain ``nn.Module`` saved with ``optimizer`` and
        ``scheduler``. ``rank_state``: this rank's trainer state (data loader position...), returned by
        :meth:`load_checkpoint`; RNG states are saved alongside automatically.

        ``blocking``: ``None`` saves in the background iff ``async_save``; ``True`` forces a synchronous save
        (the final save of a run); ``False`` forces a background save. A synchronous save returns the
        committed folder. A background save returns once this rank's state is copied to host buffers; the
        folder is committed later, and :meth:`poll` / :meth:`wait` report it. Either way a previous save still
        in flight is finished first (at most one in flight), and its failure is raised here.

        A failed save raises :class:`~.errors.CheckpointSaveError` on every rank (``on_error="raise"``);
        nothing is then committed and ``latest`` is unchanged.
        """
        backend = self._backend(model_or_engine, optimizer, scheduler)
        if backend is None:
            raise ValueError("save_checkpoint needs the model or DeepSpeed engine to save")
        entered = time.perf_counter()
        self._collect(block=True)
        self._raise_pending()
        in_background = self.async_save if blocking is None else not blocking
        stats: dict[str, Any] = {
            "step": step,
            "path": str(self.root / checkpoint_name(step)),
            "async": in_background,
            "wait_s": time.perf_counter() - entered,
            "error": None,
        }
        try:
            if in_background:
                path = self._save_in_background(backend, step, epoch, metrics, rank_state, stats, entered)
            else:
                path = self._save_now(backend, step, epoch, metrics, rank_state, stats, entered)
        except CheckpointSaveError as e:
            stats.update(error=describe_error(e), stall_s=time.perf_counter() - entered)
            self._finished.append(stats)
            if self.on_error == "raise":
                raise
            log.error("checkpoint %s failed, training goes on (checkpoint.on_error=warn): %s", step, e)
            return None
        if not in_background:
            stats["stall_s"] = time.perf_counter() - entered
        return path

    def _save_now(
        self, backend: Any, step: int, epoch: int, metrics: Any, rank_state: Any, stats: dict[str, Any], start: float
    ) -> Path:
        """The synchronous save: the three phases below on this thread."""
        staging = self._prepare_save(backend, step)
        write_start = time.perf_counter()
        outcome = self._write_files(backend, staging, step, epoch, rank_state)
        write_s = time.perf_counter() - write_start
        stats.update(stage_s=0.0, **_write_stats(outcome, write_s))
        path = self._commit_save(backend, outcome, step, epoch, metrics, start=start, write_s=write_s)
        self._finish_stats(stats)
        self._finished.append(stats)
        return path

    def _ensure_background_group(self) -> None:
        """The gloo group for the commits that run on the writer thread, never the training group. Created once,
        on the training thread, by every rank (a collective): at construction, or at the first background save
        when the process group did not exist yet (world size 1 before the engine was built)."""
        if self.group is None and not self._owns_group and dist.is_initialized():
            self.group = dist.new_gloo_group()
            self._owns_group = True

    def _save_in_background(
        self, backend: Any, step: int, epoch: int, metrics: Any, rank_state: Any, stats: dict[str, Any], start: float
    ) -> Path:
        """Stage on this thread (DeepSpeed's save, with every file copied to host buffers), then hand the
        write and the commit to the writer thread."""
        self._ensure_background_group()
        staging = self._prepare_save(backend, step)
        stage_start = time.perf_counter()
        files, errors = backend.stage(self.root, staging, self._stager)
        try:
            rank_file = self._rank_file(step, epoch, rank_state)  # RNG state now, not when the write runs
            files.append(self._stager.stage(rank_state_file(dist.get_rank()), rank_file))
        except Exception as e:  # noqa: BLE001 - fails the commit on every rank
            errors.append(describe_error(e))
        self._stager.synchronize()
        stats.update(
            stage_s=time.perf_counter() - stage_start,
            staged_bytes=sum(f.nbytes for f in files),
            staging_buffer_bytes=self._stager.pool_bytes,
            staging_pinned_bytes=self._stager.pinned_bytes,
        )
        target = _SaveTarget(backend.zero_stage, backend.engine_name)
        stats["stall_s"] = time.perf_counter() - start  # what remains (the submit) takes microseconds
        self._writer.submit(
            lambda st: self._write_and_commit(target, files, errors, staging, step, epoch, metrics, st, start), stats
        )
        return self.root / checkpoint_name(step)

    def _write_and_commit(
        self,
        target: _SaveTarget,
        files: list[StagedFile],
        errors: list[str],
        staging: Path,
        step: int,
        epoch: int,
        metrics: Any,
        stats: dict[str, Any],
        start: float,
    ) -> None:
        """Writer thread: write the staged files (unless staging failed), then the collective commit on ``self.group``."""
        write_start = time.perf_counter()
        records, write_errors = write_staged(files, staging, self.hash_algorithm) if not errors else ([], [])
        outcome = RankOutcome(dist.get_rank(), records, errors + write_errors)
        write_s = time.perf_counter() - write_start
        stats.update(_write_stats(outcome, write_s))
        self._commit_save(
            target,
            outcome,
            step,
            epoch,
            metrics,
            start=start,
            write_s=write_s,
            extra={k: stats[k] for k in ("stall_s", "stage_s", "wait_s") if k in stats},
        )
        self._finish_stats(stats)

    def _finish_stats(self, stats: dict[str, Any]) -> None:
        assert self.last_save is not None
        stats.update(
            path=self.last_save["path"],
            bytes=self.last_save["bytes"],
            files=self.last_save["files"],
            commit_s=self.last_save["commit_s"],
            total_s=self.last_save["total_s"],
        )

    # ------------------------------------------------------------------ background saves: results and errors

    @property
    def in_flight(self) -> bool:
        """True while a background save of this rank is writing or committing."""
        return self._writer.in_flight and not self._writer.finished

    @property
    def failed(self) -> bool:
        """True when a background save failed and its error waits to be raised (``on_error="raise"``). Local and
        non-raising: a trainer folds it into a per-step all-reduce, then calls :meth:`wait` on every rank so
        that all of them raise at the same step (see :meth:`poll`)."""
        return self._pending_error is not None

    def poll(self, *, raise_errors: bool = True) -> list[dict[str, Any]]:
        """Cheap, local and non-blocking (call it every step, on every rank): the stats of the saves that
        finished since the last call, oldest first, and their events delivered to ``event_fn``.

        Each dict: ``step``, ``path``, ``async``, ``stall_s`` (training blocked in ``save_checkpoint``,
        including ``wait_s`` for the previous save), ``stage_s`` (copy to host buffers), ``write_s`` (this
        rank's write + hash + fsync), ``rank_bytes``, ``write_gbps`` (this rank's rate), ``bytes`` (the whole
        checkpoint, all ranks), ``commit_s``, ``total_s``, and ``error`` (None, or why it failed).

        Raises the :class:`~.errors.CheckpointSaveError` of a failed background save (``on_error="raise"``).
        Every rank gets the same outcome, but ranks may see it one step apart: a rank that raises while another
        enters the next step's collectives leaves that one waiting. To stop together, call
        ``poll(raise_errors=False)`` (the error stays pending, :attr:`failed` turns true), agree on
        :attr:`failed` in an all-reduce, and call :meth:`wait` on every rank when any rank failed.
        """
        self._collect(block=False)
        if raise_errors:
            self._raise_pending()
        done, self._finished = self._finished, []
        return done

    def wait(self) -> list[dict[str, Any]]:
        """Block until no save is in flight; then as :meth:`poll`."""
        self._collect(block=True)
        self._raise_pending()
        done, self._finished = self._finished, []
        return done

    def close(self) -> list[dict[str, Any]]:
        """:meth:`wait`, then stop the writer thread and free the staging buffers and the gloo group.
        Idempotent. Call it before ``torch.distributed`` is torn down."""
        if self._closed:
            return []
        try:
            return self.wait()
        finally:
            self._closed = True
            self._writer.shutdown()
            self._stager.release()
            if self._owns_group and self.group is not None and dist.is_initialized():
                import torch.distributed as tdist

                tdist.destroy_process_group(self.group)
                self.group = None
            atexit.unregister(self._close_at_exit)

    def _close_at_exit(self) -> None:
        """The interpreter already joined the writer thread; report what it left (nothing is raised at exit)."""
        try:
            self.close()
        except Exception as e:  # noqa: BLE001 - at exit there is nobody to raise to
            log.error("checkpoint save failed before exit: %s", describe_error(e))

    def _collect(self, block: bool) -> None:
        """Pick up a finished background save (stats into ``_finished``, its error kept for
        :meth:`_raise_pending`) and deliver the events its thread deferred."""
        stats, error = self._writer.collect(block)
        if stats is not None:
            if error is not None:
                failure = (
                    error
                    if isinstance(error, (CheckpointSaveError, PeersLostAfterCommit))
                    else CheckpointSaveError(
                        f"checkpoint {checkpoint_name(stats['step'])} not committed: {describe_error(error)}"
                    )
                )
                stats["error"] = describe_error(failure)
                if self.on_error == "raise":
                    self._pending_error = failure
                else:
                    log.error(
                        "background checkpoint %s failed, training goes on (checkpoint.on_error=warn): %s",
                        stats["step"],
                        failure,
                    )
            self._finished.append(stats)
        self._deliver_events()

    def _raise_pending(self) -> None:
        error, self._pending_error = self._pending_error, None
        if error is not None:
            raise error

    def _deliver_events(self) -> None:
        while True:
            try:
                name, fields = self._deferred_events.get_nowait()
            except queue.Empty:
                return
            self._emit(name, fields)

    # The three phases of a save, kept apart so that the async path can run the first on the training
    # thread and the other two in the background (with its own gloo group as ``self.group``).

    def _prepare_save(self, backend: Any, step: int) -> Path:
        """Collective: disk check (prune or fail), sweep once, create the staging folder; returns it."""
        estimate = backend.estimate_bytes()
        try:
            return prepare_staging(self.root, step, group=self.group, before=lambda: self._before_save(step, estimate))
        except Exception as e:
            self._event("checkpoint_save_failed", step=step, error=describe_error(e))
            raise

    def _write_files(self, backend: Any, staging: Path, step: int, epoch: int, rank_state: Any) -> RankOutcome:
        """Local: this rank's files (engine shards + its seo_dist state file); errors are returned, not raised."""
        records: list[FileRecord] = []
        errors: list[str] = []
        try:
            written, failed = backend.write(self.root, staging)
            records += written
            errors += failed
            records.append(
                write_torch_file(
                    self._rank_file(step, epoch, rank_state),
                    staging,
                    rank_state_file(dist.get_rank()),
                    self.hash_algorithm,
                )
            )
        except Exception as e:  # noqa: BLE001 - goes to the commit, which fails on every rank
            errors.append(describe_error(e))
        return RankOutcome(dist.get_rank(), records, errors)

    def _commit_save(
        self,
        backend: Any,
        outcome: RankOutcome,
        step: int,
        epoch: int,
        metrics: Mapping[str, Any] | None,
        *,
        start: float,
        write_s: float,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Collective: gather, manifest, rename, latest, retention, index (see :func:`.commit.commit_checkpoint`)."""
        world_size = dist.get_world_size()
        clean = clean_metrics(metrics)

        def make_manifest(files: dict[str, dict[str, Any]]) -> Manifest:
            return Manifest(
                step=step,
                epoch=epoch,
                hash_algorithm=self.hash_algorithm,
                files=files,
                world_size=world_size,
                zero_stage=backend.zero_stage,
                engine=backend.engine_name,
                metrics=clean,
                config_hash=self.config_hash,
                config=self.config,
                versions=collect_versions(),
            )

        commit_start = time.perf_counter()
        try:
            result = commit_checkpoint(
                self.root, step, outcome, make_manifest, group=self.group, after_commit=self._after_commit
            )
        except PeersLostAfterCommit as e:  # committed; the job must stop all the same
            self._event("checkpoint_saved", step=step, path=str(e.path), peers_lost=True, error=str(e))
            raise
        except Exception as e:
            self._event("checkpoint_save_failed", step=step, error=str(e))
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
        self._event("checkpoint_saved", **self.last_save)
        for warning in result.warnings:
            self._event("checkpoint_warning", step=step, message=warning)
        return result.path

    def _rank_file(self, step: int, epoch: int, rank_state: Any) -> dict[str, Any]:
        from seo_dist.checkpoint.rng import capture_rng_state

        return {
            "step": step,
            "epoch": epoch,
            "rank": dist.get_rank(),
            "world_size": dist.get_world_size(),
            "rng": capture_rng_state(),
            "rank_state": rank_state,
        }

    def _before_save(self, step: int, estimate: int) -> None:
        """Rank 0, before creating the staging folder: sweep once, then make sure the checkpoint fits."""
        if not self._swept:
            self.sweep_abandoned()
        scan = scan_checkpoints(self.root)
        expected = scan.committed[-1].total_bytes if scan.committed else estimate
        needed = int(expected * self.disk_headroom)
        free = disk_free_bytes(self.root)
        if free >= needed:
            return
        latest = read_latest(self.root)
        plan = plan_space_pruning(
            scan.committed,
            needed,
            free,
            tracked=self.tracked,
            keep_best=self.strategy.effective_keep_best,
            pinned=self._pinned,
            latest=latest,
        )
        if plan is None or not self.prune_for_space:
            self._event("checkpoint_disk_full", step=step, needed_bytes=needed, free_bytes=free)
            raise DiskSpaceError(
                f"not enough disk for checkpoint {step} under {self.root}: about {needed / 1e9:.2f} GB needed, "
                f"{free / 1e9:.2f} GB free"
                + ("" if plan is None else " (pruning for space is off)")
                + "; free space or lower checkpoint.keep_last"
            )
        for info in plan:
            remove_folder(self.root / info.name)
        self._event(
            "checkpoint_pruned",
            reason="disk_space",
            steps=[i.step for i in plan],
            freed_bytes=sum(i.total_bytes for i in plan),
        )
        self._refresh_index()

    def _after_commit(self, final: Path, manifest: Manifest) -> list[str]:
        """Rank 0, once the new checkpoint is committed: move ``latest``, apply retention, rewrite the index."""
        with self._lock:
            return self._move_latest_and_retain(final)

    def _move_latest_and_retain(self, final: Path) -> list[str]:
        problems = []
        write_latest(self.root, final.name)
        scan = scan_checkpoints(self.root)
        if self.strategy.cleanup_old:
            doomed = plan_deletions(
                scan.committed,
                keep_last=self.strategy.max_checkpoints,
                keep_best=self.strategy.effective_keep_best,
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
                    problems.append(f"retention could not delete {info.name}: {describe_error(e)}")
            if deleted:
                self._event("checkpoint_pruned", reason="retention", steps=deleted)
                scan = scan_checkpoints(self.root)
        write_index(self.root, build_index(scan, latest=final.name, tracked=self.tracked, pinned=self._pinned))
        return problems

    # ------------------------------------------------------------------ load

    def load_checkpoint(
        self,
        path_or_which: str | Path = "latest",
        model_or_engine: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        *,
        metric: str | None = None,
        maximize: bool | None = None,
        load_optimizer_states: bool = True,
        load_lr_scheduler_states: bool = True,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Load ``latest``, ``best`` or a path (a checkpoint folder, a checkpoints root or an experiment dir). Collective.

        The chosen checkpoint is verified (``verify_on_load``) and loaded; if either fails, a
        ``checkpoint_fallback`` event is logged and the previous one is tried. Returns ``path``, ``name``,
        ``step``, ``epoch``, ``metrics``, ``rank_state`` (this rank's, as saved), ``manifest``,
        ``fell_back_from`` (names that failed), ``config_changed_keys``, plus ``client_state`` (DeepSpeed)
        or ``state`` (plain torch: the saved model/optimizer/scheduler state dicts).

        Raises :class:`~.errors.NoCheckpointError` when there is nothing to load,
        :class:`~.errors.NoValidCheckpointError` when checkpoints exist but none is valid, and
        :class:`~.errors.IncompatibleCheckpointError` (e.g. another world size with partitioned ZeRO state).
        """
        self._collect(block=True)  # the save in flight may be the one to load, and it uses self.group
        self._raise_pending()
        start = time.perf_counter()
        backend = self._backend(model_or_engine, optimizer, scheduler)
        metric, maximize = self._metric(metric, maximize)
        candidates = run_on_rank_zero(lambda: load_candidates(self.root, path_or_which, metric, maximize), self.group)
        failures: list[str] = []
        for i, folder in enumerate(candidates):
            reason, loaded = self._try_load(folder, backend, load_optimizer_states, load_lr_scheduler_states)
            if reason is None:
                break
            failures.append(f"{folder.name}: {reason}")
            nxt = candidates[i + 1].name if i + 1 < len(candidates) else None
            self._event("checkpoint_fallback", failed=folder.name, reason=reason, next=nxt)
            if dist.is_rank_zero():
                log.warning("checkpoint %s unusable (%s)%s", folder.name, reason, f"; trying {nxt}" if nxt else "")
        else:
            root = candidates[0].parent if candidates else self.root
            raise NoValidCheckpointError(
                f"checkpoints exist under {root} but none is valid ({'; '.join(failures)}); nothing was loaded. "
                f"Restore or remove the damaged folders (seo-dist verify FOLDER names the bad files), or start a "
                f"new experiment"
            )
        manifest: Manifest = loaded["manifest"]
        rank_file = loaded.pop("rank_file")
        if restore_rng and rank_file is not None:
            from seo_dist.checkpoint.rng import restore_rng_state

            restore_rng_state(rank_file["rng"])
        changed: list[str] = []
        if self.config_hash and manifest.config_hash and manifest.config_hash != self.config_hash:
            changed = config_diff(manifest.config, self.config) if manifest.config and self.config else []
            self._event(
                "checkpoint_config_changed",
                path=str(folder),
                keys=changed,
                saved_hash=manifest.config_hash,
                current_hash=self.config_hash,
            )
        result = {
            "path": folder,
            "name": folder.name,
            "step": manifest.step,
            "epoch": manifest.epoch,
            "metrics": dict(manifest.metrics),
            "rank_state": rank_file["rank_state"] if rank_file else None,
            "manifest": manifest,
            "fell_back_from": [f.split(":", 1)[0] for f in failures],
            "config_changed_keys": changed,
            **loaded,
        }
        self._event(
            "checkpoint_loaded",
            path=str(folder),
            step=manifest.step,
            verify=self.verify_on_load,
            fell_back_from=result["fell_back_from"],
            seconds=time.perf_counter() - start,
        )
        return result

    def load_best_checkpoint(
        self,
        metric: str | None = None,
        maximize: bool | None = None,
        model_or_engine: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The checkpoint with the best ``metric`` (default: the strategy's), falling back to the next best."""
        return self.load_checkpoint(
            "best", model_or_engine, optimizer, scheduler, metric=metric, maximize=maximize, **kwargs
        )

    def load_latest_checkpoint(
        self, model_or_engine: Any = None, optimizer: Any = None, scheduler: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        return self.load_checkpoint("latest", model_or_engine, optimizer, scheduler, **kwargs)

    def _try_load(
        self, folder: Path, backend: Any, load_optimizer_states: bool, load_lr_scheduler_states: bool
    ) -> tuple[str | None, dict[str, Any]]:
        """Collective: verify and load one folder. (None, loaded) on success, else (reason, {})."""

        def read() -> Manifest | str:
            try:
                return read_manifest(folder)
            except ManifestError as e:
                return str(e)

        manifest = run_on_rank_zero(read, self.group)
        if isinstance(manifest, str):
            return manifest, {}
        world_size = dist.get_world_size()
        if backend is not None:  # same manifest on every rank: raises everywhere or nowhere
            backend.check_compatible(manifest, folder, world_size, load_optimizer_states)
        problems = self._verify(folder, manifest)
        if problems:
            shown = "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
            return f"verification failed: {shown}", {}
        loaded: dict[str, Any] = {"manifest": manifest}
        error = None
        try:
            if backend is not None:
                loaded.update(
                    backend.load(
                        folder,
                        load_optimizer_states=load_optimizer_states,
                        load_lr_scheduler_states=load_lr_scheduler_states,
                    )
                )
            elif manifest.engine == "torch":
                import torch

                loaded["state"] = torch.load(folder / TORCH_STATE_FILE, map_location="cpu", weights_only=False)
            loaded["rank_file"] = self._read_rank_file(folder, manifest)
        except Exception as e:  # noqa: BLE001 - gathered below so that every rank falls back together
            error = describe_error(e)
        errors = [f"rank {r}: {err}" for r, err in enumerate(dist.all_gather_object(error, group=self.group)) if err]
        if errors:
            return "load failed: " + "; ".join(errors), {}
        return None, loaded

    def _verify(self, folder: Path, manifest: Manifest) -> list[str]:
        """Collective: ranks share the re-hashing (file i goes to rank i % world), then exchange problems."""
        if self.verify_on_load == "off":
            return []
        rank, world = dist.get_rank(), dist.get_world_size()
        mine = sorted(manifest.files)[rank::world]
        try:
            problems, _ = verify_files(folder, manifest, mine, self.verify_on_load)  # type: ignore[arg-type]
            if rank == 0:
                problems += extra_files(folder, manifest)
            found = [str(p) for p in problems]
        except Exception as e:  # noqa: BLE001 - e.g. the folder vanished
            found = [f"verification error: {describe_error(e)}"]
        return [p for ps in dist.all_gather_object(found, group=self.group) for p in ps]

    def _read_rank_file(self, folder: Path, manifest: Manifest) -> dict[str, Any] | None:
        name = rank_state_file(dist.get_rank())
        if name not in manifest.files:  # e.g. more ranks now than when saved (allowed without ZeRO)
            return None
        import torch

        return torch.load(folder / name, map_location="cpu", weights_only=False)

    # ------------------------------------------------------------------ helpers

    def _backend(self, model_or_engine: Any, optimizer: Any, scheduler: Any) -> Any:
        if model_or_engine is None and optimizer is None and scheduler is None:
            return None
        if model_or_engine is not None and _is_deepspeed_engine(model_or_engine):
            from seo_dist.checkpoint.deepspeed_engine import DeepSpeedBackend

            return DeepSpeedBackend(model_or_engine, self.hash_algorithm)
        from seo_dist.checkpoint.torch_backend import TorchModuleBackend

        return TorchModuleBackend(model_or_engine, optimizer, scheduler, self.hash_algorithm)

    def _metric(self, metric: str | None, maximize: bool | None) -> tuple[str, bool]:
        metric = metric or self.strategy.best_metric
        if maximize is None:
            maximize = self.tracked.get(metric, self.strategy.maximize)
        return metric, maximize

    def _event(self, name: str, **fields: Any) -> None:
        """Rank 0: log and hand to ``event_fn``; from the writer thread, handed over at the next poll/wait/save
        on the training thread (trackers are not thread-safe)."""
        if not dist.is_rank_zero():
            return
        log.info("%s %s", name, fields)
        if self._writer.on_worker_thread():
            self._deferred_events.put((name, fields))
        else:
            self._emit(name, fields)

    def _emit(self, name: str, fields: dict[str, Any]) -> None:
        if self.event_fn is not None:
            try:
                self.event_fn(name, **fields)
            except Exception as e:  # noqa: BLE001 - a broken tracker must not break checkpointing
                warnings.warn(f"checkpoint event {name!r} could not be logged: {describe_error(e)}", stacklevel=2)


class AdvancedCheckpointManager(CheckpointManager):
    """The brief's name for the manager with best-model tracking, pinning, disk-space policy and retention.

    :class:`CheckpointManager` already has all of these (a checkpoint manager without them loses runs),
    so this subclass adds nothing; it exists so that code written against the brief keeps working.
    """
