"""Loading a job: one YAML file, ``--set dotted.key=value`` overrides, strict validation.

Loading collects every problem (unknown keys with a suggestion, wrong types, out-of-range values,
then the checks each section and the DeepSpeed section make) and raises a single
:class:`~seo_dist.errors.ConfigError` whose message is one line.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from seo_dist.config.checkpoint import RECORDED_METRICS
from seo_dist.config.problems import describe_errors
from seo_dist.config.sections import JobConfig
from seo_dist.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import TypeAdapter


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


@functools.cache
def _job_schema() -> TypeAdapter[JobConfig]:
    """pydantic's validator for :class:`JobConfig` (built once: building it takes milliseconds)."""
    from pydantic import TypeAdapter

    return TypeAdapter(JobConfig)


def _validate_types(raw: dict[str, Any]) -> JobConfig:
    """Types, ranges and unknown keys of every section, all problems in one :class:`ConfigError`."""
    from pydantic import ValidationError

    sections = {name: {} if value is None else value for name, value in raw.items()}  # ``train:`` with no keys
    try:
        return _job_schema().validate_python(sections)
    except ValidationError as e:
        raise ConfigError("; ".join(describe_errors(JobConfig, e))) from None


def job_problems(job: JobConfig) -> list[str]:
    """What a type cannot express: files, names, ``model.config`` keys, the DeepSpeed section, the best metric.

    :func:`build_config` runs it on every loaded config; the trainer runs it on a :class:`JobConfig` built in Python.
    """
    from seo_dist.engine.ds_config import validate_deepspeed

    problems = [
        p
        for section in (job.experiment, job.model, job.data, job.train, job.profiling, job.monitor)
        for p in section.validate()
    ]
    problems.extend(validate_deepspeed(job.deepspeed))
    best = job.checkpoint.best_metric
    if best not in RECORDED_METRICS:
        choices = " or ".join(repr(m) for m in RECORDED_METRICS)
        problems.append(
            f"checkpoint.best_metric: the trainer never records {best!r} with a checkpoint, so keep_best would "
            f"keep nothing useful; use {choices}"
        )
    return problems


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
    problems = _non_string_keys(raw)
    if problems:
        raise ConfigError("; ".join(problems))
    job = _validate_types(raw)
    problems = job_problems(job)
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
