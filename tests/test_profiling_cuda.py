"""The CUDA and NVML paths of StepProfiler.

There is no GPU on the development and CI machines, so the first group of tests runs the
CUDA code path against FAKES: ``torch.cuda`` functions (events, allocator statistics,
snapshot dump) and the ``pynvml`` module are replaced by monkeypatching. The fakes check
what only a GPU would otherwise enforce: an event can be read only after a synchronisation.

The tests at the end use a real GPU and are skipped where there is none.
"""

from __future__ import annotations

import gzip
import json
import pickle
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from seo_dist.config import ProfilingConfig
from seo_dist.profiling import StepProfiler
from seo_dist.profiling.memory import GIB
from seo_dist.profiling.nvml import NvmlSampler

CUDA0 = torch.device("cuda", 0)
UUID = "5b2d7c1e-0000-1111-2222-333344445555"


class FakeCuda:
    """Stands in for the parts of ``torch.cuda`` the profiler touches (no GPU here)."""

    def __init__(self) -> None:
        self.syncs = 0
        self.peak_resets = 0
        self.snapshots: list[str] = []
        self.history_calls: list[dict[str, Any]] = []
        self.dump_error: Exception | None = None
        fake = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing
                self.t: float | None = None
                self.recorded_at_sync = -1

            def record(self, stream: Any = None) -> None:
                self.t = time.perf_counter()
                self.recorded_at_sync = fake.syncs

            def synchronize(self) -> None:
                fake.syncs += 1

            def elapsed_time(self, end: Event) -> float:
                # A real CUDA event cannot be read before the device has reached it.
                if max(self.recorded_at_sync, end.recorded_at_sync) >= fake.syncs:
                    raise RuntimeError("event read before synchronisation")
                assert self.t is not None and end.t is not None
                return (end.t - self.t) * 1000.0

        self.Event = Event

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "Event", self.Event)
        monkeypatch.setattr(cuda, "current_stream", lambda device=None: None)
        monkeypatch.setattr(cuda, "synchronize", self._count_sync)
        monkeypatch.setattr(cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
        monkeypatch.setattr(cuda, "current_device", lambda: 0)
        monkeypatch.setattr(cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid=UUID))
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: int(12.5 * GIB))
        monkeypatch.setattr(cuda, "max_memory_reserved", lambda device=None: int(20 * GIB))
        monkeypatch.setattr(cuda, "memory_stats", lambda device=None: {"num_alloc_retries": 3, "num_ooms": 1})
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", self._reset_peaks)
        monkeypatch.setattr(cuda.memory, "_dump_snapshot", self._dump)
        monkeypatch.setattr(cuda.memory, "_record_memory_history", lambda **kw: self.history_calls.append(kw))

    def _count_sync(self, device: Any = None) -> None:
        self.syncs += 1

    def _reset_peaks(self, device: Any = None) -> None:
        self.peak_resets += 1

    def _dump(self, filename: str) -> None:
        if self.dump_error is not None:
            raise self.dump_error
        Path(filename).write_bytes(pickle.dumps({"segments": []}))
        self.snapshots.append(filename)


class NVMLError(Exception):
    pass


def fake_pynvml(*, power_error: bool = False, init_error: bool = False, uuid_known: bool = True) -> Any:
    """A ``pynvml`` module answering like one H100 (no driver here)."""
    calls: list[tuple[str, Any]] = []

    def by_uuid(uuid: str) -> str:
        calls.append(("uuid", uuid))
        if not uuid_known:
            raise NVMLError("not found")
        return "handle"

    def by_index(index: int) -> str:
        calls.append(("index", index))
        return "handle"

    def init() -> None:
        if init_error:
            raise NVMLError("driver not loaded")

    def power(handle: str) -> int:
        if power_error:
            raise NVMLError("not supported")
        return 350_000  # milliwatts

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_TEMPERATURE_GPU=0,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append(("shutdown", None)),
        nvmlDeviceGetHandleByUUID=by_uuid,
        nvmlDeviceGetHandleByIndex=by_index,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=87, memory=40),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=40 * GIB, total=80 * GIB),
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetTemperature=lambda h, sensor: 65,
    )


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    fake = FakeCuda()
    fake.install(monkeypatch)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    return fake


def make_cuda(config: ProfilingConfig | None = None, **kwargs: Any) -> StepProfiler:
    return StepProfiler(
        config or ProfilingConfig(),
        device=CUDA0,
        flops_per_token=1e9,
        tokens_per_step_per_rank=4096,
        samples_per_step_per_rank=4,
        **kwargs,
    )


def test_cuda_path_reads_events_only_at_collect(fake_cuda: FakeCuda) -> None:
    """FAKE CUDA: no synchronisation per step; one at collect, after which events are readable."""
    prof = make_cuda()
    assert fake_cuda.peak_resets == 1  # peaks start fresh with the profiler
    for step in range(1, 4):
        with prof.phase("forward"):
            time.sleep(0.01)
        with prof.phase("backward"):
            time.sleep(0.02)
        prof.step_end(step)
    assert fake_cuda.syncs == 0
    m = prof.collect(3)
    assert fake_cuda.syncs == 1
    assert fake_cuda.peak_resets == 2
    assert 0.03 <= m["perf/step_time_s"] <= 0.08  # sleeps: never early, maybe late
    assert 0.02 <= m["perf/backward_s"] <= 0.07
    assert m["perf/tflops"] == pytest.approx(1e9 * m["perf/tokens_per_s_per_device"] / 1e12)
    assert m["perf/mfu"] == pytest.approx(m["perf/tflops"] / 989.0)  # H100 SXM from the table
    assert m["mem/device_max_allocated_gb"] == pytest.approx(12.5)
    assert m["mem/device_max_reserved_gb"] == pytest.approx(20.0)
    assert m["mem/alloc_retries"] == 3 and m["mem/ooms"] == 1
    assert m["gpu/util_pct"] == 87 and m["gpu/temp_c"] == 65
    assert m["gpu/power_w"] == pytest.approx(350.0)
    assert m["gpu/mem_used_gb"] == pytest.approx(40.0)
    summary = prof.summary()
    assert summary["device"] == "NVIDIA H100 80GB HBM3" and summary["peak_tflops"] == 989.0
    assert summary["peak_device_allocated_gb"] == pytest.approx(12.5) and summary["ooms"] == 1
    prof.close()
    assert ("shutdown", None) in sys.modules["pynvml"].calls


def test_long_intervals_fold_events_without_losing_steps(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE CUDA: with a long log interval pending events are read every N steps (one sync each)."""
    monkeypatch.setattr("seo_dist.profiling.step._MAX_PENDING_STEPS", 4)
    prof = make_cuda()
    for step in range(1, 11):
        with prof.phase("forward"):
            time.sleep(0.002)
        prof.step_end(step)
    assert fake_cuda.syncs == 2  # after steps 4 and 8
    assert len(prof._step_marks) == 2
    m = prof.collect(10)
    assert fake_cuda.syncs == 3
    assert m["perf/tokens_per_s"] == pytest.approx(4096 / m["perf/step_time_s"])
    assert 0.002 <= m["perf/forward_s"] <= 0.05
    assert prof.summary()["steps"] == 10


def test_configured_peak_overrides_the_table(fake_cuda: FakeCuda) -> None:
    """FAKE CUDA."""
    prof = make_cuda(ProfilingConfig(peak_tflops=100.0))
    with prof.phase("forward"):
        time.sleep(0.005)
    prof.step_end(1)
    m = prof.collect(1)
    assert prof.peak_tflops == 100.0
    assert m["perf/mfu"] == pytest.approx(m["perf/tflops"] / 100.0)


def test_nvml_finds_the_gpu_by_uuid(fake_cuda: FakeCuda) -> None:
    """FAKE NVML: cuda:0 may be any physical GPU under CUDA_VISIBLE_DEVICES; the UUID is unambiguous."""
    sampler = NvmlSampler(CUDA0)
    assert sampler.available
    assert sys.modules["pynvml"].calls[0] == ("uuid", f"GPU-{UUID}")


def test_nvml_falls_back_to_the_index(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE NVML."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(uuid_known=False))
    sampler = NvmlSampler(torch.device("cuda", 0))
    assert sampler.available
    assert ("index", 0) in sys.modules["pynvml"].calls


def test_nvml_leaves_out_what_it_cannot_read(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE NVML: a field the driver does not support (power in some VMs) is omitted, the rest kept."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(power_error=True))
    sample = NvmlSampler(CUDA0).sample()
    assert "gpu/power_w" not in sample
    assert sample["gpu/util_pct"] == 87


def test_no_nvml_means_no_gpu_metrics(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE NVML whose init fails (no driver): training goes on without gpu/* metrics."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_error=True))
    prof = make_cuda()
    with prof.phase("forward"):
        pass
    prof.step_end(1)
    m = prof.collect(1)
    assert not any(k.startswith("gpu/") for k in m)
    assert "mem/device_max_allocated_gb" in m


def test_oom_guard_dumps_a_snapshot_and_reraises(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    """FAKE CUDA allocator: the snapshot lands in trace_dir under the rank and step, the error goes on."""
    prof = make_cuda(trace_dir=tmp_path)
    prof.step_end(6)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="boom"), prof.oom_guard():
        raise torch.cuda.OutOfMemoryError("boom")
    expected = tmp_path / "oom_snapshot_rank0_step7.pickle"
    assert fake_cuda.snapshots == [str(expected)]
    assert pickle.loads(expected.read_bytes()) == {"segments": []}
    assert prof.ooms_caught == 1
    assert prof.summary()["oom_snapshots"] == [str(expected)]


def test_oom_guard_never_hides_the_oom(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    """FAKE CUDA allocator whose dump fails: the original OutOfMemoryError still surfaces."""
    fake_cuda.dump_error = RuntimeError("dump failed")
    prof = make_cuda(trace_dir=tmp_path)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="boom"), prof.oom_guard():
        raise torch.cuda.OutOfMemoryError("boom")
    assert prof.oom_snapshots == [] and prof.ooms_caught == 1


def test_memory_history_is_opt_in(fake_cuda: FakeCuda) -> None:
    """FAKE CUDA allocator."""
    make_cuda()
    assert fake_cuda.history_calls == []
    make_cuda(record_memory_history=True)
    assert fake_cuda.history_calls and fake_cuda.history_calls[0]["stacks"] == "python"


# ---------------------------------------------------------------------------- real GPU

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _train(prof: StepProfiler, steps: int, device: torch.device) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024)).to(device)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in range(1, steps + 1):
        with prof.phase("data"):
            x = torch.randn(64, 1024, device=device)
        with prof.phase("forward"):
            loss = model(x).square().mean()
        with prof.phase("backward"):
            loss.backward()
        with prof.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        prof.step_end(step)


@needs_gpu
def test_real_gpu_metrics() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    prof = StepProfiler(ProfilingConfig(), device=device, flops_per_token=6 * 2 * 1024 * 4096,
                        tokens_per_step_per_rank=64, samples_per_step_per_rank=64)  # fmt: skip
    _train(prof, 20, device)
    m = prof.collect(20)
    prof.close()
    assert 0 < m["perf/step_time_s"] < 1
    phases = sum(m[f"perf/{p}_s"] for p in ("data", "forward", "backward", "optimizer"))
    assert phases == pytest.approx(m["perf/step_time_s"], rel=0.2)
    assert 0 < m["mem/device_max_allocated_gb"] <= m["mem/device_max_reserved_gb"]
    if prof.peak_tflops is not None:
        assert 0 < m["perf/mfu"] < 1
    if "gpu/util_pct" in m:
        assert 0 <= m["gpu/util_pct"] <= 100 and m["gpu/mem_used_gb"] > 0


@needs_gpu
def test_real_gpu_oom_snapshot(tmp_path: Path) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    prof = StepProfiler(ProfilingConfig(), device=device, flops_per_token=1.0, tokens_per_step_per_rank=1,
                        samples_per_step_per_rank=1, trace_dir=tmp_path, record_memory_history=True)  # fmt: skip
    keep = torch.ones(1024, 1024, device=device)
    with pytest.raises(torch.cuda.OutOfMemoryError), prof.oom_guard():
        torch.empty(2**50, dtype=torch.uint8, device=device)  # a petabyte
    torch.cuda.memory._record_memory_history(enabled=None)
    (path,) = prof.oom_snapshots
    snapshot = pickle.loads(path.read_bytes())
    assert snapshot["segments"]  # the allocator's state, with `keep` in it
    del keep
    prof.collect(0)
    prof.close()


@needs_gpu
def test_real_gpu_trace_has_kernels(tmp_path: Path) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    config = ProfilingConfig(trace=True, trace_wait=1, trace_warmup=1, trace_active=2, trace_repeat=1)
    prof = StepProfiler(config, device=device, flops_per_token=1.0, tokens_per_step_per_rank=1,
                        samples_per_step_per_rank=1, trace_dir=tmp_path)  # fmt: skip
    _train(prof, 5, device)
    prof.close()
    (trace,) = tmp_path.glob("rank0.*.pt.trace.json.gz")
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert any(e.get("cat") == "kernel" for e in events)
    assert {"forward", "backward"} <= {e.get("name") for e in events}
