"""seo_dist: train the SEO engine's language models across GPUs and nodes with DeepSpeed ZeRO,
with rank-aware experiment tracking, sharded hash-validated checkpoints and per-step profiling.

Public names (from the original brief) are imported lazily so that ``import seo_dist`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "ExperimentConfig": "seo_dist.config",
    "JobConfig": "seo_dist.config",
    "load_config": "seo_dist.config",
    "ExperimentTracker": "seo_dist.tracking",
    "MetricsTracker": "seo_dist.tracking",
    "ExperimentLogger": "seo_dist.tracking",
    "CheckpointStrategy": "seo_dist.checkpoint",
    "CheckpointManager": "seo_dist.checkpoint",
    "AdvancedCheckpointManager": "seo_dist.checkpoint",
    "StepProfiler": "seo_dist.profiling",
    "SEOTrainer": "seo_dist.trainer",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'seo_dist' has no attribute {name!r}")
