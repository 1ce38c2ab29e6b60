"""SEOTrainer: wires data, model, DeepSpeed engine, tracking, checkpointing and profiling.

The loop itself stays short; every concern lives in its own component. Collectives happen at
fixed points that every rank reaches together: one small all-reduce per micro-step (global loss,
non-finite check and the stop flag), validation, checkpoint saves and the profiler's log-interval
gather.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seo_dist import dist
from seo_dist.config import JobConfig, resolve_deepspeed
from seo_dist.data import ShardedLoader, get_tokenizer, load_corpus, pack_blocks, split_records, validation_batches
from seo_dist.engine.deepspeed_engine import check_precision
from seo_dist.errors import ConfigError, UserError

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_NON_FINITE = 10
"""With ``train.on_nan: skip``, this many non-finite micro-batches in a row mean the weights themselves
have diverged (skipping cannot help): the run stops as with ``stop`` instead of looping forever."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf and ``train.on_nan`` is ``stop``."""


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


def _resumable(exp_dir: Path) -> bool:
    """An experiment directory a run can continue: it has its metadata or a checkpoints folder."""
    return (exp_dir / "metadata.json").is_file() or (exp_dir / "checkpoints").is_dir()


def resume_experiment_dir(resume: Path) -> Path:
    """The experiment directory that ``--resume`` names: the directory itself, or the one holding a checkpoint folder."""
    if not resume.exists():
        raise UserError(f"--resume {str(resume)!r} does not exist; give an experiment directory or a checkpoint folder")
    if _resumable(resume):
        return resume
    if resume.parent.name == "checkpoints":
        return resume.parent.parent
    raise UserError(f"--resume {str(resume)!r} is neither an experiment directory nor a checkpoint folder")


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop agrees on it across ranks and stops at a step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class SEOTrainer:
    """Train the configured causal LM; ``train()`` returns a :class:`TrainResult` on every rank.

    ``resume`` is an experiment directory (continue from its latest valid checkpoint) or one
    checkpoint folder inside it.
    """

    def __init__(self, job: JobConfig, *, resume: str | Path | None = None) -> None:
        self.job = job
        self.resume = Path(resume) if resume is not None else None
        self.step = 0
        self.tokens_seen = 0
        self.tracker: Any = None
        self.checkpoints: Any = None
        self.profiler: Any = None
        self.engine: Any = None
        self.model: torch.nn.Module | None = None
        self._last_checkpoint: Path | None = None
        self._stop = _StopFlag()

    # ------------------------------------------------------------------ setup

    def _setup_tokenizer(self) -> None:
        self.corpus = load_corpus(self.job.data.corpus)
        self.tokenizer = get_tokenizer(self.corpus, self.job.data.vocab_size, self.job.data.tokenizer)

    def _setup_data(self, info: dist.DistInfo) -> None:
        job = self.job
        train_records, val_records = split_records(self.corpus.records, job.data.val_fraction)
        seq_len, mb = job.train.seq_len, job.train.micro_batch_size
        self.train_blocks = pack_blocks(train_records, self.tokenizer, seq_len)
        self.val_blocks = pack_blocks(val_records, self.tokenizer, seq_len)
        try:
            self.loader = ShardedLoader(self.train_blocks, mb, info.rank, info.world_size, job.train.seed)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.val_blocks.shape[0] // info.world_size < mb:
            raise ConfigError(
                f"the validation split has {self.val_blocks.shape[0]} blocks, too few for "
                f"{info.world_size} rank(s) x train.micro_batch_size={mb}; raise data.val_fraction"
            )

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
        from seo_dist.config import zero_stage
        from seo_dist.profiling import StepProfiler, flops_per_token

        t = self.job.train
        # Phases where a fast rank waits for a slow one: excluded from "busy" time when naming stragglers.
        sync = ("loss_sync", "backward") + (("forward",) if zero_stage(self.job) == 3 else ())
        self.profiler = StepProfiler(
            self.job.profiling,
            device=self.engine.device,
            flops_per_token=flops_per_token(self.hf_config, t.seq_len),
            tokens_per_step_per_rank=t.micro_batch_size * t.grad_accum * t.seq_len,
            samples_per_step_per_rank=t.micro_batch_size * t.grad_accum,
            trace_dir=exp_dir / "logs" / "traces" if exp_dir is not None else None,
            sync_phases=sync,
        )
        if self.tracker is not None:
            self.tracker.code_profiler = self.profiler

    def _build_checkpointer(self, exp_dir: Path | None) -> None:
        if exp_dir is None or not self.job.experiment.checkpoint_enabled:
            return
        from seo_dist.checkpoint import AdvancedCheckpointManager

        self.checkpoints = AdvancedCheckpointManager.from_config(
            exp_dir / "checkpoints",
            self.job.checkpoint,
            event_fn=self.tracker.log_event,
            config_hash=self.job.config_hash(),
            config=self.job.to_dict(),
        )
        self.checkpoints.sweep_abandoned()
        self.tracker.checkpoint_manager = self.checkpoints

    def _restore(self) -> bool:
        """Load the checkpoint named by ``--resume``; False when the experiment has none yet."""
        from seo_dist.checkpoint import NoCheckpointError

        if self.resume is None or self.checkpoints is None:
            return False
        target = self.resume if self.resume.parent.name == "checkpoints" else "latest"
        try:
            loaded = self.checkpoints.load_checkpoint(target, self.engine)
        except NoCheckpointError:
            self.tracker.set_resume_step(-1)  # starting over: rows the earlier attempt logged would be duplicates
            self.tracker.log_event(
                "resume_without_checkpoint",
                step=0,
                message=f"{self.resume} has no checkpoint yet; training starts at step 0",
            )
            return False
        state = loaded["rank_state"]
        self.step = int(loaded["step"])
        self._follow_configured_lr()
        self.tokens_seen = int(state["tokens_seen"])
        self.loader.load_state_dict(state["loader"])
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
        self._last_checkpoint = self.checkpoints.save_checkpoint(
            self.engine,
            step=self.step,
            metrics=metrics,
            epoch=self.loader.epoch,
            rank_state={"loader": self.loader.state_dict(), "tokens_seen": self.tokens_seen},
            blocking=True if final else None,
        )
        self.tracker.log_metrics({"ckpt/stall_s": time.perf_counter() - start}, step=self.step)

    def _start_tracking(self) -> Path | None:
        from seo_dist.tracking import ExperimentTracker

        exp_cfg = self.job.experiment
        restart = self._resume_after_restart()
        resume_dir = self._resume_experiment_dir()
        if resume_dir is not None:
            exp_cfg.base_dir, exp_cfg.experiment_id = str(resume_dir.parent), resume_dir.name
        self.tracker = ExperimentTracker(exp_cfg, code_profiler=None, job_config=self.job)
        exp_dir = self.tracker.start_experiment(resume=resume_dir is not None)
        if restart is not None:
            attempt, previous = restart
            if previous is not None:
                self.tracker.log_event("restart_resumed", attempt=attempt, path=previous)
            else:
                self.tracker.log_event(
                    "restart_not_resumed",
                    level="warning",
                    attempt=attempt,
                    message="torchrun restarted the workers but the previous attempt left no "
                    "experiment to continue; training starts at step 0",
                )
        if dist.is_rank_zero() and exp_cfg.tracking_enabled:
            self.tokenizer.save_pretrained(str(exp_dir / "artifacts" / "tokenizer"))
        return exp_dir

    def _resume_after_restart(self) -> tuple[int, str | None] | None:
        """Under ``torchrun --max-restarts``, restarted workers continue the previous attempt's experiment from
        its latest valid checkpoint instead of starting a new one at step 0 (with ``--resume``: the experiment
        of the given folder, from its latest checkpoint). Collective; returns ``(attempt, experiment dir or
        None)`` on a restart, else None."""
        attempt = dist.elastic_restart_count()
        if attempt == 0:
            return None
        if self.resume is not None:
            if self.resume.parent.name == "checkpoints":  # that folder is older than what the last attempt saved
                self.resume = self.resume.parent.parent
            return attempt, str(self.resume)
        previous = dist.broadcast_object(self._previous_attempt_dir() if dist.is_rank_zero() else None)
        if previous is not None:
            self.resume = Path(previous)
        return attempt, previous

    def _previous_attempt_dir(self) -> str | None:
        """Rank 0: the experiment ``experiment.experiment_id`` names, or else the newest one started by this
        torchrun agent (``metadata.json`` records its launch id)."""
        exp = self.job.experiment
        base = Path(exp.base_dir).expanduser()
        if exp.experiment_id is not None:
            candidate = base / exp.experiment_id
            return str(candidate.absolute()) if _resumable(candidate) else None
        me = dist.launch_id()
        if me is None or not base.is_dir():
            return None
        newest: tuple[float, Path] | None = None
        for meta_path in base.glob("*/metadata.json"):
            try:
                meta = json.loads(meta_path.read_text())
                started = float(meta.get("start_timestamp") or 0.0)
            except (OSError, ValueError, TypeError):
                continue
            if isinstance(meta, dict) and (meta.get("world") or {}).get("launch_id") == me:
                if newest is None or started > newest[0]:
                    newest = (started, meta_path.parent)
        return str(newest[1].absolute()) if newest is not None else None

    def _resume_experiment_dir(self) -> Path | None:
        return resume_experiment_dir(self.resume) if self.resume is not None else None

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainResult:
        job = self.job
        info = dist.init_distributed()
        # Everything that can reject the user's input runs before anything is written to disk.
        self.ds_config = resolve_deepspeed(job, info.world_size)
        check_precision(self.ds_config, dist.get_device())
        self._setup_tokenizer()
        self._build_model()
        self._setup_data(info)
        exp_dir = self._start_tracking()
        self._stop.install()
        result = self._result = TrainResult(status="running", step=0, exp_dir=exp_dir)
        try:
            self._build_engine()
            self._build_profiler(exp_dir)
            self._build_checkpointer(exp_dir)
            seed_everything(job.train.seed + info.rank)
            resumed = self._restore()  # after seeding: a checkpoint restores every RNG
            self._train_loop(info, result, resumed)
            if self.checkpoints is not None:
                self.checkpoints.close()  # the save in flight is committed (or its failure raised) before "completed"
            result.status = "interrupted" if self._stop.signum is not None else "completed"
            self.tracker.end_experiment(result.status)
        except BaseException as e:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            result.status = status
            if self.tracker is not None:
                self.tracker.end_experiment(status, error=e)
            raise
        finally:
            self._close_checkpoints()
            self._stop.restore()
            if self.profiler is not None:
                self.profiler.close()
        result.step = self.step
        return result

    def _close_checkpoints(self) -> None:
        """Finish the save in flight before the process group goes away (idempotent). On the error path its
        own failure is only logged: the run already failed for another reason."""
        if self.checkpoints is None:
            return
        try:
            self.checkpoints.close()
        except Exception as e:  # noqa: BLE001
            log.error("checkpoint save in flight failed while stopping: %s: %s", type(e).__name__, e)

    def _train_loop(self, info: dist.DistInfo, result: TrainResult, resumed: bool) -> None:
        from tqdm import tqdm

        engine, t = self.engine, self.job.train
        tokens_per_step = t.micro_batch_size * t.grad_accum * t.seq_len * info.world_size
        result.initial_val_loss = self.evaluate()
        if not resumed:  # a resumed run logged this step's validation before it stopped
            self._log({"val/loss": result.initial_val_loss}, result)
        bar = tqdm(
            total=t.max_steps,
            initial=self.step,
            disable=not (t.progress_bar and info.is_rank_zero),
            desc="train",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        engine.train()
        loop_start = time.perf_counter()
        stop, step_metrics = False, {}
        window_loss, window_steps, window_start = 0.0, 0, loop_start
        while self.step < t.max_steps:
            loss, stop, ckpt_failed = self._train_step()
            self.step += 1
            self.tokens_seen += tokens_per_step
            window_loss, window_steps = window_loss + loss, window_steps + 1
            self.profiler.step_end(self.step)
            if self.checkpoints is not None:
                if ckpt_failed:  # every rank raises the failed save's error at this same step
                    self.checkpoints.wait()
                self._log_checkpoint_stats(self.checkpoints.poll(raise_errors=False))
            if self.step % t.log_interval == 0 or self.step == t.max_steps or stop:
                elapsed = time.perf_counter() - window_start
                tok_s = window_steps * tokens_per_step / max(elapsed, 1e-9)
                metrics = {
                    "train/loss": window_loss / window_steps,
                    "train/lr": self.lr_scheduler.get_last_lr()[0],
                    "train/tokens_seen": float(self.tokens_seen),
                    **self.profiler.collect(self.step),
                }
                self._log(metrics, result)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            bar.update(1)
            last = self.step == t.max_steps or stop
            step_metrics = {"train/loss": loss}
            if not last and t.eval_interval and self.step % t.eval_interval == 0:
                step_metrics["val/loss"] = self.evaluate()
                self._log({"val/loss": step_metrics["val/loss"]}, result)
            if not last and self.checkpoints is not None and self.checkpoints.should_save(self.step):
                self._save(self._with_best_metric(step_metrics))
            if stop:
                break
        bar.close()
        result.loop_time_s = time.perf_counter() - loop_start
        if not stop:  # pre-empted: spend the grace period on the checkpoint, not on validation
            result.final_val_loss = self.evaluate()
            step_metrics["val/loss"] = result.final_val_loss
            self._log({"val/loss": result.final_val_loss}, result)
        if self.checkpoints is not None and self.checkpoints.should_save(self.step, final=True):
            self._save(step_metrics, final=True)
            self._log_checkpoint_stats(self.checkpoints.poll(raise_errors=False))
            if not stop and self.job.checkpoint.export_final:
                self._export_final()

    def _export_final(self) -> None:
        """Rank 0 consolidates the final checkpoint into a Hugging Face folder; a failure is an event, not a crash.

        No collective follows this on purpose: a large export may outlast the process group's timeout.
        """
        if not dist.is_rank_zero() or self._result.exp_dir is None:
            return
        if self._last_checkpoint is None:  # the final save failed under checkpoint.on_error=warn
            self.tracker.log_event(
                "final_model_export_skipped",
                step=self.step,
                level="warning",
                message="no committed final checkpoint to export",
            )
            return
        from seo_dist.export import consolidate_checkpoint

        out = self._result.exp_dir / "artifacts" / "final_model"
        start = time.perf_counter()
        try:
            consolidate_checkpoint(self._last_checkpoint, out, dtype=self.job.checkpoint.export_dtype)
        except Exception as e:  # the checkpoint is safe; only the convenience copy failed
            self.tracker.log_event("export_failed", step=self.step, level="error", error=f"{type(e).__name__}: {e}")
            return
        self.tracker.log_event("model_exported", step=self.step, path=str(out), seconds=time.perf_counter() - start)

    def _log_checkpoint_stats(self, finished: list[dict[str, Any]]) -> None:
        """``ckpt/*`` metrics of saves whose background work just finished (rank 0 logs them)."""
        for stats in finished:
            if stats.get("error"):
                continue  # reported as a checkpoint_save_failed event (checkpoint.on_error=warn)
            metrics = {
                f"ckpt/{k}": float(stats[k])
                for k in ("stage_s", "write_s", "bytes", "write_gbps", "commit_s")
                if stats.get(k) is not None
            }
            self.tracker.log_metrics(metrics, step=self.step)  # at the current step: rows stay in step order

    def _with_best_metric(self, metrics: dict[str, float]) -> dict[str, float]:
        """Checkpoint metrics; a ``val/`` best metric not measured at this step is measured now."""
        best = self.job.checkpoint.best_metric
        if best == "val/loss" and best not in metrics and self.job.checkpoint.keep_best > 0:
            metrics = {**metrics, best: self.evaluate()}
            self._log({best: metrics[best]}, self._result)
        return metrics

    def _train_step(self) -> tuple[float, bool, bool]:
        """One optimizer step (``grad_accum`` micro-batches).

        Returns (global mean loss, any rank asked to stop, any rank's background checkpoint save failed):
        the flags ride on the loss all-reduce so that every rank acts on them at the same step.
        """
        engine, t = self.engine, self.job.train
        total, micro, skipped = 0.0, 0, 0
        stop = ckpt_failed = False
        prof = self.profiler
        while micro < t.grad_accum:
            with prof.oom_guard():
                with prof.phase("data"):
                    batch = {k: v.to(engine.device) for k, v in self.loader.next_batch().items()}
                with prof.phase("forward"):
                    loss = engine(**batch).loss
                with prof.phase("loss_sync"):
                    local = loss.detach().float().item()
                    # global sum of losses; ranks with a non-finite loss, asked to stop, with a failed save
                    failed_here = self.checkpoints is not None and self.checkpoints.failed
                    loss_sum, bad, stops, failures = dist.all_reduce_sum(
                        [
                            local if math.isfinite(local) else 0.0,
                            0.0 if math.isfinite(local) else 1.0,
                            1.0 if self._stop.signum is not None else 0.0,
                            1.0 if failed_here else 0.0,
                        ]
                    )
                stop = stop or stops > 0
                ckpt_failed = ckpt_failed or failures > 0
                if bad:
                    skipped += 1
                    self._on_non_finite(local, skipped)
                    continue  # 'skip': drop this micro-batch on every rank (no backward, no step)
                skipped = 0
                with prof.phase("backward"):
                    engine.backward(loss)
                with prof.phase("optimizer"):
                    engine.step()
            total += loss_sum / dist.get_world_size()
            micro += 1
        return total / t.grad_accum, stop, ckpt_failed

    def _on_non_finite(self, local_loss: float, in_a_row: int) -> None:
        policy = self.job.train.on_nan
        self.tracker.log_event(
            "non_finite_loss",
            step=self.step,
            level="error" if policy == "stop" else "warning",
            local_loss=str(local_loss),
            policy=policy,
            in_a_row=in_a_row,
        )
        if policy == "stop":
            raise NonFiniteLossError(f"loss became non-finite at step {self.step} (train.on_nan=stop)")
        if in_a_row >= MAX_CONSECUTIVE_NON_FINITE:
            raise NonFiniteLossError(
                f"loss stayed non-finite for {in_a_row} micro-batches in a row at step {self.step}: "
                f"the weights have diverged and skipping cannot recover (lower train.lr, or resume "
                f"from an earlier checkpoint)"
            )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over all ranks (every rank runs the same number of batches)."""
        info = dist.get_dist_info()
        engine, t = self.engine, self.job.train
        was_training = engine.training
        engine.eval()
        total, count = 0.0, 0.0
        for batch in validation_batches(
            self.val_blocks, t.micro_batch_size, info.rank, info.world_size, t.eval_batches
        ):
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            total += engine(**batch).loss.float().item()
            count += 1
        if was_training:
            engine.train()
        total, count = dist.all_reduce_sum([total, count])
        return total / count

    def _log(self, metrics: dict[str, float], result: TrainResult) -> None:
        result.history.append({"step": self.step, **metrics})
        self.tracker.log_metrics(metrics, step=self.step, epoch=self.loader.epoch)
