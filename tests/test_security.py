"""Security of what a run reads and writes: a checkpoint load never runs code from the files, signed manifests
catch every tampering, and no secret is copied into an experiment directory.

Real components: DeepSpeed ZeRO-2 on 2 CPU ranks under torchrun (tests/security_job.py, one launch shared by
the module), a plain torch model through the real manager in this process, ``seo-dist verify`` through the CLI's
``main``, and a real training run (in this process) inside a temporary git repository holding secret files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, PYTHON, REPO, job_env

from seo_dist.checkpoint.errors import NoValidCheckpointError, UnsafeCheckpointError
from seo_dist.checkpoint.hashing import hash_file
from seo_dist.checkpoint.layout import MANIFEST, TORCH_STATE_FILE
from seo_dist.checkpoint.manager import CheckpointManager
from seo_dist.checkpoint.manifest import read_manifest, write_manifest
from seo_dist.checkpoint.safe_load import load_rank_state_file, load_torch_state_file
from seo_dist.checkpoint.signing import key_from_file
from seo_dist.checkpoint.strategy import CheckpointStrategy
from seo_dist.cli import main as cli_main

SECURITY_JOB = Path(__file__).with_name("security_job.py")
TARGETS = ("rank_state", "model_state", "optim_state")


class Payload:
    """Unpickling this would run ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_payload(folder: Path, name: str, marker: Path, key=None) -> None:
    """Add a Payload to ``folder/name``; size, hash and the manifest (checksum, or signature with ``key``) agree."""
    path = folder / name
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: trusted
    state["extra"] = Payload(marker)
    torch.save(state, path)
    manifest = read_manifest(folder)
    size, digest = hash_file(path, manifest.hash_algorithm)
    manifest.files[name] = {"size": size, "hash": digest}
    write_manifest(folder, manifest, key)


def verify_cli(folder: Path, capsys, *extra: str) -> tuple[int, str]:
    rc = cli_main(["verify", str(folder), *extra])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


@pytest.fixture(scope="module")
def key_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    (d / "key").write_text("a3f1" * 16 + "\n")
    (d / "other_key").write_text("77be" * 16 + "\n")
    return d / "key", d / "other_key"


# ---------------------------------------------------------------------------- real DeepSpeed, 2 ranks


@pytest.fixture(scope="module")
def security_run(tmp_path_factory, cache_dir, key_files) -> Path:
    out = tmp_path_factory.mktemp("security_job")
    cmd = [str(Path(PYTHON).parent / "torchrun"), "--nproc-per-node", "2", "--master-port", str(_port()),
           str(SECURITY_JOB), str(out), str(key_files[0])]  # fmt: skip
    proc = subprocess.run(cmd, env=job_env(cache_dir), capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def _port() -> int:
    from conftest import free_port

    return free_port()


def _result(out: Path, rank: int) -> dict:
    return json.loads((out / f"result_rank{rank}.json").read_text())


@pytest.mark.parametrize("target", TARGETS)
def test_crafted_deepspeed_checkpoint_never_runs_its_payload_and_falls_back(security_run, target):
    """The payload (os.system) sits in step 4's rank-state, model-state or optimizer-state file with size, hash
    and manifest checksum recomputed: verification passes, the unpickler refuses it, the load falls back."""
    assert not (security_run / f"MARKER_{target}").exists(), "the payload ran"
    for rank in (0, 1):
        res = _result(security_run, rank)["unsigned"][target]
        assert res["step"] == 2 and res["fell_back_from"] == ["step_00000004"], res
    events = _result(security_run, 0)["unsigned"][target]["events"]
    fallback = next(e for e in events if e["event"] == "checkpoint_fallback")
    assert fallback["failed"] == "step_00000004" and fallback["next"] == "step_00000002"
    assert "UnsafeCheckpointError" in fallback["reason"] and "posix.system" in fallback["reason"], fallback
    folder = security_run / "unsigned" / f"poisoned_{target}" / "step_00000004"
    assert read_manifest(folder).files  # the manifest still reads: only the unpickler stood in the way


def test_only_a_crafted_checkpoint_fails_with_no_valid_checkpoint(security_run):
    assert not (security_run / "MARKER_only").exists()
    for rank in (0, 1):
        assert _result(security_run, rank)["unsigned"]["only_poisoned"].startswith("NoValidCheckpointError")


def test_signed_resume_is_bit_identical_and_deepspeed_still_reads_it(security_run, key_files):
    signed = _result(security_run, 0)["signed"]
    assert signed["signed_by"] == signed["key_id"] == key_from_file(key_files[0]).key_id
    assert signed["hash_algorithm"] == "blake3"  # xxh3_128 (the default) is upgraded under a key
    assert signed["resume_bit_identical"] and all(signed["losses_equal"]), signed
    assert signed["deepspeed_load_path"] and signed["deepspeed_reads_same_weights"], signed
    manifest_text = (security_run / "signed" / "checkpoints" / "step_00000004" / MANIFEST).read_text()
    assert key_files[0].read_text().strip() not in manifest_text  # the key never lands in the manifest


def test_zero_to_fp32_reads_a_signed_checkpoint(security_run):
    """DeepSpeed's zero_to_fp32 (the function behind its command line, in this process to save a start-up)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root = security_run / "signed" / "checkpoints"
    state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag="step_00000004")
    assert "emb.weight" in state and state["emb.weight"].dtype == torch.float32


def test_verify_catches_tampering_of_a_signed_deepspeed_checkpoint(security_run, key_files, tmp_path, capsys):
    src = security_run / "signed" / "checkpoints"
    key, other = (f"--key-file={k}" for k in key_files)
    rc, text = verify_cli(src / "step_00000004", capsys, key)
    assert rc == 0 and "signed (key id" in text, text
    rc, text = verify_cli(src / "step_00000004", capsys, other)
    assert rc == 1 and "signature mismatch" in text and "another key" in text, text

    flipped = shutil.copytree(src / "step_00000004", tmp_path / "flip" / "step_00000004")
    optim = flipped / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(optim.read_bytes())
    data[len(data) // 2] ^= 0x01
    optim.write_bytes(bytes(data))
    rc, text = verify_cli(flipped, capsys, key)
    assert rc == 1 and "zero_pp_rank_0_mp_rank_00_optim_states.pt: blake3 mismatch" in text, text

    swapped = shutil.copytree(src / "step_00000004", tmp_path / "swap" / "step_00000004")
    shutil.copyfile(src / "step_00000002" / "mp_rank_00_model_states.pt", swapped / "mp_rank_00_model_states.pt")
    rc, text = verify_cli(swapped, capsys, key)
    assert rc == 1 and "mp_rank_00_model_states.pt" in text, text

    edited = shutil.copytree(src / "step_00000004", tmp_path / "edit" / "step_00000004")
    manifest = read_manifest(edited)
    manifest.files["mp_rank_00_model_states.pt"]["hash"] = "0" * 64
    write_manifest(edited, manifest)  # checksum recomputed, the signature dropped: no key
    rc, text = verify_cli(edited, capsys, key)
    assert rc == 1 and "unsigned" in text, text
    data = json.loads((src / "step_00000004" / MANIFEST).read_text())
    data["metrics"] = {"val/loss": 0.0}
    (edited / MANIFEST).write_text(json.dumps(data))  # the old signature kept, content changed
    rc, text = verify_cli(edited, capsys, key)
    assert rc == 1 and "signature mismatch" in text, text


def test_verify_reports_unsigned_when_a_key_is_given(security_run, key_files, capsys):
    folder = security_run / "unsigned" / "checkpoints" / "step_00000002"
    rc, text = verify_cli(folder, capsys, f"--key-file={key_files[0]}")
    assert rc == 1 and "unsigned" in text, text
    rc, text = verify_cli(folder, capsys)
    assert rc == 0, text


# ---------------------------------------------------------------------------- plain torch model, this process


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def signed_root(tmp_path: Path, key: Path) -> Path:
    root = tmp_path / "ck"
    model, opt = make_model()
    mgr = CheckpointManager(root, CheckpointStrategy(save_interval=1, keep_last=3, signing_key_file=str(key)))
    for step in (1, 2):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        mgr.save_checkpoint(model, opt, step=step, rank_state={"step": step})
    return root


def tamper(folder: Path, how: str, other: Path) -> None:
    if how == "flip":
        path = folder / TORCH_STATE_FILE
        data = bytearray(path.read_bytes())
        data[-100] ^= 0x10
        path.write_bytes(bytes(data))
    elif how == "swap":
        shutil.copyfile(other / TORCH_STATE_FILE, folder / TORCH_STATE_FILE)
    elif how == "edit":
        data = json.loads((folder / MANIFEST).read_text())
        data["step"] = 2
        data["metrics"] = {"val/loss": -1.0}
        (folder / MANIFEST).write_text(json.dumps(data))


@pytest.mark.parametrize("how", ["flip", "swap", "edit"])
def test_tampered_signed_checkpoint_is_caught_on_load(tmp_path, key_files, how):
    root = signed_root(tmp_path, key_files[0])
    tamper(root / "step_00000002", how, root / "step_00000001")
    events = []
    mgr = CheckpointManager(root, CheckpointStrategy(signing_key_file=str(key_files[0])),
                            event_fn=lambda name, **f: events.append((name, f)))  # fmt: skip
    model, opt = make_model(1)
    loaded = mgr.load_checkpoint("latest", model, opt)
    assert loaded["step"] == 1 and loaded["fell_back_from"] == ["step_00000002"]
    reason = next(f["reason"] for n, f in events if n == "checkpoint_fallback")
    expected = {"flip": "blake3 mismatch", "swap": "model_state.pt", "edit": "signature mismatch"}[how]
    assert expected in reason, reason


def test_other_key_and_unsigned_are_refused_on_load(tmp_path, key_files):
    root = signed_root(tmp_path, key_files[0])
    model, opt = make_model(1)
    with pytest.raises(NoValidCheckpointError, match="signature mismatch"):
        CheckpointManager(root, CheckpointStrategy(signing_key_file=str(key_files[1]))).load_checkpoint(
            "latest", model, opt
        )
    plain = tmp_path / "plain"
    CheckpointManager(plain, CheckpointStrategy(save_interval=1)).save_checkpoint(model, opt, step=1)
    keyed = CheckpointStrategy(signing_key_file=str(key_files[0]))
    with pytest.raises(NoValidCheckpointError, match="unsigned"):
        CheckpointManager(plain, keyed).load_checkpoint("latest", model, opt)
    keyed.allow_unsigned = True
    assert CheckpointManager(plain, keyed).load_checkpoint("latest", model, opt)["step"] == 1


def test_safe_load_refuses_payload_in_a_torch_state_file(tmp_path):
    marker = tmp_path / "MARKER"
    model, opt = make_model()
    path = tmp_path / TORCH_STATE_FILE
    torch.save({"model": model.state_dict(), "extra": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"model_state.pt: refused to unpickle the object posix.system"):
        load_torch_state_file(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the crafted file really is hostile: a plain load runs it
    assert marker.exists()


def test_rank_state_files_of_the_old_format_still_load(tmp_path):
    """Older rank-state files held numpy's RNG state as a numpy array: still readable, still restorable."""
    from seo_dist.checkpoint.rng import capture_rng_state, restore_rng_state

    np.random.seed(7)
    old = {**capture_rng_state(), "numpy": np.random.get_state()}
    torch.save({"rng": old, "rank_state": {"step": 3}}, tmp_path / "old.pt")
    expected = np.random.rand()
    loaded = load_rank_state_file(tmp_path / "old.pt")
    restore_rng_state(loaded["rng"])
    assert np.random.rand() == expected


def test_key_file_problems_are_one_line_user_errors(tmp_path):
    from seo_dist.errors import UserError

    (tmp_path / "short").write_text("abc")
    with pytest.raises(UserError, match="at least 16"):
        key_from_file(tmp_path / "short")
    with pytest.raises(UserError, match="does not exist"):
        CheckpointManager(tmp_path / "ck", CheckpointStrategy(signing_key_file=str(tmp_path / "missing")))
    (tmp_path / "good").write_text("c0ffee" * 8)
    assert "c0ffee" not in repr(key_from_file(tmp_path / "good"))  # the key's repr never shows it


# ---------------------------------------------------------------------------- secrets and the experiment directory


def fake_secrets() -> dict[str, str]:
    """Token-shaped values built at run time, so that this file itself holds none."""
    return {
        "wandb": "9f" * 20,
        "hf": "hf_" + "Qx7" * 12,
        "aws": "AKIA" + "Z7Q2" * 4,
        "github": "ghp_" + "aB3d" * 9,
        "pem_body": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" * 2,
    }


def make_repo(root: Path) -> dict[str, str]:
    s = fake_secrets()
    root.mkdir()
    run = lambda *a: subprocess.run(["git", *a], cwd=root, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("config", "user.email", "t@example.com")
    run("config", "user.name", "t")
    (root / "settings.py").write_text("LR = 1e-3\n")
    (root / "README.md").write_text("experiment notes\n")
    run("add", ".")
    run("commit", "-qm", "init")
    (root / "settings.py").write_text(f"LR = 1e-3\nGITHUB = '{s['github']}'\n")  # a tracked file: in the diff
    (root / ".env").write_text(f"WANDB_API_KEY={s['wandb']}\n")
    (root / "keys").mkdir()
    (root / "keys" / "deploy.pem").write_text(
        f"-----BEGIN RSA PRIVATE KEY-----\n{s['pem_body']}\n-----END RSA PRIVATE KEY-----\n"
    )
    (root / "id_ed25519").write_text(f"{s['pem_body']}-ed\n")
    (root / ".netrc").write_text(f"machine api.wandb.ai login user password {s['wandb']}\n")
    (root / "notes.txt").write_text(f"remember: {s['hf']}\n")  # a secret by content only
    (root / "aws.cfg").write_text(f"key = {s['aws']}\n")
    (root / "private_data").mkdir()
    (root / "private_data" / "customers.csv").write_text("name\nalice-private-row\n")
    (root / "model_notes.md").write_text("kept in the snapshot\n")
    return s


SECRET_NAMES = {".env", "deploy.pem", "id_ed25519", ".netrc", "notes.txt", "aws.cfg", "customers.csv", "settings.py"}


@pytest.fixture(scope="module")
def secrets_run(tmp_path_factory, cache_dir, key_files):
    """A real 2-step training run (DeepSpeed, 1 rank) started inside a repo full of secrets, with the secrets in
    the environment too; signed checkpoint and export. Returns (experiment dir, secrets, command, env, repo)."""
    tmp = tmp_path_factory.mktemp("secrets")
    repo = tmp / "repo"
    s = make_repo(repo)
    env = job_env(cache_dir)
    env.update({"WANDB_API_KEY": s["wandb"], "HF_TOKEN": s["hf"], "AWS_ACCESS_KEY_ID": s["aws"]})
    sets = [
        f"experiment.base_dir={tmp / 'exps'}", "experiment.experiment_id=sec", "experiment.wandb=offline",
        "experiment.code_snapshot_exclude=[private_data/*]", "train.max_steps=2", "train.eval_interval=0",
        "train.log_interval=1", "train.progress_bar=false", "model.config.n_layer=1", "model.config.n_embd=32",
        "model.config.n_head=2", f"checkpoint.signing_key_file={key_files[0]}",
    ]  # fmt: skip
    cmd = [PYTHON, "-m", "seo_dist.train", "--config", str(CONFIGS / "tiny_cpu.yaml"), "--set", *sets]
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp / "exps" / "sec", s, cmd, env, repo


def test_no_secret_lands_in_the_experiment_directory(secrets_run):
    exp, s, *_ = secrets_run
    snapshot = exp / "code_snapshot"
    assert (snapshot / "model_notes.md").is_file() and (snapshot / "README.md").is_file()
    assert (exp / "logs" / "wandb").is_dir()
    names = {p.name for p in exp.rglob("*")}
    assert not names & SECRET_NAMES, names & SECRET_NAMES
    values = [*s.values(), "alice-private-row"]
    for path in (p for p in exp.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for value in values:
            assert value.encode() not in data, f"{value[:6]}... found in {path.relative_to(exp)}"
    meta = json.loads((exp / "metadata.json").read_text())
    left_out = {e["path"]: e["reason"] for e in meta["code_snapshot"]["left_out"]}
    assert {".env", "keys/deploy.pem", "id_ed25519", ".netrc", "notes.txt", "aws.cfg"} <= set(left_out), left_out
    assert left_out["settings.py"] == "contains a GitHub token"  # tracked, but its working copy holds a token
    assert (
        "private_data/customers.csv" in left_out and "code_snapshot_exclude" in left_out["private_data/customers.csv"]
    )
    assert left_out["notes.txt"] == "contains a Hugging Face token"
    assert [e["path"] for e in meta["git"]["diff_left_out"]] == ["settings.py"]


def test_final_model_export_is_signed(secrets_run, key_files, capsys):
    exp, *_ = secrets_run
    rc, text = verify_cli(exp / "artifacts" / "final_model", capsys, f"--key-file={key_files[0]}")
    assert rc == 0 and "signed (key id" in text, text


def test_log_artifact_never_copies_a_secret(tmp_path):
    from seo_dist.errors import UserError
    from seo_dist.tracking.artifacts import copy_artifact
    from seo_dist.tracking.layout import ExperimentLayout

    s = fake_secrets()
    layout = ExperimentLayout(tmp_path / "exp")
    src = tmp_path / "outputs"
    (src / "sub").mkdir(parents=True)
    (src / "report.md").write_text("loss went down\n")
    (src / ".env").write_text(f"HF_TOKEN={s['hf']}\n")
    (src / "sub" / "log.txt").write_text(f"using key {s['aws']}\n")
    dest, _ = copy_artifact(src, layout)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["report.md"]
    with pytest.raises(UserError, match=r"\.env looks like a secret"):
        copy_artifact(src / ".env", layout, "env_copy")
    assert not (layout.artifacts / "env_copy").exists()


def test_git_diff_sections_with_secrets_are_dropped():
    from seo_dist.tracking.secrets import SecretFilter, scrub_diff

    s = fake_secrets()
    patch = (
        "diff --git a/model.py b/model.py\n--- a/model.py\n+++ b/model.py\n@@ -1 +1 @@\n-a\n+b\n"
        f"diff --git a/cfg.py b/cfg.py\n--- a/cfg.py\n+++ b/cfg.py\n@@ -1 +1 @@\n-x\n+TOKEN = '{s['hf']}'\n"
        "diff --git a/.env b/.env\n--- a/.env\n+++ b/.env\n@@ -1 +1 @@\n-A=1\n+A=2\n"
    )
    kept, dropped = scrub_diff(patch, SecretFilter())
    assert kept.startswith("diff --git a/model.py") and "cfg.py" not in kept and ".env" not in kept
    assert [(d.path, d.reason) for d in dropped] == [
        ("cfg.py", "contains a Hugging Face token"),
        (".env", "secret file name (.env)"),
    ]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
