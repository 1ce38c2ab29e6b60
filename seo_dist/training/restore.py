"""The trainer state a resumed rank continues with, from a loaded checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from seo_dist import dist


def trainer_state(loaded: Mapping[str, Any]) -> dict[str, Any]:
    """This rank's trainer state (``tokens_seen``, ``loader``) from ``CheckpointManager.load_checkpoint``'s result.

    Collective. At the world size that saved it each rank has its own. At another world size (allowed where
    no state is partitioned: ZeRO stage 0, or weights without optimizer state) every rank takes rank 0's:
    the step, tokens seen and data position are the same on every rank, and a rank the saving job did not
    have has no state file. The loader maps that position to the new world size.
    """
    state = loaded["rank_state"]
    saved_world = loaded["manifest"].world_size
    if saved_world != dist.get_world_size():
        state = dist.broadcast_object(state if dist.is_rank_zero() else None)
    if state is None:
        raise RuntimeError(
            f"checkpoint {loaded['path']} holds no trainer state for rank {dist.get_rank()} (saved without "
            f"rank_state); resume it with the code that wrote it, or start from its weights (model.pretrained)"
        )
    return dict(state)
