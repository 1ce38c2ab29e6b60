"""ZeRO layouts the 2-rank GPT-2 job cannot produce, built by hand in DeepSpeed's file format.

World size 3, parameters straddling three partitions, non-zero ``param_alignment_paddings``, ZeRO-3
padding inside a frozen parameter, integer buffers, an alias: each folder is read by the exporter and by
DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint``, and both must give the original tensors.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seo_dist.export import safetensors_writer
from seo_dist.export.consolidate import output_tensors
from seo_dist.export.dtypes import BF16, F32
from seo_dist.export.readers import read_weights
from seo_dist.export.safetensors_writer import PieceReader, plan_shards, write_shard

WORLD = 3
TRAINABLE = [OrderedDict(a=(5, 3), b=(7,), c=(4, 2)), OrderedDict(d=(3,))]
FROZEN = {"f": (2, 2)}
PADDINGS = [[1, 0, 2], [0]]
ALIAS = ("e", "a")


def originals() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    shapes = {n: s for group in TRAINABLE for n, s in group.items()} | FROZEN
    out = {n: torch.randn(math.prod(s), generator=gen).view(s) for n, s in shapes.items()}
    out["buf"] = torch.arange(4, dtype=torch.int64) * 7
    return out


def _module(tensors: dict[str, torch.Tensor], stage: int) -> OrderedDict:
    """The engine's module state dict: real tensors for ZeRO 1/2, empty placeholders for ZeRO-3 parameters."""
    module = OrderedDict()
    for name in ["a", "buf", "b", "c", "f", "d", ALIAS[0]]:
        t = tensors[ALIAS[1] if name == ALIAS[0] else name]
        module[name] = t if stage < 3 or name == "buf" else torch.empty(0)
    return module


def _model_states(tensors: dict[str, torch.Tensor], stage: int, frozen_fragments: dict) -> dict:
    return {
        "module": _module(tensors, stage),
        "buffer_names": ["buf"],
        "param_shapes": [OrderedDict((n, torch.Size(s)) for n, s in g.items()) for g in TRAINABLE],
        "frozen_param_shapes": OrderedDict((n, torch.Size(s)) for n, s in FROZEN.items()),
        "frozen_param_fragments": frozen_fragments,
        "shared_params": {ALIAS[0]: ALIAS[1]},
        "ds_version": "0.19.8",
    }


def _optim(stage: int, key: str, partitions: list[torch.Tensor], count: object) -> dict:
    moments = {
        i: {"exp_avg": torch.full_like(p, 9.0), "exp_avg_sq": torch.ones_like(p)} for i, p in enumerate(partitions)
    }
    return {
        "optimizer_state_dict": {
            "zero_stage": stage,
            "partition_count": count,
            key: partitions,
            "param_alignment_paddings": PADDINGS if stage < 3 else None,
            "optimizer_state_dict": {"state": moments},
        },
        "ds_version": "0.19.8",
    }


def build_zero2(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Each group flattened with its alignment paddings, padded to 2 x world, cut into equal partitions."""
    parts: list[list[torch.Tensor]] = [[] for _ in range(WORLD)]
    for group, pads in zip(TRAINABLE, PADDINGS, strict=True):
        flat = []
        for name, pad in zip(group, pads, strict=True):
            flat += [tensors[name].flatten(), torch.full((pad,), float("nan"))]
        vector = torch.cat(flat)
        total = 2 * WORLD * math.ceil(vector.numel() / (2 * WORLD))
        vector = torch.cat([vector, torch.full((total - vector.numel(),), float("nan"))])
        for r, chunk in enumerate(vector.chunk(WORLD)):
            parts[r].append(chunk.clone())
    folder.mkdir()
    frozen = OrderedDict((n, tensors[n]) for n in FROZEN)
    torch.save(_model_states(tensors, 2, frozen), folder / "mp_rank_00_model_states.pt")
    for r in range(WORLD):
        optim = _optim(2, "single_partition_of_fp32_groups", parts[r], [WORLD, WORLD])
        torch.save(optim, folder / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")


def _zero3_split(t: torch.Tensor) -> list[torch.Tensor]:
    per_rank = math.ceil(t.numel() / WORLD)
    flat = torch.cat([t.flatten(), torch.full((per_rank * WORLD - t.numel(),), float("nan"))])
    return [c.clone() for c in flat.chunk(WORLD)]


def build_zero3(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Every parameter split on its own over the ranks (tail padded); rank r's groups hold its slices in order."""
    folder.mkdir()
    frozen = {n: _zero3_split(tensors[n]) for n in FROZEN}
    split = {n: _zero3_split(tensors[n]) for g in TRAINABLE for n in g}
    for r in range(WORLD):
        fragments = OrderedDict((n, frozen[n][r]) for n in FROZEN)
        torch.save(_model_states(tensors, 3, fragments), folder / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
        groups = [torch.cat([split["a"][r], split["b"][r]]), torch.cat([split["c"][r], split["d"][r]])]
        torch.save(
            _optim(3, "fp32_flat_groups", groups, WORLD), folder / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
        )


@pytest.fixture(params=[2, 3], ids=["zero2", "zero3"])
def checkpoint(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = originals()
    folder = tmp_path / "global_step1"
    (build_zero2 if request.param == 2 else build_zero3)(folder, tensors)
    (tmp_path / "latest").write_text(folder.name)
    return folder, tensors


def _export(folder: Path, out: Path, dtype=F32) -> dict[str, torch.Tensor]:
    weights = read_weights(folder)
    shards = plan_shards(output_tensors(weights, dtype, tie=True), 10**9)
    out.mkdir()
    with PieceReader(chunk_bytes=12) as reader:  # chunks smaller than most pieces
        write_shard(out, shards[0], reader, "xxh3_128", {"format": "pt"})
    return load_file(out / shards[0].filename)


def test_exporter_and_deepspeed_agree_with_the_originals(checkpoint, tmp_path: Path) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder, tensors = checkpoint
    ours = _export(folder, tmp_path / "out")
    theirs = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent))
    assert sorted(ours) == sorted(tensors)  # the alias is left out
    for name, expected in tensors.items():
        assert torch.equal(ours[name], expected), name
        assert torch.equal(theirs[name], expected), name
    assert torch.equal(theirs[ALIAS[0]], tensors[ALIAS[1]])


def test_state_dict_order_and_alias(checkpoint) -> None:
    weights = read_weights(checkpoint[0])
    assert [t.name for t in weights.tensors] == ["a", "buf", "b", "c", "f", "d"]
    assert weights.aliases == {"e": "a"} and weights.world_size == WORLD
    assert {t.name: t.kind for t in weights.tensors}["f"] == "frozen"


def test_bf16_export_keeps_integer_buffers(checkpoint, tmp_path: Path) -> None:
    folder, tensors = checkpoint
    ours = _export(folder, tmp_path / "out", dtype=BF16)
    assert ours["buf"].dtype == torch.int64 and torch.equal(ours["buf"], tensors["buf"])
    assert ours["a"].dtype == torch.bfloat16 and torch.equal(ours["a"], tensors["a"].to(torch.bfloat16))


def test_descriptor_cap(checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With fewer descriptors allowed than files, pieces still come out right (files reopened as needed)."""
    monkeypatch.setattr(safetensors_writer, "MAX_OPEN_FILES", 1)
    folder, tensors = checkpoint
    ours = _export(folder, tmp_path / "out")
    assert all(torch.equal(ours[n], t) for n, t in tensors.items())
