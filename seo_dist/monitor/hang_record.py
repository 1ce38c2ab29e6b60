"""Recording a hang when rank 0, which owns the tracker, is the rank that is stuck.

The lowest live rank then writes the records rank 0 would have written: the ``hang_detected`` event and
an ``end`` event in ``logs/events.jsonl`` (one appended line each, the tracker's record format), and the
outcome (status ``failed``, the one-line error) in ``metadata.json``. Rank 0 is frozen, so nothing writes
these files at the same time; the lock it holds is taken over when the job restarts (its owner is dead by then).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from seo_dist.fileio import atomic_write_json
from seo_dist.tracking.end_record import append_rank_event, outcome_fields
from seo_dist.tracking.layout import ExperimentLayout


def record_for_stalled_rank_zero(layout: ExperimentLayout, rank: int, hang: dict[str, Any], error: str) -> None:
    """Append ``hang_detected`` and ``end`` to events.jsonl and mark metadata.json failed (best effort)."""
    step = hang.get("step")
    append_rank_event(layout.events, rank, "hang_detected", "error", {**hang, "step": step})
    append_rank_event(layout.events, rank, "end", "error", {"step": step, "status": "failed", "message": error})
    try:
        meta = json.loads(Path(layout.metadata).read_text())
        start = float(meta.get("start_timestamp") or time.time())
        meta.update(outcome_fields("failed", error, start))
        meta["traceback"] = None
        atomic_write_json(layout.metadata, meta)
    except (OSError, ValueError, TypeError):
        pass
