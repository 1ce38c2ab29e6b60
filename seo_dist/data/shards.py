"""Token shards on disk: flat ``.bin`` files of token ids and their ``.idx`` document index, and the
fixed-length samples a loader reads from them through a memory map.

A split (``train`` or ``val``) is a series of shards ``<split>_00000.bin``, ``<split>_00001.bin``...
Each ``.bin`` is the split's documents' token ids back to back, each document ending with the
end-of-text id, in the manifest's dtype (``uint16`` when the vocabulary fits, else ``uint32``). Its
``.idx`` holds ``uint64`` token offsets: 0, then the end of every document. A document never spans two
shards; a shard is closed once it holds at least the size bound.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from seo_dist.checkpoint.hashing import new_hasher


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class ShardInfo:
    bin: str
    idx: str
    tokens: int
    documents: int

    def to_dict(self) -> dict[str, Any]:
        return {"bin": self.bin, "idx": self.idx, "tokens": self.tokens, "documents": self.documents}


class _HashedFile:
    """A file written once, hashed while written (one pass)."""

    def __init__(self, path: Path, algorithm: str) -> None:
        self.path = path
        self.hasher = new_hasher(algorithm)
        self.size = 0
        self._file: BinaryIO = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()

    def write(self, data: np.ndarray) -> None:
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
        self._file.write(buf)
        self.hasher.update(buf)
        self.size += buf.nbytes

    def close(self) -> dict[str, Any]:
        self._file.close()
        return {"size": self.size, "hash": self.hasher.hexdigest()}


@dataclass
class SplitWriter:
    """Appends documents of one split to its shards in ``folder``; ``files`` collects each file's size and hash."""

    folder: Path
    split: str
    dtype: np.dtype
    shard_tokens: int
    """Close a shard once it holds this many tokens."""
    algorithm: str
    files: dict[str, dict[str, Any]]
    shards: list[ShardInfo] = field(default_factory=list)
    _bin: _HashedFile | None = None
    _idx: _HashedFile | None = None
    _tokens: int = 0
    _docs: int = 0

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}"
        self._bin = _HashedFile(self.folder / f"{name}.bin", self.algorithm)
        self._idx = _HashedFile(self.folder / f"{name}.idx", self.algorithm)
        self._idx.write(np.zeros(1, dtype=np.uint64))
        self._tokens = self._docs = 0

    def add(self, docs: Sequence[Sequence[int]]) -> None:
        """Append documents (token ids, end-of-text included); a shard is closed after the document that fills it."""
        while docs:
            if self._bin is None:
                self._open()
            assert self._bin is not None and self._idx is not None
            lengths = np.fromiter((len(d) for d in docs), dtype=np.uint64, count=len(docs))
            ends = self._tokens + np.cumsum(lengths, dtype=np.uint64)
            full = int(np.searchsorted(ends, self.shard_tokens, side="left"))  # the document that fills the shard
            take = min(full + 1, len(docs))
            part = docs[:take]
            flat = np.fromiter(itertools.chain.from_iterable(part), dtype=self.dtype, count=int(lengths[:take].sum()))
            self._bin.write(flat)
            self._idx.write(ends[:take])
            self._tokens += flat.size
            self._docs += take
            if self._tokens >= self.shard_tokens:
                self._close()
            docs = docs[take:]

    def _close(self) -> None:
        if self._bin is None or self._idx is None:
            return
        self.files[self._bin.path.name] = self._bin.close()
        self.files[self._idx.path.name] = self._idx.close()
        self.shards.append(ShardInfo(self._bin.path.name, self._idx.path.name, self._tokens, self._docs))
        self._bin = self._idx = None

    def finish(self) -> list[ShardInfo]:
        self._close()
        return self.shards

    def abort(self) -> None:
        for f in (self._bin, self._idx):
            if f is not None:
                f.close()


class TokenWindows:
    """The samples of one split: consecutive, non-overlapping windows of ``length`` tokens in each shard
    (a shard's tail shorter than a window is not used), read through ``np.memmap`` on demand.

    ``take(indices)`` returns an int64 ``[len(indices), length]`` tensor; memory is O(shards).
    """

    def __init__(self, paths: Sequence[Path], token_counts: Sequence[int], dtype: np.dtype, length: int) -> None:
        self.length = length
        self._maps = [
            np.memmap(p, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype)
            for p, n in zip(paths, token_counts, strict=True)
        ]
        per_shard = np.array([n // length for n in token_counts], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(per_shard)])
        self.tokens = int(sum(token_counts))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def take(self, indices: Any) -> Any:
        import torch

        idx = np.asarray(indices, dtype=np.int64)
        shards = np.searchsorted(self._starts, idx, side="right") - 1
        out = np.empty((idx.size, self.length), dtype=np.int64)
        for row, (i, s) in enumerate(zip(idx.tolist(), shards.tolist(), strict=True)):
            start = (i - int(self._starts[s])) * self.length
            out[row] = self._maps[s][start : start + self.length]
        return torch.from_numpy(out)
