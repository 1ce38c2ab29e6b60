"""The ``deepspeed`` section of a job: static checks at load time, and the config ``deepspeed.initialize`` gets.

Checks use DeepSpeed's own pydantic models and constants, so they are imported when a config is
validated, not when this module is.
"""

from __future__ import annotations

import copy
import importlib
from typing import TYPE_CHECKING, Any

from seo_dist.config.problems import dotted, unknown_key
from seo_dist.errors import ConfigError

if TYPE_CHECKING:
    from seo_dist.config.sections import JobConfig

# Batch sizes live in ``train``; these DeepSpeed keys are derived from it.
DS_MICRO = "train_micro_batch_size_per_gpu"
DS_ACCUM = "gradient_accumulation_steps"
DS_GLOBAL = "train_batch_size"

# DeepSpeed modules whose upper-case string constants are the top-level keys it understands
_KEY_MODULES = (
    "deepspeed.runtime.constants",
    "deepspeed.runtime.zero.constants",
    "deepspeed.runtime.zero.config",
    "deepspeed.runtime.config",
    "deepspeed.runtime.activation_checkpointing.config",
    "deepspeed.runtime.swap_tensor.constants",
    "deepspeed.profiling.constants",
    "deepspeed.autotuning.constants",
    "deepspeed.monitor.constants",
    "deepspeed.runtime.data_pipeline.constants",
    "deepspeed.elasticity.constants",
    "deepspeed.nebula.constants",
    "deepspeed.compression.constants",
    "deepspeed.checkpoint.constants",
)
# top-level keys DeepSpeed reads without a constant in those modules
_OTHER_KEYS = frozenset(
    {
        "wandb",
        "tensorboard",
        "csv_monitor",
        "comet",
        "comms_logger",
        "flops_profiler",
        "compile",
        "checkpoint",
        "data_efficiency",
        "weight_quantization",
        "hybrid_engine",
        "timers",
        "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer",
        "torch_autocast",
        "amp",
        "aio",
        "nebula",
        "pipeline",
        "sparse_attention",
    }
)


def validate_deepspeed(ds: dict[str, Any]) -> list[str]:
    """Static checks of the DeepSpeed section that DeepSpeed itself would only report deep in a traceback."""
    problems = []
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        return [f"deepspeed.zero_optimization: expected a mapping, got {zero!r}"]
    stage = zero.get("stage", 0)
    if not isinstance(stage, int) or isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        problems.append(f"deepspeed.zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    else:
        problems.extend(_validate_with_deepspeed_models(ds))
    for key in (DS_MICRO, DS_ACCUM, DS_GLOBAL):
        value = ds.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"deepspeed.{key} must be a positive integer, got {value!r}")
    for key in ("fp16", "bf16"):
        section = ds.get(key, {})
        if not isinstance(section, dict) or not isinstance(section.get("enabled", False), bool):
            problems.append(f"deepspeed.{key} must be a mapping with enabled: true|false, got {section!r}")
    return problems


def _validate_with_deepspeed_models(ds: dict[str, Any]) -> list[str]:
    """Let DeepSpeed's own pydantic models reject unknown or mistyped keys in the sections they own."""
    try:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
        from pydantic import ValidationError
    except Exception:  # DeepSpeed not importable: its own initialize() will complain later
        return []
    problems = []
    try:
        DeepSpeedZeroConfig(**ds.get("zero_optimization", {}))
    except ValidationError as e:
        for err in e.errors():
            problems.append(f"{dotted(('deepspeed', 'zero_optimization', *err['loc']))}: {err['msg']}")
    known = known_deepspeed_keys()
    for key in sorted(set(ds) - known):
        problems.append(unknown_key(f"deepspeed.{key}", key, sorted(known)))
    return problems


def known_deepspeed_keys() -> set[str]:
    """Top-level keys DeepSpeed understands, read from its own constants modules."""
    keys = set(_OTHER_KEYS)
    for mod_name in _KEY_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except Exception:
            continue
        keys.update(v for k, v in vars(mod).items() if k.isupper() and isinstance(v, str) and v.isidentifier())
    return keys


def resolve_deepspeed(job: JobConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config to hand to ``deepspeed.initialize``: batch sizes derived from ``train``.

    A batch size written in the DeepSpeed section must agree with ``train``; a mismatch is an error.
    """
    ds = copy.deepcopy(job.deepspeed)
    t = job.train
    expected = {
        DS_MICRO: t.micro_batch_size,
        DS_ACCUM: t.grad_accum,
        DS_GLOBAL: t.micro_batch_size * t.grad_accum * world_size,
    }
    for key, want in expected.items():
        have = ds.get(key)
        if have is not None and have != want:
            raise ConfigError(
                f"deepspeed.{key}={have} does not match train (micro_batch_size={t.micro_batch_size}, "
                f"grad_accum={t.grad_accum}, world size {world_size} -> {want}); remove it from the deepspeed "
                f"section (it is derived) or make them agree"
            )
        ds[key] = want
    if t.grad_clip > 0:
        ds.setdefault("gradient_clipping", t.grad_clip)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def zero_stage(job: JobConfig) -> int:
    return int(job.deepspeed.get("zero_optimization", {}).get("stage", 0))
