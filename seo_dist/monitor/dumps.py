"""What a rank writes when a hang is found: every thread's Python stack and the flight-recorder trace.

The flight recorder (``torch._C._distributed_c10d``) lists this rank's recent collectives and which ones
were started but never completed; gloo and NCCL fill it. Absent from a torch build, it is left out.
"""

from __future__ import annotations

import json
import pickle
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from seo_dist.fileio import atomic_write

RANK_DUMP = "rank_{rank}.txt"


def thread_stacks() -> str:
    """All threads' Python stacks, innermost call last, each headed by the thread's name."""
    names = {t.ident: t for t in threading.enumerate()}
    out = []
    for ident, frame in sys._current_frames().items():
        thread = names.get(ident)
        label = f"{thread.name}{' (daemon)' if thread.daemon else ''}" if thread else "unknown"
        out.append(f"--- thread {label}, id {ident}\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(out)


def flight_recorder() -> dict[str, Any] | None:
    """This rank's flight-recorder trace (collectives, their state and call stacks), or None."""
    try:
        import torch._C._distributed_c10d as c10d

        dump_json = getattr(c10d, "_dump_fr_trace_json", None)
        if dump_json is not None:
            return json.loads(dump_json())
        raw = c10d._dump_fr_trace()  # type: ignore[attr-defined]
        return pickle.loads(raw) if raw else None  # noqa: S301 - this process's own trace
    except Exception:  # noqa: BLE001 - a build without it, or no process group
        return None


def _describe_collectives(trace: dict[str, Any]) -> str:
    lines = [f"process groups: {json.dumps(trace.get('pg_status', {}), default=str)}"]
    for entry in trace.get("entries", []):
        frames = " <- ".join(f"{f.get('name')} ({Path(str(f.get('filename'))).name}:{f.get('line')})"
                             for f in entry.get("frames", [])[:6])  # fmt: skip
        lines.append(f"#{entry.get('collective_seq_id', entry.get('record_id'))} {entry.get('profiling_name')} "
                     f"state={entry.get('state')} pg={entry.get('pg_id')}: {frames}")  # fmt: skip
    return "\n".join(lines)


def write_rank_dump(folder: Path, rank: int, header: dict[str, Any]) -> Path:
    """``folder/rank_<rank>.txt``: the header (who, where, the verdict), the stacks, the collectives."""
    text = [f"{k}: {json.dumps(v, default=str) if isinstance(v, dict | list) else v}" for k, v in header.items()]
    text += ["", "=== Python stacks of every thread", thread_stacks()]
    trace = flight_recorder()
    text += ["", "=== flight recorder (this rank's recent collectives)"]
    text.append(_describe_collectives(trace) if trace else "not available")
    path = folder / RANK_DUMP.format(rank=rank)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(text) + "\n")
    return path
