"""The plain-torch backend: a ``torch.nn.Module`` + optimizer + scheduler without DeepSpeed (code that calls
``CheckpointManager.save_checkpoint(model, optimizer, scheduler, ...)``): rank 0 writes one file through the
same hashing writer and commit path as the DeepSpeed shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from seo_dist import dist
from seo_dist.checkpoint.errors import IncompatibleCheckpointError
from seo_dist.checkpoint.hashing import FileRecord, write_torch_file
from seo_dist.checkpoint.layout import TORCH_STATE_FILE
from seo_dist.checkpoint.manifest import Manifest
from seo_dist.checkpoint.safe_load import load_torch_state_file
from seo_dist.checkpoint.staging import HostStager, StagedFile


class Stateful(Protocol):
    """An optimizer or LR scheduler: anything with ``state_dict``/``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def _tensor_bytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class TorchModuleBackend:
    """Saves and loads a model, its optimizer and its scheduler (each optional) as one file, written by rank 0."""

    engine_name = "torch"
    copies_files_on_save = False
    zero_stage = 0

    def __init__(
        self,
        model: torch.nn.Module | None,
        optimizer: Stateful | None,
        scheduler: Stateful | None,
        algorithm: str,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.algorithm = algorithm

    def estimate_bytes(self) -> int:
        total = sum(p.numel() * p.element_size() for p in self.model.parameters()) if self.model is not None else 0
        if self.optimizer is not None:
            total += _tensor_bytes(self.optimizer.state_dict().get("state", {}))
        return total

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict() if self.model is not None else None,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def write(self, root: Path, staging: Path) -> tuple[list[FileRecord], list[str]]:
        if not dist.is_rank_zero():
            return [], []
        return [write_torch_file(self._state(), staging, TORCH_STATE_FILE, self.algorithm)], []

    def stage(self, root: Path, staging: Path, stager: HostStager) -> tuple[list[StagedFile], list[str]]:
        """Rank 0's state copied to host buffers, for the background writer."""
        if not dist.is_rank_zero():
            return [], []
        return [stager.stage(TORCH_STATE_FILE, self._state())], []

    def check_compatible(
        self, manifest: Manifest, folder: Path, *, world_size: int, load_optimizer_states: bool
    ) -> None:
        if manifest.engine != self.engine_name:
            raise IncompatibleCheckpointError(
                f"{folder} holds {manifest.engine} shards (ZeRO stage {manifest.zero_stage}); load it with a DeepSpeed "
                f"engine, or consolidate it (seo-dist consolidate {folder} --out DIR) and load the model from DIR"
            )

    def load(
        self, folder: Path, *, load_optimizer_states: bool = True, load_lr_scheduler_states: bool = True
    ) -> dict[str, Any]:
        state = load_torch_state_file(folder / TORCH_STATE_FILE)
        if self.model is not None and state.get("model") is not None:
            self.model.load_state_dict(state["model"])
        if self.optimizer is not None and load_optimizer_states and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and load_lr_scheduler_states and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        return {"state": state}
