"""Chaos on storage: damaged checkpoints, an experiment directory that is missing or cannot be written,
and (``pytest -m chaos``) a real full disk on a small tmpfs.

Corruption runs in one process against the real checkpoint manager with a small torch model: each
"restart" is a new manager on the same folder, as a new job would build. Every kind of damage must be
caught at load, fall back to the previous valid checkpoint, and stay harmless afterwards: the next save
commits and the next restart loads it with no fallback (no crash loop). The real 2-rank DeepSpeed
version of a corrupted shard is in test_chaos_chain.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from chaos_harness import (
    CHAOS_SETS,
    STARTUP_TIMEOUT_S,
    Job,
    chaos_env,
    disk_state,
    event_names,
    metadata,
    train_command,
    wait_until,
)
from chaos_scorecard import record
from conftest import CONFIGS

from seo_dist.checkpoint.errors import NoValidCheckpointError
from seo_dist.checkpoint.index import read_latest
from seo_dist.checkpoint.layout import INDEX, LATEST, MANIFEST, TORCH_STATE_FILE, checkpoint_name, rank_state_file
from seo_dist.checkpoint.manager import CheckpointManager
from seo_dist.checkpoint.strategy import CheckpointStrategy
from seo_dist.cli import main as cli_main


class Events(list):
    def __call__(self, name, **fields):
        self.append({"event": name, **fields})

    def names(self) -> list[str]:
        return [e["event"] for e in self]


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt


def train_step(model, opt) -> None:
    model(torch.randn(4, 8)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()


def restart(root: Path) -> tuple[CheckpointManager, Events]:
    """What a new job does first: a manager on the same folder, then the start-up sweep and repair."""
    events = Events()
    mgr = CheckpointManager(root, CheckpointStrategy(save_interval=1, max_checkpoints=3), event_fn=events)
    mgr.sweep_abandoned()
    return mgr, events


def damage(root: Path, kind: str, rng: random.Random) -> str | None:
    """Damage checkpoint 3 (or the root's pointers) one way; returns the folder a load must fail on, if any."""
    folder = root / checkpoint_name(3)
    shard = folder / TORCH_STATE_FILE
    if kind == "flipped_bytes":
        data = bytearray(shard.read_bytes())
        for _ in range(3):
            data[rng.randrange(len(data))] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif kind == "truncated_shard":
        shard.write_bytes(shard.read_bytes()[: rng.randrange(1, shard.stat().st_size)])
    elif kind == "deleted_shard":
        (folder / rank_state_file(0)).unlink()
    elif kind == "deleted_manifest":
        (folder / MANIFEST).unlink()
    elif kind == "edited_manifest":
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["files"][TORCH_STATE_FILE]["size"] += 1
        (folder / MANIFEST).write_text(json.dumps(manifest))
    elif kind == "garbage_manifest":
        (folder / MANIFEST).write_bytes(os.urandom(64))
    elif kind == "latest_names_missing_folder":
        shutil.rmtree(folder)
        return None
    elif kind == "garbage_latest":
        (root / LATEST).write_bytes(b"\x00\xffnot a checkpoint")
        return None
    elif kind == "garbage_index":
        (root / INDEX).write_text("{ this is not json")
        return None
    else:
        raise ValueError(kind)
    return folder.name


KINDS = ["flipped_bytes", "truncated_shard", "deleted_shard", "deleted_manifest", "edited_manifest",
         "garbage_manifest",
         "latest_names_missing_folder", "garbage_latest", "garbage_index"]  # fmt: skip
# A folder whose manifest is unusable is not a committed checkpoint: the start-up repair moves ``latest`` off
# it (event checkpoint_latest_repaired) before any load, instead of a load-time fallback.
REPAIRED_AT_START = {"deleted_manifest", "edited_manifest", "garbage_manifest", "latest_names_missing_folder"}


@pytest.mark.parametrize("kind", KINDS)
def test_corruption_is_caught_falls_back_and_does_not_loop(kind, tmp_path):
    root = tmp_path / "checkpoints"
    mgr, _ = restart(root)
    model, opt = make_model()
    for step in (1, 2, 3):
        train_step(model, opt)
        mgr.save_checkpoint(model, opt, None, step, {"val/loss": 4.0 - step}, rank_state={"step": step})
    bad = damage(root, kind, random.Random(kind))
    if bad is not None:
        assert cli_main(["verify", str(root / bad)]) == 1  # named as damaged by the command users run

    mgr, events = restart(root)
    model, opt = make_model(seed=1)
    loaded = mgr.load_checkpoint("latest", model, opt)
    expected = 2 if kind in REPAIRED_AT_START or bad is not None else 3
    assert loaded["step"] == expected, (loaded["name"], events)
    assert loaded["rank_state"] == {"step": expected}
    if kind in REPAIRED_AT_START:
        assert "checkpoint_latest_repaired" in events.names() and loaded["fell_back_from"] == [], events
    elif bad is not None:
        assert loaded["fell_back_from"] == [bad] and "checkpoint_fallback" in events.names()
    else:  # the pointers are conveniences, rebuilt from the manifests at start
        assert loaded["fell_back_from"] == [] and read_latest(root) == checkpoint_name(expected)
        assert json.loads((root / INDEX).read_text())["checkpoints"]

    train_step(model, opt)  # the run goes on and saves again: the damage must not bite a second time
    mgr.save_checkpoint(model, opt, None, 4, {"val/loss": 0.5}, rank_state={"step": 4})
    mgr, events = restart(root)
    again = mgr.load_checkpoint("latest", *make_model(seed=2))
    assert again["step"] == 4 and again["fell_back_from"] == [] and "checkpoint_fallback" not in events.names()
    record(f"Corruption: {kind.replace('_', ' ')}", "caught; fallback or repair; next save and restart clean")


def test_kill_between_publish_and_latest_resumes_from_the_published_checkpoint(tmp_path):
    """The state a SIGKILL leaves between the commit's rename (step 3 is complete, manifest and all) and the
    ``latest``/``index.json`` update: the next start must load step 3, which was committed."""
    root = tmp_path / "checkpoints"
    mgr, _ = restart(root)
    model, opt = make_model()
    for step in (1, 2):
        train_step(model, opt)
        mgr.save_checkpoint(model, opt, None, step, {"val/loss": 1.0}, rank_state={"step": step})
    pointers = {name: (root / name).read_bytes() for name in (LATEST, INDEX)}
    train_step(model, opt)
    mgr.save_checkpoint(model, opt, None, 3, {"val/loss": 1.0}, rank_state={"step": 3})
    for name, data in pointers.items():  # as if killed right after the rename
        (root / name).write_bytes(data)
    mgr, events = restart(root)
    assert mgr.load_checkpoint("latest", *make_model(seed=1))["step"] == 3, events


def test_every_checkpoint_damaged_fails_loudly_once_not_in_a_loop(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    mgr, _ = restart(root)
    model, opt = make_model()
    for step in (1, 2, 3):
        train_step(model, opt)
        mgr.save_checkpoint(model, opt, None, step, {"val/loss": 1.0}, rank_state={"step": step})
    for step in (1, 2, 3):
        (root / checkpoint_name(step) / TORCH_STATE_FILE).write_bytes(b"garbage")
    mgr, events = restart(root)
    with pytest.raises(NoValidCheckpointError, match="none is valid"):
        mgr.load_checkpoint("latest", *make_model())
    assert events.names().count("checkpoint_fallback") == 3  # each tried once, then a clear stop (exit 2)
    record("Corruption: every checkpoint damaged", "one clear error (exit 2), never a silent start from scratch")


# ---------------------------------------------------------------------------- missing / read-only experiment directory


def _train_main(argv: list[str], monkeypatch, cache_dir) -> int:
    from seo_dist.train import main

    monkeypatch.setenv("SEO_DIST_CACHE", str(cache_dir))
    return main(argv)


def seo_dist_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("seo_dist")]


FAST_IN_PROCESS = [*CHAOS_SETS, "train.max_steps=2"]


def test_base_dir_under_a_regular_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys, cache_dir):
    """A folder under a regular file cannot be created, not even by root (chmod would not stop root)."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    rc = _train_main(["--config", str(CONFIGS / "tiny_cpu.yaml"), "--set", f"experiment.base_dir={blocker / 'exps'}",
                      *FAST_IN_PROCESS], monkeypatch, cache_dir)  # fmt: skip
    err = seo_dist_lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and "is not writable" in err[0], err
    record("Experiment directory cannot be created (base_dir under a regular file)", "one line, exit 2")


def test_missing_experiment_directory_on_resume_is_one_line_exit_2(tmp_path, monkeypatch, capsys, cache_dir):
    rc = _train_main(["--resume", str(tmp_path / "gone")], monkeypatch, cache_dir)
    err = seo_dist_lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0], err
    record("Missing experiment directory (--resume)", "one line, exit 2")


def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with ``options`` on ``path`` for a fixture's lifetime; skip the test where mounting fails."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only folder that stops root too: a read-only tmpfs mount when root may mount, else chmod 0o555."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    yield from _tmpfs(path, "ro,size=1m")


def test_read_only_base_dir_is_one_line_exit_2(read_only_dir, monkeypatch, capsys, cache_dir):
    rc = _train_main(["--config", str(CONFIGS / "tiny_cpu.yaml"), "--set", f"experiment.base_dir={read_only_dir}",
                      *FAST_IN_PROCESS], monkeypatch, cache_dir)  # fmt: skip
    err = seo_dist_lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and "not writable" in err[0], err
    assert list(read_only_dir.iterdir()) == []
    record("Read-only experiment base directory", "one line, exit 2, nothing written")


# ---------------------------------------------------------------------------- chaos: a real full disk


@pytest.fixture
def small_tmpfs(tmp_path):
    path = tmp_path / "small"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield from _tmpfs(path, "size=24m")


@pytest.mark.chaos
def test_real_disk_full_on_a_small_tmpfs(small_tmpfs, cache_dir):
    """A real full disk: a 24 MB tmpfs, filled by a ballast file once two checkpoints are committed."""
    base = small_tmpfs / "experiments"
    exp_dir = base / "tmpfs"
    cmd = train_command(base, ["train.max_steps=400", "checkpoint.save_interval=4"], exp_id="tmpfs")
    with Job(cmd, small_tmpfs.parent, chaos_env(cache_dir), small_tmpfs.parent / "tmpfs.log") as job:
        wait_until(lambda: len(disk_state(exp_dir / "checkpoints").committed) >= 2, STARTUP_TIMEOUT_S, "two commits",
                   job)  # fmt: skip
        before = disk_state(exp_dir / "checkpoints")
        free = shutil.disk_usage(small_tmpfs).free
        with open(small_tmpfs / "ballast", "wb") as f:  # leaves about 256 KB: less than one checkpoint
            f.write(b"\0" * max(0, free - 256 * 1024))
        rc = job.wait()
        output = job.output()
    assert rc != 0
    state = disk_state(exp_dir / "checkpoints")
    assert not state.problems() and state.staging == [], state
    assert set(before.committed) <= set(state.committed) or state.committed, (before, state)
    names = event_names(exp_dir)
    assert "checkpoint_disk_full" in names or "checkpoint_save_failed" in names, names
    assert metadata(exp_dir)["status"] == "failed"
    assert "seo_dist: training stopped: " in output, output[-3000:]
    record("Disk full for real (24 MB tmpfs filled by a ballast file)",
           "disk-full event, one line, exit 1, status failed; committed checkpoints intact")  # fmt: skip
