"""Creating (or reopening, on a resume) the experiment directory under ``experiment.base_dir``."""

from __future__ import annotations

import time
from pathlib import Path

from seo_dist.errors import UserError
from seo_dist.tracking.layout import ExperimentLayout

MAX_ID_SUFFIX = 1000
"""``exp_<time>_1`` ... : how many free names are tried when several jobs start in the same second."""


def default_experiment_id(t: float | None = None) -> str:
    """The default id, ``exp_<unix time>``."""
    return f"exp_{int(time.time() if t is None else t)}"


def make_experiment_dir(base: Path, experiment_id: str | None, *, resume: bool, start_time: float) -> Path:
    """The experiment directory (absolute), created atomically: ``mkdir`` fails if another job made it first.

    With ``resume`` the directory must already be an experiment. Raises :class:`UserError` with one line
    naming the setting to change.
    """
    try:
        base.mkdir(parents=True, exist_ok=True)
        if experiment_id is None:
            if resume:
                raise UserError("resume needs experiment.experiment_id: the id of the experiment directory to continue")
            return _new_default_dir(base, default_experiment_id(start_time))
        exp_dir = (base / experiment_id).absolute()
        if resume:
            if not ExperimentLayout(exp_dir).is_experiment():
                raise UserError(
                    f"cannot resume: {str(exp_dir)!r} is not an experiment directory (no "
                    f"{ExperimentLayout.MARKERS}); check experiment.base_dir and experiment.experiment_id"
                )
            return exp_dir
        try:
            exp_dir.mkdir()
        except FileExistsError:
            if exp_dir.is_dir() and not any(exp_dir.iterdir()):
                return exp_dir  # an empty folder made in advance is fine
            raise UserError(
                f"experiment directory {str(exp_dir)!r} already exists; choose another "
                f"experiment.experiment_id, or resume it"
            ) from None
        return exp_dir
    except OSError as e:
        raise UserError(
            f"experiment.base_dir {str(base)!r} is not writable ({e.strerror or e}); "
            f"set experiment.base_dir to a folder you can write"
        ) from None


def _new_default_dir(base: Path, stem: str) -> Path:
    for n in range(MAX_ID_SUFFIX):
        candidate = base / (stem if n == 0 else f"{stem}_{n}")
        try:
            candidate.mkdir()
            return candidate.absolute()
        except FileExistsError:
            continue
    raise UserError(f"could not find a free experiment id like {stem!r} in {str(base)!r}; set experiment.experiment_id")
