"""Exceptions that mean "the user's input is wrong", which entry points turn into one line and exit 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, command line, files on disk): exit code 2, no traceback."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration key or value is wrong. The message names the key and how to fix it."""


def error_line(error: BaseException) -> str:
    """``"OSError: [Errno 28] No space left on device"``: an exception as one line, its type first."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
