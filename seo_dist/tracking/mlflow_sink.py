"""The MLflow sink: every metric row, the job's config as params and end-of-run artifacts in one MLflow run.

The tracker's sink thread only appends points to a queue here (``write`` never touches the network); one
sender thread of this sink talks to the server through ``MlflowClient``:

* it opens the run (creating the experiment if needed), or on ``--resume`` continues the run whose id
  ``metadata.json`` keeps, then logs params and tags (100 per request) and sends points with
  ``log_batch`` (at most 1,000 per request);
* a server that is down, slow or answers 429/5xx: the points stay queued and the sender retries with
  growing pauses (MLflow's own HTTP retries are turned down, so no request blocks it for minutes); once the
  server answers again everything queued is sent, in order. A warning event marks the outage, an info
  event its end;
* no point is sent twice: before sending, and again after every failure or truncation, it reads the
  latest step the server holds for each metric and skips points at or below it (a batch that reached the
  server before the connection broke; on resume, the steps the run already has - MLflow cannot delete
  points, so steps a previous segment logged after its checkpoint keep their first values there);
* at close it waits up to ``close_timeout_s`` for the queue to drain, logs the plots of
  ``seo-dist report`` and the final model's manifest as artifacts and sets the run's status (FINISHED,
  FAILED or KILLED, as the experiment ended). What it could not send by then stays in ``metrics.jsonl``,
  and a ``sink_unavailable`` warning says how much.
"""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from seo_dist.errors import error_line
from seo_dist.tracking.layout import ExperimentLayout
from seo_dist.tracking.logger import ExperimentLogger
from seo_dist.tracking.sinks import Values

if TYPE_CHECKING:
    from mlflow import MlflowClient

CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
"""MLflow's HTTP settings while the sink runs, unless set in the environment: one try of at most 10 s per
request (its defaults retry for minutes); the sender does its own retries, with pauses of
``RETRY_PAUSE_S`` up to ``RETRY_PAUSE_MAX_S``."""
RETRY_PAUSE_S = 0.5
RETRY_PAUSE_MAX_S = 15.0
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE_CHARS = 6000
MAX_QUEUED_POINTS = 5_000_000
"""Points kept while the server is away (about 100 bytes each); beyond it the oldest are dropped, with a warning."""
RUN_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
"""The experiment's status -> the MLflow run's."""
PLOTS_ARTIFACT_DIR = "plots"
FINAL_MODEL_ARTIFACT_DIR = "final_model"
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")

Point = tuple[str, float, int, int]
"""(metric key, value, timestamp in ms, step)."""


def mlflow_key(name: str) -> str:
    """A metric or param name MLflow accepts: characters outside ``/ \\w . - space :`` become ``_`` and the
    name is a normalised relative path (MLflow refuses ``a//b`` or ``../x``)."""
    key = posixpath.normpath(_BAD_NAME_CHARS.sub("_", name)).lstrip("/")
    return f"_{key}" if key.startswith(".") else key


def is_transient(error: BaseException) -> bool:
    """True for what a retry may cure: no connection, a timeout, 408, 429 or a 5xx answer."""
    status = getattr(error, "get_http_status_code", None)
    if not callable(status):
        return True  # requests/urllib3 errors: the server is unreachable
    code = int(status())
    return code >= 500 or code in (408, 429)


@dataclass(kw_only=True, slots=True)
class MlflowRun:
    """What the sink needs to open (or continue) its run and to close it."""

    tracking_uri: str | None
    experiment_name: str
    run_name: str
    run_id: str | None
    """The run an earlier segment of this experiment logged to (continued on resume), else None."""
    params: dict[str, str]
    tags: dict[str, str]
    layout: ExperimentLayout
    close_timeout_s: float
    on_run_id: Callable[[str], None]
    """Called once the run exists (records its id in ``metadata.json``)."""
    status: Callable[[], str | None]
    """The experiment's status at close (``completed``/``failed``/``interrupted``)."""


class MlflowSink:
    """See the module docstring. ``write``/``flush``/``truncate_after``/``close`` run on the tracker's sink
    thread and never wait on the server (``close`` waits at most ``close_timeout_s``)."""

    name = "mlflow"

    def __init__(self, run: MlflowRun, logger: ExperimentLogger) -> None:
        self.run = run
        self.logger = logger
        self.run_id: str | None = None
        self._cond = threading.Condition()
        self._queue: deque[Point] = deque()
        self._keys: dict[str, str] = {}
        self._truncated: int | None = None  # lowest step truncated after since the sender last looked
        self._closing: int | None = None  # the exit code once close() was called
        self._abandoned = False
        self._dropped = 0
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._send_loop, name="seo_dist-mlflow", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ tracker's sink thread

    def write(self, step: int, epoch: int | None, wall_time: float, values: Values) -> None:
        stamp = int(wall_time * 1000)
        keys = self._keys
        points = [(keys.get(k) or keys.setdefault(k, mlflow_key(k)), float(v), stamp, step) for k, v in values.items()]
        if epoch is not None:
            points.append(("epoch", float(epoch), stamp, step))
        with self._cond:
            self._queue.extend(points)
            excess = len(self._queue) - MAX_QUEUED_POINTS
            if excess > 0:
                for _ in range(excess):
                    self._queue.popleft()
                if not self._dropped:
                    self.logger.event("mlflow_points_dropped", "warning", message=f"more than {MAX_QUEUED_POINTS} "
                                      "metric values wait for MLflow; dropping the oldest (they stay in metrics.jsonl)")  # fmt: skip
                self._dropped += excess
            self._cond.notify()

    def flush(self) -> None:
        """Nothing to wait for: points reach the server as soon as it takes them."""

    def truncate_after(self, step: int) -> None:
        with self._cond:
            self._queue = deque(p for p in self._queue if p[3] <= step)
            self._truncated = step if self._truncated is None else min(step, self._truncated)
            self._cond.notify()

    def close(self, exit_code: int = 0) -> None:
        with self._cond:
            if self._closing is None:
                self._closing = exit_code
            self._cond.notify()
        self._thread.join(self.run.close_timeout_s)
        if not self._thread.is_alive():
            return
        with self._cond:
            self._abandoned = True
            left = len(self._queue)
            self._cond.notify()
        why = f"the server did not answer ({self._last_error})" if self._last_error else "the server was too slow"
        self.logger.event("sink_unavailable", "warning", message=f"mlflow: gave up after {self.run.close_timeout_s:g}s "
                          f"at close, {why}; {left} metric values, the run's status and artifacts were not sent "
                          "(every value is in metrics.jsonl)")  # fmt: skip

    # ------------------------------------------------------------------ sender thread

    def _send_loop(self) -> None:
        for key, value in CLIENT_ENV.items():
            os.environ.setdefault(key, value)
        try:
            from mlflow import MlflowClient

            client = MlflowClient(self.run.tracking_uri)
        except Exception as e:
            self.logger.event("sink_unavailable", "warning", message=f"mlflow: {error_line(e)}; continuing without it")
            return
        link = _RunLink(client, self.run, self.logger)
        failures = 0
        while not self._abandoned:
            try:
                if link.run_id is None or link.needs_refresh or self._take_truncation():
                    link.open()
                    self.run_id = link.run_id
                done = self._send_next(link)
                if failures:
                    self.logger.event("mlflow_reconnected", "info", message=f"MLflow answers again after {failures} "
                                      "failed attempts; the values kept meanwhile are sent")  # fmt: skip
                    failures = 0
                if done:
                    return
            except Exception as e:
                link.needs_refresh = True
                if not is_transient(e):
                    self.logger.event("sink_unavailable", "warning", message=f"mlflow: {error_line(e)}; "
                                      "continuing without it (every value is in metrics.jsonl)")  # fmt: skip
                    return
                failures += 1
                self._last_error = error_line(e)
                if failures == 1:
                    self.logger.event("mlflow_retrying", "warning", message=f"MLflow did not answer ({self._last_error});"
                                      " keeping the values and retrying, training goes on")  # fmt: skip
                self._pause(min(RETRY_PAUSE_S * 2 ** (failures - 1), RETRY_PAUSE_MAX_S))

    def _take_truncation(self) -> bool:
        with self._cond:
            truncated, self._truncated = self._truncated, None
        return truncated is not None

    def _pause(self, seconds: float) -> None:
        """Wait before the next attempt; close() cuts the wait short (one more try before it gives up)."""
        with self._cond:
            if not self._abandoned:
                self._cond.wait(seconds)

    def _send_next(self, link: _RunLink) -> bool:
        """Send the next batch (waiting for points); at close with nothing queued, end the run. True when done."""
        with self._cond:
            while not self._queue and self._closing is None and not self._abandoned and self._truncated is None:
                self._cond.wait()
            batch = list(islice(self._queue, MAX_METRICS_PER_BATCH))
            exit_code = self._closing
        if batch:
            link.log_points(batch)
            with self._cond:  # the sent points are still the queue's first ones unless truncate_after rebuilt it
                if self._truncated is None:
                    for _ in range(len(batch)):
                        self._queue.popleft()
            return False
        if exit_code is None or self._abandoned:
            return self._abandoned
        link.finish(exit_code)
        return True


class _RunLink:
    """The sender thread's view of the MLflow run: opening it, the latest step per metric, artifacts, status."""

    def __init__(self, client: MlflowClient, run: MlflowRun, logger: ExperimentLogger) -> None:
        self.client = client
        self.run = run
        self.logger = logger
        self.run_id: str | None = None
        self.needs_refresh = False
        self._configured = False
        self._artifacts_logged = False
        self._latest_step: dict[str, int] = {}

    def open(self) -> None:
        """Create or continue the run (first call), log params and tags once, and read the latest steps."""
        from mlflow.entities import RunStatus

        if self.run_id is None:
            existing = self._existing_run()
            if existing is None:
                created = self.client.create_run(self._experiment_id(), run_name=self.run.run_name)
                self.run_id = created.info.run_id
            else:
                self.run_id = existing.info.run_id
                if existing.info.status != RunStatus.to_string(RunStatus.RUNNING):
                    self.client.update_run(self.run_id, status="RUNNING")
            self.run.on_run_id(self.run_id)
            self.logger.event("mlflow_run", run_id=self.run_id, experiment=self.run.experiment_name,
                              resumed=existing is not None, message=f"logging to MLflow run {self.run_id}")  # fmt: skip
        current = self.client.get_run(self.run_id)
        if not self._configured:
            self._log_params_and_tags(current.data.params)
            self._configured = True
        self._latest_step = {m.key: m.step for m in current.data._metric_objs}
        self.needs_refresh = False

    def _existing_run(self) -> Any:
        from mlflow.exceptions import MlflowException

        if self.run.run_id is None:
            return None
        try:
            return self.client.get_run(self.run.run_id)
        except MlflowException as e:
            if is_transient(e):
                raise
            self.logger.event("mlflow_run_missing", "warning", message=f"MLflow run {self.run.run_id} of the earlier "
                              f"segment is gone ({error_line(e)}); starting a new run")  # fmt: skip
            return None

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_STATE

        name = self.run.experiment_name
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise MlflowException(f"MLflow experiment {name!r} is deleted; restore it or set "
                                      "experiment.mlflow.experiment_name", error_code=INVALID_STATE)  # fmt: skip
            return str(found.experiment_id)
        try:
            return self.client.create_experiment(name)
        except MlflowException as e:  # created meanwhile by another job
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise e from None
            return str(found.experiment_id)

    def _log_params_and_tags(self, logged: dict[str, str]) -> None:
        """Params not on the run yet (a resumed run keeps its first values: MLflow params cannot change), and tags."""
        from mlflow.entities import Param, RunTag

        assert self.run_id is not None
        params = [Param(k, v) for k, v in self.run.params.items() if k not in logged]
        tags = [RunTag(k, v) for k, v in self.run.tags.items()]
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(
                self.run_id, params=params[start : start + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True
            )
        for start in range(0, len(tags), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=tags[start : start + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)

    def log_points(self, points: list[Point]) -> None:
        """One ``log_batch`` of the points the server does not have yet."""
        from mlflow.entities import Metric

        assert self.run_id is not None
        latest = self._latest_step
        metrics = [Metric(k, v, t, s) for k, v, t, s in points if s > latest.get(k, -(2**63))]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)

    def finish(self, exit_code: int) -> None:
        """Artifacts (once), then the run's status."""
        assert self.run_id is not None
        if not self._artifacts_logged:
            self._log_artifacts()
            self._artifacts_logged = True
        status = RUN_STATUS.get(self.run.status() or "", "FINISHED" if exit_code == 0 else "FAILED")
        self.client.set_terminated(self.run_id, status=status, end_time=int(time.time() * 1000))

    def _log_artifacts(self) -> None:
        from seo_dist.checkpoint.layout import MANIFEST
        from seo_dist.tracking.analysis import plot_report

        assert self.run_id is not None
        layout = self.run.layout
        with tempfile.TemporaryDirectory(prefix="seo_dist_mlflow_") as tmp:
            try:
                plots = plot_report(layout.root, tmp) if layout.metrics.is_file() else []
            except Exception as e:  # the plots are a convenience: the run is still finished
                self.logger.error("mlflow_plots_failed", e)
                plots = []
            for plot in plots:
                self.client.log_artifact(self.run_id, str(plot), artifact_path=PLOTS_ARTIFACT_DIR)
        manifest = layout.final_model / MANIFEST
        if manifest.is_file():
            self.client.log_artifact(self.run_id, str(manifest), artifact_path=FINAL_MODEL_ARTIFACT_DIR)


def run_params(config: dict[str, Any]) -> dict[str, str]:
    """The flattened config as MLflow params (``train.lr`` -> ``"0.0003"``), values cut to MLflow's limit."""
    from seo_dist.tracking.analysis import flatten

    return {mlflow_key(k)[:250]: str(v)[:MAX_PARAM_VALUE_CHARS] for k, v in flatten(config).items()}


def run_tags(metadata: dict[str, Any]) -> dict[str, str]:
    """Config hash, git commit and branch (MLflow's own tag names, so its UI shows them), world size, host."""
    git = metadata.get("git") or {}
    world = metadata.get("world") or {}
    tags = {
        "seo_dist.experiment_id": metadata.get("experiment_id"),
        "seo_dist.exp_dir": metadata.get("exp_dir"),
        "seo_dist.config_hash": metadata.get("config_hash"),
        "mlflow.source.git.commit": git.get("commit"),
        "mlflow.source.git.branch": git.get("branch"),
        "seo_dist.git_dirty": git.get("dirty"),
        "seo_dist.world_size": world.get("size"),
        "seo_dist.nodes": world.get("nodes"),
        "seo_dist.host": (metadata.get("system") or {}).get("hostname"),
    }
    return {k: str(v) for k, v in tags.items() if v is not None}
