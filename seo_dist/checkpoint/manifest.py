"""``manifest.json``: the list of a checkpoint's files with size and hash, plus what produced it.

Its presence is the commit marker: rank 0 writes it only after every rank has written and fsynced
its files, and a folder without one is never loaded. It carries a sha256 of its own canonical JSON,
so an edited or damaged manifest is caught like a damaged shard. That checksum guards against accidents only:
with a signing key (:mod:`.signing`) the manifest also carries an HMAC that nobody without the key can recompute.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seo_dist.checkpoint.errors import ManifestError, SignedManifestError
from seo_dist.checkpoint.hashing import ALGORITHMS, FileRecord
from seo_dist.checkpoint.layout import MANIFEST
from seo_dist.checkpoint.signing import SIGNATURE_FIELD, SignatureError, SigningKey, check_signature, sign

FORMAT = "seo_dist.checkpoint/1"


@dataclass(frozen=True, slots=True)
class ConfigStamp:
    """The job's config hash and resolved config: written into each manifest, compared on load."""

    config_hash: str | None = None
    config: dict[str, Any] | None = None


@dataclass(kw_only=True)
class Manifest:
    step: int
    epoch: int = 0
    hash_algorithm: str
    files: dict[str, dict[str, Any]]
    """relative path -> {"size": int, "hash": str}"""
    world_size: int = 1
    zero_stage: int = 0
    engine: str = "deepspeed"
    """Who wrote the model/optimizer files: ``deepspeed`` or ``torch`` (a plain nn.Module)."""
    metrics: dict[str, float | None] = field(default_factory=dict)
    config_hash: str | None = None
    config: dict[str, Any] | None = None
    """The resolved job config, so that a resume can name the keys that changed."""
    versions: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    format: str = FORMAT
    signed_by: str | None = None
    """The key id of the signature that was checked when this manifest was read (None: not checked or unsigned)."""

    @property
    def total_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "step": self.step,
            "epoch": self.epoch,
            "created": self.created,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "hash_algorithm": self.hash_algorithm,
            "world_size": self.world_size,
            "zero_stage": self.zero_stage,
            "engine": self.engine,
            "metrics": self.metrics,
            "config_hash": self.config_hash,
            "total_bytes": self.total_bytes,
            "files": {k: self.files[k] for k in sorted(self.files)},
            "versions": self.versions,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> Manifest:
        """Parse and check a manifest; :class:`ManifestError` naming the first bad field."""
        if not isinstance(d, dict):
            raise ManifestError(f"{where}: expected a JSON object")
        if d.get("format") != FORMAT:
            raise ManifestError(f"{where}: unknown format {d.get('format')!r} (expected {FORMAT!r})")
        if d.get("hash_algorithm") not in ALGORITHMS:
            raise ManifestError(f"{where}: unknown hash_algorithm {d.get('hash_algorithm')!r}")
        for key in ("step", "epoch", "world_size", "zero_stage"):
            if not isinstance(d.get(key), int) or isinstance(d.get(key), bool) or d[key] < 0:
                raise ManifestError(f"{where}: field {key!r} must be a non-negative integer, got {d.get(key)!r}")
        files = d.get("files")
        if not isinstance(files, dict) or not files:
            raise ManifestError(f"{where}: 'files' must be a non-empty object")
        for name, rec in files.items():
            if (
                not isinstance(rec, dict)
                or not isinstance(rec.get("size"), int)
                or not isinstance(rec.get("hash"), str)
                or not _is_safe_relpath(name)
            ):
                raise ManifestError(f"{where}: bad entry for file {name!r}")
        return cls(
            step=d["step"],
            epoch=d["epoch"],
            hash_algorithm=d["hash_algorithm"],
            files=files,
            world_size=d["world_size"],
            zero_stage=d["zero_stage"],
            engine=str(d.get("engine", "deepspeed")),
            metrics=dict(d.get("metrics") or {}),
            config_hash=d.get("config_hash"),
            config=d.get("config"),
            versions=dict(d.get("versions") or {}),
            created=float(d.get("created", 0.0)),
            format=d["format"],
        )


def _checksum(d: dict[str, Any]) -> str:
    body = {k: v for k, v in d.items() if k != "checksum"}  # the signature, when there is one, is covered
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _is_safe_relpath(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts) and name != MANIFEST


def records_to_files(records: list[FileRecord]) -> dict[str, dict[str, Any]]:
    """Manifest ``files`` from the records gathered from all ranks; two ranks writing one path is a bug."""
    files: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.path in files:
            raise ValueError(f"two writers produced {rec.path!r} in one checkpoint")
        files[rec.path] = rec.to_dict()
    return files


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | None]:
    """JSON-safe numeric metrics: tensors and numpy scalars become floats, non-finite values None,
    anything non-numeric is dropped."""
    out: dict[str, float | None] = {}
    for key, value in (metrics or {}).items():
        if hasattr(value, "item") and callable(value.item):
            try:
                value = value.item()
            except (ValueError, RuntimeError):  # a tensor with more than one element
                continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        value = float(value)
        out[str(key)] = value if math.isfinite(value) else None
    return out


def collect_versions() -> dict[str, str]:
    """Versions of what wrote the checkpoint; DeepSpeed/transformers only when already imported (no import cost)."""
    from seo_dist import __version__

    versions = {"seo_dist": __version__, "python": platform.python_version()}
    for name in ("torch", "deepspeed", "transformers", "numpy"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "__version__"):
            versions[name] = str(mod.__version__)
    return versions


def write_manifest(folder: Path, manifest: Manifest, key: SigningKey | None = None) -> None:
    """Write and fsync ``manifest.json`` into ``folder`` (a staging folder: the rename that follows is the commit);
    signed with ``key`` when given."""
    path = folder / MANIFEST
    data = manifest.to_dict()
    if key is not None:
        data = json.loads(json.dumps(data, default=str))  # what the reader will parse: the signed bytes must match
        data[SIGNATURE_FIELD] = sign(data, key)
    data["checksum"] = _checksum(data)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, allow_nan=False, default=str)  # default: a Path in a config is stored as text
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def read_manifest(folder: Path, key: SigningKey | None = None, *, allow_unsigned: bool = True) -> Manifest:
    """Parse ``folder``'s manifest; with ``key``, check its signature first (an unsigned manifest passes only
    with ``allow_unsigned``). :class:`ManifestError` (or its :class:`SignedManifestError` subclass) names the
    problem."""
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(
            f"{folder.name}: no {MANIFEST} (not a committed checkpoint; an interrupted save?)"
        ) from None
    except OSError as e:
        raise ManifestError(f"{folder.name}/{MANIFEST}: unreadable ({e.strerror})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{folder.name}/{MANIFEST}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{folder.name}/{MANIFEST}: expected a JSON object")
    signed = False
    if key is not None:
        try:
            signed = check_signature(data, key, allow_unsigned=allow_unsigned)
        except SignatureError as e:
            raise SignedManifestError(f"{folder.name}/{MANIFEST}: {e}", e.kind) from None
    if data.get("checksum") != _checksum(data):
        raise ManifestError(f"{folder.name}/{MANIFEST}: checksum mismatch (the manifest was edited or damaged)")
    manifest = Manifest.from_dict(data, where=f"{folder.name}/{MANIFEST}")
    manifest.signed_by = key.key_id if key is not None and signed else None
    return manifest


def is_signed(folder: Path) -> bool:
    """True when ``folder``'s manifest carries a signature (not checked: that needs the key)."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and SIGNATURE_FIELD in data
