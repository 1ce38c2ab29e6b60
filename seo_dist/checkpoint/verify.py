"""Check a checkpoint folder against its manifest: every file present, right size, right hash, nothing extra.

``full`` re-hashes every file (a thread pool across files: hashlib, blake3 and xxhash release the GIL
on large buffers); ``quick`` compares sizes only (catches truncation and deletion, not bit flips).
With a signing key the manifest's signature is checked first, before any other file is read.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from seo_dist.checkpoint.errors import ManifestError, SignedManifestError
from seo_dist.checkpoint.hashing import READ_CHUNK, hash_file
from seo_dist.checkpoint.layout import MANIFEST
from seo_dist.checkpoint.manifest import Manifest, is_signed, read_manifest
from seo_dist.checkpoint.signing import SigningKey

VerifyMode = Literal["full", "quick", "off"]
VERIFY_MODES = ("full", "quick", "off")


@dataclass(frozen=True, slots=True)
class FileProblem:
    path: str
    """Relative to the checkpoint folder."""
    kind: Literal["manifest", "signature", "missing", "size", "hash", "unreadable", "extra"]
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


@dataclass
class VerifyReport:
    folder: Path
    mode: str
    problems: list[FileProblem] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0
    seconds: float = 0.0
    manifest: Manifest | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    signature: str = "not checked"
    """``signed (key id ...)``, ``unsigned``, ``signature mismatch``, or ``not checked`` (no key given)."""

    def summary(self) -> str:
        """One line: what was checked, or the first problems."""
        if self.ok:
            return (
                f"{self.folder.name}: OK, {self.files_checked} files, {self.bytes_checked / 1e6:.1f} MB "
                f"({self.mode}) in {self.seconds:.2f} s; signature: {self.signature}"
            )
        shown = "; ".join(str(p) for p in self.problems[:3])
        more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        return f"{self.folder.name}: INVALID: {shown}{more}"


def default_threads(n_files: int) -> int:
    return max(1, min(8, os.cpu_count() or 1, n_files))


class ListedFiles(Protocol):
    """What :func:`verify_files` reads of a manifest: each file's size and hash, and the hash's algorithm
    (a checkpoint's :class:`~.manifest.Manifest`, or a prepared dataset's manifest)."""

    @property
    def files(self) -> dict[str, dict[str, Any]]: ...

    @property
    def hash_algorithm(self) -> str: ...


def verify_files(
    folder: Path, manifest: ListedFiles, names: list[str], mode: VerifyMode = "full", threads: int | None = None
) -> tuple[list[FileProblem], int]:
    """Problems among ``names`` (manifest entries) and the bytes checked. The unit of work that
    ranks split between them on load."""
    if mode == "off" or not names:
        return [], 0
    local = threading.local()

    def check(name: str) -> tuple[FileProblem | None, int]:
        expected = manifest.files[name]
        path = folder / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return FileProblem(name, "missing", "missing"), 0
        except OSError as e:
            return FileProblem(name, "unreadable", f"unreadable ({e.strerror})"), 0
        if size != expected["size"]:
            return FileProblem(
                name, "size", f"size {size} bytes, manifest says {expected['size']} (truncated or overwritten)"
            ), 0
        if mode == "quick":
            return None, size
        if not hasattr(local, "buf"):
            local.buf = bytearray(READ_CHUNK)
        try:
            size, digest = hash_file(path, manifest.hash_algorithm, local.buf)
        except OSError as e:
            return FileProblem(name, "unreadable", f"unreadable ({e.strerror})"), 0
        if digest != expected["hash"]:
            return FileProblem(
                name, "hash", f"{manifest.hash_algorithm} mismatch (content changed: bit rot or a torn write)"
            ), size
        return None, size

    ordered = sorted(names, key=lambda n: -int(manifest.files[n]["size"]))  # biggest first: better balance
    n_threads = threads or default_threads(len(ordered))
    if n_threads == 1:
        results = [check(n) for n in ordered]
    else:
        with ThreadPoolExecutor(n_threads, thread_name_prefix="ckpt-verify") as pool:
            results = list(pool.map(check, ordered))
    problems = sorted((p for p, _ in results if p is not None), key=lambda p: p.path)
    return problems, sum(n for _, n in results)


def extra_files(folder: Path, manifest: Manifest) -> list[FileProblem]:
    """Files the manifest does not list: DeepSpeed globs shard names on load, so a stray one can change what loads."""
    listed = set(manifest.files) | {MANIFEST}
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    return [FileProblem(name, "extra", "not listed in the manifest") for name in found if name not in listed]


def verify_checkpoint(
    folder: str | os.PathLike[str],
    mode: VerifyMode = "full",
    threads: int | None = None,
    *,
    key: SigningKey | None = None,
    allow_unsigned: bool = False,
) -> VerifyReport:
    """Verify one checkpoint folder; the report names every bad, missing or extra file. With ``key`` the
    manifest's signature is checked first (an unsigned manifest is a problem unless ``allow_unsigned``)."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify mode must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    folder = Path(folder)
    start = time.perf_counter()
    report = VerifyReport(folder=folder, mode=mode)
    try:
        manifest = read_manifest(folder, key, allow_unsigned=allow_unsigned)
    except SignedManifestError as e:
        report.signature = e.kind
        report.problems.append(FileProblem(MANIFEST, "signature", str(e).split(": ", 1)[-1]))
        report.seconds = time.perf_counter() - start
        return report
    except ManifestError as e:
        report.problems.append(FileProblem(MANIFEST, "manifest", str(e).split(": ", 1)[-1]))
        report.seconds = time.perf_counter() - start
        return report
    report.manifest = manifest
    if manifest.signed_by is not None:
        report.signature = f"signed (key id {manifest.signed_by})"
    elif key is not None:
        report.signature = "unsigned (allowed)"
    elif is_signed(folder):
        report.signature = "signed, not checked (no key given)"
    if mode != "off":
        problems, nbytes = verify_files(folder, manifest, list(manifest.files), mode, threads)
        report.problems = problems + extra_files(folder, manifest)
        report.files_checked = len(manifest.files)
        report.bytes_checked = nbytes
    report.seconds = time.perf_counter() - start
    return report
