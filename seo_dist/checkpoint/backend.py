"""What the manager needs from whatever owns the model state, and how it picks one.

Two backends implement :class:`CheckpointBackend`: :class:`~.deepspeed_backend.DeepSpeedBackend` (DeepSpeed's own
save/load code writes the shards, seo_dist owns the bytes) and :class:`~.torch_backend.TorchModuleBackend` (a plain
``nn.Module`` with its optimizer and scheduler, one file written by rank 0). The manager calls nothing else on them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from seo_dist.checkpoint.hashing import FileRecord
from seo_dist.checkpoint.manifest import Manifest

if TYPE_CHECKING:
    import torch
    from deepspeed.runtime.engine import DeepSpeedEngine

    from seo_dist.checkpoint.signing import SigningKey
    from seo_dist.checkpoint.staging import HostStager, StagedFile
    from seo_dist.checkpoint.torch_backend import Stateful


class CheckpointBackend(Protocol):
    """Writes, stages and loads one job's model/optimizer/scheduler state inside a checkpoint folder."""

    @property
    def engine_name(self) -> str:
        """Recorded as the manifest's ``engine``: ``deepspeed`` or ``torch``."""
        ...

    @property
    def zero_stage(self) -> int:
        """Recorded as the manifest's ``zero_stage`` (0 for a plain torch model)."""
        ...

    @property
    def copies_files_on_save(self) -> bool:
        """The save also copies files of the engine's own (DeepSpeed's NVMe swap folder); a staging dry run
        (``SavePipeline.prewarm``) would copy them too, so none is made."""
        ...

    def estimate_bytes(self) -> int:
        """All ranks' files of one save together, for the disk-space check before the first save."""
        ...

    def write(self, root: Path, staging: Path) -> tuple[list[FileRecord], list[str]]:
        """Write this rank's files into ``staging`` (hashed while written); errors are returned, not raised,
        so that every rank still reaches the commit. Collective on the training group for DeepSpeed."""
        ...

    def stage(self, root: Path, staging: Path, stager: HostStager) -> tuple[list[StagedFile], list[str]]:
        """As :meth:`write`, but copy this rank's files to host buffers for the background writer."""
        ...

    def check_compatible(
        self, manifest: Manifest, folder: Path, *, world_size: int, load_optimizer_states: bool
    ) -> None:
        """Raise :class:`~.errors.IncompatibleCheckpointError` if this job cannot load ``folder``."""
        ...

    def load(
        self, folder: Path, *, load_optimizer_states: bool = True, load_lr_scheduler_states: bool = True
    ) -> dict[str, Any]:
        """Load ``folder`` into the live objects; returns what the load result adds (``client_state``/``state``)."""
        ...


def is_deepspeed_engine(obj: object) -> TypeGuard[DeepSpeedEngine]:
    """True for a DeepSpeed engine. Without ``deepspeed`` imported no such object can exist, so nothing is
    imported then (``seo-dist verify``/``ls`` stay free of DeepSpeed and torch)."""
    if "deepspeed" not in sys.modules:
        return False
    from deepspeed.runtime.engine import DeepSpeedEngine

    return isinstance(obj, DeepSpeedEngine)


def select_backend(
    model_or_engine: torch.nn.Module | None,
    optimizer: Stateful | None = None,
    scheduler: Stateful | None = None,
    *,
    hash_algorithm: str,
    signing_key: SigningKey | None = None,
) -> CheckpointBackend | None:
    """The backend for what the caller handed over: DeepSpeed for an engine, plain torch for anything else;
    None when nothing was given (a load that only reads the checkpoint)."""
    if model_or_engine is None and optimizer is None and scheduler is None:
        return None
    if is_deepspeed_engine(model_or_engine):
        from seo_dist.checkpoint.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(model_or_engine, hash_algorithm, signing_key=signing_key)
    from seo_dist.checkpoint.torch_backend import TorchModuleBackend

    return TorchModuleBackend(model_or_engine, optimizer, scheduler, hash_algorithm)
