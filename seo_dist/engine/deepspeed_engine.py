"""``deepspeed.initialize`` from the job config: ZeRO 0-3, bf16 where the hardware has it."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from seo_dist.config import TrainConfig
from seo_dist.errors import ConfigError

_NO_DECAY = ("bias", "norm", "ln_", "layernorm", "wpe", "wte", "embed")


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings (the usual LM recipe)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if any(k in name.lower() for k in _NO_DECAY) or p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=train.lr, betas=(0.9, 0.95), eps=1e-8)


def lr_factor(step: int, train: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""
    if train.warmup_steps and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    span = max(1, train.max_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))


def apply_configured_lr(scheduler: Any, train: TrainConfig) -> float | None:
    """After a resume, make ``train.lr`` the peak LR again; returns the checkpoint's peak LR if it differed.

    Our schedule is a ``LambdaLR`` whose lambda reads the job's config, so a resume already follows a changed
    ``warmup_steps``, ``max_steps`` or ``min_lr_ratio``; only the peak LR (``base_lrs``) came back from the
    checkpoint. Without this, ``--set train.lr=...`` on a resume would be silently ignored (the complaint
    users of most trainers have). The optimizer's current LR is set for the resumed step at once, so the
    next update already uses it. A scheduler from the DeepSpeed config is DeepSpeed's: left as loaded.
    """
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return None
    saved = list(scheduler.base_lrs)
    if all(math.isclose(lr, train.lr, rel_tol=1e-9) for lr in saved):
        return None
    factor = lr_factor(scheduler.last_epoch, train)
    scheduler.base_lrs = [train.lr for _ in saved]
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = train.lr
        group["lr"] = train.lr * factor
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    return float(saved[0])


def check_precision(ds: dict[str, Any], device: torch.device) -> None:
    if ds.get("fp16", {}).get("enabled") and device.type == "cpu":
        raise ConfigError(
            "deepspeed.fp16.enabled is not supported on the CPU; use bf16 (deepspeed.bf16.enabled=true) or fp32"
        )


def build_deepspeed_engine(model: torch.nn.Module, train: TrainConfig, ds_config: dict[str, Any]) -> tuple[Any, Any]:
    """The DeepSpeed engine and its LR scheduler.

    The optimizer and scheduler come from ``train`` unless the DeepSpeed section names its own
    (``optimizer`` / ``scheduler`` keys, e.g. DeepSpeedCPUAdam for CPU offload). Either way the
    scheduler is stepped by DeepSpeed at each gradient-accumulation boundary and saved in its checkpoint.
    """
    import deepspeed

    from seo_dist import dist

    dist.ensure_process_group()
    ds_config = copy.deepcopy(ds_config)
    optimizer = None if "optimizer" in ds_config else build_optimizer(model, train)
    if "optimizer" in ds_config:
        ds_config["optimizer"].setdefault("params", {}).setdefault("lr", train.lr)
    scheduler: Any = None
    if "scheduler" not in ds_config:
        if optimizer is not None:
            scheduler = build_scheduler(optimizer, train)
        else:  # DeepSpeed builds the optimizer: hand it a callable that builds our schedule on it
            scheduler = lambda opt: build_scheduler(opt, train)  # noqa: E731
    engine, _, _, lr_scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=None if optimizer is not None else [p for p in model.parameters() if p.requires_grad],
        lr_scheduler=scheduler,
        config=ds_config,
    )
    return engine, lr_scheduler
