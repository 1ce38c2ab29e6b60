"""Element types of checkpoint tensors and the conversions applied on the way out, in numpy.

The exporter never imports torch: a torch import alone costs about 1.5 s and 290 MB of RSS on the
development machines, several times what the conversion itself needs. Conversions reproduce torch's
results bit for bit (round-to-nearest-even, torch's canonical bf16 NaN); tests/test_consolidate_units.py
checks them against torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DType:
    """One element type: its safetensors name, size, the numpy type that holds its bits, and torch's name."""

    safetensors: str
    itemsize: int
    numpy: np.dtype
    torch_name: str
    floating: bool

    def __repr__(self) -> str:
        return self.safetensors


F64 = DType("F64", 8, np.dtype("<f8"), "float64", True)
F32 = DType("F32", 4, np.dtype("<f4"), "float32", True)
F16 = DType("F16", 2, np.dtype("<f2"), "float16", True)
BF16 = DType("BF16", 2, np.dtype("<u2"), "bfloat16", True)  # numpy has no bfloat16: carried as its bits
I64 = DType("I64", 8, np.dtype("<i8"), "int64", False)
I32 = DType("I32", 4, np.dtype("<i4"), "int32", False)
I16 = DType("I16", 2, np.dtype("<i2"), "int16", False)
I8 = DType("I8", 1, np.dtype("i1"), "int8", False)
U8 = DType("U8", 1, np.dtype("u1"), "uint8", False)
BOOL = DType("BOOL", 1, np.dtype("?"), "bool", False)

STORAGE_TYPES: dict[str, DType] = {
    "DoubleStorage": F64,
    "FloatStorage": F32,
    "HalfStorage": F16,
    "BFloat16Storage": BF16,
    "LongStorage": I64,
    "IntStorage": I32,
    "ShortStorage": I16,
    "CharStorage": I8,
    "ByteStorage": U8,
    "BoolStorage": BOOL,
    "UntypedStorage": U8,
}
"""torch's storage class names, as they appear in a ``torch.save`` pickle, to element types."""

OUTPUT_DTYPES: dict[str, DType] = {"fp32": F32, "bf16": BF16, "fp16": F16}
"""``--dtype`` choices; floating tensors are converted to this type, integer and bool buffers keep theirs."""

_BF16_NAN = np.uint16(0x7FC0)


def output_dtype(source: DType, requested: DType) -> DType:
    """Floating tensors take the requested type; integer and bool tensors (buffers, masks) keep their own."""
    return requested if source.floating else source


BLOCK_ELEMENTS = 1 << 16
"""Elements converted per numpy pass: the temporaries of a block stay in the CPU cache (about 3x faster
than whole 16 MB chunks for bf16 on the development machines)."""


def _f32_to_bf16_bits(values: np.ndarray, out: np.ndarray) -> None:
    """torch's float -> bfloat16: round to nearest even on the upper 16 bits; NaN becomes 0x7FC0."""
    bits = values.view(np.uint32)
    rounded = bits >> 16
    rounded &= 1
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    out[...] = rounded
    nan = np.isnan(values)
    if nan.any():
        out[nan] = _BF16_NAN


def _to_f32(values: np.ndarray, source: DType) -> np.ndarray:
    if source is F32:
        return values
    if source is BF16:
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def _convert_block(values: np.ndarray, source: DType, target: DType, out: np.ndarray) -> None:
    if target is BF16:
        _f32_to_bf16_bits(_to_f32(values, source), out)
    elif target in (F32, F16):
        out[...] = _to_f32(values, source)  # through fp32, as torch's casts go
    elif target is F64:
        out[...] = _to_f32(values, source) if source is BF16 else values
    else:
        raise ValueError(f"no conversion from {source} to {target}")


def convert(data: memoryview | bytes | bytearray, source: DType, target: DType) -> memoryview:
    """The bytes of ``data`` (little-endian ``source`` elements) as ``target`` elements."""
    if source is target:
        return memoryview(data)
    if not (source.floating and target.floating):
        raise ValueError(f"no conversion from {source} to {target}")
    values = np.frombuffer(data, dtype=source.numpy)
    out = np.empty(values.size, dtype=target.numpy)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is the intended result, as in torch
        for start in range(0, values.size, BLOCK_ELEMENTS):
            end = start + BLOCK_ELEMENTS
            _convert_block(values[start:end], source, target, out[start:end])
    return out.view(np.uint8).data
