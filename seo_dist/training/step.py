"""One optimizer step (``train.grad_accum`` micro-batches) and the policy for a non-finite loss.

The step's flags ride on the one small all-reduce per micro-batch that sums the loss: a non-finite loss
on any rank, a stop request (SIGTERM/SIGINT) on any rank, a failed background checkpoint save on any
rank. Every rank therefore acts on them at the same micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from seo_dist import dist
from seo_dist.config import TrainConfig
from seo_dist.data import ShardedLoader
from seo_dist.training.stop import StopFlag

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from seo_dist.checkpoint.manager import CheckpointManager
    from seo_dist.profiling import StepProfiler

MAX_CONSECUTIVE_NON_FINITE = 10
"""With ``train.on_nan: skip``, this many non-finite micro-batches in a row mean the weights themselves
have diverged (skipping cannot help): the run stops as with ``stop`` instead of looping forever."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf and ``train.on_nan`` is ``stop``."""


@dataclass(frozen=True, slots=True)
class StepOutcome:
    loss: float
    """Mean loss over the step's micro-batches and all ranks."""
    stop: bool
    """Some rank was asked to stop."""
    checkpoint_failed: bool
    """Some rank's background checkpoint save failed."""


class TrainStep:
    """Runs optimizer steps on ``engine`` with batches from ``loader``; phases are timed by ``profiler``.

    ``checkpoints`` (or None) reports a failed background save through ``.failed``; ``event`` logs the
    ``non_finite_loss`` event (the tracker's ``log_event``).
    """

    def __init__(
        self,
        engine: DeepSpeedEngine,
        loader: ShardedLoader,
        profiler: StepProfiler,
        train: TrainConfig,
        *,
        stop_flag: StopFlag,
        checkpoints: CheckpointManager | None,
        event: Callable[..., None],
    ) -> None:
        self.engine, self.loader, self.profiler, self.train = engine, loader, profiler, train
        self.stop_flag, self.checkpoints, self.event = stop_flag, checkpoints, event

    def __call__(self, step: int) -> StepOutcome:
        """Optimizer step ``step + 1`` (``step`` steps are done)."""
        engine, prof = self.engine, self.profiler
        total, micro, skipped = 0.0, 0, 0
        stop = ckpt_failed = False
        while micro < self.train.grad_accum:
            with prof.oom_guard():
                with prof.phase("data"):
                    batch = {k: v.to(engine.device) for k, v in self.loader.next_batch().items()}
                with prof.phase("forward"):
                    loss = engine(**batch).loss
                with prof.phase("loss_sync"):
                    local = loss.detach().float().item()
                    failed_here = self.checkpoints is not None and self.checkpoints.failed
                    loss_sum, bad, stops, failures = dist.all_reduce_sum(
                        [
                            local if math.isfinite(local) else 0.0,
                            0.0 if math.isfinite(local) else 1.0,
                            1.0 if self.stop_flag.requested else 0.0,
                            1.0 if failed_here else 0.0,
                        ]
                    )
                stop = stop or stops > 0
                ckpt_failed = ckpt_failed or failures > 0
                if bad:
                    skipped += 1
                    self._on_non_finite(step, local, skipped)
                    continue  # 'skip': drop this micro-batch on every rank (no backward, no step)
                skipped = 0
                with prof.phase("backward"):
                    engine.backward(loss)
                with prof.phase("optimizer"):
                    engine.step()
            total += loss_sum / dist.get_world_size()
            micro += 1
        return StepOutcome(total / self.train.grad_accum, stop, ckpt_failed)

    def _on_non_finite(self, step: int, local_loss: float, in_a_row: int) -> None:
        policy = self.train.on_nan
        self.event(
            "non_finite_loss",
            step=step,
            level="error" if policy == "stop" else "warning",
            local_loss=str(local_loss),
            policy=policy,
            in_a_row=in_a_row,
        )
        if policy == "stop":
            raise NonFiniteLossError(f"loss became non-finite at step {step} (train.on_nan=stop)")
        if in_a_row >= MAX_CONSECUTIVE_NON_FINITE:
            raise NonFiniteLossError(
                f"loss stayed non-finite for {in_a_row} micro-batches in a row at step {step}: "
                f"the weights have diverged and skipping cannot recover (lower train.lr, or resume "
                f"from an earlier checkpoint)"
            )
