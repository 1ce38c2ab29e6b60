"""Step profiling: timings, tokens/s, TFLOPs and MFU, host/device/NVML memory, torch.profiler windows.

``StepProfiler`` is what the trainer wires in; ``flops_per_token`` feeds it the model's FLOPs.
"""

from seo_dist.profiling.flops import PEAK_BF16_TFLOPS, count_matmul_params, flops_per_token, peak_tflops_for
from seo_dist.profiling.step import StepProfiler

__all__ = ["PEAK_BF16_TFLOPS", "StepProfiler", "count_matmul_params", "flops_per_token", "peak_tflops_for"]
