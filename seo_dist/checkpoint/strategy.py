"""``CheckpointStrategy``: when to save and what to keep (the brief's fields plus keep_best/maximize/pinned)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CheckpointStrategy:
    """Checkpoint policy. Field order follows the brief, so ``CheckpointStrategy(500)`` still works."""

    save_interval: int = 1000
    """Save every N optimizer steps (0: no interval saves, only the final one)."""
    save_best: bool = True
    """Keep the best checkpoint(s) by ``best_metric`` whatever their age (``keep_best`` of them)."""
    save_latest: bool = True
    """Save at the end of training, whatever the interval (the trainer's final save)."""
    best_metric: str = "val/loss"
    """Metric that ranks checkpoints for ``save_best`` and ``load_best_checkpoint``."""
    max_checkpoints: int = 10
    """Newest checkpoints always kept (>= 2: a crash during a save must leave a committed one)."""
    cleanup_old: bool = True
    """Delete checkpoints outside the kept set after each commit. False keeps everything."""
    keep_best: int = 1
    """How many of the best by ``best_metric`` are kept (when ``save_best``)."""
    maximize: bool = False
    """True when a larger ``best_metric`` is better (accuracy), False for losses."""
    pinned: list[int] = field(default_factory=list)
    """Steps never deleted by retention."""

    def __post_init__(self) -> None:
        if self.save_interval < 0:
            raise ValueError(f"CheckpointStrategy.save_interval must be >= 0, got {self.save_interval}")
        if self.max_checkpoints < 2:
            raise ValueError(
                f"CheckpointStrategy.max_checkpoints must be >= 2 (a crash mid-save must leave one), "
                f"got {self.max_checkpoints}"
            )
        if self.keep_best < 0:
            raise ValueError(f"CheckpointStrategy.keep_best must be >= 0, got {self.keep_best}")
        if not self.best_metric:
            raise ValueError("CheckpointStrategy.best_metric must be a metric name such as 'val/loss'")
        self.pinned = sorted({int(s) for s in self.pinned})

    @property
    def effective_keep_best(self) -> int:
        return self.keep_best if self.save_best else 0

    def should_save(self, step: int, *, final: bool = False) -> bool:
        """True at every ``save_interval``-th step (step > 0), and at the final step when ``save_latest``."""
        if final:
            return self.save_latest
        return self.save_interval > 0 and step > 0 and step % self.save_interval == 0

    @classmethod
    def from_config(cls, cfg: Any) -> CheckpointStrategy:
        """From :class:`seo_dist.config.CheckpointConfig` (keep_last -> max_checkpoints, save_final -> save_latest)."""
        return cls(
            save_interval=cfg.save_interval,
            save_best=cfg.keep_best > 0,
            save_latest=cfg.save_final,
            best_metric=cfg.best_metric,
            max_checkpoints=cfg.keep_last,
            cleanup_old=True,
            keep_best=cfg.keep_best,
            maximize=cfg.maximize,
            pinned=list(cfg.pinned),
        )
