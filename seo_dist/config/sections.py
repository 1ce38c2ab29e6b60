"""The job's config sections: one small dataclass per component, a docstring per field.

Field types carry their ranges (``Annotated[int, Ge(1)]``), which loading checks with pydantic
(:mod:`seo_dist.config.load`). ``validate()`` returns every problem of a section built in Python (the
tracker takes an ``ExperimentConfig`` on its own): the ranges again, and what a type cannot express
(files that must exist, plain folder names, ``model.config`` keys of the chosen architecture).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt

from seo_dist.config.checkpoint import CheckpointConfig
from seo_dist.config.problems import unknown_key
from seo_dist.config.scalars import STRICT_KEYS, Bool, Float, Int, Str, range_problems

Positive = Annotated[Int, Ge(1)]
NonNegative = Annotated[Int, Ge(0)]


MLFLOW_EXTRA = 'pip install "seo_dist[mlflow]"'
"""What installs the MLflow client that ``experiment.mlflow`` needs."""


def mlflow_installed() -> bool:
    """True when the ``mlflow`` package can be imported (found without importing it: that takes seconds)."""
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # ValueError: ``sys.modules["mlflow"]`` is None or has no spec
        return False


@dataclass(kw_only=True, slots=True)
class MlflowConfig:
    """The MLflow sink: metrics, params and end-of-run artifacts in an MLflow tracking server."""

    enabled: Bool = False
    """Log to MLflow too (needs ``pip install "seo_dist[mlflow]"``); ``--resume`` continues the same MLflow run."""
    tracking_uri: Str | None = None
    """Tracking server (``http://host:5000``); default ``$MLFLOW_TRACKING_URI``, else MLflow's local default."""
    experiment_name: Str | None = None
    """MLflow experiment; default ``experiment.experiment_name``."""
    close_timeout_s: Annotated[Float, Ge(0)] = 30.0
    """At the end, how long to wait for rows a down or slow server has not taken (they stay in metrics.jsonl)."""

    __pydantic_config__ = STRICT_KEYS

    def validate(self) -> list[str]:
        problems = range_problems(self, "experiment.mlflow")
        if self.enabled and not mlflow_installed():
            problems.append(f"experiment.mlflow.enabled is true but mlflow is not installed; run: {MLFLOW_EXTRA}")
        return problems


@dataclass(kw_only=True, slots=True)
class ExperimentConfig:
    """Experiment identity and tracking settings."""

    experiment_name: Str = "seo_dist"
    """Human-readable name; several runs may share it."""
    experiment_id: Str | None = None
    """Directory name under ``base_dir``; default ``exp_<unix time>``, chosen by rank 0."""
    base_dir: Str = "experiments"
    """Parent folder of all experiment directories."""
    tracking_enabled: Bool = True
    """False: no experiment directory, no sinks (checkpoints still need ``checkpoint_enabled``)."""
    checkpoint_enabled: Bool = True
    """False: never save checkpoints, whatever ``checkpoint.save_interval`` says."""
    metrics_logging_interval: Positive = 100
    """Console sink: print metrics at most every N steps (files and TensorBoard get every step)."""
    checkpoint_interval: Int | None = None
    """Accepted for compatibility and not read: the trainer saves at ``checkpoint.save_interval``."""
    code_snapshot: Bool = True
    """Copy the source that ran into ``code_snapshot/``."""
    code_snapshot_max_mb: Annotated[Float, Gt(0)] = 20.0
    """Cap on the code snapshot; files over 1 MB are always skipped."""
    code_snapshot_exclude: list[Str] = field(default_factory=list)
    """Glob patterns (e.g. ``data/private/*``) left out of the code snapshot, besides the
    files that look like secrets by name (``.env*``, ``*.pem``, ``*.key``, SSH keys, ...) or content."""
    tensorboard: Bool = True
    """Write TensorBoard event files under ``logs/tensorboard``."""
    wandb: Literal["offline", "online", "disabled"] = "offline"
    """wandb mode; files land under ``logs/wandb``."""
    wandb_project: Str = "seo_dist"
    """wandb project name."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    console: Bool = True
    """Print a metrics line at ``metrics_logging_interval``."""

    __pydantic_config__ = STRICT_KEYS

    def validate(self) -> list[str]:
        problems = range_problems(self, "experiment") + self.mlflow.validate()
        if self.experiment_id is not None and (
            not self.experiment_id
            or "/" in self.experiment_id
            or "\x00" in self.experiment_id
            or self.experiment_id in (".", "..")
        ):
            problems.append(f"experiment.experiment_id must be a plain folder name, got {self.experiment_id!r}")
        if "\x00" in self.base_dir:
            problems.append(f"experiment.base_dir must be a path without NUL characters, got {self.base_dir!r}")
        return problems


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """Which causal LM to train."""

    arch: Str = "gpt2"
    """A ``transformers`` model type (``gpt2``, ``llama``, ...) built from ``config``."""
    config: dict[str, Any] = field(default_factory=dict)
    """Fields of that architecture's Hugging Face config (``n_layer``, ``hidden_size``...)."""
    pretrained: Str | None = None
    """A local model directory to start from instead (no downloads)."""
    gradient_checkpointing: Bool = False
    """Recompute activations in backward (less memory, ~30% more compute)."""

    __pydantic_config__ = STRICT_KEYS

    def validate(self) -> list[str]:
        if self.pretrained is not None and not Path(self.pretrained).is_dir():
            return [f"model.pretrained: directory {self.pretrained!r} does not exist; give a local model folder"]
        return range_problems(self, "model") + _validate_hf_config(self.arch, self.config)


def _validate_hf_config(arch: str, fields: dict[str, Any]) -> list[str]:
    """``model.arch`` must be a transformers model type and ``model.config`` keys fields of its config."""
    from transformers import CONFIG_MAPPING

    if arch not in CONFIG_MAPPING:
        close = difflib.get_close_matches(arch, list(CONFIG_MAPPING.keys()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return [f"model.arch: unknown transformers model type {arch!r}{hint}"]
    default = CONFIG_MAPPING[arch]()
    known = set(default.to_dict()) | set(getattr(default, "attribute_map", {}))
    return [unknown_key(f"model.config.{k}", k, sorted(known)) for k in fields if k not in known]


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """Corpus and tokenizer."""

    corpus: Str | None = None
    """JSONL file of SEO records; default: the corpus shipped with seo_dist. Prepared once into a cache folder."""
    dataset: Str | None = None
    """A folder written by ``seo-dist prepare-data`` (memory-mapped token shards); replaces ``corpus``."""
    verify: Literal["sizes", "full"] = "sizes"
    """Checks of the prepared dataset at start: file sizes, or also every file's hash."""
    tokenizer: Str | None = None
    """A local tokenizer directory; default: a byte-level BPE trained from the corpus (cached)."""
    vocab_size: Annotated[Int, Gt(256), Le(1_000_000)] = 4096
    """Vocabulary size of the trained tokenizer."""
    val_fraction: Annotated[Float, Gt(0), Lt(0.5)] = 0.05
    """Share of records held out for validation."""

    __pydantic_config__ = STRICT_KEYS

    def validate(self) -> list[str]:
        problems = range_problems(self, "data")
        if self.corpus is not None and not Path(self.corpus).is_file():
            problems.append(f"data.corpus: file {self.corpus!r} does not exist")
        if self.dataset is not None and self.corpus is not None:
            problems.append("data.dataset and data.corpus are both set; keep one (a dataset is a prepared corpus)")
        if self.dataset is not None and not Path(self.dataset).is_dir():
            problems.append(
                f"data.dataset: directory {self.dataset!r} does not exist; create it with seo-dist prepare-data"
            )
        if self.tokenizer is not None and not Path(self.tokenizer).is_dir():
            problems.append(f"data.tokenizer: directory {self.tokenizer!r} does not exist")
        return problems


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """The training loop."""

    max_steps: Positive = 100
    """Optimizer steps to run."""
    seed: Int = 1234
    """Seeds initial weights, data order and dropout."""
    lr: Annotated[Float, Gt(0)] = 3e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: Annotated[Float, Ge(0), Le(1)] = 0.1
    """Cosine decay ends at ``lr * min_lr_ratio``."""
    warmup_steps: NonNegative = 10
    """Linear warmup steps before the cosine decay."""
    weight_decay: Annotated[Float, Ge(0)] = 0.01
    """AdamW weight decay (not applied to biases, norms, embeddings)."""
    grad_clip: Annotated[Float, Ge(0)] = 1.0
    """Gradient norm clipping (0 disables)."""
    micro_batch_size: Positive = 8
    """Sequences per rank per forward pass (DeepSpeed's train_micro_batch_size_per_gpu)."""
    grad_accum: Positive = 1
    """Micro-batches per optimizer step (DeepSpeed's gradient_accumulation_steps)."""
    seq_len: Positive = 128
    """Tokens per sequence (packed blocks of the corpus)."""
    log_interval: Positive = 10
    """Log train metrics every N steps."""
    eval_interval: NonNegative = 50
    """Validate every N steps (and at the end). 0 disables."""
    eval_batches: NonNegative = 20
    """Micro-batches per rank per validation (0 = the whole validation split)."""
    on_nan: Literal["stop", "skip"] = "stop"
    """A non-finite loss: stop the run, or skip that step's update."""
    progress_bar: Bool = True
    """Rank-0 progress bar with loss, tokens/s and ETA."""
    gc_interval: NonNegative = 50
    """Python's garbage collector: automatic collection off in the loop, a collection every N steps on every rank at once (0: automatic)."""

    __pydantic_config__ = STRICT_KEYS

    def validate(self) -> list[str]:
        return range_problems(self, "train")


@dataclass(kw_only=True, slots=True)
class ProfilingConfig:
    """Per-step timings, throughput, MFU and memory."""

    enabled: Bool = True
    """Step timings, throughput, MFU and memory metrics."""
    trace: Bool = False
    """Record a torch.profiler window into ``logs/traces``."""
    trace_wait: NonNegative = 5
    """torch.profiler schedule: steps skipped before the window."""
    trace_warmup: NonNegative = 2
    """Steps profiled but discarded."""
    trace_active: Positive = 3
    """Steps recorded."""
    trace_repeat: NonNegative = 1
    """Number of windows (0: repeat until the end)."""
    peak_tflops: Annotated[Float, Gt(0)] | None = None
    """Peak dense bf16 TFLOPs of one device for MFU; default from a table of known GPUs."""

    __pydantic_config__ = STRICT_KEYS

    def validate(self) -> list[str]:
        return range_problems(self, "profiling")


SLOW_PHASES = ("startup", "first_step", "load", "validation", "checkpoint_save", "final_export", "finish")
"""Training phases that may legitimately take long (``monitor.slow_phase_timeout_s`` applies to them)."""


@dataclass(kw_only=True, slots=True)
class MonitorConfig:
    """Hang detection, orphaned workers, stragglers and alerts (:mod:`seo_dist.monitor`)."""

    hang_timeout_s: Annotated[Float, Ge(0)] = 600.0
    """No progress on some rank for this long is a hang (0 disables hang detection)."""
    slow_phase_timeout_s: Annotated[Float, Ge(0)] = 3600.0
    """The same for start-up and the first step, loading, validation, checkpoint saves and the final export (0: no limit)."""
    on_hang: Literal["abort", "dump"] = "abort"
    """abort: dump stacks, record the hang, exit non-zero (torchrun --max-restarts resumes); dump: only dump and record."""
    heartbeat_interval_s: Annotated[Float, Gt(0), Le(60)] = 1.0
    """How often each rank publishes its heartbeat to the launcher's store and checks the others'."""
    startup_collective_timeout_s: Annotated[Float, Gt(0)] = 1800.0
    """Process-group timeout until the first step is done (start-up, loading a checkpoint)."""
    collective_timeout_s: Annotated[Float, Gt(0)] = 1200.0
    """Process-group timeout from the first completed step on (above ``hang_timeout_s``: the hang is dumped first)."""
    exit_when_orphaned: Bool = True
    """A worker whose launcher died stops as on SIGTERM (final checkpoint, lock released) and exits."""
    straggler_factor: Annotated[Float, Gt(1)] = 1.5
    """Alert when one rank's busy time per step is over this multiple of the median of the others' ..."""
    straggler_intervals: Positive = 5
    """... for this many log intervals in a row."""
    disk_free_alert_gb: Annotated[Float, Ge(0)] = 5.0
    """Alert when the experiment directory's disk has less free space than this (0 disables)."""
    alert_webhook: Str | None = None
    """http(s) URL that receives each alert as a JSON POST (Slack-compatible ``text`` field included)."""
    alert_command: Str | None = None
    """Command run with each alert as JSON on standard input (split like a shell, run without one)."""

    __pydantic_config__ = STRICT_KEYS

    def validate(self) -> list[str]:
        from seo_dist.monitor.alert_config import command_problem, webhook_problem

        problems = range_problems(self, "monitor")
        problems += [p for p in (webhook_problem(self.alert_webhook), command_problem(self.alert_command)) if p]
        if 0 < self.collective_timeout_s <= self.hang_timeout_s:
            problems.append(
                f"monitor.collective_timeout_s ({self.collective_timeout_s:g}) must be above monitor.hang_timeout_s "
                f"({self.hang_timeout_s:g}): a wedged collective would time out before the hang is found and dumped"
            )
        return problems

    def phase_timeout_s(self, phase: str) -> float:
        """The progress allowance of ``phase`` (0: unlimited)."""
        return self.slow_phase_timeout_s if phase in SLOW_PHASES else self.hang_timeout_s


@dataclass(kw_only=True, slots=True)
class JobConfig:
    """Everything one training job needs; each section belongs to one component."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """A standard DeepSpeed config (batch sizes are derived from ``train``)."""

    __pydantic_config__ = STRICT_KEYS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the settings that determine results.

        Identity, location, tracking/sink and checkpoint-retention settings are left out, so a
        renamed or resumed run keeps its hash; lr, model, data, seed and ZeRO stage change it.
        """
        d = self.to_dict()
        del d["experiment"]
        del d["profiling"]
        del d["monitor"]
        d["checkpoint"] = {}
        d["train"].pop("progress_bar", None)
        d["train"].pop("log_interval", None)
        canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


SECTIONS: dict[str, type] = {
    "experiment": ExperimentConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "profiling": ProfilingConfig,
    "monitor": MonitorConfig,
}
