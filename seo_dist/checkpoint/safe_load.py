"""The one way seo_dist unpickles a checkpoint file: ``torch.load(weights_only=True)`` plus a short allowlist.

A ``torch.save`` file is a pickle, and a plain ``torch.load`` runs whatever callable the pickle names (a
crafted ``seo_dist_rank_00001.pt`` could call ``os.system``). With ``weights_only=True`` torch's restricted
unpickler builds tensors, storages and plain containers (dict, list, tuple, OrderedDict, str, numbers, None)
and nothing else, except the classes added here. The allowlist holds exactly what DeepSpeed's ZeRO 1/2/3
files contain (fp32 and bf16, found by loading real checkpoints of each):

- ``deepspeed.runtime.fp16.loss_scaler.LossScaler``: the optimizer's loss scaler (a plain attribute bag);
- ``deepspeed.runtime.zero.config.ZeroStageEnum``: the ZeRO stage recorded in the optimizer state;
- ``deepspeed.utils.tensor_fragment.fragment_address``: ZeRO 1/2 parameter-slice mappings (a dataclass).

An allowlisted class is instantiated without running its ``__init__`` (its attributes are set from the pickle).
seo_dist's own rank-state file holds plain types only (:mod:`.rng` stores numpy's RNG state as a tensor);
files written before that held a numpy array, so ``rank_state=True`` also admits numpy's array reconstruction
(no callable beyond building an array of numbers).

Anything else is refused with :class:`~.errors.UnsafeCheckpointError` naming the file and the class; the
loader treats it like a damaged file (falls back to the previous checkpoint). Nothing from the file runs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import re
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import torch

from seo_dist.checkpoint.errors import UnsafeCheckpointError

DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
"""What DeepSpeed's model and optimizer state files contain besides tensors and plain containers."""
LEGACY_RANK_STATE_GLOBALS = (
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.UInt32DType",
)
"""numpy's RNG state as older seo_dist rank-state files stored it (an array of uint32)."""

_REFUSED = (
    re.compile(r"(?i)unsupported global:? (?:GLOBAL )?([\w.]+)"),
    re.compile(r"but got <class '([\w.]+)'>"),
    re.compile(r"Unsupported operand (\d+)"),
)


def _resolve(name: str) -> Any | None:
    """The object a dotted name refers to, or None when its module is not installed (numpy 1 vs 2)."""
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


@cache
def _allowlist(names: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(obj for obj in (_resolve(n) for n in names) if obj is not None)


def _admitted(allowed: Iterable[Any]) -> contextlib.AbstractContextManager[None]:
    """torch's ``safe_globals`` for the classes not admitted yet. Its list is process-wide and its exit removes
    what its entry added, so a nested block naming the same classes would take them away from the outer one."""
    present = set(map(id, torch.serialization.get_safe_globals()))
    return torch.serialization.safe_globals([g for g in allowed if id(g) not in present])


def _refused_name(error: Exception) -> str | None:
    text = str(error)
    for pattern in _REFUSED:
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None


def _refusal(error: pickle.UnpicklingError, where: str, what: str) -> UnsafeCheckpointError:
    """``WHERE refused to unpickle the object NAME: ...`` from torch's weights-only refusal."""
    name = _refused_name(error)
    obj = f"the object {name}" if name else "an object"
    return UnsafeCheckpointError(
        f"{where}refused to unpickle {obj}: not one a checkpoint holds (tensors, plain data and DeepSpeed's state "
        f"classes); nothing from the file was run. Treat {what} as damaged or hostile"
    )


def safe_torch_load(
    path: str | os.PathLike[str],
    map_location: str | torch.device | Callable[..., Any] | None = "cpu",
    *,
    allow: Iterable[str] = DEEPSPEED_GLOBALS,
    mmap: bool | None = None,
) -> Any:
    """``torch.load(path, weights_only=True)`` admitting the classes named in ``allow`` (dotted names) only.

    Raises :class:`UnsafeCheckpointError` ("FILE: refuses to load CLASS ...") when the pickle names anything
    else; other damage (a truncated zip) raises torch's own error.
    """
    allowed = _allowlist(tuple(allow))
    try:
        with _admitted(allowed):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise _refusal(e, f"{Path(path).name}: ", "the file") from None


FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
"""torch's switch that makes every ``torch.load`` restricted, even one that passes ``weights_only=False``."""


@contextlib.contextmanager
def restricted_unpickling(allow: Iterable[str] = DEEPSPEED_GLOBALS) -> Iterator[None]:
    """For code that calls ``torch.load`` itself (DeepSpeed's universal-checkpoint converter and loader ask
    for ``weights_only=False``): every load inside the block is restricted to tensors, plain data and
    ``allow``, and a refused object raises :class:`UnsafeCheckpointError`. Process-wide while it lasts: the
    environment variable is read by every ``torch.load`` call, from any thread."""
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with _admitted(_allowlist(tuple(allow))):
            yield
    except pickle.UnpicklingError as e:
        raise _refusal(e, "while converting or loading a universal checkpoint: ", "the checkpoint") from None
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous


def load_rank_state_file(path: str | os.PathLike[str]) -> Any:
    """A seo_dist rank-state file (plain types; older files also hold a numpy array)."""
    return safe_torch_load(path, "cpu", allow=LEGACY_RANK_STATE_GLOBALS)


def load_torch_state_file(path: str | os.PathLike[str]) -> Any:
    """The single file of a plain ``torch.nn.Module`` checkpoint (model, optimizer and scheduler state dicts)."""
    return safe_torch_load(path, "cpu", allow=())
