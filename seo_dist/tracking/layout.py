"""File names of the experiment directory, in one place.

The names inside ``checkpoints/`` belong to :mod:`seo_dist.checkpoint.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METADATA = "metadata.json"
CONFIG_YAML = "config.yaml"
LOCK = ".lock"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
METRICS_DIR = "metrics"
ARTIFACTS_DIR = "artifacts"
CODE_SNAPSHOT_DIR = "code_snapshot"
EVENTS = "events.jsonl"
TRAIN_LOG = "train.log"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
TRACES_DIR = "traces"
HANGS_DIR = "hangs"
RANK_EVENTS = "events.rank{rank}.jsonl"
METRICS_JSONL = "metrics.jsonl"
REQUIREMENTS = "requirements.txt"
GIT_DIFF = "git_diff.patch"
PLOTS_DIR = "plots"
TOKENIZER_ARTIFACT = "tokenizer"
FINAL_MODEL_ARTIFACT = "final_model"


@dataclass(frozen=True, slots=True)
class ExperimentLayout:
    """Paths inside one ``<base_dir>/<experiment_id>/`` directory."""

    root: Path

    @property
    def metadata(self) -> Path:
        return self.root / METADATA

    @property
    def config_yaml(self) -> Path:
        return self.root / CONFIG_YAML

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def logs(self) -> Path:
        return self.root / LOGS_DIR

    @property
    def events(self) -> Path:
        return self.logs / EVENTS

    @property
    def train_log(self) -> Path:
        return self.logs / TRAIN_LOG

    @property
    def tensorboard(self) -> Path:
        return self.logs / TENSORBOARD_DIR

    @property
    def wandb_parent(self) -> Path:
        """wandb writes into ``<dir>/wandb``; handing it ``logs/`` puts its runs under ``logs/wandb``."""
        return self.logs

    @property
    def wandb(self) -> Path:
        return self.logs / WANDB_DIR

    @property
    def traces(self) -> Path:
        """torch.profiler traces."""
        return self.logs / TRACES_DIR

    @property
    def hangs(self) -> Path:
        """Stack dumps of a detected hang: ``hangs/<time>/rank_<N>.txt``."""
        return self.logs / HANGS_DIR

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_DIR / METRICS_JSONL

    @property
    def artifacts(self) -> Path:
        return self.root / ARTIFACTS_DIR

    @property
    def requirements(self) -> Path:
        return self.artifacts / REQUIREMENTS

    @property
    def git_diff(self) -> Path:
        return self.artifacts / GIT_DIFF

    @property
    def plots(self) -> Path:
        return self.artifacts / PLOTS_DIR

    @property
    def tokenizer(self) -> Path:
        return self.artifacts / TOKENIZER_ARTIFACT

    @property
    def final_model(self) -> Path:
        """The final checkpoint consolidated into a Hugging Face model folder."""
        return self.artifacts / FINAL_MODEL_ARTIFACT

    @property
    def code_snapshot(self) -> Path:
        return self.root / CODE_SNAPSHOT_DIR

    def rank_events(self, rank: int) -> Path:
        """Events a rank other than 0 records itself (its own failure, ``log_event(..., all_ranks=True)``)."""
        return self.logs / RANK_EVENTS.format(rank=rank)

    def make_dirs(self) -> None:
        for d in (self.checkpoints, self.logs, self.metrics.parent, self.artifacts):
            d.mkdir(parents=True, exist_ok=True)

    MARKERS = f"{METADATA}, {METRICS_DIR}/{METRICS_JSONL} or {CHECKPOINTS_DIR}/"
    """What :meth:`is_experiment` looks for, as error messages name it."""

    def is_experiment(self) -> bool:
        """True for a directory seo_dist wrote an experiment into: it has ``metadata.json``,
        ``metrics/metrics.jsonl`` or ``checkpoints/`` (with ``experiment.tracking_enabled: false`` a run writes
        only its checkpoints). The one test used by resume, ``seo-dist ls``, ``runs`` and ``report``."""
        return self.metadata.is_file() or self.metrics.is_file() or self.checkpoints.is_dir()
