"""StepProfiler in one process (world size 1, no process group), FLOPs per token, peak table, reduction.

The 2-rank behaviour is in test_profiling_dist.py; the CUDA and NVML paths in test_profiling_cuda.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from seo_dist.config import ProfilingConfig
from seo_dist.profiling import StepProfiler, count_matmul_params, flops_per_token, peak_tflops_for
from seo_dist.profiling.aggregate import RankSample, aggregate
from seo_dist.profiling.memory import HostMemory

CPU = torch.device("cpu")
# Sleeps never end early but may end late on a loaded machine: lower bounds are tight, upper bounds loose.
LATE_S = 0.05


def assert_slept(value: float, nominal: float) -> None:
    assert nominal - 0.001 <= value <= nominal + LATE_S, (value, nominal)


def make(config: ProfilingConfig | None = None, **kwargs: object) -> StepProfiler:
    args: dict[str, object] = {
        "device": CPU,
        "flops_per_token": 1e6,
        "tokens_per_step_per_rank": 1000,
        "samples_per_step_per_rank": 4,
    }
    args.update(kwargs)
    return StepProfiler(config or ProfilingConfig(), **args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- FLOPs per token


def test_gpt2_124m_flops_match_the_published_formula() -> None:
    """N = 124,439,808 params - wte - wpe + the (tied) LM head = 123,653,376, as in nanoGPT's estimate_mfu."""
    config = GPT2Config()
    n = 124_439_808 - 50257 * 768 - 1024 * 768 + 50257 * 768
    assert count_matmul_params(config) == n == 123_653_376
    assert flops_per_token(config, 1024) == 6 * n + 12 * 12 * 12 * 64 * 1024


def test_llama_flops_use_head_dim_and_untied_head() -> None:
    """Llama-3 8B shape: 8,030,261,248 params, the input embedding (128256 x 4096) is not a matmul."""
    config = LlamaConfig(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
    )  # fmt: skip
    n = 8_030_261_248 - 128256 * 4096
    assert count_matmul_params(config) == n
    assert flops_per_token(config, 8192) == 6 * n + 12 * 32 * 32 * 128 * 8192


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_matmul_params_agree_with_a_real_model(arch: str) -> None:
    from transformers import AutoModelForCausalLM

    if arch == "gpt2":
        config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=300, n_positions=64)
    else:
        config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=64, vocab_size=300, tie_word_embeddings=False)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    lookups = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    head = model.get_output_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    expected = sum(p.numel() for p in model.parameters()) - lookups + (head if tied else 0)
    assert count_matmul_params(config) == expected
    assert flops_per_token(model, 16) == flops_per_token(config, 16)  # a model is accepted for its .config


def test_flops_overrides_and_errors() -> None:
    assert flops_per_token(GPT2Config(), 1024, num_params=1000) == 6000 + 12 * 12 * 768 * 1024
    assert flops_per_token(None, 10, num_params=5, attention=(2, 3, 4)) == 30 + 12 * 2 * 3 * 4 * 10
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(GPT2Config(), 0)
    with pytest.raises(ValueError, match="num_params= and attention="):
        flops_per_token(None, 10, num_params=5)


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 836.0),
        ("NVIDIA B200", 2250.0),
        ("NVIDIA GB200", 2500.0),
        ("Tesla T4", None),
        ("cpu", None),
    ],
)
def test_peak_table(name: str, tflops: float | None) -> None:
    assert peak_tflops_for(name) == tflops


# ---------------------------------------------------------------------------- cross-rank reduction


def sample(rank: int, step_time: float, *, steps: int = 2, backward: float = 0.0, **readings: float) -> RankSample:
    return RankSample(
        rank=rank, steps=steps, step_time_s=step_time * steps, tokens=100 * steps, samples=2 * steps,
        wall_s=step_time * steps + 0.5, phase_s={"backward": backward * steps, "data": 0.1 * steps},
        readings={k.replace("__", "/"): v for k, v in readings.items()},
    )  # fmt: skip


def test_aggregate_names_the_rank_with_most_busy_time() -> None:
    # Same step time everywhere; rank 2 spends least time in backward (waiting), so it is the straggler.
    samples = [sample(0, 1.0, backward=0.6), sample(1, 1.0, backward=0.5), sample(2, 1.0, backward=0.2)]
    m = aggregate(samples, flops_per_token=1e9, peak_tflops=None, sync_phases=("backward",))
    assert m["perf/slowest_rank"] == 2
    assert m["perf/straggler_s"] == pytest.approx(0.8 - 0.45)  # busy 0.8 vs median(0.4, 0.5)
    assert m["perf/step_time_s_max"] == m["perf/step_time_s_min"] == 1.0
    assert m["perf/tokens_per_s"] == pytest.approx(300.0)
    assert m["perf/tokens_per_s_per_device"] == pytest.approx(100.0)
    assert m["perf/tflops"] == pytest.approx(1e9 * 100 / 1e12)
    assert m["perf/backward_s"] == pytest.approx((0.6 + 0.5 + 0.2) / 3)
    assert m["perf/outside_step_s"] == pytest.approx(0.25)
    assert "perf/mfu" not in m
    # Without sync phases, busy time is step time: the longest step names the rank.
    samples = [sample(0, 1.0), sample(1, 1.5), sample(2, 1.2)]
    m = aggregate(samples, flops_per_token=1e9, peak_tflops=0.001, sync_phases=())
    assert m["perf/slowest_rank"] == 1
    assert m["perf/straggler_s"] == pytest.approx(0.4)
    assert m["perf/mfu"] == pytest.approx(m["perf/tflops"] / 0.001)


def test_aggregate_reduces_readings_per_kind() -> None:
    samples = [
        sample(0, 1.0, mem__device_max_allocated_gb=3.0, mem__ooms=1, mem__alloc_retries=2, gpu__util_pct=90,
               gpu__temp_c=70, gpu__power_w=300),
        sample(1, 1.0, mem__device_max_allocated_gb=5.0, mem__ooms=0, mem__alloc_retries=3, gpu__util_pct=70,
               gpu__temp_c=60, gpu__power_w=200),
    ]  # fmt: skip
    m = aggregate(samples, flops_per_token=1.0, peak_tflops=None, sync_phases=())
    assert m["mem/device_max_allocated_gb"] == 5.0  # the rank closest to running out
    assert m["mem/ooms"] == 1 and m["mem/alloc_retries"] == 5  # counted over all ranks
    assert m["gpu/util_pct"] == 80 and m["gpu/power_w"] == 250  # per-GPU average
    assert m["gpu/temp_c"] == 70


def test_aggregate_without_steps_reports_only_readings() -> None:
    empty = RankSample(
        rank=0, steps=0, step_time_s=0.0, tokens=0, samples=0, wall_s=1.0, readings={"mem/host_rss_gb": 1.0}
    )
    assert aggregate([empty], flops_per_token=1.0, peak_tflops=1.0, sync_phases=()) == {"mem/host_rss_gb": 1.0}


def test_rank_sample_add_sums_times_and_keeps_memory_peaks() -> None:
    total = sample(0, 1.0, mem__host_rss_gb=2.0, gpu__util_pct=50)
    total.add(sample(0, 3.0, steps=2, mem__host_rss_gb=1.0, gpu__util_pct=10))
    assert total.steps == 4 and total.step_time_s == pytest.approx(8.0) and total.tokens == 400
    assert total.phase_s["data"] == pytest.approx(0.4)
    assert total.readings["mem/host_rss_gb"] == 2.0


# ---------------------------------------------------------------------------- the profiler, one process


def test_step_and_phase_times_follow_the_loop() -> None:
    prof = make(ProfilingConfig(peak_tflops=2.0))
    for step in range(1, 4):
        with prof.phase("data"):
            time.sleep(0.01)
        with prof.phase("forward"):
            time.sleep(0.02)
        prof.step_end(step)
        time.sleep(0.03)  # between steps: not part of the step
    m = prof.collect(3)
    assert_slept(m["perf/step_time_s"], 0.03)
    assert_slept(m["perf/data_s"], 0.01)
    assert_slept(m["perf/forward_s"], 0.02)
    assert m["perf/data_s"] + m["perf/forward_s"] == pytest.approx(m["perf/step_time_s"], abs=0.01)
    assert_slept(m["perf/outside_step_s"], 0.03)  # the gap after each step, the last too
    assert m["perf/tokens_per_s"] == pytest.approx(1000 / m["perf/step_time_s"])
    assert m["perf/samples_per_s"] == pytest.approx(4 / m["perf/step_time_s"])
    assert m["perf/mfu"] == pytest.approx(m["perf/tflops"] / 2.0)
    assert m["perf/slowest_rank"] == 0 and m["perf/straggler_s"] == 0.0
    # The next interval starts empty: no steps, no perf metrics.
    assert not any(k.startswith("perf/") for k in prof.collect(3))
    assert prof.summary()["steps"] == 3


def test_phases_repeat_within_a_step_and_step_end_overrides_tokens() -> None:
    prof = make()
    for _micro in range(2):  # gradient accumulation: two forward phases in one step
        with prof.phase("forward"):
            time.sleep(0.01)
    prof.step_end(1, tokens=500, samples=1)
    m = prof.collect(1)
    assert_slept(m["perf/forward_s"], 0.02)
    assert m["perf/tokens_per_s"] == pytest.approx(500 / m["perf/step_time_s"])
    assert m["perf/samples_per_s"] == pytest.approx(1 / m["perf/step_time_s"])


def test_a_step_without_phases_runs_from_the_previous_step_end() -> None:
    prof = make()
    prof.step_end(1)
    time.sleep(0.02)
    prof.step_end(2)
    m = prof.collect(2)
    assert m["perf/step_time_s_max"] == m["perf/step_time_s"]
    assert_slept(m["perf/step_time_s"], 0.01)  # (~0 + 0.02) / 2


def test_bad_arguments_raise_clear_errors() -> None:
    prof = make()
    for bad in ("Forward", "step_time", "two words", ""):
        with pytest.raises(ValueError, match="bad phase name"):
            prof.phase(bad)
    with pytest.raises(ValueError, match="trace_dir"):
        make(ProfilingConfig(trace=True))
    with pytest.raises(ValueError, match="tokens_per_step_per_rank"):
        make(tokens_per_step_per_rank=-1)


def test_disabled_profiler_does_nothing() -> None:
    prof = make(ProfilingConfig(enabled=False, trace=True))  # trace without trace_dir is fine when disabled
    with prof.phase("forward"), prof.phase("Not A Name"):
        pass
    prof.step_end(1)
    assert prof.collect(1) == {}
    assert prof.summary() == {}
    with pytest.raises(torch.cuda.OutOfMemoryError), prof.oom_guard():
        raise torch.cuda.OutOfMemoryError("boom")
    assert prof.ooms_caught == 0
    prof.close()


def test_oom_guard_on_cpu_counts_and_reraises(tmp_path: Path) -> None:
    prof = make(trace_dir=tmp_path)
    with pytest.raises(torch.cuda.OutOfMemoryError), prof.oom_guard():
        raise torch.cuda.OutOfMemoryError("boom")
    with prof.oom_guard():
        pass  # no error: nothing happens
    assert prof.ooms_caught == 1
    assert list(tmp_path.iterdir()) == []  # no CUDA allocator to snapshot on the CPU
    assert prof.summary()["ooms_caught"] == 1


@pytest.mark.skipif(not HostMemory().peak_resets, reason="kernel does not allow resetting VmHWM")
def test_host_peak_rss_restarts_every_interval() -> None:
    prof = make()
    with prof.phase("forward"):
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB touched
        del block
    prof.step_end(1)
    first = prof.collect(1)
    with prof.phase("forward"):
        pass
    prof.step_end(2)
    second = prof.collect(2)
    assert first["mem/host_peak_rss_gb"] - first["mem/host_rss_gb"] > 0.05
    assert second["mem/host_peak_rss_gb"] < first["mem/host_peak_rss_gb"] - 0.05
    assert prof.summary()["peak_host_rss_gb"] == first["mem/host_peak_rss_gb"]


def test_trace_in_one_process(tmp_path: Path) -> None:
    config = ProfilingConfig(trace=True, trace_wait=0, trace_warmup=1, trace_active=1, trace_repeat=1)
    with make(config, trace_dir=tmp_path / "traces") as prof:
        for step in range(1, 5):
            with prof.phase("forward"):
                torch.ones(8, 8) @ torch.ones(8, 8)
            prof.step_end(step)
        assert not prof._trace.running  # stopped by itself once its window was written
    assert len(list((tmp_path / "traces").glob("rank0.*.pt.trace.json.gz"))) == 1
