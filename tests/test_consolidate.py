"""Consolidation of real ZeRO 1/2/3 checkpoints (torchrun, gloo, CPU) into Hugging Face model folders.

One 2-rank torchrun launch (tests/consolidate_job.py) writes every checkpoint with the live parameters
and logits next to it, a 1-rank launch two more; DeepSpeed's own zero_to_fp32 runs once per stage, in
parallel. Tests read those and damage copies of them, never the originals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import PYTHON, REPO, free_port, job_env
from consolidate_job import VOCAB, probe_input
from safetensors import safe_open
from safetensors.torch import load_file

from seo_dist import cli
from seo_dist.checkpoint.verify import verify_checkpoint
from seo_dist.export import consolidate
from seo_dist.export.consolidate import EXPORT_ENGINE
from seo_dist.export.safetensors_writer import WEIGHTS_INDEX_NAME, WEIGHTS_NAME

JOB = Path(__file__).with_name("consolidate_job.py")

TAG = "step_00000002"
STAGES = {"z1": 1, "z2": 2, "z3": 3}
TIED = ("lm_head.weight", "transformer.wte.weight")
FROZEN = "transformer.wpe.weight"


def launch_job(out: Path, cache_dir: Path, nproc: int, scenarios: str) -> Path:
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(JOB), "--out", str(out), "--scenarios", scenarios]  # fmt: skip
    env = job_env(cache_dir)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and (out / "done").exists(), (
        f"job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """Every scenario of consolidate_job.py on 2 ranks."""
    return launch_job(tmp_path_factory.mktemp("consolidate_job"), cache_dir, 2, "z1,z2,z2_bf16,z3")


@pytest.fixture(scope="module")
def zero_to_fp32(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    """DeepSpeed's own consolidation of each stage (pytorch_model.bin; its safetensors mode fails on tied weights)."""
    base = tmp_path_factory.mktemp("zero_to_fp32")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name in STAGES:
        cmd = [
            PYTHON,
            "-m",
            "deepspeed.utils.zero_to_fp32",
            str(runs / name / "checkpoints"),
            str(base / name),
            "-t",
            TAG,
        ]
        procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = {}
    for name, proc in procs.items():
        log, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, log[-3000:]
        out[name] = torch.load(base / name / "pytorch_model.bin", weights_only=True)
    return out


@pytest.fixture(scope="module")
def exports(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 exports of the latest checkpoint of every scenario, through the Python API."""
    base = tmp_path_factory.mktemp("exports")
    return {name: consolidate.consolidate_checkpoint(runs / name, base / name).path for name in (*STAGES, "z2_bf16")}


def live(runs: Path, name: str, tag: str = TAG) -> dict[str, Any]:
    return torch.load(runs / name / "live" / f"{tag}.pt", weights_only=True)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["consolidate", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("name", [*STAGES, "z2_bf16"])
def test_weights_equal_live_parameters(runs: Path, exports: dict[str, Path], name: str) -> None:
    state = live(runs, name)
    weights = load_file(exports[name] / WEIGHTS_NAME)
    assert set(weights) == set(state["params"])  # every parameter, frozen wpe included, lm_head once
    for key, expected in state["params"].items():
        got = weights[key]
        assert got.dtype == torch.float32
        if state["bf16"]:  # the live model holds bf16 copies of the fp32 masters we export
            got = got.to(torch.bfloat16).float()
        assert torch.equal(got, expected), key


@pytest.mark.parametrize("name", list(STAGES))
def test_weights_equal_zero_to_fp32(
    exports: dict[str, Path], zero_to_fp32: dict[str, dict[str, torch.Tensor]], name: str
) -> None:
    ours, theirs = load_file(exports[name] / WEIGHTS_NAME), zero_to_fp32[name]
    assert set(theirs) - set(ours) == {TIED[0]}  # the alias, saved once by us
    assert torch.equal(theirs[TIED[0]], ours[TIED[1]])
    # DeepSpeed saves frozen parameters only from ZeRO-2 on, so zero_to_fp32 drops them for ZeRO-1
    assert set(ours) - set(theirs) == ({FROZEN} if STAGES[name] == 1 else set())
    for key in set(ours) & set(theirs):
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("name", list(STAGES))
def test_from_pretrained_gives_the_training_logits(runs: Path, exports: dict[str, Path], name: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(exports[name]).eval()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied again on load
    assert model.transformer.wpe.weight.dtype == torch.float32
    with torch.no_grad():
        logits = model(input_ids=probe_input()).logits
    torch.testing.assert_close(logits, live(runs, name)["logits"], rtol=1e-5, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(exports[name])
    assert (
        len(tokenizer) == VOCAB
        and tokenizer.decode(tokenizer("best running shoes")["input_ids"]) == "best running shoes"
    )


@pytest.fixture(scope="module")
def single_rank_runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    return launch_job(tmp_path_factory.mktemp("consolidate_job_1rank"), cache_dir, 1, "z2,z3")


@pytest.mark.parametrize("name", ["z2", "z3"])
def test_single_rank_checkpoints(single_rank_runs: Path, tmp_path: Path, name: str) -> None:
    """World size 1: one partition holds everything (no straddling, no ZeRO-3 padding)."""
    from transformers import AutoModelForCausalLM

    run = single_rank_runs
    result = consolidate.consolidate_checkpoint(run / name, tmp_path / "model")
    assert result.world_size == 1 and result.zero_stage == STAGES[name]
    state = live(run, name)
    weights = load_file(result.path / WEIGHTS_NAME)
    assert set(weights) == set(state["params"])
    assert all(torch.equal(weights[k], v) for k, v in state["params"].items())
    model = AutoModelForCausalLM.from_pretrained(result.path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=probe_input()).logits, state["logits"], rtol=1e-5, atol=1e-5)


def test_output_folder_is_complete_and_verifiable(exports: dict[str, Path]) -> None:
    out = exports["z3"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "config.json",
            "generation_config.json",
            "manifest.json",
            WEIGHTS_NAME,
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["dtype"] == "float32" and config["tie_word_embeddings"] is True
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 0
    report = verify_checkpoint(out)
    assert report.ok, report.summary()
    assert report.manifest.engine == EXPORT_ENGINE and report.manifest.step == 2 and report.manifest.zero_stage == 3
    with safe_open(str(out / WEIGHTS_NAME), "pt") as f:
        assert f.metadata()["format"] == "pt" and f.metadata()["seo_dist_source"] == TAG
    assert not out.with_name(out.name + ".tmp").exists()


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_reduced_precision_output(runs: Path, tmp_path: Path, dtype: str, torch_dtype: torch.dtype) -> None:
    from transformers import AutoModelForCausalLM

    out = consolidate.consolidate_checkpoint(runs / "z3", tmp_path / "model", dtype=dtype).path
    weights = load_file(out / WEIGHTS_NAME)
    state = live(runs, "z3")
    for key, expected in state["params"].items():
        assert weights[key].dtype == torch_dtype
        assert torch.equal(weights[key], expected.to(torch_dtype)), key  # same rounding as torch's cast
    assert json.loads((out / "config.json").read_text())["dtype"] == str(torch_dtype).removeprefix("torch.")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.dtype == torch_dtype and model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        logits = model(input_ids=probe_input()).logits.float()
    torch.testing.assert_close(logits, state["logits"], rtol=0.05, atol=0.05)


def test_sharded_output_loads(
    runs: Path, exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sharded"
    rc, stdout, err = run_cli([str(runs / "z2"), "--out", str(out), "--max-shard-size", "100KB"], capsys)
    assert rc == 0, err
    index = json.loads((out / WEIGHTS_INDEX_NAME).read_text())
    shards = sorted(p for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 4 and not (out / WEIGHTS_NAME).exists()
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    merged = {k: v for p in shards for k, v in load_file(p).items()}
    single = load_file(exports["z2"] / WEIGHTS_NAME)
    assert set(merged) == set(index["weight_map"]) == set(single)
    assert all(torch.equal(merged[k], single[k]) for k in single)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in single.values())
    for p in shards:  # each shard within the limit unless it holds a single larger tensor
        assert p.stat().st_size < 100_000 + 4096 or len(load_file(p)) == 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, single["transformer.h.1.mlp.c_fc.weight"])


def test_latest_and_best_of_an_experiment(runs: Path, tmp_path: Path) -> None:
    best = consolidate.consolidate_checkpoint(runs / "z2", tmp_path / "best", best=True)
    latest = consolidate.consolidate_checkpoint(runs / "z2" / "checkpoints", tmp_path / "latest")
    assert best.checkpoint.name == "step_00000001" and latest.checkpoint.name == TAG
    step1 = live(runs, "z2", "step_00000001")["params"]
    weights = load_file(best.path / WEIGHTS_NAME)
    assert all(torch.equal(weights[k], v) for k, v in step1.items())
    assert not torch.equal(weights["transformer.wte.weight"], live(runs, "z2")["params"]["transformer.wte.weight"])


def test_latest_is_what_a_resume_would_load(runs: Path, tmp_path: Path) -> None:
    """A job killed between committing a folder and rewriting ``latest``: the export takes the newer commit,
    as loading does, not the folder ``latest`` still names."""
    exp = tmp_path / "z2"
    shutil.copytree(runs / "z2", exp)
    (exp / "checkpoints" / "latest").write_text("step_00000001")
    assert consolidate.consolidate_checkpoint(exp, tmp_path / "out").checkpoint.name == TAG


def _copy_experiment(runs: Path, name: str, dest: Path) -> Path:
    shutil.copytree(runs / name, dest / name)
    return dest / name / "checkpoints" / TAG


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def test_corrupt_optimizer_shard_exits_1_naming_it(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _copy_experiment(runs, "z2", tmp_path)
    shard = ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    _flip_byte(shard, shard.stat().st_size // 2)
    out = tmp_path / "model"
    rc, _, err = run_cli([str(ckpt), "--out", str(out)], capsys)
    assert rc == 1
    assert err.count("\n") == 1 and shard.name in err and "mismatch" in err
    assert not out.exists() and not out.with_name("model.tmp").exists()


def test_truncated_shard_unverified_still_named(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without hashes (--verify off) the reader itself must notice a truncated shard and name it."""
    ckpt = _copy_experiment(runs, "z3", tmp_path)
    shard = ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    os.truncate(shard, shard.stat().st_size - 100)
    rc, _, err = run_cli([str(ckpt), "--out", str(tmp_path / "model"), "--verify", "off"], capsys)
    assert rc == 1 and shard.name in err, err
    rc, _, err = run_cli([str(ckpt), "--out", str(tmp_path / "model"), "--verify", "quick"], capsys)
    assert rc == 1 and shard.name in err and "size" in err, err


def test_missing_manifest_exits_1_unless_verify_off(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _copy_experiment(runs, "z1", tmp_path)
    (ckpt / "manifest.json").unlink()
    rc, _, err = run_cli([str(ckpt), "--out", str(tmp_path / "model")], capsys)
    assert rc == 1 and "manifest.json" in err and "--verify off" in err
    rc, stdout, err = run_cli([str(ckpt), "--out", str(tmp_path / "model"), "--verify", "off"], capsys)
    assert rc == 0 and "ZeRO-1" in stdout and "warning" in err


@pytest.mark.parametrize("what", ["empty", "random_files", "missing", "file"])
def test_not_a_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str) -> None:
    target = tmp_path / "input"
    if what == "empty":
        target.mkdir()
    elif what == "random_files":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
    elif what == "file":
        target.write_text("hello")
    rc, _, err = run_cli([str(target), "--out", str(tmp_path / "model")], capsys)
    assert rc == 2 and err.count("\n") == 1 and str(target) in err, err
    assert not (tmp_path / "model").exists()


def test_out_folder_rules(
    runs: Path, exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A previous export is replaced; any other non-empty folder, or one inside the checkpoint, is refused."""
    out = tmp_path / "model"
    shutil.copytree(exports["z1"], out)
    rc, _, err = run_cli([str(runs / "z3"), "--out", str(out), "--dtype", "bf16"], capsys)
    assert rc == 0, err
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or old folder left
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    rc, _, err = run_cli([str(runs / "z3"), "--out", str(other)], capsys)
    assert rc == 2 and "not a model folder written by seo-dist consolidate" in err
    assert (other / "keep.txt").read_text() == "mine"
    rc, _, err = run_cli(
        [str(runs / "z3" / "checkpoints" / TAG), "--out", str(runs / "z3" / "checkpoints" / TAG / "m")], capsys
    )
    assert rc == 2 and "inside the checkpoint" in err


def test_module_entry_point_does_not_import_torch(runs: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from seo_dist.export.__main__ import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules and 'deepspeed' not in sys.modules, 'heavy import'; sys.exit(rc)"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code, str(runs / "z3"), "--out", str(tmp_path / "m"), "--dtype", "bf16"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ZeRO-3, 2 ranks" in proc.stdout


@pytest.mark.parametrize("where", ["manifest", "config_yaml"])
def test_config_and_tokenizer_rebuilt_from_the_job_config(
    runs: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A checkpoint without hf_config.json or a saved tokenizer (what the trainer writes today): both are
    rebuilt from the job config in the manifest, or else from the experiment's config.yaml."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seo_dist.checkpoint.manifest import read_manifest, write_manifest
    from seo_dist.config import DataConfig, JobConfig, ModelConfig, TrainConfig, save_config

    monkeypatch.setenv("SEO_DIST_CACHE", str(cache_dir))
    ckpt = _copy_experiment(runs, "z1", tmp_path)
    exp = ckpt.parent.parent
    (ckpt / "hf_config.json").unlink()
    shutil.rmtree(exp / "artifacts")
    job = JobConfig(
        model=ModelConfig(config={"n_positions": 32, "n_embd": 63, "n_layer": 2, "n_head": 3}),
        data=DataConfig(vocab_size=VOCAB),
        train=TrainConfig(seq_len=16),
    )
    manifest = read_manifest(ckpt)
    del manifest.files["hf_config.json"]
    if where == "manifest":
        manifest.config = job.to_dict()
    else:
        save_config(job, exp / "config.yaml")
    write_manifest(ckpt, manifest)
    result = consolidate.consolidate_checkpoint(exp, tmp_path / "model")
    origin = "manifest.json" if where == "manifest" else "config.yaml"
    assert origin in result.sources["config"] and origin in result.sources["tokenizer"], result.sources
    model = AutoModelForCausalLM.from_pretrained(result.path).eval()
    with torch.no_grad():
        logits = model(input_ids=probe_input()).logits
    torch.testing.assert_close(logits, live(runs, "z1")["logits"], rtol=1e-5, atol=1e-5)
    assert len(AutoTokenizer.from_pretrained(result.path)) == VOCAB


def test_best_without_index_ranks_by_config_metric(runs: Path, tmp_path: Path) -> None:
    """index.json is a convenience: without it, --best ranks the manifests by config.yaml's metric."""
    ckpt = _copy_experiment(runs, "z2", tmp_path)
    exp = ckpt.parent.parent
    (exp / "checkpoints" / "index.json").write_text("{ not json")
    assert (
        consolidate.consolidate_checkpoint(exp, tmp_path / "a", best=True).checkpoint.name == "step_00000001"
    )  # val/loss, min
    (exp / "config.yaml").write_text("checkpoint:\n  best_metric: val/loss\n  maximize: true\n")
    assert consolidate.consolidate_checkpoint(exp, tmp_path / "b", best=True).checkpoint.name == "step_00000002"
