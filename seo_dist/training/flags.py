"""Host flags every rank must act on at the same step (a stop request, a failed background save).

Each step, every rank hands in its flags to a small all-reduce on a CPU (gloo) group of their own, without
waiting for it; the next step waits for that result (by then long finished) and every rank acts on it there.
No device value is involved, so the accelerator's launch queue is never drained for the flags, and the ranks
agree one step after a flag was raised, at the same step everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from seo_dist import dist


@dataclass(frozen=True, slots=True)
class AgreedFlags:
    stop: bool = False
    """Some rank was asked to stop (SIGTERM/SIGINT)."""
    checkpoint_failed: bool = False
    """Some rank's background checkpoint save failed."""


class FlagAgreement:
    """Created on every rank (collective: it creates a gloo group); :meth:`exchange` once per step on every
    rank; :meth:`close` on every rank when the loop ends."""

    def __init__(self) -> None:
        import torch.distributed as tdist

        self._distributed = dist.is_initialized() and dist.get_world_size() > 1
        self._group: Any = tdist.new_group(backend="gloo") if self._distributed else None
        self._pending: tuple[Any, torch.Tensor] | None = None

    def exchange(self, *, stop: bool, checkpoint_failed: bool) -> AgreedFlags:
        """Hand in this rank's flags of this step; returns what all ranks handed in at the previous call."""
        agreed = self._wait()
        flags = torch.tensor([float(stop), float(checkpoint_failed)], dtype=torch.float32)
        if not self._distributed:
            self._pending = (None, flags)
            return agreed
        import torch.distributed as tdist

        work = tdist.all_reduce(flags, group=self._group, async_op=True)
        self._pending = (work, flags)
        return agreed

    def _wait(self) -> AgreedFlags:
        if self._pending is None:
            return AgreedFlags()
        work, flags = self._pending
        self._pending = None
        if work is not None:
            work.wait()
        stop, failed = flags.tolist()  # a CPU tensor: no device synchronisation
        return AgreedFlags(stop=stop > 0, checkpoint_failed=failed > 0)

    def close(self) -> AgreedFlags:
        """Wait for the last exchange (every rank) and return it."""
        return self._wait()
