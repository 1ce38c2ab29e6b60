"""Checkpoints of real DeepSpeed ZeRO 1/2/3 engines on 2 CPU ranks (gloo), through tests/ckpt_job.py.

Four torchrun runs are shared by all tests here (module-scoped fixtures):
roundtrip (ZeRO 1, 2, 3 in one job), crash (injected failures, then a SIGKILL mid-save),
resume (after the crash; and a corrupted copy of the ZeRO-2 run), worldsize (1 rank loading a 2-rank run).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import BIN, PYTHON, free_port

from seo_dist.checkpoint.index import read_index, read_latest
from seo_dist.checkpoint.layout import MANIFEST, checkpoint_name, rank_state_file
from seo_dist.checkpoint.manifest import read_manifest
from seo_dist.checkpoint.verify import verify_checkpoint

JOB = Path(__file__).with_name("ckpt_job.py")
STAGES = (1, 2, 3)
REPO = Path(__file__).resolve().parents[1]


def torchrun(mode: str, out: Path, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        str(BIN / "torchrun"),
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(free_port()),
        str(JOB),
        mode,
        str(out),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def tail(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Warning" not in ln and "return func" not in ln]
    return "\n".join(lines[-40:])


def load(path: Path) -> Any:
    return torch.load(path, weights_only=False)


def assert_same_state(a: Any, b: Any, where: str = "") -> None:
    """Exact equality of nested state (tensors bit-for-bit); objects such as DeepSpeed's loss scaler by attributes."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"tensor differs at {where}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"keys differ at {where}: {set(a) ^ set(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"length differs at {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        assert type(a) is type(b), where
        assert_same_state(vars(a), vars(b), where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpt_ds")


@pytest.fixture(scope="module")
def roundtrip(out) -> Path:
    proc = torchrun("roundtrip", out)
    assert proc.returncode == 0, tail(proc)
    return out


@pytest.fixture(scope="module")
def crash(out) -> dict[str, Any]:
    """Runs the crash job and records what was on disk right after the kill (before the resume run sweeps it)."""
    proc = torchrun("crash", out / "crash")
    root = out / "crash" / "checkpoints"
    return {
        "proc": proc,
        "root": root,
        "listing": sorted(p.name for p in root.iterdir()),
        "latest": read_latest(root),
        "latest_report": verify_checkpoint(root / checkpoint_name(1)),
    }


@pytest.fixture(scope="module")
def resume(out, roundtrip, crash) -> Path:
    fallback = out / "fallback" / "checkpoints"
    shutil.copytree(out / "zero2" / "checkpoints", fallback)
    shard = fallback / checkpoint_name(8) / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[random.Random(8).randrange(len(data))] ^= 0x10
    shard.write_bytes(bytes(data))
    proc = torchrun("resume", out)
    assert proc.returncode == 0, tail(proc)
    return out


def result(out: Path, stage: int, rank: int) -> dict[str, Any]:
    return json.loads((out / f"zero{stage}" / f"result_rank{rank}.json").read_text())


# ---------------------------------------------------------------------------- roundtrip (ZeRO 1, 2, 3)


@pytest.mark.parametrize("stage", STAGES)
def test_layout_is_deepspeeds_plus_manifest_and_rank_state(roundtrip, stage):
    root = roundtrip / f"zero{stage}" / "checkpoints"
    assert read_latest(root) == checkpoint_name(8)
    # saves at 2, 4, 6, 8 with keep_last=2; val/loss is best at step 2, so 2 stays and only 4 goes
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [checkpoint_name(s) for s in (2, 6, 8)]
    folder = root / checkpoint_name(8)
    model_files = (
        {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)}
        if stage == 3
        else {"mp_rank_00_model_states.pt"}
    )
    expected = (
        model_files
        | {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)}
        | {rank_state_file(0), rank_state_file(1)}
    )
    manifest = read_manifest(folder)
    assert set(manifest.files) == expected
    assert {p.name for p in folder.iterdir()} == expected | {MANIFEST}
    assert (manifest.world_size, manifest.zero_stage, manifest.engine, manifest.step) == (2, stage, "deepspeed", 8)
    assert "deepspeed" in manifest.versions
    report = verify_checkpoint(folder)
    assert report.ok and report.files_checked == len(expected)
    index = read_index(root)
    assert index["best"]["val/loss"]["step"] == 2 and index["latest"] == checkpoint_name(8)
    events = json.loads((roundtrip / f"zero{stage}" / "events.json").read_text())
    assert [e["steps"] for e in events if e["event"] == "checkpoint_pruned"] == [[4]]


@pytest.mark.parametrize("stage", STAGES)
def test_manager_load_restores_parameters_optimizer_scheduler_exactly(roundtrip, stage):
    for rank in (0, 1):
        saved = load(roundtrip / f"zero{stage}" / f"A6_rank{rank}.pt")
        loaded = load(roundtrip / f"zero{stage}" / f"B_loaded_rank{rank}.pt")
        assert saved["global_steps"] == loaded["global_steps"] == 6
        assert saved["lr_scheduler"]["last_epoch"] == 6  # DeepSpeed saved the LambdaLR given to initialize()
        for key in ("module", "optimizer", "lr_scheduler"):
            assert_same_state(saved[key], loaded[key], f"zero{stage} rank{rank} {key}")
        assert torch.equal(saved["torch_rng"], loaded["torch_rng"])  # RNG restored from seo_dist_rank_*.pt
        res = result(roundtrip, stage, rank)
        assert res["rank_state"] == {"data_step": 6, "rank": rank}
        assert res["loaded_name"] == checkpoint_name(6) and res["fell_back_from"] == []


@pytest.mark.parametrize("stage", STAGES)
def test_resumed_training_logs_the_same_losses(roundtrip, stage):
    for rank in (0, 1):
        res = result(roundtrip, stage, rank)
        assert res["losses_b"] == {k: res["losses_a"][k] for k in ("7", "8")}  # bit-identical (JSON floats)


@pytest.mark.parametrize("stage", STAGES)
def test_deepspeed_load_checkpoint_reads_our_latest_and_files(roundtrip, stage):
    for rank in (0, 1):
        res = result(roundtrip, stage, rank)
        assert Path(res["ds_load_path"]).parent.name == checkpoint_name(8)
        saved = load(roundtrip / f"zero{stage}" / f"A8_rank{rank}.pt")
        loaded = load(roundtrip / f"zero{stage}" / f"C_loaded_rank{rank}.pt")
        for key in ("module", "optimizer", "lr_scheduler"):
            assert_same_state(saved[key], loaded[key], f"zero{stage} rank{rank} {key}")


def test_config_change_is_reported(roundtrip):
    assert result(roundtrip, 2, 0)["config_changed_keys"] == ["train.lr"]
    events = json.loads((roundtrip / "zero2" / "events.json").read_text())
    (changed,) = [e for e in events if e["event"] == "checkpoint_config_changed"]
    assert changed["keys"] == ["train.lr"] and changed["saved_hash"] == "hash-a"


@pytest.mark.parametrize("stage", STAGES)
def test_zero_to_fp32_reads_our_folders(roundtrip, stage):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root = roundtrip / f"zero{stage}" / "checkpoints"
    expected = load(roundtrip / f"zero{stage}" / "A8_rank0.pt")["module"]
    fp32 = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=checkpoint_name(8))
    assert set(fp32) == set(expected)  # the tied head.weight included
    for key, value in expected.items():
        assert torch.equal(fp32[key].float(), value.float()), key


def test_zero_to_fp32_command_line(roundtrip, tmp_path):
    root = roundtrip / "zero2" / "checkpoints"
    proc = subprocess.run(
        [PYTHON, "-m", "deepspeed.utils.zero_to_fp32", str(root), str(tmp_path)],  # tag from `latest`
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=False)
    expected = load(roundtrip / "zero2" / "A8_rank0.pt")["module"]
    assert all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.mark.parametrize("kind", ["flip", "truncate", "delete"])
def test_damage_to_any_file_of_a_zero3_checkpoint_is_named(roundtrip, tmp_path, kind):
    source = roundtrip / "zero3" / "checkpoints" / checkpoint_name(8)
    rng = random.Random(kind)
    for name in sorted(read_manifest(source).files):
        folder = tmp_path / name / checkpoint_name(8)
        shutil.copytree(source, folder)
        target = folder / name
        data = bytearray(target.read_bytes())
        if kind == "flip":
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            target.write_bytes(bytes(data))
        elif kind == "truncate":
            target.write_bytes(bytes(data[: rng.randrange(len(data))]))
        else:
            target.unlink()
        report = verify_checkpoint(folder)
        assert [(p.path, p.kind) for p in report.problems] == [
            (name, {"flip": "hash", "truncate": "size", "delete": "missing"}[kind])
        ]


# ---------------------------------------------------------------------------- failures, crash, resume


def test_failed_saves_raise_on_every_rank_and_commit_nothing(crash):
    out = crash["root"].parent
    outcomes = [json.loads((out / f"outcomes_rank{r}.json").read_text()) for r in (0, 1)]
    assert outcomes[0] == outcomes[1]  # rank 1 learnt of rank 0's failure and vice versa: nobody hung
    assert "step_00000002 not committed" in outcomes[0]["2"] and "No space left" in outcomes[0]["2"]
    assert "rank 1: zero_pp_rank_1_mp_rank_00_optim_states.pt" in outcomes[0]["3"]
    events = json.loads((out / "events.json").read_text())
    assert [e["step"] for e in events if e["event"] == "checkpoint_save_failed"] == [2, 3]


def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_latest_valid(crash):
    proc = crash["proc"]
    assert proc.returncode != 0, tail(proc)
    out = crash["root"].parent
    assert (out / "killed_after.txt").read_text().endswith(".pt")
    assert not list(out.glob("survived_rank*.txt"))
    assert crash["latest"] == checkpoint_name(1)
    assert crash["latest_report"].ok
    # failed saves 2 and 3 left nothing; the killed save 4 left only its staging folder
    assert [n for n in crash["listing"] if n.startswith("step_")] == [checkpoint_name(1), checkpoint_name(4) + ".tmp"]


def test_resume_after_the_crash_sweeps_loads_and_saves_again(crash, resume):
    root = crash["root"]
    res = [json.loads((resume / f"resume_rank{r}.json").read_text()) for r in (0, 1)]
    assert [Path(p).name for p in res[0]["swept"]] == [checkpoint_name(4) + ".tmp"] and res[1]["swept"] == []
    assert res[0]["loaded"] == res[1]["loaded"] == checkpoint_name(1)
    assert res[0]["rank_state"] == {"data_step": 1}
    for rank in (0, 1):
        before = load(root.parent / f"crash1_rank{rank}.pt")
        after = load(root.parent / f"resumed_rank{rank}.pt")
        for key in ("module", "optimizer", "lr_scheduler"):
            assert_same_state(before[key], after[key], f"rank{rank} {key}")
    assert read_latest(root) == checkpoint_name(2) and verify_checkpoint(root / checkpoint_name(2)).ok
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_shard_on_one_rank_falls_back_on_all_ranks(roundtrip, resume):
    res = [json.loads((resume / f"resume_rank{r}.json").read_text()) for r in (0, 1)]
    for r in res:
        assert r["fallback_loaded"] == checkpoint_name(6) and r["fell_back_from"] == [checkpoint_name(8)]
    events = json.loads((resume / "resume_events.json").read_text())
    (fallback,) = [e for e in events if e["event"] == "checkpoint_fallback"]
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in fallback["reason"] and fallback["next"] == checkpoint_name(6)
    for rank in (0, 1):
        saved = load(roundtrip / "zero2" / f"A6_rank{rank}.pt")
        loaded = load(resume / "fallback" / f"loaded_rank{rank}.pt")
        for key in ("module", "optimizer", "lr_scheduler"):
            assert_same_state(saved[key], loaded[key], f"rank{rank} {key}")


def test_world_size_change_with_zero_reshards(roundtrip):
    """One rank loads the two-rank ZeRO-2 checkpoint (once refused): the weights and LR scheduler come back exactly."""
    proc = torchrun("worldsize", roundtrip, nproc=1)
    error = roundtrip / "worldsize_error.txt"
    assert proc.returncode == 0 and not error.exists(), (error.read_text() if error.exists() else "") + tail(proc)
    result = json.loads((roundtrip / "worldsize_result.json").read_text())
    assert result["name"] == checkpoint_name(8)
    assert (result["resharded"]["from_world_size"], result["resharded"]["to_world_size"]) == (2, 1)
    saved = load(roundtrip / "zero2" / "A8_rank0.pt")
    loaded = load(roundtrip / "worldsize_loaded_rank0.pt")
    for key in ("module", "lr_scheduler", "global_steps"):
        assert_same_state(saved[key], loaded[key], key)
