"""Job configuration: one YAML file, ``--set dotted.key=value`` overrides, strict validation.

Each component owns a small dataclass (:mod:`.sections`, :mod:`.checkpoint`); :class:`JobConfig` only
groups them. :mod:`.load` reads YAML and overrides and validates with pydantic (:mod:`.scalars` holds the
value types, :mod:`.problems` turns errors into one line). :mod:`.reference` generates the README table
(``python -m seo_dist.config``). The DeepSpeed section's checks live with the engine
(:mod:`seo_dist.engine.ds_config`).
"""

from __future__ import annotations

from seo_dist.config.checkpoint import (
    DEFAULT_BEST_METRIC,
    RECORDED_METRICS,
    TRAIN_LOSS,
    VAL_LOSS,
    CheckpointConfig,
    CheckpointStrategy,
)
from seo_dist.config.load import build_config, job_problems, load_config, parse_override, save_config, set_dotted
from seo_dist.config.reference import reference_markdown
from seo_dist.config.sections import (
    SECTIONS,
    DataConfig,
    ExperimentConfig,
    JobConfig,
    MlflowConfig,
    ModelConfig,
    ProfilingConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_BEST_METRIC",
    "RECORDED_METRICS",
    "TRAIN_LOSS",
    "VAL_LOSS",
    "SECTIONS",
    "CheckpointConfig",
    "CheckpointStrategy",
    "DataConfig",
    "ExperimentConfig",
    "JobConfig",
    "MlflowConfig",
    "ModelConfig",
    "ProfilingConfig",
    "TrainConfig",
    "build_config",
    "job_problems",
    "load_config",
    "parse_override",
    "reference_markdown",
    "save_config",
    "set_dotted",
]
