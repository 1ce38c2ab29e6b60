"""Resume at another world size while ZeRO partitions the optimizer state (stages 1-3): through DeepSpeed's
universal checkpoint, made once per checkpoint and kept beside it.

A ZeRO checkpoint holds each rank's slice of flat fp32/Adam buffers, cut for the world size that saved it.
DeepSpeed's ``ds_to_universal`` rewrites them as one folder per parameter (``zero/<name>/fp32.pt``,
``exp_avg.pt``, ``exp_avg_sq.pt``, ``step.pt``) plus the model-state files (LR scheduler, step counters);
``load_checkpoint`` with ``load_universal_checkpoint`` then has every rank read each parameter's files and keep
only its own new slice. Neither side ever holds the whole model's optimizer state: the conversion reads one
saved rank's file at a time (one worker) and writes per-parameter fragments; the load reads one parameter at
a time.

Layout (a sibling of the checkpoint, so the checkpoint's own manifest stays exact)::

    checkpoints/
      step_00000004/                the checkpoint, as saved
      step_00000004.universal/      its universal form: ds_to_universal's files, seo_dist_universal.json
                                    (which checkpoint it came from) and manifest.json (hashes, written last)
      step_00000004.universal.tmp/  a conversion in progress (swept like any unfinished save)

The conversion runs on rank 0 after the checkpoint was verified; the other ranks wait for its outcome. A later
resume reuses the folder when its manifest verifies and it names the same source checkpoint (the source
manifest's checksum); otherwise it is made again. Retention removes it with its checkpoint
(:func:`prune_orphans`).

seo_dist's own per-rank state (trainer step, data position, RNG) stays in the checkpoint's rank files: the
trainer continues every rank from rank 0's trainer state; a rank with a saved file restores its RNG, a rank
the saving job did not have gets a fresh RNG seeded from (``train.seed``, step, rank) by
:func:`reseed_rank_without_state`, so that it neither repeats another rank's dropout masks nor the ones it
drew at step 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seo_dist import dist
from seo_dist.checkpoint.commit import run_on_rank_zero
from seo_dist.checkpoint.errors import CheckpointError, IncompatibleCheckpointError
from seo_dist.checkpoint.hashing import hash_file
from seo_dist.checkpoint.layout import MANIFEST, STAGING_SUFFIX, parse_step, rank_state_file
from seo_dist.checkpoint.manifest import Manifest, collect_versions, write_manifest
from seo_dist.checkpoint.signing import SigningKey
from seo_dist.checkpoint.storage import publish_folder, remove_folder
from seo_dist.checkpoint.verify import verify_checkpoint
from seo_dist.errors import error_line
from seo_dist.fileio import fsync_dir

if TYPE_CHECKING:
    from deepspeed.runtime.engine import DeepSpeedEngine

UNIVERSAL_SUFFIX = ".universal"
SOURCE_FILE = "seo_dist_universal.json"
"""In a universal folder: which checkpoint it was made from (name, step, world size, its manifest's checksum)."""
ENGINE = "deepspeed_universal"
"""The ``engine`` of a universal folder's manifest."""

# What the conversion reads, by the ZeRO stage family that wrote the files: (file pattern, dotted key path).
_REQUIRED_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "zero12": (
        ("optim_states.pt", "optimizer_state_dict.single_partition_of_fp32_groups"),
        ("optim_states.pt", "optimizer_state_dict.base_optimizer_state"),
        ("optim_states.pt", "optimizer_state_dict.param_slice_mappings"),
        ("mp_rank_00_model_states.pt", "param_shapes"),
    ),
    "zero3": (
        ("optim_states.pt", "optimizer_state_dict.fp32_flat_groups"),
        ("optim_states.pt", "optimizer_state_dict.optimizer_state_dict"),
        ("model_states.pt", "param_shapes"),
    ),
}


def universal_folder(folder: Path) -> Path:
    """``checkpoints/step_N.universal`` for ``checkpoints/step_N``."""
    return folder.with_name(folder.name + UNIVERSAL_SUFFIX)


def source_of(universal: Path) -> str | None:
    """The checkpoint name a universal folder belongs to (``step_N``), or None for any other name."""
    source = universal.name.removesuffix(UNIVERSAL_SUFFIX)
    return source if source != universal.name and parse_step(source) is not None else None


@dataclass(frozen=True, slots=True)
class ReshardInfo:
    """What a resume at another world size did: the ``resharded`` event's fields."""

    from_world_size: int
    to_world_size: int
    zero_stage: int
    seconds: float
    """Conversion (or the check of the reused folder) plus DeepSpeed's universal load."""
    converted: bool
    """False when an earlier resume's universal folder was reused."""
    universal: str
    """The universal folder loaded."""


# ---------------------------------------------------------------------------- what can be resharded


def precision_of(config: dict[str, Any] | None) -> str | None:
    """``bf16``, ``fp16`` or ``fp32`` from a resolved job config's ``deepspeed`` section (None: unknown)."""
    if not isinstance(config, dict) or not isinstance(config.get("deepspeed"), dict):
        return None
    ds = config["deepspeed"]
    for name in ("bf16", "fp16"):
        section = ds.get(name)
        if isinstance(section, dict) and section.get("enabled") is True:
            return name
    return "fp32"


def _precision_setting(precision: str) -> str:
    if precision == "fp32":
        return "deepspeed.bf16.enabled=false and deepspeed.fp16.enabled=false"
    return f"deepspeed.{precision}.enabled=true"


def check_reshardable(manifest: Manifest, folder: Path, *, world_size: int, precision: str) -> None:
    """Raise :class:`IncompatibleCheckpointError` for a change the reshard cannot make together with the world
    size: the precision (``bf16``/``fp16``/``fp32``). A change of ZeRO stage family is refused before this."""
    saved = precision_of(manifest.config)
    if saved is not None and saved != precision:
        raise IncompatibleCheckpointError(
            f"{folder} was saved in {saved} by {manifest.world_size} ranks and this job runs {precision} on "
            f"{world_size}: a resume at another world size cannot also change the precision; resume with "
            f"{_precision_setting(saved)}"
        )


def _family(zero_stage: int) -> str:
    return "zero3" if zero_stage >= 3 else "zero12"


def _dig(obj: Any, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return False
        obj = obj[key]
    return True


def missing_key(folder: Path, manifest: Manifest) -> str | None:
    """``"<file>: key <dotted>"`` for the first key the conversion needs and the checkpoint's files lack (a
    DeepSpeed version that writes another layout), else None. Reads one file of each kind, memory-mapped."""
    from seo_dist.checkpoint.safe_load import safe_torch_load

    seen: dict[str, Any] = {}
    for pattern, dotted in _REQUIRED_KEYS[_family(manifest.zero_stage)]:
        names = sorted(n for n in manifest.files if n.endswith(pattern) and "/" not in n)
        if not names:
            return f"a *{pattern} file"
        name = names[0]
        if name not in seen:
            seen[name] = safe_torch_load(folder / name, mmap=True)
        if not _dig(seen[name], dotted):
            return f"{name}: key {dotted!r}"
    return None


# ---------------------------------------------------------------------------- conversion (rank 0)


def _source_checksum(folder: Path) -> str:
    data = json.loads((folder / MANIFEST).read_text())
    return str(data.get("checksum"))


def _run_ds_to_universal(source: Path, out: Path) -> None:
    """DeepSpeed's converter, in this process, one worker each (peak memory: one saved rank's file)."""
    from deepspeed.checkpoint import ds_to_universal

    from seo_dist.checkpoint.safe_load import restricted_unpickling

    args = argparse.Namespace(
        input_folder=str(source),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # ZeRO-1/2 checkpoints saved without universal_checkpoint_info
    )
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), restricted_unpickling():
        ds_to_universal.main(args)  # its torch.load calls ask for weights_only=False: restricted all the same


def _hash_tree(folder: Path, algorithm: str) -> dict[str, dict[str, Any]]:
    """Manifest ``files`` for everything under ``folder``, each file fsynced (the converter does not)."""
    files: dict[str, dict[str, Any]] = {}
    buffer = bytearray(8 << 20)
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            fsync_dir(path)
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        size, digest = hash_file(path, algorithm, buffer)
        files[path.relative_to(folder).as_posix()] = {"size": size, "hash": digest}
    fsync_dir(folder)
    return files


def convert(folder: Path, manifest: Manifest, algorithm: str, key: SigningKey | None = None) -> Path:
    """Write ``folder``'s universal form next to it (staged under ``*.tmp``, published by a rename with its
    manifest written last); returns the published folder. Raises :class:`IncompatibleCheckpointError` naming a
    key the conversion needs and the files lack; nothing is left behind on any error."""
    problem = missing_key(folder, manifest)
    if problem is not None:
        raise IncompatibleCheckpointError(
            f"{folder} cannot be converted for another world size: {problem} is missing (written by DeepSpeed "
            f"{manifest.versions.get('deepspeed', '?')}, a layout the converter of this DeepSpeed does not read); "
            f"resume at {manifest.world_size} ranks, or consolidate it (seo-dist consolidate {folder} --out DIR) "
            f"and start from model.pretrained=DIR"
        )
    final = universal_folder(folder)
    work = final.with_name(final.name + STAGING_SUFFIX)
    out = work / final.name  # the converter writes `latest_universal` next to its output: inside `work`
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        try:
            _run_ds_to_universal(folder, out)
        except KeyError as e:
            raise IncompatibleCheckpointError(
                f"{folder} cannot be converted for another world size: key {e} is missing in its files; resume "
                f"at {manifest.world_size} ranks"
            ) from None
        except Exception as e:  # noqa: BLE001 - DeepSpeed's converter asserts and raises all kinds
            raise CheckpointError(f"ds_to_universal failed on {folder.name}: {error_line(e)}") from None
        source = {
            "source": folder.name,
            "source_checksum": _source_checksum(folder),
            "step": manifest.step,
            "world_size": manifest.world_size,
            "zero_stage": manifest.zero_stage,
        }
        (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        universal = Manifest(
            step=manifest.step,
            epoch=manifest.epoch,
            hash_algorithm=algorithm,
            files=_hash_tree(out, algorithm),
            world_size=manifest.world_size,
            zero_stage=manifest.zero_stage,
            engine=ENGINE,
            config_hash=manifest.config_hash,
            versions=collect_versions(),
        )
        write_manifest(out, universal, key)
        fsync_dir(out)
        publish_folder(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def reusable(folder: Path, key: SigningKey | None = None) -> Path | None:
    """The universal folder of ``folder`` if an earlier resume made it from this very checkpoint and it still
    verifies (full re-hash); a stale or damaged one is removed and None returned."""
    final = universal_folder(folder)
    if not final.is_dir():
        return None
    report = verify_checkpoint(final, "full", key=key)  # with a key: signed by it, or made again
    try:
        source = json.loads((final / SOURCE_FILE).read_text())
        same = report.ok and source.get("source_checksum") == _source_checksum(folder)
    except (OSError, ValueError, AttributeError):
        same = False
    if same:
        return final
    remove_folder(final)
    return None


def ensure_universal(
    folder: Path, manifest: Manifest, algorithm: str, key: SigningKey | None = None
) -> tuple[Path, bool]:
    """Collective: the universal folder of ``folder`` (reused or made by rank 0; the others wait for the outcome)
    and whether it was made now. Every rank raises rank 0's error."""

    def on_rank_zero() -> tuple[str, bool]:
        prune_orphans(folder.parent)
        found = reusable(folder, key)
        if found is not None:
            return str(found), False
        return str(convert(folder, manifest, algorithm, key)), True

    path, converted = run_on_rank_zero(on_rank_zero)
    return Path(path), converted


def prune_orphans(root: Path) -> list[Path]:
    """Rank 0: remove universal folders whose checkpoint is gone (retention deleted it). Returns them."""
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        source = source_of(entry)
        if source is not None and entry.is_dir() and not (root / source).exists():
            remove_folder(entry)
            removed.append(entry)
    return removed


# ---------------------------------------------------------------------------- load (every rank)


def reseed_rank_without_state(manifest: Manifest, rank: int) -> bool:
    """Seed python, numpy and torch from (``train.seed``, step, rank) when the checkpoint has no state file for
    ``rank`` (the saving job had fewer ranks). True when it did."""
    if rank_state_file(rank) in manifest.files:
        return False
    import numpy as np
    import torch

    train = (manifest.config or {}).get("train") or {}
    seed = train.get("seed", 0) if isinstance(train.get("seed", 0), int) else 0
    derived = int(np.random.SeedSequence([seed % 2**32, manifest.step, rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)
    return True


def repair_zero3_universal_load(engine: DeepSpeedEngine, universal: Path) -> None:
    """Undo two slips of DeepSpeed's ZeRO-3 universal loader (0.19): it copies the first optimizer param group's
    settings (weight decay, betas...) into every group, which gives the no-decay group (biases, norms,
    embeddings) the decay group's weight decay; and it hands every sub-group the same ``step`` tensor, which
    the optimizer increments in place once per sub-group, so from the second sub-group on Adam's bias
    correction uses a step count that runs ahead. ZeRO-1/2 restore both per group."""
    import torch

    from seo_dist.checkpoint.safe_load import safe_torch_load

    saved = safe_torch_load(universal / "zero" / "optimizer_state.pt")
    groups = saved["optimizer_state_dict"]["param_groups"]
    zero = engine.optimizer
    live = zero.optimizer.param_groups
    if len(groups) != len(live):
        raise CheckpointError(
            f"{universal} has {len(groups)} optimizer param groups and this job's optimizer {len(live)}; resume with "
            f"the optimizer that saved it"
        )
    for group, settings in zip(live, groups, strict=True):
        group.update({k: v for k, v in settings.items() if k != "params"})
    for flat in zero.fp32_partitioned_groups_flat:
        state = zero.optimizer.state.get(flat)
        if state is not None and isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()


def load_resharded(
    engine: DeepSpeedEngine,
    folder: Path,
    manifest: Manifest,
    *,
    algorithm: str,
    key: SigningKey | None = None,
    load_optimizer_states: bool,
    load_lr_scheduler_states: bool,
) -> dict[str, Any]:
    """Collective: load ``folder`` (saved at another world size) into ``engine`` through its universal form.
    Returns ``client_state`` and ``resharded`` (a :class:`ReshardInfo` as a dict)."""
    start = time.perf_counter()
    universal, converted = ensure_universal(folder, manifest, algorithm, key)
    from seo_dist.checkpoint.safe_load import restricted_unpickling

    config = engine._config
    previous = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        with restricted_unpickling():  # DeepSpeed's universal loader reads the files with weights_only=False
            load_path, client_state = engine.load_checkpoint(
                str(universal.parent),
                tag=universal.name,
                load_optimizer_states=load_optimizer_states,
                load_lr_scheduler_states=load_lr_scheduler_states,
            )
    finally:
        config.load_universal_checkpoint = previous
    if load_path is None:
        raise CheckpointError(f"DeepSpeed found no model state files in {universal}")
    if manifest.zero_stage >= 3 and load_optimizer_states:
        repair_zero3_universal_load(engine, universal)
    reseed_rank_without_state(manifest, dist.get_rank())
    info = ReshardInfo(
        from_world_size=manifest.world_size,
        to_world_size=dist.get_world_size(),
        zero_stage=manifest.zero_stage,
        seconds=time.perf_counter() - start,
        converted=converted,
        universal=str(universal),
    )
    return {"client_state": client_state, "resharded": asdict(info)}
