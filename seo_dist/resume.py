"""What a training run resumes from, decided once before the trainer starts.

Three sources, in this order:

- ``--resume PATH``: an experiment directory (continue from its latest valid checkpoint) or one checkpoint
  folder inside it (continue from that one).
- a torchrun restart (``--max-restarts``, :func:`seo_dist.dist.elastic_restart_count` > 0): the workers
  continue the previous attempt's experiment from its latest valid checkpoint instead of starting a new
  one at step 0. The experiment is the one ``experiment.experiment_id`` names, or else the newest one
  started by the same torchrun agent (``metadata.json`` records its launch id). With ``--resume`` it is
  the experiment of the given path, from its latest checkpoint (the given folder is older than what the
  failed attempt saved).
- nothing: a new experiment.

The answer is a frozen :class:`ResumePlan`; the trainer reads it and never changes it.

A resume may run on another number of ranks than the run that saved (ZeRO state is resharded by
:mod:`seo_dist.checkpoint.reshard`; the data loader continues at the same global sample). The global batch
is ``train.micro_batch_size x train.grad_accum x world size``: when it differs from the checkpoint's,
:func:`record_world_size_change` logs a ``global_batch_changed`` warning from the resumed step on (set
``train.grad_accum`` or ``train.micro_batch_size`` to keep it). A job that pins the global batch
(``deepspeed.train_batch_size``) must run on a world size that divides it (:func:`global_batch_problem`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from seo_dist import dist
from seo_dist.config import ExperimentConfig, JobConfig
from seo_dist.errors import UserError
from seo_dist.tracking.layout import CHECKPOINTS_DIR, METADATA, ExperimentLayout


@dataclasses.dataclass(frozen=True, slots=True)
class ResumePlan:
    """Where a run starts from."""

    experiment_dir: Path | None = None
    """The experiment directory the run continues; None: a new experiment."""
    checkpoint: Path | None = None
    """The checkpoint folder to load; None: the experiment's latest valid checkpoint."""
    restart_attempt: int = 0
    """torchrun's restart count: 0 on the first attempt."""
    restart_found_experiment: bool = False
    """On a restart: whether there is an experiment to continue (from ``--resume`` or the previous attempt)."""

    @property
    def load_target(self) -> str | Path:
        """What ``CheckpointManager.load_checkpoint`` is asked for: a folder or ``latest``."""
        return self.checkpoint if self.checkpoint is not None else "latest"

    def experiment_config(self, configured: ExperimentConfig) -> ExperimentConfig:
        """The experiment section the run uses: the continued directory's ``base_dir`` and id, else as configured."""
        if self.experiment_dir is None:
            return configured
        return dataclasses.replace(
            configured, base_dir=str(self.experiment_dir.parent), experiment_id=self.experiment_dir.name
        )


def resume_experiment_dir(resume: Path) -> Path:
    """The experiment directory that ``--resume`` names: the directory itself, or the one holding a checkpoint folder.

    Raises :class:`UserError` (one line, exit 2) when ``resume`` is neither.
    """
    if not resume.exists():
        raise UserError(f"--resume {str(resume)!r} does not exist; give an experiment directory or a checkpoint folder")
    if ExperimentLayout(resume).is_experiment():
        return resume
    if resume.parent.name == CHECKPOINTS_DIR:
        return resume.parent.parent
    raise UserError(f"--resume {str(resume)!r} is neither an experiment directory nor a checkpoint folder")


def previous_attempt_dir(experiment: ExperimentConfig) -> Path | None:
    """The experiment a restarted worker continues (read by rank 0): the one ``experiment.experiment_id``
    names, or else the newest one started by this torchrun agent; None when there is none."""
    base = Path(experiment.base_dir).expanduser()
    if experiment.experiment_id is not None:
        candidate = base / experiment.experiment_id
        return candidate.absolute() if ExperimentLayout(candidate).is_experiment() else None
    me = dist.launch_id()
    if me is None or not base.is_dir():
        return None
    newest: tuple[float, Path] | None = None
    for meta_path in base.glob(f"*/{METADATA}"):
        try:
            meta = json.loads(meta_path.read_text())
            started = float(meta.get("start_timestamp") or 0.0)
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if (meta.get("world") or {}).get("launch_id") == me and (newest is None or started > newest[0]):
            newest = (started, meta_path.parent)
    return newest[1].absolute() if newest is not None else None


def plan_resume(resume: str | Path | None, experiment: ExperimentConfig) -> ResumePlan:
    """Decide what this run resumes from. Collective on a torchrun restart without ``--resume`` (rank 0 looks
    for the previous attempt's experiment and tells the others); call it on every rank after
    :func:`seo_dist.dist.init_distributed`. Raises :class:`UserError` for a ``resume`` that is not usable."""
    attempt = dist.elastic_restart_count()
    if resume is not None:
        given = Path(resume)
        exp_dir = resume_experiment_dir(given)
        folder = given if exp_dir != given and attempt == 0 else None
        return ResumePlan(exp_dir, folder, attempt, restart_found_experiment=attempt > 0)
    if attempt == 0:
        return ResumePlan()
    previous = dist.broadcast_object(str(previous_attempt_dir(experiment) or "") if dist.is_rank_zero() else "")
    found = Path(previous) if previous else None
    return ResumePlan(found, None, attempt, restart_found_experiment=found is not None)


# ---------------------------------------------------------------------------- another world size

DS_GLOBAL_BATCH = "train_batch_size"


class EventSink(Protocol):
    """What :func:`record_world_size_change` needs of the experiment tracker."""

    def log_event(self, name: str, /, step: int | None = None, *, level: str | None = None, **fields: Any) -> None: ...

    def annotate_resume(self, **fields: Any) -> None: ...


def global_batch_problem(job: JobConfig, world_size: int) -> str | None:
    """Why ``world_size`` ranks cannot run the global batch the job pins (``deepspeed.train_batch_size``), with
    the setting that would; None when nothing is pinned or it fits."""
    pinned = job.deepspeed.get(DS_GLOBAL_BATCH)
    if not isinstance(pinned, int) or isinstance(pinned, bool):
        return None
    t = job.train
    per_step = t.micro_batch_size * t.grad_accum * world_size
    if pinned == per_step:
        return None
    per_micro = t.micro_batch_size * world_size
    if pinned % per_micro:
        return (
            f"deepspeed.{DS_GLOBAL_BATCH}={pinned} cannot be split over {world_size} rank(s) with "
            f"train.micro_batch_size={t.micro_batch_size} ({pinned} is not a multiple of {per_micro}); run on a "
            f"world size that divides it, change train.micro_batch_size, or remove deepspeed.{DS_GLOBAL_BATCH}"
        )
    return (
        f"deepspeed.{DS_GLOBAL_BATCH}={pinned} on {world_size} rank(s) with train.micro_batch_size="
        f"{t.micro_batch_size} needs train.grad_accum={pinned // per_micro} (it is {t.grad_accum}); set it, or "
        f"remove deepspeed.{DS_GLOBAL_BATCH}"
    )


def saved_global_batch(manifest_config: Mapping[str, Any] | None, world_size: int) -> int | None:
    """The global batch of the run that saved a checkpoint, from the resolved config in its manifest."""
    train = (manifest_config or {}).get("train")
    if not isinstance(train, Mapping):
        return None
    mb, accum = train.get("micro_batch_size"), train.get("grad_accum")
    if not isinstance(mb, int) or not isinstance(accum, int):
        return None
    return mb * accum * world_size


def record_world_size_change(tracker: EventSink, loaded: Mapping[str, Any], job: JobConfig) -> None:
    """After a checkpoint was loaded: the ``resharded`` event (when ZeRO state was resharded), a
    ``global_batch_changed`` warning when the global batch differs from the checkpoint's, and the world-size
    change in this run's ``resumes`` entry of metadata.json."""
    manifest = loaded["manifest"]
    step, world = int(loaded["step"]), dist.get_world_size()
    before = saved_global_batch(manifest.config, manifest.world_size)
    t = job.train
    now = t.micro_batch_size * t.grad_accum * world
    resharded = loaded.get("resharded")
    if resharded is not None:
        tracker.log_event(
            "resharded",
            step=step,
            **resharded,
            message=(
                f"ZeRO stage {resharded['zero_stage']} state of {manifest.world_size} rank(s) resharded for {world} "
                f"in {resharded['seconds']:.1f} s ({'converted' if resharded['converted'] else 'reused'} "
                f"{resharded['universal']})"
            ),
        )
    if before is not None and before != now:
        tracker.log_event(
            "global_batch_changed",
            step=step,
            level="warning",
            from_global_batch=before,
            to_global_batch=now,
            from_world_size=manifest.world_size,
            to_world_size=world,
            message=(
                f"the global batch changes from {before} to {now} samples per step from step {step} (world size "
                f"{manifest.world_size} -> {world}, train.micro_batch_size={t.micro_batch_size}, train.grad_accum="
                f"{t.grad_accum}); the loss curve and LR schedule no longer match the run that saved{_keep_hint(before, t.micro_batch_size, world)}"
            ),
        )
    if manifest.world_size != world or resharded is not None:
        change: dict[str, Any] = {
            "from_world_size": manifest.world_size,
            "to_world_size": world,
            "zero_stage": manifest.zero_stage,
            "resharded": resharded is not None,
            "seconds": resharded["seconds"] if resharded is not None else None,
            "from_global_batch": before,
            "to_global_batch": now,
        }
        tracker.annotate_resume(world_size_change=change)


def _keep_hint(global_batch: int, micro_batch: int, world: int) -> str:
    per_micro = micro_batch * world
    if global_batch % per_micro:
        return ""
    return f"; train.grad_accum={global_batch // per_micro} keeps it"
