"""Host and device memory readings, with peaks that restart at every log interval.

Sizes are reported in GiB (2**30 bytes) under ``_gb`` names, the unit ``torch.cuda`` and
DeepSpeed's ``see_memory_usage`` call GB.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import psutil
import torch

log = logging.getLogger(__name__)

GIB = float(2**30)
_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


class HostMemory:
    """Resident set size of this process, now and at its peak since the last :meth:`reset_peak`.

    The peak comes from the kernel's high-water mark (``VmHWM``), which Linux lets a process
    reset by writing ``5`` to ``/proc/self/clear_refs``; where that is not possible the peak
    is the process-lifetime one, and ``peak_resets`` says so.
    """

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak_resets = _PROC_CLEAR_REFS.exists()

    def rss_gb(self) -> float:
        return self._process.memory_info().rss / GIB

    def peak_rss_gb(self) -> float | None:
        try:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _PROC_STATUS.read_text(), re.MULTILINE)
        except OSError:
            return None
        return int(match.group(1)) * 1024 / GIB if match else None

    def reset_peak(self) -> None:
        if not self.peak_resets:
            return
        try:
            _PROC_CLEAR_REFS.write_text("5")
        except OSError:
            self.peak_resets = False

    def read(self) -> dict[str, float]:
        out = {"mem/host_rss_gb": self.rss_gb()}
        peak = self.peak_rss_gb()
        if peak is not None:
            out["mem/host_peak_rss_gb"] = max(peak, out["mem/host_rss_gb"])
        return out


class CudaMemory:
    """The caching allocator's peaks and failure counters for one CUDA device.

    ``alloc_retries`` (cudaMalloc failed, the cache was flushed and the call retried: a sign
    of fragmentation or memory pressure) and ``ooms`` are cumulative since the process
    started, as torch counts them; the allocated/reserved peaks restart at each interval.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def read(self) -> dict[str, float]:
        stats = torch.cuda.memory_stats(self.device)
        return {
            "mem/device_max_allocated_gb": torch.cuda.max_memory_allocated(self.device) / GIB,
            "mem/device_max_reserved_gb": torch.cuda.max_memory_reserved(self.device) / GIB,
            "mem/alloc_retries": float(stats.get("num_alloc_retries", 0)),
            "mem/ooms": float(stats.get("num_ooms", 0)),
        }

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)


def start_memory_history(max_entries: int = 100_000) -> bool:
    """Record allocation history (Python stacks) so an OOM snapshot shows who allocated what.

    Off by default in the profiler: it costs time on every allocation. Without it a snapshot
    still holds the allocator's segments and blocks (sizes, fragmentation), only no stacks.
    """
    try:
        torch.cuda.memory._record_memory_history(max_entries=max_entries, stacks="python")
    except (RuntimeError, TypeError, AttributeError) as e:  # a private API: never let it stop training
        log.warning("could not start CUDA memory history recording: %s", e)
        return False
    return True


def dump_memory_snapshot(path: Path) -> Path | None:
    """Write the CUDA allocator's state to ``path`` (open it at https://pytorch.org/memory_viz).

    Returns None, after logging why, when the dump fails: it runs while an out-of-memory
    error is on its way up, and must never replace that error with its own.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.cuda.memory._dump_snapshot(str(path))
    except (RuntimeError, OSError) as e:
        log.warning("could not dump the CUDA memory snapshot to %s: %s", path, e)
        return None
    return path
