"""What an experiment records when it starts or resumes: the resolved config and its hash, and in
``metadata.json`` the run's description, the list of resumes, the wandb run id kept across resumes and the
git state of the code that ran."""

from __future__ import annotations

import dataclasses
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from seo_dist.config import ExperimentConfig, JobConfig
from seo_dist.tracking import metadata as md
from seo_dist.tracking.jsonio import json_safe
from seo_dist.tracking.layout import ExperimentLayout

RUNNING = "running"


def now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).astimezone().isoformat(timespec="seconds")


def wandb_run_id(experiment_id: str) -> str:
    """A wandb id from the experiment id plus a random suffix (two base dirs may reuse an experiment id)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", experiment_id)[:50]
    return f"{safe}-{secrets.token_hex(4)}"


def start_metadata(
    previous: dict[str, Any] | None, current: dict[str, Any], *, start_time: float, resume_step: int | None
) -> dict[str, Any]:
    """metadata.json at start: ``current`` over ``previous`` (the file being resumed, or None), with the
    outcome fields reset. A resume keeps the first start time and appends an entry to ``resumes``."""
    meta: dict[str, Any] = dict(previous or {})
    meta.update(
        {
            "schema_version": md.METADATA_SCHEMA_VERSION,
            "status": RUNNING,
            "error": None,
            "traceback": None,
            "end_time": None,
            "end_timestamp": None,
            "duration_s": None,
            "summary": None,
            **current,
        }
    )
    if previous is None:
        meta["start_time"], meta["start_timestamp"] = now_iso(start_time), start_time
        meta["resumes"] = []
        return meta
    meta.setdefault("start_timestamp", start_time)
    meta.setdefault("start_time", now_iso(meta["start_timestamp"]))
    meta.setdefault("resumes", []).append(
        {
            "time": now_iso(start_time),
            "timestamp": start_time,
            "resume_step": resume_step,
            "previous_status": previous.get("status"),
            "previous_config_hash": previous.get("config_hash"),
            "previous_git": previous.get("git"),
            "world": current.get("world"),
        }
    )
    return meta


def wandb_metadata(
    previous: dict[str, Any] | None, config: ExperimentConfig, experiment_id: str, wandb_dir: Path
) -> dict[str, Any]:
    """The ``wandb`` entry: a resume continues the same wandb run."""
    run_id = ((previous or {}).get("wandb") or {}).get("run_id") or wandb_run_id(experiment_id)
    return {"run_id": run_id, "mode": config.wandb, "project": config.wandb_project, "dir": str(wandb_dir)}


def record_git(layout: ExperimentLayout) -> dict[str, Any] | None:
    """The git state of the working directory's repository (else the one holding seo_dist); the uncommitted
    changes of a dirty tree go to ``artifacts/git_diff.patch``."""
    root = md.git_root(Path.cwd())
    if root is None:
        import seo_dist

        root = md.git_root(Path(seo_dist.__file__).resolve().parent)
    if root is None:
        return None
    info = md.git_info(root)
    left_out: list[dict[str, str]] = []
    if info.dirty and info.commit:
        diff, left_out = md.git_diff_without_secrets(root)
        if diff:
            layout.git_diff.write_text(diff)
    return {**dataclasses.asdict(info), **({"diff_left_out": left_out} if left_out else {})}


def resolved_config(
    config: ExperimentConfig, experiment_id: str | None, job: JobConfig | None, hparams: dict[str, Any] | None
) -> tuple[dict[str, Any], str | None]:
    """``config.yaml``'s content and the config hash: the whole job (with the chosen experiment id), or for a
    standalone tracker its experiment section plus ``hparams`` (hashed)."""
    experiment = dataclasses.replace(config, experiment_id=experiment_id)
    if job is not None:
        return dataclasses.replace(job, experiment=experiment).to_dict(), job.config_hash()
    resolved: dict[str, Any] = {"experiment": dataclasses.asdict(experiment)}
    if hparams is not None:
        resolved["hparams"] = json_safe(hparams)
        return resolved, md.hash_mapping(resolved["hparams"])
    return resolved, None
