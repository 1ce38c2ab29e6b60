"""Resume at another world size with ZeRO state partitioned (seo_dist.checkpoint.reshard), through the trainer.

ZeRO-2, 2 ranks -> 1 (default suite): run A trains 8 steps on 2 ranks (micro batch 4, accumulation 1) and saves at
steps 4 and 8. A copy of A cut at step 4 is resumed on 1 rank with accumulation 2 (the same global batch):
- ``readback``: ``train.max_steps=4``, so the run loads and saves step 4 again without taking a step; its fp32
  master weights, Adam moments and step, read from the files by :func:`zero_states` (independently of
  DeepSpeed's converter), equal the 2-rank files exactly, and so do DeepSpeed's consolidated fp32 weights;
- ``continued``: to step 8; per-step train/loss at steps 5-8 within 1e-4 relative of run A.
Dropout is off, so the runs differ only in how each global batch is spread over ranks. The conversion's cache
(reuse, damage, retention) and the bad inputs are checked in-process on A's files.

ZeRO-3 from 1 rank to 2, and ZeRO-1 in bf16 from 2 ranks to 1, run the same proofs in the chaos (slow) set.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import BIN, JobRun, free_port, job_env, read_jsonl, run_job

from seo_dist.checkpoint.errors import IncompatibleCheckpointError
from seo_dist.checkpoint.hashing import hash_file
from seo_dist.checkpoint.layout import MANIFEST, checkpoint_name
from seo_dist.checkpoint.manifest import read_manifest, write_manifest
from seo_dist.checkpoint.reshard import (
    ENGINE,
    SOURCE_FILE,
    check_reshardable,
    ensure_universal,
    prune_orphans,
    universal_folder,
)
from seo_dist.checkpoint.verify import verify_checkpoint

MB = 4
SETS = [
    "train.max_steps=8", "train.lr=3e-3", "train.log_interval=1", "train.eval_interval=0", "train.eval_batches=2",
    "train.warmup_steps=2", "train.progress_bar=false", f"train.micro_batch_size={MB}",
    "model.config.n_layer=2", "model.config.n_embd=64", "model.config.n_head=2",
    "model.config.resid_pdrop=0.0", "model.config.embd_pdrop=0.0", "model.config.attn_pdrop=0.0",
    "checkpoint.save_interval=4", "checkpoint.keep_last=4", "checkpoint.export_final=false",
    "experiment.code_snapshot=false", "experiment.wandb=disabled", "experiment.console=false",
    "experiment.tensorboard=false",
]  # fmt: skip
LOSS_RTOL = 1e-4


def resume_copy(
    src: Path, dst: Path, step: int, nproc: int, cache_dir: Path, sets: list[str]
) -> subprocess.CompletedProcess:
    """Copy the experiment ``src`` as it was after ``step`` and resume it on ``nproc`` ranks with ``sets``."""
    shutil.copytree(src, dst)
    for folder in (dst / "checkpoints").iterdir():
        if folder.name.startswith("step_") and int(folder.name[5:13]) > step:
            shutil.rmtree(folder)
    cmd = [str(BIN / "torchrun"), "--nproc-per-node", str(nproc), "--master-port", str(free_port()), "-m",
           "seo_dist.train", "--resume", str(dst / "checkpoints" / checkpoint_name(step)), "--set", *sets]  # fmt: skip
    return subprocess.run(cmd, cwd=dst.parent, env=job_env(cache_dir), capture_output=True, text=True, timeout=600)


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr)[-6000:]


def run_reshard_case(
    tmp: Path, cache_dir: Path, *, name: str, saved: tuple[int, list[str]], resumed: tuple[int, list[str]]
) -> dict[str, Path]:
    """Run A (``saved``: ranks, sets), then the ``readback`` and ``continued`` resumes (``resumed``) of its step 4."""
    nproc, sets = saved
    first = run_job(tmp, cache_dir, nproc=nproc, name=name, overrides=[*SETS, *sets], timeout=600)
    assert first.proc.returncode == 0, first.output[-6000:]
    assert JobRun(first.proc, first.base_dir).final()[:2] == ("completed", 8)
    base = first.base_dir
    new_nproc, new_sets = resumed
    readback = resume_copy(base / name, base / f"{name}_readback", 4, new_nproc, cache_dir,
                           [*new_sets, "train.max_steps=4"])  # fmt: skip
    assert readback.returncode == 0, output(readback)
    continued = resume_copy(base / name, base / f"{name}_continued", 4, new_nproc, cache_dir, new_sets)
    assert continued.returncode == 0, output(continued)
    return {"a": base / name, "readback": base / f"{name}_readback", "continued": base / f"{name}_continued"}


# ---------------------------------------------------------------------------- reading ZeRO files directly


def _rank_of(path: Path) -> int:
    return int(path.name.split("zero_pp_rank_")[1].split("_")[0])


def zero_states(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], set[float]]:
    """Every parameter's full fp32 master weight, exp_avg and exp_avg_sq (flat), and the Adam steps, assembled
    from the per-rank optimizer files with the partition layout they record."""
    files = sorted(folder.glob("*zero_pp_rank_*_optim_states.pt"), key=_rank_of)
    optim = [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"] for f in files]
    parts: dict[str, dict[str, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    steps: set[float] = set()
    if "fp32_flat_groups" in optim[0]:  # ZeRO-3: each parameter padded to a multiple of the world, rank r has slice r
        world = len(files)
        shapes = torch.load(folder / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)["param_shapes"]
        for osd in optim:
            for g, group_shapes in enumerate(shapes):
                state = osd["optimizer_state_dict"]["state"][g]
                flat = {
                    "fp32": osd["fp32_flat_groups"][g],
                    "exp_avg": state["exp_avg"],
                    "exp_avg_sq": state["exp_avg_sq"],
                }
                steps.add(float(state["step"]))
                offset = 0
                for name, shape in group_shapes.items():
                    numel = int(torch.Size(shape).numel())
                    part = -(-numel // world)
                    for key, tensor in flat.items():
                        parts[name][key].append(tensor.narrow(0, offset, part))
                    offset += part
        full = {n: {k: torch.cat(v) for k, v in d.items()} for n, d in parts.items()}
        numels = {n: int(torch.Size(s).numel()) for group in shapes for n, s in group.items()}
        return {n: {k: t[: numels[n]] for k, t in d.items()} for n, d in full.items()}, steps
    for osd in optim:  # ZeRO-1/2: param_slice_mappings name each parameter's fragment of the rank's flat groups
        for g, mapping in enumerate(osd["param_slice_mappings"]):
            state = osd["base_optimizer_state"]["state"][g]
            flat = {"fp32": osd["single_partition_of_fp32_groups"][g], "exp_avg": state["exp_avg"],
                    "exp_avg_sq": state["exp_avg_sq"]}  # fmt: skip
            steps.add(float(state["step"]))
            for name, fragment in mapping.items():
                for key, tensor in flat.items():
                    parts[name][key].append(tensor.narrow(0, fragment.start, fragment.numel))
    return {n: {k: torch.cat(v) for k, v in d.items()} for n, d in parts.items()}, steps


def model_state_file(folder: Path) -> Path:
    plain = folder / "mp_rank_00_model_states.pt"
    return plain if plain.exists() else folder / "zero_pp_rank_0_mp_rank_00_model_states.pt"


def group_settings(folder: Path) -> list[dict[str, Any]]:
    """Each optimizer param group's settings (weight decay, betas, lr...), from rank 0's optimizer file."""
    (first,) = [f for f in folder.glob("*zero_pp_rank_*_optim_states.pt") if _rank_of(f) == 0]
    osd = torch.load(first, map_location="cpu", weights_only=False)["optimizer_state_dict"]
    inner = osd["optimizer_state_dict"] if "fp32_flat_groups" in osd else osd["base_optimizer_state"]
    return [{k: v for k, v in group.items() if k != "params"} for group in inner["param_groups"]]


def assert_same_optimizer_state(saved_folder: Path, resumed_folder: Path) -> None:
    assert group_settings(saved_folder) == group_settings(resumed_folder)  # e.g. no weight decay on biases
    saved, saved_steps = zero_states(saved_folder)
    resumed, resumed_steps = zero_states(resumed_folder)
    assert set(saved) == set(resumed) and saved
    for name in saved:
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            assert torch.equal(saved[name][key], resumed[name][key]), f"{name} {key} differs after the reshard"
    assert saved_steps == resumed_steps and len(saved_steps) == 1
    lr = [torch.load(model_state_file(f), weights_only=False)["lr_scheduler"] for f in (saved_folder, resumed_folder)]
    assert lr[0] == lr[1]


def losses(exp: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_jsonl(exp / "metrics" / "metrics.jsonl") if "train/loss" in r}


def assert_loss_matches(runs: dict[str, Path]) -> None:
    a, b = losses(runs["a"]), losses(runs["continued"])
    assert sorted(b) == list(range(1, 9))
    for step in range(5, 9):
        assert abs(b[step] - a[step]) <= LOSS_RTOL * abs(a[step]), (step, a[step], b[step])


def events_of(exp: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(exp / "logs" / "events.jsonl") if e["event"] == name]


def assert_recorded(exp: Path, before: int, after: int, stage: int) -> None:
    """The resharded event, the data position kept, the world-size change in metadata.json, no batch warning."""
    (resharded,) = events_of(exp, "resharded")
    assert (resharded["from_world_size"], resharded["to_world_size"], resharded["zero_stage"]) == (before, after, stage)
    assert resharded["converted"] is True and resharded["seconds"] > 0
    assert events_of(exp, "global_batch_changed") == []  # the global batch was kept
    moved = events_of(exp, "data_resharded")[-1]
    assert moved["samples_in_epoch"] == 4 * 2 * MB and moved["exact"] is True  # step 4 x global batch 8
    change = json.loads((exp / "metadata.json").read_text())["resumes"][-1]["world_size_change"]
    assert (change["from_world_size"], change["to_world_size"], change["resharded"]) == (before, after, True)
    assert change["from_global_batch"] == change["to_global_batch"] == 2 * MB


# ---------------------------------------------------------------------------- ZeRO-2, 2 ranks -> 1


@pytest.fixture(scope="module")
def zero2(tmp_path_factory, cache_dir) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("reshard_z2")
    return run_reshard_case(tmp, cache_dir, name="z2", saved=(2, []), resumed=(1, ["train.grad_accum=2"]))


def test_zero2_two_ranks_to_one_restores_master_weights_and_adam_moments_exactly(zero2):
    step4 = checkpoint_name(4)
    saved, resumed = zero2["a"] / "checkpoints" / step4, zero2["readback"] / "checkpoints" / step4
    assert (read_manifest(saved).world_size, read_manifest(resumed).world_size) == (2, 1)
    assert_same_optimizer_state(saved, resumed)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    consolidated = [get_fp32_state_dict_from_zero_checkpoint(str(f.parent), tag=f.name) for f in (saved, resumed)]
    assert consolidated[0].keys() == consolidated[1].keys()
    assert all(torch.equal(consolidated[0][k], consolidated[1][k]) for k in consolidated[0])


def test_zero2_two_ranks_to_one_continues_like_the_uninterrupted_run(zero2):
    assert_recorded(zero2["continued"], 2, 1, 2)
    assert_loss_matches(zero2)


def test_universal_folder_is_committed_with_a_manifest_and_reused(zero2, tmp_path):
    """In-process (world size 1): the folder the resume made verifies; a second call reuses it; a damaged or
    stale one is made again; retention's orphan sweep removes it with its checkpoint."""
    root = tmp_path / "checkpoints"
    shutil.copytree(zero2["continued"] / "checkpoints", root)
    source = root / checkpoint_name(4)
    universal = universal_folder(source)
    assert verify_checkpoint(universal).ok and read_manifest(universal).engine == ENGINE
    assert json.loads((universal / SOURCE_FILE).read_text())["source"] == source.name
    manifest = read_manifest(source)
    assert ensure_universal(source, manifest, "xxh3_128") == (universal, False)
    damaged = universal / "zero" / "transformer.h.0.mlp.c_fc.weight" / "exp_avg.pt"
    damaged.write_bytes(damaged.read_bytes()[:-8])
    assert ensure_universal(source, manifest, "xxh3_128") == (universal, True)
    assert verify_checkpoint(universal).ok and not list(root.glob("*.tmp"))
    shutil.rmtree(source)
    assert prune_orphans(root) == [universal] and not universal.exists()


def test_a_checkpoint_lacking_a_key_the_conversion_needs_is_named_and_nothing_is_written(zero2, tmp_path):
    root = tmp_path / "checkpoints"
    source = root / checkpoint_name(4)
    shutil.copytree(zero2["a"] / "checkpoints" / checkpoint_name(4), source)
    manifest = read_manifest(source)
    shard = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = torch.load(source / shard, weights_only=False)
    del state["optimizer_state_dict"]["param_slice_mappings"]  # as an older DeepSpeed wrote it
    torch.save(state, source / shard)
    size, digest = hash_file(source / shard, manifest.hash_algorithm)
    manifest.files[shard] = {"size": size, "hash": digest}
    (source / MANIFEST).unlink()
    write_manifest(source, manifest)
    with pytest.raises(IncompatibleCheckpointError, match="key 'optimizer_state_dict.param_slice_mappings'"):
        ensure_universal(source, manifest, "xxh3_128")
    assert sorted(p.name for p in root.iterdir()) == [source.name]


def test_a_precision_change_with_the_world_size_is_refused_naming_it(zero2):
    manifest = read_manifest(zero2["a"] / "checkpoints" / checkpoint_name(4))
    with pytest.raises(IncompatibleCheckpointError, match="saved in fp32 by 2 ranks and this job runs bf16 on 1"):
        check_reshardable(manifest, Path("step_00000004"), world_size=1, precision="bf16")
    check_reshardable(manifest, Path("step_00000004"), world_size=1, precision="fp32")


# ---------------------------------------------------------------------------- slow: ZeRO-3 1 -> 2, ZeRO-1 bf16 2 -> 1


@pytest.mark.chaos
def test_zero3_one_rank_to_two(tmp_path, cache_dir):
    z3 = "deepspeed=deepspeed/zero3.json"
    runs = run_reshard_case(tmp_path, cache_dir, name="z3", saved=(1, [z3, "train.grad_accum=2"]),
                            resumed=(2, ["train.grad_accum=1"]))  # fmt: skip
    step4 = checkpoint_name(4)
    assert_same_optimizer_state(runs["a"] / "checkpoints" / step4, runs["readback"] / "checkpoints" / step4)
    assert_recorded(runs["continued"], 1, 2, 3)
    assert_loss_matches(runs)


@pytest.mark.chaos
def test_zero1_bf16_two_ranks_to_one(tmp_path, cache_dir):
    z1 = ["deepspeed.zero_optimization.stage=1", "deepspeed.bf16.enabled=true"]
    runs = run_reshard_case(tmp_path, cache_dir, name="z1", saved=(2, z1), resumed=(1, ["train.grad_accum=2"]))
    step4 = checkpoint_name(4)
    assert_same_optimizer_state(runs["a"] / "checkpoints" / step4, runs["readback"] / "checkpoints" / step4)
    assert_recorded(runs["continued"], 2, 1, 1)


class _Payload:
    """Unpickling this would run ``touch MARKER`` (pickled as a call of os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _plant(folder: Path, name: str, marker: Path) -> None:
    """A payload in ``folder/name`` with its size, hash and the manifest's checksum recomputed (unsigned)."""
    path = folder / name
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own test file: trusted
    state["extra"] = _Payload(marker)
    torch.save(state, path)
    manifest = read_manifest(folder)
    size, digest = hash_file(path, manifest.hash_algorithm)
    manifest.files[name] = {"size": size, "hash": digest}
    (folder / MANIFEST).unlink()
    write_manifest(folder, manifest)


def test_conversion_and_universal_load_never_run_code_from_the_files(zero2, tmp_path):
    """DeepSpeed's converter and universal loader call torch.load(weights_only=False) themselves: a payload in
    rank 1's optimizer file (the converter reads it, our key check does not) or in a universal per-parameter
    file is refused inside restricted_unpickling, and nothing from it runs."""
    from seo_dist.checkpoint.errors import CheckpointError, UnsafeCheckpointError
    from seo_dist.checkpoint.safe_load import restricted_unpickling

    root = tmp_path / "checkpoints"
    source = root / checkpoint_name(4)
    shutil.copytree(zero2["a"] / "checkpoints" / checkpoint_name(4), source)
    marker = tmp_path / "MARKER_convert"
    _plant(source, "zero_pp_rank_1_mp_rank_00_optim_states.pt", marker)
    with pytest.raises(CheckpointError, match="refused to unpickle the object posix.system"):
        ensure_universal(source, read_manifest(source), "xxh3_128")
    assert not marker.exists(), "the payload ran during the conversion"
    assert sorted(p.name for p in root.iterdir()) == [source.name]

    universal = tmp_path / "universal"
    shutil.copytree(universal_folder(zero2["continued"] / "checkpoints" / checkpoint_name(4)), universal)
    marker = tmp_path / "MARKER_load"
    exp_avg = "zero/transformer.h.0.mlp.c_fc.weight/exp_avg.pt"
    _plant(universal, exp_avg, marker)
    assert verify_checkpoint(universal).ok  # hashes and checksum agree: only the unpickler can stop it
    with pytest.raises(UnsafeCheckpointError, match="posix.system"), restricted_unpickling():
        torch.load(universal / exp_avg, weights_only=False)  # how DeepSpeed's universal loader reads it
    assert not marker.exists(), "the payload ran during the universal load"


def test_with_a_key_the_universal_folder_is_signed_and_one_signed_by_another_key_is_made_again(zero2, tmp_path):
    from seo_dist.checkpoint.manifest import is_signed
    from seo_dist.checkpoint.signing import SigningKey

    mine, theirs = SigningKey(b"k" * 32, "test key"), SigningKey(b"x" * 32, "another key")
    source = tmp_path / "checkpoints" / checkpoint_name(4)
    shutil.copytree(zero2["a"] / "checkpoints" / checkpoint_name(4), source)
    manifest = read_manifest(source)
    universal, converted = ensure_universal(source, manifest, "blake3", mine)
    assert converted and is_signed(universal)
    assert verify_checkpoint(universal, key=mine).ok and not verify_checkpoint(universal, key=theirs).ok
    assert ensure_universal(source, manifest, "blake3", mine) == (universal, False)  # reused: signed by this key
    assert ensure_universal(source, manifest, "blake3", theirs) == (universal, True)  # not trusted: made again
    assert verify_checkpoint(universal, key=theirs).ok
