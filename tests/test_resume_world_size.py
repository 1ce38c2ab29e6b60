"""ZeRO stage 0 through the trainer, and resumes at another world size (stage 0 state is not partitioned):
2 ranks save, 1 rank continues from step 8, then 2 ranks continue from the 1-rank run's step 12."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, FAST, JobRun, free_port, job_env, read_jsonl, run_job

STAGE0 = [*FAST, "deepspeed.zero_optimization.stage=0", "checkpoint.save_interval=4", "checkpoint.keep_last=4",
          "experiment.code_snapshot=false", "experiment.wandb=disabled", "experiment.console=false"]  # fmt: skip
MICRO_BATCH = 8  # configs/tiny_cpu.yaml


def _resume_copy(src: Path, dst: Path, step: int, nproc: int, cache_dir: Path) -> subprocess.CompletedProcess:
    """Copy the experiment ``src`` as it was after ``step`` (later checkpoints removed) and resume it with ``nproc`` ranks."""
    shutil.copytree(src, dst)
    for folder in (dst / "checkpoints").glob("step_*"):
        if int(folder.name.split("_")[1]) > step:
            shutil.rmtree(folder)
    cmd = [str(BIN / "torchrun"), "--nproc-per-node", str(nproc), "--master-port", str(free_port()), "-m",
           "seo_dist.train", "--resume", str(dst / "checkpoints" / f"step_{step:08d}")]  # fmt: skip
    return subprocess.run(cmd, cwd=dst.parent.parent, env=job_env(cache_dir), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="session")
def stage0_runs(tmp_path_factory, cache_dir) -> dict[int, Path]:
    """Experiment directories by the world size of their last run: 2 -> (1 from step 8) -> (2 from step 12)."""
    tmp = tmp_path_factory.mktemp("stage0")
    first = run_job(tmp, cache_dir, nproc=2, name="z0", overrides=STAGE0)
    assert first.proc.returncode == 0, first.output[-6000:]
    assert JobRun(first.proc, first.base_dir).final()[:2] == ("completed", 16)
    base = first.base_dir
    one = _resume_copy(base / "z0", base / "z0_one_rank", 8, 1, cache_dir)
    assert one.returncode == 0, (one.stdout + one.stderr)[-6000:]
    two = _resume_copy(base / "z0_one_rank", base / "z0_two_ranks", 12, 2, cache_dir)
    assert two.returncode == 0, (two.stdout + two.stderr)[-6000:]  # a rank without a saved state: TypeError before
    return {2: base / "z0_two_ranks", 1: base / "z0_one_rank", 0: base / "z0"}


def _manifest(exp: Path, step: int) -> dict:
    return json.loads((exp / "checkpoints" / f"step_{step:08d}" / "manifest.json").read_text())


def test_stage0_trains_and_saves_on_two_ranks(stage0_runs):
    manifest = _manifest(stage0_runs[0], 16)
    assert (manifest["zero_stage"], manifest["world_size"]) == (0, 2)
    meta = json.loads((stage0_runs[0] / "metadata.json").read_text())
    assert meta["status"] == "completed"


@pytest.mark.parametrize(("world", "start", "previous"), [(1, 8, 2), (2, 12, 1)])
def test_stage0_resume_at_another_world_size_continues_the_data_position(stage0_runs, world, start, previous):
    exp = stage0_runs[world]
    meta = json.loads((exp / "metadata.json").read_text())
    assert meta["status"] == "completed" and meta["world"]["size"] == world
    assert _manifest(exp, 16)["world_size"] == world
    events = read_jsonl(exp / "logs" / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "resumed"][-1] == start
    moved = [e for e in events if e["event"] == "data_resharded"][-1]  # a copy keeps the earlier run's events
    assert (moved["from_world_size"], moved["to_world_size"]) == (previous, world)
    # every rank consumed the same micro-batches: the global sample position is kept exactly
    assert moved["samples_in_epoch"] == moved["position"] * world * MICRO_BATCH and moved["exact"] is True
    steps = [r["step"] for r in read_jsonl(exp / "metrics" / "metrics.jsonl") if "train/loss" in r]
    assert steps == [4, 8, 12, 16]


@pytest.mark.parametrize("saved, resumed", [((2, 4), (1, 4)), ((1, 4), (2, 4)), ((2, 4), (2, 2)), ((2, 4), (4, 4))])
def test_loader_position_maps_through_the_samples_consumed(saved, resumed):
    """The ranks of one world together consume the epoch's order from its start: a state saved by ``saved``
    (world size, micro batch) continues at exactly the next global sample under ``resumed`` (also when that is
    not a whole micro-batch of the new world), and the batches that follow are the next samples of that order."""
    import torch

    from seo_dist.data.loader import ShardedLoader

    blocks = torch.arange(400).view(100, 4)
    (old_world, old_mb), (new_world, new_mb) = saved, resumed
    old = [ShardedLoader(blocks, old_mb, rank=r, world_size=old_world, seed=7) for r in range(old_world)]
    for _ in range(3):
        for loader in old:
            loader.next_batch()
    consumed = 3 * old_mb * old_world
    new = [ShardedLoader(blocks, new_mb, rank=r, world_size=new_world, seed=7) for r in range(new_world)]
    moves = [loader.load_state_dict(old[0].state_dict()) for loader in new]
    assert all(m is not None and m.samples_in_epoch == consumed for m in moves)
    assert all(m.exact and m.position == consumed // (new_mb * new_world) for m in moves)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(7))
    next_ids = sorted(int(row[0]) // 4 for loader in new for row in loader.next_batch()["input_ids"])
    assert next_ids == sorted(int(i) for i in order[consumed : consumed + new_mb * new_world])


@pytest.mark.parametrize(
    ("pinned", "world", "accum", "expected"),
    [
        (None, 3, 1, None),  # nothing pinned: any world size (a changed global batch is a warning event)
        (16, 2, 1, None),
        (16, 1, 1, "needs train.grad_accum=2 (it is 1)"),
        (16, 3, 1, "cannot be split over 3 rank(s) with train.micro_batch_size=8 (16 is not a multiple of 24)"),
    ],
)
def test_a_pinned_global_batch_names_the_setting_that_fits_the_world_size(pinned, world, accum, expected):
    from seo_dist.config import load_config
    from seo_dist.resume import global_batch_problem

    sets = [f"train.grad_accum={accum}"] + ([f"deepspeed.train_batch_size={pinned}"] if pinned else [])
    job = load_config(Path(__file__).parents[1] / "configs" / "tiny_cpu.yaml", sets)
    problem = global_batch_problem(job, world)
    assert problem == expected if expected is None else expected in problem


def test_a_world_size_that_cannot_run_the_pinned_global_batch_is_one_line_and_exit_2(tmp_path, cache_dir):
    base = tmp_path / "experiments"
    cmd = [str(BIN / "python"), "-m", "seo_dist.train", "--config", str(Path(__file__).parents[1] / "configs" / "tiny_cpu.yaml"),
           "--set", f"experiment.base_dir={base}", "deepspeed.train_batch_size=12"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=job_env(cache_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "deepspeed.train_batch_size=12" in ln]
    assert len(lines) == 1 and "(12 is not a multiple of 8)" in lines[0], proc.stderr[-3000:]
    assert not base.exists()
