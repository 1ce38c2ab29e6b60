"""``code_snapshot/``: a copy of the source that ran.

Source: the files git knows in the repository holding the working directory (tracked files plus
untracked ones that are not ignored - uncommitted new modules ran too), or the installed
``seo_dist`` package when the working directory is not in a repository. The entry script
(``sys.argv[0]``) is added when it lies outside that tree and outside the Python installation. Files over 1 MB are skipped, the total is
capped, Python files are copied first so a cap cuts data files before code. Secrets never go in: files that
:class:`~.secrets.SecretFilter` recognises by name or content are left out, and the result lists their names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seo_dist.tracking.metadata import git_root
from seo_dist.tracking.secrets import SecretFilter, describe

MAX_FILE_BYTES = 1_000_000
ENTRY_SCRIPT_DIR = "_entry"
_SOURCE_FIRST = (".py", ".pyi", ".yaml", ".yml", ".json", ".toml", ".cfg", ".ini", ".sh", ".sbatch", ".txt", ".md")
_PACKAGE_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


@dataclass(slots=True)
class SnapshotResult:
    source: str
    """``git`` or ``package``."""
    root: str
    files: int = 0
    bytes: int = 0
    skipped_large: list[str] = field(default_factory=list)
    skipped_over_cap: int = 0
    left_out: list[dict[str, str]] = field(default_factory=list)
    """Files that look like secrets (by name or content), with the reason; never their content."""

    @property
    def truncated(self) -> bool:
        return self.skipped_over_cap > 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "truncated": self.truncated}


def _git_files(root: Path) -> list[Path] | None:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [Path(p) for p in out.stdout.decode(errors="surrogateescape").split("\0") if p]


def _package_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _PACKAGE_SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if not name.endswith((".pyc", ".pyo")):
                files.append(Path(dirpath, name).relative_to(root))
    return files


def _priority(rel: Path) -> tuple[int, str]:
    suffix = rel.suffix.lower()
    rank = _SOURCE_FIRST.index(suffix) if suffix in _SOURCE_FIRST else len(_SOURCE_FIRST)
    return (0 if rank == 0 else 1 if rank < len(_SOURCE_FIRST) else 2, str(rel))


def _is_under(path: Path, parents: list[Path]) -> bool:
    return any(path == p or p in path.parents for p in parents)


def create_code_snapshot(
    dest: Path,
    max_total_bytes: int,
    exclude: Sequence[Path] = (),
    cwd: Path | None = None,
    entry_script: str | None = None,
    secret_filter: SecretFilter | None = None,
) -> SnapshotResult:
    """Copy the source that ran into ``dest``; ``exclude`` (e.g. the experiments folder) is never copied, nor
    any file ``secret_filter`` (default: the built-in patterns) recognises as a secret."""
    secrets = secret_filter if secret_filter is not None else SecretFilter()
    cwd = Path(cwd or Path.cwd()).resolve()
    excluded = [Path(p).resolve() for p in exclude]
    root = git_root(cwd)
    files = _git_files(root) if root is not None else None
    if root is not None and files is not None:
        result = SnapshotResult(source="git", root=str(root))
        base = root
        prefix = Path()
    else:
        import seo_dist

        pkg = Path(seo_dist.__file__).resolve().parent
        result = SnapshotResult(source="package", root=str(pkg))
        base = pkg
        files = _package_files(pkg)
        prefix = Path(pkg.name)

    entries: list[tuple[Path, Path]] = [(base / rel, prefix / rel) for rel in sorted(files, key=_priority)]
    if entry_script is None:
        entry_script = sys.argv[0] if sys.argv and sys.argv[0] else None
    if entry_script:
        script = Path(entry_script).resolve()
        installed = any(Path(p).resolve() in script.parents for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
        if script.is_file() and base not in script.parents and not installed:  # not pytest's or torchrun's own
            entries.insert(0, (script, Path(ENTRY_SCRIPT_DIR) / script.name))

    dest.mkdir(parents=True, exist_ok=True)
    for src, rel in entries:
        try:
            if src.is_symlink() or not src.is_file() or _is_under(src.resolve(), excluded):
                continue
            size = src.stat().st_size
        except OSError:
            continue
        if size > MAX_FILE_BYTES:
            result.skipped_large.append(str(rel))
            continue
        if not secrets.check(src, rel.as_posix()):
            continue
        if result.bytes + size > max_total_bytes:
            result.skipped_over_cap += 1
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src, target)
        except OSError:
            continue
        result.files += 1
        result.bytes += size
    result.left_out = describe(secrets.left_out)
    return result
