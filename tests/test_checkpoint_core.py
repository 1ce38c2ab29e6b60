"""Checkpoint layer 1 (hashing writer, manifest, commit, verify, index, sweep, disk check) and the manager
with a plain torch model, in one process (world size 1, no process group). The same code paths with
2 DeepSpeed ranks are in test_checkpoint_deepspeed.py."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from chaos_scorecard import record

from seo_dist.checkpoint import commit as commit_module
from seo_dist.checkpoint import root_keeper as root_keeper_module
from seo_dist.checkpoint.errors import (
    CheckpointSaveError,
    DiskSpaceError,
    IncompatibleCheckpointError,
    ManifestError,
    NoCheckpointError,
    NoValidCheckpointError,
)
from seo_dist.checkpoint.hashing import ALGORITHMS, HashingWriter, hash_file, write_torch_file
from seo_dist.checkpoint.index import read_index, read_latest
from seo_dist.checkpoint.layout import INDEX, LATEST, MANIFEST, TORCH_STATE_FILE, checkpoint_name, rank_state_file
from seo_dist.checkpoint.loading import config_diff
from seo_dist.checkpoint.manager import AdvancedCheckpointManager, CheckpointManager
from seo_dist.checkpoint.manifest import Manifest, read_manifest
from seo_dist.checkpoint.strategy import CheckpointStrategy
from seo_dist.checkpoint.verify import verify_checkpoint
from seo_dist.cli import main as cli_main
from seo_dist.config import CheckpointConfig


class Events(list):
    def __call__(self, name, **fields):
        self.append({"event": name, **fields})

    def named(self, name):
        return [e for e in self if e["event"] == name]


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def train(model, opt, sched, steps: int = 1) -> None:
    for _ in range(steps):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def manager(root: Path, events: Events | None = None, **kwargs) -> CheckpointManager:
    strategy = kwargs.pop("strategy", CheckpointStrategy(save_interval=1, max_checkpoints=3))
    return CheckpointManager(root, strategy, event_fn=events if events is not None else Events(), **kwargs)


@pytest.fixture
def saved(tmp_path):
    """Three committed checkpoints (steps 1-3) of a small model; returns (root, manager, events, model, opt, sched)."""
    root = tmp_path / "checkpoints"
    events = Events()
    mgr = manager(root, events)
    model, opt, sched = make_model()
    for step, val in ((1, 3.0), (2, 1.0), (3, 2.0)):
        train(model, opt, sched)
        mgr.save_checkpoint(model, opt, sched, step, {"val/loss": val}, epoch=step // 2, rank_state={"pos": step})
    return root, mgr, events, model, opt, sched


def flip_byte(path: Path, rng: random.Random) -> int:
    data = bytearray(path.read_bytes())
    pos = rng.randrange(len(data))
    data[pos] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return pos


# ---------------------------------------------------------------------------- hashing writer


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hashing_writer_hash_equals_a_reread_and_torch_load_works(tmp_path, algorithm):
    obj = {"w": torch.randn(300, 70), "step": 5, "nested": [torch.arange(10)]}
    record = write_torch_file(obj, tmp_path, "sub.pt", algorithm)
    assert record.path == "sub.pt"
    assert (record.size, record.hash) == hash_file(tmp_path / "sub.pt", algorithm)
    assert record.size == (tmp_path / "sub.pt").stat().st_size
    loaded = torch.load(tmp_path / "sub.pt", weights_only=False)
    assert torch.equal(loaded["w"], obj["w"]) and loaded["step"] == 5


def test_hashing_writer_abort_removes_the_partial_file(tmp_path):
    with pytest.raises(RuntimeError):
        with HashingWriter(tmp_path / "x.pt", "x.pt", "sha256") as w:
            w.write(b"partial")
            raise RuntimeError("boom")
    assert not (tmp_path / "x.pt").exists()

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("cannot pickle")

    with pytest.raises(TypeError):
        write_torch_file({"bad": Unpicklable()}, tmp_path, "y.pt", "xxh3_128")
    assert not (tmp_path / "y.pt").exists()


def test_unknown_algorithm_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="md5"):
        HashingWriter(tmp_path / "a", "a", "md5")
    with pytest.raises(ValueError, match="hash_algorithm"):
        CheckpointManager(tmp_path, hash_algorithm="md5")


# ---------------------------------------------------------------------------- commit protocol


def test_commit_layout_manifest_latest_and_index(saved):
    root, mgr, events, *_ = saved
    names = sorted(p.name for p in root.iterdir())
    assert names == [INDEX, LATEST, checkpoint_name(1), checkpoint_name(2), checkpoint_name(3)]
    assert (root / LATEST).read_text() == checkpoint_name(3)
    folder = root / checkpoint_name(3)
    manifest = read_manifest(folder)
    assert set(manifest.files) == {TORCH_STATE_FILE, rank_state_file(0)}
    assert set(p.name for p in folder.iterdir()) == {TORCH_STATE_FILE, rank_state_file(0), MANIFEST}
    for name, rec in manifest.files.items():
        assert (rec["size"], rec["hash"]) == hash_file(folder / name, manifest.hash_algorithm)
    assert (manifest.step, manifest.epoch, manifest.world_size, manifest.zero_stage, manifest.engine) == (
        3,
        1,
        1,
        0,
        "torch",
    )
    assert manifest.metrics == {"val/loss": 2.0}
    assert manifest.hash_algorithm == "xxh3_128" and "torch" in manifest.versions
    index = read_index(root)
    assert index["latest"] == checkpoint_name(3)
    assert [c["step"] for c in index["checkpoints"]] == [1, 2, 3]
    assert index["best"]["val/loss"]["step"] == 2
    assert [e["step"] for e in events.named("checkpoint_saved")] == [1, 2, 3]


def test_manifest_is_written_last_and_latest_moves_only_after_the_rename(tmp_path, monkeypatch):
    root = tmp_path / "ck"
    mgr = manager(root)
    model, opt, sched = make_model()
    mgr.save_checkpoint(model, opt, sched, 1)
    seen = {}
    real_write_manifest = commit_module.write_manifest

    def spy(folder: Path, manifest: Manifest) -> None:
        # at this moment: every listed file is complete in the staging folder, nothing is committed yet
        seen["staging"] = folder.name
        seen["files_complete"] = all((folder / n).stat().st_size == r["size"] for n, r in manifest.files.items())
        seen["final_exists"] = (root / checkpoint_name(2)).exists()
        seen["latest"] = read_latest(root)
        real_write_manifest(folder, manifest)

    monkeypatch.setattr(commit_module, "write_manifest", spy)
    path = mgr.save_checkpoint(model, opt, sched, 2)
    assert seen == {
        "staging": checkpoint_name(2) + ".tmp",
        "files_complete": True,
        "final_exists": False,
        "latest": checkpoint_name(1),
    }
    assert path == root / checkpoint_name(2) and read_latest(root) == checkpoint_name(2)
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_commit_leaves_the_previous_checkpoint_latest_and_no_debris(tmp_path, monkeypatch):
    root = tmp_path / "ck"
    events = Events()
    mgr = manager(root, events)
    model, opt, sched = make_model()
    mgr.save_checkpoint(model, opt, sched, 1)

    def full_disk(folder, manifest):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(commit_module, "write_manifest", full_disk)
    with pytest.raises(CheckpointSaveError, match="step_00000002 not committed.*No space left"):
        mgr.save_checkpoint(model, opt, sched, 2)
    assert sorted(p.name for p in root.iterdir()) == [INDEX, LATEST, checkpoint_name(1)]
    assert read_latest(root) == checkpoint_name(1)
    assert events.named("checkpoint_save_failed")[0]["step"] == 2


def test_saving_the_same_step_twice_replaces_it(tmp_path):
    root = tmp_path / "ck"
    mgr = manager(root)
    model, opt, sched = make_model()
    mgr.save_checkpoint(model, opt, sched, 5, {"val/loss": 1.0})
    mgr.save_checkpoint(model, opt, sched, 5, {"val/loss": 0.5})
    assert read_manifest(root / checkpoint_name(5)).metrics == {"val/loss": 0.5}
    assert sorted(p.name for p in root.iterdir()) == [INDEX, LATEST, checkpoint_name(5)]
    assert verify_checkpoint(root / checkpoint_name(5)).ok


def test_retention_keeps_newest_best_and_pinned(tmp_path):
    root = tmp_path / "ck"
    events = Events()
    strategy = CheckpointStrategy(save_interval=1, max_checkpoints=2, keep_best=1, pinned=[3])
    mgr = CheckpointManager(root, strategy, event_fn=events, tracked_metrics={"val/acc": True})
    model, opt, sched = make_model()
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 2.0, 6: 2.5, 7: 6.0}
    accs = {1: 0.9, 2: 0.1, 3: 0.1, 4: 0.1, 5: 0.2, 6: 0.3, 7: 0.1}
    for step in losses:
        mgr.save_checkpoint(model, opt, sched, step, {"val/loss": losses[step], "val/acc": accs[step]})
    kept = sorted(i.step for i in mgr.list_checkpoints())
    assert kept == [1, 2, 3, 6, 7]  # best acc 1, best loss 2, pinned 3, newest 6 and 7
    pruned = [s for e in events.named("checkpoint_pruned") for s in e["steps"]]
    assert sorted(pruned) == [4, 5]
    index = read_index(root)
    assert index["best"]["val/loss"]["step"] == 2 and index["best"]["val/acc"]["step"] == 1
    assert index["pinned"] == [3]


def test_cleanup_old_false_keeps_everything(tmp_path):
    mgr = manager(tmp_path, strategy=CheckpointStrategy(save_interval=1, max_checkpoints=2, cleanup_old=False))
    model, opt, sched = make_model()
    for step in range(1, 5):
        mgr.save_checkpoint(model, opt, sched, step)
    assert [i.step for i in mgr.list_checkpoints()] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------- verify + CLI


def _corrupt(folder: Path, kind: str, rng: random.Random) -> str:
    """Damage ``folder`` one way; returns the file the report must name."""
    shard = folder / TORCH_STATE_FILE
    if kind == "flip":
        flip_byte(shard, rng)
        return TORCH_STATE_FILE
    if kind == "truncate":
        data = shard.read_bytes()
        shard.write_bytes(data[: rng.randrange(len(data))])
        return TORCH_STATE_FILE
    if kind == "delete_shard":
        (folder / rank_state_file(0)).unlink()
        return rank_state_file(0)
    if kind == "extra_file":
        (folder / "mp_rank_01_model_states.pt").write_bytes(b"stray")
        return "mp_rank_01_model_states.pt"
    manifest = folder / MANIFEST
    if kind == "delete_manifest":
        manifest.unlink()
        return MANIFEST
    data = json.loads(manifest.read_text())
    if kind == "edit_manifest_hash":
        data["files"][TORCH_STATE_FILE]["hash"] = "0" * 32
    elif kind == "edit_manifest_metric":
        data["metrics"]["val/loss"] = -1.0
    else:
        raise ValueError(kind)
    manifest.write_text(json.dumps(data))
    return MANIFEST


CORRUPTIONS = [
    "flip",
    "truncate",
    "delete_shard",
    "extra_file",
    "delete_manifest",
    "edit_manifest_hash",
    "edit_manifest_metric",
]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_verify_and_the_cli_name_the_damaged_file(saved, kind, capsys):
    root = saved[0]
    folder = root / checkpoint_name(3)
    assert verify_checkpoint(folder).ok
    assert cli_main(["verify", str(folder)]) == 0
    bad = _corrupt(folder, kind, random.Random(kind))
    report = verify_checkpoint(folder, "full")
    assert not report.ok
    assert [p.path for p in report.problems] == [bad]
    capsys.readouterr()
    assert cli_main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"BAD {folder / bad}:")
    quick = verify_checkpoint(folder, "quick")
    assert quick.ok == (kind == "flip")  # sizes only: a flipped bit is the one thing quick mode cannot see


def test_verify_cli_usage_errors(tmp_path, saved, capsys):
    root = saved[0]
    assert cli_main(["verify", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["verify", str(root)]) == 2
    assert f"seo-dist verify {root / checkpoint_name(3)}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["verify", str(tmp_path / "empty")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert cli_main(["verify", str(root / checkpoint_name(1)), "--quick"]) == 0
    staging = root / (checkpoint_name(9) + ".tmp")
    staging.mkdir()
    (staging / "x.pt").write_bytes(b"1")
    capsys.readouterr()
    assert cli_main(["verify", str(staging)]) == 1  # an unfinished save is a checkpoint folder, and invalid
    assert "no manifest.json" in capsys.readouterr().out


def test_ls_lists_markers_and_flags_damage(saved, capsys):
    root, mgr, *_ = saved
    mgr.pin(1)
    (root / checkpoint_name(2) / MANIFEST).unlink()
    (root / (checkpoint_name(4) + ".tmp")).mkdir()
    assert cli_main(["ls", str(root.parent)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("step_")}
    assert "latest" in lines[checkpoint_name(3)] and "pinned" in lines[checkpoint_name(1)]
    assert "best(val/loss)" in lines[checkpoint_name(3)]  # step 2 (the real best) is damaged: 3 is the best valid
    assert f"INVALID {checkpoint_name(2)}" in out and f"INCOMPLETE {checkpoint_name(4)}.tmp" in out
    assert "val/loss=2" in lines[checkpoint_name(3)] and "2 committed checkpoint(s)" in out
    assert cli_main(["ls", str(root.parent / "missing")]) == 2


# ---------------------------------------------------------------------------- load and fallback


def test_load_restores_model_optimizer_scheduler_rng_and_rank_state(saved):
    root, mgr, events, model, opt, sched = saved
    expected_model = {k: v.clone() for k, v in model.state_dict().items()}
    expected_opt = opt.state_dict()
    torch.manual_seed(7)
    rng_after_save = torch.get_rng_state()  # not what was saved: the checkpoint's RNG must win
    model2, opt2, sched2 = make_model(seed=99)
    result = mgr.load_checkpoint("latest", model2, opt2, sched2)
    assert result["name"] == checkpoint_name(3) and result["step"] == 3 and result["epoch"] == 1
    assert result["rank_state"] == {"pos": 3} and result["metrics"] == {"val/loss": 2.0}
    for k, v in expected_model.items():
        assert torch.equal(model2.state_dict()[k], v)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], expected_opt["state"][0]["exp_avg"])
    assert sched2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"] == 3
    saved_rng = torch.load(root / checkpoint_name(3) / rank_state_file(0), weights_only=False)["rng"]["torch"]
    assert torch.equal(torch.get_rng_state(), saved_rng) and not torch.equal(saved_rng, rng_after_save)
    assert events.named("checkpoint_loaded")[-1]["fell_back_from"] == []


def test_brief_style_load_without_a_model_returns_the_state(saved):
    root, mgr, *_ = saved
    data = mgr.load_checkpoint(root / checkpoint_name(2))
    assert data["step"] == 2 and set(data["state"]) == {"model", "optimizer", "scheduler"}
    best = mgr.load_best_checkpoint("val/loss", maximize=False)
    assert best["name"] == checkpoint_name(2)
    assert mgr.load_best_checkpoint("val/loss", maximize=True)["name"] == checkpoint_name(1)
    assert mgr.load_latest_checkpoint()["name"] == checkpoint_name(3)
    with pytest.raises(NoCheckpointError, match="val/acc.*recorded: val/loss"):
        mgr.load_best_checkpoint("val/acc")


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_damaged_latest_falls_back_to_the_previous_checkpoint(saved, kind):
    root, mgr, events, *_ = saved
    _corrupt(root / checkpoint_name(3), kind, random.Random(kind))
    model, opt, sched = make_model(seed=5)
    result = mgr.load_checkpoint("latest", model, opt, sched)
    assert result["name"] == checkpoint_name(2) and result["fell_back_from"] == [checkpoint_name(3)]
    (fallback,) = events.named("checkpoint_fallback")
    assert fallback["failed"] == checkpoint_name(3) and fallback["next"] == checkpoint_name(2)


def test_quick_verification_on_load_catches_truncation(saved):
    root, _, events, *_ = saved
    _corrupt(root / checkpoint_name(3), "truncate", random.Random(0))
    mgr = manager(root, events, verify_on_load="quick")
    assert mgr.load_checkpoint("latest", *make_model())["name"] == checkpoint_name(2)


def test_without_verification_a_load_error_still_falls_back(saved):
    root, _, events, *_ = saved
    _corrupt(root / checkpoint_name(3), "truncate", random.Random(1))
    mgr = manager(root, events, verify_on_load="off")
    assert mgr.load_checkpoint("latest", *make_model())["name"] == checkpoint_name(2)
    assert "load failed" in events.named("checkpoint_fallback")[0]["reason"]


def test_no_valid_checkpoint_fails_loudly_and_loads_nothing(saved):
    root, mgr, *_ = saved
    rng = random.Random(3)
    for step in (1, 2, 3):
        _corrupt(root / checkpoint_name(step), "flip", rng)
    model, opt, sched = make_model(seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NoValidCheckpointError, match="none is valid.*step_00000003.*step_00000002.*step_00000001"):
        mgr.load_checkpoint("latest", model, opt, sched)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_nothing_to_load(tmp_path):
    mgr = manager(tmp_path / "ck")
    assert not mgr.has_checkpoints()
    with pytest.raises(NoCheckpointError, match="no checkpoints"):
        mgr.load_checkpoint("latest")
    with pytest.raises(NoCheckpointError, match="does not exist"):
        mgr.load_checkpoint(tmp_path / "missing")


def test_explicit_folder_and_experiment_dir(saved):
    root, mgr, events, *_ = saved
    assert mgr.load_checkpoint(root.parent)["name"] == checkpoint_name(3)  # an experiment dir: its latest
    _corrupt(root / checkpoint_name(2), "delete_shard", random.Random(0))
    result = mgr.load_checkpoint(root / checkpoint_name(2))  # an explicit folder falls back to older ones only
    assert result["name"] == checkpoint_name(1)


def test_index_and_latest_are_repaired_from_manifests(saved):
    root, _, _, *_ = saved
    (root / INDEX).write_text("{ garbage")
    (root / LATEST).write_text("step_00000042")
    events = Events()
    mgr = manager(root, events)
    assert mgr.sweep_abandoned() == []
    assert read_latest(root) == checkpoint_name(3)
    assert [c["step"] for c in read_index(root)["checkpoints"]] == [1, 2, 3]
    assert {e["event"] for e in events} == {"checkpoint_latest_repaired", "checkpoint_index_rebuilt"}


def test_latest_pointing_at_a_missing_folder_loads_the_newest_valid(saved):
    root, mgr, events, *_ = saved
    shutil.rmtree(root / checkpoint_name(3))
    assert mgr.load_checkpoint("latest")["name"] == checkpoint_name(2)


def test_sweep_removes_abandoned_staging_only(saved):
    root, _, _, *_ = saved
    for name in (checkpoint_name(4) + ".tmp", checkpoint_name(5) + ".deleting.tmp"):
        (root / name).mkdir()
        (root / name / "junk.pt").write_bytes(b"x" * 10)
    (root / "latest.tmp").write_text("half")
    events = Events()
    removed = manager(root, events).sweep_abandoned()
    assert sorted(p.name for p in removed) == sorted(
        [checkpoint_name(4) + ".tmp", checkpoint_name(5) + ".deleting.tmp", "latest.tmp"]
    )
    assert sorted(p.name for p in root.iterdir()) == [INDEX, LATEST, *(checkpoint_name(s) for s in (1, 2, 3))]
    assert events.named("checkpoint_swept")


def test_config_hash_change_is_reported_with_the_keys(tmp_path):
    root = tmp_path / "ck"
    model, opt, sched = make_model()
    manager(root, config_hash="a", config={"train": {"lr": 1e-3, "seed": 1}, "model": {"n_layer": 2}}).save_checkpoint(
        model, opt, sched, 1
    )
    events = Events()
    mgr = manager(root, events, config_hash="b", config={"train": {"lr": 2e-3, "seed": 1}, "model": {"n_layer": 4}})
    result = mgr.load_checkpoint("latest", model, opt, sched)
    assert result["config_changed_keys"] == ["model.n_layer", "train.lr"]
    assert events.named("checkpoint_config_changed")[0]["keys"] == ["model.n_layer", "train.lr"]
    assert config_diff({"a": {"b": 1}}, {"a": {"c": 1}}) == ["a.b", "a.c"]


def test_deepspeed_checkpoint_into_a_plain_model_is_a_clear_error(saved):
    root, mgr, *_ = saved
    manifest_path = root / checkpoint_name(3) / MANIFEST
    data = json.loads(manifest_path.read_text())
    data["engine"], data["zero_stage"] = "deepspeed", 2
    data.pop("checksum")
    from seo_dist.checkpoint.manifest import write_manifest

    write_manifest(manifest_path.parent, Manifest.from_dict(data))
    with pytest.raises(IncompatibleCheckpointError, match="DeepSpeed engine.*consolidate"):
        mgr.load_checkpoint("latest", *make_model())


# ---------------------------------------------------------------------------- backend choice


def _bare(cls):
    """An instance of ``cls`` (a DeepSpeed engine class) without ``deepspeed.initialize``, which needs a process
    group and a config: only what selection and the adapter install touch (nn.Module attributes) is set up."""
    engine = cls.__new__(cls)
    torch.nn.Module.__init__(engine)
    return engine


def test_deepspeed_engines_get_the_deepspeed_backend_and_plain_models_the_torch_one():
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.pipe.engine import PipelineEngine

    from seo_dist.checkpoint.backend import select_backend
    from seo_dist.checkpoint.deepspeed_backend import DeepSpeedBackend, HashingCheckpointEngine
    from seo_dist.checkpoint.torch_backend import TorchModuleBackend

    for cls in (DeepSpeedEngine, PipelineEngine):
        engine = _bare(cls)
        backend = select_backend(engine, hash_algorithm="sha256")
        assert isinstance(backend, DeepSpeedBackend) and backend.engine is engine
        assert isinstance(engine.checkpoint_engine, HashingCheckpointEngine)  # DeepSpeed now writes through us

    model, opt, sched = make_model()
    backend = select_backend(model, opt, sched, hash_algorithm="sha256")
    assert isinstance(backend, TorchModuleBackend) and (backend.model, backend.optimizer) == (model, opt)
    assert isinstance(select_backend(None, opt, hash_algorithm="sha256"), TorchModuleBackend)
    assert select_backend(None, hash_algorithm="sha256") is None

    # a class that only looks like DeepSpeed's (same name, a deepspeed-like module) is a plain model
    look_alike = type("DeepSpeedEngine", (torch.nn.Linear,), {"__module__": "deepspeed_plugin.engine"})(2, 2)
    assert isinstance(select_backend(look_alike, hash_algorithm="sha256"), TorchModuleBackend)


def _heavy_modules_after(code: str) -> list[str]:
    """Which of torch and DeepSpeed a fresh interpreter has imported after running ``code``."""
    import subprocess
    import sys

    probe = f"{code}; import sys; print(','.join(m for m in ('torch', 'deepspeed') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    return [m for m in out.stdout.strip().split(",") if m]


def test_a_plain_model_is_saved_without_importing_deepspeed(tmp_path):
    """Choosing the backend must not import DeepSpeed: no DeepSpeed engine can exist before it is imported."""
    code = (
        "import torch; from seo_dist.checkpoint import CheckpointManager; "
        f"m = CheckpointManager({str(tmp_path)!r}); m.save_checkpoint(torch.nn.Linear(2, 2), step=1); "
        "m.load_checkpoint('latest', torch.nn.Linear(2, 2))"
    )
    assert _heavy_modules_after(code) == ["torch"]


# ---------------------------------------------------------------------------- disk space


def test_low_disk_prunes_unprotected_checkpoints_first(saved, monkeypatch):
    """The free-space probe is replaced (this disk cannot be filled safely); pruning and deletion are real."""
    root, _, _, model, opt, sched = saved
    events = Events()
    mgr = manager(root, events)
    size = mgr.list_checkpoints()[-1].total_bytes
    monkeypatch.setattr(root_keeper_module, "disk_free_bytes", lambda path: int(size * 1.1) - 1)  # one prune needed
    mgr.save_checkpoint(model, opt, sched, 4, {"val/loss": 9.0})
    (pruned,) = events.named("checkpoint_pruned")
    assert pruned["reason"] == "disk_space" and pruned["steps"] == [1]  # 2 is the best, 3 was latest
    assert [i.step for i in mgr.list_checkpoints()] == [2, 3, 4]


def test_disk_too_full_fails_cleanly_before_writing(saved, monkeypatch):
    root, _, _, model, opt, sched = saved
    events = Events()
    mgr = manager(root, events, strategy=CheckpointStrategy(save_interval=1, max_checkpoints=3, pinned=[1]))
    monkeypatch.setattr(root_keeper_module, "disk_free_bytes", lambda path: 10)
    with pytest.raises(DiskSpaceError, match="not enough disk"):
        mgr.save_checkpoint(model, opt, sched, 4)
    assert events.named("checkpoint_disk_full")[0]["free_bytes"] == 10
    assert sorted(p.name for p in root.iterdir()) == [INDEX, LATEST, *(checkpoint_name(s) for s in (1, 2, 3))]
    assert read_latest(root) == checkpoint_name(3)


# ---------------------------------------------------------------------------- strategy, manifest, API


def test_strategy_validation_intervals_and_config_mapping():
    with pytest.raises(ValueError, match="max_checkpoints must be >= 2"):
        CheckpointStrategy(max_checkpoints=1)
    with pytest.raises(ValueError, match="save_interval"):
        CheckpointStrategy(save_interval=-1)
    s = CheckpointStrategy(500)
    assert [s.should_save(k) for k in (0, 499, 500, 1000)] == [False, False, True, True]
    assert s.should_save(7, final=True) and not CheckpointStrategy(save_latest=False).should_save(7, final=True)
    assert not CheckpointStrategy(save_interval=0).should_save(100)
    cfg = CheckpointConfig(
        save_interval=50,
        keep_last=4,
        keep_best=2,
        maximize=True,
        best_metric="val/acc",
        pinned=[7],
        save_final=False,
        hash_algorithm="blake3",
        verify_on_load="quick",
    )
    st = CheckpointStrategy.from_config(cfg)
    assert (
        st.save_interval,
        st.max_checkpoints,
        st.keep_best,
        st.maximize,
        st.best_metric,
        st.pinned,
        st.save_latest,
    ) == (50, 4, 2, True, "val/acc", [7], False)
    mgr = AdvancedCheckpointManager.from_config("unused", cfg)
    assert isinstance(mgr, CheckpointManager)
    assert (mgr.hash_algorithm, mgr.verify_on_load, mgr.tracked) == ("blake3", "quick", {"val/acc": True})


def test_manifest_rejects_unsafe_paths_and_bad_fields(tmp_path):
    base = Manifest(step=1, hash_algorithm="sha256", files={"a.pt": {"size": 1, "hash": "x"}}).to_dict()
    for bad in ("../escape.pt", "/abs.pt", "a/../../b", MANIFEST):
        with pytest.raises(ManifestError, match="bad entry"):
            Manifest.from_dict({**base, "files": {bad: {"size": 1, "hash": "x"}}})
    with pytest.raises(ManifestError, match="step"):
        Manifest.from_dict({**base, "step": -1})
    with pytest.raises(ManifestError, match="hash_algorithm"):
        Manifest.from_dict({**base, "hash_algorithm": "crc32"})
    (tmp_path / MANIFEST).write_text("[1, 2")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_metrics_are_stored_json_safe(tmp_path):
    import numpy as np

    root = tmp_path / "ck"
    model, opt, sched = make_model()
    manager(root).save_checkpoint(
        model,
        opt,
        sched,
        1,
        {
            "val/loss": torch.tensor(1.5),
            "train/loss": np.float32(2.0),
            "bad": float("nan"),
            "name": "x",
            "vec": torch.ones(3),
        },
    )
    assert read_manifest(root / checkpoint_name(1)).metrics == {"val/loss": 1.5, "train/loss": 2.0, "bad": None}
    json.loads((root / checkpoint_name(1) / MANIFEST).read_text())  # strict JSON: no NaN


def test_event_fn_failure_does_not_break_a_save(tmp_path):
    def broken(name, **fields):
        raise RuntimeError("tracker down")

    model, opt, sched = make_model()
    mgr = CheckpointManager(tmp_path, CheckpointStrategy(save_interval=1), event_fn=broken)
    with pytest.warns(UserWarning, match="tracker down"):
        path = mgr.save_checkpoint(model, opt, sched, 1)
    assert verify_checkpoint(path).ok


def test_commands_import_without_torch():
    """`seo-dist verify` must start fast on a login node: no torch, no DeepSpeed."""
    code = (
        "import seo_dist.checkpoint.commands.verify, seo_dist.checkpoint.commands.ls, "
        "seo_dist.checkpoint.verify, seo_dist.checkpoint.index"
    )
    assert _heavy_modules_after(code) == []


def test_pins_survive_a_restart(saved):
    root, mgr, _, model, opt, sched = saved
    mgr.pin(1)
    resumed = manager(root, strategy=CheckpointStrategy(save_interval=1, max_checkpoints=2))
    resumed.sweep_abandoned()
    for step in (4, 5, 6):
        resumed.save_checkpoint(model, opt, sched, step, {"val/loss": 5.0})
    assert [i.step for i in resumed.list_checkpoints()] == [1, 2, 5, 6]  # pinned 1, best 2, newest 5 and 6


def _commit_then_lose_rank_one(rank: int, port: int, root: str, result_file: str) -> None:
    """One of two real gloo processes: both write a file and hand it in; rank 1 then dies (os._exit) where it
    would wait for rank 0's verdict, so rank 0's broadcast of the result meets a dead peer."""
    import torch.distributed as tdist

    from seo_dist import dist as seo_dist_dist
    from seo_dist.checkpoint.commit import RankOutcome, commit_checkpoint, prepare_staging
    from seo_dist.checkpoint.errors import PeersLostAfterCommit
    from seo_dist.checkpoint.hashing import FileRecord

    tdist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
        timeout=__import__("datetime").timedelta(seconds=60),
    )  # fmt: skip
    staging = prepare_staging(Path(root), 5)
    name = f"rank{rank}.bin"
    (staging / name).write_bytes(bytes([rank]) * 1000)
    size, digest = hash_file(staging / name, "xxh3_128")
    if rank == 1:
        seo_dist_dist.broadcast_object = lambda *a, **k: os._exit(0)  # dies after the gather, before the verdict
    try:
        result = commit_checkpoint(
            Path(root), 5, RankOutcome(rank, [FileRecord(name, size, digest)]),
            lambda files: Manifest(step=5, hash_algorithm="xxh3_128", files=files, world_size=2),
        )  # fmt: skip
        outcome = {"returned": str(result.path)}
    except PeersLostAfterCommit as e:
        outcome = {"peers_lost": str(e), "path": str(e.path)}
    except Exception as e:  # noqa: BLE001 - the test reports what rank 0 raised
        outcome = {"other": f"{type(e).__name__}: {e}"}
    Path(result_file).write_text(json.dumps(outcome))
    os._exit(0)  # no process-group teardown with a dead peer


def test_a_rank_dying_after_handing_in_its_files_is_not_reported_as_a_failed_commit(tmp_path):
    """Real processes and gloo; the death is placed exactly between the gather and the broadcast."""
    import multiprocessing

    from conftest import free_port

    ctx = multiprocessing.get_context("spawn")
    port, root = free_port(), tmp_path / "ck"
    procs = [
        ctx.Process(target=_commit_then_lose_rank_one, args=(r, port, str(root), str(tmp_path / f"r{r}.json")))
        for r in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
        assert p.exitcode == 0, "a rank hung or crashed"
    outcome = json.loads((tmp_path / "r0.json").read_text())
    assert set(outcome) == {"peers_lost", "path"}, outcome
    assert "step_00000005 committed" in outcome["peers_lost"] and "not committed" not in outcome["peers_lost"]
    assert outcome["path"] == str(root / checkpoint_name(5))
    assert verify_checkpoint(root / checkpoint_name(5)).ok
    assert not (tmp_path / "r1.json").exists()  # rank 1 really died at that point
    record(
        "A rank dies after handing in its files, before the commit's verdict",
        "rank 0 reports the checkpoint committed (PeersLostAfterCommit), not failed; it verifies",
    )
