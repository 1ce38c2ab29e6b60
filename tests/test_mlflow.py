"""The MLflow sink against a real ``mlflow server`` (sqlite store, local artifact folder, 127.0.0.1).

One server serves the whole session; the tracker is driven in-process for most checks, and one real
2-rank training job (torchrun, DeepSpeed on CPU) checks the wiring end to end. Everything is read back
through ``MlflowClient``. Nothing is mocked: the missing-package case runs with ``mlflow`` made
unimportable (its absence, not a fake of its behaviour), the silent server is a real socket.
"""

from __future__ import annotations

import json
import math
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import BIN, FAST, free_port, run_job
from helpers_tracking import strict_json_lines, tracking_env

pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from seo_dist.config import ExperimentConfig, MlflowConfig  # noqa: E402
from seo_dist.tracking import ExperimentTracker  # noqa: E402

SERVER_START_S = 180.0


class MlflowServer:
    """``mlflow server`` in a subprocess; ``stop()``/``start()`` keep the same store and port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]  # fmt: skip
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_S
        import urllib.request

        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"mlflow server not healthy after {SERVER_START_S}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        parent = psutil.Process(self.proc.pid)
        procs = [*parent.children(recursive=True), parent]
        for p in procs:
            p.kill()
        psutil.wait_procs(procs, timeout=30)
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket on 127.0.0.1 that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def make_tracker(base: Path, uri: str, exp_id: str, **mlflow: Any) -> ExperimentTracker:
    """A tracker logging to ``uri``; the close timeout is long (this machine may be loaded) unless given."""
    mlflow.setdefault("close_timeout_s", 300.0)
    cfg = ExperimentConfig(experiment_id=exp_id, base_dir=str(base), wandb="disabled", tensorboard=False,
                           code_snapshot=False, console=False,
                           mlflow=MlflowConfig(enabled=True, tracking_uri=uri, experiment_name="tests", **mlflow))  # fmt: skip
    return ExperimentTracker(cfg, hparams={"lr": 3e-4, "model": {"n_layer": 2}})


def run_id_of(exp_dir: Path) -> str:
    return json.loads((exp_dir / "metadata.json").read_text())["mlflow"]["run_id"]


def events(exp_dir: Path) -> list[dict[str, Any]]:
    return strict_json_lines(exp_dir / "logs" / "events.jsonl")


def server_history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float | None]]]:
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        out[key] = [(s, None if math.isnan(v) else v) for s, v in points]
    return out


def jsonl_history(exp_dir: Path) -> dict[str, list[tuple[int, float | None]]]:
    out: dict[str, list[tuple[int, float | None]]] = {}
    for row in strict_json_lines(exp_dir / "metrics" / "metrics.jsonl"):
        for key, value in row.items():
            if key in ("step", "time") or (key == "epoch" and value is None):
                continue
            out.setdefault(key, []).append((row["step"], None if value is None else float(value)))
    return {k: sorted(v) for k, v in out.items()}


def log_rows(tracker: ExperimentTracker, steps: range, offset: float = 0.0) -> None:
    for s in steps:
        metrics = {"train/loss": 10.0 / s + offset, "train/lr": 1e-3 * s, "perf/tokens": s * 128}
        if s == 3:
            metrics["train/grad_norm"] = float("nan")
        tracker.log_metrics(metrics, step=s, epoch=s // 50)


# --------------------------------------------------------------------------- a whole run, read back


def test_history_params_tags_and_artifacts(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    tracker = make_tracker(tmp_path, mlflow_server.uri, "whole")
    exp_dir = tracker.start_experiment()
    log_rows(tracker, range(1, 1101))  # 1100 rows x 4 values: several 1000-point batches
    manifest = exp_dir / "artifacts" / "final_model" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"files": {}}\n')
    tracker.end_experiment("completed")

    client = MlflowClient(mlflow_server.uri)
    run_id = run_id_of(exp_dir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tests"
    assert server_history(client, run_id) == jsonl_history(exp_dir)
    assert server_history(client, run_id)["train/grad_norm"] == [(3, None)]  # NaN kept (null in metrics.jsonl)
    params = run.data.params
    assert params["hparams.lr"] == "0.0003" and params["hparams.model.n_layer"] == "2"
    assert params["experiment.mlflow.experiment_name"] == "tests"
    meta = json.loads((exp_dir / "metadata.json").read_text())
    tags = run.data.tags
    assert tags["seo_dist.config_hash"] == meta["config_hash"]
    assert tags["seo_dist.world_size"] == "1" and tags["seo_dist.host"] == meta["system"]["hostname"]
    assert tags["seo_dist.experiment_id"] == "whole" and tags["mlflow.runName"] == "whole"
    if meta.get("git"):
        assert tags["mlflow.source.git.commit"] == meta["git"]["commit"]
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/loss.png", "plots/lr.png"} <= artifacts
    assert [a.path for a in client.list_artifacts(run_id, "final_model")] == ["final_model/manifest.json"]
    local = Path(client.download_artifacts(run_id, "final_model/manifest.json", str(tmp_path)))
    assert local.read_text() == manifest.read_text()


def test_resume_continues_the_run_without_duplicate_steps(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    first = make_tracker(tmp_path, mlflow_server.uri, "resumed")
    exp_dir = first.start_experiment()
    log_rows(first, range(1, 21))
    first.end_experiment("interrupted")
    client = MlflowClient(mlflow_server.uri)
    run_id = run_id_of(exp_dir)
    assert client.get_run(run_id).info.status == "KILLED"

    # resumed from the checkpoint of step 10: steps 11-20 are logged again, with other values
    second = make_tracker(tmp_path, mlflow_server.uri, "resumed")
    second.start_experiment(resume=True, resume_step=10)
    log_rows(second, range(11, 31), offset=100.0)
    second.end_experiment("completed")

    assert run_id_of(exp_dir) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    on_server = server_history(client, run_id)
    on_disk = jsonl_history(exp_dir)
    for key, points in on_server.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{key}: duplicate steps {steps}"
        assert steps == [s for s, _ in on_disk[key]]
        # MLflow cannot delete points: 11-20 keep the first segment's values, later steps are the new ones
        assert [p for p in points if p[0] > 20] == [p for p in on_disk[key] if p[0] > 20]
    assert len([e for e in events(exp_dir) if e["event"] == "mlflow_run"]) == 2


def test_server_down_mid_run_loses_nothing(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    tracker = make_tracker(tmp_path, mlflow_server.uri, "outage")
    exp_dir = tracker.start_experiment()
    log_rows(tracker, range(1, 51))
    client = MlflowClient(mlflow_server.uri)
    deadline = time.monotonic() + 120
    while not (exp_dir / "metadata.json").read_text().count('"run_id": "'):
        assert time.monotonic() < deadline, "the MLflow run was never created"
        time.sleep(0.2)
    mlflow_server.stop()
    log_rows(tracker, range(51, 101))
    deadline = time.monotonic() + 60
    while not any(e["event"] == "mlflow_retrying" for e in events(exp_dir)):
        assert time.monotonic() < deadline, "no mlflow_retrying event while the server was down"
        time.sleep(0.2)
    log_rows(tracker, range(101, 151))
    tracker.flush()
    assert len(strict_json_lines(exp_dir / "metrics" / "metrics.jsonl")) == 150  # the JSONL sink never waited
    mlflow_server.start()
    log_rows(tracker, range(151, 201))
    tracker.end_experiment("completed")

    run_id = run_id_of(exp_dir)
    assert server_history(client, run_id) == jsonl_history(exp_dir)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert any(e["event"] == "mlflow_reconnected" for e in events(exp_dir))
    assert not any(e["event"] == "sink_unavailable" for e in events(exp_dir))


def _step_times(tracker: ExperimentTracker, steps: range) -> list[float]:
    """A stand-in training step (a GIL-free matmul, as a step's kernels) plus one log_metrics call."""
    import torch

    a = torch.randn(256, 256)
    times = []
    for s in steps:
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, a)
        tracker.log_metrics({"train/loss": 1.0 / s, "train/lr": 1e-3, "perf/step_s": 0.01}, step=s)
        times.append(time.perf_counter() - t0)
    return times


def test_silent_server_never_slows_training(silent_server: str, tmp_path: Path) -> None:
    plain = ExperimentTracker(ExperimentConfig(experiment_id="plain", base_dir=str(tmp_path), wandb="disabled",
                                               tensorboard=False, code_snapshot=False, console=False))  # fmt: skip
    plain.start_experiment()
    tracker = make_tracker(tmp_path, silent_server, "silent", close_timeout_s=1.0)
    exp_dir = tracker.start_experiment()
    # rounds taken in turn, so that the load of this (shared) machine weighs on both alike
    times: dict[str, list[float]] = {"plain": [], "mlflow": []}
    for r in range(6):
        steps = range(1 + 40 * r, 41 + 40 * r)
        times["plain"] += _step_times(plain, steps)
        times["mlflow"] += _step_times(tracker, steps)
    plain.end_experiment("completed")
    t0 = time.monotonic()
    tracker.end_experiment("completed")
    assert time.monotonic() - t0 < 10, "close waited far past experiment.mlflow.close_timeout_s"

    baseline, with_mlflow = statistics.median(times["plain"]), statistics.median(times["mlflow"])
    assert with_mlflow < baseline * 1.3 + 0.5e-3, (baseline, with_mlflow)
    assert len(strict_json_lines(exp_dir / "metrics" / "metrics.jsonl")) == 240
    gave_up = [e for e in events(exp_dir) if e["event"] == "sink_unavailable"]
    assert len(gave_up) == 1 and gave_up[0]["level"] == "warning" and "mlflow" in gave_up[0]["message"]
    assert json.loads((exp_dir / "metadata.json").read_text())["status"] == "completed"


# --------------------------------------------------------------------------- without the package

BLOCK_MLFLOW = """
import importlib.abc, sys
class _NoMlflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoMlflow())
"""


def test_without_mlflow_installed_one_line_exit_2(tmp_path: Path, cache_dir: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_MLFLOW)
    base = tmp_path / "experiments"
    env = tracking_env({"PYTHONPATH": f"{site}:{tracking_env()['PYTHONPATH']}", "SEO_DIST_CACHE": str(cache_dir)})
    cmd = [sys.executable, "-m", "seo_dist.train", "--config", str(Path(__file__).parents[1] / "configs" / "tiny_cpu.yaml"),
           "--set", f"experiment.base_dir={base}", "experiment.mlflow.enabled=true"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "mlflow" in ln]
    assert len(lines) == 1 and 'pip install "seo_dist[mlflow]"' in lines[0], proc.stderr[-3000:]
    assert not base.exists()


def test_tracker_refuses_mlflow_when_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seo_dist.errors import UserError

    monkeypatch.setitem(sys.modules, "mlflow", None)  # what Python does for a package that must not import
    with pytest.raises(UserError, match=r'pip install "seo_dist\[mlflow\]"'):
        make_tracker(tmp_path, "http://127.0.0.1:1", "absent")
    assert not (tmp_path / "absent").exists()


# --------------------------------------------------------------------------- one real training job


def test_training_job_logs_to_mlflow(mlflow_server: MlflowServer, tmp_path: Path, cache_dir: Path) -> None:
    job = run_job(tmp_path, cache_dir, overrides=[*FAST, "experiment.mlflow.enabled=true", "experiment.wandb=disabled",
                  f"experiment.mlflow.tracking_uri={mlflow_server.uri}", "experiment.mlflow.experiment_name=jobs"],
                  name="job")  # fmt: skip
    assert job.proc.returncode == 0, job.output[-4000:]
    exp_dir = job.exp_dirs()[0]
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id_of(exp_dir))
    assert run.info.status == "FINISHED"
    assert server_history(client, run.info.run_id) == jsonl_history(exp_dir)
    assert run.data.params["train.max_steps"] == "16" and run.data.params["model.config.n_layer"] == "2"
    assert run.data.tags["seo_dist.world_size"] == "2"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "final_model")] == ["final_model/manifest.json"]
    assert "plots/loss.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
