"""ExperimentTracker with 2 real ranks under torchrun (gloo on CPU), used standalone from a user script
(``helpers_tracking_worker.py``): one directory, one TensorBoard file, rank 0 the only writer, errors
broadcast to every rank, resume without duplicates, failed and interrupted runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers_tracking import (
    rank_results,
    read_wandb_records,
    run_torchrun,
    strict_json_lines,
    torchrun_command,
    tracking_env,
    wandb_history,
)

STEPS = 20


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def dist_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One 2-rank run with the default id, then a second job that first tries to reuse that id (refused on
    both ranks) and then resumes it from step 9."""
    root = tmp_path_factory.mktemp("tracking_dist")
    base = root / "exps"
    first = run_torchrun(
        root, 2, "--mode", "ok", "--base-dir", str(base), "--steps", str(STEPS), "--out", str(root / "ok")
    )
    assert first.returncode == 0, _explain(first)
    exp_dirs = [p for p in base.iterdir() if p.is_dir()]
    assert len(exp_dirs) == 1, exp_dirs
    exp_dir = exp_dirs[0]
    snapshot = {
        "rows": strict_json_lines(exp_dir / "metrics" / "metrics.jsonl"),
        "metadata": json.loads((exp_dir / "metadata.json").read_text()),
        "tb_files": sorted((exp_dir / "logs" / "tensorboard").glob("events.out.tfevents.*")),
        "wandb_runs": sorted((exp_dir / "logs" / "wandb").glob("offline-run-*")),
        "events": strict_json_lines(exp_dir / "logs" / "events.jsonl"),
    }
    time.sleep(1.1)  # wandb names offline run folders by the second
    second = run_torchrun(
        root, 2, "--mode", "resume", "--base-dir", str(base), "--exp-id", exp_dir.name, "--resume-step", "9",
        "--steps", str(STEPS + 5), "--out", str(root / "resume"),
    )  # fmt: skip
    assert second.returncode == 0, _explain(second)
    return {"root": root, "base": base, "exp_dir": exp_dir, "first": first, "second": second, "snapshot": snapshot}


def test_two_ranks_make_one_directory_with_the_broadcast_id(dist_runs: dict) -> None:
    results = rank_results(dist_runs["root"] / "ok")
    assert sorted(results) == [0, 1]
    assert results[0]["world_size"] == 2
    assert results[0]["exp_dir"] == results[1]["exp_dir"] == str(dist_runs["exp_dir"])
    assert dist_runs["exp_dir"].name.startswith("exp_")  # default id decided by rank 0 and broadcast


def test_metadata_lists_both_ranks_and_the_world(dist_runs: dict) -> None:
    meta = dist_runs["snapshot"]["metadata"]
    assert meta["status"] == "completed"
    assert [r["rank"] for r in meta["system"]["ranks"]] == [0, 1]
    assert len({r["pid"] for r in meta["system"]["ranks"]}) == 2
    assert meta["system"]["hosts"][0]["ranks"] == [0, 1]
    assert {k: meta["world"][k] for k in ("size", "nodes", "launcher")} == {
        "size": 2,
        "nodes": 1,
        "launcher": "torchrun",
    }
    assert meta["world"]["launch_id"]  # lets torchrun-restarted workers find this experiment
    assert meta["config"]["hparams"] == {"lr": 1e-3, "seed": 1} and len(meta["config_hash"]) == 64


def test_only_rank_zero_writes_metrics_tensorboard_and_wandb(dist_runs: dict) -> None:
    snap = dist_runs["snapshot"]
    rows = snap["rows"]
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == list(range(STEPS))  # both ranks logged every step; only rank 0's rows exist
    val_steps = [r["step"] for r in rows if "val/loss" in r]
    assert val_steps == list(range(0, STEPS, 5))
    assert len(snap["tb_files"]) == 1
    assert len(snap["wandb_runs"]) == 1
    heartbeats = [e for e in snap["events"] if e["event"] == "rank_heartbeat"]
    assert heartbeats and {e["source_rank"] for e in heartbeats} == {0}  # rank 1's log_event is a no-op
    stragglers = [e for e in snap["events"] if e["event"] == "straggler"]
    assert [(e["rank"], e["source_rank"]) for e in stragglers] == [(0, 0)]
    rank_files = list((dist_runs["exp_dir"] / "logs").glob("events.rank*.jsonl"))
    assert [p.name for p in rank_files] == ["events.rank1.jsonl"]  # only with all_ranks=True
    (own,) = strict_json_lines(rank_files[0])
    assert own["event"] == "straggler" and own["rank"] == 1 and own["source_rank"] == 1 and own["level"] == "warning"


def test_existing_id_is_refused_on_every_rank(dist_runs: dict) -> None:
    results = rank_results(dist_runs["root"] / "resume")
    messages = {results[r]["exists_error"] for r in (0, 1)}
    assert len(messages) == 1
    (message,) = messages
    assert message and "already exists" in message and dist_runs["exp_dir"].name in message


def test_resume_continues_without_duplicate_rows(dist_runs: dict) -> None:
    exp_dir = dist_runs["exp_dir"]
    rows = strict_json_lines(exp_dir / "metrics" / "metrics.jsonl")
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == list(range(STEPS + 5))
    assert [r["step"] for r in rows if "val/loss" in r] == list(range(0, STEPS + 5, 5))
    meta = json.loads((exp_dir / "metadata.json").read_text())
    assert meta["status"] == "completed" and len(meta["resumes"]) == 1
    assert meta["resumes"][0]["resume_step"] == 9
    assert meta["start_timestamp"] == dist_runs["snapshot"]["metadata"]["start_timestamp"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(exp_dir / "logs" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(STEPS + 5))

    run_id = meta["wandb"]["run_id"]
    assert run_id == dist_runs["snapshot"]["metadata"]["wandb"]["run_id"]
    segments = sorted((exp_dir / "logs" / "wandb").glob(f"offline-run-*-{run_id}"))
    steps = [
        sorted({h["_step"] for h in wandb_history(read_wandb_records(d / f"run-{run_id}.wandb"))}) for d in segments
    ]
    assert steps == [list(range(STEPS)), list(range(10, STEPS + 5))]


def test_failed_run_is_recorded_on_rank_zero_and_the_failing_rank(tmp_path: Path) -> None:
    proc = run_torchrun(tmp_path, 2, "--mode", "fail", "--base-dir", "exps", "--exp-id", "boom", "--out", "out",
                        "--wandb", "disabled")  # fmt: skip
    assert proc.returncode != 0, _explain(proc)
    results = rank_results(tmp_path / "out")
    assert {r["status"] for r in results.values()} == {"failed"}  # re-raised on both ranks
    exp_dir = tmp_path / "exps" / "boom"
    meta = json.loads((exp_dir / "metadata.json").read_text())
    assert meta["status"] == "failed" and meta["error"] == "RuntimeError: boom at step 3 on rank 0"
    assert "helpers_tracking_worker.py" in meta["traceback"] and "boom at step 3" in meta["traceback"]
    rank1 = strict_json_lines(exp_dir / "logs" / "events.rank1.jsonl")
    assert [e["event"] for e in rank1] == ["rank_failed"]
    assert "boom at step 3 on rank 1" in rank1[0]["traceback"] and rank1[0]["rank"] == 1
    assert not (exp_dir / ".lock").exists()


def test_sigterm_to_torchrun_marks_the_run_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = torchrun_command(2, "--mode", "sigterm", "--base-dir", "exps", "--exp-id", "sig", "--out", str(out),
                           "--wandb", "disabled")  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=tracking_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "ready").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "worker never became ready"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # what a scheduler does to the launcher
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    results = rank_results(out)
    assert {r["status"] for r in results.values()} == {"interrupted"}, output[-3000:]
    assert {r["signal"] for r in results.values()} == {signal.SIGTERM}
    exp_dir = tmp_path / "exps" / "sig"
    meta = json.loads((exp_dir / "metadata.json").read_text())
    assert meta["status"] == "interrupted" and "SIGTERM" in meta["error"]
    assert meta["summary"]["last_step"] >= 3 and meta["end_timestamp"] > meta["start_timestamp"]
    steps = [r["step"] for r in strict_json_lines(exp_dir / "metrics" / "metrics.jsonl") if "train/loss" in r]
    assert steps == list(range(len(steps))) and len(steps) >= 4
    assert not (exp_dir / ".lock").exists()
    assert not (exp_dir / "logs" / "events.rank1.jsonl").exists()  # an interruption is not a rank failure
