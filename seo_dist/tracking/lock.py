"""``<exp_dir>/.lock``: one job at a time per experiment directory.

The lock file holds the owner's pid, host and process start time. It is stale, and taken over,
when its owner is a dead process on this host (or a recycled pid), or when it is on another host
and its heartbeat (the file's mtime, touched by the owner's sink thread) is older than
``stale_after_s`` - a job requeued by a scheduler onto another node can then resume.

Creating the lock is atomic (``O_EXCL``). Taking over a stale one, and releasing one, happen under a
guard, ``<exp_dir>/.lock.takeover``, so that of several jobs that find the same stale lock at the same
moment exactly one replaces it: each re-checks the lock while it holds the guard, and the later ones find
the winner's live lock. The guard is an ``flock`` on that file (dropped by the kernel if its holder dies;
NFSv4 and cluster file systems pass it to the server). Where the file system has no ``flock``, creating
the file with ``O_EXCL`` is the guard, and one older than ``GUARD_ABANDONED_S`` (its holder died within
the milliseconds of a takeover) is removed; two jobs that find such an abandoned guard at the same instant
can then still both proceed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import psutil

from seo_dist.errors import UserError
from seo_dist.fileio import atomic_write

STALE_AFTER_S = 600.0
"""A lock from another host without a heartbeat for this long is considered abandoned."""
HEARTBEAT_INTERVAL_S = 30.0
GUARD_SUFFIX = ".takeover"
GUARD_ABANDONED_S = 30.0
"""Without ``flock``: a guard file this old was left by a job that died while holding it."""
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}

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


def _open_guard(guard: Path) -> tuple[int, bool]:
    """Open the guard file, creating it if absent: ``(fd, created)``."""
    while True:
        try:
            return os.open(guard, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644), True
        except FileExistsError:
            pass
        try:
            return os.open(guard, os.O_RDWR), False
        except FileNotFoundError:
            continue  # removed by its holder in between


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


@contextmanager
def _guard(lock_path: Path) -> Iterator[None]:
    """Hold ``<lock>.takeover`` exclusively among processes (see the module docstring); remove it on exit."""
    guard = lock_path.with_name(lock_path.name + GUARD_SUFFIX)
    while True:
        fd, created = _open_guard(guard)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = _same_file(fd, guard)  # else its previous holder removed it after we opened it
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            held = created
            if not created and time.time() - os.fstat(fd).st_mtime > GUARD_ABANDONED_S:
                guard.unlink(missing_ok=True)
            elif not created:
                time.sleep(0.01)
        if held:
            break
        os.close(fd)
    try:
        yield
    finally:
        guard.unlink(missing_ok=True)  # before the flock goes: a waiter then sees a removed file and retries
        os.close(fd)


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
            while not self.held:
                self.held = self._create(payload) or self._take_over_if_stale(payload)
        except OSError as e:
            raise UserError(f"cannot create the lock file {str(self.path)!r} ({e.strerror or e}); "
                            "the experiment directory must be writable") from None  # fmt: skip

    def _create(self, payload: str) -> bool:
        """Create the lock file (``O_EXCL``: of several creators exactly one succeeds); False when it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(payload)
        return True

    def _take_over_if_stale(self, payload: str) -> bool:
        """Replace a stale lock by ours under the guard; False when the lock was released meanwhile."""
        with _guard(self.path):
            state = lock_state(self.path, self.stale_after_s)
            if state == "absent":
                return False
            owner = read_lock_owner(self.path)
            if state == "live":
                who = owner.describe() if owner else "a job that is starting"
                raise UserError(
                    f"experiment directory {str(self.path.parent)!r} is in use by {who} (lock {str(self.path)!r}); "
                    f"wait for that job to end, or delete the lock file if you are sure it is dead"
                )
            atomic_write(self.path, payload)
        if not self._owns_file():
            # a job that does not take the guard (an older version) replaced it as well
            raise UserError(f"experiment directory {str(self.path.parent)!r} was taken by another job while starting")
        self.took_over = owner
        return True

    def heartbeat(self) -> None:
        if self.held:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Remove the lock if this process still owns it (under the guard: a takeover never sees half of it)."""
        if not self.held:
            return
        self.held = False
        if not self._owns_file():
            return
        with _guard(self.path):
            if self._owns_file():
                self.path.unlink(missing_ok=True)

    def _owns_file(self) -> bool:
        owner = read_lock_owner(self.path)
        return owner is not None and (owner.pid, owner.host) == (self._me.pid, self._me.host)
