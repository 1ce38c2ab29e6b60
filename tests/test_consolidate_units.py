"""Pieces of the exporter on synthetic inputs: dtype conversion against torch, the lazy torch.save reader,
the streaming safetensors writer, shard planning, tied-weight handling. No training, no subprocesses."""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from seo_dist.export.dtypes import BF16, F16, F32, I64, OUTPUT_DTYPES, convert, output_dtype
from seo_dist.export.errors import CorruptCheckpointError
from seo_dist.export.readers import FlatView, ModelWeights, TensorSource
from seo_dist.export.safetensors_writer import (
    OutputTensor,
    PieceReader,
    encode_header,
    parse_size,
    plan_shards,
    write_shard,
)
from seo_dist.export.torchzip import Opaque, TensorRef, load_lazy

SPECIAL = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    float("inf"),
    float("-inf"),
    float("nan"),
    -float("nan"),
    3.4028234663852886e38,
    1e-45,
    -1e-45,
    1.17549435e-38,
    65504.0,
    65520.0,
    1e-8,
    6.1e-5,
    1.00390625,
    1.01171875,
    -1.00390625,
    1.0078125 + 2**-17,
]


def _values() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    random = torch.randn(100_000, generator=gen) * torch.logspace(-30, 30, 100_000)
    bits = (
        torch.randint(-(2**31), 2**31 - 1, (100_000,), generator=gen, dtype=torch.int64)
        .to(torch.int32)
        .view(torch.float32)
    )
    return torch.cat([torch.tensor(SPECIAL, dtype=torch.float32), random.float(), bits])


@pytest.mark.parametrize("target, torch_dtype", [(BF16, torch.bfloat16), (F16, torch.float16)])
def test_conversion_matches_torch_bit_for_bit(target, torch_dtype) -> None:
    values = _values()
    ours = np.frombuffer(convert(values.numpy().tobytes(), F32, target), dtype=np.uint16)
    theirs = values.to(torch_dtype).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(values.numpy())
    assert np.array_equal(ours[~nan], theirs[~nan])
    back = values.to(torch_dtype)
    assert torch.isnan(back[torch.from_numpy(nan)]).all()
    # and back to fp32, exactly as torch widens
    widened = np.frombuffer(convert(ours.tobytes(), target, F32), dtype=np.float32)
    assert np.array_equal(widened[~nan], back.float().numpy()[~nan])


def test_integer_tensors_keep_their_dtype() -> None:
    assert output_dtype(I64, BF16) is I64 and output_dtype(F32, OUTPUT_DTYPES["bf16"]) is BF16


@pytest.mark.parametrize(
    "text, expected",
    [
        ("5GB", 5 * 10**9),
        ("500MB", 5 * 10**8),
        ("2GiB", 2 * 2**30),
        ("100kb", 10**5),
        ("1.5GB", 1_500_000_000),
        (4096, 4096),
        ("123", 123),
    ],
)
def test_parse_size(text, expected) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "5 parsecs", "-1GB", "0", "GB"])
def test_parse_size_rejects(text) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict]:
    base = torch.arange(40, dtype=torch.float32).mul(0.25)
    obj = {
        "plain": torch.randn(3, 5),
        "view": base[7:19],  # a view into a larger storage: non-zero storage offset
        "param": torch.nn.Parameter(torch.randn(4, 2)),
        "bf16": torch.randn(6).to(torch.bfloat16),
        "ids": torch.arange(9, dtype=torch.int64).view(3, 3),
        "transposed": torch.randn(3, 4).t(),
        "shape": torch.Size([2, 3]),
        "nested": OrderedDict(a=[1, 2.5, "x", None, (True,)]),
        "empty": torch.empty(0),
    }
    path = tmp_path / "state.pt"
    torch.save(obj, path)
    return path, obj


def _source(name: str, ref: TensorRef) -> TensorSource:
    return TensorSource(name, ref.shape, ref.dtype, tuple(FlatView([ref], "state.pt").pieces(0, ref.numel)), "param")


def test_load_lazy_describes_tensors_without_loading(saved) -> None:
    path, obj = saved
    lazy = load_lazy(path)
    assert lazy["shape"] == (2, 3) and lazy["nested"] == OrderedDict(a=[1, 2.5, "x", None, (True,)])
    for key in ("plain", "view", "param", "bf16", "ids", "transposed", "empty"):
        ref = lazy[key]
        assert isinstance(ref, TensorRef)
        assert ref.shape == tuple(obj[key].shape) and ref.stride == obj[key].stride()
        assert ref.dtype.torch_name == str(obj[key].dtype).removeprefix("torch.")
    assert lazy["view"].offset == 7 and lazy["view"].storage.numel == 40
    assert lazy["transposed"].is_contiguous is False and lazy["plain"].is_contiguous is True
    with pytest.raises(Exception, match="not contiguous"):
        FlatView([lazy["transposed"]], "state.pt")


def test_streamed_safetensors_equal_the_tensors(saved, tmp_path: Path) -> None:
    path, obj = saved
    lazy = load_lazy(path)
    names = ["plain", "view", "param", "bf16", "ids", "empty"]
    tensors = [OutputTensor(n, _source(n, lazy[n]), output_dtype(lazy[n].dtype, F32)) for n in names]
    with PieceReader(chunk_bytes=16) as reader:  # tiny chunks: every tensor crosses chunk boundaries
        record = write_shard(tmp_path, plan_shards(tensors, 10**9)[0], reader, "xxh3_128", {"format": "pt"})
    loaded = load_file(tmp_path / record.path)
    for n in names:
        expected = obj[n].detach().float() if obj[n].is_floating_point() else obj[n]
        assert loaded[n].dtype == expected.dtype and torch.equal(loaded[n], expected), n
    assert record.size == (tmp_path / record.path).stat().st_size
    header_len = int.from_bytes((tmp_path / record.path).read_bytes()[:8], "little")
    assert (8 + header_len) % 8 == 0


def test_shard_plan_is_greedy_and_oversized_tensors_stand_alone(saved) -> None:
    lazy = load_lazy(saved[0])
    src = _source("plain", lazy["plain"])  # 15 floats = 60 bytes
    tensors = [OutputTensor(f"t{i}", src, F32) for i in range(5)]
    shards = plan_shards(tensors, 130)
    assert [len(s.tensors) for s in shards] == [2, 2, 1]
    assert [s.filename for s in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert [len(s.tensors) for s in plan_shards(tensors, 10)] == [1] * 5
    assert plan_shards(tensors, 10**6)[0].filename == "model.safetensors"
    header = encode_header(tensors[:2], {"format": "pt"})
    meta = json.loads(header[8:])
    assert meta["t1"]["data_offsets"] == [60, 120] and meta["__metadata__"] == {"format": "pt"}


def test_pickle_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"weights": torch.ones(2), "evil": Evil()}, tmp_path / "evil.pt")
    lazy = load_lazy(tmp_path / "evil.pt")
    assert isinstance(lazy["evil"], Opaque) and not marker.exists()
    assert isinstance(lazy["weights"], TensorRef)


def test_damaged_files_are_named(saved, tmp_path: Path) -> None:
    path, _ = saved
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="cut.pt: not a readable torch.save zip"):
        load_lazy(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CorruptCheckpointError, match="text.pt"):
        load_lazy(tmp_path / "text.pt")


def test_out_of_range_view_is_refused(saved) -> None:
    ref = load_lazy(saved[0])["view"]
    with pytest.raises(CorruptCheckpointError, match="requested"):
        FlatView([ref], "state.pt").pieces(5, ref.numel)


def test_untied_aliases_get_their_own_copy(saved) -> None:
    from seo_dist.export.consolidate import output_tensors

    src = _source("wte", load_lazy(saved[0])["plain"])
    weights = ModelWeights(tensors=[src], aliases={"lm_head.weight": "wte"})
    assert [t.name for t in output_tensors(weights, BF16, tie=True)] == ["wte"]
    untied = output_tensors(weights, BF16, tie=False)
    assert [t.name for t in untied] == ["wte", "lm_head.weight"] and untied[1].source is src
    assert math.prod(untied[1].source.shape) == 15
