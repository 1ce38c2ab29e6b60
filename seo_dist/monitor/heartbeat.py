"""The training thread's side of the heartbeat: where this rank is, updated in a few microseconds.

The training thread only replaces one tuple (``step``, ``phase``, a progress counter and the monotonic
time); the monitor thread reads it (one attribute read is atomic under the GIL) and publishes it. No lock,
no I/O, no allocation beyond the tuple.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

STARTUP = "startup"
FIRST_STEP = "first_step"
STEP = "step"
VALIDATION = "validation"
CHECKPOINT_SAVE = "checkpoint_save"
LOAD = "load"
FINAL_EXPORT = "final_export"
FINISH = "finish"
EXITED = "exited"
"""Published when the monitor stops: the rank ended on purpose and is no longer watched."""


class Beat(NamedTuple):
    step: int
    phase: str
    seq: int
    """Bumped on every update: a changed value is progress."""
    at: float
    """``time.monotonic()`` of the update."""


class Heartbeat:
    """This rank's progress record. ``beat(step)`` at each step, ``phase(name)`` around slow phases."""

    __slots__ = ("current",)

    def __init__(self, step: int = 0, phase: str = STARTUP) -> None:
        self.current = Beat(step, phase, 0, time.monotonic())

    def beat(self, step: int, phase: str = STEP) -> None:
        """Progress: ``step`` steps are done and the rank is now in ``phase``."""
        self.current = Beat(step, phase, self.current.seq + 1, time.monotonic())

    def phase(self, phase: str) -> None:
        """Enter ``phase`` at the current step (also progress)."""
        c = self.current
        self.current = Beat(c.step, phase, c.seq + 1, time.monotonic())

    def age_s(self) -> float:
        """Seconds since the last update."""
        return time.monotonic() - self.current.at

    @contextmanager
    def during(self, phase: str) -> Iterator[None]:
        """``phase`` for the duration of the block, then back to the phase before it (progress both times)."""
        before = self.current.phase
        self.phase(phase)
        try:
            yield
        finally:
            self.phase(before)
