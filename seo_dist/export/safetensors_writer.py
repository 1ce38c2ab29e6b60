"""Stream tensors into safetensors files: header first, then each tensor's bytes chunk by chunk.

The format (https://huggingface.co/docs/safetensors) is an 8-byte little-endian header length, a JSON
header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` padded with
spaces to a multiple of 8, then the raw little-endian bytes, offsets relative to the end of the header.
Since every shape and dtype is known before a byte is read, the header is written first and the data
streamed after it through one reusable buffer: memory stays at the buffer size whatever the model size,
and each byte is hashed as it is written (no second read for the manifest).

Shards follow transformers' conventions (``model-00001-of-00003.safetensors`` + ``model.safetensors.index.json``,
greedy filling up to ``max_shard_size``, a tensor larger than that alone in its shard).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seo_dist.checkpoint.hashing import FileRecord, HashingWriter
from seo_dist.export.dtypes import DType, convert
from seo_dist.export.errors import CorruptCheckpointError
from seo_dist.export.readers import TensorSource

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = "model-{index:05d}-of-{total:05d}.safetensors"
CHUNK_BYTES = 16 << 20
"""Read buffer: large enough that syscalls and numpy call overheads vanish, small next to any model."""
HEADER_ALIGN = 8
MAX_OPEN_FILES = 256

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units as transformers reads them; ``GiB`` for binary); ints are bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ValueError(f"size {text!r} not understood; write e.g. 5GB, 500MB or 2GiB")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """A tensor as it will be written: its name in the file, where its elements come from, its output dtype."""

    name: str
    source: TensorSource
    dtype: DType

    @property
    def nbytes(self) -> int:
        return self.source.numel * self.dtype.itemsize


@dataclass
class Shard:
    filename: str
    tensors: list[OutputTensor] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(tensors: list[OutputTensor], max_shard_bytes: int) -> list[Shard]:
    """Tensors in order, a new shard whenever the next one would overflow ``max_shard_bytes``."""
    groups: list[list[OutputTensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if len(groups) == 1:
        return [Shard(WEIGHTS_NAME, groups[0])]
    return [Shard(SHARD_NAME.format(index=i, total=len(groups)), g) for i, g in enumerate(groups, 1)]


def encode_header(tensors: list[OutputTensor], metadata: dict[str, str]) -> bytes:
    """The length prefix and the JSON header, padded so the data starts 8-byte aligned."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": t.dtype.safetensors,
            "shape": list(t.source.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-(8 + len(body)) % HEADER_ALIGN)
    return len(body).to_bytes(8, "little") + body


def index_document(shards: list[Shard]) -> dict[str, Any]:
    """``model.safetensors.index.json``: total byte size and which shard holds each tensor."""
    return {
        "metadata": {
            "total_size": sum(s.nbytes for s in shards),
            "total_parameters": sum(t.source.numel for s in shards for t in s.tensors),
        },
        "weight_map": {t.name: s.filename for s in shards for t in s.tensors},
    }


class PieceReader:
    """Reads checkpoint pieces with ``pread`` into one reusable buffer and converts them chunk by chunk.

    A yielded view is only valid until the next one: the consumer writes it out before asking for more.
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._buffer = bytearray(chunk_bytes)
        self._fds: dict[Path, int] = {}

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= MAX_OPEN_FILES:  # thousands of ranks: stay under the descriptor limit
                os.close(self._fds.pop(next(iter(self._fds))))
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise CorruptCheckpointError(path.name, f"cannot open ({e.strerror})") from None
        return fd

    def chunks(self, tensor: OutputTensor) -> Iterator[memoryview]:
        for piece in tensor.source.pieces:
            fd = self._fd(piece.file)
            itemsize = piece.dtype.itemsize
            per_chunk = max(1, len(self._buffer) // itemsize)
            done = 0
            while done < piece.numel:
                n = min(per_chunk, piece.numel - done)
                view = memoryview(self._buffer)[: n * itemsize]
                got = os.preadv(fd, [view], piece.byte_offset + done * itemsize)
                if got != len(view):
                    raise CorruptCheckpointError(
                        piece.file.name,
                        f"truncated: {tensor.name} needs bytes up to {piece.byte_offset + (done + n) * itemsize}",
                    )
                yield convert(view, piece.dtype, tensor.dtype)
                done += n

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> PieceReader:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def write_shard(
    folder: Path, shard: Shard, reader: PieceReader, algorithm: str, metadata: dict[str, str]
) -> FileRecord:
    """Write one safetensors file into ``folder``, hashed while written and fsynced."""
    with HashingWriter(folder / shard.filename, shard.filename, algorithm) as writer:
        writer.write(encode_header(shard.tensors, metadata))
        for t in shard.tensors:
            written = 0
            for chunk in reader.chunks(t):
                written += writer.write(chunk)
            if written != t.nbytes:
                raise RuntimeError(f"{t.name}: wrote {written} bytes, expected {t.nbytes} (plan and pieces disagree)")
    return writer.close()
