"""The final checkpoint consolidated into a Hugging Face model folder (``artifacts/final_model``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from seo_dist.errors import error_line
from seo_dist.tracking.layout import ExperimentLayout


def export_final_model(
    checkpoint: Path | None,
    exp_dir: Path,
    dtype: str,
    *,
    event: Callable[..., None],
    step: int,
    signing_key_file: str | None = None,
) -> None:
    """Consolidate ``checkpoint`` (None: the final save failed) into ``artifacts/final_model``; rank 0 only.
    Signed like the checkpoints (``checkpoint.signing_key_file`` or the environment's key), when there is a key.

    A failure is an event (``export_failed``), not a crash: the checkpoint itself is safe. No collective
    follows this on purpose: a large export may outlast the process group's timeout.
    """
    if checkpoint is None:  # the final save failed under checkpoint.on_error=warn
        event(
            "final_model_export_skipped", step=step, level="warning", message="no committed final checkpoint to export"
        )
        return
    from seo_dist.checkpoint.signing import load_signing_key
    from seo_dist.export import consolidate_checkpoint

    out = ExperimentLayout(exp_dir).final_model
    start = time.perf_counter()
    try:
        consolidate_checkpoint(checkpoint, out, dtype=dtype, signing_key=load_signing_key(signing_key_file))
    except Exception as e:  # the checkpoint is safe; only the convenience copy failed
        event("export_failed", step=step, level="error", error=error_line(e))
        return
    event("model_exported", step=step, path=str(out), seconds=time.perf_counter() - start)
