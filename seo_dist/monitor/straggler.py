"""The straggler alert: one rank's busy time per step over ``straggler_factor`` times the median of the
others' (``perf/straggler_ratio``, see :mod:`seo_dist.profiling.aggregate`) for ``straggler_intervals``
log intervals in a row, with the same rank slowest each time. Fires once per streak."""

from __future__ import annotations

from typing import Any


class StragglerRule:
    def __init__(self, factor: float, intervals: int) -> None:
        self.factor, self.intervals = factor, intervals
        self._rank: int | None = None
        self._streak = 0
        self._fired = False

    def observe(self, metrics: dict[str, float]) -> dict[str, Any] | None:
        """Feed one log interval's metrics; the event's fields when the alert fires now, else None."""
        ratio, rank = metrics.get("perf/straggler_ratio"), metrics.get("perf/slowest_rank")
        if ratio is None or rank is None or ratio <= self.factor:
            self._rank, self._streak, self._fired = None, 0, False
            return None
        if int(rank) != self._rank:
            self._rank, self._streak, self._fired = int(rank), 0, False
        self._streak += 1
        if self._streak < self.intervals or self._fired:
            return None
        self._fired = True
        return {"rank": self._rank, "ratio": round(float(ratio), 3), "intervals": self._streak,
                "straggler_s": metrics.get("perf/straggler_s"),
                "message": f"rank {self._rank} has been {ratio:.2f}x slower than the median of the other ranks "
                f"for {self._streak} log intervals"}  # fmt: skip
