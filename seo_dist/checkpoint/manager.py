"""``CheckpointManager``: the brief's API over the commit protocol, verification, retention and load fallback.

Every public method that saves or loads is collective: all ranks call it with the same arguments.
Rank 0 alone writes the manifest, ``latest`` and ``index.json``, deletes folders and emits events;
whatever it decides is broadcast, and its errors are re-raised on every rank.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from seo_dist import dist
from seo_dist.checkpoint.commit import RankOutcome, commit_checkpoint, describe_error, prepare_staging, run_on_rank_zero
from seo_dist.checkpoint.errors import DiskSpaceError, ManifestError, NoValidCheckpointError
from seo_dist.checkpoint.hashing import ALGORITHMS, DEFAULT_ALGORITHM, FileRecord, write_torch_file
from seo_dist.checkpoint.index import (
    build_index,
    index_matches,
    read_index,
    read_latest,
    scan_checkpoints,
    write_index,
    write_latest,
)
from seo_dist.checkpoint.layout import MANIFEST, TORCH_STATE_FILE, rank_state_file
from seo_dist.checkpoint.manifest import Manifest, clean_metrics, collect_versions, read_manifest
from seo_dist.checkpoint.retention import CheckpointInfo, best_checkpoint, plan_deletions, plan_space_pruning
from seo_dist.checkpoint.selection import load_candidates
from seo_dist.checkpoint.storage import disk_free_bytes, remove_folder, sweep_abandoned
from seo_dist.checkpoint.strategy import CheckpointStrategy
from seo_dist.checkpoint.verify import VERIFY_MODES, extra_files, verify_files

log = logging.getLogger(__name__)

EventFn = Callable[..., Any]
"""``event_fn(name, **fields)``; the trainer passes ``tracker.log_event``."""


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
        group: process group for the manager's collectives (the async writer passes its own gloo group).
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
    ) -> None:
        if hash_algorithm not in ALGORITHMS:
            raise ValueError(f"hash_algorithm must be one of {', '.join(ALGORITHMS)}, got {hash_algorithm!r}")
        if verify_on_load not in VERIFY_MODES:
            raise ValueError(f"verify_on_load must be one of {', '.join(VERIFY_MODES)}, got {verify_on_load!r}")
        if disk_headroom < 1.0:
            raise ValueError(f"disk_headroom must be >= 1.0, got {disk_headroom}")
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
        self.group = group
        self._pinned = set(self.strategy.pinned)
        self._swept = False
        self.last_save: dict[str, Any] | None = None
        """Timings and sizes of the last save (``step``, ``path``, ``bytes``, ``files``, ``write_s``, ``commit_s``, ``total_s``)."""

    @classmethod
    def from_config(cls, checkpoint_dir: str | Path, cfg: Any, **kwargs: Any) -> CheckpointManager:
        """From :class:`seo_dist.config.CheckpointConfig`; ``kwargs`` as in the constructor (event_fn, config...)."""
        kwargs.setdefault("hash_algorithm", cfg.hash_algorithm)
        kwargs.setdefault("verify_on_load", cfg.verify_on_load)
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
        self._pinned.add(int(step))
        self._refresh_index()

    def unpin(self, step: int) -> None:
        self._pinned.discard(int(step))
        self._refresh_index()

    # ------------------------------------------------------------------ housekeeping

    def sweep_abandoned(self) -> list[Path]:
        """Rank 0: delete staging folders left by crashed saves, repair ``latest``/``index.json`` from the
        manifests. Call at start, before the first save (the first save does it anyway). Other ranks: no-op."""
        if not dist.is_rank_zero():
            return []
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
        if (latest is None and scan.committed) or (latest is not None and scan.by_name(latest) is None):
            repaired = scan.committed[-1].name if scan.committed else None
            if repaired is not None:
                write_latest(self.root, repaired)
                self._event("checkpoint_latest_repaired", was=latest, now=repaired)
            latest = repaired
        if not index_matches(index, scan, latest) and scan.committed:
            write_index(self.root, build_index(scan, latest=latest, tracked=self.tracked, pinned=self._pinned))
            self._event("checkpoint_index_rebuilt", checkpoints=len(scan.committed))

    def _refresh_index(self) -> None:
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
    ) -> Path:
        """Save and commit a checkpoint of ``step`` (collective). Returns the committed folder.

        ``model_or_engine``: a DeepSpeed engine (its optimizer and LR scheduler are saved by DeepSpeed;
        ``optimizer``/``scheduler`` are ignored) or a plain ``nn.Module`` saved with ``optimizer`` and
        ``scheduler``. ``rank_state``: this rank's trainer state (data loader position...), returned by
        :meth:`load_checkpoint`; RNG states are saved alongside automatically. Raises
        :class:`~.errors.CheckpointSaveError` on every rank if any rank failed; nothing is then committed.
        """
        backend = self._backend(model_or_engine, optimizer, scheduler)
        if backend is None:
            raise ValueError("save_checkpoint needs the model or DeepSpeed engine to save")
        start = time.perf_counter()
        staging = self._prepare_save(backend, step)
        outcome = self._write_files(backend, staging, step, epoch, rank_state)
        return self._commit_save(
            backend, outcome, step, epoch, metrics, start=start, write_s=time.perf_counter() - start
        )

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
        if not dist.is_rank_zero():
            return
        log.info("%s %s", name, fields)
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
