"""A prepared dataset folder: its manifest, and opening it for training with the checks on load.

Layout::

    DIR/manifest.json          what is below, with each file's size and hash
    DIR/train_00000.bin/.idx   token shards of the training split (see :mod:`seo_dist.data.shards`)
    DIR/val_00000.bin/.idx     ... of the validation split
    DIR/tokenizer/             the tokenizer the ids come from (loadable with AutoTokenizer)

Opening checks every file's size (always) and hash (``verify="full"``), that the tokenizer the job uses is
the one the ids were made with (:func:`~seo_dist.data.tokenizer.tokenizer_hash`), and that the training
split holds at least one sample of the job's sequence length. Each failure is one line (a ``UserError``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from seo_dist.checkpoint.verify import verify_files as check_files
from seo_dist.data.shards import TokenWindows
from seo_dist.errors import UserError

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "seo_dist.dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val")

Verify = Literal["sizes", "full"]


@dataclass(frozen=True)
class PreparedDataset:
    path: Path
    manifest: dict[str, Any]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    @property
    def tokenizer_hash(self) -> str:
        return str(self.manifest["tokenizer"]["hash"])

    def tokens(self, split: str) -> int:
        return int(self.manifest["splits"][split]["tokens"])

    def windows(self, split: str, length: int) -> TokenWindows:
        shards = self.manifest["splits"][split]["shards"]
        return TokenWindows(
            [self.path / s["bin"] for s in shards], [int(s["tokens"]) for s in shards], self.dtype, length
        )


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not path.is_dir():
        raise UserError(f"data.dataset: {str(path)!r} is not a folder; prepare one with seo-dist prepare-data")
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(
            f"data.dataset: {str(path)!r} has no {MANIFEST}: not a prepared dataset (or an interrupted one); "
            "prepare it with seo-dist prepare-data"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(f"data.dataset: {file} is unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"data.dataset: {file} is not a seo_dist dataset manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise UserError(
            f"data.dataset: {file} has format version {manifest.get('version')}, this seo_dist reads "
            f"{FORMAT_VERSION}; prepare the dataset again"
        )
    return manifest


@dataclass(frozen=True)
class _Listed:
    files: dict[str, dict[str, Any]]
    hash_algorithm: str


def file_problems(path: Path, manifest: dict[str, Any], verify: Verify) -> Iterator[str]:
    """One line per file whose size (and with ``full`` hash) differs from the manifest, or that is missing
    (the checkpoint verifier's per-file check, over the dataset manifest's file list)."""
    listed = _Listed(manifest["files"], manifest["hash_algorithm"])
    problems, _ = check_files(path, listed, list(listed.files), "full" if verify == "full" else "quick")
    for problem in problems:
        file = path / problem.path
        if problem.kind == "size":
            yield f"{file} has {file.stat().st_size} bytes, the manifest says {listed.files[problem.path]['size']}"
        elif problem.kind == "hash":
            yield f"{file} is corrupt ({problem.detail})"
        else:  # missing, unreadable (...)
            yield f"{file} is {problem.detail}"


def verify_files(path: Path, manifest: dict[str, Any], verify: Verify) -> None:
    """Every file the manifest lists has its size (and with ``full`` its hash); raises naming the first bad one."""
    for problem in file_problems(path, manifest, verify):
        raise UserError(f"data.dataset: {problem}; prepare the dataset again")


def open_dataset(
    path: str | Path, *, verify: Verify = "sizes", tokenizer_hash: str | None = None, seq_len: int | None = None
) -> PreparedDataset:
    """Open a prepared folder after the checks on load (see the module docstring)."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest, verify)
    ds = PreparedDataset(path, manifest)
    if tokenizer_hash is not None and tokenizer_hash != ds.tokenizer_hash:
        raise UserError(
            f"data.dataset: {path} was tokenized with tokenizer {ds.tokenizer_hash[:16]}, the job's tokenizer "
            f"is {tokenizer_hash[:16]}; use the dataset's tokenizer ({ds.tokenizer_dir}) or prepare the "
            "data again with --tokenizer"
        )
    if seq_len is not None:
        longest = max((int(s["tokens"]) for s in manifest["splits"]["train"]["shards"]), default=0)
        if longest < seq_len:
            raise UserError(
                f"data.dataset: {path} has {ds.tokens('train')} training tokens, no shard holds one sample of "
                f"train.seq_len={seq_len}; lower train.seq_len or prepare more data"
            )
    return ds
