"""Checkpoint failures. Those that a user must act on are :class:`~seo_dist.errors.UserError` (one line, exit 2)."""

from __future__ import annotations

from seo_dist.errors import UserError


class CheckpointError(Exception):
    """Base class of every checkpoint failure."""


class ManifestError(CheckpointError):
    """``manifest.json`` is missing or unreadable: the folder is not a committed checkpoint."""


class SignedManifestError(ManifestError):
    """The manifest's signature does not hold under the configured key: ``kind`` is ``unsigned`` or
    ``signature mismatch``. Nothing else of the folder is read."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (str(self), self.kind)


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file names an object outside the allowlist of what checkpoints hold: refused unread."""


class CheckpointSaveError(CheckpointError):
    """A save failed on some rank (I/O error, full disk); nothing was committed and ``latest`` is unchanged."""


class PeersLostAfterCommit(CheckpointError):
    """Rank 0 committed the checkpoint, but telling the other ranks failed (one died after writing its files).

    Not a :class:`CheckpointSaveError`: the folder at :attr:`path` is committed and loadable; the job still
    has to stop, because a rank is gone.
    """

    def __init__(self, path: object, message: str) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[type, tuple[object, str]]:
        return type(self), (self.path, str(self))


class DiskSpaceError(CheckpointSaveError):
    """Not enough free disk for the next checkpoint, even after pruning what retention allows."""


class NoCheckpointError(CheckpointError, UserError):
    """Nothing to load: no checkpoint folder at all under the given path."""


class NoValidCheckpointError(CheckpointError, UserError):
    """Checkpoints exist but none passed verification and loading: never silently start from scratch."""


class IncompatibleCheckpointError(CheckpointError, UserError):
    """The checkpoint cannot be loaded by this job as configured (e.g. a different world size with ZeRO)."""
