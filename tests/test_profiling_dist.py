"""StepProfiler on 2 real ranks (torchrun, gloo, CPU): metrics, stragglers, traces, disabled.

One torchrun launch (tests/profiling_job.py) runs every scenario; the tests below read what
each rank wrote. Times come from sleeps, which may end late on a loaded
2-core machine: the slowed rank sleeps long enough (0.1 s) for tolerances of 40 ms.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
JOB = Path(__file__).with_name("profiling_job.py")
SLOW_S = 0.1
TOKENS_PER_STEP = 8 * 16  # profiling_job.MICRO_BATCH * SEQ_LEN
TOL_S = 0.04


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("profiling_job")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU/gloo test: on a GPU box both ranks would otherwise share one GPU with nccl
    for _attempt in range(2):  # a second try only if another process took the free port meanwhile
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
            str(JOB), "--out", str(out), "--slow-s", str(SLOW_S),
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        if proc.returncode == 0 or "address already in use" not in (proc.stdout + proc.stderr).lower():
            break
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return out, ranks


def _own_mean_step(rank: dict[str, Any], scenario: str, steps: slice) -> float:
    own = rank[scenario]["own_step_s"][steps]
    return sum(own) / len(own)


def _own_rate(ranks: list[dict[str, Any]], scenario: str, steps: slice) -> list[float]:
    """Tokens/s of each rank from the job's own stopwatch, independent of the profiler."""
    rates = []
    for r in ranks:
        own = r[scenario]["own_step_s"][steps]
        rates.append(TOKENS_PER_STEP * len(own) / sum(own))
    return rates


def test_every_rank_gets_the_same_metrics(job: tuple[Path, list[dict[str, Any]]]) -> None:
    _, ranks = job
    for scenario in ("independent", "synced", "trace"):
        assert ranks[0][scenario]["metrics"] == ranks[1][scenario]["metrics"]


def test_metrics_present_and_sane(job: tuple[Path, list[dict[str, Any]]]) -> None:
    _, ranks = job
    for m in ranks[0]["independent"]["metrics"]:
        for name in (
            "perf/step_time_s", "perf/tokens_per_s", "perf/tokens_per_s_per_device", "perf/samples_per_s",
            "perf/tflops", "perf/data_s", "perf/forward_s", "perf/backward_s", "perf/optimizer_s",
            "perf/step_time_s_min", "perf/step_time_s_mean", "perf/step_time_s_max", "perf/slowest_rank",
            "mem/host_rss_gb",
        ):  # fmt: skip
            assert name in m, name
        assert "perf/mfu" not in m  # the CPU has no known peak and none was configured
        assert not any(k.startswith(("gpu/", "mem/device_")) for k in m)  # no GPU here
        assert 0.02 < m["mem/host_rss_gb"] < 16
        assert m["mem/host_peak_rss_gb"] >= m["mem/host_rss_gb"] * 0.99
        assert m["perf/step_time_s_min"] <= m["perf/step_time_s_mean"] <= m["perf/step_time_s_max"]
        phases = m["perf/data_s"] + m["perf/forward_s"] + m["perf/backward_s"] + m["perf/optimizer_s"]
        assert phases == pytest.approx(m["perf/step_time_s"], abs=0.01)
        assert m["perf/tflops"] == pytest.approx(6.0 * 64 * 256 * 2 * m["perf/tokens_per_s_per_device"] / 1e12)
        assert m["perf/samples_per_s"] == pytest.approx(m["perf/tokens_per_s"] / 16)


def test_global_tokens_per_s_is_world_size_times_per_device(job: tuple[Path, list[dict[str, Any]]]) -> None:
    _, ranks = job
    for scenario in ("independent", "synced", "synced_slow0", "trace"):
        for m in ranks[0][scenario]["metrics"]:
            assert m["perf/tokens_per_s"] == pytest.approx(2 * m["perf/tokens_per_s_per_device"], rel=1e-9)
    # ... and per device agrees with the job's own stopwatch (synced: every rank has the same rate).
    first, second = ranks[0]["synced"]["metrics"]
    for m, steps in ((first, slice(0, 3)), (second, slice(3, 6))):
        own = _own_rate(ranks, "synced", steps)
        assert m["perf/tokens_per_s_per_device"] == pytest.approx(sum(own) / 2, rel=0.1)


def test_slowed_rank_has_longer_steps_and_is_named(job: tuple[Path, list[dict[str, Any]]]) -> None:
    """No collectives in the loop: the sleeping rank's step time really is longer."""
    _, ranks = job
    first, second = ranks[0]["independent"]["metrics"]
    assert first["perf/slowest_rank"] == 1
    assert first["perf/step_time_s_max"] - first["perf/step_time_s_min"] == pytest.approx(SLOW_S, abs=TOL_S)
    assert SLOW_S / 2 <= first["perf/data_s"] <= SLOW_S / 2 + TOL_S  # mean over the two ranks
    # Each interval averages its own steps only (the slow rank slept a third as long in steps 4-6):
    # max and min are the slow and the fast rank's mean step, as the job's stopwatch saw them.
    for m, steps in ((first, slice(0, 3)), (second, slice(3, 6))):
        assert m["perf/step_time_s_max"] == pytest.approx(_own_mean_step(ranks[1], "independent", steps), abs=0.01)
        assert m["perf/step_time_s_min"] == pytest.approx(_own_mean_step(ranks[0], "independent", steps), abs=0.01)
    assert second["perf/slowest_rank"] == 1
    assert second["perf/step_time_s_max"] - second["perf/step_time_s_min"] >= SLOW_S / 3 - 0.005
    assert ranks[0]["independent"]["summary"]["steps"] == 6


def test_straggler_named_when_collectives_equalise_step_times(job: tuple[Path, list[dict[str, Any]]]) -> None:
    """All-reduce in backward: the fast rank waits there, so step times match, but busy time differs."""
    _, ranks = job
    for scenario, slow_rank in (("synced", 1), ("synced_slow0", 0)):
        first = ranks[0][scenario]["metrics"][0]
        assert first["perf/slowest_rank"] == slow_rank, scenario
        assert first["perf/step_time_s_max"] - first["perf/step_time_s_min"] < SLOW_S / 3
        assert first["perf/straggler_s"] == pytest.approx(SLOW_S, abs=TOL_S)
        assert ranks[0][scenario]["summary"]["slowest_rank"] == slow_rank


def test_mfu_uses_the_configured_peak(job: tuple[Path, list[dict[str, Any]]]) -> None:
    _, ranks = job
    for m in ranks[0]["synced"]["metrics"]:
        assert m["perf/mfu"] == pytest.approx(m["perf/tflops"] / 0.5)
    summary = ranks[0]["synced"]["summary"]
    assert summary["peak_tflops"] == 0.5
    assert summary["mfu"] == pytest.approx(summary["tflops"] / 0.5)


def test_summary_covers_the_whole_run(job: tuple[Path, list[dict[str, Any]]]) -> None:
    _, ranks = job
    summary = ranks[0]["synced"]["summary"]
    own = _own_rate(ranks, "synced", slice(0, 6))
    assert summary["steps"] == 6
    assert summary["world_size"] == 2
    assert summary["tokens_per_s"] == pytest.approx(2 * summary["tokens_per_s_per_device"])
    assert summary["tokens_per_s_per_device"] == pytest.approx(sum(own) / 2, rel=0.1)
    assert summary["mean_step_time_s"] == pytest.approx(TOKENS_PER_STEP / summary["tokens_per_s_per_device"], rel=0.1)
    assert summary["peak_host_rss_gb"] > 0.02


def test_trace_files_written_per_rank(job: tuple[Path, list[dict[str, Any]]]) -> None:
    out, ranks = job
    traces = out / "traces"
    for rank in (0, 1):
        files = sorted(traces.glob(f"rank{rank}.*.pt.trace.json.gz"))
        assert len(files) == 1, files  # repeat=1: one window, then the profiler stops
        events = json.loads(gzip.decompress(files[0].read_bytes()))["traceEvents"]
        names = {e.get("name") for e in events}
        assert {"data", "forward", "backward", "optimizer"} <= names  # phases annotated in the trace
        assert sum(1 for e in events if e.get("name", "").startswith("ProfilerStep#")) == 2  # active=2
    assert ranks[0]["trace"]["summary"]["trace_dir"] == str(traces)


def test_disabled_returns_nothing(job: tuple[Path, list[dict[str, Any]]]) -> None:
    _, ranks = job
    for r in ranks:
        assert r["disabled"]["metrics"] == [{}, {}]
        assert r["disabled"]["summary"] == {}
