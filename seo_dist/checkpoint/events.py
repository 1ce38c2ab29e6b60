"""Checkpoint events (``checkpoint_saved``, ``checkpoint_pruned``, ``checkpoint_fallback``...): rank 0 only, and
always handed to the caller's ``event_fn`` on the training thread.

The background writer commits on its own thread, but trackers are not thread-safe: an event raised there
waits in a queue until the training thread calls :meth:`EventRelay.deliver_deferred` (at the next
``poll``/``wait``/save/load).
"""

from __future__ import annotations

import logging
import queue
import warnings
from collections.abc import Callable
from typing import Any

from seo_dist import dist
from seo_dist.errors import error_line

log = logging.getLogger(__name__)

EventFn = Callable[..., object]
"""``event_fn(name, **fields)``; the trainer passes ``tracker.log_event``."""


class EventRelay:
    """Logs each event and hands it to ``event_fn``, now or, from ``is_background()`` threads, later."""

    def __init__(self, event_fn: EventFn | None, *, is_background: Callable[[], bool]) -> None:
        self.event_fn = event_fn
        self._is_background = is_background
        self._deferred: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()

    def emit(self, name: str, **fields: Any) -> None:
        """Rank 0: log the event and deliver it (deferred when called from the background thread). Other ranks:
        nothing."""
        if not dist.is_rank_zero():
            return
        log.info("%s %s", name, fields)
        if self._is_background():
            self._deferred.put((name, fields))
        else:
            self._deliver(name, fields)

    def deliver_deferred(self) -> None:
        """Training thread: hand over the events the background thread raised, in order."""
        while True:
            try:
                name, fields = self._deferred.get_nowait()
            except queue.Empty:
                return
            self._deliver(name, fields)

    def _deliver(self, name: str, fields: dict[str, Any]) -> None:
        if self.event_fn is None:
            return
        try:
            self.event_fn(name, **fields)
        except Exception as e:  # noqa: BLE001 - a broken tracker must not break checkpointing
            warnings.warn(f"checkpoint event {name!r} could not be logged: {error_line(e)}", stacklevel=3)
