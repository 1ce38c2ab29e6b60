"""Names of everything seo_dist writes under ``<experiment>/checkpoints/``, in one place.

```
checkpoints/
  step_00000100/            a committed checkpoint: its files + manifest.json (written last)
  step_00000200.tmp/        a save in progress (or abandoned by a crash: swept at start)
  latest                    text: name of the newest committed checkpoint (DeepSpeed reads it too)
  index.json                committed checkpoints with step, epoch, metrics; best per tracked metric
```
"""

from __future__ import annotations

import re
from pathlib import Path

from seo_dist.tracking.layout import CHECKPOINTS_DIR

MANIFEST = "manifest.json"
LATEST = "latest"
INDEX = "index.json"
STAGING_SUFFIX = ".tmp"
"""Any name ending in this is unfinished work: never loaded, removed by :func:`~.storage.sweep_abandoned`."""
STEP_PREFIX = "step_"
RANK_STATE_FILE = "seo_dist_rank_{rank:05d}.pt"
"""Per-rank seo_dist state: trainer step/epoch, data loader position, RNG states, written by every rank."""
TORCH_STATE_FILE = "model_state.pt"
"""Model + optimizer + scheduler of a plain ``torch.nn.Module`` (no DeepSpeed), written by rank 0."""

_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def checkpoint_name(step: int) -> str:
    """``step_00000100``: zero-padded so that names sort like steps."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return f"{STEP_PREFIX}{step:08d}"


def staging_name(step: int) -> str:
    return checkpoint_name(step) + STAGING_SUFFIX


def parse_step(name: str) -> int | None:
    """The step of a committed checkpoint folder name, or None for anything else (staging folders included)."""
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


def rank_state_file(rank: int) -> str:
    return RANK_STATE_FILE.format(rank=rank)


def step_dirs(root: Path) -> list[Path]:
    """Folders named like committed checkpoints (with or without a manifest), oldest step first."""
    if not root.is_dir():
        return []
    found = [(parse_step(p.name), p) for p in root.iterdir() if p.is_dir()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def resolve_checkpoints_root(path: Path) -> Path:
    """The ``checkpoints/`` folder for an experiment directory or the folder itself."""
    sub = path / CHECKPOINTS_DIR
    return sub if sub.is_dir() else path
