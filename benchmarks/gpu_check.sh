#!/usr/bin/env bash
# GPU check of asynchronous checkpointing (pinned staging) and of the profiling hooks' GPU metrics.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: benchmarks/out/gpu_check
#
# For a machine with one CUDA GPU and the project's environment already active (torch with CUDA, deepspeed,
# transformers, xxhash; nvidia-ml-py for the gpu/* metrics). Installs and downloads nothing. Under 15 minutes:
#   1. environment check: fails at once, with the reason, when there is no usable GPU;
#   2. the GPU-only tests: pinned staging of CUDA tensors, StepProfiler's CUDA/NVML path;
#   3. benchmarks/bench_checkpoint.py on 1 rank (torchrun, nccl, bf16, ZeRO-2) with a GPT-2 sized to use
#      about half of the GPU: stall per save for DeepSpeed's default engine, seo_dist sync and async
#      (pinned staging buffers), background write rate against raw write+fsync, step-time slowdown, and
#      the StepProfiler metrics (step time, tokens/s, TFLOPs, MFU, device memory, NVML util/power/memory);
#   4. benchmarks/bench_overhead.py on 1 rank: seo_dist.train against a plain DeepSpeed loop (same GPT-2 4 x 256,
#      micro batch 8, sequence 128, ZeRO-2, clipping, AdamW), 5 interleaved pairs, median step time and spread
#      (goal: throughput ratio >= 0.98). Set OVERHEAD_PAIRS / OVERHEAD_STEPS to change its size.
# Everything printed is also in OUT_DIR/gpu_check.log; record the block at the end in benchmarks/RESULTS.md.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/out/gpu_check}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "$*" | tee -a "$LOG"; }

say "== gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname); repo $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

# ---------------------------------------------------------------- 1. environment (fail fast)
if ! "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"; then
import importlib, shutil, sys

def fail(msg):
    print(f"gpu_check: FAILED: {msg}", file=sys.stderr)
    sys.exit(2)

try:
    import torch
except ImportError as e:
    fail(f"torch is not importable ({e}); activate the project's environment first")
if not torch.cuda.is_available():
    fail(f"no CUDA GPU is visible to torch {torch.__version__} (built for CUDA {torch.version.cuda}); "
         "run this script on a GPU machine (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
missing = [m for m in ("deepspeed", "transformers", "xxhash") if importlib.util.find_spec(m) is None]
if missing:
    fail(f"missing Python packages: {', '.join(missing)}; this script installs nothing")
props = torch.cuda.get_device_properties(0)
try:
    torch.ones(1, device="cuda").add_(1).item()
except Exception as e:
    fail(f"the GPU does not run a kernel: {e}")
import deepspeed, transformers
nvml = importlib.util.find_spec("pynvml") is not None
try:
    nccl = torch.cuda.nccl.version()
    nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
except Exception as e:  # reported, not fatal: the benchmark runs one rank
    nccl = f"unknown ({e})"
free_disk = shutil.disk_usage(".").free / 2**30
print(f"GPU: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, {props.total_memory / 2**30:.0f} GiB, "
      f"capability {props.major}.{props.minor}, bf16 {torch.cuda.is_bf16_supported()}")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, NCCL {nccl}), "
      f"deepspeed {deepspeed.__version__}, transformers {transformers.__version__}; "
      f"nvidia-ml-py {'present' if nvml else 'MISSING: no gpu/* metrics'}; free disk here {free_disk:.0f} GiB")
EOF
  say "gpu_check: stopped after $(elapsed) s: no usable GPU environment (reason above)"
  exit 2
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit \
  --format=csv,noheader 2>&1 | sed 's/^/nvidia-smi: /' | tee -a "$LOG" || true

# ---------------------------------------------------------------- 2. GPU-only tests (about a minute)
say "== GPU tests (pinned staging, StepProfiler CUDA + NVML path) at $(elapsed) s"
if "$PY" -c "import pytest" 2> /dev/null; then
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_profiling_cuda.py \
    "tests/test_checkpoint_async.py::test_cuda_tensors_are_staged_into_pinned_host_buffers" 2>&1 \
    | tail -n 15 | tee -a "$LOG" || say "gpu_check: GPU tests FAILED or timed out (see above); going on"
else
  say "gpu_check: pytest not installed, GPU tests skipped"
fi

# ---------------------------------------------------------------- 3. checkpoint benchmark on the GPU
say "== checkpoint benchmark (1 rank, nccl, bf16, ZeRO-2, model for ~half the GPU) at $(elapsed) s"
BENCH_JSON="$OUT/bench_checkpoint_gpu.json"
set +e
timeout --signal=INT 320 torchrun --nproc-per-node 1 --master-port "${MASTER_PORT:-29517}" \
  benchmarks/bench_checkpoint.py --ranks 1 --stages 2 --saves 1 --async-saves 2 --no-idle-write \
  --seq 1024 --base-steps 5 --fill-gpu 0.5 --out "$BENCH_JSON" > "$OUT/bench.out" 2>&1
STATUS=$?
set -e
grep -v -i "warn\|return func\|^\s*$" "$OUT/bench.out" | tail -n 30 | tee -a "$LOG"
if [ "$STATUS" -ne 0 ]; then
  say "gpu_check: benchmark FAILED (exit $STATUS; 124 = over its 320 s budget); full output in $OUT/bench.out"
  exit 1
fi

# ---------------------------------------------------------------- 4. training-step overhead on the GPU
say "== overhead: seo_dist.train vs plain DeepSpeed (1 rank, GPU, ${OVERHEAD_PAIRS:-5} pairs) at $(elapsed) s"
OVERHEAD_JSON="$OUT/bench_overhead_gpu.json"
set +e
timeout --signal=INT 480 "$PY" benchmarks/bench_overhead.py --nproc 1 --pairs "${OVERHEAD_PAIRS:-5}" \
  --steps "${OVERHEAD_STEPS:-60}" --json "$OVERHEAD_JSON" > "$OUT/overhead.out" 2>&1
OVERHEAD_STATUS=$?
set -e
grep -v -i "warn\|return func\|^\s*$" "$OUT/overhead.out" | tail -n 14 | tee -a "$LOG"
if [ "$OVERHEAD_STATUS" -ne 0 ]; then
  say "gpu_check: overhead benchmark FAILED (exit $OVERHEAD_STATUS; 124 = over its 480 s budget); see $OUT/overhead.out"
fi

# ---------------------------------------------------------------- what to record
say ""
say "== RECORD in benchmarks/RESULTS.md (gpu_check, $(elapsed) s in all) =="
"$PY" - "$BENCH_JSON" <<'EOF' 2>&1 | tee -a "$LOG"
import json, statistics, sys

d = json.load(open(sys.argv[1]))
m = d["machine"]
print(f"- {m['device']}; torch {m['torch']}; {d['model']}")
for r in d["results"]:
    med = statistics.median
    print(f"- ZeRO {r['stage']}: {r['params'] / 1e6:.0f}M params, checkpoint {r['checkpoint_bytes'] / 1e9:.2f} GB, "
          f"GPU peak {r.get('gpu_peak_allocated_fraction', 0):.0%} of {r.get('gpu_total_gb', 0):.0f} GiB")
    print(f"- stall per save: DeepSpeed default {med(r['deepspeed_default_stall_s']):.2f} s, seo_dist sync "
          f"{med(r['seo_sync_stall_s']):.2f} s, seo_dist async {[round(x, 3) for x in r['seo_async_stall_s']]} s "
          f"(staging {[round(x, 2) for x in r['seo_async_stage_s']]} s, pinned {r['staging_pinned_bytes'] / 1e9:.2f} GB)"
          f" -> async/DeepSpeed {r['async_stall_vs_deepspeed']:.3f} after the first save, "
          f"{r['async_first_stall_vs_deepspeed']:.3f} for the first (goal <= 0.1)")
    print(f"- background write {r['background_write_gbps_training']:.2f} GB/s vs raw write+fsync "
          f"{r['raw_write_fsync_gbps']:.2f} GB/s = {r['background_vs_raw']:.0%} (goal >= 80%)")
    print(f"- step {r['base_step_s']:.3f} s alone, {r['step_s_during_background_save']:.3f} s during a background "
          f"save ({r['slowdown_pct']:+.0f}%)")
    p = r["profile"]
    keys = ("perf/step_time_s", "perf/tokens_per_s", "perf/tflops", "perf/mfu", "mem/device_max_allocated_gb",
            "mem/device_max_reserved_gb", "gpu/util_pct", "gpu/power_w", "gpu/mem_used_gb", "gpu/temp_c")
    print("- profiler: " + ", ".join(f"{k} {p[k]:.3g}" for k in keys if k in p))
    if not any(k.startswith("gpu/") for k in p):
        print("- profiler: no gpu/* (NVML) metrics: is nvidia-ml-py installed and the driver's NVML reachable?")
print(f"- JSON: {sys.argv[1]}")
EOF
if [ -f "$OVERHEAD_JSON" ]; then
  "$PY" - "$OVERHEAD_JSON" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys

d = json.load(open(sys.argv[1]))
s = d["summary"]
m = s["shipped"]
print(f"- overhead ({len(d['rounds'])} interleaved pairs, 1 rank): plain DeepSpeed {s['peer_step_ms_median']:.1f} ms, "
      f"seo_dist {m['step_ms_median']:.1f} ms per step; throughput ratio median {m['ratio_median']:.3f} "
      f"(min {m['ratio_min']:.3f}, max {m['ratio_max']:.3f}; goal >= 0.98); JSON {sys.argv[1]}")
EOF
fi
