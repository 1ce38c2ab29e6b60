"""One optimizer step (``train.grad_accum`` micro-batches) and the policy for a non-finite loss.

Nothing in a step waits for the accelerator:

- The loss stays on the device: each micro-batch adds to a running sum (non-finite losses left out) that
  :meth:`TrainStep.read_loss` reads and averages over the ranks at the log interval (one all-reduce).
- A non-finite loss makes the gradients non-finite; DeepSpeed then skips the update and records the step as
    an overflow (its global gradient norm, computed for clipping, is all-reduced, so every rank sees the same
  flag at the same step). ``train.on_nan`` acts on that flag: ``stop`` raises, ``skip`` goes on (the update
  was already skipped). An engine without that flag (no ZeRO optimizer) pays one device read and one
  all-reduce per micro-batch, and drops a non-finite micro-batch before its backward.
- The stop request and a failed background save are host flags, agreed on a CPU group one step later
  (:mod:`.flags`).

Device values are read only through :func:`read_device`, so that a new read is easy to find (and a test
counts them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seo_dist import dist
from seo_dist.config import TrainConfig
from seo_dist.data import ShardedLoader
from seo_dist.training.flags import FlagAgreement
from seo_dist.training.stop import StopFlag

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from seo_dist.checkpoint.manager import CheckpointManager
    from seo_dist.profiling import StepProfiler

MAX_CONSECUTIVE_NON_FINITE = 10
"""With ``train.on_nan: skip``, this many skipped steps in a row mean the weights themselves have diverged
(skipping cannot help): the run stops as with ``stop`` instead of looping forever."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf and ``train.on_nan`` is ``stop``."""


def read_device(t: torch.Tensor) -> list[float]:
    """The one way the training loop reads device values to the host (a synchronisation on an accelerator)."""
    return t.detach().double().cpu().tolist()


@dataclass(frozen=True, slots=True)
class StepOutcome:
    stop: bool
    """Some rank was asked to stop (agreed at this step on every rank)."""
    checkpoint_failed: bool
    """Some rank's background checkpoint save failed (agreed at this step on every rank)."""
    skipped: bool = False
    """The loss or the gradients were non-finite and the update was skipped (``train.on_nan: skip``)."""


class TrainStep:
    """Runs optimizer steps on ``engine`` with batches from ``loader``; phases are timed by ``profiler``.

    Collective (every rank constructs it and calls it at every step). ``checkpoints`` (or None) reports a
    failed background save through ``.failed``; ``event`` logs the ``non_finite_loss`` event.
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
        self.flags = FlagAgreement()
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
        self._loss_count = torch.zeros((), dtype=torch.float64, device=engine.device)
        self._in_a_row = 0
        optimizer = getattr(engine, "optimizer", None)
        if getattr(optimizer, "check_grad_overflow", True) is False:
            # ZeRO-1/2 in bf16 would otherwise apply a non-finite update (fp32 and ZeRO-3 always check)
            optimizer.check_grad_overflow = True  # type: ignore[union-attr]
        self._overflow_flag = optimizer is not None and hasattr(optimizer, "overflow")

    def __call__(self, step: int) -> StepOutcome:
        """Optimizer step ``step + 1`` (``step`` steps are done)."""
        engine, prof = self.engine, self.profiler
        loss: torch.Tensor | None = None
        micro, skipped = 0, False
        while micro < self.train.grad_accum:
            with prof.oom_guard():
                with prof.phase("data"):
                    batch = {k: v.to(engine.device, non_blocking=True) for k, v in self.loader.next_batch().items()}
                with prof.phase("forward"):
                    loss = engine(**batch).loss
                value = loss.detach().double()
                finite = torch.isfinite(value)
                self._loss_sum += torch.where(finite, value, 0.0)
                self._loss_count += finite.double()
                if not self._overflow_flag and self._any_rank_non_finite(finite):
                    skipped = True  # this micro-batch is dropped on every rank (no backward, no step)
                    self._count_non_finite(step, loss)
                    continue
                with prof.phase("backward"):
                    engine.backward(loss)
                with prof.phase("optimizer"):
                    if self.checkpoints is not None:  # a save's copy to host buffers must finish first
                        # before every engine.step(), not only where seo_dist counts a boundary: DeepSpeed decides
                        # when it updates (managed_gradient_accumulation: false, ZenFlow); microseconds when idle
                        self.checkpoints.wait_for_staging()
                    engine.step()
            micro += 1
        if self._overflow_flag and getattr(engine.optimizer, "overflow", False):
            skipped = True  # DeepSpeed skipped the update (same decision on every rank)
            self._count_non_finite(step, loss)
        elif not skipped:
            self._in_a_row = 0
        failed_here = self.checkpoints is not None and self.checkpoints.failed
        agreed = self.flags.exchange(stop=self.stop_flag.requested, checkpoint_failed=failed_here)
        return StepOutcome(agreed.stop, agreed.checkpoint_failed, skipped)

    @staticmethod
    def _any_rank_non_finite(finite: torch.Tensor) -> bool:
        """For engines that do not check gradients themselves: one read and one all-reduce per micro-batch."""
        (bad,) = dist.all_reduce_sum([0.0 if read_device(finite.reshape(1))[0] else 1.0])
        return bad > 0

    def _count_non_finite(self, step: int, loss: torch.Tensor | None) -> None:
        self._in_a_row += 1
        self._on_non_finite(step, loss)

    def read_loss(self, *, reset: bool = True) -> float | None:
        """Mean finite loss over the micro-batches since the last reset, on all ranks (collective, one
        all-reduce and one device read); None when none was finite."""
        total = torch.stack([self._loss_sum, self._loss_count]).reshape(2)
        if dist.is_initialized():
            import torch.distributed as tdist

            tdist.all_reduce(total)
        loss_sum, count = read_device(total)
        if reset:
            self._loss_sum.zero_()
            self._loss_count.zero_()
        return loss_sum / count if count > 0 else None

    def close(self) -> None:
        """Collective: wait for the last flag exchange."""
        self.flags.close()

    def _on_non_finite(self, step: int, loss: torch.Tensor | None) -> None:
        policy = self.train.on_nan
        local = read_device(loss.reshape(1))[0] if loss is not None else float("nan")  # the rare path only
        self.event(
            "non_finite_loss",
            step=step,
            level="error" if policy == "stop" else "warning",
            local_loss=str(local),
            policy=policy,
            in_a_row=self._in_a_row,
        )
        if policy == "stop":
            raise NonFiniteLossError(f"loss became non-finite at step {step} (train.on_nan=stop)")
        if self._in_a_row >= MAX_CONSECUTIVE_NON_FINITE:
            raise NonFiniteLossError(
                f"loss stayed non-finite for {self._in_a_row} steps in a row at step {step}: "
                f"the weights have diverged and skipping cannot recover (lower train.lr, or resume "
                f"from an earlier checkpoint)"
            )
