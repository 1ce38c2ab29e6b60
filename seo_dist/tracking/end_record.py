"""What ``metadata.json`` and the event logs record when a run ends, and the records other ranks write."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seo_dist import dist
from seo_dist.tracking.jsonio import dumps_line, json_safe
from seo_dist.tracking.logger import ExperimentLogger, Level, describe_error
from seo_dist.tracking.start_record import now_iso


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Block SIGTERM/SIGINT on the main thread for the duration (no-op on other threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def outcome_fields(status: str, error: BaseException | str | None, start_timestamp: float) -> dict[str, Any]:
    """The outcome entries of metadata.json: status, one-line error and traceback, end time and duration."""
    text, tb = describe_error(error)
    end = time.time()
    return {
        "status": status,
        "error": text,
        "traceback": tb,
        "end_time": now_iso(end),
        "end_timestamp": end,
        "duration_s": round(end - start_timestamp, 3),
    }


def end_level(status: str) -> Level:
    return "info" if status == "completed" else ("error" if status == "failed" else "warning")


def profiler_summary(profiler: Any, logger: ExperimentLogger) -> Any:
    """``profiler.summary()`` made JSON-safe, or None (no profiler, or its failure logged as an event)."""
    summary = getattr(profiler, "summary", None)
    if not callable(summary):
        return None
    try:
        return json_safe(summary())
    except Exception as e:
        logger.error("profiler_summary_failed", e)
        return None


def append_rank_event(path: Path, rank: int, name: str, level: str, fields: dict[str, Any]) -> None:
    """One event a rank other than 0 records itself in ``logs/events.rank<N>.jsonl`` (best effort).
    ``fields`` may hold ``step``."""
    record = {"time": time.time(), "event": name, "level": level, "step": fields.pop("step", None), "rank": rank,
              "host": dist.hostname(), **json_safe(fields)}  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(dumps_line(record))
    except OSError:
        pass
