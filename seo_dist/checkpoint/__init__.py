"""Sharded, hash-validated, atomically committed checkpoints (DeepSpeed-compatible layout).

Public API: :class:`CheckpointStrategy`, :class:`CheckpointManager` (the facade, :mod:`.manager`) and
:class:`AdvancedCheckpointManager`.

Modules that import neither DeepSpeed nor torch, so that ``seo-dist verify`` and ``seo-dist ls`` stay light:
:mod:`.layout` (names on disk), :mod:`.hashing`, :mod:`.storage` (publishing a folder, free space, sweeping), :mod:`.manifest`,
:mod:`.verify`, :mod:`.retention` (what to keep, pure functions), :mod:`.index` (``latest``, ``index.json``),
:mod:`.selection` (what a load tries), :mod:`.errors`, :mod:`.faults` (injected write failures).

The machinery behind the manager (torch, and DeepSpeed only where noted): :mod:`.commit` (the commit protocol),
:mod:`.saving` (the save pipeline), :mod:`.staging` and :mod:`.async_save` (host copies, the writer thread),
:mod:`.root_keeper` (disk space, ``latest``, retention, index around each commit), :mod:`.loading` (load with
fallback), :mod:`.events`, :mod:`.backend` (the :class:`~.backend.CheckpointBackend` protocol and its choice),
:mod:`.torch_backend` (a plain ``nn.Module``) and :mod:`.deepspeed_backend` (imports DeepSpeed: the DeepSpeed
backend and the ``CheckpointEngine`` it installs). Names are imported lazily.
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
