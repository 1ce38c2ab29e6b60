"""Which metric sinks an experiment writes to, built from ``ExperimentConfig``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seo_dist.config import ExperimentConfig
from seo_dist.tracking.layout import ExperimentLayout
from seo_dist.tracking.logger import ExperimentLogger
from seo_dist.tracking.sinks import ConsoleSink, JsonlSink, Sink, TensorBoardSink, WandbSink


def build_sinks(
    layout: ExperimentLayout, config: ExperimentConfig, logger: ExperimentLogger, resume_step: int | None
) -> list[Sink]:
    """metrics.jsonl, TensorBoard (which purges steps after ``resume_step``) and the console."""
    sinks: list[Sink] = [JsonlSink(layout.metrics)]
    if config.tensorboard:
        purge = resume_step + 1 if resume_step is not None else None
        sinks.append(TensorBoardSink(layout.tensorboard, purge_step=purge))
    sinks.append(ConsoleSink(logger, config.metrics_logging_interval, to_stdout=config.console))
    return sinks


def lazy_sinks(
    layout: ExperimentLayout, config: ExperimentConfig, wandb_meta: dict[str, Any] | None, run_config: dict[str, Any]
) -> list[Callable[[], Sink]]:
    """Sinks that are slow to open (wandb: ~0.5 s), opened on the sink thread rather than in start_experiment."""
    if config.wandb == "disabled" or not wandb_meta:
        return []

    def open_wandb() -> Sink:
        return WandbSink(
            layout.wandb_parent,
            run_id=wandb_meta["run_id"],
            project=config.wandb_project,
            run_name=config.experiment_name,
            mode=config.wandb,
            config=run_config,
        )

    open_wandb.sink_name = "wandb"  # type: ignore[attr-defined]
    return [open_wandb]
