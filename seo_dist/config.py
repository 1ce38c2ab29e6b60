"""Job configuration: one YAML file, ``--set dotted.key=value`` overrides, strict validation.

Each component owns a small dataclass; :class:`JobConfig` only groups them. Loading collects
every problem (unknown keys with a suggestion, wrong types, out-of-range values) and raises a
single :class:`~seo_dist.errors.ConfigError` whose message is one line.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seo_dist.errors import ConfigError


@dataclass(kw_only=True)
class ExperimentConfig:
    """Experiment identity and tracking settings (the brief's ``ExperimentConfig``)."""

    experiment_name: str = "seo_dist"
    """Human-readable name; several runs may share it."""
    experiment_id: str | None = None
    """Directory name under ``base_dir``; default ``exp_<unix time>``, chosen by rank 0."""
    base_dir: str = "experiments"
    """Parent folder of all experiment directories."""
    tracking_enabled: bool = True
    """False: no experiment directory, no sinks (checkpoints still need ``checkpoint_enabled``)."""
    checkpoint_enabled: bool = True
    """False: never save checkpoints, whatever ``checkpoint.save_interval`` says."""
    metrics_logging_interval: int = 100
    """Console sink: print metrics at most every N steps (files and TensorBoard get every step)."""
    checkpoint_interval: int | None = None
    """Brief's name for ``checkpoint.save_interval`` when the tracker is used on its own."""
    code_snapshot: bool = True
    """Copy the source that ran into ``code_snapshot/``."""
    code_snapshot_max_mb: float = 20.0
    """Cap on the code snapshot; files over 1 MB are always skipped."""
    tensorboard: bool = True
    """Write TensorBoard event files under ``logs/tensorboard``."""
    wandb: Literal["offline", "online", "disabled"] = "offline"
    """wandb mode; files land under ``logs/wandb``."""
    wandb_project: str = "seo_dist"
    """wandb project name."""
    console: bool = True
    """Print a metrics line at ``metrics_logging_interval``."""

    def validate(self) -> list[str]:
        problems = []
        if self.metrics_logging_interval < 1:
            problems.append(f"experiment.metrics_logging_interval must be >= 1, got {self.metrics_logging_interval}")
        if self.experiment_id is not None and (
            not self.experiment_id
            or "/" in self.experiment_id
            or "\x00" in self.experiment_id
            or self.experiment_id in (".", "..")
        ):
            problems.append(f"experiment.experiment_id must be a plain folder name, got {self.experiment_id!r}")
        if "\x00" in self.base_dir:
            problems.append(f"experiment.base_dir must be a path without NUL characters, got {self.base_dir!r}")
        if self.code_snapshot_max_mb <= 0:
            problems.append(f"experiment.code_snapshot_max_mb must be > 0, got {self.code_snapshot_max_mb}")
        return problems


@dataclass(kw_only=True)
class ModelConfig:
    """Which causal LM to train."""

    arch: str = "gpt2"
    """A ``transformers`` model type (``gpt2``, ``llama``, ...) built from ``config``."""
    config: dict[str, Any] = field(default_factory=dict)
    """Fields of that architecture's Hugging Face config (``n_layer``, ``hidden_size``...)."""
    pretrained: str | None = None
    """A local model directory to start from instead (no downloads)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (less memory, ~30% more compute)."""

    def validate(self) -> list[str]:
        if self.pretrained is not None and not Path(self.pretrained).is_dir():
            return [f"model.pretrained: directory {self.pretrained!r} does not exist; give a local model folder"]
        return _validate_hf_config(self.arch, self.config)


def _validate_hf_config(arch: str, fields: dict[str, Any]) -> list[str]:
    """``model.arch`` must be a transformers model type and ``model.config`` keys fields of its config."""
    from transformers import CONFIG_MAPPING

    if arch not in CONFIG_MAPPING:
        close = difflib.get_close_matches(arch, list(CONFIG_MAPPING.keys()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return [f"model.arch: unknown transformers model type {arch!r}{hint}"]
    default = CONFIG_MAPPING[arch]()
    known = set(default.to_dict()) | set(getattr(default, "attribute_map", {}))
    return [str(_unknown_key(f"model.config.{k}", k, sorted(known))) for k in fields if k not in known]


@dataclass(kw_only=True)
class DataConfig:
    """Corpus and tokenizer."""

    corpus: str | None = None
    """JSONL file of SEO records; default: the corpus shipped with seo_dist."""
    tokenizer: str | None = None
    """A local tokenizer directory; default: a byte-level BPE trained from the corpus (cached)."""
    vocab_size: int = 4096
    """Vocabulary size of the trained tokenizer."""
    val_fraction: float = 0.05
    """Share of records held out for validation."""

    def validate(self) -> list[str]:
        problems = []
        if self.corpus is not None and not Path(self.corpus).is_file():
            problems.append(f"data.corpus: file {self.corpus!r} does not exist")
        if self.tokenizer is not None and not Path(self.tokenizer).is_dir():
            problems.append(f"data.tokenizer: directory {self.tokenizer!r} does not exist")
        if not 256 < self.vocab_size <= 1_000_000:
            problems.append(f"data.vocab_size must be in (256, 1000000], got {self.vocab_size}")
        if not 0.0 < self.val_fraction < 0.5:
            problems.append(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        return problems


@dataclass(kw_only=True)
class TrainConfig:
    """The training loop."""

    max_steps: int = 100
    """Optimizer steps to run."""
    seed: int = 1234
    """Seeds initial weights, data order and dropout."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at ``lr * min_lr_ratio``."""
    warmup_steps: int = 10
    """Linear warmup steps before the cosine decay."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases, norms, embeddings)."""
    grad_clip: float = 1.0
    """Gradient norm clipping (0 disables)."""
    micro_batch_size: int = 8
    """Sequences per rank per forward pass (DeepSpeed's train_micro_batch_size_per_gpu)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (DeepSpeed's gradient_accumulation_steps)."""
    seq_len: int = 128
    """Tokens per sequence (packed blocks of the corpus)."""
    log_interval: int = 10
    """Log train metrics every N steps."""
    eval_interval: int = 50
    """Validate every N steps (and at the end). 0 disables."""
    eval_batches: int = 20
    """Micro-batches per rank per validation (0 = the whole validation split)."""
    on_nan: Literal["stop", "skip"] = "stop"
    """A non-finite loss: stop the run, or skip that step's update."""
    progress_bar: bool = True
    """Rank-0 progress bar with loss, tokens/s and ETA."""

    def validate(self) -> list[str]:
        problems = []
        for name in ("max_steps", "micro_batch_size", "grad_accum", "seq_len", "log_interval"):
            value = getattr(self, name)
            if value < 1:
                problems.append(f"train.{name} must be >= 1, got {value}")
        for name in ("eval_interval", "eval_batches", "warmup_steps"):
            value = getattr(self, name)
            if value < 0:
                problems.append(f"train.{name} must be >= 0, got {value}")
        if not self.lr > 0:
            problems.append(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("train.weight_decay and train.grad_clip must be >= 0")
        return problems


@dataclass(kw_only=True)
class CheckpointConfig:
    """When to save, what to keep, how to load."""

    save_interval: int = 0
    """Save every N steps (0: only the final save, when ``save_final``)."""
    save_final: bool = True
    """Save (synchronously) when training ends or is interrupted."""
    async_save: bool = True
    """Stage to host memory, write/hash/commit in the background."""
    keep_last: int = 3
    """Newest checkpoints always kept (>= 2)."""
    keep_best: int = 1
    """Best checkpoints by ``best_metric`` always kept."""
    best_metric: str = "val/loss"
    """Metric that ranks checkpoints for `keep_best` and `load best`."""
    maximize: bool = False
    """True when a larger `best_metric` is better."""
    pinned: list[int] = field(default_factory=list)
    """Steps never deleted by retention."""
    verify_on_load: Literal["full", "quick", "off"] = "full"
    """Before loading: re-hash every file, check sizes only, or trust the files."""
    hash_algorithm: Literal["xxh3_128", "blake3", "sha256"] = "xxh3_128"
    """Content hash written into each manifest (computed while writing)."""
    on_error: Literal["raise", "warn"] = "raise"
    """A failed background save: stop training, or log an error event and go on."""
    export_final: bool = True
    """After a completed run, consolidate the final checkpoint into `artifacts/final_model` (Hugging Face folder)."""
    export_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weight dtype of the exported model."""

    def validate(self) -> list[str]:
        problems = []
        if self.save_interval < 0:
            problems.append(f"checkpoint.save_interval must be >= 0, got {self.save_interval}")
        if self.keep_last < 2:
            problems.append(
                f"checkpoint.keep_last must be >= 2 (a crash mid-save must leave one), got {self.keep_last}"
            )
        if self.keep_best < 0:
            problems.append(f"checkpoint.keep_best must be >= 0, got {self.keep_best}")
        if "/" not in self.best_metric:
            problems.append(
                f"checkpoint.best_metric must be a 'group/name' metric such as 'val/loss', got {self.best_metric!r}"
            )
        return problems


@dataclass(kw_only=True)
class ProfilingConfig:
    """Per-step timings, throughput, MFU and memory."""

    enabled: bool = True
    """Step timings, throughput, MFU and memory metrics."""
    trace: bool = False
    """Record a torch.profiler window into ``logs/traces``."""
    trace_wait: int = 5
    """torch.profiler schedule: steps skipped before the window."""
    trace_warmup: int = 2
    """Steps profiled but discarded."""
    trace_active: int = 3
    """Steps recorded."""
    trace_repeat: int = 1
    """Number of windows (0: repeat until the end)."""
    peak_tflops: float | None = None
    """Peak dense bf16 TFLOPs of one device for MFU; default from a table of known GPUs."""

    def validate(self) -> list[str]:
        problems = []
        for name in ("trace_wait", "trace_warmup", "trace_active", "trace_repeat"):
            if getattr(self, name) < (1 if name == "trace_active" else 0):
                problems.append(f"profiling.{name} is out of range: {getattr(self, name)}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            problems.append(f"profiling.peak_tflops must be > 0, got {self.peak_tflops}")
        return problems


@dataclass(kw_only=True)
class JobConfig:
    """Everything one training job needs; each section belongs to one component."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """A standard DeepSpeed config (batch sizes are derived from ``train``)."""

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
}


# --------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
    elif origin is list or tp is list:
        if isinstance(value, list):
            (item_tp,) = typing.get_args(tp) or (Any,)
            return [_coerce(v, item_tp, f"{key}[{i}]") if item_tp is not Any else v for i, v in enumerate(value)]
    elif tp is Any:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(key: str, name: str, choices: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, choices, n=1)
    prefix = key[: len(key) - len(name)]
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(choices))})"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _build_section(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}"
        if name not in names:
            problems.append(str(_unknown_key(key, str(name), names)))
            continue
        try:
            kwargs[name] = _coerce(value, hints[name], key)
        except ConfigError as e:
            problems.append(str(e))
    return cls(**kwargs)


def _non_string_keys(node: Any, prefix: str = "") -> list[str]:
    """YAML allows ``1: x`` or ``true: x``; every config key must be a string (hashing, JSON and DeepSpeed need it)."""
    problems = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{prefix}.{key}" if prefix else str(key)
            if not isinstance(key, str):
                problems.append(f"{where!r}: config keys must be strings, got {key!r}; quote it in the YAML")
            else:
                problems.extend(_non_string_keys(value, where))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            problems.extend(_non_string_keys(value, f"{prefix}[{i}]"))
    return problems


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """``raw['a']['b'] = value`` for ``dotted='a.b'``, creating mappings on the way."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set {dotted}: empty key part; write --set section.key=value")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr=1e-3'`` -> ``('train.lr', 0.001)``; the value is read as a YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    key, _, value_text = text.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    if isinstance(value, str) and value.lower() in ("none", "null", "~"):
        value = None
    return key, value


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass --config path/to/job.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {str(path)!r}{where}: {problem}; fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r}: top level must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def _load_deepspeed_section(value: Any, base: Path) -> dict[str, Any]:
    """The ``deepspeed`` section: an inline mapping, or a path to a JSON file (relative to the YAML)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return copy.deepcopy(value)
    if isinstance(value, str):
        path = Path(value)
        candidates = [path] if path.is_absolute() else [base / path, Path.cwd() / path]
        for cand in candidates:
            if cand.is_file():
                try:
                    data = json.loads(cand.read_text())
                except json.JSONDecodeError as e:
                    raise ConfigError(
                        f"deepspeed config {str(cand)!r} line {e.lineno}: {e.msg}; fix the JSON"
                    ) from None
                if not isinstance(data, dict):
                    raise ConfigError(f"deepspeed config {str(cand)!r} must hold a JSON object")
                return data
        raise ConfigError(
            f"deepspeed: file {value!r} does not exist (looked next to the config and in the working directory)"
        )
    raise ConfigError(f"deepspeed: expected a mapping or a path to a JSON file, got {value!r}")


def build_config(
    raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), base: Path | None = None
) -> JobConfig:
    """A validated :class:`JobConfig` from a raw mapping plus ``--set`` overrides."""
    raw = copy.deepcopy(raw)
    raw["deepspeed"] = _load_deepspeed_section(raw.get("deepspeed"), base or Path.cwd())
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(raw, key, value)
    if not isinstance(raw["deepspeed"], dict):  # --set deepspeed=FILE (or a bad value)
        raw["deepspeed"] = _load_deepspeed_section(raw["deepspeed"], base or Path.cwd())

    problems: list[str] = _non_string_keys(raw)
    if problems:
        raise ConfigError("; ".join(problems))
    known = [*SECTIONS, "deepspeed"]
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            problems.append(str(_unknown_key(str(name), str(name), known)))
        elif name != "deepspeed":
            sections[name] = _build_section(SECTIONS[name], value, name, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    job = JobConfig(**sections, deepspeed=raw["deepspeed"])
    for name in SECTIONS:
        problems.extend(getattr(job, name).validate())
    problems.extend(validate_deepspeed(job.deepspeed))
    if problems:
        raise ConfigError("; ".join(problems))
    return job


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Read a job YAML file and apply ``--set`` overrides; raises :class:`ConfigError` on any problem."""
    path = Path(path)
    try:
        return build_config(_load_yaml(path), overrides, base=path.parent)
    except ConfigError as e:
        msg = str(e)
        if str(path) not in msg:
            msg = f"{msg} (in {path})"
        raise ConfigError(msg) from None


def save_config(job: JobConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(job.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------- deepspeed section

# Batch sizes live in ``train``; these DeepSpeed keys are derived from it.
DS_MICRO = "train_micro_batch_size_per_gpu"
DS_ACCUM = "gradient_accumulation_steps"
DS_GLOBAL = "train_batch_size"


def validate_deepspeed(ds: dict[str, Any]) -> list[str]:
    """Static checks of the DeepSpeed section that DeepSpeed itself would only report deep in a traceback."""
    problems = []
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        return [f"deepspeed.zero_optimization: expected a mapping, got {zero!r}"]
    stage = zero.get("stage", 0)
    if not isinstance(stage, int) or isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        problems.append(f"deepspeed.zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    else:
        problems.extend(_validate_with_deepspeed_models(ds))
    for key in (DS_MICRO, DS_ACCUM, DS_GLOBAL):
        value = ds.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"deepspeed.{key} must be a positive integer, got {value!r}")
    for key in ("fp16", "bf16"):
        section = ds.get(key, {})
        if not isinstance(section, dict) or not isinstance(section.get("enabled", False), bool):
            problems.append(f"deepspeed.{key} must be a mapping with enabled: true|false, got {section!r}")
    return problems


def _validate_with_deepspeed_models(ds: dict[str, Any]) -> list[str]:
    """Let DeepSpeed's own pydantic models reject unknown or mistyped keys in the sections they own."""
    try:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
        from pydantic import ValidationError
    except Exception:  # DeepSpeed not importable: its own initialize() will complain later
        return []
    problems = []
    try:
        DeepSpeedZeroConfig(**ds.get("zero_optimization", {}))
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"deepspeed.zero_optimization.{loc}: {err['msg']}")
    unknown = sorted(set(ds) - known_deepspeed_keys())
    for key in unknown:
        problems.append(str(_unknown_key(f"deepspeed.{key}", key, sorted(known_deepspeed_keys()))))
    return problems


def known_deepspeed_keys() -> set[str]:
    """Top-level keys DeepSpeed understands, read from its own constants modules."""
    import importlib

    keys: set[str] = set()
    for mod_name in (
        "deepspeed.runtime.constants",
        "deepspeed.runtime.zero.constants",
        "deepspeed.runtime.zero.config",
        "deepspeed.runtime.config",
        "deepspeed.runtime.activation_checkpointing.config",
        "deepspeed.runtime.swap_tensor.constants",
        "deepspeed.profiling.constants",
        "deepspeed.autotuning.constants",
        "deepspeed.monitor.constants",
        "deepspeed.runtime.data_pipeline.constants",
        "deepspeed.elasticity.constants",
        "deepspeed.nebula.constants",
        "deepspeed.compression.constants",
        "deepspeed.checkpoint.constants",
    ):
        try:
            mod = importlib.import_module(mod_name)
        except Exception:
            continue
        keys.update(v for k, v in vars(mod).items() if k.isupper() and isinstance(v, str) and v.isidentifier())
    keys.update(
        {
            "wandb",
            "tensorboard",
            "csv_monitor",
            "comet",
            "comms_logger",
            "flops_profiler",
            "compile",
            "checkpoint",
            "data_efficiency",
            "weight_quantization",
            "hybrid_engine",
            "timers",
            "zero_allow_untested_optimizer",
            "zero_force_ds_cpu_optimizer",
            "torch_autocast",
            "amp",
            "aio",
            "nebula",
            "pipeline",
            "sparse_attention",
        }
    )
    return keys


def resolve_deepspeed(job: JobConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config to hand to ``deepspeed.initialize``: batch sizes derived from ``train``.

    A batch size written in the DeepSpeed section must agree with ``train``; a mismatch is an error.
    """
    ds = copy.deepcopy(job.deepspeed)
    t = job.train
    expected = {
        DS_MICRO: t.micro_batch_size,
        DS_ACCUM: t.grad_accum,
        DS_GLOBAL: t.micro_batch_size * t.grad_accum * world_size,
    }
    for key, want in expected.items():
        have = ds.get(key)
        if have is not None and have != want:
            raise ConfigError(
                f"deepspeed.{key}={have} does not match train (micro_batch_size={t.micro_batch_size}, "
                f"grad_accum={t.grad_accum}, world size {world_size} -> {want}); remove it from the deepspeed "
                f"section (it is derived) or make them agree"
            )
        ds[key] = want
    if t.grad_clip > 0:
        ds.setdefault("gradient_clipping", t.grad_clip)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def zero_stage(job: JobConfig) -> int:
    return int(job.deepspeed.get("zero_optimization", {}).get("stage", 0))


# --------------------------------------------------------------------------- reference


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (read from the source, so the README can quote it)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs


def reference_markdown() -> str:
    """A Markdown table of every config key with its type, default and meaning."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, cls in SECTIONS.items():
        docs = _field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
            type_name = _type_name(hints[f.name]).replace(" | ", " / ")
            doc = docs.get(f.name, "").replace("``", "`")
            rows.append(f"| `{section}.{f.name}` | {type_name} | `{json.dumps(default)}` | {doc} |")
    rows.append(
        "| `deepspeed` | mapping or path | `{}` | A standard DeepSpeed config, inline or a JSON file "
        "(relative to the YAML). Batch sizes are derived from `train`; `--set deepspeed.a.b=v` reaches inside. |"
    )
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_markdown())
