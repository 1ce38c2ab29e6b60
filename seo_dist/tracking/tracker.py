"""``ExperimentTracker``: the experiment directory, its metadata and lifecycle, and the front door for
metrics and events.

Rank awareness: ``start_experiment`` is collective when a process group exists. Rank 0 alone decides
the experiment id, creates and writes the directory and runs the sinks; every rank gets the same
``exp_dir`` back. A failure on rank 0 is broadcast, so every rank raises the same error instead of
waiting forever in a collective. On other ranks ``log_metrics``/``log_event`` return at once.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from seo_dist import dist
from seo_dist.config import ExperimentConfig, JobConfig
from seo_dist.errors import UserError, error_line
from seo_dist.fileio import atomic_write_json
from seo_dist.tracking import metadata as md
from seo_dist.tracking.artifacts import copy_artifact, snapshot_code
from seo_dist.tracking.end_record import (
    append_rank_event,
    end_level,
    outcome_fields,
    profiler_summary,
    signals_deferred,
)
from seo_dist.tracking.experiment_dir import default_experiment_id, make_experiment_dir
from seo_dist.tracking.jsonio import iter_jsonl, json_safe, read_json
from seo_dist.tracking.layout import ExperimentLayout
from seo_dist.tracking.lock import HEARTBEAT_INTERVAL_S, STALE_AFTER_S, ExperimentLock
from seo_dist.tracking.logger import ExperimentLogger, default_level, describe_error
from seo_dist.tracking.metrics import MetricsTracker
from seo_dist.tracking.signals import TrainingInterrupted
from seo_dist.tracking.sink_setup import build_sinks, lazy_sinks
from seo_dist.tracking.sinks import truncate_metrics_file
from seo_dist.tracking.start_record import RUNNING, record_git, resolved_config, start_metadata, wandb_metadata

if TYPE_CHECKING:
    from seo_dist.checkpoint.manager import CheckpointManager

__all__ = ["RUNNING", "STATUSES", "ExperimentTracker", "default_experiment_id"]

STATUSES = ("completed", "failed", "interrupted")


class ExperimentTracker:
    """Tracks one experiment; see the module docstring for rank behaviour.

    ``job_config`` gives the resolved config and ``config_hash``; without it (a standalone script)
    ``hparams`` - any JSON-able mapping of the settings that determine results - is saved and hashed.
    ``checkpoint_manager`` is attached by the trainer; ``save_checkpoint`` delegates to it.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        code_profiler: Any = None,
        job_config: JobConfig | None = None,
        *,
        hparams: dict[str, Any] | None = None,
        stale_lock_after_s: float = STALE_AFTER_S,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        problems = config.validate()
        if problems:
            raise UserError("; ".join(problems))
        self.config = config
        self.code_profiler = code_profiler
        self.job_config = job_config
        self.hparams = hparams
        self.checkpoint_manager: CheckpointManager | None = None
        self.exp_dir: Path | None = None
        self.experiment_id: str | None = None
        self.layout: ExperimentLayout | None = None
        self.logger: ExperimentLogger | None = None
        self.metrics: MetricsTracker | None = None
        self.rank = 0
        self.stale_lock_after_s = stale_lock_after_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self._lock: ExperimentLock | None = None
        self._metadata: dict[str, Any] = {}
        self._metadata_lock = threading.Lock()  # the MLflow sink records its run id from its own thread
        self._state = "new"
        self._start_time = 0.0

    # ------------------------------------------------------------------ lifecycle

    @property
    def is_writer(self) -> bool:
        """True on the one process that writes the experiment directory (global rank 0, tracking enabled)."""
        return self.logger is not None

    def start_experiment(self, resume: bool = False, resume_step: int | None = None) -> Path:
        """Create (or, with ``resume``, continue) the experiment directory; collective across ranks.

        ``resume_step``: the step of the checkpoint being resumed; rows logged after it are dropped
        and TensorBoard purges them. If the step is only known after loading the checkpoint, call
        :meth:`set_resume_step` before logging again.
        """
        if self._state != "new":
            raise RuntimeError("start_experiment() was already called on this tracker")
        if resume_step is not None and not resume:
            raise ValueError("resume_step is only meaningful with resume=True")
        info = dist.get_dist_info()
        self.rank = dist.get_rank()
        gathered = dist.all_gather_object(md.local_rank_info(self.rank, info.local_rank, dist.hostname()))
        outcome: tuple[str, str]
        local_error: BaseException | None = None
        if self.rank == 0:
            try:
                outcome = ("ok", str(self._start_on_rank_zero(resume, resume_step, gathered, info.launcher)))
            except UserError as e:
                outcome, local_error = ("user_error", str(e)), e
            except Exception as e:
                outcome, local_error = ("error", error_line(e)), e
        else:
            outcome = ("ok", "")
        outcome = dist.broadcast_object(outcome)
        if outcome[0] != "ok":
            self._state = "ended"
            if local_error is not None:
                raise local_error
            if outcome[0] == "user_error":
                raise UserError(outcome[1])
            raise RuntimeError(f"starting the experiment failed on rank 0: {outcome[1]}")
        self.exp_dir = Path(outcome[1])
        self.experiment_id = self.exp_dir.name
        self.layout = ExperimentLayout(self.exp_dir)
        self._state = RUNNING
        return self.exp_dir

    def _start_on_rank_zero(
        self, resume: bool, resume_step: int | None, gathered: list[dict[str, Any]], launcher: str
    ) -> Path:
        self._start_time = time.time()
        base = Path(self.config.base_dir).expanduser()
        if not self.config.tracking_enabled:
            return base.absolute() / (self.config.experiment_id or default_experiment_id(self._start_time))
        exp_dir = make_experiment_dir(base, self.config.experiment_id, resume=resume, start_time=self._start_time)
        layout = ExperimentLayout(exp_dir)
        lock = ExperimentLock(layout.lock, self.stale_lock_after_s)
        lock.acquire()
        try:
            layout.make_dirs()
            self.logger = ExperimentLogger(layout.events, layout.train_log, rank=0, echo_to_stderr=self.config.console)
            self._lock, self.layout, self.exp_dir = lock, layout, exp_dir
            self.experiment_id = exp_dir.name
            self._write_start_files(resume, resume_step, gathered, launcher)
        except BaseException:
            self._abort_start()
            raise
        atexit.register(self._exit_without_end)
        return exp_dir

    def _abort_start(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _write_start_files(
        self, resume: bool, resume_step: int | None, gathered: list[dict[str, Any]], launcher: str
    ) -> None:
        assert self.layout is not None and self.logger is not None
        layout, logger = self.layout, self.logger
        config, config_hash = resolved_config(self.config, self.experiment_id, self.job_config, self.hparams)
        hosts = md.summarize_hosts(gathered)
        world = {"size": len(gathered), "nodes": len(hosts["hosts"]), "launcher": launcher}
        launch_id = dist.launch_id()
        if launch_id is not None:  # under torchrun: lets a restarted worker find this experiment
            world["launch_id"] = launch_id
        previous = read_json(layout.metadata) if resume and layout.metadata.is_file() else None
        current = {"experiment_name": self.config.experiment_name, "experiment_id": self.experiment_id,
                   "exp_dir": str(self.exp_dir), "command": list(sys.argv), "config": config,
                   "config_hash": config_hash, "system": md.system_info(hosts), "world": world}  # fmt: skip
        meta = self._metadata = start_metadata(previous, current, start_time=self._start_time, resume_step=resume_step)
        if self.config.wandb != "disabled":
            meta["wandb"] = wandb_metadata(previous, self.config, self.experiment_id or "exp", layout.wandb)
        meta["git"] = self._best_effort("git_info_failed", lambda: record_git(layout))
        self._save_metadata()
        layout.config_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
        self._best_effort("requirements_failed", lambda: layout.requirements.write_text(md.requirements_text()))
        if self.config.code_snapshot and not (previous and layout.code_snapshot.exists()):  # a resume keeps the first
            snapshot = self._best_effort("code_snapshot_failed", lambda: snapshot_code(layout, self.config, logger))
            if snapshot is not None:
                meta["code_snapshot"] = snapshot
        self._save_metadata()
        self._start_metrics(resume, resume_step, config)

        host_names = [h["host"] for h in hosts["hosts"]]
        if resume:
            logger.event("resume", step=resume_step, message=f"resumed experiment {self.experiment_id}",
                         world_size=world["size"], hosts=host_names)  # fmt: skip
        else:
            logger.event("start", message=f"started experiment {self.experiment_id} ({self.config.experiment_name})",
                         world_size=world["size"], hosts=host_names, config_hash=config_hash)  # fmt: skip
        if previous is not None and previous.get("config_hash") not in (None, config_hash):
            logger.event("config_changed", "warning", step=resume_step, previous=previous.get("config_hash"),
                         current=config_hash, message="the resumed run's config hash differs from the original run's")  # fmt: skip
        if self._lock is not None and self._lock.took_over is not None:
            logger.event("stale_lock_taken_over", "warning",
                         message=f"took over the lock left by {self._lock.took_over.describe()}")  # fmt: skip

    def _start_metrics(self, resume: bool, resume_step: int | None, config: dict[str, Any]) -> None:
        """Drop rows after the resume step, then start the sink thread (seeded with the rows that remain)."""
        assert self.layout is not None and self.logger is not None
        seed_rows: list[dict[str, Any]] = []
        if resume:
            if resume_step is not None:
                dropped = truncate_metrics_file(self.layout.metrics, resume_step)
                if dropped:
                    self.logger.event("metrics_truncated", step=resume_step, rows_dropped=dropped,
                                      message=f"dropped {dropped} metric rows logged after step {resume_step}")  # fmt: skip
            seed_rows = list(iter_jsonl(self.layout.metrics))
        sinks = build_sinks(self.layout, self.config, self.logger, resume_step,
                            metadata=self._metadata, save_metadata=self._save_metadata)  # fmt: skip
        self.metrics = MetricsTracker(
            sinks,
            self.logger,
            lazy_sinks=lazy_sinks(self.layout, self.config, self._metadata.get("wandb"), config),
            seed_rows=seed_rows,
            heartbeat=self._lock.heartbeat if self._lock else None,
            heartbeat_interval_s=self.heartbeat_interval_s,
        )

    def _best_effort(self, event: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None after logging its failure as ``event``: tracking extras never stop a job."""
        try:
            return fn()
        except Exception as e:
            assert self.logger is not None
            self.logger.error(event, e)
            return None

    def _save_metadata(self) -> None:
        assert self.layout is not None
        with self._metadata_lock:
            atomic_write_json(self.layout.metadata, json_safe(self._metadata))

    def annotate_resume(self, **fields: Any) -> None:
        """Add ``fields`` to this run's entry of ``resumes`` in metadata.json (rank 0; nothing on a new run)."""
        resumes = self._metadata.get("resumes")
        if self.is_writer and resumes and self.layout is not None:
            resumes[-1].update(fields)
            self._save_metadata()

    def set_resume_step(self, step: int) -> None:
        """Drop metric rows logged after ``step`` (once the resumed checkpoint's step is known)."""
        if self.metrics is not None and self.logger is not None:
            dropped = self.metrics.truncate_after(step)
            if dropped:
                self.logger.event(
                    "metrics_truncated",
                    step=step,
                    rows_dropped=dropped,
                    message=f"dropped {dropped} metric rows logged after step {step}",
                )

    def end_experiment(self, status: str, error: BaseException | str | None = None) -> None:
        """Record the outcome, flush and close the sinks, release the lock. Idempotent; safe on every rank.

        On a rank other than 0 a failure (status ``failed`` with an error) is written to
        ``logs/events.rank<N>.jsonl`` (best effort): the real traceback of a crash is often on that rank,
        while rank 0 only sees a timeout.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if self._state != RUNNING:
            return
        self._state = "ended"
        if not self.is_writer:
            if status == "failed" and error is not None and self.layout is not None and self.config.tracking_enabled:
                text, tb = describe_error(error)
                append_rank_event(self.layout.rank_events(self.rank), self.rank, "rank_failed", "error",
                                  {"status": status, "message": text, "traceback": tb})  # fmt: skip
            return
        atexit.unregister(self._exit_without_end)
        assert self.logger is not None and self.layout is not None
        # A launcher that saw another rank fail sends SIGTERM to this one while it is recording the
        # outcome: hold signals until the record is on disk (they are delivered right after).
        with signals_deferred():
            self._finish(status, error)

    def _finish(self, status: str, error: BaseException | str | None) -> None:
        assert self.logger is not None
        start = float(self._metadata.get("start_timestamp", self._start_time))
        outcome = outcome_fields(status, error, start)
        self._metadata.update(outcome)
        try:
            self._save_metadata()  # the outcome first; draining the sinks below can take a while
            if self.metrics is not None:
                self.metrics.close(exit_code=0 if status == "completed" else 1)  # drains the queue first
            try:
                self.logger.event("end", end_level(status), step=self._last_step(), status=status,
                                  message=outcome["error"], traceback=outcome["traceback"])  # fmt: skip
            except Exception:
                pass
            profiling = profiler_summary(self.code_profiler, self.logger)
            self._metadata["summary"] = self.metrics.summary.to_dict() if self.metrics else None
            self._metadata["events"] = dict(self.logger.counts)
            if profiling is not None:
                self._metadata["profiling"] = profiling
            self._save_metadata()
        finally:
            if self._lock is not None:
                self._lock.release()
            self.logger.close()

    def _exit_without_end(self) -> None:
        """atexit safety net: a process that ends without end_experiment() is marked failed and unlocks."""
        self.end_experiment("failed", "the process exited without calling end_experiment()")

    def _last_step(self) -> int | None:
        return self.metrics.summary.last_step if self.metrics is not None else None

    @contextmanager
    def track(self, resume: bool = False, resume_step: int | None = None) -> Iterator[Path]:
        """``start_experiment`` ... ``end_experiment``: completed on success, interrupted on SIGTERM/SIGINT
        (see :func:`~seo_dist.tracking.signals.install_interrupt_handlers`) or Ctrl-C, failed (with the
        traceback) on any other exception, which is re-raised."""
        exp_dir = self.start_experiment(resume=resume, resume_step=resume_step)
        try:
            yield exp_dir
        except (TrainingInterrupted, KeyboardInterrupt) as e:
            self.end_experiment("interrupted", e)
            raise
        except SystemExit as e:
            self.end_experiment("completed" if e.code in (0, None) else "failed", None if e.code in (0, None) else e)
            raise
        except BaseException as e:
            self.end_experiment("failed", e)
            raise
        else:
            self.end_experiment("completed")

    # ------------------------------------------------------------------ logging

    def log_metrics(self, metrics: dict[str, Any], step: int, epoch: int | None = None) -> None:
        """Queue one row of metrics for the sinks (rank 0); a no-op on other ranks."""
        m = self.metrics
        if m is not None:
            m.log(metrics, step, epoch)
        elif self._state == "new":
            raise RuntimeError("log_metrics() before start_experiment()")

    def log_event(
        self, name: str, /, step: int | None = None, *, level: str | None = None, all_ranks: bool = False, **fields: Any
    ) -> None:
        """An event in ``logs/events.jsonl`` (and ``train.log``), written by rank 0.

        ``level``: info, warning or error; by default from the name (``*_failed``/``*_error`` -> error,
        ``*_warning``/``*_fallback``/``*_disk_full``/``*_skipped`` -> warning, else info). Warnings and
        errors are echoed to stderr when the console is on. ``all_ranks=True`` lets another rank record an
        event of its own (a straggler, a local error) in ``logs/events.rank<N>.jsonl``; without it other
        ranks do nothing.
        """
        level = level or default_level(name)
        if self.logger is not None:
            self.logger.event(name, level, step=step, **fields)  # type: ignore[arg-type]
        elif all_ranks and self.layout is not None and self._state == RUNNING and self.config.tracking_enabled:
            append_rank_event(self.layout.rank_events(self.rank), self.rank, name, level, {**fields, "step": step})

    def add_event_observer(self, observe: Callable[[dict[str, Any]], None]) -> None:
        """Call ``observe(record)`` with every event rank 0 records from now on (no-op on other ranks)."""
        if self.logger is not None:
            self.logger.observers.append(observe)

    def log_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> Path | None:
        """Copy a file or folder into ``artifacts/`` (rank 0; None elsewhere). Returns where it now lives."""
        if self.logger is None or self.layout is None:
            return None
        dest, size = copy_artifact(Path(path), self.layout, name)
        self.logger.event("artifact", artifact=dest.name, path=str(dest.relative_to(self.layout.root)), bytes=size)
        return dest

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Delegate to ``self.checkpoint_manager.save_checkpoint`` (call it on every rank: saves are collective)."""
        if not self.config.checkpoint_enabled:
            if self.logger is not None:
                self.logger.event(
                    "checkpoint_skipped", step=kwargs.get("step"), message="experiment.checkpoint_enabled is false"
                )
            return None
        if self.checkpoint_manager is None:
            raise RuntimeError(
                "ExperimentTracker.save_checkpoint: no checkpoint manager attached; "
                "set tracker.checkpoint_manager = CheckpointManager(...) first"
            )
        return self.checkpoint_manager.save_checkpoint(*args, **kwargs)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the sink thread has written everything logged so far (True at once on other ranks)."""
        if self.metrics is None:
            return True
        return self.metrics.flush(timeout)
