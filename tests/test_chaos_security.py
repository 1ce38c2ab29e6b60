"""Chaos trials for checkpoint security (``pytest -m chaos``): random tampering of signed checkpoints (which
file, which byte, which manifest field), random placement of a code-running payload, and a real resume from
a crafted checkpoint. Every trial must be caught, fall back or stop with exit 2, and never run the payload.
Each records a scorecard row (tests/chaos_scorecard.py)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from chaos_scorecard import record
from conftest import PYTHON
from test_security import (  # noqa: F401 - module fixtures, shared by the trials below
    key_files,
    make_model,
    plant_payload,
    secrets_run,
    security_run,
    verify_cli,
)

from seo_dist.checkpoint.layout import MANIFEST, TORCH_STATE_FILE, rank_state_file
from seo_dist.checkpoint.manager import CheckpointManager
from seo_dist.checkpoint.signing import key_from_file
from seo_dist.checkpoint.strategy import CheckpointStrategy

TRIALS = 12
SEED = 20261201


def flip_random_byte(folder: Path, rng: random.Random) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    path = rng.choice(files)
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return f"{path.name}@{i}"


def edit_random_field(folder: Path, rng: random.Random) -> str:
    data = json.loads((folder / MANIFEST).read_text())
    field = rng.choice(["step", "epoch", "metrics", "files", "hash_algorithm", "world_size", "signature"])
    if field == "files":
        name = rng.choice(sorted(data["files"]))
        data["files"][name]["size"] += 1
    elif field == "metrics":
        data["metrics"] = {"val/loss": rng.random()}
    elif field == "hash_algorithm":
        data["hash_algorithm"] = "xxh3_128"
    elif field == "signature":
        data.pop("signature")
    else:
        data[field] = int(data[field]) + 1
    (folder / MANIFEST).write_text(json.dumps(data))
    return f"manifest.{field}"


@pytest.mark.chaos
def test_random_tampering_of_a_signed_deepspeed_checkpoint_is_caught_by_verify(
    security_run,  # noqa: F811
    key_files,  # noqa: F811
    tmp_path,
    capsys,
):
    rng = random.Random(SEED)
    src = security_run / "signed" / "checkpoints"
    caught = 0
    for trial in range(TRIALS):
        folder = shutil.copytree(src / "step_00000004", tmp_path / str(trial) / "step_00000004")
        how = rng.choice(["flip", "swap", "edit"])
        if how == "flip":
            what = flip_random_byte(folder, rng)
        elif how == "swap":
            name = rng.choice(sorted(p.name for p in folder.iterdir() if p.suffix == ".pt"))
            shutil.copyfile(src / "step_00000002" / name, folder / name)
            what = f"swap {name}"
        else:
            what = edit_random_field(folder, rng)
        rc, text = verify_cli(folder, capsys, f"--key-file={key_files[0]}")
        assert rc == 1, f"trial {trial} ({what}) not caught: {text}"
        caught += 1
    record("Signed ZeRO-2 checkpoint: random byte flip / file swap / manifest edit", f"{caught}/{TRIALS} caught by "
           "seo-dist verify (exit 1)", trials=TRIALS)  # fmt: skip


def save_two_steps(mgr: CheckpointManager, seed: int) -> None:
    """Steps 1 and 2 of a small model (an optimizer step between them), saved by ``mgr``."""
    model, opt = make_model(seed)
    for step in (1, 2):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        mgr.save_checkpoint(model, opt, step=step, rank_state={"step": step})


@pytest.mark.chaos
def test_random_tampering_of_a_signed_checkpoint_falls_back_on_load(tmp_path, key_files):  # noqa: F811
    rng = random.Random(SEED + 1)
    key = str(key_files[0])
    for trial in range(TRIALS):
        root = tmp_path / str(trial)
        save_two_steps(CheckpointManager(root, CheckpointStrategy(save_interval=1, keep_last=3, signing_key_file=key)),
                       trial)  # fmt: skip
        folder = root / "step_00000002"
        how = rng.choice(["flip", "swap", "edit"])
        if how == "flip":
            what = flip_random_byte(folder, rng)
        elif how == "swap":
            name = rng.choice([TORCH_STATE_FILE, rank_state_file(0)])
            shutil.copyfile(root / "step_00000001" / name, folder / name)
            what = f"swap {name}"
        else:
            what = edit_random_field(folder, rng)
        loaded = CheckpointManager(root, CheckpointStrategy(signing_key_file=key)).load_checkpoint(
            "latest", *make_model()
        )
        assert loaded["step"] == 1 and loaded["fell_back_from"] == ["step_00000002"], f"trial {trial}: {what}"
    record("Signed checkpoint tampered (random file/byte/field), then loaded", "fell back to the previous one",
           trials=TRIALS)  # fmt: skip


@pytest.mark.chaos
def test_payload_in_a_random_file_never_runs(tmp_path, key_files):  # noqa: F811
    """Even signed with the right key (stolen key, insider), a payload in any pickled file never runs."""
    rng = random.Random(SEED + 2)
    key = key_from_file(key_files[0])
    for trial in range(TRIALS):
        root = tmp_path / str(trial)
        save_two_steps(
            CheckpointManager(root, CheckpointStrategy(save_interval=1, keep_last=3), signing_key=key), trial
        )
        name = rng.choice([TORCH_STATE_FILE, rank_state_file(0)])
        marker = tmp_path / f"MARKER_{trial}"
        plant_payload(root / "step_00000002", name, marker, rng.choice([key, None]))
        loaded = CheckpointManager(root, CheckpointStrategy(), signing_key=key, allow_unsigned=True).load_checkpoint(
            "latest", *make_model()
        )
        assert loaded["step"] == 1 and not marker.exists(), f"trial {trial}: {name}"
    record("Code-running payload planted in a random checkpoint file (hashes, checksum or signature redone)",
           "refused by the unpickler, fell back; payload never ran", trials=TRIALS)  # fmt: skip


@pytest.mark.chaos
def test_resume_from_a_crafted_checkpoint_exits_2_and_runs_nothing(secrets_run, key_files):  # noqa: F811
    """A real ``--resume`` whose only checkpoint carries a payload (signed with the right key): exit 2."""
    exp, _, _, env, repo = secrets_run
    folder = sorted((exp / "checkpoints").glob("step_*"))[-1]
    marker = exp.parent / "MARKER_resume"
    plant_payload(folder, rank_state_file(0), marker, key_from_file(key_files[0]))
    resume = [PYTHON, "-m", "seo_dist.train", "--resume", str(exp), "--set", "train.max_steps=4"]
    proc = subprocess.run(resume, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "none is valid" in proc.stderr and "posix.system" in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists()
    record("Resume whose only checkpoint carries a payload", "one line, exit 2; payload never ran")
