"""Export: ZeRO checkpoint shards -> a Hugging Face model folder (safetensors, config, tokenizer, manifest).

``consolidate_checkpoint(ckpt_dir, out_dir, dtype="fp32", max_shard_size="5GB") -> ConsolidationResult`` is the
one entry point (its ``path`` is the model folder): the trainer calls it for its final model, and
``seo-dist consolidate`` / ``python -m seo_dist.export`` are its command line. ``seo_dist.export.consolidate``
is the module that holds it. Names are imported lazily: ``import seo_dist.export`` costs nothing.
"""

from __future__ import annotations

from seo_dist._lazy import lazy_getattr

_PUBLIC = {
    "consolidate_checkpoint": "seo_dist.export.consolidate",
    "ConsolidationResult": "seo_dist.export.consolidate",
    "CorruptCheckpointError": "seo_dist.export.errors",
    "NotACheckpointError": "seo_dist.export.errors",
    "UnsupportedCheckpointError": "seo_dist.export.errors",
    "read_weights": "seo_dist.export.readers",
}

__all__ = list(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC)
