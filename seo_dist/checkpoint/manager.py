"""``CheckpointManager``: the public checkpoint API, wiring the save pipeline, the root's upkeep and the loader.

Every public method that saves or loads is collective: all ranks call it with the same arguments.
Rank 0 alone writes the manifest, ``latest`` and ``index.json``, deletes folders and emits events;
whatever it decides is broadcast, and its errors are re-raised on every rank.

Where each part lives: :mod:`.saving` (sync and background saves, their stats and errors), :mod:`.root_keeper`
(disk space, ``latest``, retention, index, sweep, pins), :mod:`.loading` (load with fallback, collective
verification, RNG restore, config diff), :mod:`.backend` (what is saved: DeepSpeed engine or plain torch),
:mod:`.events` (rank-0 events, deferred from the writer thread).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seo_dist import dist
from seo_dist.checkpoint.async_save import BackgroundWriter, CommitGroup
from seo_dist.checkpoint.backend import CheckpointBackend, select_backend
from seo_dist.checkpoint.events import EventFn, EventRelay
from seo_dist.checkpoint.hashing import ALGORITHMS
from seo_dist.checkpoint.index import scan_checkpoints
from seo_dist.checkpoint.loading import CheckpointLoader, LoadRequest, ManifestTrust
from seo_dist.checkpoint.manifest import ConfigStamp
from seo_dist.checkpoint.retention import CheckpointInfo, best_checkpoint
from seo_dist.checkpoint.root_keeper import RetentionPolicy, RootKeeper
from seo_dist.checkpoint.saving import SavePipeline, SaveRequest, SaveStats
from seo_dist.checkpoint.signing import SigningKey, load_signing_key, signed_algorithm
from seo_dist.checkpoint.verify import VERIFY_MODES
from seo_dist.config.checkpoint import CheckpointConfig
from seo_dist.errors import error_line

if TYPE_CHECKING:
    import torch
    from torch.distributed import ProcessGroup

    from seo_dist.checkpoint.torch_backend import Stateful

log = logging.getLogger(__name__)

ON_ERROR_MODES = ("raise", "warn")


class CheckpointManager:
    """Save, verify, retain and load checkpoints under ``checkpoint_dir`` (``<experiment>/checkpoints``).

    One class holds every policy (interval, retention of newest/best/pinned, best-model tracking for
    several metrics, free-disk check, load fallback): each exists to protect a run, so there is no
    reduced "basic" mode. :class:`AdvancedCheckpointManager` is the same class under another name.

    Args:
        checkpoint_dir: the checkpoints root.
        strategy: when to save, what to keep, how to hash and verify (:class:`~seo_dist.config.CheckpointConfig`,
            also named ``CheckpointStrategy``; default: its defaults).
        hash_algorithm: ``xxh3_128`` (fastest), ``blake3`` or ``sha256``; default ``strategy.hash_algorithm``.
        verify_on_load: ``full`` (re-hash), ``quick`` (sizes) or ``off``; default ``strategy.verify_on_load``.
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
            Off by default here, so that ``save_checkpoint`` returns a committed checkpoint;
            :meth:`from_config` follows ``checkpoint.async_save`` (on by default).
        on_error: a failed save (``CheckpointSaveError``) is raised on the training thread (``raise``), or
            logged (event ``checkpoint_save_failed``, error level) while training goes on (``warn``); default
            ``strategy.on_error``.
        pin_memory: pinned staging buffers for CUDA tensors (default: when CUDA is available).
        signing_key: sign every manifest written and accept only manifests it signed (default: the key of
            ``strategy.signing_key_file``, else of ``$SEO_DIST_SIGNING_KEY_FILE`` / ``$SEO_DIST_SIGNING_KEY``, else
            none). Under a key, ``xxh3_128`` per-file hashes become ``blake3``.
        allow_unsigned: with a key, whether an unsigned checkpoint may still load (default
            ``strategy.allow_unsigned``).
        run_files: ``{relative path: bytes}`` that rank 0 writes into every checkpoint, listed in its manifest
            (the trainer passes ``hf_config.json`` and ``tokenizer/``, so that an export needs nothing else).
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        strategy: CheckpointConfig | None = None,
        *,
        hash_algorithm: str | None = None,
        verify_on_load: str | None = None,
        event_fn: EventFn | None = None,
        config_hash: str | None = None,
        config: Mapping[str, Any] | None = None,
        tracked_metrics: Mapping[str, bool] | None = None,
        disk_headroom: float = 1.1,
        prune_for_space: bool = True,
        group: ProcessGroup | None = None,
        async_save: bool = False,
        on_error: str | None = None,
        pin_memory: bool | None = None,
        signing_key: SigningKey | None = None,
        allow_unsigned: bool | None = None,
        run_files: Mapping[str, bytes] | None = None,
    ) -> None:
        self.strategy = strategy if strategy is not None else CheckpointConfig()
        hash_algorithm = hash_algorithm or self.strategy.hash_algorithm
        verify_on_load = verify_on_load or self.strategy.verify_on_load
        on_error = on_error or self.strategy.on_error
        if hash_algorithm not in ALGORITHMS:
            raise ValueError(f"hash_algorithm must be one of {', '.join(ALGORITHMS)}, got {hash_algorithm!r}")
        if verify_on_load not in VERIFY_MODES:
            raise ValueError(f"verify_on_load must be one of {', '.join(VERIFY_MODES)}, got {verify_on_load!r}")
        if disk_headroom < 1.0:
            raise ValueError(f"disk_headroom must be >= 1.0, got {disk_headroom}")
        if on_error not in ON_ERROR_MODES:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_MODES)}, got {on_error!r}")
        self.root = Path(checkpoint_dir)
        self.signing_key = signing_key or load_signing_key(self.strategy.signing_key_file)
        hash_algorithm = signed_algorithm(hash_algorithm, self.signing_key)
        self.hash_algorithm = hash_algorithm
        self.verify_on_load = verify_on_load
        self.async_save = async_save
        self.on_error = on_error
        self.tracked: dict[str, bool] = {
            self.strategy.best_metric: self.strategy.maximize,
            **dict(tracked_metrics or {}),
        }
        stamp = ConfigStamp(config_hash, dict(config) if config is not None else None)
        writer = BackgroundWriter()
        self._group = CommitGroup(group)
        self._events = EventRelay(event_fn, is_background=writer.on_worker_thread)
        self._keeper = RootKeeper(
            self.root,
            RetentionPolicy(
                keep_last=self.strategy.keep_last,
                keep_best=self.strategy.keep_best,
                cleanup=self.strategy.cleanup_old,
                disk_headroom=disk_headroom,
                prune_for_space=prune_for_space,
            ),
            tracked=self.tracked,
            pinned=self.strategy.pinned,
            events=self._events,
        )
        self._saves = SavePipeline(
            self.root,
            hash_algorithm=hash_algorithm,
            stamp=stamp,
            keeper=self._keeper,
            events=self._events,
            group=self._group,
            writer=writer,
            on_error=on_error,
            pin_memory=pin_memory,
            signing_key=self.signing_key,
            run_files=run_files,
        )
        trust = ManifestTrust(
            self.signing_key, self.strategy.allow_unsigned if allow_unsigned is None else allow_unsigned
        )
        self._loader = CheckpointLoader(
            self.root, verify_mode=verify_on_load, events=self._events, stamp=stamp, trust=trust
        )
        self._closed = False
        if async_save:
            self._group.ensure_own()
            atexit.register(self._close_at_exit)

    @classmethod
    def from_config(cls, checkpoint_dir: str | Path, cfg: CheckpointConfig, **kwargs: Any) -> CheckpointManager:
        """From :class:`seo_dist.config.CheckpointConfig`; ``kwargs`` as in the constructor (event_fn, config...).
        Collective when ``cfg.async_save`` (it creates the manager's gloo group)."""
        kwargs.setdefault("async_save", cfg.async_save)
        return cls(checkpoint_dir, dataclasses.replace(cfg), **kwargs)

    # ------------------------------------------------------------------ state (local, no collectives)

    @property
    def group(self) -> ProcessGroup | None:
        """The process group of the manager's collectives (None: the default group)."""
        return self._group.group

    @property
    def last_save(self) -> SaveStats | None:
        """Timings and sizes of the last committed save (``step``, ``path``, ``bytes``, ``files``, ``write_s``,
        ``commit_s``, ``total_s``, plus the stall/staging times of an asynchronous save)."""
        return self._saves.last_save

    @property
    def in_flight(self) -> bool:
        """True while a background save of this rank is writing or committing."""
        return self._saves.writer.in_flight and not self._saves.writer.finished

    @property
    def failed(self) -> bool:
        """True when a background save failed and its error waits to be raised (``on_error="raise"``). Local and
        non-raising: a trainer folds it into a per-step all-reduce, then calls :meth:`wait` on every rank so
        that all of them raise at the same step (see :meth:`poll`)."""
        return self._saves.pending_error is not None

    @property
    def pinned(self) -> set[int]:
        return self._keeper.pinned

    def should_save(self, step: int, *, final: bool = False) -> bool:
        return self.strategy.should_save(step, final=final)

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Committed checkpoints (readable manifest), oldest first; not hash-verified."""
        return scan_checkpoints(self.root).committed

    def has_checkpoints(self) -> bool:
        """True if any checkpoint folder exists, committed or damaged (then a resume must not start from scratch)."""
        return scan_checkpoints(self.root).any

    def best_checkpoint(self, metric: str | None = None, maximize: bool | None = None) -> CheckpointInfo | None:
        metric, maximize = self._metric(metric, maximize)
        return best_checkpoint(self.list_checkpoints(), metric, maximize)

    def pin(self, step: int) -> None:
        """Never delete the checkpoint of ``step``. Kept in index.json, so a resumed run honours it too."""
        self._keeper.pin(step)

    def sweep_abandoned(self) -> list[Path]:
        """Rank 0: delete staging folders left by crashed saves, repair ``latest``/``index.json`` from the
        manifests. Call at start, before the first save (the first save does it anyway). Other ranks: no-op."""
        if not dist.is_rank_zero():
            return []
        self._saves.collect(block=True)  # never sweep the staging folder of a save in flight (local: no collective)
        return self._keeper.sweep()

    # ------------------------------------------------------------------ save

    def _backend(
        self,
        model_or_engine: torch.nn.Module | None,
        optimizer: Stateful | None,
        scheduler: Stateful | None,
        caller: str,
    ) -> CheckpointBackend:
        backend = select_backend(
            model_or_engine, optimizer, scheduler, hash_algorithm=self.hash_algorithm, signing_key=self.signing_key
        )
        if backend is None:
            raise ValueError(f"{caller} needs the model or DeepSpeed engine to save")
        return backend

    def save_checkpoint(
        self,
        model_or_engine: torch.nn.Module | None,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        step: int = 0,
        metrics: Mapping[str, Any] | None = None,
        *,
        epoch: int = 0,
        rank_state: object = None,
        blocking: bool | None = None,
        copy_in_background: bool = False,
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

        ``copy_in_background`` (background saves): return before the state is even copied to host buffers; the
        copy runs on a thread of its own while the caller goes on (the next step's forward and backward). The
        caller must call :meth:`wait_for_staging` before anything changes the saved state, i.e. before the next
        optimizer step (``engine.step()`` at a gradient-accumulation boundary); the trainer does.

        A failed save raises :class:`~.errors.CheckpointSaveError` on every rank (``on_error="raise"``);
        nothing is then committed and ``latest`` is unchanged.
        """
        backend = self._backend(model_or_engine, optimizer, scheduler, "save_checkpoint")
        entered = time.perf_counter()
        self._saves.collect(block=True)
        self._saves.raise_pending()
        request = SaveRequest(step=step, epoch=epoch, metrics=metrics, rank_state=rank_state)
        background = self.async_save if blocking is None else not blocking
        return self._saves.save(
            backend, request, background=background, entered=entered, copy_in_background=copy_in_background
        )

    @property
    def copy_in_flight(self) -> bool:
        """True while the state of a ``copy_in_background`` save is still being copied to host buffers."""
        return self._saves.stager.copying

    def wait_for_staging(self) -> float:
        """Wait until the state of a ``copy_in_background`` save is copied (microseconds when it is, or when there
        is none: call it before every optimizer step). Seconds waited, also reported as that save's ``copy_wait_s``."""
        return self._saves.wait_for_staging()

    def prewarm(
        self,
        model_or_engine: torch.nn.Module | None,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
    ) -> None:
        """Get the host staging buffers of background saves ready before the first save (collective; a no-op
        unless ``async_save``). Call it after the first optimizer step (optimizers such as torch's AdamW create
        their state in it) and well before the first save.

        Without it the first background save allocates its buffers and takes their first-touch page faults on
        the training thread (~0.7 s/GB measured, several times a later save's stall); with it a dry run of the
        save's staging records the sizes (no copy) and a background thread allocates and touches them while
        training starts. The buffers hold about one copy of this rank's checkpoint shards, as the first save
        would have held them anyway."""
        if not self.async_save:
            return
        backend = self._backend(model_or_engine, optimizer, scheduler, "prewarm")
        self._saves.prewarm(backend)

    def poll(self, *, raise_errors: bool = True) -> list[SaveStats]:
        """Cheap, local and non-blocking (call it every step, on every rank): the stats of the saves that
        finished since the last call, oldest first, and their events delivered to ``event_fn``.

        Each dict: ``step``, ``path``, ``async``, ``stall_s`` (training blocked in ``save_checkpoint``,
        including ``wait_s`` for the previous save), ``stage_s`` (copy to host buffers), ``staging_allocated_bytes``
        (host buffers this save had to allocate: 0 once :meth:`prewarm` or an earlier save made them),
        ``copy_s`` and ``copy_wait_s`` (``copy_in_background``: the copy's duration, and how long
        :meth:`wait_for_staging` blocked for it), ``write_s`` (this
        rank's write + hash + fsync), ``rank_bytes``, ``write_gbps`` (this rank's rate), ``bytes`` (the whole
        checkpoint, all ranks), ``commit_s``, ``total_s``, and ``error`` (None, or why it failed).

        Raises the :class:`~.errors.CheckpointSaveError` of a failed background save (``on_error="raise"``).
        Every rank gets the same outcome, but ranks may see it one step apart: a rank that raises while another
        enters the next step's collectives leaves that one waiting. To stop together, call
        ``poll(raise_errors=False)`` (the error stays pending, :attr:`failed` turns true), agree on
        :attr:`failed` in an all-reduce, and call :meth:`wait` on every rank when any rank failed.
        """
        self._saves.collect(block=False)
        if raise_errors:
            self._saves.raise_pending()
        return self._saves.take_finished()

    def wait(self) -> list[SaveStats]:
        """Block until no save is in flight; then as :meth:`poll`."""
        self._saves.collect(block=True)
        self._saves.raise_pending()
        return self._saves.take_finished()

    def close(self) -> list[SaveStats]:
        """:meth:`wait`, then stop the writer thread and free the staging buffers and the gloo group.
        Idempotent. Call it before ``torch.distributed`` is torn down."""
        if self._closed:
            return []
        try:
            return self.wait()
        finally:
            self._closed = True
            self._saves.close()
            self._group.release()
            atexit.unregister(self._close_at_exit)

    def _close_at_exit(self) -> None:
        """The interpreter already joined the writer thread; report what it left (nothing is raised at exit)."""
        try:
            self.close()
        except Exception as e:  # noqa: BLE001 - at exit there is nobody to raise to
            log.error("checkpoint save failed before exit: %s", error_line(e))

    # ------------------------------------------------------------------ load

    def load_checkpoint(
        self,
        path_or_which: str | Path = "latest",
        model_or_engine: torch.nn.Module | None = None,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
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
        self._saves.collect(block=True)  # the save in flight may be the one to load, and it uses self.group
        self._saves.raise_pending()
        backend = select_backend(
            model_or_engine, optimizer, scheduler, hash_algorithm=self.hash_algorithm, signing_key=self.signing_key
        )
        metric, maximize = self._metric(metric, maximize)
        request = LoadRequest(
            which=path_or_which,
            metric=metric,
            maximize=maximize,
            load_optimizer_states=load_optimizer_states,
            load_lr_scheduler_states=load_lr_scheduler_states,
            restore_rng=restore_rng,
        )
        return self._loader.load(request, backend, self._group.group)

    def load_best_checkpoint(
        self,
        metric: str | None = None,
        maximize: bool | None = None,
        model_or_engine: torch.nn.Module | None = None,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The checkpoint with the best ``metric`` (default: the strategy's), falling back to the next best."""
        return self.load_checkpoint(
            "best", model_or_engine, optimizer, scheduler, metric=metric, maximize=maximize, **kwargs
        )

    def load_latest_checkpoint(
        self,
        model_or_engine: torch.nn.Module | None = None,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``latest`` checkpoint (or a folder committed after it), falling back to older ones."""
        return self.load_checkpoint("latest", model_or_engine, optimizer, scheduler, **kwargs)

    def _metric(self, metric: str | None, maximize: bool | None) -> tuple[str, bool]:
        """The metric to rank by (default: the strategy's) and its direction (default: as tracked)."""
        metric = metric or self.strategy.best_metric
        if maximize is None:
            maximize = self.tracked.get(metric, self.strategy.maximize)
        return metric, maximize


class AdvancedCheckpointManager(CheckpointManager):
    """The manager with best-model tracking, pinning, disk-space policy and retention, under its other public name.

    :class:`CheckpointManager` already has all of these (a checkpoint manager without them loses runs),
    so this subclass adds nothing; it is kept so that code written against this name keeps working.
    """
