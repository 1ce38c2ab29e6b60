"""``ExperimentLogger``: the run's events (``logs/events.jsonl``) and human-readable log (``logs/train.log``).

Events are rare and important (start, end, checkpoint, fallback, warning, error), so they are
written synchronously and flushed at once: the last events before a crash are on disk. Warnings and
errors are also printed to stderr on rank 0 when the console is enabled.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from seo_dist.errors import error_line
from seo_dist.tracking.jsonio import dumps_line, json_safe

Level = Literal["info", "warning", "error"]
LEVELS: dict[str, int] = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
PACKAGE_LOGGER = "seo_dist"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CORE_KEYS = ("time", "event", "level", "step", "rank", "message", "traceback")
# The level an event gets by its name when the caller gives none (the checkpoint manager's events, say).
_LEVEL_BY_SUFFIX: tuple[tuple[tuple[str, ...], Level], ...] = (
    (("_failed", "_error", "_errors"), "error"),
    (("_warning", "_fallback", "_disk_full", "_skipped"), "warning"),
)


def default_level(name: str) -> Level:
    """``*_failed``/``*_error`` -> error, ``*_warning``/``*_fallback``/``*_disk_full``/``*_skipped`` -> warning, else info."""
    for suffixes, level in _LEVEL_BY_SUFFIX:
        if name.endswith(suffixes):
            return level
    return "info"


def describe_error(error: BaseException | str | None) -> tuple[str | None, str | None]:
    """``(one-line error, traceback text)``. A string error inside an ``except`` block gets that block's traceback."""
    if error is None:
        return None, None
    if isinstance(error, BaseException):
        return error_line(error), "".join(traceback.format_exception(type(error), error, error.__traceback__))
    current = sys.exc_info()[1]
    tb = "".join(traceback.format_exception(type(current), current, current.__traceback__)) if current else None
    return str(error), tb


class ExperimentLogger:
    """Writes events and log lines for one experiment. Thread-safe (the sink thread reports through it too)."""

    def __init__(
        self,
        events_path: Path,
        train_log_path: Path,
        rank: int = 0,
        echo_to_stderr: bool = True,
        capture_package_logs: bool = True,
    ) -> None:
        self.events_path = Path(events_path)
        self.train_log_path = Path(train_log_path)
        self.rank = rank
        self.echo_to_stderr = echo_to_stderr
        self._lock = threading.Lock()
        self._events = open(self.events_path, "a", buffering=1)
        self._handler = logging.FileHandler(self.train_log_path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        self._handler.setLevel(logging.INFO)
        self._package_logger: logging.Logger | None = None
        self._restore_level: int | None = None
        if capture_package_logs:
            # seo_dist modules log through logging.getLogger(__name__): their messages land in train.log too
            self._package_logger = logging.getLogger(PACKAGE_LOGGER)
            self._package_logger.addHandler(self._handler)
            if self._package_logger.level == logging.NOTSET:
                self._restore_level = logging.NOTSET
                self._package_logger.setLevel(logging.INFO)
        self.counts: dict[str, int] = {"info": 0, "warning": 0, "error": 0}
        self.closed = False
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        """Called with each event record once it is written (the alerts of :mod:`seo_dist.monitor`)."""

    def event(
        self, name: str, level: Level = "info", /, step: int | None = None, message: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Record one event; returns the record written. A field named like a record key (``time``, ``rank``...)
        is kept as ``field_<key>``."""
        if level not in LEVELS:
            raise ValueError(f"event level must be one of {sorted(LEVELS)}, got {level!r}")
        record: dict[str, Any] = {"time": time.time(), "event": name, "level": level, "step": step, "rank": self.rank}
        if message is not None:
            record["message"] = message
        for key, value in json_safe(fields).items():
            record[f"field_{key}" if key in record else key] = value
        line = dumps_line(record)
        text = f"[{name}]" + (f" step {step}" if step is not None else "") + (f" {message}" if message else "")
        extra = {k: v for k, v in record.items() if k not in _CORE_KEYS}
        if extra:
            text += " " + json.dumps(extra, default=str)
        if record.get("traceback"):
            text += "\n" + str(record["traceback"]).rstrip()
        with self._lock:
            if self.closed:
                return record
            self.counts[level] += 1
            self._events.write(line)
            self._emit(LEVELS[level], text)
        if self.echo_to_stderr and level != "info":
            sys.stderr.write(f"seo_dist {level}: {text.splitlines()[0]}\n")
        for observe in self.observers:
            try:
                observe(record)
            except Exception:  # noqa: BLE001 - an observer never breaks event logging
                pass
        return record

    def error(self, name: str, error: BaseException | str, /, step: int | None = None, **fields: Any) -> dict[str, Any]:
        text, tb = describe_error(error)
        return self.event(name, "error", step=step, message=text, traceback=tb, **fields)

    def line(self, text: str, level: Level = "info") -> None:
        """A plain line in train.log only (the console sink's metric lines)."""
        with self._lock:
            if not self.closed:
                self._emit(LEVELS[level], text)

    def _emit(self, levelno: int, text: str) -> None:
        record = logging.LogRecord("seo_dist.tracking", levelno, __file__, 0, text, None, None)
        self._handler.handle(record)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._package_logger is not None:
                self._package_logger.removeHandler(self._handler)
                if self._restore_level is not None:
                    self._package_logger.setLevel(self._restore_level)
            self._handler.close()
            self._events.close()
