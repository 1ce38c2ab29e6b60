"""What every benchmark stores next to its numbers (machine, versions, load) and how it writes its JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def machine(load_before: tuple[float, float, float] | None = None, **extra: Any) -> dict[str, Any]:
    """CPU model and count, RAM, platform, Python, library versions (torch, CUDA, DeepSpeed...), load averages."""
    import psutil

    from seo_dist.tracking.metadata import cpu_model, framework_versions

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {k: v for k, v in framework_versions().items() if v is not None},
        "load_average_at_start": load_before,
        "load_average_at_end": os.getloadavg(),
    }
    info.update(extra)
    return info


def write_report(path: str | os.PathLike[str], report: dict[str, Any]) -> None:
    """``report`` as indented JSON at ``path`` (folders created), stamped with the time; says where it went."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "time": report.get("time", time.time())}, indent=2, default=str) + "\n")
    print(f"wrote {out}")
