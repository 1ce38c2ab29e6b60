"""The files an export needs besides the weights, made once when a run starts and saved into every checkpoint.

A checkpoint that carries them (``hf_config.json`` and ``tokenizer/``, listed and hashed in its manifest like
every other file) exports by reading and copying files: no torch, no transformers, no corpus. They are kept as
bytes (a config and a tokenizer: well under a megabyte), so each save writes them without touching the
tokenizer or the model again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from seo_dist.export.hf_files import HF_CONFIG_FILE, TOKENIZER_FILES
from seo_dist.tracking.layout import TOKENIZER_ARTIFACT


def export_files(hf_config: Any, tokenizer: Any) -> dict[str, bytes]:
    """``{relative path: bytes}`` for a checkpoint folder: the model's Hugging Face config as ``hf_config.json``
    (``PretrainedConfig.to_json_string``) and the tokenizer's files (``save_pretrained``) under ``tokenizer/``."""
    files = {HF_CONFIG_FILE: hf_config.to_json_string(use_diff=False).encode()}
    with tempfile.TemporaryDirectory(prefix="seo_dist_export_files_") as tmp:
        tokenizer.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            path = Path(tmp) / name
            if path.is_file():
                files[f"{TOKENIZER_ARTIFACT}/{name}"] = path.read_bytes()
    return files
