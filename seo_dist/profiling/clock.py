"""Two clocks behind one interface: host ``perf_counter`` and CUDA events.

A mark is taken at every phase boundary; marks are turned into seconds only in
:meth:`Clock.elapsed`, which the profiler calls at the log interval after one
:meth:`Clock.sync`. On CUDA that is what keeps the hooks free of per-step
synchronisation: an event is recorded on the current stream and read back later.

On CUDA the times are those of the device's timeline. A phase in which the host works
while the device is still busy with earlier kernels (data loading that overlaps compute)
measures close to zero, which is the useful answer: it did not stall the device.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch


class Clock(Protocol):
    def mark(self) -> Any:
        """A point in time (cheap; never blocks)."""

    def sync(self) -> None:
        """Wait until every mark taken so far can be read."""

    def elapsed(self, start: Any, end: Any) -> float:
        """Seconds between two marks; only valid after :meth:`sync`."""


class HostClock:
    """``time.perf_counter``: marks are floats, nothing to wait for."""

    __slots__ = ()

    def mark(self) -> float:
        return time.perf_counter()

    def sync(self) -> None:
        return None

    def elapsed(self, start: float, end: float) -> float:
        return end - start


class CudaEventClock:
    """CUDA events with timing, recorded on the current stream of ``device``."""

    __slots__ = ("_last", "device")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._last: Any = None

    def mark(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        self._last = event
        return event

    def sync(self) -> None:
        # Events complete in stream order, so waiting for the newest one is enough.
        if self._last is not None:
            self._last.synchronize()

    def elapsed(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0


def clock_for(device: torch.device) -> Clock:
    return CudaEventClock(device) if device.type == "cuda" else HostClock()
