"""Turn every rank's interval readings into the metrics rank 0 logs.

Kept apart from the profiler so the arithmetic can be checked without processes.

Stragglers. In synchronous data-parallel training every rank's *step time* ends up the
same: a rank that is late makes the others wait inside the next collective (the gradient
all-reduce in backward). So the slowest rank cannot be found by step time. It is found by
*busy time*: step time minus the time spent in phases that contain such waits
(``sync_phases``, default ``backward``). The late rank has the most busy time; the others
have spent the difference waiting. ``perf/straggler_s`` is by how much per step the slowest
rank's busy time exceeds the median of the other ranks': roughly the time the job loses to it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Cross-rank reduction of each memory / GPU reading: the worst rank for peaks and heat,
# totals for counters, the average for rates.
_REDUCE: dict[str, Callable[[list[float]], float]] = {
    "mem/host_rss_gb": max,
    "mem/host_peak_rss_gb": max,
    "mem/device_max_allocated_gb": max,
    "mem/device_max_reserved_gb": max,
    "mem/alloc_retries": sum,
    "mem/ooms": sum,
    "gpu/util_pct": statistics.fmean,
    "gpu/mem_used_gb": max,
    "gpu/power_w": statistics.fmean,
    "gpu/temp_c": max,
}


@dataclass(slots=True)
class RankSample:
    """One rank's readings for one log interval: the few numbers that are all-gathered."""

    rank: int
    steps: int
    step_time_s: float
    """Sum over the interval's steps, each from its first phase to ``step_end``."""
    tokens: int
    samples: int
    wall_s: float
    """Host wall-clock time of the whole interval, time between steps included."""
    phase_s: dict[str, float] = field(default_factory=dict)
    """Per phase, summed over the interval."""
    readings: dict[str, float] = field(default_factory=dict)
    """``mem/*`` and ``gpu/*`` values of this rank."""

    def add(self, other: RankSample) -> None:
        """Fold a later interval of the same rank into this one (whole-run totals).

        Times and counts add up; ``mem/*`` readings keep their maximum (the counters are
        cumulative already); ``gpu/*`` readings, instantaneous samples, are not carried over.
        """
        self.steps += other.steps
        self.step_time_s += other.step_time_s
        self.tokens += other.tokens
        self.samples += other.samples
        self.wall_s += other.wall_s
        for name, value in other.phase_s.items():
            self.phase_s[name] = self.phase_s.get(name, 0.0) + value
        for name, value in other.readings.items():
            if name.startswith("mem/"):
                self.readings[name] = max(self.readings.get(name, value), value)

    def busy_s(self, sync_phases: Sequence[str]) -> float:
        return self.step_time_s - sum(self.phase_s.get(p, 0.0) for p in sync_phases)


def aggregate(
    samples: Sequence[RankSample],
    *,
    flops_per_token: float,
    peak_tflops: float | None,
    sync_phases: Sequence[str],
) -> dict[str, float]:
    """The interval's metrics: per-step means per rank, then reduced over ranks.

    ``perf/tokens_per_s`` is the sum of every rank's tokens/s, ``..._per_device`` their mean,
    so the global figure is world size times the per-device one. ``perf/tflops`` is per
    device; ``perf/mfu`` is a fraction (0..1) of ``peak_tflops``, left out when that is None.
    """
    out: dict[str, float] = {}
    timed = [s for s in samples if s.steps > 0 and s.step_time_s > 0]
    if timed:
        step_means = [s.step_time_s / s.steps for s in timed]
        token_rates = [s.tokens / s.step_time_s for s in timed]
        busy = [s.busy_s(sync_phases) / s.steps for s in timed]
        per_device = statistics.fmean(token_rates)
        out["perf/step_time_s"] = statistics.fmean(step_means)
        out["perf/step_time_s_min"] = min(step_means)
        out["perf/step_time_s_mean"] = statistics.fmean(step_means)
        out["perf/step_time_s_max"] = max(step_means)
        out["perf/tokens_per_s"] = sum(token_rates)
        out["perf/tokens_per_s_per_device"] = per_device
        out["perf/samples_per_s"] = sum(s.samples / s.step_time_s for s in timed)
        out["perf/tflops"] = flops_per_token * per_device / 1e12
        if peak_tflops:
            out["perf/mfu"] = out["perf/tflops"] / peak_tflops
        phases = sorted({name for s in timed for name in s.phase_s})
        for name in phases:
            out[f"perf/{name}_s"] = statistics.fmean(s.phase_s.get(name, 0.0) / s.steps for s in timed)
        out["perf/outside_step_s"] = statistics.fmean(max(0.0, s.wall_s - s.step_time_s) / s.steps for s in timed)
        slowest = max(range(len(timed)), key=lambda i: busy[i])
        out["perf/slowest_rank"] = timed[slowest].rank
        others = busy[:slowest] + busy[slowest + 1 :]
        out["perf/straggler_s"] = busy[slowest] - statistics.median(others) if others else 0.0
        if others and statistics.median(others) > 0:  # the straggler alert's rule (seo_dist.monitor)
            out["perf/straggler_ratio"] = busy[slowest] / statistics.median(others)
    names = {name for s in samples for name in s.readings}
    for name in sorted(names):
        values = [s.readings[name] for s in samples if name in s.readings]
        out[name] = float(_REDUCE.get(name, statistics.fmean)(values))
    return out
