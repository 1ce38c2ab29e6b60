"""A worker whose launcher died stops itself.

torchrun starts each worker in a session of its own, so the agent's death does not reach the workers:
they would train on, unsupervised, until killed by hand. Two ways to notice, on Linux:

- ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends SIGTERM the moment the launcher exits; the
  trainer's SIGTERM path then takes a final checkpoint, ends the experiment and releases its lock.
- the monitor thread compares ``os.getppid()`` with the launcher's pid every heartbeat (a re-parented
  worker has another parent): the fallback where ``prctl`` is missing, and how the reason is recorded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits; False where that is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class OrphanWatch:
    """Tells whether the launcher that started this process is gone."""

    def __init__(self, launcher_pid: int | None = None) -> None:
        self.launcher_pid = os.getppid() if launcher_pid is None else launcher_pid

    def orphaned(self) -> bool:
        return os.getppid() != self.launcher_pid
