"""``python -m seo_dist.train`` that counts, per optimizer step, what seo_dist's own code does in the training
loop that waits for the device or for the other ranks (for tests/test_step_syncs.py).

Counted: ``Tensor.item/tolist/cpu/numpy/__bool__/__float__/__int__`` and the ``torch.distributed``
collectives, when called directly from a ``seo_dist`` module while ``SEOTrainer._train_loop`` runs, outside
validation and checkpoint saves (their collectives are at fixed steps by design), on the training thread. ``seo_dist.training.flags``
is left out: its all-reduce is host-only by construction (a CPU tensor on a gloo group, read one step later).
On this CPU machine a device read cannot be told from a host read, so every such call is counted: what this
measures is where seo_dist asks for values, which is where an accelerator would stall. Each rank writes
``rank<R>.json`` (``{step: {call: count}}``) into ``$SYNC_COUNT_DIR``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path

import torch
import torch.distributed as tdist

from seo_dist.train import main
from seo_dist.trainer import SEOTrainer
from seo_dist.training import step as step_module

EXEMPT = ("seo_dist.training.flags",)
TENSOR_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list", "barrier")

MAIN_THREAD = threading.get_ident()
"""The training thread: the background checkpoint writer's commit collectives are not the loop's."""
state = {"active": 0, "step": -1}
counts: dict[int, Counter] = defaultdict(Counter)


def _counted(name: str, fn):  # noqa: ANN001, ANN202
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if state["active"] > 0 and threading.get_ident() == MAIN_THREAD:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("seo_dist") and not caller.startswith(EXEMPT):
                counts[state["step"]][f"{caller}:{name}"] += 1
        return fn(*args, **kwargs)

    return wrapper


def _scoped(fn, delta: int):  # noqa: ANN001, ANN202
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        state["active"] += delta
        try:
            return fn(*args, **kwargs)
        finally:
            state["active"] -= delta

    return wrapper


def _track_step(fn):  # noqa: ANN001, ANN202
    @functools.wraps(fn)
    def wrapper(self, step: int):  # noqa: ANN001, ANN202
        state["step"] = step + 1
        return fn(self, step)

    return wrapper


def install() -> None:
    for name in TENSOR_READS:
        setattr(torch.Tensor, name, _counted(name, getattr(torch.Tensor, name)))
    for name in COLLECTIVES:
        setattr(tdist, name, _counted(name, getattr(tdist, name)))
    SEOTrainer._train_loop = _scoped(SEOTrainer._train_loop, +1)
    SEOTrainer.evaluate = _scoped(SEOTrainer.evaluate, -1)
    SEOTrainer._save = _scoped(SEOTrainer._save, -1)
    step_module.TrainStep.__call__ = _track_step(step_module.TrainStep.__call__)


def dump() -> None:
    out = Path(os.environ["SYNC_COUNT_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    (out / f"rank{rank}.json").write_text(json.dumps({str(k): dict(v) for k, v in counts.items()}, indent=1))


if __name__ == "__main__":
    install()
    rc = main()
    dump()
    sys.exit(rc)
