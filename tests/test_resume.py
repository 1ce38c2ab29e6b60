"""Exact resume through the trainer: a run stopped at step k and resumed logs the same losses as one
that never stopped (ZeRO 1, 2 and 3 on 2 real ranks)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from conftest import BIN, free_port, job_env, read_jsonl, run_job

RESUME_RUN = [
    "train.max_steps=12",
    "train.log_interval=1",
    "train.eval_interval=6",
    "train.eval_batches=2",
    "train.warmup_steps=2",
    "train.progress_bar=false",
    "checkpoint.save_interval=6",
    "model.config.n_layer=2",
    "model.config.n_embd=64",
    "model.config.n_head=2",
    "experiment.console=false",
    "experiment.code_snapshot=false",
    "experiment.wandb=disabled",
]


def losses(exp_dir, key: str = "train/loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_jsonl(exp_dir / "metrics" / "metrics.jsonl") if key in r}


def resume(checkpoint, tmp_path, cache_dir, *overrides: str) -> subprocess.CompletedProcess:
    sets = [arg for o in overrides for arg in ("--set", o)]
    return subprocess.run(
        [
            str(BIN / "torchrun"),
            "--nproc-per-node",
            "2",
            "--master-port",
            str(free_port()),
            "-m",
            "seo_dist.train",
            "--resume",
            str(checkpoint),
            *sets,
        ],
        cwd=tmp_path,
        env=job_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_resume_matches_uninterrupted_run(stage, tmp_path, cache_dir):
    full = run_job(
        tmp_path, cache_dir, name="full", overrides=[*RESUME_RUN, f"deepspeed.zero_optimization.stage={stage}"]
    )
    assert full.proc.returncode == 0, full.output[-5000:]
    full_dir = full.base_dir / "full"
    reference = losses(full_dir)
    assert sorted(reference) == list(range(1, 13))

    # A copy of the experiment as it was right after step 6: later checkpoints are gone.
    resumed_dir = full.base_dir / "resumed"
    shutil.copytree(full_dir, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step_00000012")
    proc = resume(resumed_dir / "checkpoints" / "step_00000006", tmp_path, cache_dir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    again = losses(resumed_dir)
    assert sorted(again) == list(range(1, 13)), "rows after the resume step must not be duplicated"
    for step in range(7, 13):
        assert again[step] == pytest.approx(reference[step], rel=1e-6), (step, again[step], reference[step])
    events = [e["event"] for e in read_jsonl(resumed_dir / "logs" / "events.jsonl")]
    assert "resumed" in events

    if stage != 2:
        return
    # The same resume with another peak LR: the schedule keeps its shape and scales from the resumed step on
    # (the checkpoint's LR scheduler state must not silently win over --set train.lr).
    relr_dir = full.base_dir / "relr"
    shutil.copytree(full_dir, relr_dir)
    shutil.rmtree(relr_dir / "checkpoints" / "step_00000012")
    saved_lr = float(yaml.safe_load((full_dir / "config.yaml").read_text())["train"]["lr"])
    proc = resume(relr_dir / "checkpoints" / "step_00000006", tmp_path, cache_dir, f"train.lr={saved_lr / 4}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    lr_before, lr_after = losses(full_dir, "train/lr"), losses(relr_dir, "train/lr")
    for step in range(1, 7):
        assert lr_after[step] == lr_before[step]
    for step in range(7, 13):
        assert lr_after[step] == pytest.approx(lr_before[step] / 4, rel=1e-9), step
    changed = losses(relr_dir)
    assert changed[7] == pytest.approx(reference[7], rel=1e-6)  # step 7's loss is computed before its update
    assert changed[8] != pytest.approx(reference[8], rel=1e-6)  # the update of step 7 already used the new LR
    (event,) = [e for e in read_jsonl(relr_dir / "logs" / "events.jsonl") if e["event"] == "lr_changed_on_resume"]
    assert event["step"] == 6 and event["saved_lr"] == saved_lr and event["lr"] == saved_lr / 4
