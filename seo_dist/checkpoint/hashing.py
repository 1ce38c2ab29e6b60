"""Content hashes computed while the bytes are written: one pass, no re-read.

``torch.save(obj, HashingWriter(path, algo))`` works because ``torch.save`` only needs a
``write`` method; every chunk goes to the file and to the hasher, then :meth:`HashingWriter.close`
fsyncs and returns the :class:`FileRecord` (relative path, size, digest) that goes into the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seo_dist.checkpoint import faults

ALGORITHMS = ("xxh3_128", "blake3", "sha256")
DEFAULT_ALGORITHM = "xxh3_128"
"""Fastest of the three by far (benchmarks/bench_hash.py); a checksum against bit rot and torn
writes, not a defence against tampering (use sha256 or blake3 for that)."""
READ_CHUNK = 8 << 20
WRITE_BUFFER = 1 << 20
WRITE_SLICE = 8 << 20
"""``torch.save`` hands over each storage as one buffer (hundreds of MB): it is written and hashed in slices
of this size, so the hash reads each slice while it is still in the CPU cache and the page cache gets
steady writes (one huge ``write`` stalled for seconds in dirty-page throttling on the machines measured)."""


def _factory(algorithm: str) -> Callable[[], Any]:
    if algorithm == "sha256":
        return hashlib.sha256
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3
    raise ValueError(f"unknown hash algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")


def new_hasher(algorithm: str) -> Any:
    """A fresh hasher with ``update(bytes)`` and ``hexdigest()``."""
    return _factory(algorithm)()


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One file of a checkpoint as the manifest lists it."""

    path: str
    """Relative to the checkpoint folder, '/'-separated."""
    size: int
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "hash": self.hash}


class HashingWriter:
    """A binary file opened for writing that hashes every byte it writes.

    Use as a context manager or call :meth:`close`; :meth:`abort` removes a partial file.
    Honours the fault-injection variables of :mod:`.faults`.
    """

    def __init__(self, path: str | os.PathLike[str], relpath: str, algorithm: str) -> None:
        self.path = Path(path)
        self.relpath = relpath
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)
        self._size = 0
        self._fault = faults.write_fault(relpath)
        faults.delay_before_write()
        self._file = open(self.path, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115 - closed in close()/abort()

    def write(self, data: Any) -> int:
        if self._fault is not None:
            raise self._fault.error(self.relpath)
        view = memoryview(data)
        if view.nbytes <= WRITE_SLICE or not view.c_contiguous:
            n = self._file.write(data)
            self._hasher.update(data)
        else:
            view = view.cast("B")
            n = 0
            for start in range(0, view.nbytes, WRITE_SLICE):
                part = view[start : start + WRITE_SLICE]
                n += self._file.write(part)
                self._hasher.update(part)
        self._size += n
        return n

    def flush(self) -> None:
        self._file.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> FileRecord:
        """Flush, fsync and close; the record of what is now durably on disk."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return FileRecord(self.relpath, self._size, self._hasher.hexdigest())

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()


def write_torch_file(obj: Any, folder: Path, relpath: str, algorithm: str) -> FileRecord:
    """``torch.save(obj)`` into ``folder/relpath`` through a :class:`HashingWriter`; fsynced."""
    import torch

    with HashingWriter(folder / relpath, relpath, algorithm) as writer:  # removed again if the save fails
        torch.save(obj, writer)  # type: ignore[arg-type]  # a file-like object: write/flush/tell
    return writer.close()


def hash_file(path: str | os.PathLike[str], algorithm: str, buffer: bytearray | None = None) -> tuple[int, str]:
    """Size and digest of a file, read in large chunks into a reusable buffer."""
    hasher = new_hasher(algorithm)
    buf = buffer if buffer is not None else bytearray(READ_CHUNK)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            hasher.update(view[:n])
            size += n
    return size, hasher.hexdigest()
