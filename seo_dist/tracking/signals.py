"""Turn SIGTERM/SIGINT from a scheduler into something a training loop can act on.

Nothing is installed at import. ``install_interrupt_handlers()`` returns a handle: with
``raise_on_signal=True`` the first signal raises :class:`TrainingInterrupted` in the main thread
(wherever it is: ``ExperimentTracker.track()`` turns it into status ``interrupted``); with
``raise_on_signal=False`` it only sets ``handle.requested`` so the loop can stop at a step boundary,
save a final checkpoint and end the experiment. Later signals are remembered but never interrupt the
clean-up of the first.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by the handler for SIGTERM/SIGINT. A KeyboardInterrupt, so ``except Exception`` does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


@dataclass(slots=True)
class InterruptHandle:
    raise_on_signal: bool
    requested: bool = False
    signum: int | None = None
    count: int = 0
    _previous: dict[int, Any] = field(default_factory=dict)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        first = not self.requested
        self.requested = True
        if first:
            self.signum = signum
            if self.raise_on_signal:
                raise TrainingInterrupted(signum)

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def install_interrupt_handlers(
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT), raise_on_signal: bool = True
) -> InterruptHandle:
    """Install handlers for ``signals`` (main thread only) and return the handle that records them."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("install_interrupt_handlers() must be called from the main thread")
    handle = InterruptHandle(raise_on_signal=raise_on_signal)
    for signum in signals:
        handle._previous[signum] = signal.signal(signum, handle._handle)
    return handle
