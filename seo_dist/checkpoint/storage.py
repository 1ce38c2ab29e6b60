"""File-system primitives for crash safety: publishing a finished folder, free space, removing folders, sweeping."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from seo_dist.checkpoint.layout import STAGING_SUFFIX
from seo_dist.fileio import fsync_dir


def publish_folder(staging: Path, final: Path) -> None:
    """Rename a finished staging folder to ``final`` and fsync the parent; an existing ``final`` is replaced.

    The old folder is first renamed aside under a staging name (swept like any abandoned ``*.tmp``), so a
    crash never leaves a half-written ``final``.
    """
    if final.exists():
        replaced = final.with_name(final.name + ".replaced" + STAGING_SUFFIX)
        if replaced.exists():
            shutil.rmtree(replaced)
        os.rename(final, replaced)
        os.rename(staging, final)
        fsync_dir(final.parent)
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        os.rename(staging, final)
    fsync_dir(final.parent)


def disk_free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the file system holding ``path`` (or its nearest parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def remove_folder(path: Path) -> None:
    """Rename to a staging name first (atomic), then delete: a crash mid-delete leaves only sweepable debris."""
    doomed = path.with_name(path.name + ".deleting" + STAGING_SUFFIX)
    if doomed.exists():
        shutil.rmtree(doomed)
    os.rename(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed)


def sweep_abandoned(root: Path) -> list[Path]:
    """Delete everything under ``root`` whose name ends in ``.tmp``: staging folders of crashed saves,
    half-deleted folders, half-written ``latest``/``index.json``. Call once at start, before any save."""
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        if not entry.name.endswith(STAGING_SUFFIX):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry)
    if removed:
        fsync_dir(root)
    return removed
