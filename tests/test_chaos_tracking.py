"""Chaos on the tracking sinks: a sink that takes long to open (wandb ``online`` without a network retries for
up to its ``init_timeout``, 90 s by default) must not hold up ``metrics.jsonl``, or a crash in that window
loses every row logged so far.

The in-process test uses a sink factory that blocks on an event it controls (no real wandb: its network
retry cannot be made to block for a chosen time without one). ``pytest -m chaos`` runs the real thing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from chaos_harness import STARTUP_TIMEOUT_S, Job, chaos_env, event_names, loss_rows, train_command, wait_until
from chaos_scorecard import record

from seo_dist.tracking.jsonio import iter_jsonl
from seo_dist.tracking.logger import ExperimentLogger
from seo_dist.tracking.metrics import MetricsTracker
from seo_dist.tracking.sinks import JsonlSink


class RecordingSink:
    name = "slow"

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.closed = False

    def write(self, step, epoch, wall_time, values) -> None:  # noqa: ANN001
        self.rows.append(step)

    def flush(self) -> None: ...

    def close(self, exit_code: int = 0) -> None:
        self.closed = True

    def truncate_after(self, step: int) -> None: ...


def tracker_with_slow_sink(tmp_path: Path, factory) -> tuple[MetricsTracker, ExperimentLogger, Path]:
    logs = tmp_path / "logs"
    logs.mkdir()
    logger = ExperimentLogger(logs / "events.jsonl", logs / "train.log", echo_to_stderr=False)
    factory.sink_name = "slow"
    metrics = MetricsTracker([JsonlSink(tmp_path / "metrics.jsonl")], logger, lazy_sinks=[factory])
    return metrics, logger, tmp_path / "metrics.jsonl"


def test_a_sink_still_opening_does_not_hold_up_metrics_jsonl(tmp_path):
    opened = threading.Event()
    sink = RecordingSink()

    def factory():
        assert opened.wait(60)
        return sink

    metrics, logger, path = tracker_with_slow_sink(tmp_path, factory)
    for step in range(5):
        metrics.log({"train/loss": float(step)}, step)
    assert metrics.flush(timeout=30)
    assert [r["step"] for r in iter_jsonl(path)] == [0, 1, 2, 3, 4]  # on disk while the slow sink still opens
    opened.set()
    metrics.log({"train/loss": 5.0}, 5)
    metrics.close()
    logger.close()
    assert sink.rows == [0, 1, 2, 3, 4, 5] and sink.closed  # the rows it missed were replayed, in order
    record("A sink slow to open (wandb online retrying)", "metrics.jsonl written at once; rows replayed to the sink")


def test_a_sink_that_never_opens_is_a_warning(tmp_path):
    def factory():
        raise RuntimeError("no network")

    metrics, logger, path = tracker_with_slow_sink(tmp_path, factory)
    metrics.log({"train/loss": 1.0}, 0)
    metrics.close()
    logger.close()
    assert [r["step"] for r in iter_jsonl(path)] == [0]
    evs = list(iter_jsonl(tmp_path / "logs" / "events.jsonl"))
    assert [e["event"] for e in evs] == ["sink_unavailable"] and "no network" in evs[0]["message"]


@pytest.mark.chaos
def test_wandb_without_network_never_holds_up_metrics(tmp_path, cache_dir):
    """The real thing: wandb ``online`` with an API key and no reachable server retries for 40 s; meanwhile the
    rows are in metrics.jsonl (so the SIGKILL that follows loses none) and training runs at full speed."""
    base = tmp_path / "experiments"
    exp_dir = base / "slow_wandb"
    env = chaos_env(cache_dir, WANDB_API_KEY="0" * 40, WANDB_INIT_TIMEOUT="40", NETRC=str(tmp_path / "no_netrc"),
                    WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"), WANDB_BASE_URL="http://127.0.0.1:9")  # fmt: skip
    env.pop("WANDB_MODE", None)
    cmd = train_command(base, ["train.max_steps=400", "experiment.wandb=online"], exp_id="slow_wandb")
    with Job(cmd, tmp_path, env, tmp_path / "wandb.log") as job:
        wait_until(lambda: len(loss_rows(exp_dir)) >= 20, STARTUP_TIMEOUT_S, "20 rows in metrics.jsonl", job)
        assert "sink_unavailable" not in event_names(exp_dir)  # wandb is still retrying
        job.kill()
        job.wait(60)
    assert [r["step"] for r in loss_rows(exp_dir)][:20] == list(range(1, 21))
    record("wandb online without a network (retrying for 40 s), then SIGKILL",
           "rows in metrics.jsonl while wandb retried; none lost")  # fmt: skip
