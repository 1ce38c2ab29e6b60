"""Checks of the alert settings, kept free of heavy imports (the config loader runs them)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from urllib.parse import urlsplit


def webhook_problem(url: str | None) -> str | None:
    """Why ``monitor.alert_webhook`` is unusable, or None."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        return f"monitor.alert_webhook must be an http(s) URL such as https://hooks.example.com/T000/B000, got {url!r}"
    return None


def command_problem(command: str | None) -> str | None:
    """Why ``monitor.alert_command`` is unusable (empty, bad quoting, program not found), or None."""
    if command is None:
        return None
    try:
        words = shlex.split(command)
    except ValueError as e:
        return f"monitor.alert_command {command!r} cannot be split into words ({e}); fix the quoting"
    if not words:
        return "monitor.alert_command is empty; give a command such as 'python notify.py' or leave it unset"
    program = words[0]
    if shutil.which(program) is None and not (Path(program).is_file() and "/" in program):
        return f"monitor.alert_command: program {program!r} not found on PATH; give an installed command or a path"
    return None


def command_words(command: str) -> list[str]:
    return shlex.split(command)
