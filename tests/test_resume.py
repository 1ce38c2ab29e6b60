"""Exact resume through the trainer: a run stopped at step k and resumed logs the same losses as one
that never stopped (ZeRO 1, 2 and 3 on 2 real ranks)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import BIN, CONFIGS, free_port, job_env, read_jsonl, run_job

RESUME_RUN = ["train.max_steps=12", "train.log_interval=1", "train.eval_interval=6", "train.eval_batches=2",
              "train.warmup_steps=2", "train.progress_bar=false", "checkpoint.save_interval=6",
              "model.config.n_layer=2", "model.config.n_embd=64", "model.config.n_head=2",
              "experiment.console=false", "experiment.code_snapshot=false", "experiment.wandb=disabled"]


def losses(exp_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_jsonl(exp_dir / "metrics" / "metrics.jsonl") if "train/loss" in r}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_resume_matches_uninterrupted_run(stage, tmp_path, cache_dir):
    full = run_job(tmp_path, cache_dir, name="full", overrides=[*RESUME_RUN, f"deepspeed.zero_optimization.stage={stage}"])
    assert full.proc.returncode == 0, full.output[-5000:]
    full_dir = full.base_dir / "full"
    reference = losses(full_dir)
    assert sorted(reference) == list(range(1, 13))

    # A copy of the experiment as it was right after step 6: later checkpoints are gone.
    resumed_dir = full.base_dir / "resumed"
    shutil.copytree(full_dir, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step_00000012")
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()),
         "-m", "seo_dist.train", "--resume", str(resumed_dir / "checkpoints" / "step_00000006")],
        cwd=tmp_path, env=job_env(cache_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    again = losses(resumed_dir)
    assert sorted(again) == list(range(1, 13)), "rows after the resume step must not be duplicated"
    for step in range(7, 13):
        assert again[step] == pytest.approx(reference[step], rel=1e-6), (step, again[step], reference[step])
    events = [e["event"] for e in read_jsonl(resumed_dir / "logs" / "events.jsonl")]
    assert "resumed" in events
    assert (CONFIGS / "tiny_cpu.yaml").is_file()
