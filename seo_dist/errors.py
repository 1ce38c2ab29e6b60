"""Exceptions that mean "the user's input is wrong", which entry points turn into one line and exit 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, command line, files on disk): exit code 2, no traceback."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration key or value is wrong. The message names the key and how to fix it."""
