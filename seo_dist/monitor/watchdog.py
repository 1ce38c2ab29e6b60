"""``Monitor``: one daemon thread per rank that publishes this rank's heartbeat, watches everyone's, and
acts on a hang, an orphaned worker, a nearly full disk and a straggler; it also owns the alert sender.

The training thread only calls :meth:`Monitor.beat` / :meth:`Monitor.phase` (see :mod:`.heartbeat`).
On a hang (:mod:`.verdict`) the first rank to see it stores the verdict in the launcher's store; every
rank that can still run then writes its stacks to ``logs/hangs/<time>/rank_<N>.txt``, the lowest live rank
records ``hang_detected`` and the run's ``failed`` status, and with ``on_hang: abort`` every live rank exits
with code 1 (a frozen rank on the same host is killed first: it could not act on the launcher's SIGTERM),
so that ``torchrun --max-restarts`` starts the job again and it resumes from its latest valid checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from seo_dist import dist
from seo_dist.config.sections import MonitorConfig
from seo_dist.monitor.alerts import AlertContext, AlertSender
from seo_dist.monitor.board import Board, LocalBoard, StoreBoard
from seo_dist.monitor.dumps import write_rank_dump
from seo_dist.monitor.hang_record import record_for_stalled_rank_zero
from seo_dist.monitor.heartbeat import EXITED, FIRST_STEP, STEP, Heartbeat
from seo_dist.monitor.orphan import OrphanWatch, set_parent_death_signal
from seo_dist.monitor.straggler import StragglerRule
from seo_dist.monitor.verdict import HangWatch, describe, recorder_rank
from seo_dist.tracking.layout import ExperimentLayout

log = logging.getLogger(__name__)

HANG_EXIT_CODE = 1
ORPHAN_GRACE_S = 300.0
"""An orphaned worker that has not stopped this long after noticing exits at once."""
DISK_CHECK_EVERY_S = 30.0
RECORDED_KEY_WAIT_S = 10.0
"""How long a live rank that does not record the hang waits for the one that does before exiting."""
ALERT_DRAIN_S = 15.0


class HangError(RuntimeError):
    """The run's error when a hang stopped it: names the stalled ranks."""


class Monitor:
    """Start with :meth:`start` after the experiment has started, :meth:`stop` when the run ends."""

    def __init__(self, config: MonitorConfig, *, tracker: Any, exp_dir: Path | None) -> None:
        self.config = config
        self.tracker = tracker
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.info = dist.get_dist_info()
        self.layout = ExperimentLayout(exp_dir) if exp_dir is not None else None
        self.heartbeat = Heartbeat()
        self.alerts = AlertSender(
            config.alert_webhook,
            config.alert_command,
            AlertContext(exp_dir.name if exp_dir else None, str(exp_dir) if exp_dir else None, dist.hostname()),
            report=self._event,
        )
        self.hang: dict[str, Any] | None = None
        self.orphaned_at: float | None = None
        self._board: Board = LocalBoard()
        silent_after = max(3 * config.heartbeat_interval_s, min(15.0, config.hang_timeout_s / 2))
        self._watch = HangWatch(config, self.world_size, silent_after_s=silent_after)
        self._orphans = OrphanWatch() if self.info.launcher != "none" else None
        self._stragglers = StragglerRule(config.straggler_factor, config.straggler_intervals)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pub = 0
        self._board_error_logged = False
        self._disk_checked = 0.0
        self._disk_low = False
        self._stepped = False

    # ------------------------------------------------------------------ training-thread side

    def beat(self, step: int) -> None:
        """``step`` steps are done; the next one starts (a few microseconds)."""
        self.heartbeat.beat(step, STEP if self._stepped else FIRST_STEP)

    def step_done(self, step: int) -> None:
        """After each step: the first one ends start-up (the collective timeout becomes the shorter one)."""
        if not self._stepped:
            self._stepped = True
            dist.set_collective_timeout(self.config.collective_timeout_s)

    def phase(self, name: str) -> Any:
        """Context manager: ``name`` for the block (a phase that may take long, see ``SLOW_PHASES``)."""
        return self.heartbeat.during(name)

    def observe_metrics(self, metrics: dict[str, float], step: int) -> None:
        """One log interval's metrics (rank 0 records the straggler alert)."""
        fired = self._stragglers.observe(metrics)
        if fired is not None:
            self._event("straggler_detected", step=step, level="warning", **fired)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Monitor:
        if self.tracker is not None and getattr(self.tracker, "is_writer", False):
            self.tracker.add_event_observer(self.alerts.on_event)
        if self.world_size > 1:
            try:
                board = StoreBoard.connect(dist.elastic_restart_count())
                if board is not None:
                    self._board = board
            except Exception as e:  # noqa: BLE001 - hang detection falls back to this rank alone
                log.warning("monitor: the launcher's store cannot be reached (%s); only this rank is watched", e)
        if self._orphans is not None and self.config.exit_when_orphaned and self.info.launcher == "torchrun":
            set_parent_death_signal(signal.SIGTERM)
        self._thread = threading.Thread(target=self._run, name="seo_dist-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Publish that this rank ended on purpose, stop the thread, deliver queued alerts (bounded)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.heartbeat.phase(EXITED)
        self._publish()
        if not self.alerts.close(ALERT_DRAIN_S):
            sys.stderr.write("seo_dist: some alerts were not delivered before the run ended\n")

    def check_orphaned(self) -> None:
        """Record (once) that the launcher is gone; called by the thread and before the run ends."""
        if self._orphans is None or not self.config.exit_when_orphaned or self.orphaned_at is not None:
            return
        if not self._orphans.orphaned():
            return
        self.orphaned_at = time.monotonic()
        step = self.heartbeat.current.step
        message = (f"the launcher (pid {self._orphans.launcher_pid}) is gone; rank {self.rank} stops as on SIGTERM "
                   "(final checkpoint, experiment lock released)")  # fmt: skip
        self._event("launcher_lost", step=step, level="warning", all_ranks=True, message=message)
        os.kill(os.getpid(), signal.SIGTERM)  # the trainer's stop path (prctl may have sent it already)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stop.wait(self.config.heartbeat_interval_s):
            try:
                self._tick()
            except Exception as e:  # noqa: BLE001 - the monitor never takes the run down by accident
                if not self._board_error_logged:
                    self._board_error_logged = True
                    log.warning("monitor: %s", e)

    def _tick(self) -> None:
        self.check_orphaned()
        if self.orphaned_at is not None and time.monotonic() - self.orphaned_at > ORPHAN_GRACE_S:
            sys.stderr.write(
                f"seo_dist: rank {self.rank} still running {ORPHAN_GRACE_S:.0f}s after its launcher died; exiting\n"
            )
            os._exit(HANG_EXIT_CODE)
        if self.rank == 0:
            self._check_disk()
        self._publish()
        if self.hang is not None:
            return
        self._watch.update(self._board.read(range(self.world_size)))
        hang = self._board.hang()
        if hang is None:
            found = self._watch.verdict()
            if found is None:
                return
            found.update(time=time.strftime("%Y%m%d-%H%M%S"), found_by=self.rank)
            hang = self._board.claim_hang(found)
        self._on_hang(hang)

    def _publish(self) -> None:
        beat = self.heartbeat.current
        self._pub += 1
        self._board.publish(self.rank, {"rank": self.rank, "step": beat.step, "phase": beat.phase,
                                        "age": round(time.monotonic() - beat.at, 3), "pub": self._pub,
                                        "pid": os.getpid(), "host": dist.hostname()})  # fmt: skip

    # ------------------------------------------------------------------ acting on a hang

    def _on_hang(self, hang: dict[str, Any]) -> None:
        self.hang = hang
        error = describe(hang)
        folder = self.layout.hangs / hang["time"] if self.layout is not None else None
        header = {"rank": self.rank, "host": dist.hostname(), "pid": os.getpid(),
                  "step": self.heartbeat.current.step, "phase": self.heartbeat.current.phase, "verdict": hang}  # fmt: skip
        where = "stderr"
        try:
            if folder is None or not self.tracker.config.tracking_enabled:
                raise OSError("no experiment directory")
            where = str(write_rank_dump(folder, self.rank, header))
        except OSError:
            from seo_dist.monitor.dumps import thread_stacks

            sys.stderr.write(thread_stacks() + "\n")
        sys.stderr.write(f"seo_dist: rank {self.rank}: {error}; stacks in {where}\n")
        abort = self.config.on_hang == "abort"
        if recorder_rank(hang) == self.rank:
            self._record_hang(hang, error, folder, abort)
            self._board.mark_recorded()
        elif abort:
            self._wait_recorded()
        if abort:
            self._kill_frozen_local_ranks(hang)
            self.alerts.close(ALERT_DRAIN_S)
            sys.stderr.write(f"seo_dist: training stopped: {error}\n")
            sys.stderr.flush()
            os._exit(HANG_EXIT_CODE)

    def _record_hang(self, hang: dict[str, Any], error: str, folder: Path | None, abort: bool) -> None:
        stalled = hang["stalled_ranks"]
        step = min(int(hang["ranks"][str(r)]["step"]) for r in stalled)
        fields = {"stalled_ranks": stalled, "ranks": {r: hang["ranks"][str(r)] for r in map(str, stalled)},
                  "dump_dir": str(folder) if folder else None, "found_by": hang.get("found_by"),
                  "on_hang": self.config.on_hang}  # fmt: skip
        tracker = self.tracker
        if tracker is not None and tracker.is_writer:
            tracker.log_event("hang_detected", step=step, level="error", message=error, **fields)
            if abort:
                tracker.end_experiment("failed", HangError(error))
            return
        if self.layout is not None and tracker is not None and tracker.config.tracking_enabled:
            record_for_stalled_rank_zero(self.layout, self.rank, {**fields, "step": step, "message": error},
                                         error if abort else "")  # fmt: skip
        self.alerts.send("hang_detected", step, error, **fields)
        if abort:
            self.alerts.send("failed", step, error)

    def _wait_recorded(self) -> None:
        deadline = time.monotonic() + RECORDED_KEY_WAIT_S
        while time.monotonic() < deadline and not self._board.recorded():
            time.sleep(0.2)

    def _kill_frozen_local_ranks(self, hang: dict[str, Any]) -> None:
        """SIGKILL the stalled ranks on this host that do not run at all (they cannot act on SIGTERM)."""
        import psutil

        for rank in hang["stalled_ranks"]:
            if rank in hang.get("responsive_ranks", []):
                continue
            status = hang["ranks"][str(rank)]
            if status.get("host") != dist.hostname() or not status.get("pid"):
                continue
            try:
                proc = psutil.Process(int(status["pid"]))
                if proc.environ().get("RANK") == str(rank):
                    proc.kill()
            except (psutil.Error, OSError):
                pass

    # ------------------------------------------------------------------ events and the disk

    def _event(self, name: str, /, step: int | None = None, **fields: Any) -> None:
        if self.tracker is not None:
            self.tracker.log_event(name, step=step, **fields)

    def _check_disk(self) -> None:
        limit_gb = self.config.disk_free_alert_gb
        now = time.monotonic()
        if limit_gb <= 0 or self.layout is None or now - self._disk_checked < DISK_CHECK_EVERY_S:
            return
        self._disk_checked = now
        try:
            free_gb = shutil.disk_usage(self.layout.root).free / 1e9
        except OSError:
            return
        if free_gb < limit_gb and not self._disk_low:
            self._disk_low = True
            self._event("disk_nearly_full", step=self.heartbeat.current.step, level="warning",
                        free_gb=round(free_gb, 2), path=str(self.layout.root),
                        message=f"{free_gb:.1f} GB free on the disk of {self.layout.root} (monitor.disk_free_alert_gb={limit_gb:g})")  # fmt: skip
        elif free_gb > 2 * limit_gb:
            self._disk_low = False
