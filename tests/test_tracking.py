"""ExperimentTracker in one process (world size 1, no process group): directory layout, metadata, sinks
read back (JSONL, TensorBoard, wandb offline), metric validation, resume, lock, bad input, code snapshot."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from helpers_tracking import read_wandb_records, strict_json_lines, wandb_config, wandb_history

from seo_dist.checkpoint import CheckpointManager, verify_checkpoint
from seo_dist.checkpoint.index import read_latest
from seo_dist.checkpoint.layout import checkpoint_name
from seo_dist.config import ExperimentConfig, JobConfig
from seo_dist.errors import UserError
from seo_dist.tracking import ExperimentLogger, ExperimentTracker, MetricsTracker
from seo_dist.tracking.layout import ExperimentLayout
from seo_dist.tracking.lock import ExperimentLock, lock_state
from seo_dist.tracking.metadata import strip_credentials
from seo_dist.tracking.sinks import JsonlSink


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)


def make_config(tmp_path: Path, **overrides: object) -> ExperimentConfig:
    settings: dict = dict(
        base_dir=str(tmp_path / "exps"), experiment_id="run", wandb="disabled", code_snapshot=False, console=False
    )
    settings.update(overrides)
    return ExperimentConfig(**settings)


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def events(exp_dir: Path) -> list[dict]:
    return strict_json_lines(ExperimentLayout(exp_dir).events)


def metadata(exp_dir: Path) -> dict:
    return json.loads((exp_dir / "metadata.json").read_text())


# --------------------------------------------------------------------------- directory and metadata


def test_layout_metadata_and_config(tmp_path: Path) -> None:
    job = JobConfig()
    job.deepspeed = {"zero_optimization": {"stage": 2}}
    cfg = make_config(tmp_path, experiment_id=None, experiment_name="layout")
    tracker = ExperimentTracker(cfg, job_config=job)
    exp_dir = tracker.start_experiment()
    assert exp_dir.parent == tmp_path / "exps" and exp_dir.name.startswith("exp_")
    assert tracker.exp_dir == exp_dir and tracker.experiment_id == exp_dir.name
    for sub in ("checkpoints", "logs", "metrics", "artifacts"):
        assert (exp_dir / sub).is_dir(), sub
    assert (exp_dir / ".lock").is_file()
    assert metadata(exp_dir)["status"] == "running"
    tracker.log_metrics({"train/loss": 2.5}, step=1, epoch=0)
    tracker.end_experiment("completed")

    meta = metadata(exp_dir)
    assert meta["status"] == "completed" and meta["error"] is None and meta["traceback"] is None
    assert meta["experiment_name"] == "layout" and meta["experiment_id"] == exp_dir.name
    assert meta["end_timestamp"] >= meta["start_timestamp"] and meta["duration_s"] >= 0
    assert meta["config_hash"] == job.config_hash()
    assert meta["config"]["experiment"]["experiment_id"] == exp_dir.name  # the resolved id, not None
    assert meta["config"]["deepspeed"] == {"zero_optimization": {"stage": 2}}
    system = meta["system"]
    assert system["python"] == sys.version.split()[0]
    assert system["platform"] and system["cpu"]["logical_cores"] >= 1 and system["ram_bytes"] > 0
    assert system["gpus"] == []  # no NVML on this machine: an empty list, not a crash
    assert system["versions"]["torch"] == torch.__version__ and system["versions"]["deepspeed"]
    assert system["versions"]["transformers"]
    assert system["hosts"] == [{"host": socket.gethostname(), "ranks": [0], "gpus": []}]
    assert meta["world"] == {"size": 1, "nodes": 1, "launcher": "none"}
    assert meta["summary"]["last_step"] == 1 and meta["summary"]["last"]["train/loss"] == 2.5
    assert not (exp_dir / ".lock").exists()

    requirements = (exp_dir / "artifacts" / "requirements.txt").read_text().splitlines()
    assert f"torch=={torch.__version__}" in requirements
    assert any(line.startswith("deepspeed==") for line in requirements)

    saved = yaml.safe_load((exp_dir / "config.yaml").read_text())  # the resolved config, id filled in
    resolved = dataclasses.replace(job, experiment=dataclasses.replace(cfg, experiment_id=exp_dir.name))
    assert saved == resolved.to_dict() and resolved.config_hash() == job.config_hash()

    names = [e["event"] for e in events(exp_dir)]
    assert names[0] == "start" and names[-1] == "end"
    train_log = (exp_dir / "logs" / "train.log").read_text()
    assert "[start]" in train_log and "[end]" in train_log


def test_config_hash_stable_across_identity_changes_only(tmp_path: Path) -> None:
    base = JobConfig()
    base.deepspeed = {"zero_optimization": {"stage": 1}}
    h = base.config_hash()

    def variant(**sections: object) -> JobConfig:
        return dataclasses.replace(base, **sections)

    same = [
        variant(experiment=dataclasses.replace(base.experiment, experiment_id="other", experiment_name="x")),
        variant(
            experiment=dataclasses.replace(base.experiment, base_dir="/elsewhere", tensorboard=False, wandb="online")
        ),
        variant(checkpoint=dataclasses.replace(base.checkpoint, keep_last=7)),
    ]
    assert all(v.config_hash() == h for v in same)
    different = [
        variant(train=dataclasses.replace(base.train, lr=base.train.lr * 2)),
        variant(train=dataclasses.replace(base.train, seed=base.train.seed + 1)),
        variant(deepspeed={"zero_optimization": {"stage": 2}}),
        variant(model=dataclasses.replace(base.model, config={"n_layer": 3})),
    ]
    assert len({v.config_hash() for v in different} | {h}) == len(different) + 1

    # what the tracker records, for two runs that differ only in identity and location
    hashes = []
    for i, exp in enumerate(same[:2]):
        cfg = make_config(tmp_path / f"b{i}", experiment_id=f"id{i}")
        t = ExperimentTracker(cfg, job_config=exp)
        exp_dir = t.start_experiment()
        t.end_experiment("completed")
        hashes.append(metadata(exp_dir)["config_hash"])
    assert hashes == [h, h]


def test_standalone_hparams_are_saved_and_hashed(tmp_path: Path) -> None:
    class Profiler:  # the brief's code_profiler: anything with summary() -> dict (StepProfiler has one)
        def summary(self) -> dict:
            return {"tokens_per_s": 1234.5, "mfu": float("nan")}

    t = ExperimentTracker(make_config(tmp_path), Profiler(), hparams={"lr": 0.1, "layers": 2})
    exp_dir = t.start_experiment()
    t.end_experiment("completed")
    assert metadata(exp_dir)["profiling"] == {"tokens_per_s": 1234.5, "mfu": "nan"}
    t2 = ExperimentTracker(make_config(tmp_path, experiment_id="run2"), hparams={"lr": 0.2, "layers": 2})
    exp_dir2 = t2.start_experiment()
    t2.end_experiment("completed")
    m1, m2 = metadata(exp_dir), metadata(exp_dir2)
    assert m1["config"]["hparams"] == {"lr": 0.1, "layers": 2}
    assert len(m1["config_hash"]) == 64 and m1["config_hash"] != m2["config_hash"]


# --------------------------------------------------------------------------- metrics and sinks


def test_metrics_jsonl_validation_and_events(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path))
    exp_dir = t.start_experiment()
    t.log_metrics({"train/loss": 1.0, "perf/tokens_per_s": 10}, step=0, epoch=0)
    t.log_metrics({"train_loss": 0.9, "Train/Loss": 0.95}, step=1, epoch=0)  # two other spellings
    t.log_metrics({"train_loss": 0.8}, step=2, epoch=0)  # warned once already
    t.log_metrics({"train/loss": float("nan"), "val/loss": float("inf")}, step=3)
    t.log_metrics({"train/loss": 0.7, "val/loss": "oops", "val/acc": [1, 2]}, step=4)
    t.log_metrics({"train/loss": torch.tensor(0.6), "mem/rss": np.float32(1.5), "step": 99}, step=5)
    t.log_metrics({"train/loss": float("-inf")}, step=6)
    t.log_metrics({"train/loss": 0.5}, step=np.int64(7), epoch=float("nan"))  # numpy step; a bad epoch -> null
    t.log_metrics({"train/loss": 0.5}, step="8")  # not a step: row dropped with an error event
    assert t.flush(timeout=30)
    rows = strict_json_lines(exp_dir / "metrics" / "metrics.jsonl")  # valid JSON: no NaN/Infinity literals
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert rows[7]["epoch"] is None and rows[7]["train/loss"] == 0.5
    assert rows[0] == {"step": 0, "epoch": 0, "time": rows[0]["time"], "train/loss": 1.0, "perf/tokens_per_s": 10}
    assert rows[1]["train/loss"] == 0.9 and "train_loss" not in rows[1] and "Train/Loss" not in rows[1]
    assert rows[2]["train/loss"] == 0.8
    assert rows[3]["train/loss"] is None and rows[3]["val/loss"] is None  # non-finite -> null
    assert rows[4] == {"step": 4, "epoch": None, "time": rows[4]["time"], "train/loss": 0.7}  # bad values left out
    assert rows[5]["train/loss"] == pytest.approx(0.6, rel=1e-6) and rows[5]["mem/rss"] == 1.5
    assert rows[5]["step"] == 5  # a metric called "step" does not override the row's step
    assert rows[6]["train/loss"] is None
    t.end_experiment("completed")

    evs = events(exp_dir)
    spelling = [e for e in evs if e["event"] == "metric_name" and e.get("metric") in ("train_loss", "Train/Loss")]
    assert sorted(e["metric"] for e in spelling) == ["Train/Loss", "train_loss"]  # once per spelling
    assert all(e["level"] == "warning" for e in spelling)
    nonfinite = [(e["step"], e["metric"], e["value"]) for e in evs if e["event"] == "nonfinite_metric"]
    assert nonfinite == [(3, "train/loss", "nan"), (3, "val/loss", "inf"), (6, "train/loss", "-inf")]
    errors = [e.get("metric") or e["message"] for e in evs if e["event"] == "metric_error"]
    assert errors[:2] == ["val/loss", "val/acc"] and all(e["rank"] == 0 for e in evs)
    assert errors[2].startswith("epoch must be an int") and errors[3].startswith("step must be an int")
    assert any(e["event"] == "metric_name" and "'step'" in e["message"] for e in evs)
    assert metadata(exp_dir)["summary"]["dropped_values"] == {"val/loss": 1, "val/acc": 1}


def test_tensorboard_event_file_read_back(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path, tensorboard=True))
    exp_dir = t.start_experiment()
    for step in range(10):
        t.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 1e-3}, step=step)
    t.end_experiment("completed")
    tb_dir = exp_dir / "logs" / "tensorboard"
    assert len(list(tb_dir.glob("events.out.tfevents.*"))) == 1
    scalars = tensorboard_scalars(tb_dir)
    assert set(scalars) == {"train/loss", "train/lr"}
    assert [s for s, _ in scalars["train/loss"]] == list(range(10))
    assert scalars["train/loss"][3][1] == pytest.approx(0.25)


def test_wandb_offline_run_is_readable(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path, wandb="offline", wandb_project="proj"), hparams={"lr": 0.5})
    exp_dir = t.start_experiment()
    for step in range(5):
        t.log_metrics({"train/loss": 5.0 - step}, step=step, epoch=1)
    t.end_experiment("completed")
    run_id = metadata(exp_dir)["wandb"]["run_id"]
    run_dirs = list((exp_dir / "logs" / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1 and run_dirs[0].name.endswith(run_id)
    records = read_wandb_records(run_dirs[0] / f"run-{run_id}.wandb")
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs and runs[0].run_id == run_id and runs[0].project == "proj"
    history = wandb_history(records)
    assert [h["_step"] for h in history] == [0, 1, 2, 3, 4]
    assert [h["train/loss"] for h in history] == [5.0, 4.0, 3.0, 2.0, 1.0]
    assert all(h["epoch"] == 1 for h in history)
    assert wandb_config(records)["hparams"] == {"lr": 0.5}


def test_wandb_that_cannot_start_is_a_warning(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path))
    exp_dir = t.start_experiment()
    t.end_experiment("interrupted")
    (exp_dir / "logs" / "wandb").write_text("a file where wandb wants its folder")
    t = ExperimentTracker(make_config(tmp_path, wandb="offline"))
    t.start_experiment(resume=True)
    t.log_metrics({"train/loss": 1.0}, step=0)
    t.end_experiment("completed")
    evs = events(exp_dir)
    assert any(e["event"] == "sink_unavailable" and "wandb" in e["message"] for e in evs)
    assert [r["step"] for r in strict_json_lines(exp_dir / "metrics" / "metrics.jsonl")] == [0]
    assert metadata(exp_dir)["status"] == "completed"


def test_console_is_throttled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = ExperimentTracker(make_config(tmp_path, console=True, metrics_logging_interval=10))
    exp_dir = t.start_experiment()
    for step in range(25):
        t.log_metrics({"train/loss": 1.0}, step=step)
    t.end_experiment("completed")
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[seo_dist] step")]
    assert [line.split()[2] for line in printed] == ["0", "10", "20"]
    assert (exp_dir / "logs" / "train.log").read_text().count("| train/loss") == 3
    assert len(strict_json_lines(exp_dir / "metrics" / "metrics.jsonl")) == 25  # files get every step


def test_log_metrics_does_not_wait_for_slow_sinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import seo_dist.tracking.metrics as metrics_module

    monkeypatch.setattr(metrics_module, "BACKLOG_WARNING_ROWS", 5)  # the real threshold is 10k rows

    class SlowSink:
        name = "slow"

        def __init__(self) -> None:
            self.rows: list[int] = []

        def write(self, step, epoch, wall_time, values) -> None:  # noqa: ANN001
            time.sleep(0.05)
            self.rows.append(step)

        def flush(self) -> None: ...

        def close(self, exit_code: int = 0) -> None: ...

        def truncate_after(self, step: int) -> None: ...

    logs = tmp_path / "logs"
    logs.mkdir()
    logger = ExperimentLogger(logs / "events.jsonl", logs / "train.log", echo_to_stderr=False)
    sink = SlowSink()
    metrics = MetricsTracker([sink, JsonlSink(tmp_path / "m.jsonl")], logger)
    start = time.perf_counter()
    for step in range(20):
        metrics.log({"train/loss": float(step)}, step)
    enqueue_s = time.perf_counter() - start
    assert enqueue_s < 0.5  # the sink needs 1 s for these rows; the caller must not wait for it
    assert metrics.flush(timeout=30)
    assert sink.rows == list(range(20))
    metrics.close()
    logger.close()
    backlog = [e for e in strict_json_lines(logs / "events.jsonl") if e["event"] == "metrics_backlog"]
    assert len(backlog) == 1 and backlog[0]["level"] == "warning"


def test_failing_sink_is_dropped_and_others_go_on(tmp_path: Path) -> None:
    class BrokenSink:
        name = "broken"

        def write(self, *args) -> None:  # noqa: ANN002
            raise OSError("disk gone")

        def flush(self) -> None: ...

        def close(self, exit_code: int = 0) -> None: ...

        def truncate_after(self, step: int) -> None: ...

    logs = tmp_path / "logs"
    logs.mkdir()
    logger = ExperimentLogger(logs / "events.jsonl", logs / "train.log", echo_to_stderr=False)
    metrics = MetricsTracker([BrokenSink(), JsonlSink(tmp_path / "m.jsonl")], logger)
    for step in range(3):
        metrics.log({"a/b": 1.0}, step)
    metrics.close()
    logger.close()
    assert len(strict_json_lines(tmp_path / "m.jsonl")) == 3
    failures = [e for e in strict_json_lines(logs / "events.jsonl") if e["event"] == "sink_failed"]
    assert len(failures) == 1 and failures[0]["sink"] == "broken" and "disk gone" in failures[0]["message"]


# --------------------------------------------------------------------------- lifecycle


def test_failed_run_records_traceback_and_reraises(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path))

    def explode() -> None:
        raise ValueError("loss exploded")

    with pytest.raises(ValueError, match="loss exploded"):
        with t.track() as exp_dir:
            t.log_metrics({"train/loss": 1.0}, step=0)
            explode()
    meta = metadata(exp_dir)
    assert meta["status"] == "failed" and meta["error"] == "ValueError: loss exploded"
    assert "in explode" in meta["traceback"] and "loss exploded" in meta["traceback"]
    end = events(exp_dir)[-1]
    assert end["event"] == "end" and end["level"] == "error" and "explode" in end["traceback"]
    assert not (exp_dir / ".lock").exists()


def test_end_with_string_error_keeps_the_current_traceback_and_is_idempotent(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path))
    exp_dir = t.start_experiment()
    try:
        {}["missing"]
    except KeyError as e:
        t.end_experiment("failed", str(e))  # the brief's spelling: end_experiment("failed", str(e))
    t.end_experiment("completed")  # ignored: already ended
    meta = metadata(exp_dir)
    assert meta["status"] == "failed" and meta["error"] == "'missing'" and "KeyError" in meta["traceback"]
    assert sum(e["event"] == "end" for e in events(exp_dir)) == 1
    with pytest.raises(ValueError, match="status must be one of"):
        t.end_experiment("done")


def test_interrupt_inside_track_is_interrupted(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        with t.track() as exp_dir:
            raise KeyboardInterrupt
    assert metadata(exp_dir)["status"] == "interrupted"


def test_process_exiting_without_end_is_marked_failed(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from seo_dist.config import ExperimentConfig\n"
        "from seo_dist.tracking import ExperimentTracker\n"
        "t = ExperimentTracker(ExperimentConfig(experiment_id='noend', base_dir=sys.argv[1], wandb='disabled',\n"
        "                                       code_snapshot=False, console=False))\n"
        "t.start_experiment()\n"
        "t.log_metrics({'train/loss': 1.0}, 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    meta = metadata(tmp_path / "noend")
    assert meta["status"] == "failed" and "without calling end_experiment" in meta["error"]
    assert meta["summary"]["last_step"] == 0  # the queued row was still written
    assert not (tmp_path / "noend" / ".lock").exists()


def test_calls_before_start_and_checkpoint_delegation(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path))
    with pytest.raises(RuntimeError, match="before start_experiment"):
        t.log_metrics({"train/loss": 1.0}, step=0)
    exp_dir = t.start_experiment()
    with pytest.raises(RuntimeError, match="no checkpoint manager attached"):
        t.save_checkpoint("model", step=1)

    # a real manager saving a real model into the experiment's checkpoints folder
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    t.checkpoint_manager = CheckpointManager(exp_dir / "checkpoints", event_fn=t.log_event)
    folder = t.save_checkpoint(model, optimizer, None, 1, {"val/loss": 1.0})
    assert folder == exp_dir / "checkpoints" / checkpoint_name(1) and read_latest(folder.parent) == folder.name
    report = verify_checkpoint(folder, "full")
    assert report.ok, report.summary()

    src = tmp_path / "plot.txt"
    src.write_text("hello")
    dest = t.log_artifact(src, name="notes.txt")
    assert dest == exp_dir / "artifacts" / "notes.txt" and dest.read_text() == "hello"
    with pytest.raises(UserError, match="does not exist"):
        t.log_artifact(tmp_path / "nope.bin")
    t.log_event("checkpoint", step=1, path="checkpoints/step_00000001", level="info")
    t.end_experiment("completed")
    t.log_metrics({"train/loss": 1.0}, step=2)  # after the end: ignored, not an error
    evs = events(exp_dir)
    assert any(e["event"] == "artifact" and e["artifact"] == "notes.txt" and e["bytes"] == 5 for e in evs)
    assert any(e["event"] == "checkpoint" and e["step"] == 1 and e["path"].endswith("01") for e in evs)


def test_event_levels_and_field_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = ExperimentTracker(make_config(tmp_path, console=True))
    exp_dir = t.start_experiment()
    # the checkpoint manager's events arrive as event_fn(name, **fields), with no level and any field names
    t.log_event("checkpoint_saved", step=10, name="step_00000010", time=1.5)
    t.log_event("checkpoint_fallback", failed="step_00000020", reason="hash mismatch")
    t.log_event("checkpoint_save_failed", step=30, error="disk full")
    t.log_event("checkpoint_saved", level="warning")  # an explicit level wins
    t.end_experiment("completed")
    evs = {(e["event"], e["level"]) for e in events(exp_dir)}
    assert {("checkpoint_saved", "info"), ("checkpoint_fallback", "warning"), ("checkpoint_save_failed", "error"),
            ("checkpoint_saved", "warning")} <= evs  # fmt: skip
    saved = next(e for e in events(exp_dir) if e["event"] == "checkpoint_saved")
    assert saved["name"] == "step_00000010" and saved["field_time"] == 1.5 and saved["time"] > 1e9
    err = capsys.readouterr().err
    assert "seo_dist warning: [checkpoint_fallback]" in err and "seo_dist error: [checkpoint_save_failed]" in err
    assert metadata(exp_dir)["events"]["error"] == 1


def test_tracking_disabled_writes_nothing(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path, tracking_enabled=False, experiment_id=None))
    exp_dir = t.start_experiment()
    t.log_metrics({"train/loss": 1.0}, step=0)
    t.log_event("x")
    t.end_experiment("completed")
    assert exp_dir.name.startswith("exp_") and not exp_dir.exists()


# --------------------------------------------------------------------------- resume


def test_resume_drops_rows_after_the_step_and_continues_sinks(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, tensorboard=True, wandb="offline")
    t = ExperimentTracker(cfg)
    exp_dir = t.start_experiment()
    for step in range(10):
        t.log_metrics({"train/loss": 10.0 - step}, step=step)
    t.end_experiment("interrupted", "preempted")
    first = metadata(exp_dir)
    time.sleep(1.1)  # wandb names offline run folders by the second: keep the two segments apart

    t = ExperimentTracker(cfg)
    assert t.start_experiment(resume=True, resume_step=5) == exp_dir
    for step in range(6, 12):
        t.log_metrics({"train/loss": 100.0 + step}, step=step)
    t.end_experiment("completed")

    rows = strict_json_lines(exp_dir / "metrics" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(12))  # no duplicates: steps 6..9 of the first run are gone
    assert rows[5]["train/loss"] == 5.0 and rows[6]["train/loss"] == 106.0
    scalars = tensorboard_scalars(exp_dir / "logs" / "tensorboard")["train/loss"]
    assert [s for s, _ in scalars] == list(range(12))  # purge_step dropped the old 6..9
    assert dict(scalars)[7] == 107.0

    meta = metadata(exp_dir)
    assert meta["status"] == "completed" and meta["error"] is None
    assert meta["start_timestamp"] == first["start_timestamp"]
    assert len(meta["resumes"]) == 1 and meta["resumes"][0]["resume_step"] == 5
    assert meta["resumes"][0]["previous_status"] == "interrupted"
    assert meta["wandb"]["run_id"] == first["wandb"]["run_id"]
    run_id = meta["wandb"]["run_id"]
    segments = sorted((exp_dir / "logs" / "wandb").glob(f"offline-run-*-{run_id}"))  # one per process, same id
    steps = [[h["_step"] for h in wandb_history(read_wandb_records(d / f"run-{run_id}.wandb"))] for d in segments]
    assert steps == [list(range(10)), list(range(6, 12))]  # `wandb sync` replays the second over the first
    evs = events(exp_dir)
    truncated = [e for e in evs if e["event"] == "metrics_truncated"]
    assert truncated and truncated[0]["rows_dropped"] == 4
    assert [e["event"] for e in evs].count("resume") == 1


def test_set_resume_step_after_start(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    t = ExperimentTracker(cfg)
    exp_dir = t.start_experiment()
    for step in range(8):
        t.log_metrics({"train/loss": 1.0}, step=step)
    t.end_experiment("failed", "crash")
    t = ExperimentTracker(cfg)
    t.start_experiment(resume=True)  # the checkpoint's step is only known after loading it
    t.set_resume_step(3)
    t.log_metrics({"train/loss": 2.0}, step=4)
    t.end_experiment("completed")
    assert [r["step"] for r in strict_json_lines(exp_dir / "metrics" / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert metadata(exp_dir)["summary"]["last_step"] == 4


# --------------------------------------------------------------------------- bad input


def test_existing_id_without_resume_is_refused(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path))
    exp_dir = t.start_experiment()
    t.end_experiment("completed")
    before = (exp_dir / "metadata.json").read_bytes()
    with pytest.raises(UserError, match="already exists.*resume"):
        ExperimentTracker(make_config(tmp_path)).start_experiment()
    assert (exp_dir / "metadata.json").read_bytes() == before
    with pytest.raises(UserError, match="cannot resume"):
        ExperimentTracker(make_config(tmp_path, experiment_id="never")).start_experiment(resume=True)


def test_unwritable_base_dir_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="experiment.base_dir .* is not writable"):
        ExperimentTracker(make_config(tmp_path, base_dir=str(blocker / "exps"))).start_experiment()


def test_bad_config_values_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="metrics_logging_interval"):
        ExperimentTracker(make_config(tmp_path, metrics_logging_interval=0))


# --------------------------------------------------------------------------- lock


def test_lock_held_by_a_live_job_refuses_a_second_one(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    first = ExperimentTracker(cfg)
    exp_dir = first.start_experiment()
    with pytest.raises(UserError, match=f"in use by pid {os.getpid()}"):
        ExperimentTracker(cfg).start_experiment(resume=True)
    first.end_experiment("completed")
    second = ExperimentTracker(cfg)
    second.start_experiment(resume=True)  # released: fine now
    second.end_experiment("completed")
    assert metadata(exp_dir)["status"] == "completed"


def test_lock_of_another_live_process_and_stale_takeover(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    t = ExperimentTracker(cfg)
    exp_dir = t.start_experiment()
    t.end_experiment("completed")
    lock_path = exp_dir / ".lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # the lock file as that other (live) process would have written it
        lock_path.write_text(
            json.dumps(
                {
                    "pid": other.pid,
                    "host": socket.gethostname(),
                    "create_time": psutil.Process(other.pid).create_time(),
                    "acquired_at": time.time(),
                }
            )
        )
        assert lock_state(lock_path) == "live"
        with pytest.raises(UserError, match=f"in use by pid {other.pid}"):
            ExperimentTracker(cfg).start_experiment(resume=True)
    finally:
        other.kill()
        other.wait()
    assert lock_state(lock_path) == "stale"  # its owner is dead
    t = ExperimentTracker(cfg)
    t.start_experiment(resume=True)
    t.end_experiment("completed")
    took = [e for e in events(exp_dir) if e["event"] == "stale_lock_taken_over"]
    assert len(took) == 1 and str(other.pid) in took[0]["message"]


def test_lock_of_a_killed_but_unreaped_owner_is_stale(tmp_path: Path) -> None:
    """A SIGKILLed rank 0 whose launcher died too stays a zombie until init reaps it (seconds in containers):
    its pid still exists, but it holds nothing."""
    lock_path = tmp_path / ".lock"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path.write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname(),
                                         "create_time": psutil.Process(owner.pid).create_time(),
                                         "acquired_at": time.time()}))  # fmt: skip
        assert lock_state(lock_path) == "live"
        owner.send_signal(signal.SIGKILL)  # not waited for: a zombie until owner.wait() below
        deadline = time.monotonic() + 10
        while psutil.Process(owner.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert psutil.pid_exists(owner.pid) and psutil.Process(owner.pid).status() == psutil.STATUS_ZOMBIE
        assert lock_state(lock_path) == "stale"
    finally:
        owner.kill()
        owner.wait()


def test_lock_from_another_host_goes_stale_without_heartbeat(tmp_path: Path) -> None:
    lock_path = tmp_path / ".lock"
    lock_path.write_text(json.dumps({"pid": 1, "host": "some-other-node", "create_time": None, "acquired_at": 0}))
    assert lock_state(lock_path, stale_after_s=600) == "live"  # fresh heartbeat: may be alive over there
    old = time.time() - 3600
    os.utime(lock_path, (old, old))
    assert lock_state(lock_path, stale_after_s=600) == "stale"
    lock = ExperimentLock(lock_path)
    lock.acquire()
    assert lock.took_over is not None and lock.took_over.host == "some-other-node"
    before = lock_path.stat().st_mtime
    os.utime(lock_path, (old, old))
    lock.heartbeat()
    assert lock_path.stat().st_mtime > before - 1
    lock.release()
    assert not lock_path.exists()


# --------------------------------------------------------------------------- code snapshot and git


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_code_snapshot_and_git_info_in_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "train.py").write_text("print('v1')\n")
    (repo / "configs.yaml").write_text("a: 1\n")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "big.bin").write_bytes(b"\0" * 1_200_000)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "remote", "add", "origin", "https://user:s3cret@example.com/team/repo.git")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    (repo / "pkg" / "train.py").write_text("print('v2')\n")  # dirty
    (repo / "pkg" / "new_module.py").write_text("x = 1\n")  # untracked, not ignored: it ran too
    (repo / "debug.log").write_text("ignored\n")
    monkeypatch.chdir(repo)

    cfg = make_config(tmp_path, base_dir="runs", code_snapshot=True)  # experiments inside the repo, not ignored
    t = ExperimentTracker(cfg)
    exp_dir = t.start_experiment()
    t.end_experiment("completed")

    snap = exp_dir / "code_snapshot"
    files = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file())
    assert files == [".gitignore", "configs.yaml", "pkg/new_module.py", "pkg/train.py"]
    assert (snap / "pkg" / "train.py").read_text() == "print('v2')\n"  # the code that ran, not HEAD
    meta = metadata(exp_dir)
    assert meta["code_snapshot"]["source"] == "git" and meta["code_snapshot"]["skipped_large"] == ["big.bin"]
    git = meta["git"]
    assert git["commit"] == _git(repo, "rev-parse", "HEAD") and git["branch"] == "main" and git["dirty"] is True
    assert git["remote"] == "https://example.com/team/repo.git"  # credentials stripped
    patch = (exp_dir / "artifacts" / "git_diff.patch").read_text()
    assert "-print('v1')" in patch and "+print('v2')" in patch
    assert any(e["event"] == "code_snapshot_incomplete" for e in events(exp_dir))


def test_code_snapshot_cap_and_package_fallback(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, code_snapshot=True, code_snapshot_max_mb=0.05)
    t = ExperimentTracker(cfg)
    exp_dir = t.start_experiment()  # cwd (tmp_path) is not a repository: the seo_dist package is copied
    t.end_experiment("completed")
    info = metadata(exp_dir)["code_snapshot"]
    assert info["source"] == "package" and info["truncated"] is True and info["bytes"] <= 0.05 * 1024 * 1024
    copied = list((exp_dir / "code_snapshot" / "seo_dist").rglob("*"))
    assert copied and all(p.suffix == ".py" for p in copied if p.is_file())  # python first when capped


def test_strip_credentials() -> None:
    assert strip_credentials("https://tok@github.com/a/b.git\n") == "https://github.com/a/b.git"
    assert strip_credentials("git@github.com:a/b.git") == "git@github.com:a/b.git"


def test_nonfinite_summary_is_json(tmp_path: Path) -> None:
    t = ExperimentTracker(make_config(tmp_path))
    exp_dir = t.start_experiment()
    t.log_metrics({"train/loss": math.nan}, step=0)
    t.end_experiment("completed")
    json.loads((exp_dir / "metadata.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metadata"))
