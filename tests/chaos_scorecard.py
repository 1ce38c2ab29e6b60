"""The chaos suite's scorecard: each fault test records what it did; this script prints the Markdown table.

Tests call :func:`record` for every trial they ran; nothing is written unless ``SEO_DIST_CHAOS_SCORECARD``
names a file (JSON lines, appended). After a run::

    SEO_DIST_CHAOS_SCORECARD=/tmp/card.jsonl python -m pytest -m chaos tests/test_chaos_*.py
    python tests/chaos_scorecard.py /tmp/card.jsonl

prints one row per fault: trials, data lost (summed; must be 0) and the outcomes seen.
"""

from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict
from pathlib import Path

ENV = "SEO_DIST_CHAOS_SCORECARD"


def record(fault: str, result: str, *, trials: int = 1, data_lost: int = 0) -> None:
    """Append one entry (``data_lost``: committed checkpoints or logged steps that a restart could not get back)."""
    path = os.environ.get(ENV)
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"fault": fault, "trials": trials, "data_lost": data_lost, "result": result}) + "\n")


def table(path: Path) -> str:
    rows: OrderedDict[str, dict] = OrderedDict()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        e = json.loads(line)
        row = rows.setdefault(e["fault"], {"trials": 0, "data_lost": 0, "results": []})
        row["trials"] += e["trials"]
        row["data_lost"] += e["data_lost"]
        if e["result"] not in row["results"]:
            row["results"].append(e["result"])
    out = ["| fault | trials | data lost | result |", "|---|---|---|---|"]
    for fault, row in rows.items():
        out.append(f"| {fault} | {row['trials']} | {row['data_lost']} | {'; '.join(row['results'])} |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} SCORECARD.jsonl")
    print(table(Path(sys.argv[1])))
