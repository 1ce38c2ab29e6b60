"""Streaming readers of the inputs of ``prepare-data``: one document at a time, never a whole file.

Formats, chosen by content, ``.gz`` (gzip) or not:

- JSONL of SEO records (``title``, ``keywords``, ``summary``, ``meta_description``): the text is the one the
  trainer has always used (:func:`~seo_dist.data.corpus.record_text`); the document id is the record's
  ``url``, else its ``id``, else ``<file name>:<line>``.
- JSONL with a ``text`` field: that text; the id is ``id``, else ``<file name>:<line>``.
- Plain text (a name ending in ``.txt`` or ``.txt.gz``): documents are blocks separated by one or more
  blank lines (a file without blank lines is one document); the id is ``<file name>:<block number>``.

The document id decides the validation split, so a document never moves between splits whatever the order
or number of workers. Every byte read is hashed on the way (the inputs' hashes in the manifest cost no
second pass).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seo_dist.checkpoint.hashing import DEFAULT_ALGORITHM, new_hasher
from seo_dist.data.corpus import REQUIRED_FIELDS, record_text
from seo_dist.errors import UserError


@dataclass(frozen=True, slots=True)
class Document:
    doc_id: str
    text: str


@dataclass
class InputStats:
    """What was read from one input file."""

    name: str
    size: int = 0
    hash: str = ""
    documents: int = 0
    skipped: int = 0
    """Malformed lines skipped (``--skip-bad``)."""
    skipped_lines: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "hash": self.hash, "documents": self.documents,
                "skipped": self.skipped}  # fmt: skip


class _HashingReader(io.RawIOBase):
    """A read-only binary file that hashes and counts every byte read from it."""

    def __init__(self, raw: io.BufferedReader, algorithm: str) -> None:
        self._raw = raw
        self.hasher = new_hasher(algorithm)
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            view = memoryview(buffer)[:n]
            self.hasher.update(view)
            self.size += n
        return n or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


def _lines(path: Path, stats: InputStats, algorithm: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a possibly gzipped file; fills ``stats`` size and hash once at its end."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise UserError(f"prepare-data: cannot read {str(path)!r}: {e.strerror}") from None
    reader = _HashingReader(raw, algorithm)
    buffered = io.BufferedReader(reader, buffer_size=1 << 20)
    stream: Any = buffered
    lineno = 0
    try:
        if buffered.peek(2)[:2] == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=buffered, mode="rb")
        for lineno, line in enumerate(stream, 1):  # noqa: B007 - lineno is read in the except clauses
            yield lineno, line.decode()
        buffered.read()  # a gzip stream may stop before the file's end: hash every byte
    except UnicodeDecodeError:
        raise UserError(f"prepare-data: {path}:{lineno + 1}: not UTF-8 text") from None
    except (OSError, EOFError) as e:
        raise UserError(f"prepare-data: cannot read {str(path)!r}: {e}") from None
    finally:
        stream.close()
    stats.size, stats.hash = reader.size, reader.hasher.hexdigest()


def _json_documents(path: Path, stats: InputStats, skip_bad: bool, algorithm: str) -> Iterator[Document]:
    for lineno, line in _lines(path, stats, algorithm):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if skip_bad:
                stats.skipped += 1
                if len(stats.skipped_lines) < 10:
                    stats.skipped_lines.append(lineno)
                continue
            raise UserError(f"prepare-data: {where}: not JSON ({e.msg}); fix the line or pass --skip-bad") from None
        yield _record_document(rec, where, f"{path.name}:{lineno}")


def _record_document(rec: Any, where: str, fallback_id: str) -> Document:
    if not isinstance(rec, dict):
        raise UserError(f"prepare-data: {where}: a JSON object is expected, got {type(rec).__name__}")
    if "text" in rec and not all(f in rec for f in REQUIRED_FIELDS):
        if not isinstance(rec["text"], str):
            raise UserError(f"prepare-data: {where}: field 'text' must be a string")
        return Document(str(rec.get("id", fallback_id)), rec["text"])
    missing = [f for f in REQUIRED_FIELDS if f not in rec]
    if missing:
        raise UserError(
            f"prepare-data: {where}: missing field(s) {', '.join(missing)} (an SEO record needs "
            f"{', '.join(REQUIRED_FIELDS)}; other JSONL needs a 'text' field)"
        )
    return Document(str(rec.get("url", rec.get("id", fallback_id))), record_text(rec))


def _text_documents(path: Path, stats: InputStats, algorithm: str) -> Iterator[Document]:
    block: list[str] = []
    number = 0
    for _, line in _lines(path, stats, algorithm):
        if line.strip():
            block.append(line)
            continue
        if block:
            yield Document(f"{path.name}:{number}", "".join(block).rstrip("\n"))
            number += 1
            block = []
    if block:
        yield Document(f"{path.name}:{number}", "".join(block).rstrip("\n"))


def is_text_file(path: Path) -> bool:
    return path.name.endswith((".txt", ".txt.gz"))


def read_documents(
    path: Path, stats: InputStats, *, skip_bad: bool = False, algorithm: str = DEFAULT_ALGORITHM
) -> Iterator[Document]:
    """The documents of one input, streamed; ``stats`` gets its size, hash and counts once it is read to the end."""
    docs = (
        _text_documents(path, stats, algorithm)
        if is_text_file(path)
        else _json_documents(path, stats, skip_bad, algorithm)
    )
    for doc in docs:
        stats.documents += 1
        yield doc


def check_inputs(paths: list[Path]) -> None:
    """Every input exists and is a readable file (before anything is written)."""
    if not paths:
        raise UserError("prepare-data: no input files given")
    for path in paths:
        if not path.is_file():
            raise UserError(f"prepare-data: input {str(path)!r} is not a file")
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise UserError(f"prepare-data: cannot read {str(path)!r}: {e.strerror}") from None
