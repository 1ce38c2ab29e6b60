"""The user's path through a real run (2 ranks, ZeRO-2, torchrun): what the training loop waits for, and
exporting the checkpoints the trainer wrote.

One run (tests/sync_count_job.py, 8 steps, log every 4, a checkpoint every 3) serves every test here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, CONFIGS, PYTHON, REPO, free_port, job_env

from seo_dist.checkpoint.manifest import read_manifest, write_manifest
from seo_dist.checkpoint.verify import verify_checkpoint
from seo_dist.export import consolidate

TESTS = Path(__file__).resolve().parent
MAX_STEPS, LOG_INTERVAL, SAVE_INTERVAL = 8, 4, 3
RUN_FILES = ("hf_config.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("user_path")
    env = {**job_env(cache_dir), "SYNC_COUNT_DIR": str(tmp / "counts")}
    cmd = [
        str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()),
        str(TESTS / "sync_count_job.py"), "--config", str(CONFIGS / "tiny_cpu.yaml"), "--set",
        f"experiment.base_dir={tmp / 'experiments'}", "experiment.experiment_id=run",
        f"train.max_steps={MAX_STEPS}", f"train.log_interval={LOG_INTERVAL}", "train.eval_interval=0",
        "train.eval_batches=2", "train.progress_bar=false", f"checkpoint.save_interval={SAVE_INTERVAL}",
        "model.config.n_layer=2", "model.config.n_embd=64", "model.config.n_head=2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    counts = {r: json.loads((tmp / "counts" / f"rank{r}.json").read_text()) for r in (0, 1)}
    return {"tmp": tmp, "exp": tmp / "experiments" / "run", "counts": counts, "cache": cache_dir}


# ---------------------------------------------------------------------------- the training step


def test_no_step_waits_for_the_device_or_the_ranks_except_at_fixed_steps(run: dict[str, Any]) -> None:
    """A step that neither logs nor saves reads no device value and runs no collective of seo_dist's own;
    a log step reads the window's loss once (one all-reduce) and gathers the profiler's numbers once."""
    log_step = {
        "seo_dist.training.step:all_reduce": 1,
        "seo_dist.training.step:cpu": 1,
        "seo_dist.training.step:tolist": 1,
        "seo_dist.dist:all_gather_object": 1,
    }
    save_step = {k: v for k, v in log_step.items() if k.startswith("seo_dist.training.step")}
    for rank, counts in run["counts"].items():
        for step in range(1, MAX_STEPS + 1):
            got = counts.get(str(step), {})
            if step % LOG_INTERVAL == 0:
                assert got == log_step, (rank, step, got)
            elif step % SAVE_INTERVAL == 0:
                assert got == save_step, (rank, step, got)  # the loss for the checkpoint's metrics
            else:
                assert got == {}, (rank, step, got)


def test_the_loss_is_logged_at_the_log_interval(run: dict[str, Any]) -> None:
    rows = [
        json.loads(line) for line in (run["exp"] / "metrics" / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert sorted(losses) == [4, 8] and all(0 < v < 20 for v in losses.values()), losses


# ---------------------------------------------------------------------------- the export


def test_checkpoints_carry_the_export_files_in_their_manifest(run: dict[str, Any]) -> None:
    for ckpt in sorted((run["exp"] / "checkpoints").glob("step_*")):
        files = read_manifest(ckpt).files
        assert all(name in files for name in RUN_FILES), sorted(files)
        assert verify_checkpoint(ckpt, "full").ok
        assert json.loads((ckpt / "hf_config.json").read_text())["model_type"] == "gpt2"


def test_consolidate_imports_neither_torch_nor_transformers(run: dict[str, Any], tmp_path: Path) -> None:
    code = (
        "import sys; from seo_dist.cli import main; rc = main(sys.argv[1:]); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'deepspeed', 'tokenizers', 'seo_dist.data') "
        "if m in sys.modules); assert not heavy, heavy; sys.exit(rc)"
    )
    out = tmp_path / "model"
    proc = subprocess.run(
        [PYTHON, "-c", code, "consolidate", str(run["exp"]), "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=job_env(run["cache"]),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    ckpt = run["exp"] / "checkpoints" / f"step_{MAX_STEPS:08d}"
    assert f"config: {ckpt / 'hf_config.json'}" in proc.stdout, proc.stdout
    assert f"tokenizer: checkpoint folder: {ckpt / 'tokenizer'}" in proc.stdout, proc.stdout
    assert (out / "tokenizer.json").read_bytes() == (ckpt / "tokenizer" / "tokenizer.json").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["n_layer"] == 2 and config["n_embd"] == 64


def test_exported_model_loads_with_its_tokenizer(run: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = consolidate.consolidate_checkpoint(run["exp"], tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    model = AutoModelForCausalLM.from_pretrained(result.path)
    ids = tokenizer("seo audit checklist", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size >= len(tokenizer)


def test_a_damaged_export_file_is_named(run: dict[str, Any], tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(run["exp"], exp)
    ckpt = exp / "checkpoints" / f"step_{MAX_STEPS:08d}"
    (ckpt / "hf_config.json").write_text((ckpt / "hf_config.json").read_text().replace('"n_layer": 2', '"n_layer": 3'))
    with pytest.raises(consolidate.CorruptCheckpointError, match="hf_config.json"):
        consolidate.consolidate_checkpoint(ckpt, tmp_path / "model")


def test_an_old_checkpoint_without_them_exports_by_the_slow_path_with_a_note(
    run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEO_DIST_CACHE", str(run["cache"]))
    exp = tmp_path / "exp"
    shutil.copytree(run["exp"], exp)
    ckpt = exp / "checkpoints" / f"step_{MAX_STEPS:08d}"
    manifest = read_manifest(ckpt)
    for name in list(manifest.files):
        if name == "hf_config.json" or name.startswith("tokenizer/"):
            del manifest.files[name]
    write_manifest(ckpt, manifest)
    (ckpt / "hf_config.json").unlink()
    shutil.rmtree(ckpt / "tokenizer")
    shutil.rmtree(exp / "artifacts" / "tokenizer")
    result = consolidate.consolidate_checkpoint(ckpt, tmp_path / "model")
    assert result.sources["config"].startswith("rebuilt from"), result.sources
    notes = [w for w in result.warnings if "slow" in w]
    assert len(notes) == 2 and "hf_config.json" in notes[0] and "tokenizer" in notes[1], result.warnings
    fast = consolidate.consolidate_checkpoint(run["exp"], tmp_path / "fast")
    assert json.loads((result.path / "config.json").read_text()) == json.loads((fast.path / "config.json").read_text())
    assert (result.path / "tokenizer.json").read_bytes() == (fast.path / "tokenizer.json").read_bytes()
