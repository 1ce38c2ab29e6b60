"""Files copied into the experiment: ``artifacts/`` (``log_artifact``) and the code snapshot. Neither copies a
file that looks like a secret (:mod:`.secrets`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from seo_dist.config import ExperimentConfig
from seo_dist.errors import UserError
from seo_dist.tracking.layout import ExperimentLayout
from seo_dist.tracking.logger import ExperimentLogger
from seo_dist.tracking.secrets import SecretFilter, describe
from seo_dist.tracking.snapshot import create_code_snapshot

_MB = 1024 * 1024
log = logging.getLogger(__name__)


def _copy_tree_without_secrets(src: Path, dest: Path, secrets: SecretFilter) -> None:
    def ignore(directory: str, names: list[str]) -> list[str]:
        base = Path(directory)
        rel = base.relative_to(src)
        return [n for n in names if (base / n).is_file() and not secrets.check(base / n, (rel / n).as_posix())]

    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=ignore)
    if secrets.left_out:
        log.warning("log_artifact %s: left out files that look like secrets: %s", src, describe(secrets.left_out))


def copy_artifact(src: Path, layout: ExperimentLayout, name: str | None = None) -> tuple[Path, int]:
    """Copy a file or folder into ``artifacts/`` (as ``name``, default its own name); ``(where it lives, bytes)``.
    Files that look like secrets are not copied: a secret file is refused (:class:`UserError`), a folder's are
    left out (logged by name)."""
    if not src.exists():
        raise UserError(f"log_artifact: {str(src)!r} does not exist; pass an existing file or folder")
    secrets = SecretFilter()
    dest = layout.artifacts / (name or src.name)
    if src.is_file():
        reason = secrets.file_reason(src, src.name)
        if reason is not None:
            raise UserError(
                f"log_artifact: {src.name} looks like a secret ({reason}); it is not copied into the experiment"
            )
    if src.resolve() != dest.resolve():
        if src.is_dir():
            _copy_tree_without_secrets(src, dest, secrets)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) if dest.is_dir() else dest.stat().st_size
    return dest, size


def snapshot_code(layout: ExperimentLayout, config: ExperimentConfig, logger: ExperimentLogger) -> dict[str, Any]:
    """Copy the source that ran into ``code_snapshot/`` (capped); returns the ``code_snapshot`` metadata entry.
    Files left out are reported as a ``code_snapshot_incomplete`` event."""
    result = create_code_snapshot(
        layout.code_snapshot,
        int(config.code_snapshot_max_mb * _MB),
        exclude=[Path(config.base_dir).expanduser(), layout.root],
        secret_filter=SecretFilter(extra_patterns=tuple(config.code_snapshot_exclude)),
    )
    if result.left_out:
        logger.event(
            "code_snapshot_secrets_left_out",
            "warning",
            files=result.left_out,
            message=f"code snapshot left out {len(result.left_out)} files that look like secrets or match "
            f"experiment.code_snapshot_exclude (names in metadata.json code_snapshot.left_out)",
        )
    if result.truncated or result.skipped_large:
        logger.event(
            "code_snapshot_incomplete",
            "warning",
            skipped_large=result.skipped_large,
            skipped_over_cap=result.skipped_over_cap,
            message=f"code snapshot left out {len(result.skipped_large)} files over 1 MB and "
            f"{result.skipped_over_cap} over the {config.code_snapshot_max_mb} MB cap",
        )
    return result.to_dict()
