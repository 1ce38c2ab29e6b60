"""The loader over memory-mapped samples: coverage across ranks, the global batch, exact resume (no jobs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seo_dist.data.loader import ShardedLoader, validation_batches
from seo_dist.data.shards import SplitWriter, TokenWindows

N = 96  # samples


def _ids(batch) -> list[int]:
    return [int(row[0]) for row in batch["input_ids"]]


def _blocks() -> torch.Tensor:
    """Sample i holds the ids i, i, i... so a batch names its samples."""
    return torch.arange(N).repeat_interleave(4).view(N, 4)


def _step_sets(world: int, mb: int, accum: int, steps: int, state=None) -> tuple[list[list[int]], dict]:
    loaders = [ShardedLoader(_blocks(), mb, rank=r, world_size=world, seed=3, grad_accum=accum) for r in range(world)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)
    out = []
    for _ in range(steps):
        ids: list[int] = []
        for _ in range(accum):
            for loader in loaders:
                ids += _ids(loader.next_batch())
        out.append(ids)
    return out, loaders[0].state_dict()


@pytest.mark.parametrize(("world", "mb", "accum"), [(2, 4, 1), (3, 2, 2), (4, 3, 1)])
def test_ranks_see_disjoint_samples_and_together_all_of_an_epoch(world, mb, accum):
    steps_per_epoch = N // (world * mb * accum)
    steps, _ = _step_sets(world, mb, accum, steps_per_epoch)
    flat = [i for step in steps for i in step]
    assert len(flat) == len(set(flat)) == N  # N is a multiple of every global batch above
    per_rank = [[] for _ in range(world)]
    loaders = [ShardedLoader(_blocks(), mb, rank=r, world_size=world, seed=3, grad_accum=accum) for r in range(world)]
    for _ in range(steps_per_epoch * accum):
        for r, loader in enumerate(loaders):
            per_rank[r] += _ids(loader.next_batch())
    assert all(set(a).isdisjoint(b) for i, a in enumerate(per_rank) for b in per_rank[i + 1 :])
    next_epoch = _ids(loaders[0].next_batch())
    assert loaders[0].epoch == 1 and next_epoch != per_rank[0][:mb]  # a new permutation


def test_the_same_global_batch_trains_on_the_same_samples_at_every_step():
    reference, _ = _step_sets(2, 4, 2, 10)  # global batch 16, crossing an epoch (96 / 16 = 6 steps)
    for world, mb, accum in [(1, 16, 1), (4, 2, 2), (8, 1, 2), (2, 2, 4)]:
        steps, _ = _step_sets(world, mb, accum, 10)
        assert [sorted(s) for s in steps] == [sorted(s) for s in reference], (world, mb, accum)


@pytest.mark.parametrize("resumed", [(2, 4, 2), (1, 8, 2), (4, 1, 4), (2, 2, 4)])
def test_resume_continues_at_the_exact_next_sample(resumed):
    """A resume (same or another world/micro-batch split of the global batch 16) consumes exactly the samples
    an uninterrupted run would, also across the epoch boundary."""
    uninterrupted, _ = _step_sets(2, 4, 2, 10)
    first, state = _step_sets(2, 4, 2, 4)
    rest, _ = _step_sets(*resumed, 6, state=state)
    assert [sorted(s) for s in first + rest] == [sorted(s) for s in uninterrupted]


def test_a_state_without_samples_counts_micro_batches_per_rank():
    loader = ShardedLoader(_blocks(), 4, rank=0, world_size=2, seed=3)
    moved = loader.load_state_dict({"epoch": 0, "position": 3, "world_size": 1, "micro_batch_size": 4})
    assert moved is not None and moved.samples_in_epoch == 12 and loader.state_dict()["samples"] == 12


def test_windows_over_several_shards_read_the_memory_map(tmp_path):
    files: dict = {}
    writer = SplitWriter(tmp_path, "train", np.dtype(np.uint16), 50, "xxh3_128", files)
    docs = [list(range(i * 10, i * 10 + 9)) + [9999] for i in range(20)]  # 20 documents of 10 tokens
    writer.add(docs)
    shards = writer.finish()
    assert [s.tokens for s in shards] == [50, 50, 50, 50] and sorted(files) == sorted(
        f"train_{i:05d}.{ext}" for i in range(4) for ext in ("bin", "idx")
    )
    windows = TokenWindows([tmp_path / s.bin for s in shards], [s.tokens for s in shards], np.dtype(np.uint16), 8)
    assert len(windows) == 4 * 6  # a shard's 2-token tail is not used
    flat = np.array([t for d in docs for t in d])
    got = windows.take(np.array([0, 6, 23]))
    assert got.dtype == torch.int64
    assert got.tolist() == [flat[0:8].tolist(), flat[50:58].tolist(), flat[190:198].tolist()]
    batches = list(validation_batches(windows, 2, rank=1, world_size=2, max_batches=0))
    assert len(batches) == 6 and _ids(batches[0]) == [int(flat[8]), int(flat[24])]  # samples 1 and 3
