"""GPU utilisation, memory, power and temperature through NVML (the ``nvidia-ml-py`` package).

Sampled once per log interval, so the readings are instantaneous values at that moment
(utilisation is the driver's own average over its last sample period, 1/6 s to 1 s).
Anything NVML cannot answer (no driver, a field unsupported in a VM) is left out rather
than raised: monitoring must never stop a training run.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from seo_dist.profiling.memory import GIB

log = logging.getLogger(__name__)


def _import_pynvml() -> Any:
    import pynvml  # from nvidia-ml-py

    return pynvml


class NvmlSampler:
    """Reads one GPU's counters; ``available`` is False when NVML or the GPU cannot be reached.

    The GPU is found by UUID, so ``CUDA_VISIBLE_DEVICES`` remapping (``cuda:0`` being physical
    GPU 3) picks the right board; the CUDA index is the fallback.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._nvml: Any = None
        self._handle: Any = None
        try:
            nvml = _import_pynvml()
        except ImportError as e:
            log.info("nvidia-ml-py is not installed, no gpu/* metrics: %s", e)
            return
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            log.info("NVML unavailable, no gpu/* metrics: %s", e)
            return
        self._nvml = nvml
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            self._handle = self._find_handle(index)
        except nvml.NVMLError as e:
            log.info("NVML could not find the GPU of %s, no gpu/* metrics: %s", device, e)
            self.close()

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _find_handle(self, index: int) -> Any:
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is not None:
            text = str(uuid)
            with contextlib.suppress(self._nvml.NVMLError):
                return self._nvml.nvmlDeviceGetHandleByUUID(
                    text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"
                )
        return self._nvml.nvmlDeviceGetHandleByIndex(index)

    def sample(self) -> dict[str, float]:
        if self._handle is None:
            return {}
        nvml, handle = self._nvml, self._handle
        readers = {
            "gpu/util_pct": lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            "gpu/mem_used_gb": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used / GIB,
            "gpu/power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # milliwatts
            "gpu/temp_c": lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
        }
        out: dict[str, float] = {}
        for name, read in readers.items():
            # NVMLError_NotSupported and friends (power readings in some VMs): leave the field out.
            with contextlib.suppress(nvml.NVMLError):
                out[name] = read()
        return out

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
        self._nvml = None
        self._handle = None
