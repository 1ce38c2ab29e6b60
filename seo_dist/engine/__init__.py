"""Training engines. DeepSpeed ZeRO today; a torch-native FSDP2 engine later.

:mod:`.ds_config` checks and resolves the job's ``deepspeed`` section; :mod:`.deepspeed_engine` builds the
engine. Names are imported lazily, so that loading a config does not import torch.
"""

from __future__ import annotations

from seo_dist._lazy import lazy_getattr

_PUBLIC = {
    "build_deepspeed_engine": "seo_dist.engine.deepspeed_engine",
    "build_optimizer": "seo_dist.engine.deepspeed_engine",
    "build_scheduler": "seo_dist.engine.deepspeed_engine",
    "resolve_deepspeed": "seo_dist.engine.ds_config",
    "validate_deepspeed": "seo_dist.engine.ds_config",
    "zero_stage": "seo_dist.engine.ds_config",
}

__all__ = list(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC)
