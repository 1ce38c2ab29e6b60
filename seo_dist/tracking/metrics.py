"""``MetricsTracker``: takes metrics from the training thread and hands them to the sinks on a background thread.

On the training thread ``log`` only copies the dict and puts it on a queue (about a microsecond), so
it costs less than a single ``SummaryWriter.add_scalar``. Everything else happens on the sink thread:

* each row is checked and its names folded to one spelling per metric by
  :class:`~seo_dist.tracking.metric_rows.RowValidator` (problems become warning and error events).
  One-element tensors are copied on the calling thread and read on the sink thread, so the training
  thread never waits on the device.
* non-finite values: ``null`` in ``metrics.jsonl`` (JSON has no NaN/inf), the float itself in
  TensorBoard and wandb.
* sink failures: an error event, then that sink is dropped; the others go on.
* a sink slow to open (wandb) opens on its own thread; rows wait for it and are replayed once it is open.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from seo_dist.errors import error_line
from seo_dist.tracking.jsonio import iter_jsonl
from seo_dist.tracking.logger import ExperimentLogger
from seo_dist.tracking.metric_rows import RESERVED_NAMES, MetricSummary, RowValidator
from seo_dist.tracking.sinks import JsonlSink, Sink

LAZY_OPEN_WAIT_S = 30.0
"""At close, how long to wait for a sink that is still opening (wandb online with a slow or absent network
retries for up to its ``init_timeout``, 90 s by default) before giving up on it."""
BACKLOG_WARNING_ROWS = 10_000
"""The sinks write about 1500 rows of 8 scalars per second on one core; a longer queue gets one warning."""
_FAST_TYPES = (float, int)


def _snapshot_value(value: Any) -> Any:
    """Copy a tensor on the calling thread (no device sync) so later in-place updates don't leak into the log."""
    detach = getattr(value, "detach", None)
    if callable(detach):
        return detach().clone()
    return value


class _Command:
    __slots__ = ("kind", "arg", "done", "result")

    def __init__(self, kind: str, arg: Any = None) -> None:
        self.kind = kind
        self.arg = arg
        self.done = threading.Event()
        self.result: Any = None


class MetricsTracker:
    """Validates metrics and feeds the sinks (JSONL, TensorBoard, wandb, console) from one background thread."""

    def __init__(
        self,
        sinks: list[Sink],
        logger: ExperimentLogger,
        *,
        lazy_sinks: Sequence[Callable[[], Sink]] = (),
        seed_rows: list[dict[str, Any]] | None = None,
        heartbeat: Callable[[], None] | None = None,
        heartbeat_interval_s: float = 30.0,
    ) -> None:
        self.sinks: list[Sink] = list(sinks)
        self.logger = logger
        self.rows = RowValidator(logger)
        self.summary = MetricSummary()
        self._lazy_sinks = list(lazy_sinks)
        self._heartbeat = heartbeat
        self._heartbeat_interval_s = heartbeat_interval_s
        # SimpleQueue: put() is a C call that never blocks and is safe even from a signal handler
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._backlog_reported = False
        self._closed = False
        for row in seed_rows or ():
            values = {k: v for k, v in row.items() if k not in RESERVED_NAMES}
            self.rows.names.seed(list(values))
            if isinstance(row.get("step"), int):
                self.summary.update(row["step"], values)
        self._thread = threading.Thread(target=self._run, name="seo_dist-metrics", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ training thread

    def log(self, metrics: dict[str, Any], step: int, epoch: int | None = None) -> None:
        """Enqueue one row; returns at once. Never raises for bad values (they become error events)."""
        values = dict(metrics)
        for k, v in values.items():
            if type(v) not in _FAST_TYPES:
                values[k] = _snapshot_value(v)
        self._queue.put((step, epoch, time.time(), values))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row logged so far is in the sinks' files; False on timeout."""
        return self._call("flush", timeout=timeout) is True

    def truncate_after(self, step: int, timeout: float | None = None) -> int:
        """Drop rows after ``step`` in every sink (resume); returns the number of JSONL rows dropped."""
        return self._call("truncate", step, timeout=timeout) or 0

    def close(self, exit_code: int = 0, timeout: float | None = 120.0) -> None:
        """Drain the queue, close the sinks and stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._call("close", exit_code, timeout=timeout)
        self._thread.join(timeout=timeout)

    def _call(self, kind: str, arg: Any = None, timeout: float | None = None) -> Any:
        if not self._thread.is_alive():
            return None
        command = _Command(kind, arg)
        self._queue.put(command)
        if not command.done.wait(timeout):
            return None
        return command.result

    # ------------------------------------------------------------------ sink thread

    def _run(self) -> None:
        last_beat = time.monotonic()
        self.sinks.extend(_OpeningSink(factory, self.logger) for factory in self._lazy_sinks)
        while True:
            try:
                item = self._queue.get(timeout=self._heartbeat_interval_s)
            except queue.Empty:
                item = None
            now = time.monotonic()
            if self._heartbeat is not None and now - last_beat >= self._heartbeat_interval_s:
                last_beat = now
                self._safe(self._heartbeat)
            if item is None:
                continue
            try:
                if type(item) is tuple:
                    self._write_row(*item)
                    if self._queue.empty():
                        self._each_sink("flush", only=("jsonl",))
                    elif not self._backlog_reported and self._queue.qsize() > BACKLOG_WARNING_ROWS:
                        self._backlog_reported = True
                        self.logger.event("metrics_backlog", "warning", message=f"more than {BACKLOG_WARNING_ROWS} "
                                          "metric rows wait for the sinks; log less often (rows are kept, memory grows)")  # fmt: skip
                elif self._handle_command(item):
                    return
            except Exception as e:  # a bug here must not stop the thread, or every later flush would hang
                self._report_thread_error(e)

    def _handle_command(self, command: _Command) -> bool:
        try:
            if command.kind == "flush":
                self._each_sink("flush")
                command.result = True
            elif command.kind == "truncate":
                dropped = 0
                for sink in list(self.sinks):
                    result = self._sink_call(sink, "truncate_after", command.arg)
                    if isinstance(sink, JsonlSink):
                        dropped = int(result or 0)
                        self._reseed(sink)
                command.result = dropped
            elif command.kind == "close":
                for sink in list(self.sinks):
                    self._sink_call(sink, "close", command.arg)
                self.sinks = []
                command.result = True
                return True
        finally:
            command.done.set()
        return False

    def _reseed(self, jsonl: JsonlSink) -> None:
        """After a truncation, rebuild the summary from the rows that remain."""
        self.summary = MetricSummary()
        for row in iter_jsonl(jsonl.path):
            if isinstance(row.get("step"), int):
                self.summary.update(row["step"], {k: v for k, v in row.items() if k not in RESERVED_NAMES})

    def _write_row(self, step: Any, epoch: Any, wall_time: float, raw: dict[str, Any]) -> None:
        row = self.rows.validate(step, epoch, raw, self.summary)
        if row is None:
            return
        step, epoch, values = row
        self.summary.update(step, values)
        for sink in list(self.sinks):
            self._sink_call(sink, "write", step, epoch, wall_time, values)

    def _each_sink(self, method: str, only: tuple[str, ...] | None = None) -> None:
        for sink in list(self.sinks):
            if only is None or sink.name in only:
                self._sink_call(sink, method)

    def _sink_call(self, sink: Sink, method: str, *args: Any) -> Any:
        try:
            return getattr(sink, method)(*args)
        except Exception as e:
            self.sinks = [s for s in self.sinks if s is not sink]
            self.logger.error("sink_failed", e, sink=sink.name, operation=method)
            if sink.name == "jsonl":
                sys.stderr.write(f"seo_dist: metrics.jsonl can no longer be written ({e})\n")
            return None

    def _report_thread_error(self, error: Exception) -> None:
        try:
            self.logger.error("metrics_thread_error", error)
        except Exception:
            pass

    def _safe(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            pass


class _OpeningSink:
    """A sink that is slow to open (wandb: 0.5 s offline, up to its 90 s ``init_timeout`` online without a
    network), opened on its own thread so that it never holds up the other sinks: rows reach
    ``metrics.jsonl`` at once and are kept for this sink until it is open, then replayed to it.
    Every method runs on the sink thread, like any other sink's."""

    def __init__(self, factory: Callable[[], Sink], logger: ExperimentLogger) -> None:
        self.name = str(getattr(factory, "sink_name", "lazy"))
        self._factory = factory
        self._logger = logger
        self._sink: Sink | None = None
        self._error: Exception | None = None
        self._gave_up = False
        self._backlog: list[tuple[Any, ...]] = []
        self._thread = threading.Thread(target=self._open, name=f"seo_dist-open-{self.name}", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            self._sink = self._factory()
        except Exception as e:  # noqa: BLE001 - reported on the sink thread
            self._error = e

    def _ready(self, wait_s: float = 0.0) -> Sink | None:
        """The opened sink (backlog replayed), or None while it is opening or after it failed."""
        if self._gave_up:
            return None
        if self._thread.is_alive():
            self._thread.join(wait_s)
            if self._thread.is_alive():
                if wait_s > 0:
                    self._give_up(f"still not open after {wait_s:.0f}s at close; its rows are not in {self.name}")
                return None
        if self._sink is None:
            e = self._error
            self._give_up(f"{error_line(e)}; continuing without it" if e else "did not open")
            return None
        backlog, self._backlog = self._backlog, []
        for row in backlog:
            self._sink.write(*row)
        return self._sink

    def _give_up(self, why: str) -> None:
        self._gave_up = True
        self._backlog = []
        self._logger.event("sink_unavailable", "warning", message=f"{self.name}: {why}")

    def write(self, step: int, epoch: int | None, wall_time: float, values: dict[str, float | int]) -> None:
        sink = self._ready()
        if sink is not None:
            sink.write(step, epoch, wall_time, values)
        elif not self._gave_up:
            self._backlog.append((step, epoch, wall_time, dict(values)))

    def flush(self) -> None:
        sink = self._ready()
        if sink is not None:
            sink.flush()

    def close(self, exit_code: int = 0) -> None:
        sink = self._ready(LAZY_OPEN_WAIT_S)
        if sink is not None:
            sink.close(exit_code)

    def truncate_after(self, step: int) -> None:
        self._backlog = [row for row in self._backlog if row[0] <= step]
        sink = self._ready()
        if sink is not None:
            sink.truncate_after(step)
