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
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from seo_dist import dist
from seo_dist.config import ExperimentConfig
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
