"""Python's garbage collector on a fixed schedule during training, the same step on every rank.

CPython collects whenever allocations outnumber deallocations by a threshold; its full (oldest-generation)
collections scan every tracked object, and a training process holds hundreds of thousands of them (torch,
DeepSpeed, transformers, the sinks): ~120 ms each on the 2-core VM, about once a minute, at a different
moment on every rank, so the others wait for it at the next collective. torchtitan's answer, taken here: the
objects made during start-up are frozen (moved where no collection scans them), automatic collection is off
while the loop runs, and every ``train.gc_interval`` steps each rank collects the young generations (cycles
made by the steps since, a few ms), with a full collection every ``FULL_EVERY`` of those. ``0`` leaves the
collector as it is.
"""

from __future__ import annotations

import gc
import logging
import time
from types import TracebackType

log = logging.getLogger(__name__)

FULL_EVERY = 10
"""Every this many scheduled collections is a full one (objects that outlived a young collection)."""


class ScheduledGC:
    """Context manager around the training loop; call :meth:`step` after every optimizer step."""

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.collections = 0
        self.seconds = 0.0
        """Time spent in the scheduled collections (the start-up one excluded)."""
        self._was_enabled = gc.isenabled()
        self._froze = False

    def __enter__(self) -> ScheduledGC:
        if self.interval:
            self._was_enabled = gc.isenabled()
            gc.collect()
            if gc.get_freeze_count() == 0:  # objects someone else froze stay theirs to unfreeze
                gc.freeze()
                self._froze = True
            gc.disable()
        return self

    def step(self, step: int) -> None:
        """``step`` optimizer steps are done."""
        if not self.interval or step % self.interval:
            return
        start = time.perf_counter()
        self.collections += 1
        gc.collect(2 if self.collections % FULL_EVERY == 0 else 1)
        self.seconds += time.perf_counter() - start

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.interval:
            if self._froze:
                gc.unfreeze()
                self._froze = False
            if self._was_enabled:
                gc.enable()
            log.debug("scheduled GC: %d collections, %.3f s", self.collections, self.seconds)
