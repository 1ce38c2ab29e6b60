"""What can go wrong in an export, and the exit code each failure maps to on the command line.

- :class:`CorruptCheckpointError` (exit 1): the input is a checkpoint but a file is damaged, missing or
  does not match its manifest. The message starts with the file's name, so the user knows what to restore.
- :class:`NotACheckpointError` / :class:`UnsupportedCheckpointError` (exit 2, a
  :class:`~seo_dist.errors.UserError`): the path or the kind of checkpoint is wrong, not the bytes.
"""

from __future__ import annotations

from seo_dist.errors import UserError


class ExportError(Exception):
    """Base class of every consolidation failure."""


class CorruptCheckpointError(ExportError):
    """A checkpoint file is damaged or inconsistent; ``file`` names it (relative to the checkpoint folder)."""

    exit_code = 1

    def __init__(self, file: str, detail: str) -> None:
        super().__init__(f"{file}: {detail}")
        self.file = file
        self.detail = detail


class NotACheckpointError(ExportError, UserError):
    """The given path holds no checkpoint at all."""


class UnsupportedCheckpointError(ExportError, UserError):
    """A checkpoint whose layout this exporter does not handle (e.g. tensor or pipeline parallel shards)."""
