"""Chaos trials for the monitor (``pytest -m chaos``): a rank frozen (SIGSTOP) at a seeded random step,
rank 0 or rank 1, under ``torchrun --max-restarts 1``; and the torchrun agent SIGKILLed at a seeded random
step. Each trial is recorded in the scorecard (``tests/chaos_scorecard.py``)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from chaos_harness import Job, chaos_env, disk_state, events, last_logged_step, torchrun_args, train_command, wait_until
from chaos_scorecard import record
from conftest import BIN

pytestmark = pytest.mark.chaos

HANG_TIMEOUT_S = 12


@pytest.mark.parametrize("seed,rank", [(11, 1), (12, 0), (13, 1)])
def test_frozen_rank_at_a_random_step(seed: int, rank: int, tmp_path: Path, cache_dir: Path) -> None:
    rng = random.Random(seed)
    base, exp_id = tmp_path / "experiments", f"hang{seed}"
    exp_dir = base / exp_id
    sets = [f"monitor.hang_timeout_s={HANG_TIMEOUT_S}", "checkpoint.save_interval=3", "train.max_steps=20"]
    cmd = train_command(base, sets, exp_id=exp_id, launcher=torchrun_args(2, "--max-restarts", "1"))
    target = rng.randint(4, 12)
    with Job(cmd, tmp_path, chaos_env(cache_dir), tmp_path / "job.log") as job:
        wait_until(lambda: last_logged_step(exp_dir) >= target, 240, f"step {target}", job)
        time.sleep(rng.uniform(0.0, 0.5))
        victim = job.wait_for_workers(2)[rank]
        victim.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            victim.wait(HANG_TIMEOUT_S + 30)
            gone_s = time.monotonic() - stopped
        except psutil.TimeoutExpired:
            gone_s = None
        rc = job.wait(300)
    evs = events(exp_dir)
    hang = [e for e in evs if e["event"] == "hang_detected"]
    ends = [e.get("status") for e in evs if e["event"] == "end"]
    ok = (
        gone_s is not None
        and rc == 0
        and len(hang) == 1
        and hang[0]["stalled_ranks"] == [rank]
        and ends[-1] == "completed"
    )
    record(f"Rank frozen (SIGSTOP) at a random step, hang_timeout_s={HANG_TIMEOUT_S}, --max-restarts 1",
           f"hang_detected named the frozen rank; attempt ended {gone_s:.0f}s after the freeze; resumed and completed"
           if ok else "FAILED")  # fmt: skip
    assert gone_s is not None and gone_s < HANG_TIMEOUT_S + 30, job.tail()
    assert len(hang) == 1 and hang[0]["stalled_ranks"] == [rank], hang
    assert (Path(hang[0]["dump_dir"]) / f"rank_{1 - rank}.txt").is_file()
    assert rc == 0 and ends[0] == "failed" and ends[-1] == "completed", (ends, job.tail())
    assert json.loads((exp_dir / "metadata.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("seed", [21, 22])
def test_agent_killed_at_a_random_step(seed: int, tmp_path: Path, cache_dir: Path) -> None:
    rng = random.Random(seed)
    base, exp_id = tmp_path / "experiments", f"orphan{seed}"
    exp_dir = base / exp_id
    cmd = train_command(base, ["checkpoint.save_interval=2", "train.max_steps=100000"], exp_id=exp_id)
    target = rng.randint(3, 10)
    with Job(cmd, tmp_path, chaos_env(cache_dir), tmp_path / "job.log") as job:
        wait_until(lambda: last_logged_step(exp_dir) >= target, 240, f"step {target}", job)
        time.sleep(rng.uniform(0.0, 0.5))
        workers = list(job.wait_for_workers(2).values())
        job.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        left = psutil.wait_procs(workers, timeout=60)[1]
        took = time.monotonic() - killed
    state = disk_state(exp_dir / "checkpoints")
    verified = state.latest is not None and subprocess.run(
        [str(BIN / "seo-dist"), "verify", str(exp_dir / "checkpoints" / state.latest)], capture_output=True, timeout=120
    ).returncode == 0  # fmt: skip
    lock_gone = not (exp_dir / ".lock").exists()
    ok = not left and lock_gone and verified and not state.problems()
    record("SIGKILL of the torchrun agent alone at a random step",
           f"workers stopped by themselves in {took:.0f}s; lock released; latest checkpoint verifies" if ok else "FAILED")  # fmt: skip
    assert not left and lock_gone and verified and not state.problems(), (left, lock_gone, verified, state)
