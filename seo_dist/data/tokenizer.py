"""A byte-level BPE tokenizer trained on the corpus (cached), or one loaded from a local directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from seo_dist.data.corpus import EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, Corpus, format_record
from seo_dist.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TOKENIZER_FORMAT_VERSION = 1


def cache_dir() -> Path:
    """Where trained tokenizers are cached: ``$SEO_DIST_CACHE`` or ``~/.cache/seo_dist``."""
    return Path(os.environ.get("SEO_DIST_CACHE", Path.home() / ".cache" / "seo_dist"))


def train_tokenizer(corpus: Corpus, vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        (format_record(r) for r in corpus.records),
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
