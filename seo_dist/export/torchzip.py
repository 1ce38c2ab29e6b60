"""Read the structure of a ``torch.save`` file without loading a single tensor, and without torch.

A ``torch.save`` file is an uncompressed zip: ``<archive>/data.pkl`` (the pickled object, with every
tensor storage replaced by a persistent id) and one record ``<archive>/data/<key>`` per storage, its raw
little-endian bytes. :func:`load_lazy` unpickles ``data.pkl`` with a restricted unpickler that turns each
tensor into a :class:`TensorRef` (file, byte offset, dtype, shape), so a caller can read exactly the
bytes it needs with ``pread`` into a reusable buffer.

Why not ``torch.load(mmap=True)``: the pages of a memory map count in the reader's RSS once touched, so
copying 500 MB of master weights through a map costs 500 MB of RSS; ``pread`` into one buffer costs the
buffer. And why not ``weights_only=False``: it executes whatever the pickle names. Here no class from the
file is ever imported or called: anything outside a short allowlist becomes an inert :class:`Opaque`
record (DeepSpeed's loss scaler, enums, fragment addresses), so a checkpoint cannot run code in the exporter.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from seo_dist.errors import error_line
from seo_dist.export.dtypes import STORAGE_TYPES, DType
from seo_dist.export.errors import CorruptCheckpointError, UnsupportedCheckpointError

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_HEADER_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True, slots=True)
class StorageRef:
    """One storage record of a ``torch.save`` file: where its bytes start and how many elements it holds."""

    file: Path
    key: str
    dtype: DType
    numel: int
    byte_offset: int
    """Absolute offset of the first byte in ``file``."""


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A tensor as saved: a view (offset, shape, stride, all in elements) of a storage."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> DType:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def byte_range(self) -> tuple[int, int]:
        """Absolute (start, length) of the bytes of a contiguous tensor in its file."""
        itemsize = self.storage.dtype.itemsize
        return self.storage.byte_offset + self.offset * itemsize, self.numel * itemsize


class Opaque:
    """Stands in for any object whose class is not on the allowlist; keeps what the pickle gave it.

    ``args`` are the constructor arguments (an enum member's value, a named tuple's fields), ``state`` what
    ``__setstate__`` received, ``items`` what dict- or list-like subclasses were filled with.
    """

    qualname = "?"
    args: tuple[Any, ...]
    state: Any
    items: dict[Any, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        obj.items = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"Opaque({self.qualname}{self.args!r})"


_opaque_classes: dict[str, type[Opaque]] = {}


def _opaque_class(qualname: str) -> type[Opaque]:
    cls = _opaque_classes.get(qualname)
    if cls is None:
        cls = _opaque_classes[qualname] = type(qualname.rsplit(".", 1)[-1], (Opaque,), {"qualname": qualname})
    return cls


def opaque_value(obj: Any) -> Any:
    """The value of an enum member saved as an opaque object (``ZeroStageEnum(2)`` -> 2), else ``obj``."""
    if isinstance(obj, Opaque) and len(obj.args) == 1:
        return obj.args[0]
    return obj


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: DType


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any, *_: Any) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError(f"tensor without a storage record ({type(storage).__name__})")
    shape, strides = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(shape) != len(strides) or any(s < 0 for s in shape) or any(s < 0 for s in strides) or storage_offset < 0:
        raise pickle.UnpicklingError(f"tensor with invalid shape {shape} / stride {strides}")
    last = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) if all(shape) else -1
    if last >= storage.numel:
        raise pickle.UnpicklingError(f"tensor view reaches element {last} of a storage of {storage.numel}")
    return TensorRef(storage, int(storage_offset), shape, strides)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    return func(*args)


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    return (
        cls(state)
        if isinstance(cls, type) and issubclass(cls, Opaque)
        else _opaque_class("copyreg._reconstructor")(cls)
    )


_TENSOR_REBUILDERS = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
}
_SAFE_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "torch.Size": lambda dims=(): tuple(dims),
    "copyreg._reconstructor": _reconstructor,
    **_TENSOR_REBUILDERS,
}
_TORCH_DTYPE_NAMES = {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"}


class _LazyUnpickler(pickle.Unpickler):
    def __init__(self, data: BinaryIO, archive: _Archive) -> None:
        super().__init__(data)
        self._archive = archive

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[qualname]
        if module == "torch" and name in STORAGE_TYPES:
            return _StorageType(STORAGE_TYPES[name])
        if module == "torch" and name in _TORCH_DTYPE_NAMES:
            return f"torch.{name}"
        return _opaque_class(qualname)

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
        return self._archive.storage(str(key), storage_type.dtype, int(numel))


class _Archive:
    """The records of one ``torch.save`` zip file and their absolute data offsets."""

    def __init__(self, path: Path, name: str, handle: BinaryIO) -> None:
        self.path, self.name, self._handle = path, name, handle
        try:
            self._zip = zipfile.ZipFile(handle)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CorruptCheckpointError(name, f"not a readable torch.save zip file ({e})") from None
        pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pickles) != 1:
            raise CorruptCheckpointError(name, "not a torch.save file (no single <archive>/data.pkl record)")
        self.prefix = pickles[0].filename[: -len("data.pkl")]
        self._pickle_info = pickles[0]
        self._records = {i.filename: i for i in infos}
        byteorder = self._records.get(self.prefix + "byteorder")
        if byteorder is not None and self._zip.read(byteorder).strip() not in (b"little", b""):
            raise UnsupportedCheckpointError(f"{name}: saved on a big-endian machine; convert it there first")

    def read_pickle(self) -> bytes:
        try:
            return self._zip.read(self._pickle_info)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CorruptCheckpointError(self.name, f"unreadable data.pkl ({e})") from None

    def storage(self, key: str, dtype: DType, numel: int) -> StorageRef:
        info = self._records.get(f"{self.prefix}data/{key}")
        if info is None:
            raise CorruptCheckpointError(self.name, f"storage record data/{key} is missing")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CorruptCheckpointError(
                self.name, f"storage record data/{key} is compressed (torch never writes that)"
            )
        if info.file_size != numel * dtype.itemsize:
            raise CorruptCheckpointError(
                self.name,
                f"storage record data/{key} holds {info.file_size} bytes, expected {numel} x {dtype.itemsize}",
            )
        self._handle.seek(info.header_offset)
        header = self._handle.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_HEADER_MAGIC:
            raise CorruptCheckpointError(self.name, f"bad zip local header for data/{key}")
        fields = _LOCAL_HEADER.unpack(header)
        start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
        return StorageRef(self.path, key, dtype, numel, start)


def load_lazy(path: Path, name: str | None = None) -> Any:
    """The object saved in ``path`` with each tensor as a :class:`TensorRef`; ``name`` labels errors."""
    label = name or path.name
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; the archive reads local headers through it
    except OSError as e:
        raise CorruptCheckpointError(label, f"cannot open ({e.strerror})") from None
    with handle:
        archive = _Archive(path, label, handle)
        data = archive.read_pickle()
        try:
            return _LazyUnpickler(io.BytesIO(data), archive).load()
        except CorruptCheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise CorruptCheckpointError(label, f"damaged pickle in data.pkl ({error_line(e)})") from None
