"""StepProfiler: per-step timings, throughput, MFU and memory, reduced over ranks at the log interval.

The training loop wraps its phases and marks the end of each optimizer step::

    with prof.phase("data"): batch = next(it)
    with prof.phase("forward"): loss = engine(batch)
    with prof.phase("backward"): engine.backward(loss)
    with prof.phase("optimizer"): engine.step()
    prof.step_end(step)
    if step % log_interval == 0:
        metrics = prof.collect(step)        # every rank calls it: one all_gather
        tracker.log_metrics(metrics, step)  # rank 0 writes

Nothing is synchronised or communicated per step: marks are taken (host clock or CUDA
events) and only read, reduced and gathered in :meth:`StepProfiler.collect`.

A step runs from the start of its first phase to ``step_end``; time between steps
(evaluation, checkpoint saves, logging) is reported apart, as ``perf/outside_step_s``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from seo_dist import dist
from seo_dist.config import ProfilingConfig
from seo_dist.profiling.aggregate import RankSample, aggregate
from seo_dist.profiling.clock import clock_for
from seo_dist.profiling.flops import peak_tflops_for
from seo_dist.profiling.memory import CudaMemory, HostMemory, dump_memory_snapshot, start_memory_history
from seo_dist.profiling.nvml import NvmlSampler
from seo_dist.profiling.trace import TraceWindow

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; only the type checker reads it

log = logging.getLogger(__name__)

_PHASE_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Phase names whose ``perf/<name>_s`` would collide with a metric of the profiler's own.
_RESERVED_PHASES = frozenset({"step_time", "outside_step", "straggler"})
_NULL_CONTEXT = contextlib.nullcontext()
# With a long log interval, read the marks this often anyway, so CUDA events do not pile up.
_MAX_PENDING_STEPS = 1000
# Names in summary() that differ from the per-interval metric's (without its group).
_SUMMARY_NAMES = {
    "perf/step_time_s": "mean_step_time_s",
    "mem/host_rss_gb": "max_host_rss_gb",
    "mem/host_peak_rss_gb": "peak_host_rss_gb",
    "mem/device_max_allocated_gb": "peak_device_allocated_gb",
    "mem/device_max_reserved_gb": "peak_device_reserved_gb",
    "mem/alloc_retries": "alloc_retries",
    "mem/ooms": "ooms",
}


class _PhaseSpan:
    """Context manager of one phase; a plain class, cheaper than a generator-based one."""

    __slots__ = ("_annotation", "_name", "_prof", "_start")

    def __init__(self, prof: StepProfiler, name: str) -> None:
        self._prof = prof
        self._name = name
        self._annotation: Any = None

    def __enter__(self) -> None:
        prof = self._prof
        if prof._trace is not None and prof._trace.running:
            self._annotation = prof._trace.annotate(self._name)
            self._annotation.__enter__()
        self._start = start = prof._clock.mark()
        if prof._step_start is None:
            prof._step_start = start
        if prof._interval_start is None:
            prof._interval_start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        prof = self._prof
        prof._phase_marks.append((self._name, self._start, prof._clock.mark()))
        if self._annotation is not None:
            self._annotation.__exit__(*exc)


class StepProfiler:
    """Per-step profiling hooks for the training loop (see the module docstring).

    Args:
        config: the ``profiling`` section; ``enabled: false`` makes every method a no-op
            and :meth:`collect` return ``{}``.
        device: the training device; CUDA gets event timing, allocator and NVML readings.
        flops_per_token: training FLOPs per token (:func:`seo_dist.profiling.flops_per_token`).
        tokens_per_step_per_rank: tokens one rank processes per optimizer step
            (micro batch x grad accumulation x sequence length); ``step_end`` can override it.
        samples_per_step_per_rank: sequences one rank processes per optimizer step.
        trace_dir: where torch.profiler traces and out-of-memory snapshots go
            (the experiment's ``logs/traces``); required when ``config.trace`` is on.
        sync_phases: phases in which a rank may wait for slower ranks (see
            :mod:`seo_dist.profiling.aggregate`); ZeRO-3 also gathers weights in ``forward``.
        record_memory_history: record CUDA allocation stacks so that an OOM snapshot shows
            who allocated what; costs time on every allocation, so off by default.
    """

    def __init__(
        self,
        config: ProfilingConfig,
        *,
        device: torch.device,
        flops_per_token: float,
        tokens_per_step_per_rank: int,
        samples_per_step_per_rank: int,
        trace_dir: Path | None = None,
        sync_phases: Sequence[str] = ("backward",),
        record_memory_history: bool = False,
    ) -> None:
        if flops_per_token < 0:
            raise ValueError(f"StepProfiler: flops_per_token must be >= 0, got {flops_per_token}")
        if tokens_per_step_per_rank < 0 or samples_per_step_per_rank < 0:
            raise ValueError(
                "StepProfiler: tokens_per_step_per_rank and samples_per_step_per_rank must be >= 0, "
                f"got {tokens_per_step_per_rank} and {samples_per_step_per_rank}"
            )
        if config.enabled and config.trace and trace_dir is None:
            raise ValueError(
                "StepProfiler: profiling.trace is on but no trace_dir was given; pass the experiment's logs/traces"
            )
        self.config = config
        self.enabled = config.enabled
        self.device = torch.device(device)
        self.flops_per_token = float(flops_per_token)
        self.tokens_per_step_per_rank = int(tokens_per_step_per_rank)
        self.samples_per_step_per_rank = int(samples_per_step_per_rank)
        self.trace_dir = Path(trace_dir) if trace_dir is not None else None
        self.sync_phases = tuple(sync_phases)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        is_cuda = self.device.type == "cuda"
        self.device_name = torch.cuda.get_device_name(self.device) if is_cuda else "cpu"
        self.peak_tflops = config.peak_tflops if config.peak_tflops is not None else peak_tflops_for(self.device_name)
        self.oom_snapshots: list[Path] = []
        self.ooms_caught = 0

        self._clock = clock_for(self.device)
        self._trace: TraceWindow | None = None
        self._host: HostMemory | None = None
        self._device_memory: CudaMemory | None = None
        self._nvml: NvmlSampler | None = None
        self._phase_names: set[str] = set()
        # Interval state, cleared by collect(). Marks wait in the lists until _fold() reads them.
        self._phase_marks: list[tuple[str, Any, Any]] = []
        self._step_marks: list[tuple[Any, Any]] = []
        self._steps = 0
        self._step_time_s = 0.0
        self._phase_s: dict[str, float] = {}
        self._tokens = 0
        self._samples = 0
        self._interval_start: float | None = None
        # Step state.
        self._step_start: Any = None
        self._last_end: Any = None
        self._last_step: int | None = None
        # Whole-run totals, from the reduced metrics of every collect().
        self._run_by_rank: dict[int, RankSample] = {}
        if not self.enabled:
            return

        self._created = self._clock.mark()
        self._host = HostMemory()
        self._host.reset_peak()
        if is_cuda:
            self._device_memory = CudaMemory(self.device)
            self._device_memory.reset_peak()
            self._nvml = NvmlSampler(self.device)
            if record_memory_history:
                start_memory_history()
        if config.trace and trace_dir is not None:
            self._trace = TraceWindow(
                Path(trace_dir),
                wait=config.trace_wait,
                warmup=config.trace_warmup,
                active=config.trace_active,
                repeat=config.trace_repeat,
                rank=self.rank,
                cuda=is_cuda,
            )

    # ------------------------------------------------------------------ per step

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Time one phase of the current step (``data``, ``forward``, ``backward``, ``optimizer``...).

        Its mean per step is logged as ``perf/<name>_s``. Phases may repeat within a step
        (gradient accumulation): their times add up.
        """
        if not self.enabled:
            return _NULL_CONTEXT
        if name not in self._phase_names:
            if not _PHASE_NAME.fullmatch(name) or name in _RESERVED_PHASES:
                raise ValueError(
                    f"StepProfiler.phase: bad phase name {name!r}; use lower-case letters, digits and '_' "
                    f"(not {', '.join(sorted(_RESERVED_PHASES))}), e.g. 'forward'"
                )
            self._phase_names.add(name)
        return _PhaseSpan(self, name)

    def step_end(self, step: int, *, tokens: int | None = None, samples: int | None = None) -> None:
        """Mark the end of one optimizer step; ``tokens``/``samples`` override the per-step counts
        for this step (e.g. tokens that were not padding)."""
        if not self.enabled:
            return
        end = self._clock.mark()
        start = self._step_start
        if start is None:  # no phase this step: it ran since the previous step ended
            start = self._last_end if self._last_end is not None else self._created
        self._step_marks.append((start, end))
        if len(self._step_marks) >= _MAX_PENDING_STEPS:
            self._fold()
        self._tokens += self.tokens_per_step_per_rank if tokens is None else int(tokens)
        self._samples += self.samples_per_step_per_rank if samples is None else int(samples)
        self._step_start = None
        self._last_end = end
        self._last_step = step
        if self._interval_start is None:
            self._interval_start = time.perf_counter()
        if self._trace is not None:
            self._trace.step()

    # ------------------------------------------------------------------ log interval

    def collect(self, step: int) -> dict[str, float]:
        """Reduce the steps since the last call over all ranks. COLLECTIVE: every rank calls it.

        Returns the same metrics on every rank (rank 0 logs them); ``{}`` when disabled.
        Device peaks restart afterwards.
        """
        if not self.enabled:
            return {}
        self._fold()
        now = time.perf_counter()
        readings = self._host.read() if self._host is not None else {}
        if self._device_memory is not None:
            readings.update(self._device_memory.read())
        if self._nvml is not None:
            readings.update(self._nvml.sample())
        sample = RankSample(
            rank=self.rank,
            steps=self._steps,
            step_time_s=self._step_time_s,
            tokens=self._tokens,
            samples=self._samples,
            wall_s=now - self._interval_start if self._interval_start is not None else 0.0,
            phase_s=self._phase_s,
            readings=readings,
        )
        gathered = dist.all_gather_object(sample)
        metrics = aggregate(
            gathered, flops_per_token=self.flops_per_token, peak_tflops=self.peak_tflops, sync_phases=self.sync_phases
        )
        self._add_to_run(gathered)
        self._steps = self._tokens = self._samples = 0
        self._step_time_s = 0.0
        self._phase_s = {}
        if self._host is not None:
            self._host.reset_peak()
        if self._device_memory is not None:
            self._device_memory.reset_peak()
        self._interval_start = time.perf_counter()
        return metrics

    def _fold(self) -> None:
        """Turn the pending marks into seconds (one wait for the device, none on the CPU)."""
        self._clock.sync()
        elapsed = self._clock.elapsed
        for name, start, end in self._phase_marks:
            self._phase_s[name] = self._phase_s.get(name, 0.0) + elapsed(start, end)
        self._steps += len(self._step_marks)
        self._step_time_s += sum(elapsed(start, end) for start, end in self._step_marks)
        self._phase_marks.clear()
        self._step_marks.clear()

    def _add_to_run(self, gathered: Sequence[RankSample]) -> None:
        for sample in gathered:
            total = self._run_by_rank.setdefault(
                sample.rank, RankSample(rank=sample.rank, steps=0, step_time_s=0.0, tokens=0, samples=0, wall_s=0.0)
            )
            total.add(sample)

    def summary(self) -> dict[str, Any]:
        """Whole-run figures for the experiment's metadata: ``ExperimentTracker`` calls this on the profiler
        it is given as ``code_profiler`` when the run ends and stores the result as ``profiling`` in ``metadata.json``.

        The same definitions as :meth:`collect`, over every step up to the last ``collect``
        (call it at the final step): ``mean_step_time_s``, ``tokens_per_s`` (global),
        ``tokens_per_s_per_device``, ``tflops``, ``mfu``, ``<phase>_s``, ``slowest_rank``,
        peak memory. Not collective: rank 0 alone may call it. ``{}`` when disabled.
        """
        if not self.enabled:
            return {}
        out: dict[str, Any] = {
            "device": self.device_name,
            "world_size": self.world_size,
            "flops_per_token": self.flops_per_token,
            "peak_tflops": self.peak_tflops,
            "steps": max((s.steps for s in self._run_by_rank.values()), default=0),
        }
        run = aggregate(
            list(self._run_by_rank.values()),
            flops_per_token=self.flops_per_token,
            peak_tflops=self.peak_tflops,
            sync_phases=self.sync_phases,
        )
        for name, value in run.items():
            if name in _SUMMARY_NAMES:
                out[_SUMMARY_NAMES[name]] = value
            elif name.startswith("perf/") and not name.startswith("perf/step_time_s_"):
                out[name.removeprefix("perf/")] = value
        if self.ooms_caught:
            out["ooms_caught"] = self.ooms_caught
        if self.oom_snapshots:
            out["oom_snapshots"] = [str(p) for p in self.oom_snapshots]
        if self.trace_dir is not None and self.config.trace:
            out["trace_dir"] = str(self.trace_dir)
        return out

    # ------------------------------------------------------------------ failures and teardown

    @contextlib.contextmanager
    def oom_guard(self) -> Iterator[None]:
        """On ``torch.cuda.OutOfMemoryError``: dump a memory snapshot into ``trace_dir``, count it, re-raise."""
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            if self.enabled:
                self._on_oom()
            raise

    def _on_oom(self) -> None:
        self.ooms_caught += 1
        if self.device.type != "cuda":
            return
        if self.trace_dir is None:
            log.error("CUDA out of memory on rank %d; no trace_dir, so no memory snapshot was written", self.rank)
            return
        step = self._last_step + 1 if self._last_step is not None else 0
        name = f"oom_snapshot_rank{self.rank}_step{step}"
        if self.ooms_caught > 1:
            name += f"_{self.ooms_caught}"
        path = dump_memory_snapshot(self.trace_dir / f"{name}.pickle")
        if path is not None:
            self.oom_snapshots.append(path)
            log.error(
                "CUDA out of memory on rank %d at step %d; memory snapshot: %s (open at https://pytorch.org/memory_viz)",
                self.rank,
                step,
                path,
            )

    def close(self) -> None:
        """Stop the trace (writing a window still open) and NVML. Safe to call twice."""
        if self._trace is not None:
            self._trace.close()
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
