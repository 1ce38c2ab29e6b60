"""Real training runs: DeepSpeed ZeRO 1/2/3 on 1 and 2 CPU ranks (gloo), three launchers.

Each run is a subprocess; the session-scoped fixtures are shared with other test modules that
inspect the same experiment directories.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from conftest import BIN, CONFIGS, FAST, PYTHON, JobRun, free_port, job_env, read_jsonl, run_job

from seo_dist.checkpoint.faults import COPY_DELAY_ENV


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, cache_dir) -> JobRun:
    """The README's default job, unchanged but for where it writes: 2 ranks, ZeRO-2, torchrun."""
    tmp = tmp_path_factory.mktemp("default_run")
    start = time.perf_counter()
    run = run_job(tmp, cache_dir, launcher="torchrun", nproc=2, name="default", timeout=600)
    run.wall_s = time.perf_counter() - start
    assert run.proc.returncode == 0, run.output[-6000:]
    return run


COPY_DELAY_S = 0.5


def _single_rank_run(tmp_path_factory, cache_dir, stage: int) -> JobRun:
    tmp = tmp_path_factory.mktemp(f"one_rank_z{stage}")
    run = run_job(
        tmp,
        cache_dir,
        launcher="python",
        nproc=1,
        name=f"z{stage}",
        # background saves at 6 and 12 whose copy to host buffers is slowed down: the optimizer step after each
        # must wait for it (checkpoint.copy_in_background), also with gradient accumulation
        overrides=[
            *FAST,
            f"deepspeed.zero_optimization.stage={stage}",
            "checkpoint.save_interval=6",
            "train.grad_accum=2",
        ],  # fmt: skip
        env={COPY_DELAY_ENV: str(COPY_DELAY_S)},
    )
    assert run.proc.returncode == 0, run.output[-6000:]
    return run


@pytest.fixture(scope="session", params=[1, 2, 3], ids=lambda s: f"zero{s}")
def one_rank_run(request, tmp_path_factory, cache_dir) -> JobRun:
    return _single_rank_run(tmp_path_factory, cache_dir, request.param)


@pytest.fixture(scope="session")
def deepspeed_launcher_run(tmp_path_factory, cache_dir) -> JobRun:
    """2 ranks, ZeRO-3, started by the deepspeed launcher (which appends --local_rank=N)."""
    tmp = tmp_path_factory.mktemp("ds_launcher")
    run = run_job(
        tmp,
        cache_dir,
        launcher="deepspeed",
        nproc=2,
        name="dslaunch",
        overrides=[*FAST, "deepspeed.zero_optimization.stage=3"],
    )
    assert run.proc.returncode == 0, run.output[-6000:]
    return run


@pytest.fixture(scope="session")
def two_node_run(tmp_path_factory, cache_dir) -> JobRun:
    """Two torchrun 'nodes' on loopback (c10d rendezvous), one rank each, ZeRO-1: one world of size 2."""
    tmp = tmp_path_factory.mktemp("two_nodes")
    base = tmp / "experiments"
    endpoint = f"127.0.0.1:{free_port()}"
    cmd = [
        str(BIN / "torchrun"),
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        "seo_dist_test",
        "-m",
        "seo_dist.train",
        "--config",
        str(CONFIGS / "tiny_cpu.yaml"),
        "--set",
        f"experiment.base_dir={base}",
        "experiment.experiment_id=nodes",
        *FAST,
        "deepspeed.zero_optimization.stage=1",
    ]
    env = job_env(cache_dir)
    nodes = [
        subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in nodes]
    for p, (out, err) in zip(nodes, outs):
        assert p.returncode == 0, (out + err)[-6000:]
    proc = subprocess.CompletedProcess(cmd, 0, "".join(o for o, _ in outs), "".join(e for _, e in outs))
    return JobRun(proc=proc, base_dir=base)


def _assert_learned(run: JobRun, min_drop: float) -> None:
    status, step, first, last = run.final()
    assert status == "completed"
    assert last < first - min_drop, f"val/loss {first} -> {last}"


def test_default_job_learns_on_two_ranks(default_run):
    status, step, first, last = default_run.final()
    assert (status, step) == ("completed", 150)
    assert last < 0.6 * first, f"val/loss {first} -> {last}"  # clearly below the start (7.6 -> ~3)
    print(f"default job wall time: {default_run.wall_s:.1f}s, val/loss {first:.3f} -> {last:.3f}")


def test_one_rank_without_launcher(one_rank_run):
    _assert_learned(one_rank_run, min_drop=1.0)


def test_deepspeed_launcher_two_ranks_zero3(deepspeed_launcher_run):
    _assert_learned(deepspeed_launcher_run, min_drop=1.0)
    assert deepspeed_launcher_run.proc.stdout.count("seo_dist: completed") == 1  # rank 0 only
    assert "--local_rank" not in deepspeed_launcher_run.proc.stderr


def test_two_nodes_on_loopback_form_one_world(two_node_run):
    _assert_learned(two_node_run, min_drop=1.0)
    assert two_node_run.proc.stdout.count("seo_dist: completed") == 1  # only global rank 0 reports
    assert [p.name for p in two_node_run.exp_dirs()] == ["nodes"]


def test_one_rank_metrics_are_logged(one_rank_run):
    rows = read_jsonl(one_rank_run.exp_dirs()[0] / "metrics" / "metrics.jsonl")
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_the_optimizer_step_after_a_background_save_waits_for_its_copy(one_rank_run):
    """The copy of the saves at 6 and 12 sleeps COPY_DELAY_S first; the next step's forward and backward take
    less, so its optimizer step (TrainStep) must have waited for the rest."""
    rows = read_jsonl(one_rank_run.exp_dirs()[0] / "metrics" / "metrics.jsonl")
    waits = {r["step"]: r["ckpt/copy_wait_s"] for r in rows if "ckpt/copy_wait_s" in r}
    assert len(waits) == 2 and all(w > 0.05 for w in waits.values()), waits  # without the wait: ~0
    copies = [r["ckpt/copy_s"] for r in rows if "ckpt/copy_s" in r]
    assert len(copies) == 2 and min(copies) >= COPY_DELAY_S, copies


def test_python_entry_unknown_flag_is_usage_error(tmp_path, cache_dir):
    proc = subprocess.run(
        [PYTHON, "-m", "seo_dist.train", "--config", str(CONFIGS / "tiny_cpu.yaml"), "--bogus"],
        cwd=tmp_path,
        env=job_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr


def test_default_job_leaves_a_complete_experiment(default_run):
    """One directory with metadata, metrics, TensorBoard, verified checkpoints and an exported model."""
    import json

    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seo_dist.checkpoint import verify_checkpoint
    from seo_dist.data import format_prompt, load_corpus

    (exp,) = default_run.exp_dirs()
    meta = json.loads((exp / "metadata.json").read_text())
    assert meta["status"] == "completed" and meta["world"]["size"] == 2
    rows = read_jsonl(exp / "metrics" / "metrics.jsonl")
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 150
    tb_files = list((exp / "logs").rglob("events.out.tfevents.*"))
    assert len(tb_files) == 1
    acc = EventAccumulator(str(tb_files[0].parent))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == len(steps)

    allocated = [(r["step"], r["ckpt/staging_allocated_bytes"]) for r in rows if "ckpt/staging_allocated_bytes" in r]
    assert allocated and all(n == 0 for _, n in allocated), allocated  # buffers made after step 1, in the background
    copied = [r["step"] for r in rows if "ckpt/copy_s" in r and "ckpt/copy_wait_s" in r]
    assert copied == [step for step, _ in allocated]  # checkpoint.copy_in_background: copied during the next step

    ckpts = exp / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000150"
    committed = sorted(p.name for p in ckpts.glob("step_*"))
    assert committed[-1] == "step_00000150" and not any(n.endswith(".tmp") for n in committed)
    for name in committed:
        report = verify_checkpoint(ckpts / name)
        assert report.ok, report.summary()

    final = exp / "artifacts" / "final_model"
    model = AutoModelForCausalLM.from_pretrained(str(final))
    tok = AutoTokenizer.from_pretrained(str(final))
    record = load_corpus().records[0]
    ids = tok(format_prompt(record), return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 7.0  # trained, not a fresh initialisation (~7.6)
