"""The rank-sharded, resumable micro-batch loader over fixed-length samples, and validation batches.

Samples come from a :class:`SampleSource`: the memory-mapped windows of a prepared dataset
(:class:`~seo_dist.data.shards.TokenWindows`), or an in-memory ``[n, seq_len]`` tensor of blocks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from seo_dist.data.corpus import format_record

TRACE_ENV = "SEO_DIST_DATA_TRACE"
"""Debugging aid: a file path; every rank appends ``{"epoch", "start", "ids"}`` per micro-batch to
``<path>.rank<r>`` (the global sample ids it consumed)."""


class SampleSource(Protocol):
    def __len__(self) -> int: ...

    def take(self, indices: np.ndarray) -> torch.Tensor:
        """int64 ``[len(indices), seq_len]`` samples."""
        ...


class TensorSamples:
    """An in-memory ``[n, seq_len]`` tensor of blocks as a :class:`SampleSource`."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def take(self, indices: np.ndarray) -> torch.Tensor:
        return self.blocks[torch.from_numpy(np.asarray(indices, dtype=np.int64))]


def as_source(samples: SampleSource | torch.Tensor) -> SampleSource:
    return TensorSamples(samples) if isinstance(samples, torch.Tensor) else samples


def pack_blocks(records: list[dict], tokenizer, seq_len: int) -> torch.Tensor:
    """Tokenize, concatenate and cut into ``[num_blocks, seq_len]`` int64 blocks (the tail is dropped)."""
    ids = tokenizer([format_record(r) for r in records], add_special_tokens=False)["input_ids"]
    flat = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)
    n = flat.numel() // seq_len
    return flat[: n * seq_len].view(n, seq_len)


@dataclass(frozen=True, slots=True)
class ResumedPosition:
    """Where a loader saved at another world or micro-batch size continues (see :meth:`ShardedLoader.load_state_dict`)."""

    from_world_size: int
    to_world_size: int
    epoch: int
    samples_in_epoch: int
    """Samples of the epoch's order the saving ranks had consumed together: the next one is the next sample."""
    position: int
    """Whole micro-batches per rank at the new world size that ``samples_in_epoch`` makes."""
    exact: bool
    """The new run continues at exactly the next sample (always, since the position is a global sample count)."""

    def describe(self) -> str:
        return (
            f"saved by {self.from_world_size} rank(s), resumed by {self.to_world_size}: the data order continues "
            f"at sample {self.samples_in_epoch} of epoch {self.epoch}"
        )


@dataclass
class LoaderState:
    epoch: int = 0
    samples: int = 0
    """Samples of ``epoch``'s order consumed by the whole job (all ranks together)."""


class ShardedLoader:
    """Infinite micro-batch stream over the samples; the state is one global position, equal on every rank.

    Every epoch draws a permutation of the sample indices from ``seed + epoch`` (identical on all ranks,
    ``int32`` when it fits). The whole job consumes the permutation in order: each call of
    :meth:`next_batch` (one micro-batch per rank, every rank calls it together) consumes the next
    ``world_size * micro_batch_size`` samples, rank ``r`` taking the ``r``-th slice of ``micro_batch_size``.
    An optimizer step of ``grad_accum`` micro-batches therefore consumes the next ``global batch =
    world_size * micro_batch_size * grad_accum`` samples, whatever the split of that global batch into
    ranks, micro-batches and accumulation: a resume with another world or micro-batch size but the same
    global batch trains on exactly the same samples at every step. An epoch is the largest multiple of
    the global batch that fits in the samples (the short tail is not used in that epoch).
    """

    def __init__(
        self,
        samples: SampleSource | torch.Tensor,
        micro_batch_size: int,
        *,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool = True,
        grad_accum: int = 1,
    ) -> None:
        self.source = as_source(samples)
        global_batch = micro_batch_size * world_size * grad_accum
        self.epoch_samples = len(self.source) // global_batch * global_batch
        if self.epoch_samples < 1:
            raise ValueError(
                f"{len(self.source)} samples cannot feed one step of {world_size} rank(s) x micro_batch_size "
                f"{micro_batch_size} x grad_accum {grad_accum}; use a smaller train.micro_batch_size or "
                "train.seq_len, or more data"
            )
        self.micro_batch_size = micro_batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.per_call = micro_batch_size * world_size
        self.batches_per_epoch = self.epoch_samples // self.per_call
        self.state = LoaderState()
        self._order = self._epoch_order(0)
        trace = os.environ.get(TRACE_ENV)
        self._trace = f"{trace}.rank{rank}" if trace else None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        n = len(self.source)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        dtype = torch.int32 if n < 2**31 else torch.int64
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch), dtype=dtype).numpy()

    @property
    def epoch(self) -> int:
        return self.state.epoch

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.state.samples + self.per_call > self.epoch_samples:
            self.state = LoaderState(epoch=self.state.epoch + 1, samples=0)
            self._order = self._epoch_order(self.state.epoch)
        start = self.state.samples + self.rank * self.micro_batch_size
        idx = self._order[start : start + self.micro_batch_size]
        if self._trace is not None:
            self._record(start, idx)
        self.state.samples += self.per_call
        input_ids = self.source.take(idx)
        return {"input_ids": input_ids, "labels": input_ids}

    def _record(self, start: int, idx: np.ndarray) -> None:
        assert self._trace is not None
        with open(self._trace, "a") as f:
            f.write(json.dumps({"epoch": self.state.epoch, "start": start, "ids": idx.tolist()}) + "\n")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.state.epoch,
            "samples": self.state.samples,
            "position": self.state.samples // self.per_call,
            "world_size": self.world_size,
            "micro_batch_size": self.micro_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> ResumedPosition | None:
        """Continue at the next sample after ``state``; None, or where a state saved at another world or
        micro-batch size continues (the same global sample: nothing is repeated or skipped).

        A state without ``samples`` (written before it was kept) counts ``position`` micro-batches per rank.
        """
        epoch = int(state["epoch"])
        saved_world = int(state.get("world_size", self.world_size))
        saved_batch = int(state.get("micro_batch_size", self.micro_batch_size))
        samples = int(state["samples"]) if "samples" in state else int(state["position"]) * saved_batch * saved_world
        moved = None
        if (saved_world, saved_batch) != (self.world_size, self.micro_batch_size):
            moved = ResumedPosition(saved_world, self.world_size, epoch, samples, samples // self.per_call, True)
        self.state = LoaderState(epoch=epoch, samples=samples)
        self._order = self._epoch_order(epoch)
        return moved


def validation_batches(
    samples: SampleSource | torch.Tensor, micro_batch_size: int, rank: int, world_size: int, max_batches: int
) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's fixed validation micro-batches (same every evaluation); ``max_batches=0`` means all."""
    source = as_source(samples)
    n = (len(source) // world_size) // micro_batch_size  # equal on every rank (ZeRO-3 forwards are collective)
    if max_batches:
        n = min(n, max_batches)
    for i in range(n):
        # rank r takes samples r, r + world, r + 2 * world, ...
        idx = np.arange(i * micro_batch_size, (i + 1) * micro_batch_size, dtype=np.int64) * world_size + rank
        chunk = source.take(idx)
        yield {"input_ids": chunk, "labels": chunk}
