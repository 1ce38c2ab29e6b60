"""Experiment tracking: rank-0-only experiment directory, metadata, metrics sinks and events.

``ExperimentTracker`` is the front door (start/log/end); ``MetricsTracker`` runs the sinks
(metrics.jsonl, TensorBoard, wandb, console) on a background thread; ``ExperimentLogger`` writes
``logs/events.jsonl`` and ``logs/train.log``. Run analysis (``seo-dist runs|report|compare``) lives in
:mod:`seo_dist.tracking.analysis`.

Names are imported lazily, so ``seo-dist runs`` and friends do not pay for importing torch.
"""

from __future__ import annotations

from seo_dist._lazy import lazy_getattr

_PUBLIC = {
    "STATUSES": "seo_dist.tracking.tracker",
    "ExperimentTracker": "seo_dist.tracking.tracker",
    "ExperimentLayout": "seo_dist.tracking.layout",
    "ExperimentLogger": "seo_dist.tracking.logger",
    "MetricsTracker": "seo_dist.tracking.metrics",
    "InterruptHandle": "seo_dist.tracking.signals",
    "TrainingInterrupted": "seo_dist.tracking.signals",
    "install_interrupt_handlers": "seo_dist.tracking.signals",
}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_PUBLIC))
