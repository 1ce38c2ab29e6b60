"""Real 2-rank torchrun jobs (gloo): a frozen rank is named with the live rank's stack, the job aborts
and ``torchrun --max-restarts 1`` resumes it; a job whose torchrun agent is SIGKILLed stops by itself.
Both share one run each with several assertions (module-scoped fixtures); the webhook on 127.0.0.1
receives the alerts of the failed (hung) attempt and of the hang."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from chaos_harness import Job, chaos_env, disk_state, events, last_logged_step, torchrun_args, train_command, wait_until
from conftest import BIN
from monitor_helpers import Webhook

HANG_TIMEOUT_S = 10
ORPHAN_BOUND_S = 60.0
# steps take ~0.1 s here: a heartbeat published every 0.05 s shows the frozen rank's step within a step or two
MONITOR_SETS = [f"monitor.hang_timeout_s={HANG_TIMEOUT_S}", "monitor.heartbeat_interval_s=0.05",
                "checkpoint.save_interval=3", "train.max_steps=14"]  # fmt: skip


@dataclass
class HangRun:
    exp_dir: Path
    stopped_at: float
    stop_step: int
    rc: int
    output: str
    hook: Webhook
    stopped_pid: int
    stopped_gone_after_s: float | None
    events: list[dict[str, Any]] = field(default_factory=list)


def freeze_rank(job: Job, rank: int) -> psutil.Process:
    worker = job.wait_for_workers(2)[rank]
    worker.send_signal(signal.SIGSTOP)
    return worker


def wait_gone(proc: psutil.Process, timeout: float) -> float | None:
    start = time.monotonic()
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        return None
    return time.monotonic() - start


@pytest.fixture(scope="module")
def hang_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> HangRun:
    tmp = tmp_path_factory.mktemp("hang")
    hook = Webhook()
    base, exp_id = tmp / "experiments", "hang"
    sets = [*MONITOR_SETS, f"monitor.alert_webhook={hook.url}"]
    cmd = train_command(base, sets, exp_id=exp_id, launcher=torchrun_args(2, "--max-restarts", "1"))
    exp_dir = base / exp_id
    with Job(cmd, tmp, chaos_env(cache_dir), tmp / "hang.log") as job:
        wait_until(lambda: disk_state(exp_dir / "checkpoints").newest_step >= 3, 240, "a committed checkpoint", job)
        worker = freeze_rank(job, 1)
        stopped_at, stop_step = time.monotonic(), last_logged_step(exp_dir)
        gone = wait_gone(worker, HANG_TIMEOUT_S + 30)
        rc = job.wait(300)
    hook.close()
    return HangRun(exp_dir, stopped_at, stop_step, rc, job.output(), hook, worker.pid, gone, events(exp_dir))


def test_hang_is_detected_naming_the_frozen_rank(hang_run: HangRun) -> None:
    found = [e for e in hang_run.events if e["event"] == "hang_detected"]
    assert len(found) == 1, hang_run.output[-4000:]
    hang = found[0]
    assert hang["stalled_ranks"] == [1] and hang["rank"] == 0
    assert hang["ranks"]["1"]["phase"] in ("step", "first_step")
    # what the rank last published: at most a heartbeat interval (and a starved monitor thread) behind
    assert hang_run.stop_step - 2 <= hang["ranks"]["1"]["step"] <= hang["step"] + 1  # hang["step"]: rank 0's
    # the hang is called when the first rank is overdue; the frozen rank may have made its last progress up
    # to a step and a heartbeat interval after the waiting rank did
    assert hang["ranks"]["1"]["seconds_since_progress"] >= HANG_TIMEOUT_S - 2
    assert "rank 1" in hang["message"]


def test_the_frozen_attempt_ends_within_the_bound_and_is_failed(hang_run: HangRun) -> None:
    assert hang_run.stopped_gone_after_s is not None, "the frozen worker was still there after hang_timeout_s + 30 s"
    assert hang_run.stopped_gone_after_s < HANG_TIMEOUT_S + 30
    ends = [e for e in hang_run.events if e["event"] == "end"]
    assert ends[0]["status"] == "failed" and "hang detected: rank 1" in ends[0]["message"]


def test_the_live_rank_dumped_its_stack_waiting_in_a_collective(hang_run: HangRun) -> None:
    hang = next(e for e in hang_run.events if e["event"] == "hang_detected")
    folder = Path(hang["dump_dir"])
    assert folder.parent == hang_run.exp_dir / "logs" / "hangs"
    dump = (folder / "rank_0.txt").read_text()
    assert not (folder / "rank_1.txt").exists()  # frozen: it cannot write
    main = dump.split("--- thread MainThread")[1].split("--- thread")[0]
    assert "all_reduce" in main or "barrier" in main or "all_gather" in main, main
    assert "=== flight recorder" in dump and "state=" in dump


def test_torchrun_restarts_the_job_and_it_resumes(hang_run: HangRun) -> None:
    assert hang_run.rc == 0, hang_run.output[-4000:]
    names = [e["event"] for e in hang_run.events]
    assert "restart_resumed" in names and "checkpoint_loaded" in names
    loaded = next(e for e in hang_run.events if e["event"] == "checkpoint_loaded")
    assert loaded["step"] >= 3
    meta = json.loads((hang_run.exp_dir / "metadata.json").read_text())
    assert meta["status"] == "completed"
    assert [e["status"] for e in hang_run.events if e["event"] == "end"] == ["failed", "completed"]


def test_webhook_received_the_hang_the_failure_and_the_completion(hang_run: HangRun) -> None:
    got = hang_run.hook.events()
    assert got.count("hang_detected") == 1 and got.count("failed") == 1 and got[-1] == "completed", got
    hang = next(r for r in hang_run.hook.received if r["event"] == "hang_detected")
    assert hang["stalled_ranks"] == [1] and hang["experiment_id"] == "hang" and "rank 1" in hang["text"]


# ---------------------------------------------------------------------------- orphans


@pytest.fixture(scope="module")
def orphan_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("orphan")
    base, exp_id = tmp / "experiments", "orphan"
    cmd = train_command(base, ["checkpoint.save_interval=3", "train.max_steps=100000"], exp_id=exp_id)
    exp_dir = base / exp_id
    with Job(cmd, tmp, chaos_env(cache_dir), tmp / "orphan.log") as job:
        wait_until(lambda: disk_state(exp_dir / "checkpoints").newest_step >= 3, 240, "a committed checkpoint", job)
        workers = list(job.wait_for_workers(2).values())
        job.proc.send_signal(signal.SIGKILL)  # the agent alone; its workers live in sessions of their own
        killed = time.monotonic()
        left = psutil.wait_procs(workers, timeout=ORPHAN_BOUND_S)[1]
        took = time.monotonic() - killed
        output = job.output()
    return {"exp_dir": exp_dir, "left": left, "took": took, "output": output, "events": events(exp_dir)}


def test_orphaned_workers_stop_by_themselves(orphan_run: dict[str, Any]) -> None:
    assert not orphan_run["left"], f"workers still running {ORPHAN_BOUND_S:.0f}s after the agent died"
    assert not (orphan_run["exp_dir"] / ".lock").exists()
    lost = [e for e in orphan_run["events"] if e["event"] == "launcher_lost"]
    assert lost and "launcher" in lost[0]["message"]
    meta = json.loads((orphan_run["exp_dir"] / "metadata.json").read_text())
    assert meta["status"] == "interrupted"


def test_orphans_last_checkpoint_verifies(orphan_run: dict[str, Any]) -> None:
    root = orphan_run["exp_dir"] / "checkpoints"
    state = disk_state(root)
    assert state.latest is not None and not state.problems()
    done = subprocess.run([str(BIN / "seo-dist"), "verify", str(root / state.latest)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
