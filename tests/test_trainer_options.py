"""Trainer options without another test: the LR schedule, the resume plan, ``model.pretrained``,
``experiment.tracking_enabled: false``, ``experiment.checkpoint_enabled: false`` and the optimizer built by
DeepSpeed from the ``deepspeed`` section (configs/deepspeed/zero3_offload.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, FAST, JobRun, read_jsonl, run_job

from seo_dist import dist
from seo_dist.config import ExperimentConfig, TrainConfig
from seo_dist.engine.deepspeed_engine import lr_factor
from seo_dist.errors import UserError
from seo_dist.resume import ResumePlan, plan_resume, resume_experiment_dir

QUIET = ["experiment.code_snapshot=false", "experiment.wandb=disabled", "experiment.console=false"]

# --------------------------------------------------------------------------- the LR schedule


def test_lr_factor_warms_up_linearly_then_decays_on_a_cosine():
    t = TrainConfig(max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, t) == pytest.approx(0.1)  # first warmup step: 1/10 of the peak
    assert lr_factor(4, t) == pytest.approx(0.5)
    assert lr_factor(9, t) == pytest.approx(1.0)  # end of warmup: the peak
    assert lr_factor(10, t) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_factor(60, t) == pytest.approx(0.55)  # midpoint: halfway between peak and floor
    assert lr_factor(35, t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(110, t) == pytest.approx(0.1)  # end: the floor, min_lr_ratio
    assert lr_factor(500, t) == pytest.approx(0.1)  # past max_steps: stays at the floor
    no_warmup = TrainConfig(max_steps=100, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_factor(0, no_warmup) == pytest.approx(1.0) and lr_factor(100, no_warmup) == pytest.approx(0.0)


# --------------------------------------------------------------------------- the resume plan (one process)


@pytest.fixture
def experiment_dir(tmp_path: Path) -> Path:
    exp = tmp_path / "exps" / "run"
    (exp / "checkpoints" / "step_00000004").mkdir(parents=True)
    return exp


def test_resume_plan_for_resume_argument(experiment_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    experiment = ExperimentConfig(base_dir="elsewhere", experiment_id=None)
    assert plan_resume(None, experiment) == ResumePlan()
    whole = plan_resume(experiment_dir, experiment)
    assert (whole.experiment_dir, whole.load_target, whole.restart_attempt) == (experiment_dir, "latest", 0)
    resolved = whole.experiment_config(experiment)
    assert (resolved.base_dir, resolved.experiment_id) == (str(experiment_dir.parent), "run")
    assert experiment.experiment_id is None  # the given config is not changed
    folder = experiment_dir / "checkpoints" / "step_00000004"
    one = plan_resume(str(folder), experiment)
    assert (one.experiment_dir, one.load_target) == (experiment_dir, folder)
    with pytest.raises(UserError, match="does not exist; give an experiment directory or a checkpoint folder"):
        resume_experiment_dir(experiment_dir / "missing")
    with pytest.raises(UserError, match="is neither an experiment directory nor a checkpoint folder"):
        resume_experiment_dir(experiment_dir.parent.parent)


def test_resume_plan_after_a_torchrun_restart(experiment_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    base = str(experiment_dir.parent)
    # --resume FOLDER on a restart: the folder's experiment, from its latest checkpoint
    plan = plan_resume(experiment_dir / "checkpoints" / "step_00000004", ExperimentConfig(base_dir=base))
    assert (plan.experiment_dir, plan.load_target, plan.restart_attempt) == (experiment_dir, "latest", 2)
    assert plan.restart_found_experiment
    # the previous attempt's experiment by experiment_id
    plan = plan_resume(None, ExperimentConfig(base_dir=base, experiment_id="run"))
    assert plan.experiment_dir == experiment_dir.absolute() and plan.restart_found_experiment
    plan = plan_resume(None, ExperimentConfig(base_dir=base, experiment_id="never_started"))
    assert (plan.experiment_dir, plan.restart_found_experiment, plan.restart_attempt) == (None, False, 2)
    # ... or by the launch id of the torchrun agent that started it (newest first)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    me = dist.launch_id()
    for name, started, launch in (("old", 1.0, me), ("new", 2.0, me), ("other", 3.0, "elsewhere:1:0")):
        (experiment_dir.parent / name).mkdir()
        meta = {"start_timestamp": started, "world": {"launch_id": launch}}
        (experiment_dir.parent / name / "metadata.json").write_text(json.dumps(meta))
    plan = plan_resume(None, ExperimentConfig(base_dir=base))
    assert plan.experiment_dir == (experiment_dir.parent / "new").absolute()


# --------------------------------------------------------------------------- trainer runs (one rank each)


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory, cache_dir) -> Path:
    """A tiny GPT-2 written with save_pretrained, plus its tokenizer; smaller than the config's model."""
    import os

    from transformers import GPT2Config, GPT2LMHeadModel

    from seo_dist.data import get_tokenizer, load_corpus

    os.environ.setdefault("SEO_DIST_CACHE", str(cache_dir))
    out = tmp_path_factory.mktemp("pretrained") / "tiny_gpt2"
    tok = get_tokenizer(load_corpus(), 4096)
    config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def pretrained_untracked_run(tmp_path_factory, cache_dir, pretrained_dir) -> JobRun:
    """model.pretrained + data.tokenizer, with experiment.tracking_enabled=false (checkpoints only)."""
    tmp = tmp_path_factory.mktemp("pretrained_run")
    sets = [*FAST, *QUIET, f"model.pretrained={pretrained_dir}", f"data.tokenizer={pretrained_dir}",
            "experiment.tracking_enabled=false", "checkpoint.export_final=false"]  # fmt: skip
    run = run_job(tmp, cache_dir, launcher="python", nproc=1, name="pre", overrides=sets)
    assert run.proc.returncode == 0, run.output[-6000:]
    return run


def test_training_from_a_pretrained_folder_without_tracking(pretrained_untracked_run: JobRun):
    status, step, first, last = pretrained_untracked_run.final()
    assert (status, step) == ("completed", 16) and last < first
    (exp,) = pretrained_untracked_run.exp_dirs()
    assert sorted(p.name for p in exp.iterdir()) == ["checkpoints"]  # no metadata, logs, metrics or artifacts
    ckpt = exp / "checkpoints" / "step_00000016"
    assert json.loads((ckpt / "manifest.json").read_text())["step"] == 16
    (states,) = ckpt.glob("*model_states.pt")
    weights = torch.load(states, map_location="cpu", weights_only=False)["module"]
    assert weights["transformer.wte.weight"].shape[1] == 32  # the pretrained model's width, not model.config's 64
    assert not any(k.startswith("transformer.h.1.") for k in weights)  # and its single layer


@pytest.fixture(scope="session")
def offload_run(tmp_path_factory, cache_dir) -> JobRun:
    """configs/deepspeed/zero3_offload.json: DeepSpeed builds the optimizer (CPU offload); no checkpoints."""
    tmp = tmp_path_factory.mktemp("offload_run")
    sets = [*FAST, *QUIET, f"deepspeed={CONFIGS / 'deepspeed' / 'zero3_offload.json'}",
            "experiment.checkpoint_enabled=false"]  # fmt: skip
    run = run_job(tmp, cache_dir, launcher="python", nproc=1, name="offload", overrides=sets, timeout=900)
    assert run.proc.returncode == 0, run.output[-6000:]
    return run


def test_deepspeed_built_optimizer_follows_our_schedule_without_checkpoints(offload_run: JobRun):
    status, step, first, last = offload_run.final()
    assert (status, step) == ("completed", 16) and last < first
    (exp,) = offload_run.exp_dirs()
    assert (exp / "metadata.json").is_file() and not any((exp / "checkpoints").iterdir())
    events = {e["event"] for e in read_jsonl(exp / "logs" / "events.jsonl")}
    assert not any(name.startswith("checkpoint") for name in events)
    rows = {r["step"]: r["train/lr"] for r in read_jsonl(exp / "metrics" / "metrics.jsonl") if "train/lr" in r}
    train = TrainConfig(max_steps=16, warmup_steps=2, lr=3e-3)  # FAST
    for step, lr in rows.items():  # the scheduler built on DeepSpeed's optimizer is ours
        assert lr == pytest.approx(3e-3 * lr_factor(step, train), rel=1e-6), step


def test_scheduled_gc_turns_automatic_collection_off_and_collects_every_interval():
    import gc

    from seo_dist.training.gc_policy import FULL_EVERY, ScheduledGC

    generations: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            generations.append(info["generation"])

    assert gc.isenabled()
    gc.callbacks.append(seen)
    try:
        with ScheduledGC(5) as collector:
            assert not gc.isenabled() and gc.get_freeze_count() > 0  # start-up objects frozen, never scanned again
            generations.clear()
            garbage = []
            for step in range(1, 5 * FULL_EVERY + 1):
                cycle: list = []
                cycle.append(cycle)  # cyclic garbage: only a collection frees it
                garbage.append(len(cycle))
                collector.step(step)
        assert generations == [1] * (FULL_EVERY - 1) + [2]  # steps 5, 10, ... 50: the tenth is a full one
        assert collector.collections == FULL_EVERY and collector.seconds > 0
        assert gc.isenabled() and gc.get_freeze_count() == 0  # restored for the code after the loop
        with ScheduledGC(0) as off:  # 0: the collector is left alone
            assert gc.isenabled() and gc.get_freeze_count() == 0
            off.step(50)
        assert off.collections == 0 and gc.isenabled()
    finally:
        gc.callbacks.remove(seen)
