"""Configuration: every shipped config parses; bad input gets one line, exit 2, nothing on disk."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import CONFIGS, PYTHON, REPO, job_env

from seo_dist.checkpoint import CheckpointStrategy
from seo_dist.config import (
    CheckpointConfig,
    DataConfig,
    ExperimentConfig,
    JobConfig,
    ModelConfig,
    ProfilingConfig,
    TrainConfig,
    build_config,
    load_config,
)
from seo_dist.config.reference import reference_markdown
from seo_dist.engine.ds_config import resolve_deepspeed, zero_stage
from seo_dist.errors import ConfigError
from seo_dist.train import main as train_main

SHIPPED = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    job = load_config(path)
    ds = resolve_deepspeed(job, world_size=8)
    assert ds["train_batch_size"] == job.train.micro_batch_size * job.train.grad_accum * 8
    assert zero_stage(job) in (1, 2, 3)


@pytest.mark.parametrize("path", sorted((CONFIGS / "deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_deepspeed_json_is_valid(path):
    job = build_config({"deepspeed": json.loads(path.read_text())})
    assert zero_stage(job) == json.loads(path.read_text())["zero_optimization"]["stage"]


def test_overrides_reach_into_deepspeed_and_parse_yaml_scalars():
    job = load_config(
        CONFIGS / "tiny_cpu.yaml",
        [
            "deepspeed.zero_optimization.stage=3",
            "train.lr=3e-4",
            "checkpoint.async_save=false",
            "model.config.n_layer=3",
        ],
    )
    assert zero_stage(job) == 3
    assert job.train.lr == pytest.approx(3e-4)
    assert job.checkpoint.async_save is False
    assert job.model.config["n_layer"] == 3


def test_batch_sizes_are_derived_and_mismatch_is_an_error():
    job = build_config({"train": {"micro_batch_size": 4, "grad_accum": 2}})
    ds = resolve_deepspeed(job, world_size=2)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        4,
        2,
        16,
    )
    bad = build_config({"train": {"micro_batch_size": 4}, "deepspeed": {"train_batch_size": 12}})
    with pytest.raises(ConfigError, match="train_batch_size=12 does not match"):
        resolve_deepspeed(bad, world_size=2)


def test_config_hash_ignores_identity_and_tracks_results():
    base = build_config({})
    assert (
        base.config_hash()
        == build_config({"experiment": {"experiment_id": "x", "base_dir": "/elsewhere"}}).config_hash()
    )
    for override in ("train.lr=0.1", "train.seed=7", "deepspeed.zero_optimization.stage=3", "model.config.n_layer=3"):
        assert build_config({}, [override]).config_hash() != base.config_hash(), override


@pytest.mark.parametrize(
    "cls", [ExperimentConfig, ModelConfig, DataConfig, TrainConfig, CheckpointConfig, ProfilingConfig, JobConfig]
)
def test_a_misspelt_attribute_raises_instead_of_being_ignored(cls):
    with pytest.raises(AttributeError):
        cls().lrr = 1
    assert not hasattr(cls(), "__dict__")


def test_checkpoint_strategy_is_the_checkpoint_config_with_its_old_names():
    import seo_dist
    from seo_dist.checkpoint.strategy import CheckpointStrategy as from_module

    assert CheckpointStrategy is CheckpointConfig is seo_dist.CheckpointStrategy is from_module
    assert CheckpointStrategy(500).save_interval == 500  # positional, as before
    brief_order = CheckpointStrategy(500, False, False, "train/loss", 5, False)
    assert (brief_order.save_interval, brief_order.keep_best, brief_order.save_final) == (500, 0, False)
    assert (brief_order.best_metric, brief_order.keep_last, brief_order.cleanup_old) == ("train/loss", 5, False)
    with pytest.raises(TypeError, match="multiple values for argument 'save_interval'"):
        CheckpointStrategy(500, save_interval=400)
    s = CheckpointStrategy(save_interval=500, max_checkpoints=5, save_latest=False, save_best=True, cleanup_old=False)
    assert (s.keep_last, s.save_final, s.keep_best, s.cleanup_old) == (5, False, 1, False)
    assert (s.max_checkpoints, s.save_latest, s.save_best, s.effective_keep_best) == (5, False, True, 1)
    assert CheckpointStrategy(save_best=False).keep_best == 0 and not CheckpointStrategy(keep_best=0).save_best
    assert CheckpointStrategy(save_best=True, keep_best=2).keep_best == 2
    assert CheckpointStrategy(max_checkpoints=4, keep_last=4).keep_last == 4  # the same value twice is fine
    # one set of defaults: the job's checkpoint section
    assert CheckpointStrategy() == build_config({}).checkpoint
    assert CheckpointStrategy.from_config(s) == s and CheckpointStrategy.from_config(s) is not s


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_checkpoints": 5, "keep_last": 4}, "checkpoint.max_checkpoints=5 conflicts with checkpoint.keep_last=4"),
        (
            {"save_latest": True, "save_final": False},
            "checkpoint.save_latest=True conflicts with checkpoint.save_final",
        ),
        ({"save_best": False, "keep_best": 2}, "checkpoint.save_best=False conflicts with checkpoint.keep_best=2"),
        ({"save_best": True, "keep_best": 0}, "checkpoint.save_best=True conflicts with checkpoint.keep_best=0"),
        ({"max_checkpoints": 1}, "checkpoint.max_checkpoints must be >= 2, got 1"),
        ({"keep_last": 1}, "checkpoint.keep_last must be >= 2, got 1"),
        ({"save_interval": -1, "keep_best": -1}, "save_interval must be >= 0, got -1; checkpoint.keep_best must be"),
    ],
)
def test_checkpoint_strategy_rejects_conflicting_aliases_and_bad_ranges(kwargs, message):
    with pytest.raises(ConfigError) as caught:
        CheckpointStrategy(**kwargs)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_errors_found_by_pydantic_are_one_line_with_key_path_and_suggestion():
    raw = {
        "train": {"lrr": 1, "max_steps": True, "lr": "3e-4", "seq_len": 0, "on_nan": "x", "grad_clip": float("inf")},
        "checkpoint": {"keep_lst": 3, "pinned": [1, "a"], "max_checkpoints": 4},
        "profiling": {"peak_tflops": "fast"},
        "experiment": {"experiment_id": 5},
        "data": [1],
        "trian": {},
    }
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    message = str(caught.value)
    assert "\n" not in message
    for part in [
        "unknown config key 'train.lrr' (did you mean 'train.lr'?)",
        "train.max_steps: expected int, got True (bool)",  # a bool is not an int
        "train.seq_len must be >= 1, got 0",
        "train.on_nan: expected one of 'stop' | 'skip', got 'x'",
        "train.grad_clip: expected a finite number, got inf",
        "unknown config key 'checkpoint.keep_lst' (did you mean 'checkpoint.keep_last'?)",
        "unknown config key 'checkpoint.max_checkpoints' (did you mean 'checkpoint.keep_last'?)",
        "checkpoint.pinned[1]: expected int, got 'a' (str)",
        "profiling.peak_tflops: expected float or null, got 'fast' (str)",
        "experiment.experiment_id: expected str or null, got 5 (int)",
        "data: expected a mapping, got [1]",
        "unknown config key 'trian' (did you mean 'train'?)",
    ]:
        assert part in message, (part, message)
    assert "train.lr:" not in message  # YAML's 3e-4 (a string to PyYAML) is a float


def test_yaml_scalars_floats_and_sections_without_keys():
    job = build_config({"train": {"lr": "3e-4", "grad_clip": 2, "min_lr_ratio": 0}, "profiling": None})
    assert job.train.lr == pytest.approx(3e-4) and isinstance(job.train.grad_clip, float)
    assert job.profiling == ProfilingConfig()
    assert build_config({"checkpoint": {"pinned": [9, 3, 9]}}).checkpoint.pinned == [3, 9]
    for bad in ("nan", ".inf", float("nan"), True):
        with pytest.raises(ConfigError, match="train.lr"):
            build_config({"train": {"lr": bad}})


def test_best_metric_the_trainer_does_not_record_is_rejected():
    """The trainer records train/loss at every save and measures val/loss for it; any other metric
    would never be recorded, so keep_best would keep nothing useful: one line naming key, value and choices."""
    with pytest.raises(ConfigError) as caught:
        build_config({"checkpoint": {"best_metric": "val/acc"}})
    message = str(caught.value)
    assert "\n" not in message
    for part in ("checkpoint.best_metric", "'val/acc'", "'val/loss'", "'train/loss'"):
        assert part in message, message
    for recorded in ("val/loss", "train/loss"):
        assert build_config({"checkpoint": {"best_metric": recorded}}).checkpoint.best_metric == recorded


def test_a_job_built_in_python_gets_the_same_checks_before_anything_is_written(tmp_path):
    """SEOTrainer(JobConfig(...)) skips load_config: the trainer runs the job-level checks itself."""
    from seo_dist.trainer import SEOTrainer

    job = JobConfig(
        experiment=ExperimentConfig(base_dir=str(tmp_path / "exps")),
        checkpoint=CheckpointConfig(best_metric="val/acc"),
    )
    with pytest.raises(ConfigError, match="checkpoint.best_metric: the trainer never records 'val/acc'"):
        SEOTrainer(job).train()
    assert not (tmp_path / "exps").exists()


BAD_INPUTS = {
    "unknown section": (["--set", "trian.lr=1"], "unknown config key 'trian'"),
    "unknown key": (["--set", "train.lrr=1"], "did you mean 'train.lr'"),
    "typo in model config": (["--set", "model.config.n_layr=2"], "did you mean 'model.config.n_layer'"),
    "typo in deepspeed section": (
        ["--set", "deepspeed.zero_optimisation.stage=1"],
        "did you mean 'deepspeed.zero_optimization'",
    ),
    "typo inside zero_optimization": (
        ["--set", "deepspeed.zero_optimization.stgae=1"],
        "deepspeed.zero_optimization.stgae",
    ),
    "wrong type": (["--set", "train.max_steps=many"], "train.max_steps: expected int"),
    "zero stage 7": (["--set", "deepspeed.zero_optimization.stage=7"], "stage must be 0, 1, 2 or 3, got 7"),
    "negative size": (["--set", "train.micro_batch_size=-4"], "train.micro_batch_size must be >= 1"),
    "batch mismatch": (["--set", "deepspeed.train_batch_size=999"], "train_batch_size=999 cannot be split over"),
    "fp16 on cpu": (["--set", "deepspeed.fp16.enabled=true"], "fp16.enabled is not supported on the CPU"),
    "seq_len over model limit": (["--set", "train.seq_len=4096"], "exceeds the model's n_positions"),
    "keep_last below 2": (["--set", "checkpoint.keep_last=1"], "checkpoint.keep_last must be >= 2"),
    "bad override syntax": (["--set", "train.lr"], "expected KEY=VALUE"),
    "best metric the trainer never records": (["--set", "checkpoint.best_metric=val/acc"], "checkpoint.best_metric"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(name, tmp_path, capsys, monkeypatch):
    args, expected = BAD_INPUTS[name]
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "experiments"
    rc = train_main(
        ["--config", str(CONFIGS / "tiny_cpu.yaml"), "--set", f"experiment.base_dir={base}", *args[1:]]
        if args[0] == "--set"
        else ["--config", str(CONFIGS / "tiny_cpu.yaml"), *args]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert expected in err, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not base.exists() and list(tmp_path.iterdir()) == []


def test_missing_and_unparsable_config_files(tmp_path, capsys):
    assert train_main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1,\n")
    assert train_main(["--config", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml" in err and len(err.strip().splitlines()) == 1
    assert train_main(["--config", str(CONFIGS / "tiny_cpu.yaml"), "--resume", str(tmp_path / "no_such_exp")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml"]


def test_cli_subprocess_reports_one_line_without_traceback(tmp_path, cache_dir):
    """The real console script, in a fresh process: exit 2, one line on stderr, nothing created."""
    proc = subprocess.run(
        [
            str(REPO / ".venv/bin/seo-dist") if (REPO / ".venv/bin/seo-dist").exists() else "seo-dist",
            "train",
            "--config",
            str(CONFIGS / "tiny_cpu.yaml"),
            "--set",
            "train.lrr=1",
        ],
        cwd=tmp_path,
        env=job_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "WARNING" not in ln and "warn" not in ln.lower()]
    assert lines == [
        "seo-dist train: error: unknown config key 'train.lrr' (did you mean 'train.lr'?) (in "
        f"{CONFIGS / 'tiny_cpu.yaml'})"
    ], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_yaml_reference_in_readme_names_every_key():
    """README's config reference is the generated table, and it lists every key of every section."""
    readme = (REPO / "README.md").read_text()
    assert reference_markdown() in readme, "README config reference is stale: paste `python -m seo_dist.config`"
    job = build_config({})
    for section, values in job.to_dict().items():
        if section == "deepspeed":
            continue
        for key in values:
            assert f"`{section}.{key}`" in readme, f"README config reference misses {section}.{key}"


def test_python_module_entry_accepts_local_rank_argument(tmp_path, cache_dir):
    """The deepspeed launcher appends --local_rank=N; it must not be an 'unrecognized argument'."""
    proc = subprocess.run(
        [PYTHON, "-m", "seo_dist.train", "--local_rank=0", "--config", str(tmp_path / "x.yaml")],
        cwd=tmp_path,
        env=job_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "x.yaml' does not exist" in proc.stderr
    assert "unrecognized" not in proc.stderr
