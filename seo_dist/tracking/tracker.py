"""``ExperimentTracker``: the experiment directory, its metadata and lifecycle, and the front door for
metrics and events.

Rank awareness: ``start_experiment`` is collective when a process group exists. Rank 0 alone decides
the experiment id, creates and writes the directory and runs the sinks; every rank gets the same
``exp_dir`` back. A failure on rank 0 is broadcast, so every rank raises the same error instead of
waiting forever in a collective. On other ranks ``log_metrics``/``log_event`` return at once.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from seo_dist import dist
from seo_dist.config import ExperimentConfig, JobConfig
from seo_dist.errors import UserError
from seo_dist.tracking import metadata as md
from seo_dist.tracking.jsonio import dumps_line, iter_jsonl, json_safe, read_json, write_json_atomic
from seo_dist.tracking.layout import ExperimentLayout
from seo_dist.tracking.lock import HEARTBEAT_INTERVAL_S, STALE_AFTER_S, ExperimentLock
from seo_dist.tracking.logger import ExperimentLogger, Level, default_level, describe_error
from seo_dist.tracking.metrics import MetricsTracker
from seo_dist.tracking.signals import TrainingInterrupted
from seo_dist.tracking.sinks import ConsoleSink, JsonlSink, Sink, TensorBoardSink, WandbSink, truncate_metrics_file
from seo_dist.tracking.snapshot import create_code_snapshot

STATUSES = ("completed", "failed", "interrupted")
RUNNING = "running"
_MB = 1024 * 1024


def _now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).astimezone().isoformat(timespec="seconds")


def default_experiment_id(t: float | None = None) -> str:
    """The brief's default, ``exp_<unix time>``."""
    return f"exp_{int(time.time() if t is None else t)}"


def _wandb_run_id(experiment_id: str) -> str:
    """A wandb id from the experiment id plus a random suffix (two base dirs may reuse an experiment id)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", experiment_id)[:50]
    return f"{safe}-{secrets.token_hex(4)}"


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Block SIGTERM/SIGINT on the main thread for the duration (no-op on other threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class ExperimentTracker:
    """Tracks one experiment (the brief's ``ExperimentTracker``); see the module docstring for rank behaviour.

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
        self.checkpoint_manager: Any = None
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
                outcome, local_error = ("error", f"{type(e).__name__}: {e}"), e
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
        exp_dir = self._make_experiment_dir(base, resume)
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

    def _make_experiment_dir(self, base: Path, resume: bool) -> Path:
        """The experiment directory, created atomically (``mkdir`` fails if another job made it first)."""
        exp_id = self.config.experiment_id
        try:
            base.mkdir(parents=True, exist_ok=True)
            if exp_id is None:
                if resume:
                    raise UserError(
                        "resume needs experiment.experiment_id: the id of the experiment directory to continue"
                    )
                stem = default_experiment_id(self._start_time)
                for n in range(1000):
                    candidate = base / (stem if n == 0 else f"{stem}_{n}")
                    try:
                        candidate.mkdir()
                        return candidate.absolute()
                    except FileExistsError:
                        continue
                raise UserError(
                    f"could not find a free experiment id like {stem!r} in {str(base)!r}; set experiment.experiment_id"
                )
            exp_dir = (base / exp_id).absolute()
            if resume:
                layout = ExperimentLayout(exp_dir)
                if not (layout.is_experiment() or layout.checkpoints.is_dir()):  # checkpoints alone: tracking was off
                    raise UserError(
                        f"cannot resume: {str(exp_dir)!r} is not an experiment directory (no metadata.json or "
                        f"checkpoints/); check experiment.base_dir and experiment.experiment_id"
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

    def _abort_start(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _resolved_config(self) -> tuple[dict[str, Any], str | None]:
        experiment = dataclasses.replace(self.config, experiment_id=self.experiment_id)
        if self.job_config is not None:
            job = dataclasses.replace(self.job_config, experiment=experiment)
            return job.to_dict(), self.job_config.config_hash()
        config: dict[str, Any] = {"experiment": dataclasses.asdict(experiment)}
        if self.hparams is not None:
            config["hparams"] = json_safe(self.hparams)
            return config, md.hash_mapping(config["hparams"])
        return config, None

    def _write_start_files(
        self, resume: bool, resume_step: int | None, gathered: list[dict[str, Any]], launcher: str
    ) -> None:
        assert self.layout is not None and self.logger is not None
        layout, logger = self.layout, self.logger
        config, config_hash = self._resolved_config()
        hosts = md.summarize_hosts(gathered)
        world = {"size": len(gathered), "nodes": len(hosts["hosts"]), "launcher": launcher}
        launch_id = dist.launch_id()
        if launch_id is not None:  # under torchrun: lets a restarted worker find this experiment
            world["launch_id"] = launch_id
        previous = read_json(layout.metadata) if resume and layout.metadata.is_file() else None
        self._metadata = self._start_metadata(previous, config, config_hash, hosts, world, resume_step)
        self._save_metadata()
        layout.config_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
        self._best_effort("requirements_failed", lambda: layout.requirements.write_text(md.requirements_text()))
        if self.config.code_snapshot and not (previous and layout.code_snapshot.exists()):
            self._best_effort("code_snapshot_failed", self._snapshot_code)  # a resume keeps the first snapshot
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

    def _start_metadata(
        self,
        previous: dict[str, Any] | None,
        config: dict[str, Any],
        config_hash: str | None,
        hosts: dict[str, Any],
        world: dict[str, Any],
        resume_step: int | None,
    ) -> dict[str, Any]:
        """metadata.json at start; a resume keeps the first start time and wandb run id and appends to ``resumes``."""
        meta: dict[str, Any] = dict(previous or {})
        meta.update(
            {
                "schema_version": md.METADATA_SCHEMA_VERSION,
                "experiment_name": self.config.experiment_name,
                "experiment_id": self.experiment_id,
                "status": RUNNING,
                "error": None,
                "traceback": None,
                "end_time": None,
                "end_timestamp": None,
                "duration_s": None,
                "summary": None,
                "exp_dir": str(self.exp_dir),
                "command": list(sys.argv),
                "config": config,
                "config_hash": config_hash,
                "system": md.system_info(hosts),
                "world": world,
            }
        )
        if previous is None:
            meta["start_time"], meta["start_timestamp"] = _now_iso(self._start_time), self._start_time
            meta["resumes"] = []
        else:
            meta.setdefault("start_timestamp", self._start_time)
            meta.setdefault("start_time", _now_iso(meta["start_timestamp"]))
            meta.setdefault("resumes", []).append(
                {
                    "time": _now_iso(self._start_time),
                    "timestamp": self._start_time,
                    "resume_step": resume_step,
                    "previous_status": previous.get("status"),
                    "previous_config_hash": previous.get("config_hash"),
                    "previous_git": previous.get("git"),
                    "world": world,
                }
            )
        if self.config.wandb != "disabled":
            run_id = ((previous or {}).get("wandb") or {}).get("run_id") or _wandb_run_id(self.experiment_id or "exp")
            meta["wandb"] = {"run_id": run_id, "mode": self.config.wandb, "project": self.config.wandb_project,
                             "dir": str(self.layout.wandb if self.layout else "")}  # fmt: skip
        try:
            meta["git"] = self._record_git()
        except Exception as e:
            meta["git"] = None
            assert self.logger is not None
            self.logger.error("git_info_failed", e)
        return meta

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
        self.metrics = MetricsTracker(
            self._build_sinks(resume_step),
            self.logger,
            lazy_sinks=self._lazy_sinks(config),
            seed_rows=seed_rows,
            heartbeat=self._lock.heartbeat if self._lock else None,
            heartbeat_interval_s=self.heartbeat_interval_s,
        )

    def _record_git(self) -> dict[str, Any] | None:
        assert self.layout is not None
        root = md.git_root(Path.cwd())
        if root is None:
            import seo_dist

            root = md.git_root(Path(seo_dist.__file__).resolve().parent)
        if root is None:
            return None
        info = md.git_info(root)
        if info.dirty and info.commit:
            diff = md.git_diff(root)
            if diff:
                self.layout.git_diff.write_text(diff)
        return dataclasses.asdict(info)

    def _snapshot_code(self) -> None:
        assert self.layout is not None
        result = create_code_snapshot(
            self.layout.code_snapshot,
            int(self.config.code_snapshot_max_mb * _MB),
            exclude=[Path(self.config.base_dir).expanduser(), self.layout.root],
        )
        self._metadata["code_snapshot"] = result.to_dict()
        if result.truncated or result.skipped_large:
            assert self.logger is not None
            self.logger.event(
                "code_snapshot_incomplete",
                "warning",
                skipped_large=result.skipped_large,
                skipped_over_cap=result.skipped_over_cap,
                message=f"code snapshot left out {len(result.skipped_large)} files over 1 MB and "
                f"{result.skipped_over_cap} over the {self.config.code_snapshot_max_mb} MB cap",
            )

    def _build_sinks(self, resume_step: int | None) -> list[Sink]:
        assert self.layout is not None and self.logger is not None
        sinks: list[Sink] = [JsonlSink(self.layout.metrics)]
        if self.config.tensorboard:
            purge = resume_step + 1 if resume_step is not None else None
            sinks.append(TensorBoardSink(self.layout.tensorboard, purge_step=purge))
        sinks.append(ConsoleSink(self.logger, self.config.metrics_logging_interval, to_stdout=self.config.console))
        return sinks

    def _lazy_sinks(self, config: dict[str, Any]) -> list[Any]:
        """Sinks that are slow to open (wandb: ~0.5 s) start on the sink thread, not in start_experiment."""
        wandb_meta = self._metadata.get("wandb")
        if self.config.wandb == "disabled" or not wandb_meta:
            return []
        assert self.layout is not None
        layout = self.layout

        def open_wandb() -> Sink:
            return WandbSink(
                layout.wandb_parent,
                wandb_meta["run_id"],
                self.config.wandb_project,
                self.config.experiment_name,
                self.config.wandb,
                config,
            )

        open_wandb.sink_name = "wandb"  # type: ignore[attr-defined]
        return [open_wandb]

    def _best_effort(self, event: str, fn: Any) -> None:
        try:
            fn()
        except Exception as e:
            assert self.logger is not None
            self.logger.error(event, e)

    def _save_metadata(self) -> None:
        assert self.layout is not None
        write_json_atomic(self.layout.metadata, json_safe(self._metadata))

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
                self._write_rank_event(
                    "rank_failed", "error", None, {"status": status, "message": text, "traceback": tb}
                )
            return
        atexit.unregister(self._exit_without_end)
        assert self.logger is not None and self.layout is not None
        # A launcher that saw another rank fail sends SIGTERM to this one while it is recording the
        # outcome: hold signals until the record is on disk (they are delivered right after).
        with _signals_deferred():
            self._finish(status, error)

    def _finish(self, status: str, error: BaseException | str | None) -> None:
        assert self.logger is not None
        text, tb = describe_error(error)
        end = time.time()
        start = float(self._metadata.get("start_timestamp", self._start_time))
        self._metadata.update(
            {
                "status": status,
                "error": text,
                "traceback": tb,
                "end_time": _now_iso(end),
                "end_timestamp": end,
                "duration_s": round(end - start, 3),
            }
        )
        try:
            self._save_metadata()  # the outcome first; draining the sinks below can take a while
            if self.metrics is not None:
                self.metrics.close(exit_code=0 if status == "completed" else 1)  # drains the queue first
            level: Level = "info" if status == "completed" else ("error" if status == "failed" else "warning")
            try:
                self.logger.event("end", level, step=self._last_step(), status=status, message=text, traceback=tb)
            except Exception:
                pass
            profiling = self._profiler_summary()
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

    def _profiler_summary(self) -> Any:
        summary = getattr(self.code_profiler, "summary", None)
        if not callable(summary):
            return None
        try:
            return json_safe(summary())
        except Exception as e:
            assert self.logger is not None
            self.logger.error("profiler_summary_failed", e)
            return None

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
            self._write_rank_event(name, level, step, fields)

    def _write_rank_event(self, name: str, level: str, step: int | None, fields: dict[str, Any]) -> None:
        assert self.layout is not None
        path = self.layout.rank_events(self.rank)
        record = {
            "time": time.time(),
            "event": name,
            "level": level,
            "step": step,
            "rank": self.rank,
            "host": dist.hostname(),
            **json_safe(fields),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(dumps_line(record))
        except OSError:
            pass

    def log_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> Path | None:
        """Copy a file or folder into ``artifacts/`` (rank 0; None elsewhere). Returns where it now lives."""
        if self.logger is None or self.layout is None:
            return None
        src = Path(path)
        if not src.exists():
            raise UserError(f"log_artifact: {str(src)!r} does not exist; pass an existing file or folder")
        dest = self.layout.artifacts / (name or src.name)
        if src.resolve() != dest.resolve():
            if src.is_dir():
                shutil.copytree(src, dest, dirs_exist_ok=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) if dest.is_dir() else dest.stat().st_size
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
