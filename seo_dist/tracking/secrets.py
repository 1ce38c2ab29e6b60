"""What must never be copied into an experiment directory: secrets, recognised by name or by content.

The experiment directory is what people share, sync and upload, so the code snapshot, ``git_diff.patch`` and
every artifact the tracker copies pass through :class:`SecretFilter`. A file is left out when its name looks
like a credential (``.env*``, ``*.pem``, ``*.key``, SSH keys, ``.netrc``, ``.pypirc``, keystores, token and
credential files) or its text holds a token shape (a private-key block, an AWS access key id, a Hugging Face,
GitHub, Slack or wandb API key). Only the names of what was left out, and why, are ever recorded.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

SECRET_NAME_PATTERNS = (
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    "_netrc",
    ".pypirc",
    ".git-credentials",
    ".npmrc",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "credentials",
    "credentials.*",
    "*credentials*.json",
    "*credentials*.yaml",
    "token",
    "token.*",
    "*.token",
    "*_token",
    "*_token.*",
    "*-token",
    "*-token.*",
    "secret",
    "secret.*",
    "*.secret",
    "secrets.json",
    "secrets.yaml",
    "secrets.yml",
    "secrets.toml",
    "client_secret*.json",
    "service-account*.json",
    ".htpasswd",
)
"""File names (matched against the name and the relative path, case-insensitively) that are secrets by name."""

TOKEN_PATTERNS: tuple[tuple[str, re.Pattern[bytes]], ...] = (
    ("private key", re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----")),
    ("AWS access key id", re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("Hugging Face token", re.compile(rb"\bhf_[A-Za-z0-9]{30,}\b")),
    ("GitHub token", re.compile(rb"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}")),
    ("Slack token", re.compile(rb"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("OpenAI-style key", re.compile(rb"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}")),
    (
        "wandb API key",
        re.compile(rb"(?i)(?:wandb|api[_-]?key)[^\n]{0,40}?\b[0-9a-f]{40}\b|\b[0-9a-f]{40}\b[^\n]{0,40}?wandb"),
    ),
)
"""Token shapes searched in a file's bytes."""

SCAN_BYTES = 2_000_000
"""Files are scanned up to this size; the code snapshot copies nothing larger anyway."""


@dataclass(slots=True)
class LeftOut:
    """One file kept out of the experiment and why (never its content)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def token_in(data: bytes) -> str | None:
    """The kind of the first token shape found in ``data``, or None."""
    for kind, pattern in TOKEN_PATTERNS:
        if pattern.search(data):
            return kind
    return None


@dataclass(slots=True)
class SecretFilter:
    """Decides which files are secrets: the default name patterns plus ``extra_patterns`` (globs), and content."""

    extra_patterns: Sequence[str] = ()
    left_out: list[LeftOut] = field(default_factory=list)

    def name_reason(self, relpath: str) -> str | None:
        """Why ``relpath`` is excluded by its name (default patterns, then the configured ones), or None."""
        rel = PurePosixPath(relpath.replace("\\", "/"))
        name = rel.name.lower()
        for pattern in SECRET_NAME_PATTERNS:
            if fnmatch.fnmatchcase(name, pattern):
                return f"secret file name ({pattern})"
        for pattern in self.extra_patterns:
            if fnmatch.fnmatch(rel.as_posix(), pattern) or fnmatch.fnmatch(rel.name, pattern):
                return f"excluded by experiment.code_snapshot_exclude ({pattern})"
        return None

    def file_reason(self, path: Path, relpath: str) -> str | None:
        """Why the file at ``path`` (shown as ``relpath``) must not be copied, or None. Unreadable: excluded."""
        reason = self.name_reason(relpath)
        if reason is not None:
            return reason
        try:
            with open(path, "rb") as f:
                data = f.read(SCAN_BYTES)
        except OSError:
            return "unreadable (not scanned)"
        kind = token_in(data)
        return f"contains a {kind}" if kind else None

    def check(self, path: Path, relpath: str) -> bool:
        """True when the file may be copied; otherwise it is recorded in :attr:`left_out`."""
        reason = self.file_reason(path, relpath)
        if reason is None:
            return True
        self.left_out.append(LeftOut(relpath, reason))
        return False

    def secret_files_under(self, folder: Path, shown_as: str) -> list[LeftOut]:
        """Every secret file under ``folder`` (relative paths prefixed with ``shown_as``)."""
        found = []
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = f"{shown_as}/{p.relative_to(folder).as_posix()}"
                reason = self.file_reason(p, rel)
                if reason is not None:
                    found.append(LeftOut(rel, reason))
        return found


_DIFF_HEADER = re.compile(r"^diff --git a/(.+?) b/(.+)$")


def scrub_diff(patch: str, secret_filter: SecretFilter) -> tuple[str, list[LeftOut]]:
    """``patch`` without the file sections whose name or changed text looks like a secret; what was dropped."""
    sections: list[list[str]] = []
    for line in patch.splitlines(keepends=True):
        if line.startswith("diff --git ") or not sections:
            sections.append([])
        sections[-1].append(line)
    kept: list[str] = []
    dropped: list[LeftOut] = []
    for section in sections:
        m = _DIFF_HEADER.match(section[0].rstrip("\n"))
        name = m.group(2) if m else "(patch preamble)"
        reason = secret_filter.name_reason(name) if m else None
        if reason is None:
            kind = token_in("".join(section).encode(errors="surrogateescape"))
            reason = f"contains a {kind}" if kind else None
        if reason is None:
            kept.extend(section)
        else:
            dropped.append(LeftOut(name, reason))
    return "".join(kept), dropped


def describe(left_out: Iterable[LeftOut]) -> list[dict[str, str]]:
    return [item.to_dict() for item in left_out]
