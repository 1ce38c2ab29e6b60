"""``python -m seo_dist.train`` with one non-finite training loss injected on demand (chaos suite).

A *transient* non-finite loss (one bad batch, then healthy again) cannot be produced through the
config: a learning rate high enough to make the loss NaN also breaks the weights for good (the chaos
suite tests that case for real, with ``train.lr=1e4``). So this entry registers a forward hook - a
public torch API - on the model that multiplies the loss of one training forward pass by NaN on one
rank: ``CHAOS_NAN_AT=STEP:RANK`` (the forward pass of optimizer step STEP, counted from 1), or
``+N:RANK`` (the N-th step this process trains, e.g. after a resume). The trainer, DeepSpeed, the
collectives and the tracker are the real ones, under torchrun.
"""

from __future__ import annotations

import os
import sys

from seo_dist import dist
from seo_dist.train import main
from seo_dist.trainer import SEOTrainer

_build_engine = SEOTrainer._build_engine


def _build_engine_with_nan(self: SEOTrainer) -> None:
    _build_engine(self)
    step_text, _, rank_text = os.environ["CHAOS_NAN_AT"].partition(":")
    relative = step_text.startswith("+")
    target_step, target_rank = int(step_text.lstrip("+")), int(rank_text or 0)
    done = False
    first_step: int | None = None

    def poison(module, args, output):  # noqa: ANN001
        nonlocal done, first_step
        if not module.training or done:
            return output
        if first_step is None:
            first_step = self.step  # where this process started training (after a resume)
        target = first_step + target_step if relative else target_step
        if self.step + 1 == target and dist.get_rank() == target_rank:
            done = True
            output.loss = output.loss * float("nan")
        return output

    self.engine.module.register_forward_hook(poison)


if __name__ == "__main__":
    if os.environ.get("CHAOS_NAN_AT"):
        SEOTrainer._build_engine = _build_engine_with_nan
    sys.exit(main())
