"""Durable whole-file replacement, shared by tracking and checkpointing (standard library only).

:func:`atomic_write` writes the new content to a temporary file next to the target, fsyncs it, renames
it over the target and fsyncs the folder: a reader sees the old content or the new one, never a part,
and once the call returns the new content survives a power loss. The temporary name starts with a dot
and ends in ``.tmp``, so a writer killed mid-write leaves debris that the checkpoint sweep removes and
listings skip.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (created, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace ``path`` by ``data`` (text is written as UTF-8) atomically and durably.

    The temporary file is named after this process and thread, so concurrent writers of one target
    never share it; the last rename wins. On an error the temporary file is removed and the target is
    left as it was.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write` of ``obj`` as indented JSON; NaN and infinity are refused (JSON has neither)."""
    atomic_write(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
