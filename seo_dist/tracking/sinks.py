"""Metric sinks. They run on the tracker's background thread only, so they need no locking.

A sink receives rows whose values are already validated numbers, NaN and inf included: the JSONL sink
writes those as ``null`` (JSON has no NaN), TensorBoard and wandb receive the float itself.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Protocol

from seo_dist.fileio import atomic_write
from seo_dist.tracking.jsonio import dumps_line, iter_jsonl
from seo_dist.tracking.logger import ExperimentLogger

Values = dict[str, float | int]


class Sink(Protocol):
    name: str

    def write(self, step: int, epoch: int | None, wall_time: float, values: Values) -> None: ...

    def flush(self) -> None: ...

    def close(self, exit_code: int = 0) -> None: ...

    def truncate_after(self, step: int) -> int | None:
        """Forget everything logged after ``step`` (a resume from that step's checkpoint)."""


def json_value(value: float | int) -> float | int | None:
    """The JSONL form of a metric value: non-finite floats become ``null`` (JSON has no NaN/inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlSink:
    """``metrics/metrics.jsonl``: one object per ``log_metrics`` call, ``{"step", "epoch", "time", <name>: value}``."""

    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "a", buffering=1 << 16)

    def write(self, step: int, epoch: int | None, wall_time: float, values: Values) -> None:
        row: dict[str, Any] = {"step": step, "epoch": epoch, "time": round(wall_time, 6)}
        for k, v in values.items():
            row[k] = json_value(v)
        self._file.write(dumps_line(row))

    def flush(self) -> None:
        self._file.flush()

    def close(self, exit_code: int = 0) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def truncate_after(self, step: int) -> int:
        self._file.close()
        dropped = truncate_metrics_file(self.path, step)
        self._file = open(self.path, "a", buffering=1 << 16)
        return dropped


def truncate_metrics_file(path: Path, step: int) -> int:
    """Drop rows with ``step`` > ``step`` (and lines cut short by a crash); returns how many were dropped."""
    if not path.exists():
        return 0
    kept: list[str] = []
    total = 0
    with open(path) as f:
        total = sum(1 for line in f if line.strip())
    for row in iter_jsonl(path):
        if isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(dumps_line(row))
    atomic_write(path, "".join(kept))
    return total - len(kept)


class TensorBoardSink:
    """One event-file directory, ``logs/tensorboard``. A resume passes ``purge_step`` so TensorBoard drops
    the steps the previous run logged after the checkpoint it resumed from."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, purge_step: int | None = None, flush_secs: int = 10) -> None:
        self.log_dir = Path(log_dir)
        self.purge_step = purge_step
        self.flush_secs = flush_secs
        self._writer: Any = None

    def _open(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.purge_step, flush_secs=self.flush_secs)
        self.purge_step = None
        return self._writer

    def write(self, step: int, epoch: int | None, wall_time: float, values: Values) -> None:
        writer = self._writer or self._open()
        for k, v in values.items():
            writer.add_scalar(k, v, global_step=step, walltime=wall_time)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self, exit_code: int = 0) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def truncate_after(self, step: int) -> None:
        self.close()
        self.purge_step = step + 1


class WandbSink:
    """A wandb run under ``logs/wandb`` (offline unless configured online).

    ``reinit="create_new"`` keeps it apart from any run the user's own code has open. The same
    ``run_id`` with ``resume="allow"`` continues a run after a restart (offline: ``wandb sync`` merges
    the segments). A step at or below the run's last step is dropped by wandb itself.
    """

    name = "wandb"

    def __init__(
        self,
        wandb_dir_parent: Path,
        *,
        run_id: str,
        project: str,
        run_name: str,
        mode: str,
        config: dict[str, Any] | None = None,
    ) -> None:
        import wandb

        Path(wandb_dir_parent).mkdir(parents=True, exist_ok=True)
        self.run: Any = wandb.init(
            project=project,
            name=run_name,
            id=run_id,
            resume="allow",
            dir=str(wandb_dir_parent),
            mode=mode,  # type: ignore[arg-type]  # checked against wandb's modes in the config
            config=config or {},
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def write(self, step: int, epoch: int | None, wall_time: float, values: Values) -> None:
        data: dict[str, Any] = dict(values)
        if epoch is not None:
            data["epoch"] = epoch
        self.run.log(data, step=step)

    def flush(self) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

    def truncate_after(self, step: int) -> None:
        pass


class ConsoleSink:
    """A metrics line at most every ``interval`` steps: on stdout (when enabled) and in ``train.log``."""

    name = "console"

    def __init__(self, logger: ExperimentLogger, interval: int, to_stdout: bool) -> None:
        self.logger = logger
        self.interval = interval
        self.to_stdout = to_stdout
        self._last_step: int | None = None

    def write(self, step: int, epoch: int | None, wall_time: float, values: Values) -> None:
        if self._last_step is not None and 0 <= step - self._last_step < self.interval:
            return
        self._last_step = step
        parts = [f"step {step}"] + ([f"epoch {epoch}"] if epoch is not None else [])
        parts += [f"{k} {format_value(v)}" for k, v in values.items()]
        text = " | ".join(parts)
        self.logger.line(text)
        if self.to_stdout:
            sys.stdout.write(f"[seo_dist] {text}\n")
            sys.stdout.flush()

    def flush(self) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        self._last_step = None


def format_value(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if value != 0 and math.isfinite(value) and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.4e}"
    return f"{value:.4f}"
