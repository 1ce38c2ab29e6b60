"""torch.profiler windows written as Chrome traces (TensorBoard's profiler plugin, Perfetto, chrome://tracing).

The schedule follows ``torch.profiler.schedule``: skip ``wait`` steps, profile ``warmup``
steps without keeping them (the first profiled steps carry the profiler's own start-up
cost), record ``active`` steps, and do that ``repeat`` times (0: for the whole run). Each
rank writes its own file, ``rank<R>.<timestamp>.pt.trace.json.gz``, into the trace folder.
Once the last window is written the profiler is stopped, so the rest of the run pays nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity


class TraceWindow:
    """One ``torch.profiler.profile`` driven by the training loop's optimizer steps."""

    def __init__(
        self,
        trace_dir: Path,
        *,
        wait: int,
        warmup: int,
        active: int,
        repeat: int,
        rank: int,
        cuda: bool,
    ) -> None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        self.trace_dir = trace_dir
        # After this many steps every window has been written (None: windows never end).
        self._steps_needed = (wait + warmup + active) * repeat if repeat > 0 else None
        self._steps = 0
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self._profiler: Any = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=repeat),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(
                str(trace_dir), worker_name=f"rank{rank}", use_gzip=True
            ),
            record_shapes=True,
            with_stack=False,
        )
        self._profiler.start()

    @property
    def running(self) -> bool:
        return self._profiler is not None

    def annotate(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A named span in the trace (``record_function``), only while the profiler runs."""
        if self._profiler is None:
            return contextlib.nullcontext()
        return torch.profiler.record_function(name)

    def step(self) -> None:
        if self._profiler is None:
            return
        self._profiler.step()
        self._steps += 1
        if self._steps_needed is not None and self._steps >= self._steps_needed:
            self.close()

    def close(self) -> None:
        if self._profiler is not None:
            profiler, self._profiler = self._profiler, None
            profiler.stop()
