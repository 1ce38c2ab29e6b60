"""Helpers shared by the tracking tests: a reader for wandb's offline ``.wandb`` files, strict JSON,
and a torchrun launcher for the 2-rank worker script (``helpers_tracking_worker.py``)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("helpers_tracking_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[1]

# wandb's transaction log: a LevelDB-style log with a 7-byte file header (":W&B", magic 0xBEE1, version 0),
# 32 KiB blocks, and 7-byte record headers (crc32, length, type: 1 full, 2 first, 3 middle, 4 last).
_WANDB_HEADER = b":W&B"
_BLOCK = 32 * 1024
_RECORD_HEADER = 7


def read_wandb_records(path: Path) -> list[Any]:
    """Every protobuf ``Record`` in an offline run's ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != _WANDB_HEADER:
        raise ValueError(f"{path} is not a wandb transaction log (header {data[:7]!r})")
    pos = 7
    payloads: list[bytes] = []
    pending = b""
    while pos + _RECORD_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:
            pos += left
            continue
        _crc, length, rtype = struct.unpack("<IHB", data[pos : pos + _RECORD_HEADER])
        if rtype == 0:
            pos += left
            continue
        chunk = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        pos += _RECORD_HEADER + length
        if rtype == 1:
            payloads.append(chunk)
        elif rtype == 2:
            pending = chunk
        elif rtype == 3:
            pending += chunk
        elif rtype == 4:
            payloads.append(pending + chunk)
            pending = b""
    records = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def wandb_history(records: list[Any]) -> list[dict[str, Any]]:
    """History rows (``run.log`` calls) as dicts, ``_step`` included."""
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item})
    return rows


def wandb_config(records: list[Any]) -> dict[str, Any]:
    """The run config as written in the run record and any later config records."""
    config: dict[str, Any] = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        for item in items:
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config


def strict_json_lines(path: Path) -> list[dict[str, Any]]:
    """Parse a JSONL file, failing on NaN/Infinity literals (not JSON) and on any bad line."""

    def reject(token: str) -> Any:
        raise ValueError(f"non-JSON constant {token} in {path}")

    return [json.loads(line, parse_constant=reject) for line in Path(path).read_text().splitlines() if line.strip()]


def tracking_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "WANDB_API_KEY"):
        env.pop(key, None)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def torchrun_command(nproc: int, *worker_args: str) -> list[str]:
    """``torchrun --standalone`` picks a free rendezvous port itself."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(WORKER),
        *worker_args,
    ]


def run_torchrun(cwd: Path, nproc: int, *worker_args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        torchrun_command(nproc, *worker_args),
        cwd=cwd,
        env=tracking_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def rank_results(out_dir: Path) -> dict[int, dict[str, Any]]:
    """``{rank: result}`` written by the worker script, one JSON file per rank."""
    return {int(p.stem.split("rank")[1]): json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))}
