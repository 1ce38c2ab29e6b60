"""Packed token blocks and a rank-sharded, resumable micro-batch loader."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seo_dist.data.corpus import format_record


def pack_blocks(records: list[dict], tokenizer, seq_len: int) -> torch.Tensor:
    """Tokenize, concatenate and cut into ``[num_blocks, seq_len]`` int64 blocks (the tail is dropped)."""
    ids = tokenizer([format_record(r) for r in records], add_special_tokens=False)["input_ids"]
    flat = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)
    n = flat.numel() // seq_len
    return flat[: n * seq_len].view(n, seq_len)


@dataclass(frozen=True, slots=True)
class ResumedPosition:
    """Where a loader saved at another world size continues (see :meth:`ShardedLoader.load_state_dict`)."""

    from_world_size: int
    to_world_size: int
    epoch: int
    samples_in_epoch: int
    """Samples of the epoch's order the saving ranks had consumed together."""
    position: int
    """Micro-batches per rank at the new world size."""
    exact: bool
    """False when ``samples_in_epoch`` is not a whole number of micro-batches of the new world: the position
    was rounded down and a few samples are seen twice."""

    def describe(self) -> str:
        rounded = "" if self.exact else " (rounded down to a whole micro-batch per rank: a few samples repeat)"
        return (
            f"saved by {self.from_world_size} rank(s), resumed by {self.to_world_size}: the data order continues "
            f"at sample {self.samples_in_epoch} of epoch {self.epoch}{rounded}"
        )


@dataclass
class LoaderState:
    epoch: int = 0
    position: int = 0
    """Micro-batches already consumed in ``epoch`` by this rank."""


class ShardedLoader:
    """Infinite micro-batch stream over this rank's share of the blocks.

    Every epoch draws a permutation from ``seed + epoch`` (identical on all ranks); rank ``r`` takes
    every ``world_size``-th block starting at ``r``, so ranks never see the same block in one epoch.
    ``state_dict()``/``load_state_dict()`` make the stream resume exactly where it stopped. In one epoch
    the ranks together consume the epoch's order from its start (rank ``r`` takes the ``r``-th of every
    ``world_size`` blocks), so a state saved at another world size maps to the same global sample position.
    """

    def __init__(
        self,
        blocks: torch.Tensor,
        micro_batch_size: int,
        *,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool = True,
    ) -> None:
        per_rank = blocks.shape[0] // world_size
        self.batches_per_epoch = per_rank // micro_batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{blocks.shape[0]} blocks cannot feed {world_size} rank(s) x micro_batch_size {micro_batch_size}; "
                "use a smaller train.micro_batch_size or train.seq_len"
            )
        self.blocks = blocks
        self.micro_batch_size = micro_batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.state = LoaderState()
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        n = self.blocks.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size][: self.batches_per_epoch * self.micro_batch_size]

    @property
    def epoch(self) -> int:
        return self.state.epoch

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.state.position >= self.batches_per_epoch:
            self.state = LoaderState(epoch=self.state.epoch + 1, position=0)
            self._order = self._epoch_order(self.state.epoch)
        start = self.state.position * self.micro_batch_size
        idx = self._order[start : start + self.micro_batch_size]
        self.state.position += 1
        input_ids = self.blocks[idx]
        return {"input_ids": input_ids, "labels": input_ids}

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.state.epoch,
            "position": self.state.position,
            "world_size": self.world_size,
            "micro_batch_size": self.micro_batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> ResumedPosition | None:
        """Continue where ``state`` stopped; None, or where a state saved at another world or micro-batch size continues.

        Within the epoch the data order continues from the same global sample; each world size drops its
        own short tail at the end of an epoch, and the global batch of a step changes with the world size.
        """
        epoch, position = int(state["epoch"]), int(state["position"])
        saved_world = int(state.get("world_size", self.world_size))
        saved_batch = int(state.get("micro_batch_size", self.micro_batch_size))
        moved = None
        if (saved_world, saved_batch) != (self.world_size, self.micro_batch_size):
            samples = position * saved_batch * saved_world
            per_batch = self.micro_batch_size * self.world_size
            position = samples // per_batch
            moved = ResumedPosition(saved_world, self.world_size, epoch, samples, position, samples % per_batch == 0)
        self.state = LoaderState(epoch=epoch, position=position)
        self._order = self._epoch_order(self.state.epoch)
        return moved


def validation_batches(blocks: torch.Tensor, micro_batch_size: int, rank: int, world_size: int, max_batches: int):
    """This rank's fixed validation micro-batches (same every evaluation); ``max_batches=0`` means all."""
    mine = blocks[rank::world_size]
    n = (blocks.shape[0] // world_size) // micro_batch_size  # equal on every rank (ZeRO-3 forwards are collective)
    if max_batches:
        n = min(n, max_batches)
    for i in range(n):
        chunk = mine[i * micro_batch_size : (i + 1) * micro_batch_size]
        yield {"input_ids": chunk, "labels": chunk}
