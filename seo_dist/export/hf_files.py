"""The non-weight files of a Hugging Face model folder: config.json, generation_config.json, tokenizer.

Where they come from, first match wins:

- model config: ``hf_config.json`` (what seo_dist's trainer saves into each checkpoint) or
  ``config.json`` in the checkpoint folder; else rebuilt the way the trainer built it from the job config
  recorded in the checkpoint's manifest, or from the experiment's ``config.yaml``.
- tokenizer: an explicit directory; tokenizer files in the checkpoint folder or its ``tokenizer/`` (saved
  there by the trainer); the experiment's ``artifacts/tokenizer/``; the job config's ``data.tokenizer``;
  else rebuilt from the job config (seo_dist's tokenizer training is deterministic and cached).

Only the rebuild paths (checkpoints saved before the trainer kept these files) import transformers and
reload the corpus; the usual path reads and copies files.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seo_dist.checkpoint.errors import ManifestError
from seo_dist.checkpoint.layout import MANIFEST
from seo_dist.checkpoint.manifest import read_manifest
from seo_dist.errors import UserError
from seo_dist.export.dtypes import DType
from seo_dist.tracking.layout import ARTIFACTS_DIR, CHECKPOINTS_DIR, CONFIG_YAML, TOKENIZER_ARTIFACT

HF_CONFIG_FILE = "hf_config.json"
"""The model's Hugging Face config, as ``model.config.to_json_file`` writes it, saved into each checkpoint."""
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
"""What transformers' tokenizers save; copied by name so a model directory used as tokenizer brings no weights."""
REBUILT = "rebuilt from"
"""How the origin of a rebuilt config or tokenizer begins (the slow path)."""
GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def experiment_dir(checkpoint: Path) -> Path | None:
    """``<experiment>`` for ``<experiment>/checkpoints/step_X``, else None."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == CHECKPOINTS_DIR else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JSON model config ({e})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise UserError(f"{path}: not a Hugging Face model config (no 'model_type')")
    return data


@dataclass(frozen=True, slots=True)
class JobSections:
    """The parts of a saved job config that define the model and its tokenizer."""

    model: Any
    data: Any
    train: Any
    origin: str


def load_job_sections(checkpoint: Path) -> JobSections | None:
    """The job config that trained ``checkpoint``: from its manifest (the checkpoint core records the resolved
    config there), else the experiment's ``config.yaml``; None when neither exists.

    Only the model, data and train sections are rebuilt, directly from their dataclasses: the full
    ``build_config`` validation would import DeepSpeed (seconds and hundreds of MB) for sections not needed here.
    """
    raw, origin = None, ""
    try:
        raw, origin = read_manifest(checkpoint).config, f"{checkpoint / MANIFEST} (job config)"
    except ManifestError:
        pass
    experiment = experiment_dir(checkpoint)
    if not isinstance(raw, dict) and experiment is not None and (experiment / CONFIG_YAML).is_file():
        import yaml

        origin = str(experiment / CONFIG_YAML)
        try:
            raw = yaml.safe_load((experiment / CONFIG_YAML).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"{origin}: unreadable ({e})") from None
    if not isinstance(raw, dict):
        return None
    from seo_dist.config import DataConfig, ModelConfig, TrainConfig

    try:
        return JobSections(
            ModelConfig(**raw.get("model") or {}),
            DataConfig(**raw.get("data") or {}),
            TrainConfig(**raw.get("train") or {}),
            origin,
        )
    except TypeError as e:
        raise UserError(f"{origin}: the job config does not match this seo_dist version ({e})") from None


def _rebuild_tokenizer(job: JobSections) -> Any:
    from seo_dist.data.cache import job_tokenizer

    return job_tokenizer(job.data)


def _rebuild_hf_config(job: JobSections) -> dict[str, Any]:
    """The Hugging Face config as the trainer built it from the job config (imports transformers)."""
    if job.model.pretrained is not None:
        return _read_json(Path(job.model.pretrained) / CONFIG_NAME)
    from seo_dist.model import build_hf_config

    return build_hf_config(job.model, _rebuild_tokenizer(job), job.train.seq_len).to_dict()


def find_hf_config(checkpoint: Path) -> tuple[dict[str, Any], str]:
    """The model's Hugging Face config and a description of where it came from."""
    for name in (HF_CONFIG_FILE, CONFIG_NAME):
        if (checkpoint / name).is_file():
            return _read_json(checkpoint / name), str(checkpoint / name)
    job = load_job_sections(checkpoint)
    if job is not None:
        return _rebuild_hf_config(job), f"{REBUILT} {job.origin}"
    raise UserError(
        f"no model config for {checkpoint}: expected {HF_CONFIG_FILE} in the checkpoint folder, a job "
        f"config in its {MANIFEST}, or {CONFIG_YAML} in its experiment directory"
    )


def model_config(hf_config: dict[str, Any], dtype: DType) -> dict[str, Any]:
    """``config.json``: the training config with the dtype of the exported weights."""
    out = dict(hf_config)
    out.pop("torch_dtype", None)
    out["dtype"] = dtype.torch_name
    return out


def generation_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """``generation_config.json`` as transformers derives it from a model config (special token ids)."""
    out: dict[str, Any] = {"_from_model_config": True}
    out.update({k: hf_config[k] for k in GENERATION_KEYS if hf_config.get(k) is not None})
    if "transformers_version" in hf_config:
        out["transformers_version"] = hf_config["transformers_version"]
    return out


def ties_embeddings(hf_config: dict[str, Any]) -> bool:
    """Whether loading re-ties shared weights, so that an alias may be left out (transformers' default: yes)."""
    return bool(hf_config.get("tie_word_embeddings", True))


@dataclass(frozen=True, slots=True)
class TokenizerSource:
    files: list[Path]
    origin: str


def tokenizer_files(folder: Path) -> list[Path]:
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]


def _candidates(checkpoint: Path, explicit: Path | None) -> Iterator[tuple[Path, str]]:
    if explicit is not None:
        yield explicit, "--tokenizer"
    yield checkpoint, "checkpoint folder"
    yield checkpoint / TOKENIZER_ARTIFACT, "checkpoint folder"
    experiment = experiment_dir(checkpoint)
    if experiment is not None:
        yield experiment / ARTIFACTS_DIR / TOKENIZER_ARTIFACT, "experiment artifacts"


@contextmanager
def find_tokenizer(checkpoint: Path, explicit: Path | None = None) -> Iterator[TokenizerSource | None]:
    """The tokenizer files to copy, or None when there is no tokenizer anywhere (the caller warns)."""
    if explicit is not None and not tokenizer_files(explicit):
        raise UserError(f"--tokenizer {explicit}: no tokenizer files there (expected e.g. tokenizer.json)")
    for folder, origin in _candidates(checkpoint, explicit):
        files = tokenizer_files(folder)
        if files:
            yield TokenizerSource(files, f"{origin}: {folder}")
            return
    job = load_job_sections(checkpoint)
    if job is None:
        yield None
        return
    if job.data.tokenizer is not None and tokenizer_files(Path(job.data.tokenizer)):
        yield TokenizerSource(tokenizer_files(Path(job.data.tokenizer)), f"data.tokenizer: {job.data.tokenizer}")
        return
    with tempfile.TemporaryDirectory(prefix="seo_dist_tokenizer_") as tmp:
        _rebuild_tokenizer(job).save_pretrained(tmp)
        yield TokenizerSource(tokenizer_files(Path(tmp)), f"{REBUILT} {job.origin}")
