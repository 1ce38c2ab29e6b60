"""File names of the experiment directory (DESIGN.md section 3), in one place."""

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
METRICS_JSONL = "metrics.jsonl"
REQUIREMENTS = "requirements.txt"
GIT_DIFF = "git_diff.patch"
PLOTS_DIR = "plots"


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
        return self.logs / "wandb"

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
    def code_snapshot(self) -> Path:
        return self.root / CODE_SNAPSHOT_DIR

    def rank_events(self, rank: int) -> Path:
        """Events a rank other than 0 records itself (its own failure, ``log_event(..., all_ranks=True)``)."""
        return self.logs / f"events.rank{rank}.jsonl"

    def make_dirs(self) -> None:
        for d in (self.checkpoints, self.logs, self.metrics.parent, self.artifacts):
            d.mkdir(parents=True, exist_ok=True)

    def is_experiment(self) -> bool:
        return self.metadata.is_file() or self.metrics.is_file()
