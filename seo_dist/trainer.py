"""SEOTrainer: wires data, model, DeepSpeed engine, tracking, checkpointing and profiling.

The loop itself stays short; every concern lives in its own component (:mod:`seo_dist.training`,
:mod:`seo_dist.resume`). Collectives happen at fixed points that every rank reaches together: DeepSpeed's
own, a host-only flag exchange per step (stop request, failed save; :mod:`seo_dist.training.flags`), the
loss all-reduce and the profiler's gather at the log interval, validation and checkpoint saves. The step
itself never waits for the device (:mod:`seo_dist.training.step`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seo_dist import dist
from seo_dist.config import TRAIN_LOSS, VAL_LOSS, JobConfig, job_problems
from seo_dist.engine.deepspeed_engine import check_precision
from seo_dist.engine.ds_config import resolve_deepspeed, zero_stage
from seo_dist.errors import ConfigError, error_line
from seo_dist.monitor import heartbeat as hb
from seo_dist.monitor.watchdog import Monitor
from seo_dist.resume import (
    ResumePlan,
    global_batch_problem,
    plan_resume,
    record_world_size_change,
    resume_experiment_dir,
)
from seo_dist.tracking.layout import ExperimentLayout
from seo_dist.training.data_setup import open_job_data, validation_loss
from seo_dist.training.final_export import export_final_model
from seo_dist.training.gc_policy import ScheduledGC
from seo_dist.training.restore import trainer_state
from seo_dist.training.step import MAX_CONSECUTIVE_NON_FINITE, NonFiniteLossError, TrainStep
from seo_dist.training.stop import StopFlag

__all__ = ["MAX_CONSECUTIVE_NON_FINITE", "NonFiniteLossError", "SEOTrainer", "TrainResult", "resume_experiment_dir"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    status: str
    step: int
    exp_dir: Path | None
    initial_val_loss: float | None = None
    final_val_loss: float | None = None
    loop_time_s: float = 0.0
    """Wall time of the training steps (initial and final validation excluded)."""
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SEOTrainer:
    """Train the configured causal LM; ``train()`` returns a :class:`TrainResult` on every rank.

    ``resume``: a :class:`~seo_dist.resume.ResumePlan`, or a path as for ``--resume`` (an experiment
    directory, continued from its latest valid checkpoint, or one checkpoint folder inside it), planned
    when ``train()`` starts (a torchrun restart is detected either way).
    """

    def __init__(self, job: JobConfig, *, resume: ResumePlan | str | Path | None = None) -> None:
        self.job = job
        self._resume = resume
        self.plan = ResumePlan()
        self.step = 0
        self.tokens_seen = 0
        self.tracker: Any = None
        self.checkpoints: Any = None
        self.profiler: Any = None
        self.engine: Any = None
        self.model: torch.nn.Module | None = None
        self._last_checkpoint: Path | None = None
        self._stop = StopFlag()
        self.monitor: Monitor | None = None
        self._gc = ScheduledGC(0)  # replaced while the loop runs

    # ------------------------------------------------------------------ setup

    def _build_model(self) -> None:
        from seo_dist.model import build_model

        torch.manual_seed(self.job.train.seed)  # identical initial weights on every rank
        self.model = build_model(self.job.model, self.tokenizer, self.job.train.seq_len)
        self.hf_config = self.model.config

    def _build_engine(self) -> None:
        from seo_dist.engine import build_deepspeed_engine

        model, self.model = self.model, None  # the engine owns it now
        if model is None:
            raise RuntimeError("the model is built in __init__; an engine can be built once")
        self.engine, self.lr_scheduler = build_deepspeed_engine(model, self.job.train, self.ds_config)

    def _build_profiler(self, exp_dir: Path | None) -> None:
        from seo_dist.profiling import StepProfiler, flops_per_token

        t = self.job.train
        # Phases where a fast rank waits for a slow one: excluded from "busy" time when naming stragglers.
        sync = ("backward", "optimizer") + (("forward",) if zero_stage(self.job) == 3 else ())
        self.profiler = StepProfiler(
            self.job.profiling,
            device=self.engine.device,
            flops_per_token=flops_per_token(self.hf_config, t.seq_len),
            tokens_per_step_per_rank=t.micro_batch_size * t.grad_accum * t.seq_len,
            samples_per_step_per_rank=t.micro_batch_size * t.grad_accum,
            trace_dir=ExperimentLayout(exp_dir).traces if exp_dir is not None else None,
            sync_phases=sync,
        )
        if self.tracker is not None:
            self.tracker.code_profiler = self.profiler

    def _build_checkpointer(self, exp_dir: Path | None) -> None:
        if exp_dir is None or not self.job.experiment.checkpoint_enabled:
            return
        from seo_dist.checkpoint import AdvancedCheckpointManager
        from seo_dist.export.run_files import export_files

        self.checkpoints = AdvancedCheckpointManager.from_config(
            ExperimentLayout(exp_dir).checkpoints,
            self.job.checkpoint,
            event_fn=self.tracker.log_event,
            config_hash=self.job.config_hash(),
            config=self.job.to_dict(),
            run_files=export_files(self.hf_config, self.tokenizer),
        )
        self.checkpoints.sweep_abandoned()
        self.tracker.checkpoint_manager = self.checkpoints

    def _restore(self) -> bool:
        """Load the checkpoint the resume plan names; False when there is none (yet)."""
        from seo_dist.checkpoint import NoCheckpointError

        plan = self.plan
        if plan.experiment_dir is None or self.checkpoints is None:
            return False
        try:
            loaded = self.checkpoints.load_checkpoint(plan.load_target, self.engine)
        except NoCheckpointError:
            self.tracker.set_resume_step(-1)  # starting over: rows the earlier attempt logged would be duplicates
            self.tracker.log_event(
                "resume_without_checkpoint",
                step=0,
                message=f"{plan.checkpoint or plan.experiment_dir} has no checkpoint yet; training starts at step 0",
            )
            return False
        self.step = int(loaded["step"])
        self._follow_configured_lr()
        state = trainer_state(loaded)
        self.tokens_seen = int(state["tokens_seen"])
        moved = self.loader.load_state_dict(state["loader"])
        if moved is not None:
            fields = dataclasses.asdict(moved)
            self.tracker.log_event("data_resharded", step=self.step, **fields, message=moved.describe())
        record_world_size_change(self.tracker, loaded, self.job)
        self.tracker.set_resume_step(self.step)
        self.tracker.log_event("resumed", step=self.step, path=str(loaded["path"]))
        return True

    def _follow_configured_lr(self) -> None:
        """A resume with another ``train.lr`` uses it (from the resumed step on, same schedule shape)."""
        from seo_dist.engine.deepspeed_engine import apply_configured_lr

        saved = apply_configured_lr(self.lr_scheduler, self.job.train)
        if saved is not None:
            message = f"train.lr changed since the checkpoint: peak LR {saved:g} -> {self.job.train.lr:g} from step {self.step}"
            self.tracker.log_event(
                "lr_changed_on_resume",
                step=self.step,
                level="warning",
                saved_lr=saved,
                lr=self.job.train.lr,
                message=message,
            )

    def _save(self, metrics: dict[str, float], *, final: bool = False) -> None:
        """Save on every rank; log how long the loop was blocked (``ckpt/stall_s``). The final save is
        synchronous: it is committed when this returns (a pre-empted job may be killed right after)."""
        start = time.perf_counter()
        with self._phase(hb.CHECKPOINT_SAVE):
            self._last_checkpoint = self.checkpoints.save_checkpoint(
                self.engine,
                step=self.step,
                metrics=metrics,
                epoch=self.loader.epoch,
                rank_state={"loader": self.loader.state_dict(), "tokens_seen": self.tokens_seen},
                blocking=True if final else None,
                copy_in_background=self.job.checkpoint.copy_in_background and not final,
            )
        self.tracker.log_metrics({"ckpt/stall_s": time.perf_counter() - start}, step=self.step)

    def _start_tracking(self) -> Path | None:
        """Start (or continue) the experiment the plan names and log how a restart was resolved."""
        from seo_dist.tracking import ExperimentTracker

        plan, experiment = self.plan, self.job.experiment
        self.tracker = ExperimentTracker(experiment, code_profiler=None, job_config=self.job)
        exp_dir = self.tracker.start_experiment(resume=plan.experiment_dir is not None)
        if plan.restart_attempt and plan.restart_found_experiment:
            self.tracker.log_event("restart_resumed", attempt=plan.restart_attempt, path=str(plan.experiment_dir))
        elif plan.restart_attempt:
            self.tracker.log_event(
                "restart_not_resumed",
                level="warning",
                attempt=plan.restart_attempt,
                message="torchrun restarted the workers but the previous attempt left no "
                "experiment to continue; training starts at step 0",
            )
        if dist.is_rank_zero() and experiment.tracking_enabled:
            self.tokenizer.save_pretrained(str(ExperimentLayout(exp_dir).tokenizer))
        return exp_dir

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainResult:
        # Everything that can reject the user's input runs before anything is written to disk.
        problems = job_problems(self.job)  # a JobConfig built in Python has not been through load_config
        if problems:
            raise ConfigError("; ".join(problems))
        info = dist.init_distributed(self.job.monitor.startup_collective_timeout_s)
        resume = self._resume
        self.plan = resume if isinstance(resume, ResumePlan) else plan_resume(resume, self.job.experiment)
        # the job as this run executes it: a resumed experiment keeps its directory (the caller's job is not changed)
        job = self.job = dataclasses.replace(self.job, experiment=self.plan.experiment_config(self.job.experiment))
        if (problem := global_batch_problem(job, info.world_size)) is not None:
            raise ConfigError(problem)
        self.ds_config = resolve_deepspeed(job, info.world_size)
        check_precision(self.ds_config, dist.get_device())
        self.data = open_job_data(job, info)
        self.tokenizer = self.data.tokenizer
        self._build_model()  # before the loader: a seq_len over the model's limit is named as such
        self.loader = self.data.open_loader(job, info)
        exp_dir = self._start_tracking()
        self.tracker.log_event("dataset_ready", **self.data.event_fields())
        self.monitor = Monitor(job.monitor, tracker=self.tracker, exp_dir=exp_dir).start()
        self._stop.install()
        result = self._result = TrainResult(status="running", step=0, exp_dir=exp_dir)
        try:
            self._build_engine()
            self._build_profiler(exp_dir)
            self._build_checkpointer(exp_dir)
            seed_everything(job.train.seed + info.rank)
            with self._phase(hb.LOAD):
                resumed = self._restore()  # after seeding: a checkpoint restores every RNG
            with ScheduledGC(job.train.gc_interval) as self._gc:
                self._train_loop(info, result, resumed)
            self.monitor.check_orphaned()  # records why the run stops when its launcher died
            if self.checkpoints is not None:
                self.checkpoints.close()  # the save in flight is committed (or its failure raised) before "completed"
            result.status = "interrupted" if self._stop.requested else "completed"
            self.tracker.end_experiment(result.status)
        except BaseException as e:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            result.status = status
            if self.tracker is not None:
                self.tracker.end_experiment(status, error=e)
            raise
        finally:
            self._close_checkpoints()
            if self.monitor is not None:
                self.monitor.stop()  # after the end record: its alert is delivered (bounded wait)
            self._stop.restore()
            if self.profiler is not None:
                self.profiler.close()
        result.step = self.step
        return result

    def _saves_ahead(self) -> bool:
        """A save is due after this step and before the last (the final one is synchronous: it needs no staging)."""
        interval = self.job.checkpoint.save_interval
        return (
            self.checkpoints is not None
            and interval > 0
            and (self.step // interval + 1) * interval < self.job.train.max_steps
        )

    def _phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """The monitor's heartbeat shows ``name`` (a phase allowed to take long) for the block."""
        return self.monitor.phase(name) if self.monitor is not None else contextlib.nullcontext()

    def _close_checkpoints(self) -> None:
        """Finish the save in flight before the process group goes away (idempotent). On the error path its
        own failure is only logged: the run already failed for another reason."""
        if self.checkpoints is None:
            return
        try:
            self.checkpoints.close()
        except Exception as e:  # noqa: BLE001
            log.error("checkpoint save in flight failed while stopping: %s", error_line(e))

    def _train_loop(self, info: dist.DistInfo, result: TrainResult, resumed: bool) -> None:
        from tqdm import tqdm

        engine, t, monitor = self.engine, self.job.train, self.monitor
        if monitor is None:
            raise RuntimeError("train() starts the monitor before the loop")
        tokens_per_step = t.micro_batch_size * t.grad_accum * t.seq_len * info.world_size
        result.initial_val_loss = self.evaluate()
        if not resumed:  # a resumed run logged this step's validation before it stopped
            self._log({VAL_LOSS: result.initial_val_loss}, result)
        bar = tqdm(
            total=t.max_steps,
            initial=self.step,
            disable=not (t.progress_bar and info.is_rank_zero),
            desc="train",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        engine.train()
        train_step = TrainStep(self.engine, self.loader, self.profiler, t, stop_flag=self._stop,
                               checkpoints=self.checkpoints, event=self.tracker.log_event)  # fmt: skip
        loop_start = time.perf_counter()
        stop, step_metrics = False, {}
        window_steps, window_start = 0, loop_start
        first_step = True
        while self.step < t.max_steps:
            monitor.beat(self.step)
            outcome = train_step(self.step)
            stop = outcome.stop
            self.step += 1
            self.tokens_seen += tokens_per_step
            window_steps += 1
            self.profiler.step_end(self.step)
            monitor.step_done(self.step)
            self._gc.step(self.step)  # every rank at the same step: nobody waits for another's collection
            if first_step and self._saves_ahead() and not self.checkpoints.should_save(self.step):
                # after a step (optimizers create their state in the first one), before the first save: its
                # staging buffers are allocated in the background, and the first save stalls like the next ones
                self.checkpoints.prewarm(self.engine)
            first_step = False
            if self.checkpoints is not None:
                if outcome.checkpoint_failed:  # every rank raises the failed save's error at this same step
                    self.checkpoints.wait()
                self._log_checkpoint_stats(self.checkpoints.poll(raise_errors=False))
            loss: float | None = None
            if self.step % t.log_interval == 0 or self.step == t.max_steps or stop:
                elapsed = time.perf_counter() - window_start
                tok_s = window_steps * tokens_per_step / max(elapsed, 1e-9)
                loss = train_step.read_loss()  # the window's loss: read here, once (a device synchronisation)
                metrics = {
                    **({TRAIN_LOSS: loss} if loss is not None else {}),
                    "train/lr": self.lr_scheduler.get_last_lr()[0],
                    "train/tokens_seen": float(self.tokens_seen),
                    **self.profiler.collect(self.step),
                }
                self._log(metrics, result)
                monitor.observe_metrics(metrics, self.step)
                bar.set_postfix(loss=f"{loss if loss is not None else float('nan'):.3f}", tok_s=f"{tok_s:,.0f}",
                                refresh=False)  # fmt: skip
                window_steps, window_start = 0, time.perf_counter()
            bar.update(1)
            last = self.step == t.max_steps or stop
            saving = not last and self.checkpoints is not None and self.checkpoints.should_save(self.step)
            if saving and loss is None:  # the loss since the last log step, for the checkpoint's metrics
                loss = train_step.read_loss(reset=False)
            step_metrics = {TRAIN_LOSS: loss} if loss is not None else {}
            if not last and t.eval_interval and self.step % t.eval_interval == 0:
                step_metrics[VAL_LOSS] = self.evaluate()
                self._log({VAL_LOSS: step_metrics[VAL_LOSS]}, result)
            if saving:
                self._save(self._with_best_metric(step_metrics))
            if stop:
                break
        train_step.close()
        bar.close()
        monitor.heartbeat.phase(hb.FINISH)
        result.loop_time_s = time.perf_counter() - loop_start
        if not stop:  # pre-empted: spend the grace period on the checkpoint, not on validation
            result.final_val_loss = self.evaluate()
            step_metrics[VAL_LOSS] = result.final_val_loss
            self._log({VAL_LOSS: result.final_val_loss}, result)
        if self.checkpoints is not None and self.checkpoints.should_save(self.step, final=True):
            self._save(step_metrics, final=True)
            self._log_checkpoint_stats(self.checkpoints.poll(raise_errors=False))
            if not stop and self.job.checkpoint.export_final and info.is_rank_zero and result.exp_dir is not None:
                with self._phase(hb.FINAL_EXPORT):
                    export_final_model(self._last_checkpoint, result.exp_dir, self.job.checkpoint.export_dtype,
                                       event=self.tracker.log_event, step=self.step,
                                       signing_key_file=self.job.checkpoint.signing_key_file)  # fmt: skip

    def _log_checkpoint_stats(self, finished: list[dict[str, Any]]) -> None:
        """``ckpt/*`` metrics of saves whose background work just finished (rank 0 logs them)."""
        for stats in finished:
            if stats.get("error"):
                continue  # reported as a checkpoint_save_failed event (checkpoint.on_error=warn)
            metrics = {
                f"ckpt/{k}": float(stats[k])
                for k in (
                    "stage_s",
                    "staging_allocated_bytes",
                    "copy_s",
                    "copy_wait_s",
                    "write_s",
                    "bytes",
                    "write_gbps",
                    "commit_s",
                )
                if stats.get(k) is not None
            }
            self.tracker.log_metrics(metrics, step=self.step)  # at the current step: rows stay in step order

    def _with_best_metric(self, metrics: dict[str, float]) -> dict[str, float]:
        """Checkpoint metrics; the best metric, when it is the validation loss not measured at this step, is measured now."""
        best = self.job.checkpoint.best_metric
        if best == VAL_LOSS and best not in metrics and self.job.checkpoint.keep_best > 0:
            metrics = {**metrics, best: self.evaluate()}
            self._log({best: metrics[best]}, self._result)
        return metrics

    def evaluate(self) -> float:
        """Mean validation loss over all ranks (every rank runs the same number of batches). Collective."""
        with self._phase(hb.VALIDATION):
            return validation_loss(self.engine, self.data.val_samples, self.job)

    def _log(self, metrics: dict[str, float], result: TrainResult) -> None:
        result.history.append({"step": self.step, **metrics})
        self.tracker.log_metrics(metrics, step=self.step, epoch=self.loader.epoch)
