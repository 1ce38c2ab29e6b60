"""Training engines. DeepSpeed ZeRO today; a torch-native FSDP2 engine later."""

from seo_dist.engine.deepspeed_engine import build_deepspeed_engine, build_optimizer, build_scheduler

__all__ = ["build_deepspeed_engine", "build_optimizer", "build_scheduler"]
