"""seo_dist: train the SEO engine's language models across GPUs and nodes with DeepSpeed ZeRO,
with rank-aware experiment tracking, sharded hash-validated checkpoints and per-step profiling.

The public names below are imported lazily so that ``import seo_dist`` stays cheap.
"""

from __future__ import annotations

from seo_dist._lazy import lazy_getattr

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

__getattr__ = lazy_getattr(__name__, _PUBLIC)
