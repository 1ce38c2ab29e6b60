"""The DeepSpeed backend: DeepSpeed's own save/load code decides what each shard holds; seo_dist owns the bytes.

:class:`DeepSpeedBackend` is the :class:`~.backend.CheckpointBackend` for a DeepSpeed engine. It installs
:class:`HashingCheckpointEngine` as ``engine.checkpoint_engine``: DeepSpeed calls its ``save(state_dict, path)``
once per file (model states from data-parallel rank 0 or, with ZeRO-3, from every rank; ``*_optim_states.pt``
from every rank); each call streams ``torch.save`` through a :class:`~.hashing.HashingWriter` and records
(relative path, size, hash) for the manifest. The files keep DeepSpeed's names and layout, so
``engine.load_checkpoint`` and ``zero_to_fp32`` read our folders. Its ``load``, through which DeepSpeed's
``load_checkpoint`` reads every model and optimizer state file, unpickles with ``weights_only=True`` and the
allowlist of :mod:`.safe_load`. :class:`StagingCheckpointEngine` is the asynchronous variant: it copies
instead of writing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointCommitInfo, CheckpointEngine
from deepspeed.runtime.engine import DeepSpeedEngine

from seo_dist.checkpoint.errors import CheckpointError, IncompatibleCheckpointError
from seo_dist.checkpoint.hashing import FileRecord, write_torch_file
from seo_dist.checkpoint.manifest import Manifest
from seo_dist.checkpoint.safe_load import safe_torch_load
from seo_dist.checkpoint.signing import SigningKey
from seo_dist.checkpoint.staging import HostStager, StagedFile
from seo_dist.errors import error_line

ENGINE_NAME = "SeoDistHashingCheckpointEngine"


class HashingCheckpointEngine(CheckpointEngine):
    """DeepSpeed checkpoint engine that hashes while it writes and never raises out of ``save``.

    A write error is recorded instead of raised so that this rank still reaches DeepSpeed's barriers
    and the commit, where every rank learns that the save failed (no rank hangs on a dead peer).
    Override :meth:`accept` to do something else with each file (the async path stages it).
    """

    def __init__(self, algorithm: str) -> None:
        super().__init__(None)
        self.name = ENGINE_NAME
        self.algorithm = algorithm
        self.folder: Path | None = None
        self.records: list[FileRecord] = []
        self.errors: list[str] = []

    def create(self, info: CheckpointCommitInfo) -> None:
        """Start of ``engine.save_checkpoint``: files of this save go to ``save_dir/tag``."""
        self.folder = Path(info.save_dir) / str(info.tag)
        self.records = []
        self.errors = []

    def save(self, state_dict: object, path: str) -> None:
        if self.folder is None:
            self.errors.append(f"{path}: save() before create()")
            return
        try:
            relpath = Path(path).resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            self.errors.append(f"{path}: outside the checkpoint folder {self.folder}")
            return
        try:
            self.accept(state_dict, relpath)
        except Exception as e:  # noqa: BLE001 - reported through the commit, see class docstring
            self.errors.append(f"{relpath}: {error_line(e)}")

    def accept(self, state_dict: object, relpath: str) -> None:
        """Handle one file of the save: written (and hashed) now. Subclasses may defer the write."""
        if self.folder is None:
            raise RuntimeError("save() before create()")
        self.records.append(self.write_file(state_dict, self.folder, relpath))

    def write_file(self, state_dict: object, folder: Path, relpath: str) -> FileRecord:
        return write_torch_file(state_dict, folder, relpath, self.algorithm)

    def load(self, path: str, map_location: Any = None) -> Any:
        """DeepSpeed's read of one checkpoint file: tensors, plain data and DeepSpeed's few state classes only."""
        return safe_torch_load(path, map_location)

    def commit(self, info: CheckpointCommitInfo) -> bool:
        return True  # seo_dist commits after save_checkpoint returns: see seo_dist.checkpoint.commit

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        Path(path).mkdir(parents=True, exist_ok=exist_ok)


class StagingCheckpointEngine(HashingCheckpointEngine):
    """Copies each file's state into host buffers during ``engine.save_checkpoint`` and writes nothing.

    The state dicts DeepSpeed hands to ``save()`` reference the live tensors (parameters, fp32 master
    partitions, Adam moments), which the next optimizer step changes in place, so the copy must be taken
    before ``save()`` returns; :attr:`staged` then goes to the background writer. Staging errors (e.g. out of host
    memory) are recorded like write errors and fail the save on every rank at its commit.
    """

    def __init__(self, algorithm: str) -> None:
        super().__init__(algorithm)
        self.stager: HostStager | None = None
        self.staged: list[StagedFile] = []

    def create(self, info: CheckpointCommitInfo) -> None:
        super().create(info)
        self.staged = []

    def accept(self, state_dict: object, relpath: str) -> None:
        if self.stager is None:
            raise CheckpointError("StagingCheckpointEngine.stager is not set")
        self.staged.append(self.stager.stage(relpath, state_dict))


def install_checkpoint_engine(
    engine: DeepSpeedEngine, algorithm: str, cls: type[HashingCheckpointEngine] = HashingCheckpointEngine
) -> HashingCheckpointEngine:
    """Make ``engine`` write through a ``cls`` instance (idempotent)."""
    current = getattr(engine, "checkpoint_engine", None)
    if type(current) is cls and current.algorithm == algorithm:
        return current
    adapter = cls(algorithm)
    engine.checkpoint_engine = adapter
    return adapter


def _stage_family(stage: int) -> str:
    # ZeRO 1 and 2 share one optimizer-state format; 0 keeps it in the model file; 3 partitions the model too.
    return {0: "no ZeRO", 1: "ZeRO 1/2", 2: "ZeRO 1/2", 3: "ZeRO 3"}.get(stage, f"ZeRO {stage}")


class DeepSpeedBackend:
    """Saves and loads one DeepSpeed engine's state through DeepSpeed's own checkpoint code."""

    engine_name = "deepspeed"

    def __init__(
        self,
        engine: DeepSpeedEngine,
        algorithm: str,
        adapter_cls: type[HashingCheckpointEngine] = HashingCheckpointEngine,
        *,
        signing_key: SigningKey | None = None,
    ) -> None:
        self.engine = engine
        self.signing_key = signing_key
        """Signs the universal form a reshard writes, and is required of one it reuses."""
        self.adapter = install_checkpoint_engine(engine, algorithm, adapter_cls)
        self._reshard_from: Manifest | None = None
        """The manifest of the folder :meth:`check_compatible` accepted at another world size (then :meth:`load`
        reshards it), else None."""

    @property
    def copies_files_on_save(self) -> bool:
        """DeepSpeed's save copies the NVMe swap folder of an offloaded optimizer into the checkpoint."""
        return bool(self.engine.zero_nvme_offload_optimizer())

    @property
    def zero_stage(self) -> int:
        return int(self.engine.zero_optimization_stage())

    def estimate_bytes(self) -> int:
        """All ranks' files together, for the first save's disk check: weights + fp32 master + 2 Adam moments."""
        total = 0
        for p in self.engine.module.parameters():
            numel = getattr(p, "ds_numel", p.numel())
            total += numel * (p.element_size() + 12)
        return total

    def write(self, root: Path, staging: Path) -> tuple[list[FileRecord], list[str]]:
        self.engine.save_checkpoint(str(root), tag=staging.name, client_state={}, save_latest=False)
        return list(self.adapter.records), list(self.adapter.errors)

    def stage(self, root: Path, staging: Path, stager: HostStager) -> tuple[list[StagedFile], list[str]]:
        """DeepSpeed's save with every file copied to host buffers instead of written (collective on
        the training group, like :meth:`write`); the files are written later by the background writer."""
        adapter = StagingCheckpointEngine(self.adapter.algorithm)
        adapter.stager = stager
        previous, self.engine.checkpoint_engine = self.engine.checkpoint_engine, adapter
        try:
            self.engine.save_checkpoint(str(root), tag=staging.name, client_state={}, save_latest=False)
        finally:
            self.engine.checkpoint_engine = previous
        return adapter.staged, adapter.errors

    def check_compatible(
        self, manifest: Manifest, folder: Path, *, world_size: int, load_optimizer_states: bool
    ) -> None:
        if manifest.engine != self.engine_name:
            raise IncompatibleCheckpointError(
                f"{folder} was written by a plain torch model ({manifest.engine}), not DeepSpeed; load it with "
                f"the same kind of model, or start from its weights"
            )
        if _stage_family(manifest.zero_stage) != _stage_family(self.zero_stage):
            raise IncompatibleCheckpointError(
                f"{folder} was saved with {_stage_family(manifest.zero_stage)} (stage {manifest.zero_stage}), this job "
                f"uses stage {self.zero_stage}; resume with deepspeed.zero_optimization.stage={manifest.zero_stage}, "
                f"or consolidate it (seo-dist consolidate {folder} --out DIR) and start from model.pretrained=DIR"
            )
        partitioned = manifest.zero_stage >= 3 or (manifest.zero_stage >= 1 and load_optimizer_states)
        self._reshard_from = None
        if partitioned and manifest.world_size != world_size:
            # another world size with partitioned state: loaded through DeepSpeed's universal checkpoint
            from seo_dist.checkpoint.reshard import check_reshardable

            check_reshardable(manifest, folder, world_size=world_size, precision=self._precision())
            self._reshard_from = manifest

    def _precision(self) -> str:
        return "bf16" if self.engine.bfloat16_enabled() else "fp16" if self.engine.fp16_enabled() else "fp32"

    def load(
        self, folder: Path, *, load_optimizer_states: bool = True, load_lr_scheduler_states: bool = True
    ) -> dict[str, Any]:
        if self._reshard_from is not None:  # set by check_compatible for this folder
            from seo_dist.checkpoint.reshard import load_resharded

            return load_resharded(
                self.engine,
                folder,
                self._reshard_from,
                algorithm=self.adapter.algorithm,
                key=self.signing_key,
                load_optimizer_states=load_optimizer_states,
                load_lr_scheduler_states=load_lr_scheduler_states,
            )
        load_path, client_state = self.engine.load_checkpoint(
            str(folder.parent),
            tag=folder.name,
            load_optimizer_states=load_optimizer_states,
            load_lr_scheduler_states=load_lr_scheduler_states,
        )
        if load_path is None:
            raise CheckpointError(f"DeepSpeed found no model state files in {folder}")
        return {"client_state": client_state}
