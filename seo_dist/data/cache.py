"""The prepared dataset a job trains on: ``data.dataset``, or ``data.corpus`` prepared once into a cache.

A corpus file is prepared into ``$SEO_DIST_DATA_CACHE`` (default ``$SEO_DIST_CACHE/datasets``, i.e.
``~/.cache/seo_dist/datasets``), in a folder keyed by the file's content hash and everything that changes
the ids (tokenizer, vocabulary size, validation fraction, format versions); a later start with the same
inputs finds it and only hashes the corpus file. On every node the local rank 0 prepares; the other ranks
wait for the folder to appear (it is published by an atomic rename) for at most
``$SEO_DIST_DATA_WAIT_S`` seconds (default 3600). Two nodes sharing the cache both prepare and the
second rename loses harmlessly: preparing is deterministic.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from seo_dist.checkpoint.hashing import DEFAULT_ALGORITHM, hash_file
from seo_dist.data.corpus import SHIPPED_CORPUS
from seo_dist.data.dataset import FORMAT_VERSION, MANIFEST, TOKENIZER_DIR
from seo_dist.data.tokenizer import TOKENIZER_FORMAT_VERSION, TOKENIZER_SAMPLE_CHARS, cache_dir
from seo_dist.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from seo_dist.config import DataConfig

DATA_CACHE_ENV = "SEO_DIST_DATA_CACHE"
WAIT_ENV = "SEO_DIST_DATA_WAIT_S"
DEFAULT_WAIT_S = 3600.0


def data_cache_dir() -> Path:
    env = os.environ.get(DATA_CACHE_ENV)
    return Path(env) if env else cache_dir() / "datasets"


def cached_dataset_path(corpus: Path, vocab_size: int, val_fraction: float, tokenizer_hash: str | None) -> Path:
    """The cache folder of ``corpus`` prepared with these settings (hashes the corpus file)."""
    try:
        _, content = hash_file(corpus, DEFAULT_ALGORITHM)
    except OSError as e:
        raise UserError(f"data.corpus: cannot read {str(corpus)!r}: {e.strerror}") from None
    settings = (
        f"{content}:{tokenizer_hash or f'bpe{vocab_size}'}:{val_fraction!r}:{FORMAT_VERSION}:"
        f"{TOKENIZER_FORMAT_VERSION}:{TOKENIZER_SAMPLE_CHARS}"
    )
    key = hashlib.sha256(settings.encode()).hexdigest()[:16]
    stem = corpus.name.split(".")[0] or "corpus"
    return data_cache_dir() / f"{stem}-{key}"


def _wait_for(target: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (target / MANIFEST).is_file():
        if time.monotonic() > deadline:
            raise UserError(
                f"data.corpus: waited {timeout_s:g}s for local rank 0 to prepare {target}; it failed or is slow "
                f"(prepare it beforehand with seo-dist prepare-data and set data.dataset, or raise {WAIT_ENV})"
            )
        time.sleep(0.2)


def prepare_cached(
    corpus: str | Path | None,
    *,
    vocab_size: int,
    val_fraction: float,
    tokenizer_dir: str | Path | None,
    tokenizer_hash: str | None,
    local_rank: int,
) -> tuple[Path, bool]:
    """The cached prepared folder of ``corpus`` (default: the shipped one) and whether this call prepared it."""
    corpus = Path(corpus) if corpus is not None else SHIPPED_CORPUS
    target = cached_dataset_path(corpus, vocab_size, val_fraction, tokenizer_hash)
    if (target / MANIFEST).is_file():
        return target, False
    if local_rank != 0:
        _wait_for(target, float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S)))
        return target, False
    from seo_dist.data.prepare import PrepareOptions, prepare

    opts = PrepareOptions(
        inputs=(corpus,),
        out=target,
        tokenizer=Path(tokenizer_dir) if tokenizer_dir is not None else None,
        vocab_size=vocab_size,
        val_fraction=val_fraction,
    )
    try:
        prepare(opts)
    except UserError as e:
        if (target / MANIFEST).is_file():  # another job or node published it first
            return target, False
        raise UserError(str(e).replace("prepare-data:", "data.corpus:", 1)) from None
    return target, True


def job_tokenizer(data: DataConfig) -> PreTrainedTokenizerFast:
    """The tokenizer a job with this ``data`` section trains with (without preparing anything)."""
    from seo_dist.data.tokenizer import get_tokenizer, load_tokenizer

    if data.tokenizer is not None:
        return load_tokenizer(data.tokenizer)
    if data.dataset is not None:
        return load_tokenizer(Path(data.dataset) / TOKENIZER_DIR)
    corpus = Path(data.corpus) if data.corpus is not None else SHIPPED_CORPUS
    cached = cached_dataset_path(corpus, data.vocab_size, data.val_fraction, None) / TOKENIZER_DIR
    if cached.is_dir():
        return load_tokenizer(cached)
    from seo_dist.data.corpus import load_corpus

    return get_tokenizer(load_corpus(corpus), data.vocab_size)  # the same bounded sample as prepare's
