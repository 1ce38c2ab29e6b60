"""Reading finished (or running) experiments back: run tables, metric series, plots, config differences.

Used by ``seo-dist runs|report|compare``. matplotlib is imported only by the plotting functions, and
through its object API (``Figure`` + Agg canvas), so nothing here changes a user's pyplot backend.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seo_dist.config.checkpoint import TRAIN_LOSS, VAL_LOSS
from seo_dist.errors import UserError
from seo_dist.tracking.jsonio import iter_jsonl, read_json
from seo_dist.tracking.layout import ExperimentLayout
from seo_dist.tracking.lock import lock_state
from seo_dist.tracking.metric_rows import RESERVED_NAMES

ABANDONED = "abandoned"
"""Shown for a run whose metadata says running but whose lock is gone or stale: it died without ending."""
BEST_METRIC = VAL_LOSS
"""The metric ``seo-dist runs`` shows the best of."""


@dataclass(slots=True)
class Series:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def finite(self) -> list[tuple[int, float]]:
        return [(s, v) for s, v in zip(self.steps, self.values, strict=True) if math.isfinite(v)]


@dataclass(slots=True)
class RunInfo:
    """One experiment directory as ``seo-dist runs`` shows it."""

    exp_dir: Path
    experiment_id: str
    name: str | None
    status: str
    start_timestamp: float | None
    duration_s: float | None
    last_step: int | None
    best_value: float | None
    best_step: int | None
    config: dict[str, Any]
    config_hash: str | None
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "exp_dir": str(self.exp_dir),
            "experiment_id": self.experiment_id,
            "name": self.name,
            "status": self.status,
            "start_timestamp": self.start_timestamp,
            "duration_s": self.duration_s,
            "last_step": self.last_step,
            f"best_{BEST_METRIC}": self.best_value,
            "best_step": self.best_step,
            "config_hash": self.config_hash,
        }


def require_experiment(path: str | Path) -> ExperimentLayout:
    """The layout of ``path``, or :class:`UserError` when it is not an experiment directory."""
    layout = ExperimentLayout(Path(path))
    if not layout.root.is_dir():
        raise UserError(
            f"{str(path)!r} does not exist; pass an experiment directory such as experiments/exp_1700000000"
        )
    if not layout.is_experiment():
        raise UserError(f"{str(path)!r} is not an experiment directory (no {ExperimentLayout.MARKERS})")
    return layout


def read_metrics(exp_dir: str | Path) -> dict[str, Series]:
    """Every metric's series, in file order; ``null`` (a non-finite value) reads back as NaN.

    Several rows with the same step (one ``log_metrics`` call each) simply contribute their own names.
    """
    series: dict[str, Series] = {}
    for row in iter_jsonl(ExperimentLayout(Path(exp_dir)).metrics):
        step = row.get("step")
        if not isinstance(step, int):
            continue
        for name, value in row.items():
            if name in RESERVED_NAMES:
                continue
            if value is None:
                value = math.nan
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            s = series.setdefault(name, Series())
            s.steps.append(step)
            s.values.append(float(value))
    return series


def read_events(exp_dir: str | Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(ExperimentLayout(Path(exp_dir)).events))


def load_run(exp_dir: str | Path) -> RunInfo:
    layout = require_experiment(exp_dir)
    meta: dict[str, Any] = {}
    if layout.metadata.is_file():
        try:
            meta = read_json(layout.metadata)
        except (OSError, json.JSONDecodeError):
            meta = {}
    status = meta.get("status", "unknown")
    if status == "running" and lock_state(layout.lock) != "live":
        status = ABANDONED
    summary = meta.get("summary") if status != "running" else None
    if summary:
        last_step = summary.get("last_step")
        best = summary.get("min", {}).get(BEST_METRIC)
        best_step = summary.get("min_step", {}).get(BEST_METRIC)
    else:
        series = read_metrics(layout.root)
        steps = [s for ser in series.values() for s in ser.steps]
        last_step = max(steps) if steps else None
        best, best_step = _minimum(series.get(BEST_METRIC))
    start = meta.get("start_timestamp")
    duration = meta.get("duration_s")
    if duration is None and start is not None and status == "running":
        duration = time.time() - float(start)
    return RunInfo(
        exp_dir=layout.root,
        experiment_id=meta.get("experiment_id") or layout.root.name,
        name=meta.get("experiment_name"),
        status=status,
        start_timestamp=start,
        duration_s=duration,
        last_step=last_step,
        best_value=best,
        best_step=best_step,
        config=meta.get("config") or {},
        config_hash=meta.get("config_hash"),
        metadata=meta,
    )


def _minimum(series: Series | None) -> tuple[float | None, int | None]:
    points = series.finite() if series else []
    if not points:
        return None, None
    step, value = min(points, key=lambda p: p[1])
    return value, step


def find_runs(base_dir: str | Path) -> list[RunInfo]:
    """Every experiment directly under ``base_dir``, oldest first."""
    base = Path(base_dir)
    if not base.is_dir():
        raise UserError(f"{str(base)!r} is not a directory; pass the experiments folder (experiment.base_dir)")
    runs = [load_run(p) for p in sorted(base.iterdir()) if p.is_dir() and ExperimentLayout(p).is_experiment()]
    return sorted(runs, key=lambda r: (r.start_timestamp or 0.0, r.experiment_id))


# --------------------------------------------------------------------------- formatting


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def format_table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def runs_table(runs: list[RunInfo]) -> str:
    header = ["id", "name", "status", "start", "duration", "steps", f"best {BEST_METRIC}"]
    rows = []
    for r in runs:
        start = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.start_timestamp)) if r.start_timestamp else "-"
        best = f"{format_number(r.best_value)} @ {r.best_step}" if r.best_value is not None else "-"
        steps = str(r.last_step) if r.last_step is not None else "-"
        rows.append([r.experiment_id, r.name or "-", r.status, start, format_duration(r.duration_s), steps, best])
    return format_table(header, rows)


def metric_table(series: dict[str, Series]) -> str:
    rows = []
    for name in sorted(series):
        points = series[name].finite()
        nonfinite = len(series[name].values) - len(points)
        if points:
            values = [v for _, v in points]
            lo = min(points, key=lambda p: p[1])
            rows.append(
                [
                    name,
                    str(len(series[name].values)),
                    format_number(series[name].values[-1]),
                    f"{format_number(lo[1])} @ {lo[0]}",
                    format_number(max(values)),
                    format_number(sum(values) / len(values)),
                    str(nonfinite),
                ]
            )
        else:
            rows.append([name, str(nonfinite), "-", "-", "-", "-", str(nonfinite)])
    return format_table(["metric", "points", "last", "min @ step", "max", "mean", "non-finite"], rows)


def summary_text(run: RunInfo, series: dict[str, Series], events: list[dict[str, Any]], plots: list[Path]) -> str:
    warnings = sum(1 for e in events if e.get("level") == "warning")
    errors = sum(1 for e in events if e.get("level") == "error")
    lines = [
        f"experiment {run.experiment_id} ({run.name or '-'}) in {run.exp_dir}",
        f"status {run.status}, duration {format_duration(run.duration_s)}, last step {run.last_step}, "
        f"config hash {(run.config_hash or '-')[:12]}",
    ]
    if run.metadata.get("error"):
        lines.append(f"error: {run.metadata['error']}")
    if run.best_value is not None:
        lines.append(f"best {BEST_METRIC} {format_number(run.best_value)} at step {run.best_step}")
    stall = series.get("ckpt/stall_s")
    if stall and stall.finite():
        values = [v for _, v in stall.finite()]
        lines.append(f"checkpoint stall: {len(values)} saves, total {sum(values):.3f} s, max {max(values):.3f} s")
    lines.append(f"events: {len(events)} ({warnings} warnings, {errors} errors)")
    if series:
        lines += ["", metric_table(series)]
    else:
        lines.append("no metrics logged")
    if plots:
        lines += ["", "plots:"] + [f"  {p}" for p in plots]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots

_SIZE_SUFFIXES = ("_gb", "_gib", "_mb", "_mib", "_bytes")
"""Memory sizes share one plot; counters such as ``mem/ooms`` stay in the printed table."""

# (file name, title, y label, which metric names go on it)
PLOTS: list[tuple[str, str, str, Any]] = [
    ("loss.png", "loss", "loss", lambda n: n in (TRAIN_LOSS, VAL_LOSS) or n.endswith("/loss")),
    ("lr.png", "learning rate", "lr", lambda n: n == "train/lr" or n.endswith("/lr")),
    (
        "throughput.png",
        "throughput",
        "tokens/s",
        lambda n: n == "perf/tokens_per_s" or n.startswith("perf/tokens_per_s"),
    ),
    ("memory.png", "memory", "size", lambda n: n.startswith("mem/") and n.endswith(_SIZE_SUFFIXES)),
    ("ckpt_stall.png", "checkpoint stall", "seconds", lambda n: n == "ckpt/stall_s"),
]


def _new_figure(nrows: int = 1, width: float = 8.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * nrows), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def plot_report(exp_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """PNG plots of loss, lr, tokens/s, memory and checkpoint stall; a plot without data is not written."""
    layout = require_experiment(exp_dir)
    out = Path(out_dir) if out_dir is not None else layout.plots
    series = read_metrics(layout.root)
    written = []
    for filename, title, ylabel, selects in PLOTS:
        names = sorted(n for n in series if selects(n) and series[n].finite())
        if not names:
            continue
        fig = _new_figure()
        ax = fig.add_subplot(1, 1, 1)
        for name in names:
            points = series[name].finite()
            ax.plot(
                [p[0] for p in points], [p[1] for p in points], label=name, marker="." if len(points) < 50 else None
            )
        ax.set_title(f"{layout.root.name}: {title}")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        written.append(_save(fig, out / filename))
    return written


def plot_compare(exp_dirs: list[str | Path], out: str | Path, metrics: list[str]) -> Path:
    """One PNG, one panel per metric, each overlaying every run's curve."""
    layouts = [require_experiment(d) for d in exp_dirs]
    all_series = [read_metrics(layout.root) for layout in layouts]
    fig = _new_figure(nrows=len(metrics))
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(len(metrics), 1, i + 1)
        for layout, series in zip(layouts, all_series, strict=True):
            points = series[metric].finite() if metric in series else []
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], label=layout.root.name)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {metric} in these runs", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, Path(out))


# --------------------------------------------------------------------------- config differences


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


_MISSING = object()


def config_differences(configs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Keys whose values are not the same in every config (a key absent from one counts as different)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    diffs = []
    for key in keys:
        values = [f.get(key, _MISSING) for f in flat]
        if any(
            json.dumps(v, sort_keys=True, default=str) != json.dumps(values[0], sort_keys=True, default=str)
            for v in values[1:]
        ):
            diffs.append((key, ["<absent>" if v is _MISSING else v for v in values]))
    return diffs
