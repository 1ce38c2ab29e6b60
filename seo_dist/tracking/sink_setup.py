"""Which metric sinks an experiment writes to, built from ``ExperimentConfig``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seo_dist.config import ExperimentConfig
from seo_dist.tracking.layout import ExperimentLayout
from seo_dist.tracking.logger import ExperimentLogger
from seo_dist.tracking.sinks import ConsoleSink, JsonlSink, Sink, TensorBoardSink, WandbSink


def build_sinks(
    layout: ExperimentLayout,
    config: ExperimentConfig,
    logger: ExperimentLogger,
    resume_step: int | None,
    *,
    metadata: dict[str, Any] | None = None,
    save_metadata: Callable[[], None] | None = None,
) -> list[Sink]:
    """metrics.jsonl, TensorBoard (which purges steps after ``resume_step``), the console, and MLflow when
    enabled (its run id goes into ``metadata``, then ``save_metadata()`` writes metadata.json)."""
    sinks: list[Sink] = [JsonlSink(layout.metrics)]
    if config.tensorboard:
        purge = resume_step + 1 if resume_step is not None else None
        sinks.append(TensorBoardSink(layout.tensorboard, purge_step=purge))
    sinks.append(ConsoleSink(logger, config.metrics_logging_interval, to_stdout=config.console))
    if config.mlflow.enabled and metadata is not None:
        sinks.append(mlflow_sink(layout, config, logger, metadata, save_metadata or (lambda: None)))
    return sinks


def mlflow_sink(
    layout: ExperimentLayout,
    config: ExperimentConfig,
    logger: ExperimentLogger,
    metadata: dict[str, Any],
    save_metadata: Callable[[], None],
) -> Sink:
    """The MLflow sink for this experiment; ``metadata["mlflow"]["run_id"]`` names the run a resume continues."""
    from seo_dist.tracking.mlflow_sink import MlflowRun, MlflowSink, run_params, run_tags

    settings = config.mlflow
    entry = {
        "run_id": (metadata.get("mlflow") or {}).get("run_id"),
        "tracking_uri": settings.tracking_uri,
        "experiment_name": settings.experiment_name or config.experiment_name,
    }
    metadata["mlflow"] = entry

    def record_run_id(run_id: str) -> None:
        if entry["run_id"] != run_id:
            entry["run_id"] = run_id
            save_metadata()

    run = MlflowRun(
        tracking_uri=settings.tracking_uri,
        experiment_name=str(entry["experiment_name"]),
        run_name=str(metadata.get("experiment_id") or config.experiment_name),
        run_id=entry["run_id"],
        params=run_params(metadata.get("config") or {}),
        tags=run_tags(metadata),
        layout=layout,
        close_timeout_s=settings.close_timeout_s,
        on_run_id=record_run_id,
        status=lambda: metadata.get("status"),
    )
    return MlflowSink(run, logger)


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
