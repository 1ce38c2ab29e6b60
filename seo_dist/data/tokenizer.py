"""A byte-level BPE tokenizer trained on the corpus (cached), or one loaded from a local directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from seo_dist.data.corpus import EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, Corpus, format_record
from seo_dist.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TOKENIZER_FORMAT_VERSION = 1
TOKENIZER_SAMPLE_CHARS = 32_000_000
"""A trained tokenizer learns from the first documents of the corpus up to this many characters (all of a
small corpus): deterministic, and bounded in time and memory whatever the corpus size."""


def cache_dir() -> Path:
    """Where trained tokenizers are cached: ``$SEO_DIST_CACHE`` or ``~/.cache/seo_dist``."""
    return Path(os.environ.get("SEO_DIST_CACHE", Path.home() / ".cache" / "seo_dist"))


def bounded_sample(texts: Iterable[str], max_chars: int = TOKENIZER_SAMPLE_CHARS) -> Iterator[str]:
    """The first texts, up to ``max_chars`` characters in all (at least one)."""
    total = 0
    for text in texts:
        yield text
        total += len(text)
        if total >= max_chars:
            return


def tokenizer_hash(tok: PreTrainedTokenizerFast) -> str:
    """sha256 of the tokenizer's serialized model and its end-of-text id: equal iff the ids mean the same."""
    body = f"{tok.backend_tokenizer.to_str()}\neos={tok.eos_token_id}"
    return hashlib.sha256(body.encode()).hexdigest()


def train_tokenizer(corpus: Corpus, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE from the corpus's first records (:data:`TOKENIZER_SAMPLE_CHARS`)."""
    return train_tokenizer_on(bounded_sample(format_record(r) for r in corpus.records), vocab_size)


def train_tokenizer_on(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with seo_dist's special tokens trained on ``texts`` (each ending in end-of-text)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )
    tok.model_max_length = 1_000_000
    return tok


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)  # type: ignore[return-value]
    except (OSError, ValueError) as e:
        raise UserError(f"tokenizer directory {str(path)!r} cannot be loaded: {str(e).splitlines()[0]}") from None


def get_tokenizer(corpus: Corpus, vocab_size: int, local_dir: str | None = None) -> PreTrainedTokenizerFast:
    """The configured tokenizer: ``local_dir`` if given, else the cached BPE for (corpus, vocab_size).

    Training is deterministic, so concurrent ranks that miss the cache produce the same files; the
    cache entry is published with an atomic rename and a losing rank simply uses the winner's.
    """
    if local_dir is not None:
        return load_tokenizer(local_dir)
    key = hashlib.sha256(f"{corpus.sha256}:{vocab_size}:{TOKENIZER_FORMAT_VERSION}".encode()).hexdigest()[:16]
    target = cache_dir() / f"tokenizer-{key}"
    if (target / "tokenizer.json").is_file():
        return load_tokenizer(target)
    tok = train_tokenizer(corpus, vocab_size)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        tok.save_pretrained(str(tmp))
        try:
            os.rename(tmp, target)
        except OSError:  # another rank or job published it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # an unwritable cache only costs a retrain next time
    return tok
