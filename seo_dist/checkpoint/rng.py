"""Random number generator states (python, numpy, torch CPU, CUDA): part of each rank's state file,
so that a resumed run draws the same dropout masks and shuffles as one that never stopped.

Stored in plain types only (tuples, ints, floats, tensors), so that the file loads with
``torch.load(weights_only=True)`` and no allowlist: numpy's Mersenne Twister key goes in as a tensor.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def _numpy_state() -> dict[str, Any]:
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "bit_generator": str(name),
        "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def _set_numpy_state(state: Any) -> None:
    if isinstance(state, dict):  # the plain form written by _numpy_state
        key = state["key"].numpy().astype(np.uint32)
        state = (state["bit_generator"], key, state["pos"], state["has_gauss"], state["gauss"])
    np.random.set_state(state)  # older files: numpy's own tuple


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only: touching the others would
        # create a CUDA context on every GPU of the node
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
