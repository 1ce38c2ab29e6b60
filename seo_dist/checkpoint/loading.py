"""Collective load with fallback: choose the folders to try (:mod:`.selection`), verify and load each in turn
until one works, then restore this rank's RNG state and compare the saved config with the job's.

Every rank runs the same steps on the same folder: rank 0 reads the manifest and broadcasts it, the ranks
split the re-hashing and exchange their findings, and a load error on any rank fails the folder on all of
them, so the ranks fall back together and never load different checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seo_dist import dist
from seo_dist.checkpoint.backend import CheckpointBackend
from seo_dist.checkpoint.commit import run_on_rank_zero
from seo_dist.checkpoint.errors import ManifestError, NoValidCheckpointError
from seo_dist.checkpoint.events import EventRelay
from seo_dist.checkpoint.layout import TORCH_STATE_FILE, rank_state_file
from seo_dist.checkpoint.manifest import ConfigStamp, Manifest, read_manifest
from seo_dist.checkpoint.selection import load_candidates
from seo_dist.checkpoint.signing import SigningKey
from seo_dist.checkpoint.verify import extra_files, verify_files
from seo_dist.errors import error_line

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ManifestTrust:
    """Which manifests a load accepts: with ``key``, signed by it (or unsigned, when ``allow_unsigned``)."""

    key: SigningKey | None = None
    allow_unsigned: bool = True


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What to load and how."""

    which: str | Path
    """``latest``, ``best`` or a path (a checkpoint folder, a checkpoints root or an experiment directory)."""
    metric: str
    maximize: bool
    """The ranking for ``best``."""
    load_optimizer_states: bool
    load_lr_scheduler_states: bool
    restore_rng: bool


def _flatten(d: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (added and removed keys included)."""
    a, b = _flatten(dict(old or {})), _flatten(dict(new or {}))
    return sorted(k for k in set(a) | set(b) if a.get(k, ...) != b.get(k, ...))


def _read_manifest_or_reason(folder: Path, trust: ManifestTrust) -> Manifest | str:
    try:
        return read_manifest(folder, trust.key, allow_unsigned=trust.allow_unsigned)
    except ManifestError as e:
        return str(e)


def verify_collectively(folder: Path, manifest: Manifest, mode: str, group: ProcessGroup | None) -> list[str]:
    """Collective: ranks share the re-hashing (file i goes to rank i % world), then exchange problems."""
    if mode == "off":
        return []
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = sorted(manifest.files)[rank::world]
    try:
        problems, _ = verify_files(folder, manifest, mine, mode)  # type: ignore[arg-type]
        if rank == 0:
            problems += extra_files(folder, manifest)
        found = [str(p) for p in problems]
    except Exception as e:  # noqa: BLE001 - e.g. the folder vanished
        found = [f"verification error: {error_line(e)}"]
    return [p for ps in dist.all_gather_object(found, group=group) for p in ps]


def read_rank_file(folder: Path, manifest: Manifest) -> dict[str, Any] | None:
    """This rank's seo_dist state file, or None when the checkpoint has none for it (more ranks now than when
    it was saved, which is allowed without partitioned ZeRO state)."""
    name = rank_state_file(dist.get_rank())
    if name not in manifest.files:
        return None
    from seo_dist.checkpoint.safe_load import load_rank_state_file

    return load_rank_state_file(folder / name)


class CheckpointLoader:
    """Loads from one checkpoints root: ``verify_mode`` (full, quick, off) before each load, events through
    ``events``, ``stamp`` compared with the saved config, and ``trust`` deciding which manifests are accepted (their
    signature is checked before any other file of the folder is read)."""

    def __init__(
        self,
        root: Path,
        *,
        verify_mode: str,
        events: EventRelay,
        stamp: ConfigStamp,
        trust: ManifestTrust | None = None,
    ) -> None:
        self.root = root
        self.verify_mode = verify_mode
        self.events = events
        self.stamp = stamp
        self.trust = trust or ManifestTrust()

    def load(
        self, request: LoadRequest, backend: CheckpointBackend | None, group: ProcessGroup | None
    ) -> dict[str, Any]:
        """Collective; see :meth:`~.manager.CheckpointManager.load_checkpoint` for the result and the errors."""
        start = time.perf_counter()
        candidates = run_on_rank_zero(
            lambda: load_candidates(self.root, request.which, request.metric, request.maximize), group
        )
        failures: list[str] = []
        for i, folder in enumerate(candidates):
            reason, loaded = self._try_load(folder, backend, request, group)
            if reason is None:
                break
            failures.append(f"{folder.name}: {reason}")
            nxt = candidates[i + 1].name if i + 1 < len(candidates) else None
            self.events.emit("checkpoint_fallback", failed=folder.name, reason=reason, next=nxt)
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
        if request.restore_rng and rank_file is not None:
            from seo_dist.checkpoint.rng import restore_rng_state

            restore_rng_state(rank_file["rng"])
        result = {
            "path": folder,
            "name": folder.name,
            "step": manifest.step,
            "epoch": manifest.epoch,
            "metrics": dict(manifest.metrics),
            "rank_state": rank_file["rank_state"] if rank_file else None,
            "manifest": manifest,
            "fell_back_from": [f.split(":", 1)[0] for f in failures],
            "config_changed_keys": self._changed_config(folder, manifest),
            **loaded,
        }
        self.events.emit(
            "checkpoint_loaded",
            path=str(folder),
            step=manifest.step,
            verify=self.verify_mode,
            fell_back_from=result["fell_back_from"],
            seconds=time.perf_counter() - start,
        )
        return result

    def _changed_config(self, folder: Path, manifest: Manifest) -> list[str]:
        """The config keys that differ from the checkpoint's (with a ``checkpoint_config_changed`` event), when
        the config hashes differ."""
        current = self.stamp
        if not current.config_hash or not manifest.config_hash or manifest.config_hash == current.config_hash:
            return []
        changed = config_diff(manifest.config, current.config) if manifest.config and current.config else []
        self.events.emit(
            "checkpoint_config_changed",
            path=str(folder),
            keys=changed,
            saved_hash=manifest.config_hash,
            current_hash=current.config_hash,
        )
        return changed

    def _try_load(
        self, folder: Path, backend: CheckpointBackend | None, request: LoadRequest, group: ProcessGroup | None
    ) -> tuple[str | None, dict[str, Any]]:
        """Collective: verify and load one folder. (None, loaded) on success, else (reason, {})."""
        manifest = run_on_rank_zero(lambda: _read_manifest_or_reason(folder, self.trust), group)
        if isinstance(manifest, str):
            return manifest, {}
        if backend is not None:  # same manifest on every rank: raises everywhere or nowhere
            backend.check_compatible(
                manifest,
                folder,
                world_size=dist.get_world_size(),
                load_optimizer_states=request.load_optimizer_states,
            )
        problems = verify_collectively(folder, manifest, self.verify_mode, group)
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
                        load_optimizer_states=request.load_optimizer_states,
                        load_lr_scheduler_states=request.load_lr_scheduler_states,
                    )
                )
            elif manifest.engine == "torch":
                from seo_dist.checkpoint.safe_load import load_torch_state_file

                loaded["state"] = load_torch_state_file(folder / TORCH_STATE_FILE)
            loaded["rank_file"] = read_rank_file(folder, manifest)
        except Exception as e:  # noqa: BLE001 - gathered below so that every rank falls back together
            error = error_line(e)
        errors = [f"rank {r}: {err}" for r, err in enumerate(dist.all_gather_object(error, group=group)) if err]
        if errors:
            return "load failed: " + "; ".join(errors), {}
        return None, loaded
