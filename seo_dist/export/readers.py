"""Where each full tensor of a sharded checkpoint lives: a plan of byte ranges, no tensor data read.

A reader turns a checkpoint folder into :class:`ModelWeights`: for every tensor of the model, its name,
shape, dtype and the list of :class:`Piece` (file, byte offset, element count) that, concatenated, are
its elements in row-major order. The writer streams those pieces; nothing here allocates tensor memory.

Readers are pluggable (:data:`READERS`): :class:`DeepSpeedZeroReader` handles ZeRO stages 1-3 at any
data-parallel world size; the torch-native FSDP engine will add its own.

DeepSpeed's layout (see ``deepspeed/utils/zero_to_fp32.py``, which this mirrors without its copies):

- ZeRO 1/2: per parameter group, the group's parameters are flattened one after another (plus optional
  per-parameter alignment padding) and the flat vector is split into equal contiguous partitions, one per
  rank: ``single_partition_of_fp32_groups[g]`` in rank r's optim file. A parameter may straddle ranks.
- ZeRO 3: every parameter is split on its own into ``ceil(numel / world)`` elements per rank (the last
  rank padded); rank r's ``fp32_flat_groups`` are its partitions of all parameters, in order.
- Frozen parameters are not in the optimizer: ``frozen_param_fragments`` in the model-state file(s).
- Tied parameters appear once; ``shared_params`` maps each alias to the name that holds the data.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from seo_dist.export.dtypes import DType
from seo_dist.export.errors import CorruptCheckpointError, NotACheckpointError, UnsupportedCheckpointError
from seo_dist.export.torchzip import TensorRef, load_lazy, opaque_value

ZERO12_MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_MODEL_STATES = "zero_pp_rank_{rank}_mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
"""The fp32 partitions of rank ``rank`` (a ``bf16_`` prefix when DeepSpeed's bf16 optimizer wrote them)."""
_OPTIM_STATES = re.compile(r"^(?:.*_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of ``numel`` consecutive elements of ``dtype`` at ``byte_offset`` in ``file``."""

    file: Path
    byte_offset: int
    numel: int
    dtype: DType


@dataclass(frozen=True, slots=True)
class TensorSource:
    """One full tensor of the model and where its elements are."""

    name: str
    shape: tuple[int, ...]
    dtype: DType
    pieces: tuple[Piece, ...]
    kind: Literal["param", "frozen", "buffer"]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ModelWeights:
    """Every tensor of a checkpoint's model, in the model's ``state_dict`` order, as byte ranges."""

    tensors: list[TensorSource]
    aliases: dict[str, str] = field(default_factory=dict)
    """Tied parameters: alias name -> the name in ``tensors`` that holds the data (``lm_head.weight`` ->
    ``transformer.wte.weight`` for GPT-2)."""
    source_format: str = "deepspeed"
    zero_stage: int = 0
    world_size: int = 1


class CheckpointReader(Protocol):
    """Turns one kind of checkpoint folder into :class:`ModelWeights`."""

    name: str

    def detect(self, folder: Path) -> bool:
        """True when ``folder`` looks like this reader's kind of checkpoint (cheap: names only)."""
        ...

    def read(self, folder: Path) -> ModelWeights: ...


class FlatView:
    """Contiguous 1-D tensors seen as one concatenated vector, sliced into pieces without copying."""

    def __init__(self, refs: list[TensorRef], label: str) -> None:
        for ref in refs:
            if not ref.is_contiguous:
                raise UnsupportedCheckpointError(
                    f"{label}: a saved tensor is not contiguous (shape {ref.shape}, stride {ref.stride})"
                )
        if len({ref.dtype for ref in refs}) > 1:
            raise CorruptCheckpointError(label, f"partitions of one tensor differ in dtype: {[r.dtype for r in refs]}")
        self.refs, self.label = refs, label
        self.starts = [0]
        for ref in refs:
            self.starts.append(self.starts[-1] + ref.numel)

    @property
    def numel(self) -> int:
        return self.starts[-1]

    def pieces(self, start: int, length: int) -> list[Piece]:
        if start < 0 or length < 0 or start + length > self.numel:
            raise CorruptCheckpointError(
                self.label, f"elements [{start}, {start + length}) requested from partitions holding {self.numel}"
            )
        out = []
        end = start + length
        i = bisect.bisect_right(self.starts, start) - 1
        while start < end:
            ref = self.refs[i]
            local = start - self.starts[i]
            n = min(end, self.starts[i + 1]) - start
            if n > 0:
                byte_start, _ = ref.byte_range()
                out.append(Piece(ref.storage.file, byte_start + local * ref.dtype.itemsize, n, ref.dtype))
            start += n
            i += 1
        return out


def _take(pieces: list[Piece], numel: int) -> list[Piece]:
    """The first ``numel`` elements of a list of pieces (drops ZeRO-3's tail padding)."""
    out = []
    for p in pieces:
        if numel <= 0:
            break
        out.append(p if p.numel <= numel else Piece(p.file, p.byte_offset, numel, p.dtype))
        numel -= p.numel
    return out


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value)


def _get(obj: Any, key: str, label: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise CorruptCheckpointError(label, f"no {key!r} entry: not a DeepSpeed ZeRO file, or damaged")
    return obj[key]


class DeepSpeedZeroReader:
    """DeepSpeed ZeRO 1, 2 and 3 checkpoints (``engine.save_checkpoint``), any data-parallel world size."""

    name = "deepspeed"

    def optim_files(self, folder: Path) -> list[Path]:
        found = []
        for path in folder.iterdir():
            m = _OPTIM_STATES.match(path.name)
            if m:
                if m.group(2) != "00":
                    raise UnsupportedCheckpointError(
                        f"{path.name}: tensor/pipeline-parallel shards (mp_rank "
                        f"{m.group(2)}) are not supported; only data parallel ZeRO"
                    )
                found.append((int(m.group(1)), path))
        found.sort()
        for expected, (rank, path) in enumerate(found):
            if rank != expected:
                name = path.name.replace(f"zero_pp_rank_{rank}_", f"zero_pp_rank_{expected}_")
                raise CorruptCheckpointError(name, "missing (the optimizer shards of the ranks have a gap)")
        return [p for _, p in found]

    def detect(self, folder: Path) -> bool:
        return any(_OPTIM_STATES.match(p.name) for p in folder.iterdir()) or (folder / ZERO12_MODEL_STATES).exists()

    def read(self, folder: Path) -> ModelWeights:
        optim_files = self.optim_files(folder)
        if not optim_files:
            raise UnsupportedCheckpointError(
                f"{folder}: no ZeRO optimizer shards (*zero_pp_rank_*_optim_states.pt); "
                "only ZeRO stage 1, 2 and 3 checkpoints can be consolidated"
            )
        optim = [self._optimizer_state(p) for p in optim_files]
        label0 = optim_files[0].name
        stage = opaque_value(_get(optim[0], "zero_stage", label0))
        if not isinstance(stage, int) or stage not in (1, 2, 3):
            raise UnsupportedCheckpointError(f"{label0}: ZeRO stage {stage!r} is not supported (1, 2 or 3)")
        count = _get(optim[0], "partition_count", label0)
        world = max(int(c) for c in count) if isinstance(count, (list, tuple)) else int(count)
        if world != len(optim_files):
            name = OPTIM_STATES.format(rank=len(optim_files)) if world > len(optim_files) else label0
            raise CorruptCheckpointError(
                name, f"the checkpoint was saved by {world} ranks but {len(optim_files)} optimizer shards are present"
            )
        model_names = [ZERO12_MODEL_STATES] if stage < 3 else [ZERO3_MODEL_STATES.format(rank=r) for r in range(world)]
        model_states = []
        for name in model_names:
            if not (folder / name).is_file():
                raise CorruptCheckpointError(name, "missing")
            model_states.append(load_lazy(folder / name, name))
        key = "single_partition_of_fp32_groups" if stage < 3 else "fp32_flat_groups"
        groups = []
        for path, osd in zip(optim_files, optim, strict=True):
            g = _get(osd, key, path.name)
            if not isinstance(g, list) or not all(isinstance(t, TensorRef) for t in g):
                raise CorruptCheckpointError(path.name, f"{key!r} is not a list of tensors")
            groups.append(g)
        ms0 = model_states[0]
        param_shapes = _get(ms0, "param_shapes", model_names[0])
        if stage < 3:
            tensors = self._zero12_params(param_shapes, groups, optim[0].get("param_alignment_paddings"), optim_files)
        else:
            tensors = self._zero3_params(param_shapes, groups, optim_files)
        tensors.update(self._frozen_params(model_states, model_names, stage))
        tensors.update(self._buffers(ms0, model_names[0]))
        shared = ms0.get("shared_params") or {}
        aliases = {str(a): str(s) for a, s in shared.items() if s in tensors and a not in tensors}
        ordered = self._in_module_order(tensors, aliases, ms0, model_names[0], stage)
        return ModelWeights(
            tensors=ordered, aliases=aliases, source_format=self.name, zero_stage=stage, world_size=world
        )

    @staticmethod
    def _optimizer_state(path: Path) -> dict[str, Any]:
        sd = load_lazy(path, path.name)
        osd = _get(sd, "optimizer_state_dict", path.name)
        if not isinstance(osd, dict):
            raise CorruptCheckpointError(path.name, "'optimizer_state_dict' is not a dict")
        return osd

    @staticmethod
    def _zero12_params(
        param_shapes: Any, groups: list[list[TensorRef]], paddings: Any, optim_files: list[Path]
    ) -> dict[str, TensorSource]:
        world = len(groups)
        label = optim_files[0].name
        if not isinstance(param_shapes, list) or any(len(g) != len(param_shapes) for g in groups):
            raise CorruptCheckpointError(
                label,
                f"{len(groups[0])} parameter groups in the optimizer shards, {len(param_shapes)} in the model states",
            )
        out: dict[str, TensorSource] = {}
        align = 2 * world  # ZeRO-2 pads each group to a multiple of 2 x world (see zero_to_fp32)
        for g, shapes in enumerate(param_shapes):
            view = FlatView([groups[r][g] for r in range(world)], label)
            pads = paddings[g] if isinstance(paddings, list) and g < len(paddings) else None
            if pads is not None and len(pads) != len(shapes):
                raise CorruptCheckpointError(
                    label, f"group {g}: {len(pads)} alignment paddings for {len(shapes)} parameters"
                )
            offset = 0
            for i, (name, shape) in enumerate(shapes.items()):
                shape = _shape(shape)
                n = math.prod(shape)
                out[name] = TensorSource(name, shape, view.refs[0].dtype, tuple(view.pieces(offset, n)), "param")
                offset += n + (int(pads[i]) if pads is not None else 0)
            if align * math.ceil(offset / align) != align * math.ceil(view.numel / align):
                raise CorruptCheckpointError(
                    label,
                    f"group {g}: parameters use {offset} elements of the {view.numel} "
                    "in the fp32 partitions (model states and optimizer shards disagree)",
                )
        return out

    @staticmethod
    def _zero3_params(
        param_shapes: Any, groups: list[list[TensorRef]], optim_files: list[Path]
    ) -> dict[str, TensorSource]:
        world = len(groups)
        shapes = {name: _shape(s) for group in param_shapes for name, s in group.items()}
        views = [FlatView(groups[r], optim_files[r].name) for r in range(world)]
        if len({v.numel for v in views}) != 1:
            raise CorruptCheckpointError(
                optim_files[0].name, f"ranks hold different numbers of elements: {[v.numel for v in views]}"
            )
        out: dict[str, TensorSource] = {}
        offset = 0
        for name, shape in shapes.items():
            n = math.prod(shape)
            per_rank = math.ceil(n / world)
            pieces = [p for v in views for p in v.pieces(offset, per_rank)]
            out[name] = TensorSource(name, shape, views[0].refs[0].dtype, tuple(_take(pieces, n)), "param")
            offset += per_rank
        if offset != views[0].numel:
            raise CorruptCheckpointError(
                optim_files[0].name,
                f"parameters use {offset} elements per rank, the fp32 partitions hold {views[0].numel}",
            )
        return out

    @staticmethod
    def _frozen_params(model_states: list[Any], names: list[str], stage: int) -> dict[str, TensorSource]:
        shapes = model_states[0].get("frozen_param_shapes") or {}
        out: dict[str, TensorSource] = {}
        for name, shape in shapes.items():
            shape = _shape(shape)
            n = math.prod(shape)
            frags = []
            for ms, label in zip(model_states, names, strict=True):
                frag = (ms.get("frozen_param_fragments") or {}).get(name)
                if not isinstance(frag, TensorRef):
                    raise CorruptCheckpointError(label, f"frozen parameter {name} has no saved fragment")
                frags.append(frag)
            view = FlatView(frags, names[0])
            if stage < 3 and view.numel != n:
                raise CorruptCheckpointError(
                    names[0], f"frozen parameter {name}: {view.numel} elements saved, shape {shape}"
                )
            out[name] = TensorSource(name, shape, view.refs[0].dtype, tuple(view.pieces(0, n)), "frozen")
        return out

    @staticmethod
    def _buffers(ms0: Any, label: str) -> dict[str, TensorSource]:
        module = _get(ms0, "module", label)
        out: dict[str, TensorSource] = {}
        for name in ms0.get("buffer_names") or []:
            ref = module.get(name)
            if not isinstance(ref, TensorRef):
                raise CorruptCheckpointError(label, f"buffer {name} is listed but not saved")
            out[name] = TensorSource(
                name, ref.shape, ref.dtype, tuple(FlatView([ref], label).pieces(0, ref.numel)), "buffer"
            )
        return out

    @staticmethod
    def _in_module_order(
        tensors: dict[str, TensorSource], aliases: dict[str, str], ms0: Any, label: str, stage: int
    ) -> list[TensorSource]:
        """The tensors in the order of the model's ``state_dict``; every tensor entry of it must be accounted for.

        ZeRO-1 does not list frozen parameters at all (DeepSpeed saves ``frozen_param_*`` only from stage 2
        on, and zero_to_fp32 drops them); with ZeRO 1/2 the model-state file holds every full tensor, so such
        an entry is taken from there. Under ZeRO-3 those entries are empty placeholders: a gap is an error.
        """
        module = _get(ms0, "module", label)
        ordered = []
        for name, value in module.items():
            if name in tensors:
                ordered.append(tensors[name])
            elif isinstance(value, TensorRef) and name not in aliases:
                if stage == 3 or value.numel == 0:
                    raise CorruptCheckpointError(
                        label,
                        f"{name} is in the model's state dict but in no parameter, frozen-parameter or buffer list",
                    )
                pieces = tuple(FlatView([value], label).pieces(0, value.numel))
                ordered.append(TensorSource(name, value.shape, value.dtype, pieces, "frozen"))
        seen = {t.name for t in ordered}
        return ordered + [t for t in tensors.values() if t.name not in seen]


READERS: list[CheckpointReader] = [DeepSpeedZeroReader()]
"""Tried in order; the first whose ``detect`` accepts the folder reads it."""


def find_reader(folder: Path) -> CheckpointReader | None:
    return next((r for r in READERS if r.detect(folder)), None)


def read_weights(folder: Path) -> ModelWeights:
    """The plan of every tensor in the checkpoint ``folder``."""
    reader = find_reader(folder)
    if reader is None:
        raise NotACheckpointError(f"{folder}: no model files of a known checkpoint format (DeepSpeed ZeRO)")
    return reader.read(folder)
