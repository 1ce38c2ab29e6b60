"""Chaos, the CI subset: one experiment lives through a seeded series of faults, each start on 2 real
ranks (torchrun, DeepSpeed ZeRO-2, gloo), each fault checked against what the framework promises.

1. ``killed``: a 2-node loopback run (two torchrun processes, c10d rendezvous) is SIGKILLed whole while
   a background save is in flight (slow writes from the storage layer's fault hook).
2. ``node_lost``: resumed on 2 "nodes"; the node holding rank 1 (agent and worker) is SIGKILLed; the
   survivor must exit by itself in bounded time.
3. ``restarted``: resumed under ``torchrun --max-restarts 1``, with wandb unable to start (``online``, no
   API key), one NaN loss on one rank (``train.on_nan: skip``), and a second job pointed at the same
   directory; then rank 1 is SIGKILLed (torchrun restarts both workers, which must resume), then
   the scheduler pre-empts with SIGTERM to every worker (final checkpoint, ``interrupted``, exit 0).
4. ``disk_full``: the newest checkpoint gets a flipped byte, TensorBoard's folder is replaced by a file,
   and rank 1's disk is full (ENOSPC) at the first save.

Plus a fresh run that diverges for real (``train.lr=1e4``, ``train.on_nan: stop``). The randomised,
repeated trials are in test_chaos_kill.py (``pytest -m chaos``).
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from chaos_harness import (
    STARTUP_TIMEOUT_S,
    SURVIVOR_BOUND_S,
    TESTS,
    Chain,
    Job,
    chaos_env,
    check_steps_logged_once,
    disk_state,
    event_names,
    events,
    loss_rows,
    metadata,
    restart_losses,
    train_command,
    wait_until,
)
from chaos_scorecard import record
from conftest import PYTHON

from seo_dist.checkpoint.layout import MANIFEST, checkpoint_name, parse_step
from seo_dist.tracking.lock import read_lock_owner

SEED = 20261127
SAVE_EVERY = 3
SETS = ["train.max_steps=400", f"checkpoint.save_interval={SAVE_EVERY}"]


def offline_wandb_env(tmp: Path) -> dict[str, str]:
    """wandb ``online`` that cannot start: no API key (no netrc, no wandb settings) and an API address nothing
    listens on. HOME stays: DeepSpeed's compiled ops are cached under it (a new HOME costs a 50 s rebuild)."""
    return {"NETRC": str(tmp / "no_netrc"), "WANDB_CONFIG_DIR": str(tmp / "wandb_config"),
            "WANDB_BASE_URL": "http://127.0.0.1:9"}  # fmt: skip


def without_wandb_mode(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}


def workers_output(output: str) -> str:
    """The workers' output: torchrun's own report of a failed worker (its ChildFailedError traceback) cut off."""
    lines = output.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("Traceback (most recent call last):") and "bin/torchrun" in lines[i + 1]:
            return "\n".join(lines[:i])
    return output


def seo_dist_lines(stderr: str) -> list[str]:
    """What seo_dist itself printed (libraries add warnings of their own, e.g. DeepSpeed's accelerator line)."""
    return [line for line in stderr.splitlines() if line.startswith("seo_dist")]


def flip_a_byte(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    data[rng.randrange(len(data))] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------- the chain


@pytest.fixture(scope="module")
def chain(tmp_path_factory, cache_dir) -> Chain:
    return Chain(tmp_path_factory.mktemp("chaos_chain"), cache_dir, "chain", SETS)


@pytest.fixture(scope="module")
def rng() -> random.Random:
    return random.Random(SEED)


@pytest.fixture(scope="module")
def killed(chain, rng) -> dict[str, Any]:
    return chain.kill_trial(rng, 400, topology="nodes", kind="save", after_commit=True)


@pytest.fixture(scope="module")
def node_lost(killed, chain, rng) -> dict[str, Any]:
    return chain.kill_trial(rng, 400, topology="nodes", lose="1", kind="step", after_commit=True)


@pytest.fixture(scope="module")
def restarted(node_lost, chain) -> dict[str, Any]:
    tmp, exp_dir = chain.tmp, chain.exp_dir
    env = without_wandb_mode(chaos_env(chain.cache, CHAOS_NAN_AT="+2:1", **offline_wandb_env(tmp)))
    attempt = chain.start(env=env, resume_sets=["train.on_nan=skip", "experiment.wandb=online"],
                          torchrun_extra=["--max-restarts", "1"], entry=[str(TESTS / "chaos_nan_job.py")])  # fmt: skip
    out: dict[str, Any] = {"attempt": attempt}
    job = attempt.lead
    try:
        first = job.wait_for_workers(2)
        out["rank0_pid"] = first[0].pid
        chain.wait_until_training(attempt)
        wait_until(lambda: len(loss_rows(exp_dir)) >= attempt.started_step + 2, STARTUP_TIMEOUT_S, "two steps", job)

        # a second job on the same experiment directory, while this one trains
        second = subprocess.run([PYTHON, "-m", "seo_dist.train", "--resume", str(exp_dir)], cwd=tmp,
                                env=chaos_env(chain.cache), capture_output=True, text=True, timeout=180)  # fmt: skip
        out["second"] = second
        out["alive_after_second"] = job.poll() is None
        out["lock_owner"] = read_lock_owner(exp_dir / ".lock")

        # SIGKILL of rank 1 once a new checkpoint is committed: torchrun restarts both workers
        committed_before = disk_state(chain.ckpt_root).newest_step

        def new_commit_is_latest() -> bool:
            state = disk_state(chain.ckpt_root)
            return state.newest_step > committed_before and state.latest == checkpoint_name(state.newest_step)

        wait_until(new_commit_is_latest, 60, "a new commit, named by latest", job)
        out["newest_before_rank_kill"] = disk_state(chain.ckpt_root).newest_step
        first[1].kill()
        out["rank_killed_at"] = time.monotonic()
        wait_until(lambda: (w := job.workers()) and len(w) == 2 and not {p.pid for p in w.values()} & {p.pid for p in
                   first.values()}, STARTUP_TIMEOUT_S, "restarted workers", job)  # fmt: skip
        out["restart_s"] = time.monotonic() - out["rank_killed_at"]
        out["newest_at_restart"] = disk_state(chain.ckpt_root).newest_step  # what the new workers must load
        wait_until(lambda: "restart_resumed" in event_names(exp_dir), STARTUP_TIMEOUT_S, "auto-resume", job)
        out["resumed_s"] = time.monotonic() - out["rank_killed_at"]
        resumed_to = disk_state(chain.ckpt_root).newest_step
        wait_until(lambda: disk_state(chain.ckpt_root).newest_step > resumed_to, STARTUP_TIMEOUT_S,
                   "a commit after the restart", job)  # fmt: skip

        # pre-emption: SIGTERM to every worker
        for proc in job.workers().values():
            proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out["rc"] = job.wait(120)
        out["sigterm_exit_s"] = time.monotonic() - sent
    finally:
        attempt.close()
    out["output"] = job.output()
    out["state"] = disk_state(chain.ckpt_root)
    out["meta"] = metadata(exp_dir)
    out["events"] = chain.events_of(attempt)
    return out


@pytest.fixture(scope="module")
def disk_full(restarted, chain) -> dict[str, Any]:
    before = disk_state(chain.ckpt_root)
    newest = chain.ckpt_root / before.committed[-1]
    biggest = max((p for p in newest.iterdir() if p.name != MANIFEST), key=lambda p: p.stat().st_size)
    flip_a_byte(biggest, random.Random(SEED))
    shutil.rmtree(chain.exp_dir / "logs" / "tensorboard")
    (chain.exp_dir / "logs" / "tensorboard").write_text("a file where TensorBoard wants its folder")
    attempt = chain.start(env=chaos_env(chain.cache, SEO_DIST_CKPT_FAULT="ENOSPC:optim_states@1"))
    try:
        rcs = attempt.wait()
    finally:
        attempt.close()
    return {"rc": rcs[0], "output": attempt.lead.output(), "before": before, "corrupted": newest.name,
            "state": disk_state(chain.ckpt_root), "events": chain.events_of(attempt), "meta": metadata(chain.exp_dir)}  # fmt: skip


# ---------------------------------------------------------------------------- 1. whole-job SIGKILL


def test_whole_job_sigkill_during_a_save_leaves_only_verified_commits(killed):
    state = killed["state"]
    assert "save in flight" in killed["moment"]
    assert not state.problems(), state.problems()  # every committed folder verifies; latest names one of them
    assert state.staging, "the kill was meant to land while a save was being written"
    assert killed["rcs"] == [-signal.SIGKILL] * 2


# ---------------------------------------------------------------------------- 2. a lost node


def test_lost_node_survivor_exits_in_bounded_time(node_lost, chain):
    assert node_lost["exit_s"] < SURVIVOR_BOUND_S
    assert not node_lost["state"].problems(), node_lost["state"].problems()
    survivor_rc = node_lost["rcs"]
    assert sorted(survivor_rc)[0] == -signal.SIGKILL and sorted(survivor_rc)[1] != 0, survivor_rc
    status = metadata(chain.exp_dir)["status"]
    assert status in ("failed", "interrupted"), status  # rank 0 survived and recorded the outcome
    record("Node lost (2-node loopback: SIGKILL of one torchrun and its rank)",
           f"survivor exited by itself in {node_lost['exit_s']:.0f}s; status {status}; resumed")  # fmt: skip


def test_each_restart_resumed_from_the_newest_commit(restarted, chain, killed, node_lost):
    lost = restart_losses(chain)
    assert lost == 0
    loads = chain.loads()
    assert len(loads) == 2  # after the kill and after the lost node (torchrun's restart: see below)
    assert "stale_lock_taken_over" in event_names(chain.exp_dir)  # the SIGKILLed job's lock did not block
    record("SIGKILL of the whole job (2-node loopback) while a save is in flight",
           "every committed checkpoint verified; latest never partial; resumed from the newest", data_lost=lost)  # fmt: skip


# ---------------------------------------------------------------------------- 3. restart, wandb, NaN, two jobs, SIGTERM


def test_rank_sigkill_under_max_restarts_resumes_automatically(restarted, chain):
    names = [e["event"] for e in restarted["events"]]
    assert names.count("restart_resumed") == 1 and names.count("resumed") == 2, names
    loads = [e for e in restarted["events"] if e["event"] == "checkpoint_loaded"]
    assert loads[1]["step"] == restarted["newest_at_restart"] >= restarted["newest_before_rank_kill"], loads
    assert loads[1]["fell_back_from"] == []
    assert [p.name for p in chain.base.iterdir()] == [chain.exp_id]  # no new experiment for the restart
    record("SIGKILL of one rank under torchrun --max-restarts 1",
           f"torchrun restarted both workers; they resumed the same experiment {restarted['resumed_s']:.0f}s "
           f"after the kill")  # fmt: skip


def test_sigterm_ends_interrupted_with_a_final_checkpoint_and_exit_0(restarted, chain):
    assert restarted["rc"] == 0, restarted["output"][-4000:]  # torchrun exits 0 only if every worker did
    meta = restarted["meta"]
    assert meta["status"] == "interrupted"
    stopped_at = meta["summary"]["last_step"]
    state = restarted["state"]
    assert not state.problems() and state.staging == [], state
    assert state.latest == checkpoint_name(stopped_at), (state.latest, stopped_at)  # the final save, committed
    assert f"seo_dist: interrupted at step {stopped_at}" in restarted["output"]
    assert not (chain.exp_dir / ".lock").exists()
    check_steps_logged_once(chain.exp_dir, stopped_at)  # across 4 starts: nothing lost, nothing twice
    record("SIGTERM to every worker (pre-emption)",
           f"final checkpoint at the stop step; status interrupted; exit 0 after {restarted['sigterm_exit_s']:.0f}s")  # fmt: skip


def test_second_job_on_the_same_directory_gets_one_line_and_exit_2(restarted):
    second = restarted["second"]
    assert second.returncode == 2, second.stdout + second.stderr
    err = seo_dist_lines(second.stderr)
    assert len(err) == 1 and "is in use by pid" in err[0] and "Traceback" not in second.stderr, second.stderr
    assert restarted["alive_after_second"]
    owner = restarted["lock_owner"]
    assert owner is not None and owner.pid == restarted["rank0_pid"]  # the lock still belongs to the first job
    record("Two jobs on one experiment directory", "second: one line, exit 2; first unharmed (kept its lock, went on)")


def test_wandb_that_cannot_start_is_a_warning_and_training_goes_on(restarted):
    unavailable = [e for e in restarted["events"] if e["event"] == "sink_unavailable"]
    assert unavailable and all("wandb" in e["message"] and e["level"] == "warning" for e in unavailable), unavailable
    record("wandb cannot start (online, no API key, no network)", "warning event; training went on")


def test_one_non_finite_batch_is_skipped_with_on_nan_skip(restarted, chain):
    nan = [e for e in restarted["events"] if e["event"] == "non_finite_loss"]
    assert nan and all(e["policy"] == "skip" and e["level"] == "warning" for e in nan), nan
    assert all(isinstance(r["train/loss"], float) for r in loss_rows(chain.exp_dir))  # no NaN reached the metrics
    record("Loss NaN once on one rank (on_nan: skip)", "event; that step's update skipped on every rank; run went on")


# ---------------------------------------------------------------------------- 4. disk full, corruption, TensorBoard


def test_disk_full_during_a_save_fails_cleanly(disk_full):
    assert disk_full["rc"] == 1, disk_full["output"][-4000:]
    failed = [e for e in disk_full["events"] if e["event"] == "checkpoint_save_failed"]
    assert failed and "No space left on device" in failed[0]["error"] and failed[0]["level"] == "error", failed
    out = workers_output(disk_full["output"])
    assert "seo_dist: training stopped: checkpoint" in out and "No space left" in out
    assert "Traceback" not in out, out[-3000:]
    state, before = disk_full["state"], disk_full["before"]
    assert state.staging == []  # nothing half written is left behind
    assert state.committed == before.committed and state.latest == before.latest  # nothing new, nothing lost
    assert list(state.invalid) == [disk_full["corrupted"]]  # only the folder this test damaged on purpose
    assert disk_full["meta"]["status"] == "failed" and "No space left" in disk_full["meta"]["error"]
    record("Disk full during a save (ENOSPC on rank 1 from the storage fault hook)",
           "error event + one line, exit 1, status failed; no partial folder; earlier checkpoints intact")  # fmt: skip


def test_corrupted_newest_checkpoint_falls_back(disk_full):
    fallback = [e for e in disk_full["events"] if e["event"] == "checkpoint_fallback"]
    assert [e["failed"] for e in fallback] == [disk_full["corrupted"]]
    loaded = [e for e in disk_full["events"] if e["event"] == "checkpoint_loaded"]
    assert loaded and loaded[0]["fell_back_from"] == [disk_full["corrupted"]]
    assert parse_step(disk_full["corrupted"]) > loaded[0]["step"]
    record("Corruption in a real run: a flipped byte in the newest checkpoint's biggest shard",
           "checkpoint_fallback to the previous one; training went on")  # fmt: skip


def test_tensorboard_writer_failure_is_an_event_and_training_goes_on(disk_full):
    failed = [e for e in disk_full["events"] if e["event"] == "sink_failed"]
    assert [e["sink"] for e in failed] == ["tensorboard"], failed
    assert any(e["event"] == "checkpoint_save_failed" for e in disk_full["events"])  # it trained on to the save
    record("TensorBoard writer failing (its folder is a file)", "error event; sink dropped; the others went on")


# ---------------------------------------------------------------------------- a real divergence


@pytest.fixture(scope="module")
def diverged(chain) -> dict[str, Any]:
    """A fresh one-process run (a resume takes the learning-rate schedule from the checkpoint, so lr=1e4 would
    not apply there); how 2 ranks agree on a non-finite loss is shown by the injected NaN above."""
    exp_dir = chain.base / "diverged"
    sets = ["train.max_steps=60", "train.lr=1e4", "train.on_nan=stop", "train.warmup_steps=0"]
    cmd = train_command(chain.base, sets, exp_id="diverged", launcher=[PYTHON])
    with Job(cmd, chain.tmp, chaos_env(chain.cache), chain.tmp / "logs" / "diverged.log") as job:
        rc = job.wait()
    return {"rc": rc, "output": job.output(), "events": events(exp_dir), "meta": metadata(exp_dir)}


def test_real_divergence_stops_with_one_line_exit_1_status_failed(diverged):
    assert diverged["rc"] == 1, diverged["output"][-3000:]
    nan = [e for e in diverged["events"] if e["event"] == "non_finite_loss"]
    assert nan and nan[0]["policy"] == "stop" and nan[0]["level"] == "error"
    out = workers_output(diverged["output"])
    assert "seo_dist: training stopped: loss became non-finite" in out
    assert "Traceback" not in out, out[-3000:]
    assert diverged["meta"]["status"] == "failed" and "non-finite" in diverged["meta"]["error"]
    record("Loss NaN for real (train.lr=1e4, on_nan: stop)", "event; one line; exit 1; status failed")


@pytest.mark.chaos
def test_real_divergence_with_on_nan_skip_stops_instead_of_looping(tmp_path, cache_dir):
    """``skip`` cannot help once the weights themselves are non-finite: after a bounded number of skipped
    steps in a row the run stops like ``stop`` does (it used to loop forever, never finishing a step)."""
    from seo_dist.trainer import MAX_CONSECUTIVE_NON_FINITE

    base = tmp_path / "experiments"
    sets = ["train.max_steps=60", "train.lr=1e4", "train.on_nan=skip", "train.warmup_steps=0"]
    cmd = train_command(base, sets, exp_id="diverged_skip", launcher=[PYTHON])
    with Job(cmd, tmp_path, chaos_env(cache_dir), tmp_path / "diverged_skip.log") as job:
        rc = job.wait(180)
    exp_dir = base / "diverged_skip"
    nan = [e for e in events(exp_dir) if e["event"] == "non_finite_loss"]
    assert rc == 1, job.tail()
    assert len(nan) == MAX_CONSECUTIVE_NON_FINITE and all(e["policy"] == "skip" for e in nan)
    assert "seo_dist: training stopped: loss stayed non-finite" in job.output()
    assert metadata(exp_dir)["status"] == "failed"
    record("Loss NaN for good (train.lr=1e4, on_nan: skip)",
           f"stopped after {MAX_CONSECUTIVE_NON_FINITE} skipped steps in a row; exit 1; no endless loop")  # fmt: skip
