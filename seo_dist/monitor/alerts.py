"""Alerts: a JSON message to a webhook and/or a command, sent from a background thread.

The training thread only puts the message on a queue (:meth:`AlertSender.send`). The sender thread
POSTs it to ``monitor.alert_webhook`` and/or runs ``monitor.alert_command`` with it on standard input,
each with a timeout and a few retries. A message that cannot be delivered is reported through
``report`` (the tracker's ``alert_failed`` event), never raised: alerts never stop or slow a run.

Which events alert: :func:`alert_for` maps the tracker's event records to alert names.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from seo_dist.errors import error_line
from seo_dist.monitor.alert_config import command_words

log = logging.getLogger(__name__)

ALERT_FAILED = "alert_failed"
_DIRECT_ALERTS = ("hang_detected", "checkpoint_save_failed", "straggler_detected", "disk_nearly_full")


def alert_for(record: dict[str, Any]) -> str | None:
    """The alert an event record raises, or None: ``failed``/``completed`` (from the ``end`` event),
    ``non_finite_loss`` (when it stops the run), and every event in ``_DIRECT_ALERTS``."""
    name = record.get("event")
    if name == "end":
        status = record.get("status")
        return status if status in ("failed", "completed") else None
    if name == "non_finite_loss":
        return name if record.get("policy") == "stop" else None
    return name if name in _DIRECT_ALERTS else None


@dataclass(frozen=True, slots=True)
class AlertContext:
    experiment_id: str | None
    experiment_dir: str | None
    host: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """Timeouts and retries of one delivery."""

    timeout_s: float = 10.0
    attempts: int = 3
    backoff_s: float = 1.0


class AlertSender:
    """Delivers alerts in the order they were sent, on a daemon thread started at the first alert."""

    def __init__(
        self,
        webhook: str | None,
        command: str | None,
        context: AlertContext,
        *,
        report: Callable[..., None] | None = None,
        delivery: Delivery = Delivery(),
    ) -> None:
        self.webhook, self.command, self.context = webhook, command, context
        self.report = report
        self.delivery = delivery
        self.delivered: list[str] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.webhook or self.command)

    def payload(self, event: str, step: int | None, message: str | None, **fields: Any) -> dict[str, Any]:
        c = self.context
        text = f"seo_dist: {event} in {c.experiment_id or 'an experiment'}"
        text += (f" at step {step}" if step is not None else "") + f" on {c.host}" + (f": {message}" if message else "")
        return {"event": event, "experiment_id": c.experiment_id, "experiment_dir": c.experiment_dir,
                "step": step, "message": message, "host": c.host, "time": time.time(), "text": text, **fields}  # fmt: skip

    def send(self, event: str, step: int | None = None, message: str | None = None, **fields: Any) -> None:
        """Queue one alert (returns at once)."""
        if not self.enabled:
            return
        self._queue.put(self.payload(event, step, message, **fields))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="seo_dist-alerts", daemon=True)
                self._thread.start()

    def on_event(self, record: dict[str, Any]) -> None:
        """Observer of the tracker's events: sends the alert an event raises (see :func:`alert_for`)."""
        name = alert_for(record)
        if name is not None:
            extra = {k: v for k, v in record.items() if k not in ("time", "event", "step", "message", "level")}
            self.send(name, record.get("step"), record.get("message"), **extra)

    def close(self, timeout_s: float = 15.0) -> bool:
        """Deliver what is queued, waiting at most ``timeout_s``; True when everything went out."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        self._queue.put(None)
        thread.join(timeout_s)
        return not thread.is_alive()

    def _run(self) -> None:
        while (alert := self._queue.get()) is not None:
            for target, deliver in self._targets():
                error = self._with_retries(deliver, alert)
                if error is None:
                    self.delivered.append(alert["event"])
                else:
                    self._failed(alert, target, error)

    def _targets(self) -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
        out: list[tuple[str, Callable[[dict[str, Any]], None]]] = []
        if self.webhook:
            out.append(("webhook", self._post))
        if self.command:
            out.append(("command", self._run_command))
        return out

    def _with_retries(self, deliver: Callable[[dict[str, Any]], None], alert: dict[str, Any]) -> str | None:
        error = None
        for attempt in range(self.delivery.attempts):
            try:
                deliver(alert)
                return None
            except Exception as e:  # noqa: BLE001 - any failure is reported, none stops the run
                error = error_line(e)
            if attempt + 1 < self.delivery.attempts:
                time.sleep(self.delivery.backoff_s * (attempt + 1))
        return error

    def _post(self, alert: dict[str, Any]) -> None:
        assert self.webhook is not None
        request = urllib.request.Request(self.webhook, data=json.dumps(alert, default=str).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=self.delivery.timeout_s) as response:  # noqa: S310 - http(s) only
            response.read()

    def _run_command(self, alert: dict[str, Any]) -> None:
        assert self.command is not None
        done = subprocess.run(command_words(self.command), input=json.dumps(alert, default=str), text=True,
                              capture_output=True, timeout=self.delivery.timeout_s)  # fmt: skip
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"exit code {done.returncode} {tail[0]}".strip())

    def _failed(self, alert: dict[str, Any], target: str, error: str) -> None:
        message = f"the {alert['event']} alert could not be delivered to the {target}: {error}"
        log.warning(message)
        if self.report is not None and alert["event"] != ALERT_FAILED:
            try:
                self.report(ALERT_FAILED, step=alert.get("step"), alert=alert["event"], target=target, message=message)
            except Exception:  # noqa: BLE001
                pass
