"""Small JSON helpers shared by the tracking modules: tolerant JSONL reading, compact JSONL lines, and the
conversion of values to JSON (non-finite floats become strings; see :mod:`seo_dist.tracking.metrics` for
metric values, which become ``null``). Whole JSON files are replaced with :func:`seo_dist.fileio.atomic_write_json`."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a line that is not a JSON object (a write cut short by a crash) is skipped."""
    try:
        f = open(path)
    except FileNotFoundError:
        return
    with f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


def dumps_line(row: dict[str, Any]) -> str:
    """One compact JSONL line; ``allow_nan=False`` so a stray NaN fails loudly instead of writing invalid JSON."""
    return json.dumps(row, separators=(",", ":"), allow_nan=False, default=str) + "\n"


def json_safe(value: Any) -> Any:
    """``value`` made JSON-clean for events and metadata: non-finite floats become strings, paths and
    unknown objects their ``str``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
