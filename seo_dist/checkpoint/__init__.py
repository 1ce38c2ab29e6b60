"""Sharded, hash-validated, atomically committed checkpoints (DeepSpeed-compatible layout).

Layer 1 (no DeepSpeed): :mod:`.hashing`, :mod:`.storage`, :mod:`.manifest`, :mod:`.commit`, :mod:`.verify`,
:mod:`.retention`, :mod:`.index`, and for asynchronous saves :mod:`.staging` (host copies) and :mod:`.async_save`
(the writer thread); :mod:`.faults` injects write failures. Layer 2: :mod:`.deepspeed_engine` (a DeepSpeed
``CheckpointEngine``) and :mod:`.torch_backend`. The brief's API: :class:`CheckpointStrategy`, :class:`CheckpointManager`,
:class:`AdvancedCheckpointManager`. Names are imported lazily so that ``seo-dist verify`` stays light.
"""

from __future__ import annotations

from seo_dist._lazy import lazy_getattr

_PUBLIC = {
    "CheckpointStrategy": "seo_dist.checkpoint.strategy",
    "CheckpointManager": "seo_dist.checkpoint.manager",
    "AdvancedCheckpointManager": "seo_dist.checkpoint.manager",
    "CheckpointInfo": "seo_dist.checkpoint.retention",
    "Manifest": "seo_dist.checkpoint.manifest",
    "verify_checkpoint": "seo_dist.checkpoint.verify",
    "VerifyReport": "seo_dist.checkpoint.verify",
    "CheckpointError": "seo_dist.checkpoint.errors",
    "CheckpointSaveError": "seo_dist.checkpoint.errors",
    "DiskSpaceError": "seo_dist.checkpoint.errors",
    "PeersLostAfterCommit": "seo_dist.checkpoint.errors",
    "NoCheckpointError": "seo_dist.checkpoint.errors",
    "NoValidCheckpointError": "seo_dist.checkpoint.errors",
    "IncompatibleCheckpointError": "seo_dist.checkpoint.errors",
}

__all__ = list(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC)
