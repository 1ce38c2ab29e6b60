"""``<exp_dir>/.lock``: one job at a time per experiment directory.

The lock file holds the owner's pid, host and process start time. It is stale, and taken over,
when its owner is a dead process on this host (or a recycled pid), or when it is on another host
and its heartbeat (the file's mtime, touched by the owner's sink thread) is older than
``stale_after_s`` - a job requeued by a scheduler onto another node can then resume.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import psutil

from seo_dist.errors import UserError

STALE_AFTER_S = 600.0
"""A lock from another host without a heartbeat for this long is considered abandoned."""
HEARTBEAT_INTERVAL_S = 30.0

LockState = Literal["absent", "live", "stale"]


@dataclass(frozen=True, slots=True)
class LockOwner:
    pid: int
    host: str
    create_time: float | None
    """The owner process's start time (psutil); tells a live owner from a recycled pid."""
    acquired_at: float

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}"


def _owner_alive(owner: LockOwner) -> bool:
    """Whether the lock's owner still runs on this host: not gone, not a zombie (killed, not yet reaped; a
    SIGKILLed worker whose launcher died too stays one until init gets to it), not a recycled pid."""
    try:
        proc = psutil.Process(owner.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        create_time = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError):
        return True  # cannot tell (permissions): assume it runs
    return owner.create_time is None or abs(create_time - owner.create_time) <= 1.0


def read_lock_owner(path: Path) -> LockOwner | None:
    """The owner recorded in a lock file, or None when there is none or it cannot be parsed."""
    try:
        data = json.loads(path.read_text())
        return LockOwner(int(data["pid"]), str(data["host"]), data.get("create_time"), float(data["acquired_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lock_state(path: Path, stale_after_s: float = STALE_AFTER_S) -> LockState:
    """Whether ``path`` is absent, held by a live job, or left behind by a dead one."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return "absent"
    owner = read_lock_owner(path)
    if owner is None:
        # unreadable: a writer may be between create and write; give it a moment before calling it stale
        return "live" if time.time() - mtime < 5.0 else "stale"
    if owner.host == socket.gethostname():
        return "live" if _owner_alive(owner) else "stale"
    return "live" if time.time() - mtime < stale_after_s else "stale"


class ExperimentLock:
    """Exclusive ownership of an experiment directory by one job (held by global rank 0)."""

    def __init__(self, path: Path, stale_after_s: float = STALE_AFTER_S) -> None:
        self.path = Path(path)
        self.stale_after_s = stale_after_s
        self.held = False
        self.took_over: LockOwner | None = None
        """The previous owner when a stale lock was taken over (for an event)."""
        self._me = LockOwner(os.getpid(), socket.gethostname(), psutil.Process().create_time(), time.time())

    def acquire(self) -> None:
        """Take the lock, or raise :class:`UserError` naming the job that holds it."""
        payload = json.dumps(asdict(self._me))
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._take_over_if_stale(payload)
        except OSError as e:
            raise UserError(f"cannot create the lock file {str(self.path)!r} ({e.strerror or e}); "
                            "the experiment directory must be writable") from None  # fmt: skip
        else:
            with os.fdopen(fd, "w") as f:
                f.write(payload)
        self.held = True

    def _take_over_if_stale(self, payload: str) -> None:
        owner = read_lock_owner(self.path)
        if lock_state(self.path, self.stale_after_s) == "live":
            who = owner.describe() if owner else "a job that is starting"
            raise UserError(
                f"experiment directory {str(self.path.parent)!r} is in use by {who} (lock {str(self.path)!r}); "
                f"wait for that job to end, or delete the lock file if you are sure it is dead"
            )
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(payload)
        os.replace(tmp, self.path)
        mine = read_lock_owner(self.path)
        if mine is None or (mine.pid, mine.host) != (self._me.pid, self._me.host):
            raise UserError(f"experiment directory {str(self.path.parent)!r} was taken by another job while starting")
        self.took_over = owner

    def heartbeat(self) -> None:
        if self.held:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Remove the lock if this process still owns it."""
        if not self.held:
            return
        self.held = False
        owner = read_lock_owner(self.path)
        if owner is not None and (owner.pid, owner.host) == (self._me.pid, self._me.host):
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
