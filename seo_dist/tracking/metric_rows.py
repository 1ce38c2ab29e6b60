"""What a metrics row may hold, and the running summary of the rows written.

:class:`RowValidator` turns a row as logged (any step, epoch, names and values) into the row the sinks
receive, reporting each problem once as an event through the experiment logger:

* names: ``group/name`` (``train/loss``, ``val/loss``, ``perf/tokens_per_s``). A second spelling of a
  metric already seen (``train_loss`` or ``Train/Loss`` after ``train/loss``) is recorded under the first
  spelling, with one warning event per spelling. A name without a group is accepted with one warning.
  ``step``/``epoch``/``time``/``timestamp`` are the row's own fields and are dropped from the values.
* values: ints and floats, bools, numpy scalars and one-element tensors. Anything else is left out of the
  row (the rest of the row is still written), with one error event per metric name; later bad values are
  counted in ``MetricSummary.dropped``.
* non-finite values are kept (each sink writes them its own way), with a warning event each time a metric
  turns non-finite.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any

from seo_dist.tracking.logger import ExperimentLogger

RESERVED_NAMES = frozenset({"step", "epoch", "time", "timestamp"})
_CANONICAL_STRIP = re.compile(r"[^0-9a-z]+")

Row = tuple[int, int | None, dict[str, float | int]]
"""``(step, epoch, values)`` as the sinks receive it."""


def canonical_metric_key(name: str) -> str:
    """Spelling-insensitive identity of a metric: ``train/loss``, ``train_loss`` and ``Train-Loss`` collide."""
    return _CANONICAL_STRIP.sub("", name.lower())


@dataclass(slots=True)
class MetricNames:
    """One spelling per metric for the whole run (seeded from earlier rows on resume)."""

    spelling: dict[str, str] = field(default_factory=dict)
    """canonical key -> the first spelling seen."""
    reported: set[str] = field(default_factory=set)

    def seed(self, names: list[str]) -> None:
        for name in names:
            self.spelling.setdefault(canonical_metric_key(name), name)

    def resolve(self, name: str) -> tuple[str, str | None]:
        """``(name to record, warning or None)``; each problem is reported once per spelling."""
        key = canonical_metric_key(name)
        first = self.spelling.setdefault(key, name)
        warning = None
        if first != name:
            if name not in self.reported:
                warning = f"metric {name!r} is another spelling of {first!r}; recorded as {first!r} - use one spelling"
        elif "/" not in name and name not in self.reported:
            warning = f"metric {name!r} has no group; name metrics 'group/name', e.g. 'train/loss'"
        if warning:
            self.reported.add(name)
        return first, warning


@dataclass(slots=True)
class MetricSummary:
    """Running statistics kept by the sink thread, for ``metadata.json`` and ``seo-dist runs``."""

    rows: int = 0
    last_step: int | None = None
    last: dict[str, float | None] = field(default_factory=dict)
    min: dict[str, float] = field(default_factory=dict)
    max: dict[str, float] = field(default_factory=dict)
    min_step: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    """Values left out because they were not numbers, per metric name."""

    def update(self, step: int, values: dict[str, Any]) -> None:
        self.rows += 1
        self.last_step = step if self.last_step is None else max(self.last_step, step)
        for k, v in values.items():
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                self.last[k] = None
                continue
            self.last[k] = v
            if k not in self.min or v < self.min[k]:
                self.min[k] = v
                self.min_step[k] = step
            if k not in self.max or v > self.max[k]:
                self.max[k] = v

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "last_step": self.last_step,
            "last": dict(self.last),
            "min": dict(self.min),
            "min_step": dict(self.min_step),
            "max": dict(self.max),
            "dropped_values": dict(self.dropped),
        }


def to_number(value: Any) -> float | int:
    """A metric value as a Python number; ``TypeError`` for anything that is not one."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    item = getattr(value, "item", None)
    numel = getattr(value, "numel", None) or getattr(value, "size", None)
    if callable(item):
        count = numel() if callable(numel) else numel
        if count == 1:
            result = item()
            if isinstance(result, (bool, int, float)):
                return int(result) if isinstance(result, bool) else result
    raise TypeError(f"{type(value).__name__} is not a number")


class RowValidator:
    """Checks and folds logged rows (see the module docstring); one per run, used on the sink thread only."""

    def __init__(self, logger: ExperimentLogger) -> None:
        self.logger = logger
        self.names = MetricNames()
        self._nonfinite: set[str] = set()

    def validate(self, step: Any, epoch: Any, raw: dict[str, Any], summary: MetricSummary) -> Row | None:
        """The row to write, or None when it cannot be written at all (its step is not an int). Values left
        out are counted in ``summary.dropped``."""
        try:
            if isinstance(step, bool):
                raise TypeError
            step = operator.index(step)  # ints, numpy ints, integer tensors
        except TypeError:
            self.logger.event("metric_error", "error", message=f"step must be an int, got {step!r}; row dropped")
            return None
        epoch = self._valid_epoch(epoch, step)
        values: dict[str, float | int] = {}
        for name, value in raw.items():
            if not isinstance(name, str) or not name:
                self.logger.event(
                    "metric_error", "error", step=step, message=f"metric name must be a non-empty string, got {name!r}"
                )
                continue
            if name in RESERVED_NAMES:
                if name not in self.names.reported:
                    self.names.reported.add(name)
                    self.logger.event(
                        "metric_name",
                        "warning",
                        step=step,
                        message=f"{name!r} is a field of every row, not a metric; dropped from the values",
                    )
                continue
            recorded, warning = self.names.resolve(name)
            if warning:
                self.logger.event("metric_name", "warning", step=step, message=warning, metric=name)
            try:
                number = to_number(value)
            except (TypeError, ValueError, RuntimeError) as e:
                self._report_bad_value(name, step, e, summary)
                continue
            if isinstance(number, float) and not math.isfinite(number):
                if recorded not in self._nonfinite:
                    self._nonfinite.add(recorded)
                    self.logger.event(
                        "nonfinite_metric",
                        "warning",
                        step=step,
                        metric=recorded,
                        value=str(number),
                        message=f"{recorded} is {number} (recorded as null in metrics.jsonl)",
                    )
            else:
                self._nonfinite.discard(recorded)
            if recorded in values and recorded != name:
                continue  # both spellings in one call: the first spelling's value wins
            values[recorded] = number
        return step, epoch, values

    def _valid_epoch(self, epoch: Any, step: int) -> int | None:
        if epoch is None:
            return None
        try:
            if isinstance(epoch, bool):
                raise TypeError
            return operator.index(epoch)
        except TypeError:
            pass
        if isinstance(epoch, float) and epoch.is_integer():
            return int(epoch)
        if "epoch" not in self.names.reported:
            self.names.reported.add("epoch")
            self.logger.event("metric_error", "error", step=step, message=f"epoch must be an int, got {epoch!r}; "
                              "recorded as null")  # fmt: skip
        return None

    def _report_bad_value(self, name: str, step: int, error: Exception, summary: MetricSummary) -> None:
        """One error event per metric name; later bad values of it are only counted (``summary.dropped``)."""
        count = summary.dropped.get(name, 0)
        summary.dropped[name] = count + 1
        if count == 0:
            self.logger.event(
                "metric_error",
                "error",
                step=step,
                metric=name,
                message=f"value of {name!r} is not numeric ({error}); left out of the row "
                "(further bad values of this metric are only counted)",
            )
