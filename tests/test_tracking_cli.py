"""``seo-dist runs|report|compare`` on experiments written by the real tracker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_tracking import tracking_env

from seo_dist.cli import main
from seo_dist.config import ExperimentConfig
from seo_dist.tracking import ExperimentTracker
from seo_dist.tracking.layout import ExperimentLayout

PLOTS = {"loss.png", "lr.png", "throughput.png", "memory.png", "ckpt_stall.png"}


CRASHING_JOB = """
import os, sys
from seo_dist.config import ExperimentConfig
from seo_dist.tracking import ExperimentTracker
t = ExperimentTracker(ExperimentConfig(experiment_id="crashed", base_dir=sys.argv[1], wandb="disabled",
                                       code_snapshot=False, console=False))
t.start_experiment()
for step in range(10):
    t.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
t.flush()
os._exit(9)  # dies without end_experiment, atexit or releasing its lock
"""


def _run(base: Path, exp_id: str, lr: float, steps: int, status: str = "completed") -> Path:
    cfg = ExperimentConfig(experiment_name=f"lr{lr}", experiment_id=exp_id, base_dir=str(base), wandb="disabled",
                           code_snapshot=False, console=False)  # fmt: skip
    tracker = ExperimentTracker(cfg, hparams={"lr": lr, "layers": 2})
    exp_dir = tracker.start_experiment()
    for step in range(steps):
        metrics = {"train/loss": 4.0 / (1 + lr * step), "train/lr": lr, "perf/tokens_per_s": 1000.0 + step,
                   "mem/rss_gb": 1.0 + 0.01 * step, "mem/device_gb": 0.5}  # fmt: skip
        if step % 5 == 4:
            metrics["val/loss"] = 4.5 / (1 + lr * step)
            metrics["ckpt/stall_s"] = 0.01 * step
        tracker.log_metrics(metrics, step, epoch=0)
    tracker.end_experiment(status, "stopped" if status != "completed" else None)
    return exp_dir


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli") / "exps"
    _run(base, "fast", lr=0.5, steps=30)
    _run(base, "slow", lr=0.05, steps=20, status="interrupted")
    crash = subprocess.run([sys.executable, "-c", CRASHING_JOB, str(base)], env=tracking_env(), capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert crash.returncode == 9, crash.stderr
    return base


def test_runs_table(experiments: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(experiments)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["id", "name", "status", "start", "duration"]
    body = {line.split()[0]: line for line in lines[2:]}
    assert set(body) == {"fast", "slow", "crashed"}
    assert "completed" in body["fast"] and " 29 " in body["fast"]
    assert "interrupted" in body["slow"] and " 19 " in body["slow"]
    assert "abandoned" in body["crashed"]  # metadata says running, but nobody holds the lock
    fast_best = 4.5 / (1 + 0.5 * 29)
    assert f"{fast_best:.4f}".rstrip("0") in body["fast"] and "@ 29" in body["fast"]

    assert main(["runs", str(experiments), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_id = {r["experiment_id"]: r for r in rows}
    assert by_id["fast"]["last_step"] == 29 and by_id["fast"]["best_val/loss"] == pytest.approx(fast_best)
    assert by_id["crashed"]["last_step"] == 9 and by_id["crashed"]["status"] == "abandoned"


def test_report_writes_plots_and_prints_a_summary(experiments: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib.image

    exp_dir = experiments / "fast"
    assert main(["report", str(exp_dir)]) == 0
    out = capsys.readouterr().out
    plots_dir = ExperimentLayout(exp_dir).plots
    assert {p.name for p in plots_dir.glob("*.png")} == PLOTS
    for png in plots_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(png).shape
        assert height > 100 and width > 100
    assert "status completed" in out and "last step 29" in out
    assert "best val/loss" in out and "checkpoint stall: 6 saves" in out
    for metric in ("train/loss", "train/lr", "perf/tokens_per_s", "mem/rss_gb", "ckpt/stall_s"):
        assert metric in out
    assert str(plots_dir / "loss.png") in out


def test_report_skips_plots_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ExperimentConfig(experiment_id="lossonly", base_dir=str(tmp_path), wandb="disabled", code_snapshot=False,
                           console=False)  # fmt: skip
    t = ExperimentTracker(cfg)
    exp_dir = t.start_experiment()
    t.log_metrics({"train/loss": 1.0}, 0)
    t.log_metrics({"train/loss": 0.5}, 1)
    t.end_experiment("completed")
    assert main(["report", str(exp_dir), "--out", str(tmp_path / "plots")]) == 0
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["loss.png"]


def test_compare_overlays_runs_and_lists_config_differences(
    experiments: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_png = tmp_path / "cmp.png"
    assert main(["compare", str(experiments / "fast"), str(experiments / "slow"), "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    diff_lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("hparams.", "experiment."))}
    assert "hparams.lr" in diff_lines and "0.5" in diff_lines["hparams.lr"] and "0.05" in diff_lines["hparams.lr"]
    assert "experiment.experiment_id" in diff_lines
    assert "hparams.layers" not in diff_lines  # same in both runs


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "{tmp}"], "is not an experiment directory"),
        (["report", "{tmp}/missing"], "does not exist"),
        (["runs", "{tmp}/missing"], "is not a directory"),
        (["compare", "{tmp}"], "at least two"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bad_input_from_the_real_command(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "seo_dist.cli", "report", str(tmp_path)], capture_output=True,
                          text=True, env=tracking_env(), timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip() == f"seo-dist report: error: {str(tmp_path)!r} is not an experiment directory "
        "(no metadata.json, metrics/metrics.jsonl or checkpoints/)"
    )


def test_one_experiment_directory_test_for_ls_runs_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory with only checkpoints/ (experiment.tracking_enabled=false) is an experiment everywhere."""
    from seo_dist.resume import resume_experiment_dir

    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["ls", str(plain)]) == 2
    assert "is neither an experiment directory nor a checkpoints folder" in capsys.readouterr().err
    untracked = tmp_path / "base" / "untracked"
    (untracked / "checkpoints").mkdir(parents=True)
    assert main(["ls", str(untracked)]) == 0
    assert "no checkpoints under" in capsys.readouterr().out
    assert main(["runs", str(untracked.parent)]) == 0
    assert "untracked" in capsys.readouterr().out
    assert ExperimentLayout(untracked).is_experiment() and not ExperimentLayout(plain).is_experiment()
    assert resume_experiment_dir(untracked) == untracked
