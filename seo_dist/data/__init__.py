"""The SEO corpus shipped with seo_dist, its tokenizer, and the rank-sharded loader."""

from seo_dist.data.corpus import Corpus, format_prompt, format_record, load_corpus, split_records
from seo_dist.data.loader import ShardedLoader, pack_blocks, validation_batches
from seo_dist.data.tokenizer import get_tokenizer

__all__ = [
    "Corpus",
    "ShardedLoader",
    "format_prompt",
    "format_record",
    "get_tokenizer",
    "load_corpus",
    "pack_blocks",
    "split_records",
    "validation_batches",
]
