"""The job's data as the trainer uses it: the prepared dataset, its tokenizer, the loader and validation.

``data.dataset`` names a folder written by ``seo-dist prepare-data``; otherwise ``data.corpus`` (default: the
shipped corpus) is prepared once into the cache (:mod:`seo_dist.data.cache`). Every rank opens the same
memory-mapped samples; the :class:`~seo_dist.data.ShardedLoader` hands each rank its share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seo_dist import dist
from seo_dist.config import JobConfig
from seo_dist.data import ShardedLoader, validation_batches
from seo_dist.data.dataset import PreparedDataset
from seo_dist.errors import ConfigError


@dataclass
class JobData:
    dataset: PreparedDataset
    prepared: bool
    """Whether this start prepared ``data.corpus`` (False: the cache or ``data.dataset`` already had it)."""
    tokenizer: Any
    """The Hugging Face tokenizer the model trains with (``data.tokenizer``, else the dataset's own)."""
    train_samples: Any = None
    val_samples: Any = None
    loader: ShardedLoader | None = None

    def open_loader(self, job: JobConfig, info: dist.DistInfo) -> ShardedLoader:
        """This rank's loader over the training samples, and the validation samples; a split too small for
        the job's batch is a one-line error. (After the model is built: its limits are checked first.)"""
        t = job.train
        self.train_samples = self.dataset.windows("train", t.seq_len)
        self.val_samples = self.dataset.windows("val", t.seq_len)
        try:
            self.loader = ShardedLoader(self.train_samples, t.micro_batch_size, rank=info.rank,
                                        world_size=info.world_size, seed=t.seed, grad_accum=t.grad_accum)  # fmt: skip
        except ValueError as e:
            raise ConfigError(f"data: {e}") from None
        if len(self.val_samples) // info.world_size < t.micro_batch_size:
            raise ConfigError(
                f"the validation split has {len(self.val_samples)} samples, too few for "
                f"{info.world_size} rank(s) x train.micro_batch_size={t.micro_batch_size}; raise data.val_fraction"
            )
        return self.loader

    def event_fields(self) -> dict[str, Any]:
        """The ``dataset_ready`` event's fields."""
        ds = self.dataset
        return {
            "path": str(ds.path),
            "prepared": self.prepared,
            "train_tokens": ds.tokens("train"),
            "val_tokens": ds.tokens("val"),
            "train_samples": len(self.train_samples) if self.train_samples is not None else None,
            "tokenizer_hash": ds.tokenizer_hash,
        }


def open_job_data(job: JobConfig, info: dist.DistInfo) -> JobData:
    """The prepared dataset (``data.dataset``, or ``data.corpus`` prepared into the cache by local rank 0 while
    the others wait) and its tokenizer; :meth:`JobData.open_loader` adds the loader. Bad data raises one line."""
    from seo_dist.data.cache import prepare_cached
    from seo_dist.data.dataset import open_dataset
    from seo_dist.data.tokenizer import load_tokenizer, tokenizer_hash

    data = job.data
    own = load_tokenizer(data.tokenizer) if data.tokenizer is not None else None
    own_hash = tokenizer_hash(own) if own is not None else None
    path, prepared = Path(data.dataset or ""), False
    if data.dataset is None:
        path, prepared = prepare_cached(
            data.corpus, vocab_size=data.vocab_size, val_fraction=data.val_fraction,
            tokenizer_dir=data.tokenizer, tokenizer_hash=own_hash, local_rank=info.local_rank,
        )  # fmt: skip
    dataset = open_dataset(path, verify=data.verify, tokenizer_hash=own_hash, seq_len=job.train.seq_len)
    tokenizer = own if own is not None else load_tokenizer(dataset.tokenizer_dir)
    return JobData(dataset, prepared, tokenizer)


@torch.no_grad()
def validation_loss(engine: Any, val_samples: Any, job: JobConfig) -> float:
    """Mean validation loss over all ranks (every rank runs the same number of batches). Collective."""
    info = dist.get_dist_info()
    t = job.train
    was_training = engine.training
    engine.eval()
    total, count = 0.0, 0.0
    for batch in validation_batches(val_samples, t.micro_batch_size, info.rank, info.world_size, t.eval_batches):
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        total += engine(**batch).loss.float().item()
        count += 1
    if was_training:
        engine.train()
    total, count = dist.all_reduce_sum([total, count])
    return total / count
