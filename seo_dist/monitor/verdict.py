"""Deciding, from every rank's published heartbeat, whether the job hangs and which ranks are stuck.

Each rank publishes how long ago it last made progress (by its own monotonic clock) and a publish
counter. A reader measures everything else on its own clock: how long a rank's counter has stood still
(``silent_s``: a frozen or dead process publishes nothing) and so how long that rank has really gone
without progress. Clocks of different hosts are never compared.

A hang: some rank has gone without progress for longer than its phase allows
(:meth:`~seo_dist.config.sections.MonitorConfig.phase_timeout_s`). The stalled ranks are the silent ones
(their process does not run); if none is silent, the ranks that are behind (the lowest step); if all are
at the same step, every overdue rank (each rank's stack dump then shows where it waits).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from seo_dist.config.sections import MonitorConfig
from seo_dist.monitor.heartbeat import EXITED


@dataclass(slots=True)
class PeerView:
    record: dict[str, Any]
    seen_at: float
    """Reader's monotonic time when the record's publish counter last changed."""


class HangWatch:
    """What this rank has seen of every rank's heartbeat; ``verdict()`` names a hang when there is one."""

    def __init__(self, config: MonitorConfig, world_size: int, *, silent_after_s: float) -> None:
        self.config = config
        self.world_size = world_size
        self.silent_after_s = silent_after_s
        self.peers: dict[int, PeerView] = {}

    def update(self, records: dict[int, dict[str, Any]], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for rank, record in records.items():
            seen = self.peers.get(rank)
            if seen is None or seen.record.get("pub") != record.get("pub"):
                self.peers[rank] = PeerView(record, now)

    def status(self, rank: int, now: float) -> dict[str, Any]:
        """One rank as a hang report shows it."""
        view = self.peers[rank]
        silent = now - view.seen_at
        rec = view.record
        return {"step": rec.get("step"), "phase": rec.get("phase"), "host": rec.get("host"), "pid": rec.get("pid"),
                "seconds_since_progress": round(float(rec.get("age", 0.0)) + silent, 1),
                "seconds_since_heartbeat": round(silent, 1)}  # fmt: skip

    def overdue(self, rank: int, now: float) -> bool:
        view = self.peers[rank]
        phase = str(view.record.get("phase"))
        limit = self.config.phase_timeout_s(phase)
        if phase == EXITED or limit <= 0:
            return False
        return float(view.record.get("age", 0.0)) + (now - view.seen_at) > limit

    def verdict(self, now: float | None = None) -> dict[str, Any] | None:
        """``{"stalled_ranks": [...], "ranks": {rank: status}}`` when the job hangs, else None."""
        if self.config.hang_timeout_s <= 0:
            return None
        now = time.monotonic() if now is None else now
        overdue = [r for r in sorted(self.peers) if self.overdue(r, now)]
        if not overdue:
            return None
        live = [r for r in sorted(self.peers) if self.peers[r].record.get("phase") != EXITED]
        silent = [r for r in live if now - self.peers[r].seen_at > self.silent_after_s]
        if silent:
            stalled = silent
        else:
            lowest = min(int(self.peers[r].record.get("step", 0)) for r in overdue)
            stalled = [r for r in overdue if int(self.peers[r].record.get("step", 0)) == lowest]
        responsive = [r for r in live if r not in silent]
        return {"stalled_ranks": stalled, "responsive_ranks": responsive,
                "ranks": {str(r): self.status(r, now) for r in live}}  # fmt: skip


def describe(verdict: dict[str, Any]) -> str:
    """One line naming the stalled ranks: ``rank 1 (step 5, phase step, no heartbeat for 12.0s)``."""
    parts = []
    for rank in verdict["stalled_ranks"]:
        s = verdict["ranks"][str(rank)]
        parts.append(f"rank {rank} (step {s['step']}, phase {s['phase']}, no progress for "
                     f"{s['seconds_since_progress']:.0f}s, no heartbeat for {s['seconds_since_heartbeat']:.0f}s)")  # fmt: skip
    return "hang detected: " + "; ".join(parts)


def recorder_rank(verdict: dict[str, Any]) -> int | None:
    """The rank that records the hang: the lowest responsive rank that is not stalled, else the lowest
    responsive one (stuck, but its monitor still runs); None when no rank can."""
    responsive = verdict["responsive_ranks"]
    healthy = [r for r in responsive if r not in verdict["stalled_ranks"]]
    return (healthy or responsive or [None])[0]
