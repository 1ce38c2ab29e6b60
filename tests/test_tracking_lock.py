"""The experiment lock under real concurrency: several processes that start at the same instant and all
find the same stale ``.lock`` must end with exactly one owner.

The contenders are real processes released together by a barrier, each calling
``ExperimentLock.acquire`` on a fresh lock object. To make the race show on every trial instead of by
luck, each contender's staleness check (``lock_state``, the real function) is followed by a short sleep:
that widens the window between "this lock is stale" and "replace it with mine", which is where two
jobs used to both end up believing they own the directory.

Both guards are raced: ``flock`` (this machine's file system has it) and the ``O_EXCL`` guard file used
where a file system has no ``flock``, simulated by making ``fcntl.flock`` fail with ``ENOLCK`` as it does
on such a mount.
"""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from seo_dist.errors import UserError
from seo_dist.tracking import lock as lock_mod
from seo_dist.tracking.lock import ExperimentLock, read_lock_owner

CONTENDERS = 6
TRIALS = 12
CHECK_PAUSE_S = 0.05


def _no_flock(fd: int, operation: int) -> None:
    raise OSError(errno.ENOLCK, "No locks available")


def _contender(barrier: Barrier, jobs: multiprocessing.Queue, results: multiprocessing.Queue, has_flock: bool) -> None:
    if not has_flock:
        fcntl.flock = _no_flock  # type: ignore[assignment]
    real_lock_state = lock_mod.lock_state

    def slow_lock_state(path: Path, stale_after_s: float = lock_mod.STALE_AFTER_S) -> lock_mod.LockState:
        state = real_lock_state(path, stale_after_s)
        time.sleep(CHECK_PAUSE_S)
        return state

    lock_mod.lock_state = slow_lock_state  # type: ignore[assignment]
    while (path := jobs.get()) is not None:
        barrier.wait()
        lock = ExperimentLock(Path(path))
        try:
            lock.acquire()
        except UserError as e:
            results.put((os.getpid(), False, str(e)))
        else:
            results.put((os.getpid(), True, ""))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_stale_lock(path: Path, trial: int) -> None:
    """Alternate the two kinds of stale lock: a dead process on this host, and a silent other host."""
    if trial % 2 == 0:
        owner = {"pid": _dead_pid(), "host": socket.gethostname(), "create_time": None, "acquired_at": 0.0}
        path.write_text(json.dumps(owner))
    else:
        owner = {"pid": 1, "host": "some-other-node", "create_time": None, "acquired_at": 0.0}
        path.write_text(json.dumps(owner))
        old = time.time() - 2 * lock_mod.STALE_AFTER_S
        os.utime(path, (old, old))


@pytest.mark.parametrize("has_flock", [True, False], ids=["flock", "no-flock"])
def test_racing_takeovers_of_a_stale_lock_leave_exactly_one_owner(tmp_path: Path, has_flock: bool) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(CONTENDERS)
    jobs: multiprocessing.Queue = ctx.Queue()
    results: multiprocessing.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=_contender, args=(barrier, jobs, results, has_flock), daemon=True) for _ in range(CONTENDERS)
    ]
    for p in procs:
        p.start()
    try:
        for trial in range(TRIALS):
            exp_dir = tmp_path / f"trial{trial}"
            exp_dir.mkdir()
            lock_path = exp_dir / ".lock"
            _write_stale_lock(lock_path, trial)
            for _ in range(CONTENDERS):
                jobs.put(str(lock_path))
            outcome = [results.get(timeout=60) for _ in range(CONTENDERS)]
            winners = [pid for pid, held, _ in outcome if held]
            assert len(winners) == 1, f"trial {trial}: {len(winners)} processes believe they hold the lock"
            owner = read_lock_owner(lock_path)
            assert owner is not None and owner.pid == winners[0]
            for _, held, message in outcome:
                if not held:  # the losers get today's one-line refusal naming the owner
                    assert f"is in use by pid {winners[0]} on host {socket.gethostname()}" in message
    finally:
        for _ in procs:
            jobs.put(None)
        for p in procs:
            p.join(timeout=30)


def test_release_and_takeover_leave_no_guard_file_behind(tmp_path: Path) -> None:
    lock_path = tmp_path / ".lock"
    _write_stale_lock(lock_path, 0)
    lock = ExperimentLock(lock_path)
    lock.acquire()
    assert lock.took_over is not None
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_guard_left_by_a_killed_job_does_not_block_a_takeover(tmp_path: Path) -> None:
    """With flock, a leftover guard file holds nothing (the kernel dropped the dead holder's flock)."""
    lock_path = tmp_path / ".lock"
    _write_stale_lock(lock_path, 1)
    (tmp_path / (".lock" + lock_mod.GUARD_SUFFIX)).write_text("")  # fresh: no age-based help
    lock = ExperimentLock(lock_path)
    lock.acquire()
    assert lock.held and lock.took_over is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_without_flock_an_abandoned_guard_file_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fcntl, "flock", _no_flock)
    lock_path = tmp_path / ".lock"
    _write_stale_lock(lock_path, 1)
    guard = tmp_path / (".lock" + lock_mod.GUARD_SUFFIX)
    guard.write_text("")
    old = time.time() - 2 * lock_mod.GUARD_ABANDONED_S
    os.utime(guard, (old, old))
    lock = ExperimentLock(lock_path)
    lock.acquire()
    assert lock.held and lock.took_over is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
